/* ctl_gen.c -- nmfctl gen: a synthetic engagement stream with planted
 * segments, for tests, demos and benchmarks.
 *
 * Every user belongs to one of k segments; every segment owns a disjoint
 * bundle of items (a seeded shuffle of the items cut into k blocks) with
 * Zipf popularity inside the bundle. An event picks a user by Zipf
 * activity over users (s = 1.1), then with probability 1 - noise an item
 * of the user's bundle, else any item uniformly. Events come out in time
 * order, ts strictly increasing in milliseconds. With --drift a fraction
 * of the users move to another segment at one event; --truth records
 * every user's segment before and after. The output is a pure function
 * of the arguments and the seed (rng.h: xoshiro256** seeded by splitmix64,
 * Walker alias tables, integer formatting), so a stream can be remade
 * anywhere. This file only writes CSV text: it never touches the model.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "rng.h"

#define GEN_T0_MS   1700000000000LL /* 2023-11-14T22:13:20Z */
#define GEN_STEP_MS 100             /* one event every 100 ms */

static const char gen_usage[] =
    "usage: nmfctl gen --users N --items M --k K --events E [--seed S]\n"
    "                  [--drift [AT]] [--drift-fraction F] [--noise F]\n"
    "                  [--truth FILE] > events.csv\n"
    "\n"
    "Writes a planted-segment stream as CSV (user,item,weight,ts) to\n"
    "stdout. Each user belongs to one of K segments, each segment owns a\n"
    "disjoint bundle of about M/K items with Zipf popularity; user\n"
    "activity is Zipf (s = 1.1). Users are u0..u(N-1), items i0..i(M-1),\n"
    "weight 1, ts in milliseconds from 1700000000000, 100 ms apart.\n"
    "\n"
    "  --users N           users (>= 1)\n"
    "  --items M           items (>= K)\n"
    "  --k K               segments (>= 1)\n"
    "  --events E          events (>= 0)\n"
    "  --seed S            random seed (default 1); same seed, same bytes\n"
    "  --noise F           share of events on a uniform item (default "
    "0.05)\n"
    "  --drift [AT]        at event AT (default E/2) a fraction of the\n"
    "                      users switch to another segment\n"
    "  --drift-fraction F  that fraction (default 0.2)\n"
    "  --truth FILE        writes user,segment (plus after,switch_ts with\n"
    "                      --drift) for every user that has events\n";

/* Walker's alias table for a discrete distribution over n outcomes. */
struct gen_alias {
    uint32_t n;
    double *prob;
    uint32_t *alias;
};

/* Builds the table for weights 1/(r+1)^s, r = 0..n-1 (Vose's method). */
static int gen_alias_zipf(struct gen_alias *a, uint32_t n, double s)
{
    double *p = malloc(n * sizeof(*p));
    uint32_t *small = malloc(n * sizeof(*small));
    uint32_t *large = malloc(n * sizeof(*large));
    double sum = 0;
    uint32_t ns = 0, nl = 0;
    int rc = -ENOMEM;

    a->n = n;
    a->prob = malloc(n * sizeof(*a->prob));
    a->alias = malloc(n * sizeof(*a->alias));
    if (!p || !small || !large || !a->prob || !a->alias)
        goto out;
    for (uint32_t i = 0; i < n; i++)
        sum += p[i] = pow((double)i + 1, -s);
    for (uint32_t i = 0; i < n; i++) {
        p[i] = p[i] * n / sum;
        if (p[i] < 1)
            small[ns++] = i;
        else
            large[nl++] = i;
    }
    while (ns > 0 && nl > 0) {
        uint32_t l = small[--ns], g = large[nl - 1];
        a->prob[l] = p[l];
        a->alias[l] = g;
        p[g] = (p[g] + p[l]) - 1;
        if (p[g] < 1) {
            nl--;
            small[ns++] = g;
        }
    }
    while (nl > 0) {
        uint32_t g = large[--nl];
        a->prob[g] = 1;
        a->alias[g] = g;
    }
    while (ns > 0) {
        uint32_t l = small[--ns];
        a->prob[l] = 1;
        a->alias[l] = l;
    }
    rc = 0;
out:
    free(p);
    free(small);
    free(large);
    return rc;
}

static uint32_t gen_alias_draw(const struct gen_alias *a, struct rng *r)
{
    uint32_t i = (uint32_t)rng_below(r, a->n);
    return rng_uniform(r) < a->prob[i] ? i : a->alias[i];
}

static void gen_alias_free(struct gen_alias *a)
{
    free(a->prob);
    free(a->alias);
}

