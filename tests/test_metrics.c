/* test_metrics.c -- the registry renders valid Prometheus text (0.0.4):
 * every rendering is parsed back by a small strict parser below, which
 * also checks that each sample belongs to the family block it sits in. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

#define MAXS 256
#define MAXL 8

struct sample {
    char name[128];
    int nlabels;
    char key[MAXL][64];
    char val[MAXL][256];
    double value;
};

struct family_seen {
    char name[128];
    char help[256];
    char type[16];
};

struct parsed {
    struct sample s[MAXS];
    int n;
    struct family_seen f[64];
    int nf;
};

static int name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == ':';
}

/* Unescapes a HELP text (\\ and \n). */
static void unescape_help(const char *s, size_t n, char *out)
{
    size_t i, k = 0;

    for (i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            i++;
            out[k++] = s[i] == 'n' ? '\n' : s[i];
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
}

static const char *suffix_of(const char *sample, const char *family)
{
    size_t n = strlen(family);

    if (strncmp(sample, family, n))
        return NULL;
    return sample + n;
}

/* Parses the whole text; fails the test on any malformed line. */
static void parse(const char *text, size_t len, struct parsed *p)
{
    const char *line = text, *end = text + len, *nl, *q;

    memset(p, 0, sizeof(*p));
    cr_assert(len == 0 || text[len - 1] == '\n', "text ends with newline");
    cr_assert_eq(strlen(text), len, "len matches the string");
    for (; line < end; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(end - line));
        cr_assert_not_null(nl);
        if (!strncmp(line, "# HELP ", 7)) {
            struct family_seen *f = &p->f[p->nf++];

            q = line + 7;
            while (name_char(*q))
                q++;
            cr_assert_eq(*q, ' ', "HELP line: %.*s", (int)(nl - line), line);
            memcpy(f->name, line + 7, (size_t)(q - line - 7));
            for (int i = 0; i < p->nf - 1; i++)
                cr_assert_str_neq(p->f[i].name, f->name,
                                  "one HELP per family: %s", f->name);
            unescape_help(q + 1, (size_t)(nl - q - 1), f->help);
            continue;
        }
        if (!strncmp(line, "# TYPE ", 7)) {
            struct family_seen *f = &p->f[p->nf - 1];
            size_t n = strlen(f->name);

            cr_assert(p->nf > 0);
            cr_assert(!strncmp(line + 7, f->name, n) && line[7 + n] == ' ',
                      "TYPE follows its HELP");
            memcpy(f->type, line + 8 + n, (size_t)(nl - line - 8 - n));
            cr_assert(!strcmp(f->type, "counter") ||
                          !strcmp(f->type, "gauge") ||
                          !strcmp(f->type, "histogram"),
                      "type %s", f->type);
            continue;
        }
        cr_assert_neq(line[0], '#', "no other comments");
        cr_assert(p->nf > 0, "sample after a TYPE");
        struct sample *s = &p->s[p->n++];
        const struct family_seen *f = &p->f[p->nf - 1];

        q = line;
        while (name_char(*q))
            q++;
        cr_assert(q > line);
        memcpy(s->name, line, (size_t)(q - line));
        const char *suf = suffix_of(s->name, f->name);

        cr_assert_not_null(suf, "sample %s in block %s", s->name, f->name);
        if (!strcmp(f->type, "histogram"))
            cr_assert(!strcmp(suf, "_bucket") || !strcmp(suf, "_sum") ||
                          !strcmp(suf, "_count"),
                      "histogram sample %s", s->name);
        else
            cr_assert_str_empty(suf);
        if (*q == '{') {
            q++;
            while (*q != '}') {
                const char *k = q;
                char *v;
                int i = s->nlabels++;

                while (name_char(*q))
                    q++;
                cr_assert(q > k && *q == '=' && q[1] == '"', "label");
                memcpy(s->key[i], k, (size_t)(q - k));
                q += 2;
                v = s->val[i];
                while (*q != '"') {
                    cr_assert(*q != '\n' && q < nl, "unterminated value");
                    if (*q == '\\') {
                        q++;
                        cr_assert(*q == '\\' || *q == '"' || *q == 'n',
                                  "escape \\%c", *q);
                        *v++ = *q == 'n' ? '\n' : *q;
                    } else {
                        *v++ = *q;
                    }
                    q++;
                }
                q++;
                if (*q == ',')
                    q++;
                else
                    cr_assert_eq(*q, '}');
            }
            q++;
        }
        cr_assert_eq(*q, ' ', "space before value in %s", s->name);
        q++;
        if (!strncmp(q, "+Inf\n", 5))
            s->value = INFINITY;
        else if (!strncmp(q, "-Inf\n", 5))
            s->value = -INFINITY;
        else if (!strncmp(q, "NaN\n", 4))
            s->value = NAN;
        else {
            char *e;

            s->value = strtod(q, &e);
            cr_assert_eq(e, nl, "value of %s: %.*s", s->name, (int)(nl - q), q);
        }
    }
}

