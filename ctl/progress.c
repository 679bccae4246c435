/* progress.c -- the progress line of nmfctl's long runs (fit, produce,
 * and rank).
 *
 * On a terminal (stderr is a tty), a single line with the events done,
 * the rate and, when the input's size is known, the share of bytes read
 * and the time left at the average rate so far; it is redrawn in place
 * ("\r", then erase to the end of the line) at most every
 * PROGRESS_MIN_INTERVAL seconds, and erased at the end so that the
 * command's own output (a summary line on stdout) is not mixed with it.
 * Anywhere else (a pipe, a file, a test harness) it prints nothing, so
 * scripts see exactly the output they parse. It owns no memory and must
 * never write to stdout or change what a command computes: progress is
 * drawn from the counts the caller passes, and the clock it reads only
 * decides when to draw.
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "progress.h"

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_start(struct progress *p, FILE *out, const char *label,
                    int64_t total)
{
    p->out = out;
    p->on = out && isatty(fileno(out));
    p->label = label;
    p->total = total;
    p->t0 = p->last = progress_now();
    p->polls = 0;
    p->drawn = false;
}

/* A count in at most four significant characters: 999, 12.3k, 1.20M. */
static void progress_count(char *buf, size_t len, double x)
{
    if (x < 1000)
        snprintf(buf, len, "%.0f", x);
    else if (x < 1e6)
        snprintf(buf, len, "%.*fk", x < 1e4 ? 2 : x < 1e5 ? 1 : 0, x / 1e3);
    else if (x < 1e9)
        snprintf(buf, len, "%.*fM", x < 1e7 ? 2 : x < 1e8 ? 1 : 0, x / 1e6);
    else
        snprintf(buf, len, "%.2fG", x / 1e9);
}

/* Seconds as m:ss, or h:mm:ss from an hour. */
static void progress_clock(char *buf, size_t len, double s)
{
    unsigned long t = s > 0 && s < 3.6e8 ? (unsigned long)(s + 0.5) : 0;
    if (t >= 3600)
        snprintf(buf, len, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%lu:%02lu", t / 60, t % 60);
}

int progress_format(char *buf, size_t len, const char *label, uint64_t events,
                    uint64_t bytes, int64_t total, double elapsed)
{
    char n[16], r[16], t[24];
    progress_count(n, sizeof(n), (double)events);
    if (elapsed > 0)
        progress_count(r, sizeof(r), (double)events / elapsed);
    else
        snprintf(r, sizeof(r), "-");
    if (total > 0) {
        double done = (double)bytes / (double)total;
        if (done > 1)
            done = 1;
        if (bytes > 0 && elapsed > 0) {
            progress_clock(t, sizeof(t), elapsed * (1 - done) / done);
        } else {
            snprintf(t, sizeof(t), "-:--");
        }
        return snprintf(buf, len, "%s: %s events, %s/s, %.1f%%, %s left",
                        label, n, r, 100 * done, t);
    }
    progress_clock(t, sizeof(t), elapsed);
    return snprintf(buf, len, "%s: %s events, %s/s, %s", label, n, r, t);
}

bool progress_update(struct progress *p, uint64_t events, uint64_t bytes,
                     double now)
{
    char line[PROGRESS_LINE_MAX];
    if (!p->on || now - p->last < PROGRESS_MIN_INTERVAL)
        return false;
    p->last = now;
    progress_format(line, sizeof(line), p->label, events, bytes, p->total,
                    now - p->t0);
    fprintf(p->out, "\r%s\033[K", line);
    fflush(p->out);
    p->drawn = true;
    return true;
}

void progress_poll(struct progress *p, uint64_t events, uint64_t bytes)
{
    if (!p->on || ++p->polls < PROGRESS_POLL_EVERY)
        return;
    p->polls = 0;
    progress_update(p, events, bytes, progress_now());
}

void progress_end(struct progress *p)
{
    if (p->on && p->drawn) {
        fputs("\r\033[K", p->out);
        fflush(p->out);
    }
    p->drawn = false;
}
