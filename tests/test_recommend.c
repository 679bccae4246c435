/* test_recommend.c -- the top-N scan: equal to a full sort on random and
 * tied scores with rows left out, and on a planted stream the user's own
 * segment's items, never its profile's, strongest first. The pruned scan
 * over the 8-bit copy of W (wbound.c) answers the full scan's items and
 * scores bit for bit, on random and adversarial W and h. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"
#include "wbound.h"

struct cand {
    float s;
    uint32_t i;
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The reference: every score as the scan sums it (8 partial sums), the
 * left-out and non-positive rows dropped, a full sort. */
static float ref_dot(const float *w, const float *h, uint32_t k)
{
    float acc[8] = {0};
    uint32_t kv = k - k % 8;
    for (uint32_t j = 0; j < kv; j += 8)
        for (uint32_t l = 0; l < 8; l++)
            acc[l] += w[j + l] * h[j + l];
    for (uint32_t j = kv; j < k; j++)
        acc[0] += w[j] * h[j];
    float t = 0;
    for (uint32_t l = 0; l < 8; l++)
        t += acc[l];
    return t;
}

static void check_against_sort(uint32_t M, uint32_t k, int ties, uint64_t seed)
{
    uint64_t r = seed;
    float *W = malloc((size_t)M * k * sizeof(float));
    float h[64];
    for (size_t x = 0; x < (size_t)M * k; x++) {
        double u = (double)(rng_splitmix64(&r) >> 11) * 0x1p-53;
        /* Ties: few distinct values; some rows all zero. */
        W[x] = ties ? (float)((int)(u * 3)) : (float)u;
    }
    for (uint32_t i = 0; i < M; i += 17)
        memset(W + (size_t)i * k, 0, k * sizeof(float));
    for (uint32_t j = 0; j < k; j++)
        h[j] = ties ? 1.0f : (float)((rng_splitmix64(&r) >> 11) * 0x1p-53);
    uint32_t nex = M / 10, *ex = malloc(nex * sizeof(uint32_t));
    for (uint32_t q = 0; q < nex; q++)
        ex[q] = (uint32_t)(rng_splitmix64(&r) % M);
    qsort(ex, nex, sizeof(uint32_t), u32_cmp);
    uint32_t ne = 0; /* dedupe */
    for (uint32_t q = 0; q < nex; q++)
        if (!ne || ex[ne - 1] != ex[q])
            ex[ne++] = ex[q];
    struct cand *all = malloc(M * sizeof(*all));
    uint32_t na = 0;
    for (uint32_t i = 0; i < M; i++) {
        if (bsearch(&i, ex, ne, sizeof(uint32_t), u32_cmp))
            continue;
        float s = ref_dot(W + (size_t)i * k, h, k);
        if (s > 0)
            all[na++] = (struct cand){s, i};
    }
    qsort(all, na, sizeof(*all), cand_cmp);
    uint32_t ns[] = {1, 3, 10, 100, M};
    for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
        uint32_t n = ns[t];
        uint32_t *items = malloc(n * sizeof(uint32_t));
        float *scores = malloc(n * sizeof(float));
        uint32_t got = model_top_scores(W, M, k, h, ex, ne, n, items, scores);
        cr_assert_eq(got, n < na ? n : na, "n %u got %u of %u", n, got, na);
        for (uint32_t q = 0; q < got; q++) {
            cr_assert_eq(items[q], all[q].i, "n %u at %u: %u vs %u", n, q,
                         items[q], all[q].i);
            /* The kernel may fuse multiply-adds: its sums differ from the
             * reference's in the last bits. */
            cr_assert_float_eq(scores[q], all[q].s, 1e-5f * all[q].s);
        }
        free(items);
        free(scores);
    }
    cr_assert_eq(model_top_scores(W, M, k, h, ex, ne, 0, NULL, NULL), 0);
    free(all);
    free(ex);
    free(W);
}

Test(recommend, top_scores_equal_a_full_sort)
{
    check_against_sort(5000, 16, 0, 1);
    check_against_sort(3001, 5, 0, 2);
    check_against_sort(777, 19, 0, 3);
}