static const char *label(const struct sample *s, const char *k)
{
    for (int i = 0; i < s->nlabels; i++)
        if (!strcmp(s->key[i], k))
            return s->val[i];
    return NULL;
}

/* The sample called name whose labels include k=v (k NULL: any). */
static const struct sample *find(const struct parsed *p, const char *name,
                                 const char *k, const char *v)
{
    for (int i = 0; i < p->n; i++) {
        const struct sample *s = &p->s[i];

        if (strcmp(s->name, name))
            continue;
        if (!k || (label(s, k) && !strcmp(label(s, k), v)))
            return s;
    }
    return NULL;
}

static const struct family_seen *family(const struct parsed *p,
                                        const char *name)
{
    for (int i = 0; i < p->nf; i++)
        if (!strcmp(p->f[i].name, name))
            return &p->f[i];
    return NULL;
}

static struct parsed P;

static void render(struct metrics *m, struct parsed *p, char **keep)
{
    char *text = NULL;
    size_t len = 0;

    cr_assert_eq(metrics_render(m, &text, &len), 0);
    cr_assert_not_null(text);
    parse(text, len, p);
    if (keep)
        *keep = text;
    else
        free(text);
}

Test(metrics, counters_with_labels_share_one_family_block)
{
    struct metrics *m = metrics_new();
    struct metric *a, *b, *c;

    a = metrics_counter(m, "nmfd_events_rejected_total",
                        "Events rejected, by reason.", "reason=\"bad_ts\"");
    b = metrics_counter(m, "nmfd_events_rejected_total",
                        "Events rejected, by reason.", "reason=\"no_user\"");
    c = metrics_counter(m, "nmfd_events_total", "Events folded.", NULL);
    cr_assert(a && b && c && a != b);
    /* Same name and labels: the same metric. */
    cr_assert_eq(metrics_counter(m, "nmfd_events_rejected_total", "x",
                                 "reason=\"bad_ts\""),
                 a);
    metric_add(a, 3);
    metric_inc(a);
    metric_add(b, 2.5);
    metric_add(b, -1); /* a counter never goes down */
    metric_add(b, NAN);
    for (int i = 0; i < 1000; i++)
        metric_inc(c);
    cr_assert_float_eq(metric_value(a), 4, 1e-12);
    cr_assert_float_eq(metric_value(b), 2.5, 1e-12);

    render(m, &P, NULL);
    cr_assert_eq(P.nf, 2);
    cr_assert_str_eq(P.f[0].name, "nmfd_events_rejected_total");
    cr_assert_str_eq(P.f[0].type, "counter");
    cr_assert_str_eq(P.f[0].help, "Events rejected, by reason.");
    cr_assert_str_eq(P.f[1].type, "counter");
    cr_assert_eq(P.n, 3);
    const struct sample *s =
        find(&P, "nmfd_events_rejected_total", "reason", "bad_ts");
    cr_assert_not_null(s);
    cr_assert_eq(s->nlabels, 1);
    cr_assert_float_eq(s->value, 4, 1e-12);
    s = find(&P, "nmfd_events_rejected_total", "reason", "no_user");
    cr_assert_float_eq(s->value, 2.5, 1e-12);
    s = find(&P, "nmfd_events_total", NULL, NULL);
    cr_assert_eq(s->nlabels, 0);
    cr_assert_float_eq(s->value, 1000, 1e-12);
    metrics_free(m);
}

