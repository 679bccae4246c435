/* bench_holdout.c -- what one held-out score costs: model_stats on a model
 * with model.holdout = share, folded from a planted stream.
 *
 * Generates in memory a stream as bench_fold does (k segments, Zipf users
 * and items, 2% random items), folds it, then times model_stats (its
 * holdout_loss among the rest) in three states:
 *   still   -- nothing changed since the last call (the metrics gauges
 *              and the status line call it in a row);
 * then times the fold of 200 000 more events (ns each: a model whose
 * held-out score has been taken keeps it up to date as it folds), then
 *   folds   -- after 1 000 more events folded (untimed);
 *   refresh -- after a model_refresh (untimed): a new W.
 * A refresh before the first call settles the B shares the fold left
 * owed, which model_stats' own loss otherwise reads. Each figure is the
 * median of reps calls, in ms of wall clock and of the thread's CPU.
 * With share 0 the same calls give model_stats without a held-out
 * matrix. With a share, each state is also made anew (other events, a
 * further refresh) and the held-out score timed alone (holdout_score,
 * thread CPU): the part of model_stats that is the held-out matrix's.
 *
 *   bench_holdout [users items k events share [reps [half_life_ms [ttl_ms]]]]
 *   defaults:      1000000 100000 16 5000000 0.1 21 0 0
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "model.h"
#include "model_impl.h" /* m->ho: the held-out score alone */

static uint64_t rs = 0x1234567; /* the stream generator's state */