Test(recommend, ties_go_to_the_lower_index)
{
    check_against_sort(4000, 16, 1, 4);
    check_against_sort(999, 3, 1, 5);
}

/* A planted stream: user u is in segment u % K, whose items are
 * [seg * per, (seg + 1) * per); 5% noise. */
Test(recommend, planted_stream_recommends_the_own_segment)
{
    enum { K = 4, USERS = 400, ITEMS = 200, PER = ITEMS / K };
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.warmup_events = 2000;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    uint64_t r = 11;
    /* About 20 events per user: a profile holds a third of its segment's
     * items, so the other two thirds can fill the 20 recommendations. */
    for (int e = 0; e < 8000; e++) {
        uint64_t a = rng_splitmix64(&r), b = rng_splitmix64(&r);
        uint32_t u = (uint32_t)(a % USERS), i;
        if (b % 20 == 0)
            i = (uint32_t)((b >> 8) % ITEMS);
        else
            i = (u % K) * PER + (uint32_t)((b >> 8) % PER);
        char us[16], is[16];
        int ul = snprintf(us, sizeof(us), "u%u", u);
        int il = snprintf(is, sizeof(is), "i%u", i);
        cr_assert_eq(model_fold(m, us, (size_t)ul, is, (size_t)il, 1, e), 0);
    }
    for (int x = 0; x < 5; x++)
        model_refine(m, SIZE_MAX);
    uint32_t items[20];
    float scores[20];
    uint64_t own = 0, total = 0;
    for (uint32_t u = 0; u < USERS; u++) {
        char us[16];
        int ul = snprintf(us, sizeof(us), "u%u", u);
        int64_t x = model_user_find(m, us, (size_t)ul);
        cr_assert_geq(x, 0);
        int got = model_recommend(m, (uint32_t)x, 20, items, scores);
        cr_assert_geq(got, 0);
        const uint32_t *pi;
        const float *pv;
        uint32_t np;
        model_user_profile(m, (uint32_t)x, &pi, &pv, &np);
        for (int q = 0; q < got; q++) {
            if (q)
                cr_assert_geq(scores[q - 1], scores[q]);
            for (uint32_t z = 0; z < np; z++)
                cr_assert_neq(items[q], pi[z], "a profile item recommended");
            size_t len;
            const char *id = model_item_id(m, items[q], &len);
            char num[16];
            memcpy(num, id + 1, len - 1);
            num[len - 1] = 0;
            own += (uint32_t)atoi(num) / PER == u % K;
            total++;
        }
    }
    cr_assert_gt(total, USERS * 5);
    cr_assert_gt((double)own / (double)total, 0.9, "own %lu of %lu",
                 (unsigned long)own, (unsigned long)total);
    cr_assert_eq(model_recommend(m, 1u << 30, 5, items, scores), -ENOENT);
    model_free(m);
}

/* ---- the pruned scan over the 8-bit copy ---------------------------- */

static double unit(uint64_t *r)
{
    return (double)(rng_splitmix64(r) >> 11) * 0x1p-53;
}

/* The pruned scan against the full one, bit for bit, for several n, with
 * and without rows left out (every third row of the first 1000, and a
 * random tenth). */
static void check_pruned(const struct wbound *b, const float *W, uint32_t M,
                         const float *h, uint64_t seed)
{
    uint64_t r = seed;
    uint32_t nex = 0, *ex = malloc((M + 1) * sizeof(uint32_t));
    for (uint32_t i = 0; i < M; i++)
        if ((i < 1000 && i % 3 == 0) || unit(&r) < 0.1)
            ex[nex++] = i;
    uint32_t ns[] = {1, 2, 10, 100, 1000};
    for (int pass = 0; pass < 2; pass++) {
        uint32_t ne = pass ? nex : 0;
        for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
            uint32_t n = ns[t];
            uint32_t *ia = malloc(n * sizeof(uint32_t));
            uint32_t *ib = malloc(n * sizeof(uint32_t));
            float *sa = malloc(n * sizeof(float));
            float *sb = malloc(n * sizeof(float));
            uint32_t want = model_top_scores(W, M, b->k, h, ex, ne, n, ia, sa);
            uint32_t got = wbound_top_scores(b, W, M, h, ex, ne, n, ib, sb);
            cr_assert_eq(got, want, "M %u k %u n %u ex %u: %u vs %u", M, b->k,
                         n, ne, got, want);
            for (uint32_t q = 0; q < got; q++)
                cr_assert(ia[q] == ib[q] && !memcmp(&sa[q], &sb[q], 4),
                          "M %u k %u n %u at %u: %u %.9g vs %u %.9g", M, b->k,
                          n, q, ib[q], (double)sb[q], ia[q], (double)sa[q]);
            free(ia);
            free(ib);
            free(sa);
            free(sb);
        }
    }
    free(ex);
}

