/* log.h -- one line per message on stderr, with the sd-daemon priority
 * prefix ("<3>" .. "<7>") that journald turns into the record's priority.
 * Outside journald (JOURNAL_STREAM does not name stderr) each line also
 * carries a UTC timestamp after the prefix. Levels are syslog's: LOG_ERR,
 * LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG.
 */
#ifndef NMFD_DAEMON_LOG_H
#define NMFD_DAEMON_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <syslog.h>

/* Messages above level (less severe) are dropped. Default LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);
/* True when a message at level would be written. */
bool log_enabled(int level);

/* "err", "warning", "notice", "info", "debug" (also "error", "warn") to a
 * level; -EINVAL otherwise. log_level_name is the inverse. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

/* Redirects output (NULL = stderr) and chooses timestamps; for tests and
 * tools. Without a call: stderr, timestamps unless under journald. */
void log_set_output(FILE *out, bool timestamps);

void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

#define log_err(...)    log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_DEBUG, __VA_ARGS__)

/* At most burst messages per interval_ms window. Initialise with
 * LOG_RATELIMIT_INIT or set interval_ms/burst and zero the rest; an
 * interval of 0 disables limiting. */
struct log_ratelimit {
    uint64_t interval_ms;
    uint32_t burst;
    uint64_t begin_ms;   /* start of the current window */
    uint32_t count;      /* messages allowed in this window */
    uint64_t suppressed; /* messages refused in this window */
};
#define LOG_RATELIMIT_INIT(interval, n)                                        \
    {                                                                          \
        .interval_ms = (interval), .burst = (n)                                \
    }

/* True when one more message may be logged now. *suppressed (may be NULL)
 * receives how many were refused in the window that just ended, once, on
 * the first call of a new window (else 0), so the caller can say
 * "suppressed N messages". */
bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now_ms,
                      uint64_t *suppressed);

#endif
