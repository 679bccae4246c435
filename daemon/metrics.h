/* metrics.h -- counters, gauges and histograms rendered in the Prometheus
 * text exposition format 0.0.4. All calls happen on the loop thread. */
#ifndef NMFD_METRICS_H
#define NMFD_METRICS_H

#include <stddef.h>

struct metrics;
struct metric;

typedef double (*metrics_gauge_cb)(void *ctx);

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);
void metrics_destroy(struct metrics **m);

/* Registration. name: [a-zA-Z_:][a-zA-Z0-9_:]*. labels: NULL, "" or
 * constant labels in exposition form, 'k="v",k2="v2"', values already
 * escaped (see metrics_labels_format). Registering the same name and
 * labels again returns the existing metric. Returns NULL when the name or
 * labels are malformed, when the name is registered with another type, or
 * on ENOMEM. The metric belongs to the registry. */
struct metric *metrics_counter(struct metrics *m, const char *name,
                               const char *help, const char *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name,
                             const char *help, const char *labels);
/* bounds: strictly increasing finite upper bounds; +Inf is implicit. */
struct metric *metrics_histogram(struct metrics *m, const char *name,
                                 const char *help, const char *labels,
                                 const double *bounds, size_t nbounds);
/* A gauge whose value is fn(ctx) at render time. */
struct metric *metrics_gauge_fn(struct metrics *m, const char *name,
                                const char *help, const char *labels,
                                metrics_gauge_cb fn, void *ctx);
/* Unregisters and frees one metric (e.g. the lag gauge of a revoked
 * partition). */
void metrics_remove(struct metrics *m, struct metric *x);

/* Hot path: plain arithmetic, no locks, no allocation. NULL is ignored. */
void metric_add(struct metric *x, double v); /* counter or gauge */
void metric_inc(struct metric *x);
void metric_set(struct metric *x, double v);     /* gauge */
void metric_observe(struct metric *x, double v); /* histogram */
/* Counter/gauge value, histogram count, gauge_fn's current value. */
double metric_value(const struct metric *x);

/* Builds 'k1="v1",k2="v2"' from NULL-terminated key, value pairs, escaping
 * backslash, double quote and newline in values. Returns 0, -EINVAL for a
 * bad label name, or -ENOSPC when buf is too small. */
int metrics_labels_format(char *buf, size_t size, ...)
    __attribute__((sentinel));

/* Renders every family: one HELP and TYPE block per name, then each label
 * set. *out is NUL-terminated and malloc'd; the caller frees it. */
int metrics_render(struct metrics *m, char **out, size_t *len);

/* Registers process_resident_memory_bytes (from /proc/self/statm, read at
 * render time) and process_start_time_seconds (now). */
int metrics_process_register(struct metrics *m);
/* Resident set size in bytes, or a negative errno. */
double metrics_process_rss_bytes(void);

#endif