/* The kinds of W: 0 uniform; 1 few distinct values (ties everywhere);
 * 2 every row equal; 3 rows in runs of a topic (chunks prune); 4 rows
 * that differ in the last bit only (scores within an ulp of each other);
 * 5 sparse, most entries zero; 6 rows of very different magnitudes. */
static void fill_w(float *W, uint32_t M, uint32_t k, int kind, uint64_t *r)
{
    for (uint32_t i = 0; i < M; i++) {
        float *w = W + (size_t)i * k;
        double mag = kind == 6 ? exp2(-40 * unit(r)) : 1;
        for (uint32_t j = 0; j < k; j++) {
            double u = unit(r);
            switch (kind) {
            case 1:
                w[j] = (float)((int)(u * 3)) / 4;
                break;
            case 2:
                w[j] = (float)(j + 1) / (float)k;
                break;
            case 3:
                w[j] =
                    j == (i / 3000) % k ? (float)(0.5 + u) : 0.01f * (float)u;
                break;
            case 4:
                w[j] = nextafterf(0.3f, 1);
                break;
            case 5:
                w[j] = u < 0.1 ? (float)u * 10 : 0;
                break;
            default:
                w[j] = (float)(u * mag);
                break;
            }
        }
        if (kind == 4 && (rng_splitmix64(r) & 1))
            w[i % k] = nextafterf(w[i % k], 1);
    }
    /* Forgotten items: zero rows. */
    for (uint32_t i = 5; i < M; i += 37)
        memset(W + (size_t)i * k, 0, k * sizeof(float));
}

static void fill_h(float *h, uint32_t k, int kind, uint64_t *r)
{
    for (uint32_t j = 0; j < k; j++) {
        double u = unit(r);
        switch (kind) {
        case 1:
            h[j] = 1;
            break; /* ties */
        case 2:
            h[j] = j == 0 ? 1 : 0;
            break; /* one topic */
        case 3:
            h[j] = u < 0.5 ? 0 : (float)u;
            break; /* half zero */
        case 4:
            h[j] = (float)(u * 1e-30);
            break; /* tiny */
        case 5:
            h[j] = (float)(u * 1e20);
            break; /* huge */
        default:
            h[j] = (float)u;
            break;
        }
    }
}

static void pruned_case(uint32_t M, uint32_t k, uint64_t seed)
{
    uint64_t r = seed;
    float *W = malloc((size_t)M * k * sizeof(float));
    float h[64];
    struct wbound b = {0};
    cr_assert_eq(wbound_reserve(&b, k, M), 0);
    for (int wk = 0; wk <= 6; wk++) {
        fill_w(W, M, k, wk, &r);
        wbound_set(&b, W, M, 0, M);
        cr_assert(wbound_matches(&b, W, M));
        for (int hk = 0; hk <= 5; hk++) {
            fill_h(h, k, hk, &r);
            check_pruned(&b, W, M, h, seed + (uint64_t)(wk * 8 + hk));
        }
    }
    wbound_free(&b);
    free(W);
}

