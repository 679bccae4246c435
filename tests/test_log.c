/* test_log.c -- log lines (sd-daemon prefixes, levels, timestamps outside
 * journald, one line per message, truncation) and the rate limiter used
 * for per-event rejection logs.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static char *buf;
static size_t len;
static FILE *out;

static void capture(bool timestamps)
{
    out = open_memstream(&buf, &len);
    cr_assert_not_null(out);
    log_set_output(out, timestamps);
}

static const char *captured(void)
{
    fflush(out);
    return buf;
}

static void release(void)
{
    log_set_output(NULL, false);
    fclose(out);
    free(buf);
}

Test(log, prefixes_and_levels)
{
    capture(false);
    log_set_level(LOG_INFO);
    log_err("e %d", 3);
    log_warn("w");
    log_notice("n");
    log_info("i %s", "x");
    log_debug("hidden");
    cr_assert_str_eq(captured(), "<3>e 3\n<4>w\n<5>n\n<6>i x\n");
    cr_assert(log_enabled(LOG_INFO));
    cr_assert_not(log_enabled(LOG_DEBUG));
    log_set_level(LOG_DEBUG);
    log_debug("shown");
    cr_assert_str_eq(captured(), "<3>e 3\n<4>w\n<5>n\n<6>i x\n<7>shown\n");
    log_set_level(LOG_ERR);
    log_warn("dropped");
    log_msg(LOG_CRIT, "crit");
    cr_assert_eq(log_get_level(), LOG_ERR);
    cr_assert_str_eq(captured(),
                     "<3>e 3\n<4>w\n<5>n\n<6>i x\n<7>shown\n<2>crit\n");
    release();
}

Test(log, one_line_per_message)
{
    capture(false);
    log_set_level(LOG_INFO);
    log_info("a\nb\r\nc");
    cr_assert_str_eq(captured(), "<6>a b  c\n");
    release();
}

Test(log, long_messages_are_truncated)
{
    char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    capture(false);
    log_set_level(LOG_INFO);
    log_info("%s", big);
    const char *s = captured();
    size_t n = strlen(s);
    cr_assert_eq(n, 4096);
    cr_assert_eq(strncmp(s, "<6>xxx", 6), 0);
    cr_assert_str_eq(s + n - 4, "...\n");
    release();
}

Test(log, timestamps_outside_journald)
{
    regex_t re;
    cr_assert_eq(regcomp(&re,
                         "^<4>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:"
                         "[0-9]{2}\\.[0-9]{3}Z disk full\n$",
                         REG_EXTENDED),
                 0);
    capture(true);
    log_set_level(LOG_INFO);
    log_warn("disk full");
    cr_assert_eq(regexec(&re, captured(), 0, NULL, 0), 0, "%s", captured());
    regfree(&re);
    release();
}

Test(log, errno_is_preserved)
{
    capture(false);
    errno = EAGAIN;
    log_info("x");
    cr_assert_eq(errno, EAGAIN);
    release();
}

static void journal_env(void)
{
    struct stat st;
    char v[64];
    cr_redirect_stderr();
    cr_assert_eq(fstat(STDERR_FILENO, &st), 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
}

Test(log, stderr_under_journald_has_no_timestamp, .init = journal_env)
{
    log_set_level(LOG_INFO);
    log_err("boom");
    fflush(stderr);
    cr_assert_stderr_eq_str("<3>boom\n");
}

static void other_env(void)
{
    cr_redirect_stderr();
    setenv("JOURNAL_STREAM", "1:1", 1);
}

Test(log, stderr_elsewhere_has_a_timestamp, .init = other_env)
{
    log_set_level(LOG_INFO);
    log_err("boom");
    fflush(stderr);
    cr_assert_stderr_neq_str("<3>boom\n");
}

Test(log, level_names)
{
    cr_assert_eq(log_level_parse("err"), LOG_ERR);
    cr_assert_eq(log_level_parse("error"), LOG_ERR);
    cr_assert_eq(log_level_parse("warning"), LOG_WARNING);
    cr_assert_eq(log_level_parse("WARN"), LOG_WARNING);
    cr_assert_eq(log_level_parse("notice"), LOG_NOTICE);
    cr_assert_eq(log_level_parse("info"), LOG_INFO);
    cr_assert_eq(log_level_parse("debug"), LOG_DEBUG);
    cr_assert_eq(log_level_parse("loud"), -EINVAL);
    cr_assert_str_eq(log_level_name(LOG_WARNING), "warning");
    cr_assert_str_eq(log_level_name(LOG_ERR), "err");
    cr_assert_str_eq(log_level_name(42), "unknown");
}

Test(log, ratelimit)
{
    struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 3);
    uint64_t sup = 99;
    cr_assert(log_ratelimit_ok(&rl, 5000, &sup));
    cr_assert_eq(sup, 0);
    cr_assert(log_ratelimit_ok(&rl, 5001, &sup));
    cr_assert(log_ratelimit_ok(&rl, 5002, NULL));
    cr_assert_not(log_ratelimit_ok(&rl, 5003, &sup));
    cr_assert_not(log_ratelimit_ok(&rl, 5999, &sup));
    cr_assert_eq(sup, 0);
    /* A new window: allowed, and told how many were dropped, once. */
    cr_assert(log_ratelimit_ok(&rl, 6000, &sup));
    cr_assert_eq(sup, 2);
    cr_assert(log_ratelimit_ok(&rl, 6001, &sup));
    cr_assert_eq(sup, 0);
    /* A clock that went back starts a new window too. */
    cr_assert(log_ratelimit_ok(&rl, 6002, &sup));
    cr_assert_not(log_ratelimit_ok(&rl, 6003, &sup));
    cr_assert(log_ratelimit_ok(&rl, 10, &sup));
    cr_assert_eq(sup, 1);

    struct log_ratelimit off = LOG_RATELIMIT_INIT(0, 1);
    for (int i = 0; i < 100; i++)
        cr_assert(log_ratelimit_ok(&off, 1, &sup));
}
