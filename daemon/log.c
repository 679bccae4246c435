/* log.c -- the daemon's log: one line per message on stderr.
 *
 * Each line starts with the sd-daemon priority prefix ("<3>" for LOG_ERR
 * .. "<7>" for LOG_DEBUG), which journald strips and turns into the
 * record's priority, so `journalctl -p warning -u nmfd` works without a
 * journal client library. When stderr is not a journald stream (the
 * JOURNAL_STREAM variable does not name stderr's device and inode: a
 * terminal, a file, a pipe) the prefix is followed by a UTC timestamp,
 * since nobody else will add one. The prefix stays either way, as systemd
 * tools do, so a captured log keeps its levels.
 *
 * This file owns the level, the output stream and the rate limiter. A line
 * is formatted into one buffer and written with one write(2), so lines from
 * a forked checkpoint writer or a worker thread never interleave within a
 * line. It never allocates, never exits and never blocks on anything but
 * the write itself.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LOG_LINE_MAX 4096

static atomic_int log_level = LOG_INFO;
static FILE *log_out;           /* NULL: stderr */
static int log_timestamps = -1; /* -1: not decided yet */

static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
        return false;
    if (fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev &&
           (unsigned long long)st.st_ino == ino;
}

void log_set_level(int level)
{
    if (level < LOG_EMERG)
        level = LOG_EMERG;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    atomic_store_explicit(&log_level, level, memory_order_relaxed);
}

int log_get_level(void)
{
    return atomic_load_explicit(&log_level, memory_order_relaxed);
}

bool log_enabled(int level)
{
    return level <= log_get_level();
}

static const struct {
    const char *name;
    int level;
} level_names[] = {
    {"err", LOG_ERR},      {"warning", LOG_WARNING}, {"notice", LOG_NOTICE},
    {"info", LOG_INFO},    {"debug", LOG_DEBUG},     {"error", LOG_ERR},
    {"warn", LOG_WARNING}, {"crit", LOG_CRIT},       {"alert", LOG_ALERT},
    {"emerg", LOG_EMERG},
};

int log_level_parse(const char *name)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (!strcasecmp(name, level_names[i].name))
            return level_names[i].level;
    return -EINVAL;
}

const char *log_level_name(int level)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (level_names[i].level == level)
            return level_names[i].name;
    return "unknown";
}

void log_set_output(FILE *out, bool timestamps)
{
    log_out = out;
    log_timestamps = timestamps;
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere left to report it */
        buf += n;
        len -= (size_t)n;
    }
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    size_t off, max = sizeof(line); /* the NUL's place takes the '\n' */
    int saved = errno;              /* callers may log and then use it */

    if (!log_enabled(level))
        return;
    if (log_timestamps < 0)
        log_timestamps = !stderr_is_journal();
    if (level < LOG_EMERG)
        level = LOG_EMERG;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;

    off = (size_t)snprintf(line, max, "<%d>", level);
    if (log_timestamps) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        off += strftime(line + off, max - off, "%Y-%m-%dT%H:%M:%S", &tm);
        off += (size_t)snprintf(line + off, max - off, ".%03ldZ ",
                                ts.tv_nsec / 1000000);
    }
    size_t start = off;
    int n = vsnprintf(line + off, max - off, fmt, ap);
    if (n < 0)
        n = 0;
    off += (size_t)n;
    if (off >= max) { /* truncated: end with "..." */
        off = max - 1;
        memcpy(line + off - 3, "...", 3);
    }
    /* One message is one journal record: fold embedded newlines. */
    for (size_t i = start; i < off; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[off++] = '\n';

    if (log_out && log_out != stderr) {
        fwrite(line, 1, off, log_out);
        fflush(log_out);
    } else {
        write_all(STDERR_FILENO, line, off);
    }
    errno = saved;
}

void log_msg(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now_ms,
                      uint64_t *suppressed)
{
    if (suppressed)
        *suppressed = 0;
    if (rl->interval_ms == 0)
        return true;
    /* A clock that went backwards also starts a new window. */
    if (now_ms - rl->begin_ms >= rl->interval_ms || now_ms < rl->begin_ms) {
        if (suppressed)
            *suppressed = rl->suppressed;
        rl->suppressed = 0;
        rl->begin_ms = now_ms;
        rl->count = 0;
    }
    if (rl->count < rl->burst) {
        rl->count++;
        return true;
    }
    rl->suppressed++;
    return false;
}
