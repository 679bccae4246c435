/* bench_recommend.c -- latency of a recommendation (model_recommend: the
 * pruned top-n scan leaving out the profile) on a real model of M items,
 * against the full float32 scan of W (model_top_scores) for the same
 * requests.
 *
 * The planted model is built by folding one event per item, then half as
 * many more on items of the user's group (k groups, users of about 30
 * items each), then refined. The item indices follow the groups (a run of
 * ids per group, as items arriving in bursts of one kind) or, with
 * --shuffled, a fixed permutation of them (no locality for the chunks'
 * bounds). --events FILE builds the model from an event file (in data/)
 * instead, the items list then ignored. Each request is one
 * model_recommend for a random user, timed on the wall clock, the way GET
 * /users/ID/recommend calls it (one core, the caller's thread). Then the
 * same requests by the full scan, for comparison, each answer checked to
 * be the same items and scores bit for bit (mismatches=0). Last, what
 * each bound leaves to read at the answer's n-th score thr, for the same
 * requests: the share of the chunks of 64 rows whose bound from the
 * column maxima beats wbound_floor(thr) (chunks_left), and the share of
 * rows whose 8-bit bound does (rows_left), over the rows of all chunks;
 * and the CPU time to re-quantise all M rows (requantise_ms), what
 * keeping the copy adds to a refresh.
 *
 *   bench_recommend [--shuffled] [--events FILE] [k [n [requests
 *                   [items...]]]]
 *       defaults: 16 10 500 100000 1000000
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "csv.h"
#include "model.h"
#include "rng.h"
#include "wbound.h"

static int bench_u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int build_planted(struct model *m, uint32_t k, uint32_t items,
                         int shuffled, struct rng *r)
{
    uint32_t users = items / 20 ? items / 20 : 1;
    /* i -> i * 2654435761 mod items is a permutation when items is prime
     * to the multiplier (odd, not a multiple of 5 etc.): checked below. */
    uint64_t mul = 2654435761u;
    for (int x = 0; shuffled && x < 64; x++) {
        uint64_t a = mul, b = items;
        while (b) {
            uint64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1)
            break;
        mul += 2;
    }
    for (uint32_t e = 0; e < items + items / 2; e++) {
        char us[24], is[24];
        /* Users in k groups, each group's items a run of ids: the data
         * has k topics to find. */
        uint32_t u = (uint32_t)rng_below(r, users);
        uint32_t i = (u % k) * (items / k) + (uint32_t)rng_below(r, items / k);
        if (e < items) { /* every item once, by a user of its group */
            i = shuffled ? (uint32_t)((uint64_t)e * mul % items) : e;
            u = (uint32_t)(rng_below(r, users / k + 1) * k + i / (items / k));
            u %= users;
        }
        int ul = snprintf(us, sizeof(us), "u%u", u);
        int il = snprintf(is, sizeof(is), "i%u", i);
        if (model_fold(m, us, (size_t)ul, is, (size_t)il, 1, e)) {
            fprintf(stderr, "fold failed\n");
            return 1;
        }
    }
    return 0;
}

static int build_events(struct model *m, const char *path)
{
    char err[256];
    struct csv_reader *cr = csv_open(path, err, sizeof(err));
    if (!cr) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct csv_row row;
    int rc;
    while ((rc = csv_next(cr, &row)) != 0) {
        if (rc < 0 || model_fold(m, row.user, row.user_len, row.item,
                                 row.item_len, row.weight, row.ts)) {
            fprintf(stderr, "%s\n", rc < 0 ? csv_error(cr) : "fold failed");
            csv_close(cr);
            return 1;
        }
    }
    csv_close(cr);
    return 0;
}

