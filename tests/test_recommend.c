/* test_recommend.c -- the top-N scan: equal to a full sort on random and
 * tied scores with rows left out, and on a planted stream the user's own
 * segment's items, never its profile's, strongest first. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"

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
