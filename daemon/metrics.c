/* daemon/metrics.c -- the daemon's counters, gauges and histograms, and
 * their rendering in the Prometheus text exposition format 0.0.4.
 *
 * The registry owns every metric: families (one name, one type, one HELP)
 * in registration order, each holding its label sets in registration
 * order, so a scrape shows one HELP/TYPE block per family however many
 * partitions or reasons share the name. Registration and rendering
 * allocate; updating a metric is plain arithmetic on a double that the
 * caller holds a pointer to, so the per-event path takes no lock and never
 * allocates. Everything runs on the loop thread: this file must never
 * grow locks, atomics or threads, and never do I/O on the update path (the
 * process gauges read /proc only when a scrape renders them).
 */
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

struct family;

struct metric {
    struct family *family;
    struct metric *next;
    char *labels; /* "" or 'k="v",...', already escaped */
    double value; /* counter, gauge */
    /* Callback metrics: value is fn(ctx) at render time. */
    metrics_gauge_cb fn;
    void *ctx;
    /* Histogram: counts[i] observations <= bounds[i] and > bounds[i-1];
     * counts[nbounds] the rest (the +Inf bucket). Cumulated at render. */
    double *bounds;
    uint64_t *counts;
    size_t nbounds;
    uint64_t count;
    double sum;
};

struct family {
    struct family *next;
    char *name;
    char *help;
    enum metrics_type type;
    struct metric *first;
};

struct metrics {
    struct family *first;
};

static const char *const metrics_type_names[] = {
    [METRICS_COUNTER] = "counter",
    [METRICS_GAUGE] = "gauge",
    [METRICS_HISTOGRAM] = "histogram",
};

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

static void metric_free_one(struct metric *x)
{
    free(x->labels);
    free(x->bounds);
    free(x->counts);
    free(x);
}