static int bench(uint32_t k, uint32_t n, int requests, uint32_t items,
                 int shuffled, const char *events)
{
    struct model_params p;
    model_params_default(&p);
    p.k = k;
    struct model *m = model_new(&p);
    if (!m)
        return 1;
    struct rng r;
    rng_seed(&r, 7);
    double t0 = bench_wall_ms();
    if (events ? build_events(m, events)
               : build_planted(m, k, items, shuffled, &r)) {
        model_free(m);
        return 1;
    }
    for (int x = 0; x < 3; x++)
        model_refine(m, SIZE_MAX);
    double build = bench_wall_ms() - t0;
    uint32_t M = model_item_slots(m), U = model_user_slots(m);
    uint32_t *out = malloc(n * sizeof(uint32_t));
    uint32_t *ref = malloc(n * sizeof(uint32_t));
    float *sc = malloc(n * sizeof(float)), *sr = malloc(n * sizeof(float));
    double *lat = malloc((size_t)requests * sizeof(double));
    double *full = malloc((size_t)requests * sizeof(double));
    uint32_t *who = malloc((size_t)requests * sizeof(uint32_t));
    uint64_t got = 0;
    for (int q = 0; q < requests; q++) {
        uint32_t u = (uint32_t)rng_below(&r, U);
        who[q] = u;
        double a = bench_wall_ms();
        int c = model_recommend(m, u, n, out, sc);
        lat[q] = bench_wall_ms() - a;
        got += c > 0 ? (uint64_t)c : 0;
    }
    /* The same requests by the full scan over W, with the profile left
     * out as model_recommend does it, and the answers compared. */
    int mismatches = 0;
    struct wbound wb = {0};
    if (wbound_reserve(&wb, k, M)) {
        model_free(m);
        return 1;
    }
    /* What a refresh adds: every row re-quantised, best of 3 (CPU). */
    double requant = 1e300;
    for (int x = 0; x < 3; x++) {
        double a = bench_cpu_ms();
        wbound_set(&wb, model_W(m), M, 0, M);
        a = bench_cpu_ms() - a;
        requant = a < requant ? a : requant;
    }
    double chunks_left = 0, rows_left = 0;
    for (int q = 0; q < requests; q++) {
        struct model_user_view v;
        const uint32_t *pi;
        const float *pv;
        uint32_t np;
        full[q] = 0;
        if (model_user_get(m, who[q], &v))
            continue;
        model_user_profile(m, who[q], &pi, &pv, &np);
        uint32_t *ex = malloc((np ? np : 1) * sizeof(uint32_t));
        memcpy(ex, pi, np * sizeof(uint32_t));
        qsort(ex, np, sizeof(uint32_t), bench_u32_cmp);
        double a = bench_wall_ms();
        uint32_t c =
            model_top_scores(model_W(m), M, k, v.h, ex, np, n, ref, sr);
        full[q] = bench_wall_ms() - a;
        free(ex);
        int cp = model_recommend(m, who[q], n, out, sc);
        mismatches += cp != (int)c || memcmp(out, ref, c * sizeof(uint32_t)) ||
                      memcmp(sc, sr, c * sizeof(float));
        float lo = wbound_floor(c == n ? sr[n - 1] : 0, k);
        for (uint32_t G = 0; G * WBOUND_GROUP * WBOUND_CHUNK < M; G++) {
            float cb[WBOUND_GROUP], bnd[WBOUND_CHUNK];
            wbound_chunks(&wb, v.h, G, cb);
            for (uint32_t x = 0; x < WBOUND_GROUP; x++) {
                uint32_t i0 = (G * WBOUND_GROUP + x) * WBOUND_CHUNK;
                if (i0 >= M)
                    break;
                chunks_left += cb[x] > lo;
                wbound_scan(&wb, v.h, i0, lo, bnd);
                for (uint32_t y = 0; y < WBOUND_CHUNK; y++)
                    rows_left += bnd[y] > lo;
            }
        }
    }
    wbound_free(&wb);
    double nch = (double)((M + WBOUND_CHUNK - 1) / WBOUND_CHUNK) * requests;
    qsort(lat, (size_t)requests, sizeof(double), bench_cmp_double);
    qsort(full, (size_t)requests, sizeof(double), bench_cmp_double);
    /* The copy: k + 4 bytes a row, and k floats per chunk of 64 rows. */
    double copy_mb = ((double)M * (k + 4) + (double)M / 64 * k * 4) / 1e6;
    printf("items=%u%s k=%u n=%u requests=%d p50_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f full_p50_ms=%.3f full_p99_ms=%.3f W_MB=%.1f "
           "copy_MB=%.1f mean_returned=%.1f mismatches=%d chunks_left=%.3f%% "
           "rows_left=%.4f%% requantise_ms=%.1f build_s=%.1f\n",
           M,
           events     ? " (events)"
           : shuffled ? " (shuffled)"
                      : "",
           k, n, requests, lat[requests / 2], lat[(size_t)(requests * 0.99)],
           lat[requests - 1], full[requests / 2],
           full[(size_t)(requests * 0.99)], (double)M * k * 4 / 1e6, copy_mb,
           (double)got / requests, mismatches, 100 * chunks_left / nch,
           100 * rows_left / (nch * WBOUND_CHUNK), requant, build / 1e3);
    free(out);
    free(ref);
    free(sc);
    free(sr);
    free(lat);
    free(full);
    free(who);
    model_free(m);
    return mismatches != 0;
}

int main(int argc, char **argv)
{
    int a = 1, shuffled = 0;
    const char *events = NULL;
    for (; a < argc && argv[a][0] == '-'; a++) {
        if (!strcmp(argv[a], "--shuffled"))
            shuffled = 1;
        else if (!strcmp(argv[a], "--events") && a + 1 < argc)
            events = argv[++a];
        else
            break;
    }
    uint32_t k = argc > a ? (uint32_t)atoi(argv[a]) : 16;
    uint32_t n = argc > a + 1 ? (uint32_t)atoi(argv[a + 1]) : 10;
    int requests = argc > a + 2 ? atoi(argv[a + 2]) : 500;
    if ((a < argc && argv[a][0] == '-') || k < 1 || k > MODEL_K_MAX || n < 1 ||
        requests < 1) {
        fprintf(stderr, "usage: bench_recommend [--shuffled] [--events FILE] "
                        "[k [n [requests [items...]]]]\n");
        return 2;
    }
    if (events)
        return bench(k, n, requests, 0, 0, events);
    if (argc <= a + 3)
        return bench(k, n, requests, 100000, shuffled, NULL) ||
               bench(k, n, requests, 1000000, shuffled, NULL);
    for (int x = a + 3; x < argc; x++)
        if (bench(k, n, requests, (uint32_t)atol(argv[x]), shuffled, NULL))
            return 1;
    return 0;
}