Test(metrics, multiple_constant_labels_and_gauges)
{
    struct metrics *m = metrics_new();
    struct metric *g;

    g = metrics_gauge(m, "nmfd_consumer_lag", "Messages behind.",
                      "topic=\"events\",partition=\"3\"");
    cr_assert_not_null(g);
    metric_set(g, 17);
    metric_add(g, -20);
    render(m, &P, NULL);
    cr_assert_str_eq(P.f[0].type, "gauge");
    const struct sample *s = find(&P, "nmfd_consumer_lag", "partition", "3");
    cr_assert_not_null(s);
    cr_assert_eq(s->nlabels, 2);
    cr_assert_str_eq(label(s, "topic"), "events");
    cr_assert_float_eq(s->value, -3, 1e-12);
    metrics_free(m);
}

Test(metrics, histogram_buckets_are_cumulative)
{
    static const double bounds[] = {0.1, 1, 10};
    struct metrics *m = metrics_new();
    struct metric *h;

    h = metrics_histogram(m, "nmfd_fold_seconds", "Fold time.",
                          "stage=\"solve\"", bounds, 3);
    cr_assert_not_null(h);
    metric_observe(h, 0.05);
    metric_observe(h, 0.1); /* le is inclusive */
    metric_observe(h, 0.5);
    metric_observe(h, 5);
    metric_observe(h, 50);
    metric_observe(h, NAN); /* dropped */
    cr_assert_float_eq(metric_value(h), 5, 1e-12);

    render(m, &P, NULL);
    cr_assert_str_eq(P.f[0].type, "histogram");
    static const char *les[] = {"0.1", "1", "10", "+Inf"};
    static const double want[] = {2, 3, 4, 5};
    double last = 0;

    for (int i = 0; i < 4; i++) {
        const struct sample *s =
            find(&P, "nmfd_fold_seconds_bucket", "le", les[i]);

        cr_assert_not_null(s, "bucket le=%s", les[i]);
        cr_assert_str_eq(label(s, "stage"), "solve");
        cr_assert_str_eq(s->key[s->nlabels - 1], "le", "le comes last");
        cr_assert_float_eq(s->value, want[i], 1e-12);
        cr_assert_geq(s->value, last);
        last = s->value;
    }
    const struct sample *cnt = find(&P, "nmfd_fold_seconds_count", NULL, NULL);
    const struct sample *sum = find(&P, "nmfd_fold_seconds_sum", NULL, NULL);

    cr_assert_float_eq(cnt->value, 5, 1e-12);
    cr_assert_float_eq(sum->value, 55.65, 1e-9);
    cr_assert_str_eq(label(sum, "stage"), "solve");
    /* The +Inf bucket equals _count. */
    cr_assert_float_eq(
        find(&P, "nmfd_fold_seconds_bucket", "le", "+Inf")->value, cnt->value,
        1e-12);
    metrics_free(m);
}

Test(metrics, histogram_without_bounds_and_bad_bounds)
{
    static const double bad[] = {1, 1};
    static const double inf[] = {1, INFINITY};
    struct metrics *m = metrics_new();
    struct metric *h = metrics_histogram(m, "h", "", NULL, NULL, 0);

    cr_assert_not_null(h);
    metric_observe(h, 3);
    cr_assert_null(metrics_histogram(m, "h2", "", NULL, bad, 2));
    cr_assert_null(metrics_histogram(m, "h3", "", NULL, inf, 2));
    cr_assert_null(metrics_histogram(m, "h4", "", "le=\"1\"", NULL, 0),
                   "le is reserved in histograms");
    render(m, &P, NULL);
    cr_assert_eq(P.nf, 1, "failed registrations leave no family");
    cr_assert_float_eq(find(&P, "h_bucket", "le", "+Inf")->value, 1, 1e-12);
    cr_assert_float_eq(find(&P, "h_sum", NULL, NULL)->value, 3, 1e-12);
    metrics_free(m);
}