static void family_free(struct family *f)
{
    struct metric *x, *next;

    for (x = f->first; x; x = next) {
        next = x->next;
        metric_free_one(x);
    }
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(struct metrics *m)
{
    struct family *f, *next;

    if (!m)
        return;
    for (f = m->first; f; f = next) {
        next = f->next;
        family_free(f);
    }
    free(m);
}

void metrics_destroy(struct metrics **m)
{
    metrics_free(*m);
    *m = NULL;
}

static int is_name_start(int c, int colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (colon && c == ':');
}

static int is_name_char(int c, int colon)
{
    return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Metric names may hold colons, label names may not. */
static int name_valid(const char *s, size_t n, int colon)
{
    size_t i;

    if (n == 0 || !is_name_start((unsigned char)s[0], colon))
        return 0;
    for (i = 1; i < n; i++)
        if (!is_name_char((unsigned char)s[i], colon))
            return 0;
    return 1;
}

/* Checks 'k="v",k2="v2"': label names valid and not reserved, values with
 * only the three escapes the format defines and no raw newline. "le" is
 * refused on histograms, where it names the bucket. */
static int labels_valid(const char *s, enum metrics_type type)
{
    const char *p = s, *k;

    if (*p == '\0')
        return 1;
    for (;;) {
        k = p;
        while (*p && *p != '=')
            p++;
        if (*p != '=' || !name_valid(k, (size_t)(p - k), 0))
            return 0;
        if (p - k >= 2 && k[0] == '_' && k[1] == '_')
            return 0;
        if (type == METRICS_HISTOGRAM && p - k == 2 && !memcmp(k, "le", 2))
            return 0;
        if (*++p != '"')
            return 0;
        for (p++; *p != '"'; p++) {
            if (*p == '\0' || *p == '\n')
                return 0;
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    return 0;
            }
        }
        p++;
        if (*p == '\0')
            return 1;
        if (*p++ != ',')
            return 0;
    }
}

static struct family *family_find(struct metrics *m, const char *name)
{
    struct family *f;

    for (f = m->first; f; f = f->next)
        if (!strcmp(f->name, name))
            return f;
    return NULL;
}

/* Finds or creates the family and the label set. *created tells the
 * caller to fill in a new metric. NULL on a type clash, bad input or
 * ENOMEM. */
static struct metric *metrics_register(struct metrics *m, const char *name,
                                       const char *help, const char *labels,
                                       enum metrics_type type, int *created)
{
    struct family *f;
    struct metric *x, **tail;
    int new_family = 0;

    *created = 0;
    if (!m || !name || !name_valid(name, strlen(name), 1))
        return NULL;
    if (!labels)
        labels = "";
    if (!labels_valid(labels, type))
        return NULL;
    f = family_find(m, name);
    if (f && f->type != type)
        return NULL;
    if (f) {
        for (x = f->first; x; x = x->next)
            if (!strcmp(x->labels, labels))
                return x;
    } else {
        struct family **ft;

        f = calloc(1, sizeof(*f));
        if (!f)
            return NULL;
        f->name = strdup(name);
        f->help = strdup(help ? help : "");
        f->type = type;
        if (!f->name || !f->help) {
            family_free(f);
            return NULL;
        }
        for (ft = &m->first; *ft; ft = &(*ft)->next)
            ;
        *ft = f;
        new_family = 1;
    }
    x = calloc(1, sizeof(*x));
    if (x)
        x->labels = strdup(labels);
    if (!x || !x->labels) {
        free(x);
        if (new_family)
            metrics_remove(m, NULL); /* drops the empty family below */
        return NULL;
    }
    x->family = f;
    for (tail = &f->first; *tail; tail = &(*tail)->next)
        ;
    *tail = x;
    *created = 1;
    return x;
}

struct metric *metrics_counter(struct metrics *m, const char *name,
                               const char *help, const char *labels)
{
    int created;

    return metrics_register(m, name, help, labels, METRICS_COUNTER, &created);
}

struct metric *metrics_gauge(struct metrics *m, const char *name,
                             const char *help, const char *labels)
{
    int created;

    return metrics_register(m, name, help, labels, METRICS_GAUGE, &created);
}

struct metric *metrics_histogram(struct metrics *m, const char *name,
                                 const char *help, const char *labels,
                                 const double *bounds, size_t nbounds)
{
    struct metric *x;
    size_t i;
    int created;

    for (i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return NULL;
    x = metrics_register(m, name, help, labels, METRICS_HISTOGRAM, &created);
    if (!x || !created)
        return x;
    x->nbounds = nbounds;
    x->bounds = malloc((nbounds ? nbounds : 1) * sizeof(double));
    x->counts = calloc(nbounds + 1, sizeof(uint64_t));
    if (!x->bounds || !x->counts) {
        metrics_remove(m, x);
        return NULL;
    }
    if (nbounds)
        memcpy(x->bounds, bounds, nbounds * sizeof(double));
    return x;
}

static struct metric *metrics_fn(struct metrics *m, const char *name,
                                 const char *help, const char *labels,
                                 enum metrics_type type, metrics_gauge_cb fn,
                                 void *ctx)
{
    struct metric *x;
    int created;

    if (!fn)
        return NULL;
    x = metrics_register(m, name, help, labels, type, &created);
    if (x) {
        x->fn = fn;
        x->ctx = ctx;
    }
    return x;
}

struct metric *metrics_gauge_fn(struct metrics *m, const char *name,
                                const char *help, const char *labels,
                                metrics_gauge_cb fn, void *ctx)
{
    return metrics_fn(m, name, help, labels, METRICS_GAUGE, fn, ctx);
}

/* Removes x, and any family left without label sets (x NULL removes only
 * empty families). */
void metrics_remove(struct metrics *m, struct metric *x)
{
    struct family **fp, *f;
    struct metric **xp;

    if (!m)
        return;
    fp = &m->first;
    while ((f = *fp)) {
        if (x && x->family == f) {
            for (xp = &f->first; *xp; xp = &(*xp)->next) {
                if (*xp == x) {
                    *xp = x->next;
                    break;
                }
            }
            metric_free_one(x);
            x = NULL;
        }
        if (!f->first) {
            *fp = f->next;
            family_free(f);
            continue;
        }
        fp = &f->next;
    }
}

void metric_add(struct metric *x, double v)
{
    /* A counter only goes up; a negative or NaN increment is a caller
     * bug that must not corrupt the series. */
    if (x && (x->family->type != METRICS_COUNTER || v >= 0))
        x->value += v;
}

void metric_inc(struct metric *x)
{
    if (x)
        x->value += 1;
}

void metric_set(struct metric *x, double v)
{
    if (x)
        x->value = v;
}

/* Linear scan: bucket lists are short (ten or so) and the scan is
 * branch-predictable; NaN is dropped so _sum stays meaningful. */
void metric_observe(struct metric *x, double v)
{
    size_t i;

    if (!x || !x->counts || isnan(v))
        return;
    for (i = 0; i < x->nbounds && v > x->bounds[i]; i++)
        ;
    x->counts[i]++;
    x->count++;
    x->sum += v;
}

double metric_value(const struct metric *x)
{
    if (!x)
        return NAN;
    if (x->fn)
        return x->fn(x->ctx);
    if (x->family->type == METRICS_HISTOGRAM)
        return (double)x->count;
    return x->value;
}

int metrics_labels_format(char *buf, size_t size, ...)
{
    va_list ap;
    const char *k, *v;
    size_t n = 0;
    int rc = 0;

#define METRICS_PUT(c)                                                         \
    do {                                                                       \
        if (n + 1 >= size) {                                                   \
            rc = -ENOSPC;                                                      \
            goto out;                                                          \
        }                                                                      \
        buf[n++] = (c);                                                        \
    } while (0)

    if (size == 0)
        return -ENOSPC;
    va_start(ap, size);
    while ((k = va_arg(ap, const char *))) {
        v = va_arg(ap, const char *);
        if (!name_valid(k, strlen(k), 0) || !v) {
            rc = -EINVAL;
            goto out;
        }
        if (n > 0)
            METRICS_PUT(',');
        for (; *k; k++)
            METRICS_PUT(*k);
        METRICS_PUT('=');
        METRICS_PUT('"');
        for (; *v; v++) {
            if (*v == '\\' || *v == '"') {
                METRICS_PUT('\\');
                METRICS_PUT(*v);
            } else if (*v == '\n') {
                METRICS_PUT('\\');
                METRICS_PUT('n');
            } else {
                METRICS_PUT(*v);
            }
        }
        METRICS_PUT('"');
    }
out:
    va_end(ap);
    buf[rc ? 0 : n] = '\0';
    return rc;
#undef METRICS_PUT
}

/* Shortest decimal that reads back as the same double, so 0.1 prints as
 * 0.1 and counters print as integers. */
static void format_value(char *buf, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(buf, size, "%.0f", v);
    } else {
        snprintf(buf, size, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, size, "%.17g", v);
    }
}

static void put_help(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", f);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

/* name{labels[,extra]} value */
static void put_sample(FILE *f, const char *name, const char *suffix,
                       const char *labels, const char *extra, double v)
{
    char num[40];

    format_value(num, sizeof(num), v);
    fputs(name, f);
    fputs(suffix, f);
    if (*labels || extra) {
        fputc('{', f);
        fputs(labels, f);
        if (extra) {
            if (*labels)
                fputc(',', f);
            fputs(extra, f);
        }
        fputc('}', f);
    }
    fputc(' ', f);
    fputs(num, f);
    fputc('\n', f);
}

static void put_histogram(FILE *f, const struct family *fam,
                          const struct metric *x)
{
    char le[64], num[40];
    uint64_t cum = 0;
    size_t i;

    for (i = 0; i <= x->nbounds; i++) {
        cum += x->counts[i];
        if (i < x->nbounds)
            format_value(num, sizeof(num), x->bounds[i]);
        else
            strcpy(num, "+Inf");
        snprintf(le, sizeof(le), "le=\"%s\"", num);
        put_sample(f, fam->name, "_bucket", x->labels, le, (double)cum);
    }
    put_sample(f, fam->name, "_sum", x->labels, NULL, x->sum);
    put_sample(f, fam->name, "_count", x->labels, NULL, (double)x->count);
}

int metrics_render(struct metrics *m, char **out, size_t *len)
{
    const struct family *fam;
    const struct metric *x;
    char *buf = NULL;
    size_t n = 0;
    FILE *f;

    if (!m || !out)
        return -EINVAL;
    f = open_memstream(&buf, &n);
    if (!f)
        return -ENOMEM;
    for (fam = m->first; fam; fam = fam->next) {
        fprintf(f, "# HELP %s ", fam->name);
        put_help(f, fam->help);
        fprintf(f, "\n# TYPE %s %s\n", fam->name,
                metrics_type_names[fam->type]);
        for (x = fam->first; x; x = x->next) {
            if (fam->type == METRICS_HISTOGRAM)
                put_histogram(f, fam, x);
            else
                put_sample(f, fam->name, "", x->labels, NULL, metric_value(x));
        }
    }
    if (ferror(f) | fclose(f)) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

double metrics_process_rss_bytes(void)
{
    unsigned long size, resident;
    FILE *f = fopen("/proc/self/statm", "re");
    int ok;

    if (!f)
        return -errno;
    ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
    fclose(f);
    if (!ok)
        return -EIO;
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static double process_rss_cb(void *ctx)
{
    double v = metrics_process_rss_bytes();

    return v < 0 ? NAN : v;
}

static double process_cpu_cb(void *ctx)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru))
        return NAN;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static double process_fds_cb(void *ctx)
{
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    if (!d)
        return NAN;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

/* Seconds since the epoch when the process started: boot time from
 * /proc/stat plus the start tick from /proc/self/stat; now as a fallback. */
static double process_start_time(void)
{
    char line[256], *p, stat[1024];
    double btime = -1, ticks;
    unsigned long long start;
    size_t n;
    FILE *f;
    int i;

    f = fopen("/proc/stat", "re");
    if (f) {
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "btime %lf", &btime) == 1)
                break;
        fclose(f);
    }
    f = fopen("/proc/self/stat", "re");
    if (f && btime > 0) {
        n = fread(stat, 1, sizeof(stat) - 1, f);
        stat[n] = '\0';
        /* The command name may hold spaces and parentheses; fields count
         * from the last ')'. starttime is field 22, the 20th after it. */
        p = strrchr(stat, ')');
        for (i = 0; p && i < 20; i++)
            p = strchr(p + 1, ' ');
        ticks = (double)sysconf(_SC_CLK_TCK);
        if (p && sscanf(p + 1, "%llu", &start) == 1 && ticks > 0) {
            fclose(f);
            return btime + (double)start / ticks;
        }
    }
    if (f)
        fclose(f);
    return (double)time(NULL);
}

int metrics_process_register(struct metrics *m)
{
    struct metric *start;

    if (!metrics_gauge_fn(m, "process_resident_memory_bytes",
                          "Resident memory size in bytes.", NULL,
                          process_rss_cb, NULL) ||
        !metrics_fn(m, "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.", NULL,
                    METRICS_COUNTER, process_cpu_cb, NULL) ||
        !metrics_gauge_fn(m, "process_open_fds",
                          "Number of open file descriptors.", NULL,
                          process_fds_cb, NULL))
        return -ENOMEM;
    start = metrics_gauge(m, "process_start_time_seconds",
                          "Start time of the process since unix epoch in "
                          "seconds.",
                          NULL);
    if (!start)
        return -ENOMEM;
    metric_set(start, process_start_time());
    return 0;
}