Test(recommend, pruned_scan_equals_the_full_scan)
{
    /* Beyond a group of chunks (4096 rows) and below; k a multiple of 8
     * (the eight-row kernel) or not (row by row); M not a multiple of 8
     * (a last partial group). */
    pruned_case(10000, 16, 1);
    pruned_case(9001, 5, 2);
    pruned_case(300, 16, 3);
    pruned_case(5003, 19, 4);
    pruned_case(70, 8, 5);
}

Test(recommend, pruned_scan_zero_and_bad_h)
{
    enum { M = 3000, K = 16 };
    uint64_t r = 9;
    float *W = malloc((size_t)M * K * sizeof(float));
    fill_w(W, M, K, 0, &r);
    struct wbound b = {0};
    cr_assert_eq(wbound_reserve(&b, K, M), 0);
    wbound_set(&b, W, M, 0, M);
    float h[K] = {0};
    uint32_t it[10];
    float sc[10];
    /* A zero h predicts nothing. */
    cr_assert_eq(wbound_top_scores(&b, W, M, h, NULL, 0, 10, it, sc), 0);
    cr_assert_eq(model_top_scores(W, M, K, h, NULL, 0, 10, it, sc), 0);
    /* A negative or NaN entry: the bound does not hold, the full scan
     * answers. */
    for (uint32_t j = 0; j < K; j++)
        h[j] = (float)unit(&r);
    h[3] = -0.5f;
    check_pruned(&b, W, M, h, 1);
    h[3] = NAN;
    check_pruned(&b, W, M, h, 2);
    cr_assert_eq(wbound_top_scores(&b, W, M, h, NULL, 0, 0, it, sc), 0);
    wbound_free(&b);
    free(W);
}

/* Rows no model makes: an entry negative, infinite or NaN. Such a row
 * gets an infinite bound and is always scored exactly. */
Test(recommend, pruned_scan_rows_with_bad_entries)
{
    enum { M = 5000, K = 16 };
    uint64_t r = 10;
    float *W = malloc((size_t)M * K * sizeof(float));
    fill_w(W, M, K, 0, &r);
    W[(size_t)100 * K + 3] = -1;
    W[(size_t)2000 * K + 4] = INFINITY;
    W[(size_t)4500 * K + 5] = NAN;
    struct wbound b = {0};
    cr_assert_eq(wbound_reserve(&b, K, M), 0);
    wbound_set(&b, W, M, 0, M);
    float h[K];
    fill_h(h, K, 0, &r);
    check_pruned(&b, W, M, h, 3);
    wbound_free(&b);
    free(W);
}

/* W changes between calls: rows rewritten and re-quantised one at a
 * time (a new item), all at once (a refresh), zeroed (expiry); the copy
 * grows with rows kept. Each time the pruned scan answers as the full
 * one, and a copy left stale is detected. */
