/* bench_fold.c -- throughput and latency of model_fold on a planted stream.
 *
 * Generates in memory a stream with k planted segments (each segment its
 * own bundle of items, Zipf-popular within the bundle, 2% of events on
 * random items), users with Zipf activity, then folds it into fresh models
 * and prints folds/s (wall clock, and per second of the thread's CPU time,
 * which a busy machine does not distort), ns/event (median and p99 over
 * batches timed with clock_gettime), the W refresh time (median of 5,
 * after one untimed event per item so that W has every item row), and
 * memory per user and per profile entry. Generation is not timed.
 *
 * Mode "single" calls model_fold per event, "batch" hands each timed batch
 * to model_fold_batch (same results, with look-ahead prefetching).
 *
 *   bench_fold [users items k events [runs [zipf_s [single|batch
 *               [profile_max [none|l21|kl]]]]]]]
 * The last is model.robust (none, l21) or model.loss = kl (default none:
 * Frobenius, not robust).
 *   defaults:   100000 10000 16 1000000 3 0.8 batch (model default)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "model.h"

#define BATCH 256

static uint64_t rs = 0x1234567; /* the stream generator's state */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double median(double *x, int n)
{
    qsort(x, n, sizeof(double), bench_cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* Ids as fixed-width strings in one block: "u0000042". */
static char *make_ids(char prefix, uint32_t n, int width)
{
    char *s = malloc((size_t)n * width + 1);
    for (uint32_t i = 0; i < n; i++) {
        char *d = s + (size_t)i * width;
        uint32_t x = i;
        d[0] = prefix;
        for (int c = width - 1; c > 0; c--, x /= 10)
            d[c] = (char)('0' + x % 10);
    }
    return s;
}

int main(int argc, char **argv)
{
    uint32_t users = argc > 1 ? (uint32_t)atol(argv[1]) : 100000;
    uint32_t items = argc > 2 ? (uint32_t)atol(argv[2]) : 10000;
    uint32_t k = argc > 3 ? (uint32_t)atol(argv[3]) : 16;
    uint64_t events = argc > 4 ? (uint64_t)atoll(argv[4]) : 1000000;
    int runs = argc > 5 ? atoi(argv[5]) : 3;
    double zs = argc > 6 ? atof(argv[6]) : 0.8;
    int batch = argc > 7 ? strcmp(argv[7], "single") != 0 : 1;
    uint32_t profile_max = argc > 8 ? (uint32_t)atol(argv[8]) : 0;
    uint32_t robust = argc > 9 && !strcmp(argv[9], "l21") ? MODEL_ROBUST_L21
                                                          : MODEL_ROBUST_NONE;
    uint32_t loss = argc > 9 && !strcmp(argv[9], "kl") ? MODEL_LOSS_KL
                                                       : MODEL_LOSS_FROBENIUS;
    if (!users || !items || !k || k > MODEL_K_MAX || items < k || !events ||
        runs < 1 || runs > 20) {
        fprintf(stderr, "usage: bench_fold [users items k events [runs "
                        "[zipf_s]]]\n");
        return 2;
    }

    /* The stream. */
    uint32_t per = items / k;
    double *ucdf = bench_zipf_cdf(users, zs), *icdf = bench_zipf_cdf(per, 1.0);
    uint32_t *eu = malloc(events * sizeof(uint32_t));
    uint32_t *ei = malloc(events * sizeof(uint32_t));
    for (uint64_t e = 0; e < events; e++) {
        uint32_t r = bench_zipf_draw(&rs, ucdf, users);
        uint32_t u = (uint32_t)(((uint64_t)r * 2654435761u) % users);
        uint32_t i;
        if (bench_unif(&rs) < 0.02)
            i = (uint32_t)(bench_unif(&rs) * items);
        else
            i = (u % k) * per + bench_zipf_draw(&rs, icdf, per);
        eu[e] = u;
        ei[e] = i;
    }
    int uw = 1 + (int)ceil(log10(users + 1.0)) + 1,
        iw = 1 + (int)ceil(log10(items + 1.0)) + 1;
    char *uid = make_ids('u', users, uw), *iid = make_ids('i', items, iw);
    /* Events as a decoder would hand them over: the ids of each event
     * next to each other in one sequential buffer. */
    size_t evw = (size_t)uw + iw;
    char *evs = malloc(events * evw);
    for (uint64_t e = 0; e < events; e++) {
        memcpy(evs + e * evw, uid + (size_t)eu[e] * uw, uw);
        memcpy(evs + e * evw + uw, iid + (size_t)ei[e] * iw, iw);
    }
    free(eu);
    free(ei);
    free(uid);

    uint64_t nb = (events + BATCH - 1) / BATCH;
    double *lat = malloc(nb * sizeof(double));
    double rate[20], crate[20], med[20], p99[20], refresh[20], bpu[20], bpe[20],
        prof[20];
    struct model_stats st;
    for (int run = 0; run < runs; run++) {
        struct model_params p;
        model_params_default(&p);
        if (profile_max)
            p.profile_max = profile_max;
        p.robust = robust;
        p.loss = loss;
        p.k = k;
        struct model *m = model_new(&p);
        double t0 = now_ns(), c0 = cpu_ns();
        for (uint64_t b = 0; b < nb; b++) {
            uint64_t e0 = b * BATCH, e1 = e0 + BATCH;
            if (e1 > events)
                e1 = events;
            double a = now_ns();
            if (batch) {
                struct model_event mev[BATCH];
                int rcs[BATCH];
                for (uint64_t e = e0; e < e1; e++) {
                    const char *ev = evs + e * evw;
                    mev[e - e0] = (struct model_event){
                        ev,         (size_t)uw, ev + uw,
                        (size_t)iw, 1.0,        1700000000000 + (int64_t)e};
                }
                if (model_fold_batch(m, mev, e1 - e0, rcs) != e1 - e0) {
                    fprintf(stderr, "fold: %d\n", rcs[0]);
                    return 1;
                }
            } else {
                for (uint64_t e = e0; e < e1; e++) {
                    const char *ev = evs + e * evw;
                    int rc = model_fold(m, ev, uw, ev + uw, iw, 1.0,
                                        1700000000000 + (int64_t)e);
                    if (rc) {
                        fprintf(stderr, "fold: %d\n", rc);
                        return 1;
                    }
                }
            }
            lat[b] = (now_ns() - a) / (double)(e1 - e0);
        }
        double total = now_ns() - t0;
        crate[run] = events / ((cpu_ns() - c0) * 1e-9);
        rate[run] = events / (total * 1e-9);
        qsort(lat, nb, sizeof(double), bench_cmp_double);
        med[run] = lat[nb / 2];
        p99[run] = lat[(size_t)(nb * 0.99)];
        struct model_memory mm;
        model_memory(m, &mm);
        model_stats(m, &st);
        bpu[run] = (double)mm.users / st.users;
        bpe[run] = (double)mm.profiles / mm.profile_entries;
        prof[run] = (double)mm.profile_entries / st.users;
        /* Untimed: one event per item, so that the refresh below runs
         * over every item row (a Zipf stream leaves some unseen). */
        for (uint32_t i = 0; i < items; i++) {
            char fu[16];
            int fl = snprintf(fu, sizeof(fu), "fill%u", i / 500);
            if (model_fold(m, fu, (size_t)fl, iid + (size_t)i * iw, iw, 1.0,
                           1700000000000 + (int64_t)events)) {
                fprintf(stderr, "fill failed\n");
                return 1;
            }
        }
        uint32_t ritems = model_item_slots(m);
        double rt[5];
        for (int r = 0; r < 5; r++) {
            double a = now_ns();
            model_refresh(m);
            rt[r] = (now_ns() - a) * 1e-6;
        }
        refresh[run] = median(rt, 5);
        printf("run %d: %.0f folds/s (%.0f per CPU second), median %.0f "
               "ns/event, p99 %.0f ns, "
               "refresh %.1f ms over %u items, rel loss %.7f, %lu users, %lu "
               "items, "
               "%lu refreshes\n",
               run, rate[run], crate[run], med[run], p99[run], refresh[run],
               ritems, st.rel_loss, (unsigned long)st.users,
               (unsigned long)st.items, (unsigned long)st.refreshes);
        fflush(stdout);
        model_free(m);
    }
    printf("users %u items %u k %u events %lu zipf %.2f runs %d mode %s\n",
           users, items, k, (unsigned long)events, zs, runs,
           batch ? "batch" : "single");
    printf("median: %.2f M folds/s (%.2f M per CPU second), %.0f ns/event "
           "median, %.0f ns p99 "
           "(batches of %d), refresh %.1f ms, %.1f bytes/user, "
           "%.2f bytes/profile entry, %.1f entries/user\n",
           median(rate, runs) * 1e-6, median(crate, runs) * 1e-6,
           median(med, runs), median(p99, runs), BATCH, median(refresh, runs),
           median(bpu, runs), median(bpe, runs), median(prof, runs));
    free(ucdf);
    free(icdf);
    free(evs);
    free(iid);
    free(lat);
    return 0;
}