Test(metrics, label_values_are_escaped)
{
    char buf[128];
    struct metrics *m = metrics_new();
    const char *nasty = "a\"b\\c\nd";

    cr_assert_eq(metrics_labels_format(buf, sizeof(buf), "topic", nasty,
                                       "partition", "3", NULL),
                 0);
    cr_assert_str_eq(buf, "topic=\"a\\\"b\\\\c\\nd\",partition=\"3\"");
    cr_assert_not_null(metrics_counter(m, "c_total", "h", buf));
    render(m, &P, NULL);
    cr_assert_str_eq(label(&P.s[0], "topic"), nasty);
    cr_assert_str_eq(label(&P.s[0], "partition"), "3");

    cr_assert_eq(metrics_labels_format(buf, 8, "topic", "events", NULL),
                 -ENOSPC);
    cr_assert_str_empty(buf);
    cr_assert_eq(metrics_labels_format(buf, sizeof(buf), "bad-key", "v", NULL),
                 -EINVAL);
    cr_assert_eq(metrics_labels_format(buf, sizeof(buf), NULL), 0);
    cr_assert_str_empty(buf);
    metrics_free(m);
}

Test(metrics, help_is_escaped)
{
    struct metrics *m = metrics_new();

    metrics_gauge(m, "g", "back\\slash and\nnewline", NULL);
    render(m, &P, NULL);
    cr_assert_str_eq(P.f[0].help, "back\\slash and\nnewline");
    metrics_free(m);
}

Test(metrics, malformed_registrations_are_refused)
{
    struct metrics *m = metrics_new();

    cr_assert_null(metrics_counter(m, "9starts_with_digit", "", NULL));
    cr_assert_null(metrics_counter(m, "has-dash", "", NULL));
    cr_assert_null(metrics_counter(m, "", "", NULL));
    cr_assert_null(metrics_counter(m, NULL, "", NULL));
    cr_assert_null(metrics_counter(m, "c", "", "k=v"));
    cr_assert_null(metrics_counter(m, "c", "", "k=\"v"));
    cr_assert_null(metrics_counter(m, "c", "", "k=\"a\"b\""));
    cr_assert_null(metrics_counter(m, "c", "", "k=\"a\nb\""));
    cr_assert_null(metrics_counter(m, "c", "", "k=\"\\t\""));
    cr_assert_null(metrics_counter(m, "c", "", "__k=\"v\""));
    cr_assert_null(metrics_counter(m, "c", "", "k=\"v\","));
    cr_assert_null(metrics_counter(m, "c", "", "a:b=\"v\""));
    cr_assert_null(metrics_gauge_fn(m, "c", "", NULL, NULL, NULL));
    cr_assert_not_null(metrics_counter(m, "ns:c_total", "", "k=\"\""));
    /* A name keeps its type. */
    cr_assert_null(metrics_gauge(m, "ns:c_total", "", "k=\"x\""));
    /* NULL metrics are ignored on the update path. */
    metric_add(NULL, 1);
    metric_set(NULL, 1);
    metric_observe(NULL, 1);
    cr_assert(isnan(metric_value(NULL)));
    render(m, &P, NULL);
    cr_assert_eq(P.nf, 1);
    cr_assert_eq(P.n, 1);
    cr_assert_str_eq(label(&P.s[0], "k"), "");
    metrics_free(m);
}

static double read_ctx(void *ctx)
{
    return *(double *)ctx;
}