static double median(double *x, int n)
{
    qsort(x, n, sizeof(double), bench_cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

struct stream {
    uint32_t users, items, k, per;
    double *ucdf, *icdf;
    uint64_t n; /* events drawn so far: the next event's time */
};

static int fold_next(struct model *m, struct stream *s)
{
    uint32_t r = bench_zipf_draw(&rs, s->ucdf, s->users);
    uint32_t u = (uint32_t)(((uint64_t)r * 2654435761u) % s->users);
    uint32_t i;
    if (bench_unif(&rs) < 0.02)
        i = (uint32_t)(bench_unif(&rs) * s->items);
    else
        i = (u % s->k) * s->per + bench_zipf_draw(&rs, s->icdf, s->per);
    char us[16], is[16];
    int ul = snprintf(us, sizeof(us), "u%07u", u);
    int il = snprintf(is, sizeof(is), "i%06u", i);
    return model_fold(m, us, (size_t)ul, is, (size_t)il, 1.0,
                      1700000000000 + (int64_t)s->n++);
}

/* One call's wall ms; its thread CPU ms into *cpu (what a busy host
 * distorts less). */
static double time_stats(const struct model *m, struct model_stats *st,
                         double *cpu)
{
    double t = bench_wall_ms(), c = bench_cpu_ms();
    model_stats(m, st);
    *cpu = bench_cpu_ms() - c;
    return bench_wall_ms() - t;
}

/* The held-out score alone (holdout_score, which model_stats calls): its
 * thread CPU ms. */
static double time_score(struct model *m)
{
    struct holdout_score hs;
    double c = bench_cpu_ms();
    holdout_score(m->ho, m, &hs);
    return bench_cpu_ms() - c;
}

int main(int argc, char **argv)
{
    struct stream s = {0};
    s.users = argc > 1 ? (uint32_t)atol(argv[1]) : 1000000;
    s.items = argc > 2 ? (uint32_t)atol(argv[2]) : 100000;
    s.k = argc > 3 ? (uint32_t)atol(argv[3]) : 16;
    uint64_t events = argc > 4 ? (uint64_t)atoll(argv[4]) : 5000000;
    double share = argc > 5 ? atof(argv[5]) : 0.1;
    int reps = argc > 6 ? atoi(argv[6]) : 21;
    int64_t hl = argc > 7 ? atoll(argv[7]) : 0;
    int64_t ttl = argc > 8 ? atoll(argv[8]) : 0;
    if (!s.users || !s.items || !s.k || s.k > MODEL_K_MAX || s.items < s.k ||
        !events || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: bench_holdout [users items k events share "
                        "[reps [half_life_ms [ttl_ms]]]]\n");
        return 2;
    }
    s.per = s.items / s.k;
    s.ucdf = bench_zipf_cdf(s.users, 0.8);
    s.icdf = bench_zipf_cdf(s.per, 1.0);

    struct model_params p;
    model_params_default(&p);
    p.k = s.k;
    p.holdout = share;
    p.half_life_ms = hl;
    p.ttl_ms = ttl;
    struct model *m = model_new(&p);
    if (!m) {
        fprintf(stderr, "model_new failed\n");
        return 1;
    }
    double t0 = bench_wall_ms();
    for (uint64_t e = 0; e < events; e++) {
        int rc = fold_next(m, &s);
        if (rc) {
            fprintf(stderr, "fold: %d\n", rc);
            return 1;
        }
    }
    double fold_ms = bench_wall_ms() - t0;
    /* The model's own debt settled first (the B shares a sync owes,
     * which model_stats' loss reads user by user until a refresh), so
     * that the figures below are the held-out score's and the rest's
     * O(items k). */
    model_refresh(m);
    struct model_stats st;
    double cfirst, first = time_stats(m, &st, &cfirst);
    double *still = malloc(9 * reps * sizeof(double));
    double *sstill = still + 6 * reps, *sfolds = sstill + reps,
           *srefresh = sfolds + reps;
    double *folds = still + reps, *refresh = folds + reps;
    double *cstill = refresh + reps, *cfolds = cstill + reps,
           *crefresh = cfolds + reps;
    for (int r = 0; r < reps; r++)
        still[r] = time_stats(m, &st, &cstill[r]);
    for (int r = 0; r < reps && m->ho; r++)
        sstill[r] = time_score(m);
    /* The fold once a score has been taken (the daemon's case: the
     * held-out cache, where there is one, follows every re-solve). */
    const int nfold = 200000;
    double f0 = bench_wall_ms(), fc0 = bench_cpu_ms();
    for (int e = 0; e < nfold; e++)
        if (fold_next(m, &s))
            return 1;
    double fold_ns = (bench_wall_ms() - f0) * 1e6 / nfold,
           fold_cns = (bench_cpu_ms() - fc0) * 1e6 / nfold;
    int refreshed = 0; /* 1 000-event rounds with a refresh of the fold's */
    for (int r = 0; r < reps; r++) {
        uint64_t r0 = model_refreshes(m);
        for (int e = 0; e < 1000; e++)
            if (fold_next(m, &s))
                return 1;
        refreshed += model_refreshes(m) != r0;
        folds[r] = time_stats(m, &st, &cfolds[r]);
        for (int e = 0; e < 1000 && m->ho; e++)
            if (fold_next(m, &s))
                return 1;
        if (m->ho)
            sfolds[r] = time_score(m);
    }
    for (int r = 0; r < reps; r++) {
        model_refresh(m);
        refresh[r] = time_stats(m, &st, &crefresh[r]);
        if (m->ho) {
            model_refresh(m);
            srefresh[r] = time_score(m);
        }
    }
    printf("users %u items %u k %u events %llu share %g half_life %lld "
           "ttl %lld: folded in %.1f s\n",
           s.users, s.items, s.k, (unsigned long long)events, share,
           (long long)hl, (long long)ttl, fold_ms / 1e3);
    printf("then %d events folded at %.0f ns each (%.0f ns CPU)\n", nfold,
           fold_ns, fold_cns);
    printf("%d of the %d rounds of 1000 folds refreshed W\n", refreshed,
           reps);
    printf("held-out pairs %llu events %llu, holdout_loss %.9g\n",
           (unsigned long long)st.holdout_pairs,
           (unsigned long long)st.holdout_events, st.holdout_loss);
    printf("model_stats ms (median of %d): first %.3f still %.4f "
           "after 1000 folds %.3f after a refresh %.3f\n",
           reps, first, median(still, reps), median(folds, reps),
           median(refresh, reps));
    printf("model_stats cpu ms (median of %d): first %.3f still %.4f "
           "after 1000 folds %.3f after a refresh %.3f\n",
           reps, cfirst, median(cstill, reps), median(cfolds, reps),
           median(crefresh, reps));
    if (m->ho)
        printf("held-out score alone, cpu ms (median of %d): still %.4f "
               "after 1000 folds %.3f after a refresh %.3f\n",
               reps, median(sstill, reps), median(sfolds, reps),
               median(srefresh, reps));
    free(still);
    free(s.ucdf);
    free(s.icdf);
    model_free(m);
    return 0;
}