/* Decimal text of v at p; returns the end. */
static char *gen_utoa(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* Parses a whole decimal number in [min, max]. */
static int gen_parse_u64(const char *s, uint64_t min, uint64_t max,
                         uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int gen_parse_frac(const char *s, double *out)
{
    char *end;
    if (!s || !*s)
        return -EINVAL;
    double v = strtod(s, &end);
    if (*end || !(v >= 0 && v <= 1))
        return -EINVAL;
    *out = v;
    return 0;
}

static int gen_bad(const char *msg, const char *arg)
{
    fprintf(stderr, "nmfctl gen: %s%s%s\nTry 'nmfctl gen --help'.\n", msg,
            arg ? ": " : "", arg ? arg : "");
    return 2;
}

struct gen_opts {
    uint64_t users, items, k, events, seed, drift_at;
    bool drift;
    double drift_fraction, noise;
    const char *truth;
};

static int gen_write_truth(const struct gen_opts *o, const uint32_t *seg,
                           const uint32_t *after, const uint8_t *seen)
{
    FILE *f = fopen(o->truth, "w");
    if (!f) {
        fprintf(stderr, "nmfctl gen: %s: %s\n", o->truth, strerror(errno));
        return 1;
    }
    int64_t switch_ts = GEN_T0_MS + (int64_t)o->drift_at * GEN_STEP_MS;
    fputs(o->drift ? "user,segment,after,switch_ts\n" : "user,segment\n", f);
    for (uint64_t u = 0; u < o->users; u++) {
        if (!seen[u])
            continue;
        if (!o->drift)
            fprintf(f, "u%llu,%u\n", (unsigned long long)u, seg[u]);
        else if (after[u] == seg[u])
            fprintf(f, "u%llu,%u,%u,\n", (unsigned long long)u, seg[u],
                    after[u]);
        else
            fprintf(f, "u%llu,%u,%u,%lld\n", (unsigned long long)u, seg[u],
                    after[u], (long long)switch_ts);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "nmfctl gen: %s: %s\n", o->truth, strerror(errno));
        return 1;
    }
    return 0;
}

static int gen_run(const struct gen_opts *o)
{
    uint32_t nu = (uint32_t)o->users, ni = (uint32_t)o->items;
    uint32_t k = (uint32_t)o->k;
    struct rng rng;
    struct gen_alias ua = {0}, *ia = NULL;
    uint32_t *seg = NULL, *after = NULL, *perm = NULL, *start = NULL;
    uint8_t *seen = NULL;
    char *obuf = NULL;
    size_t olen = 0, ocap = 1 << 20;
    int rc = 1;

    rng_seed(&rng, o->seed);
    seg = malloc(nu * sizeof(*seg));
    after = malloc(nu * sizeof(*after));
    seen = calloc(nu, 1);
    perm = malloc(ni * sizeof(*perm));
    start = malloc((k + 1) * sizeof(*start));
    ia = calloc(k, sizeof(*ia));
    obuf = malloc(ocap);
    if (!seg || !after || !seen || !perm || !start || !ia || !obuf)
        goto nomem;

    /* Segments: a uniform draw per user. */
    for (uint32_t u = 0; u < nu; u++)
        after[u] = seg[u] = (uint32_t)rng_below(&rng, k);
    /* Bundles: shuffle the items, cut into k nearly equal blocks; the
     * first item of a block is its most popular. */
    for (uint32_t i = 0; i < ni; i++)
        perm[i] = i;
    for (uint32_t i = ni; i > 1; i--) {
        uint32_t j = (uint32_t)rng_below(&rng, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    for (uint32_t j = 0; j <= k; j++)
        start[j] = (uint32_t)((uint64_t)ni * j / k);
    for (uint32_t j = 0; j < k; j++)
        if (gen_alias_zipf(&ia[j], start[j + 1] - start[j], 1.0) < 0)
            goto nomem;
    if (gen_alias_zipf(&ua, nu, 1.1) < 0)
        goto nomem;
    /* Drifting users and their new segments, drawn up front so the
     * stream before the drift does not depend on --drift-fraction. */
    if (o->drift && k > 1) {
        struct rng drng;
        rng_seed(&drng, o->seed ^ 0x6472696674ULL);
        for (uint32_t u = 0; u < nu; u++) {
            if (rng_uniform(&drng) >= o->drift_fraction)
                continue;
            uint32_t s = (uint32_t)rng_below(&drng, k - 1);
            after[u] = s >= seg[u] ? s + 1 : s;
        }
    }

    static const char header[] = "user,item,weight,ts\n";
    memcpy(obuf, header, sizeof(header) - 1);
    olen = sizeof(header) - 1;
    for (uint64_t e = 0; e < o->events; e++) {
        uint32_t u = gen_alias_draw(&ua, &rng);
        uint32_t s = (o->drift && e >= o->drift_at) ? after[u] : seg[u];
        uint32_t item;

        if (rng_uniform(&rng) < o->noise)
            item = (uint32_t)rng_below(&rng, ni);
        else
            item = perm[start[s] + gen_alias_draw(&ia[s], &rng)];
        seen[u] = 1;
        if (ocap - olen < 96) {
            if (fwrite(obuf, 1, olen, stdout) != olen)
                goto write_err;
            olen = 0;
        }
        char *p = obuf + olen;
        *p++ = 'u';
        p = gen_utoa(p, u);
        *p++ = ',';
        *p++ = 'i';
        p = gen_utoa(p, item);
        memcpy(p, ",1,", 3);
        p += 3;
        p = gen_utoa(p, (uint64_t)(GEN_T0_MS + (int64_t)e * GEN_STEP_MS));
        *p++ = '\n';
        olen = (size_t)(p - obuf);
    }
    if (fwrite(obuf, 1, olen, stdout) != olen || fflush(stdout) != 0)
        goto write_err;
    rc = o->truth ? gen_write_truth(o, seg, after, seen) : 0;
    goto out;
nomem:
    fprintf(stderr, "nmfctl gen: out of memory\n");
    goto out;
write_err:
    fprintf(stderr, "nmfctl gen: writing the events: %s\n", strerror(errno));
out:
    if (ia)
        for (uint32_t j = 0; j < k; j++)
            gen_alias_free(&ia[j]);
    gen_alias_free(&ua);
    free(ia);
    free(seg);
    free(after);
    free(seen);
    free(perm);
    free(start);
    free(obuf);
    return rc;
}

int ctl_gen_main(int argc, char **argv)
{
    enum {
        O_USERS = 1,
        O_ITEMS,
        O_K,
        O_EVENTS,
        O_SEED,
        O_DRIFT,
        O_FRAC,
        O_NOISE,
        O_TRUTH,
        O_HELP
    };
    static const struct option longopts[] = {
        {"users", required_argument, NULL, O_USERS},
        {"items", required_argument, NULL, O_ITEMS},
        {"k", required_argument, NULL, O_K},
        {"events", required_argument, NULL, O_EVENTS},
        {"seed", required_argument, NULL, O_SEED},
        {"drift", optional_argument, NULL, O_DRIFT},
        {"drift-fraction", required_argument, NULL, O_FRAC},
        {"noise", required_argument, NULL, O_NOISE},
        {"truth", required_argument, NULL, O_TRUTH},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct gen_opts o = {.seed = 1, .drift_fraction = 0.2, .noise = 0.05};
    bool have_at = false, have_events = false;
    int c;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case O_USERS:
            if (gen_parse_u64(a, 1, UINT32_MAX, &o.users) < 0)
                return gen_bad("--users wants a whole number >= 1", a);
            break;
        case O_ITEMS:
            if (gen_parse_u64(a, 1, UINT32_MAX, &o.items) < 0)
                return gen_bad("--items wants a whole number >= 1", a);
            break;
        case O_K:
            if (gen_parse_u64(a, 1, 1u << 20, &o.k) < 0)
                return gen_bad("--k wants a whole number >= 1", a);
            break;
        case O_EVENTS:
            if (gen_parse_u64(a, 0, UINT64_MAX / 2, &o.events) < 0)
                return gen_bad("--events wants a whole number >= 0", a);
            have_events = true;
            break;
        case O_SEED:
            if (gen_parse_u64(a, 0, UINT64_MAX, &o.seed) < 0)
                return gen_bad("--seed wants a whole number", a);
            break;
        case O_DRIFT:
            o.drift = true;
            /* "--drift AT" as well as "--drift=AT". */
            if (!a && optind < argc && argv[optind][0] >= '0' &&
                argv[optind][0] <= '9')
                a = argv[optind++];
            if (a) {
                if (gen_parse_u64(a, 0, UINT64_MAX / 2, &o.drift_at) < 0)
                    return gen_bad("--drift wants an event number", a);
                have_at = true;
            }
            break;
        case O_FRAC:
            if (gen_parse_frac(a, &o.drift_fraction) < 0)
                return gen_bad("--drift-fraction wants a number in [0, 1]", a);
            break;
        case O_NOISE:
            if (gen_parse_frac(a, &o.noise) < 0)
                return gen_bad("--noise wants a number in [0, 1]", a);
            break;
        case O_TRUTH:
            if (!*a)
                return gen_bad("--truth wants a file name", NULL);
            o.truth = a;
            break;
        case O_HELP:
            fputs(gen_usage, stdout);
            return 0;
        case ':':
            return gen_bad("missing value for", argv[optind - 1]);
        default:
            return gen_bad("unknown option", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return gen_bad("unexpected argument", argv[optind]);
    if (!o.users || !o.items || !o.k || !have_events)
        return gen_bad("--users, --items, --k and --events are required", NULL);
    if (o.items < o.k)
        return gen_bad("--items must be at least --k (one item per "
                       "segment)",
                       NULL);
    if (!have_at)
        o.drift_at = o.events / 2;
    if (o.drift && o.drift_at > o.events)
        return gen_bad("--drift AT is past the last event", NULL);
    return gen_run(&o);
}