Test(metrics, gauge_callbacks_run_at_render)
{
    struct metrics *m = metrics_new();
    double v = 1.5;

    cr_assert_not_null(
        metrics_gauge_fn(m, "nmfd_users", "Users.", NULL, read_ctx, &v));
    render(m, &P, NULL);
    cr_assert_str_eq(P.f[0].type, "gauge");
    cr_assert_float_eq(P.s[0].value, 1.5, 1e-12);
    v = 0.1;
    render(m, &P, NULL);
    cr_assert_float_eq(P.s[0].value, 0.1, 1e-15);
    v = INFINITY;
    render(m, &P, NULL);
    cr_assert(isinf(P.s[0].value) && P.s[0].value > 0);
    v = NAN;
    render(m, &P, NULL);
    cr_assert(isnan(P.s[0].value));
    metrics_free(m);
}

Test(metrics, values_read_back_exactly)
{
    static const double vals[] = {
        0.1, 1e-300, 123456789.125, 1e21, -2.5, 9007199254740993.0, 1.0 / 3};
    struct metrics *m = metrics_new();
    char *text;

    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char l[32];

        snprintf(l, sizeof(l), "i=\"%zu\"", i);
        metric_set(metrics_gauge(m, "v", "", l), vals[i]);
    }
    render(m, &P, &text);
    cr_assert_not_null(strstr(text, "v{i=\"0\"} 0.1\n"), "%s", text);
    cr_assert_not_null(strstr(text, "v{i=\"2\"} 123456789.125\n"));
    free(text);
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
        cr_assert_eq(P.s[i].value, vals[i], "value %zu round-trips", i);
    metrics_free(m);
}

Test(metrics, remove_drops_series_then_family)
{
    struct metrics *m = metrics_new();
    struct metric *a = metrics_gauge(m, "lag", "", "partition=\"0\"");
    struct metric *b = metrics_gauge(m, "lag", "", "partition=\"1\"");
    char *text = NULL;
    size_t len = 99;

    metrics_gauge(m, "other", "", NULL);
    metrics_remove(m, a);
    render(m, &P, NULL);
    cr_assert_eq(P.nf, 2);
    cr_assert_null(find(&P, "lag", "partition", "0"));
    cr_assert_not_null(find(&P, "lag", "partition", "1"));
    metrics_remove(m, b);
    render(m, &P, NULL);
    cr_assert_eq(P.nf, 1);
    cr_assert_str_eq(P.f[0].name, "other");
    metrics_remove(m, metrics_gauge(m, "other", "", NULL));
    cr_assert_eq(metrics_render(m, &text, &len), 0);
    cr_assert_eq(len, 0);
    cr_assert_str_empty(text);
    free(text);
    metrics_destroy(&m);
    cr_assert_null(m);
    cr_assert_eq(metrics_render(NULL, &text, &len), -EINVAL);
}

Test(metrics, process_gauges)
{
    struct metrics *m = metrics_new();
    double now = (double)time(NULL);

    cr_assert_eq(metrics_process_register(m), 0);
    cr_assert_gt(metrics_process_rss_bytes(), 1 << 20);
    render(m, &P, NULL);
    const struct sample *rss =
        find(&P, "process_resident_memory_bytes", NULL, NULL);
    const struct sample *st =
        find(&P, "process_start_time_seconds", NULL, NULL);
    const struct sample *cpu =
        find(&P, "process_cpu_seconds_total", NULL, NULL);
    const struct sample *fds = find(&P, "process_open_fds", NULL, NULL);

    cr_assert(rss && st && cpu && fds);
    cr_assert_gt(rss->value, 1 << 20);
    /* Started before now, and not before this test binary was built. */
    cr_assert_leq(st->value, now + 1);
    cr_assert_gt(st->value, now - 3600);
    cr_assert_geq(cpu->value, 0);
    cr_assert_geq(fds->value, 3);
    cr_assert_str_eq(family(&P, "process_cpu_seconds_total")->type, "counter");
    metrics_free(m);
}

Test(metrics, hot_path_is_a_plain_add)
{
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "c_total", "", NULL);
    struct timespec t0, t1;
    const long n = 10000000;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        metric_add(c, 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_float_eq(metric_value(c), (double)n, 0.5);
    /* Generous even for sanitized builds: 10M adds well under 2 s. */
    cr_assert_lt((double)(t1.tv_sec - t0.tv_sec) +
                     (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
                 2.0);
    metrics_free(m);
}
