/* test_progress.c -- the progress line: its format, its rate limit, and
 * its silence off a terminal. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "progress.h"

static void fmt(char *buf, uint64_t events, uint64_t bytes, int64_t total,
                double elapsed)
{
    int n = progress_format(buf, PROGRESS_LINE_MAX, "fit", events, bytes,
                            total, elapsed);
    cr_assert_eq((size_t)n, strlen(buf));
}

Test(progress, format_with_a_known_size)
{
    char b[PROGRESS_LINE_MAX];
    /* 1.2 M events in 2 s, a quarter of the file: 6 s left. */
    fmt(b, 1200000, 250, 1000, 2.0);
    cr_assert_str_eq(b, "fit: 1.20M events, 600k/s, 25.0%, 0:06 left");
    /* An hour and more left. */
    fmt(b, 5000, 1, 1000, 4.0);
    cr_assert_str_eq(b, "fit: 5.00k events, 1.25k/s, 0.1%, 1:06:36 left");
    /* Nothing read yet: no rate, no estimate. */
    fmt(b, 0, 0, 1000, 0);
    cr_assert_str_eq(b, "fit: 0 events, -/s, 0.0%, -:-- left");
    /* Bytes beyond the size (a file that grew) stop at 100%. */
    fmt(b, 999, 2000, 1000, 1.0);
    cr_assert_str_eq(b, "fit: 999 events, 999/s, 100.0%, 0:00 left");
}

Test(progress, format_with_an_unknown_size)
{
    char b[PROGRESS_LINE_MAX];
    fmt(b, 12345, 99999, -1, 75.4);
    cr_assert_str_eq(b, "fit: 12.3k events, 164/s, 1:15");
    fmt(b, 3000000000ull, 0, -1, 3600.0);
    cr_assert_str_eq(b, "fit: 3.00G events, 833k/s, 1:00:00");
}

Test(progress, format_truncates_like_snprintf)
{
    char b[12];
    int n = progress_format(b, sizeof(b), "produce", 1, 0, -1, 1.0);
    cr_assert_gt(n, (int)sizeof(b) - 1);
    cr_assert_eq(strlen(b), sizeof(b) - 1);
}

/* The stream's content so far. */
static char *contents(FILE *f, char *buf, size_t len)
{
    fflush(f);
    long end = ftell(f);
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fseek(f, end, SEEK_SET);
    return buf;
}

Test(progress, redraws_at_most_every_interval)
{
    FILE *f = tmpfile();
    char b[1024];
    struct progress p;
    cr_assert_not_null(f);
    progress_start(&p, f, "fit", 1000);
    cr_assert_not(p.on, "a file is not a terminal");
    p.on = true; /* as on a terminal */
    double t0 = p.t0, dt = PROGRESS_MIN_INTERVAL;
    cr_assert_not(progress_update(&p, 10, 10, t0 + 0.4 * dt));
    cr_assert_str_eq(contents(f, b, sizeof(b)), "");
    cr_assert(progress_update(&p, 20, 100, t0 + 1.0 * dt));
    cr_assert_not(progress_update(&p, 30, 150, t0 + 1.9 * dt));
    cr_assert(progress_update(&p, 40, 200, t0 + 2.0 * dt));
    cr_assert_not(progress_update(&p, 50, 250, t0 + 2.5 * dt));
    /* Two lines, each redrawn in place: carriage return, erase to the
     * end of the line, no newline. */
    contents(f, b, sizeof(b));
    cr_assert_eq(strchr(b, '\n'), NULL);
    cr_assert_str_eq(strstr(b, "\r"), b);
    cr_assert_not_null(strstr(b, "fit: 20 events"));
    cr_assert_not_null(strstr(b, "fit: 40 events"));
    cr_assert_null(strstr(b, "fit: 10 events"));
    cr_assert_null(strstr(b, "fit: 30 events"));
    cr_assert_null(strstr(b, "fit: 50 events"));
    size_t before = strlen(b);
    progress_end(&p);
    contents(f, b, sizeof(b));
    cr_assert_str_eq(b + before, "\r\033[K");
    /* Once erased, erasing again writes nothing. */
    progress_end(&p);
    cr_assert_eq(strlen(contents(f, b, sizeof(b))), before + 4);
    fclose(f);
}

Test(progress, silent_off_a_terminal)
{
    FILE *f = tmpfile();
    char b[256];
    struct progress p;
    cr_assert_not_null(f);
    progress_start(&p, f, "produce", -1);
    cr_assert_not(p.on);
    cr_assert_not(progress_update(&p, 1000, 0, p.t0 + 100));
    for (unsigned i = 0; i < 3 * PROGRESS_POLL_EVERY; i++)
        progress_poll(&p, i, i);
    progress_end(&p);
    cr_assert_str_eq(contents(f, b, sizeof(b)), "");
    fclose(f);
}

Test(progress, polls_the_clock_once_every_so_many_calls)
{
    FILE *f = tmpfile();
    char b[256];
    struct progress p;
    cr_assert_not_null(f);
    progress_start(&p, f, "fit", -1);
    p.on = true;
    p.last = p.t0 - 10; /* the interval has long passed */
    for (unsigned i = 1; i < PROGRESS_POLL_EVERY; i++)
        progress_poll(&p, i, 0);
    cr_assert_str_eq(contents(f, b, sizeof(b)), "");
    progress_poll(&p, PROGRESS_POLL_EVERY, 0);
    cr_assert_not_null(strstr(contents(f, b, sizeof(b)), "fit: 1.02k events"));
    fclose(f);
}