Test(recommend, pruned_scan_follows_w)
{
    enum { K = 16 };
    uint32_t M = 3000;
    uint64_t r = 12;
    float *W = malloc((size_t)20000 * K * sizeof(float));
    fill_w(W, M, K, 3, &r);
    struct wbound b = {0};
    cr_assert_eq(wbound_reserve(&b, K, M), 0);
    wbound_set(&b, W, M, 0, M);
    float h[K];
    fill_h(h, K, 3, &r);
    check_pruned(&b, W, M, h, 1);
    /* The best row made better: it must come first. */
    uint32_t it[1];
    float sc[1];
    cr_assert_eq(wbound_top_scores(&b, W, M, h, NULL, 0, 1, it, sc), 1);
    uint32_t best = it[0], other = (best + 1234) % M;
    for (uint32_t j = 0; j < K; j++)
        W[(size_t)other * K + j] = 2 * W[(size_t)best * K + j] + 0.1f;
    cr_assert_not(wbound_matches(&b, W, M));
    wbound_set(&b, W, M, other, other + 1);
    cr_assert(wbound_matches(&b, W, M));
    cr_assert_eq(wbound_top_scores(&b, W, M, h, NULL, 0, 1, it, sc), 1);
    cr_assert_eq(it[0], other);
    check_pruned(&b, W, M, h, 2);
    /* Zeroed (forgotten). */
    memset(W + (size_t)other * K, 0, K * sizeof(float));
    wbound_set(&b, W, M, other, other + 1);
    cr_assert_eq(wbound_top_scores(&b, W, M, h, NULL, 0, 1, it, sc), 1);
    cr_assert_eq(it[0], best);
    check_pruned(&b, W, M, h, 3);
    /* Grown: the old rows kept, new rows added one by one; never to
     * another k. */
    cr_assert_eq(wbound_reserve(&b, K + 1, 20000), -EINVAL);
    cr_assert(wbound_matches(&b, W, M));
    cr_assert_eq(wbound_reserve(&b, K, 20000), 0);
    cr_assert(wbound_matches(&b, W, M));
    for (uint32_t i = M; i < 20000; i++) {
        for (uint32_t j = 0; j < K; j++)
            W[(size_t)i * K + j] = (float)unit(&r);
        if (i % 2)
            wbound_set(&b, W, i + 1, i, i + 1);
        else
            wbound_add(&b, W, i);
    }
    M = 20000;
    cr_assert(wbound_matches(&b, W, M));
    /* A zeroed row taken again (expiry, then a new item), in O(k). */
    memset(W + (size_t)4321 * K, 0, K * sizeof(float));
    wbound_set(&b, W, M, 4321, 4322);
    for (uint32_t j = 0; j < K; j++)
        W[(size_t)4321 * K + j] = j == 3 ? NAN : (float)(2 * unit(&r));
    wbound_add(&b, W, 4321);
    cr_assert(wbound_matches(&b, W, M));
    W[(size_t)4321 * K + 3] = 0.5f;
    wbound_set(&b, W, M, 4321, 4322);
    cr_assert(wbound_matches(&b, W, M));
    check_pruned(&b, W, M, h, 4);
    /* Refreshed: every row. */
    fill_w(W, M, K, 0, &r);
    wbound_set(&b, W, M, 0, M);
    check_pruned(&b, W, M, h, 5);
    wbound_free(&b);
    free(W);
}

/* The quantisation bounds every entry from above with codes in 0..255,
 * over magnitudes from subnormal to the largest float; and the floor
 * keeps lo (1 + eps) + d <= thr with the proof's eps and d. */
Test(recommend, quantisation_and_floor_bound)
{
    enum { M = 4096, K = 16 };
    uint64_t r = 13;
    float *W = malloc((size_t)M * K * sizeof(float));
    for (uint32_t i = 0; i < M; i++) {
        double mag = exp2(-150 + 277 * unit(&r));
        for (uint32_t j = 0; j < K; j++)
            W[(size_t)i * K + j] = (float)(mag * unit(&r));
    }
    struct wbound b = {0};
    cr_assert_eq(wbound_reserve(&b, K, M), 0);
    wbound_set(&b, W, M, 0, M);
    for (uint32_t i = 0; i < M; i++) {
        float s = b.scale[i];
        const uint8_t *blk =
            b.q + (size_t)(i / WBOUND_BLOCK) * WBOUND_BLOCK * K;
        for (uint32_t j = 0; j < K; j++) {
            double w = W[(size_t)i * K + j];
            double c = blk[(size_t)j * WBOUND_BLOCK + i % WBOUND_BLOCK];
            if (w == 0 && i && s == -INFINITY)
                continue;
            cr_assert(c * (double)s >= w, "row %u col %u: %g x %g < %g", i, j,
                      c, (double)s, w);
            /* Upward rounding costs less than two steps an entry. */
            cr_assert(c * (double)s - w <= 2 * (double)s);
        }
    }
    for (int t = 0; t < 100000; t++) {
        float thr = (float)exp2(-140 + 260 * unit(&r));
        uint32_t k = 1 + (uint32_t)(unit(&r) * 256);
        long double eps = (4.0L * k + 16) * 0x1p-24L;
        long double lo = wbound_floor(thr, k);
        cr_assert(lo * (1 + eps) + 0x1p-120L <= (long double)thr,
                  "thr %a k %u lo %La", (double)thr, k, lo);
    }
    cr_assert(wbound_floor(0, 16) < 0);
    wbound_free(&b);
    free(W);
}
