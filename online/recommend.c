/* online/recommend.c -- recommendations: the top-N scan over W.
 *
 * The model predicts user u's engagement with item i as the dot product
 * w_i . h_u (V ~= W H, docs/design.md section 1). A recommendation is the
 * n items of highest prediction that are not in the user's profile,
 * strongest first. This file owns that scan and nothing else: it reads
 * W, h and the profile, changes nothing, and allocates only in the size
 * of the profile, never of the item count.
 *
 * Cost: one pass over W's rows (M k multiply-adds, the rows read once in
 * order, so the scan runs at memory bandwidth once W outgrows the cache),
 * a threshold compare per row, and O(log n) heap work plus a binary
 * search in the sorted profile only for the rows that beat the n-th best
 * so far (a few n log(M/n) on a random order). The heap is the caller's
 * n-entry output. Measured by bench/bench_recommend.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "simd.h"
#include "topn.h"

static int rec_excluded(const uint32_t *ex, uint32_t nex, uint32_t i)
{
    uint32_t lo = 0, hi = nex;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ex[mid] < i)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nex && ex[lo] == i;
}

#define REC_LANES 8
#define REC_BLOCK 64

/* 8-float vectors in the kernel: the baseline clone passes them in two
 * SSE registers where an AVX build would use one, which GCC warns about
 * for any function taking or returning one; rec_sum8 is always inlined,
 * so no such call exists. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float rec_v8 __attribute__((vector_size(32), aligned(4)));

/* The eight lane sums of a[0..8), as one vector: pairwise interleaved
 * adds (a transpose and sum in three steps), instead of eight horizontal
 * sums that would cost more than the row's multiply-adds at k = 16.
 * __builtin_shufflevector: GCC 12 and clang (the fuzz build) alike. */
static inline __attribute__((always_inline)) rec_v8 rec_sum8(const rec_v8 *a)
{
    rec_v8 x[4], y[2];
    for (int q = 0; q < 4; q++)
        x[q] = __builtin_shufflevector(a[2 * q], a[2 * q + 1], 0, 8, 1, 9, 2,
                                       10, 3, 11) +
               __builtin_shufflevector(a[2 * q], a[2 * q + 1], 4, 12, 5, 13,
                                       6, 14, 7, 15);
    for (int q = 0; q < 2; q++)
        y[q] = __builtin_shufflevector(x[2 * q], x[2 * q + 1], 0, 1, 8, 9, 2,
                                       3, 10, 11) +
               __builtin_shufflevector(x[2 * q], x[2 * q + 1], 4, 5, 12, 13,
                                       6, 7, 14, 15);
    return __builtin_shufflevector(y[0], y[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(y[0], y[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* s[r] = w_(i0+r) . h for r < nb: per row, REC_LANES independent partial
 * sums (a vector register), so that no float reduction is reassociated;
 * with k a multiple of 8, eight rows at a time summed by rec_sum8, else
 * the tail of k goes to lane 0 and each row is summed alone. */
ONLINE_KERNEL
static void rec_block(const float *restrict W, uint32_t k, const float *h,
                      uint32_t i0, uint32_t nb, float *restrict s)
{
    const uint32_t kv = k - k % REC_LANES;
    uint32_t r = 0;
    if (kv == k) {
        rec_v8 hv[MODEL_K_MAX / REC_LANES];
        for (uint32_t c = 0; c < k / REC_LANES; c++)
            memcpy(&hv[c], h + c * REC_LANES, sizeof(rec_v8));
        for (; r + 8 <= nb; r += 8) {
            rec_v8 acc[8];
            for (uint32_t q = 0; q < 8; q++) {
                const rec_v8 *w =
                    (const rec_v8 *)(W + (size_t)(i0 + r + q) * k);
                rec_v8 a = w[0] * hv[0];
                for (uint32_t c = 1; c < k / REC_LANES; c++)
                    a += w[c] * hv[c];
                acc[q] = a;
            }
            rec_v8 t = rec_sum8(acc);
            memcpy(s + r, &t, sizeof(t));
        }
    }
    for (; r < nb; r++) {
        const float *restrict w = W + (size_t)(i0 + r) * k;
        float acc[REC_LANES] = {0};
        for (uint32_t j = 0; j < kv; j += REC_LANES)
            for (uint32_t l = 0; l < REC_LANES; l++)
                acc[l] += w[j + l] * h[j + l];
        for (uint32_t j = kv; j < k; j++)
            acc[0] += w[j] * h[j];
        float t = 0;
        for (uint32_t l = 0; l < REC_LANES; l++)
            t += acc[l];
        s[r] = t;
    }
}

uint32_t model_top_scores(const float *W, uint32_t M, uint32_t k,
                          const float *h, const uint32_t *ex, uint32_t nex,
                          uint32_t n, uint32_t *items, float *scores)
{
    if (!n || !M || !k)
        return 0;
    uint32_t cnt = 0;
    float s[REC_BLOCK];
    /* Only positive predictions: a zero row (a forgotten item) or a user
     * with no weight on its topics says nothing. */
    float thr = 0;
    for (uint32_t i0 = 0; i0 < M; i0 += REC_BLOCK) {
        uint32_t nb = M - i0 < REC_BLOCK ? M - i0 : REC_BLOCK;
        rec_block(W, k, h, i0, nb, s);
        for (uint32_t r = 0; r < nb; r++) {
            /* Rows come in increasing index, so a row tying the n-th
             * best comes after it and loses: strictly above is exact. */
            if (!(s[r] > thr))
                continue;
            uint32_t i = i0 + r;
            if (nex && rec_excluded(ex, nex, i))
                continue;
            topn_offer(items, scores, n, &cnt, s[r], i);
            if (cnt == n)
                thr = scores[0];
        }
    }
    topn_sort(items, scores, cnt);
    return cnt;
}

static int rec_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int model_recommend(const struct model *m, uint32_t user, uint32_t n,
                    uint32_t *items, float *scores)
{
    struct model_user_view v;
    if (model_user_get(m, user, &v))
        return -ENOENT;
    const uint32_t *it;
    const float *va;
    uint32_t np;
    model_user_profile(m, user, &it, &va, &np);
    uint32_t *ex = NULL;
    if (np) {
        if (!(ex = malloc((size_t)np * sizeof(*ex))))
            return -ENOMEM;
        memcpy(ex, it, (size_t)np * sizeof(*ex));
        qsort(ex, np, sizeof(*ex), rec_cmp_u32);
    }
    uint32_t cnt = model_top_scores(m->W, ids_slots(m->iids), m->k, v.h, ex, np,
                                    n, items, scores);
    free(ex);
    return (int)cnt;
}
