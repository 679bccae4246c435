/* online/recommend.c -- recommendations: the top-N scan over W.
 *
 * The model predicts user u's engagement with item i as the dot product
 * w_i . h_u (V ~= W H, docs/design.md section 1). A recommendation is the
 * n items of highest prediction that are not in the user's profile,
 * strongest first. This file owns the two scans that find them and
 * nothing else: they read W (and its 8-bit copy, wbound.c), h and the
 * profile, change nothing, and allocate only in the size of the profile,
 * never of the item count.
 *
 * The full scan (model_top_scores; nmfctl recommend on a snapshot, and
 * the reference every answer must equal): one pass over W's rows (M k
 * multiply-adds, the rows read once in order, so the scan runs at memory
 * bandwidth once W outgrows the cache), a threshold compare per row, and
 * O(log n) heap work plus a binary search in the sorted profile only for
 * the rows that beat the n-th best so far (a few n log(M/n) on a random
 * order). The heap is the caller's n-entry output.
 *
 * The pruned scan (wbound_top_scores; model_recommend): the same answer,
 * bit for bit, reading the copy's bounds first and W only where a bound
 * can beat the n-th best. Both measured by bench/bench_recommend.c.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "simd.h"
#include "topn.h"
#include "wbound.h"

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
               __builtin_shufflevector(a[2 * q], a[2 * q + 1], 4, 12, 5, 13, 6,
                                       14, 7, 15);
    for (int q = 0; q < 2; q++)
        y[q] = __builtin_shufflevector(x[2 * q], x[2 * q + 1], 0, 1, 8, 9, 2, 3,
                                       10, 11) +
               __builtin_shufflevector(x[2 * q], x[2 * q + 1], 4, 5, 12, 13, 6,
                                       7, 14, 15);
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

/* The top-n state of a bounded scan: the heap (items, scores, cnt of n),
 * thr its entry bar (the root once full), and lo = wbound_floor(thr). */
struct rec_scan {
    const struct wbound *b;
    const float *W, *h;
    const uint32_t *ex;
    uint32_t M, nex, n, cnt;
    uint32_t *items;
    float *scores;
    float thr, lo;
};

/* Offers the rows of chunk i0 whose bound beats lo, each scored exactly
 * by rec_block over its aligned group of 8, as the full scan groups them
 * (a full group by rec_sum8, the last partial group row by row), so that
 * a row's score is the same float whichever scan computed it. */
static void rec_chunk(struct rec_scan *sc, uint32_t i0)
{
    float bnd[WBOUND_CHUNK], s[8];
    const uint32_t k = sc->b->k, M = sc->M;
    if (!wbound_scan(sc->b, sc->h, i0, sc->lo, bnd))
        return;
    uint32_t nb = M - i0 < WBOUND_CHUNK ? M - i0 : WBOUND_CHUNK;
    uint32_t g = UINT32_MAX; /* the group of 8 held in s */
    for (uint32_t r = 0; r < nb; r++) {
        if (!(bnd[r] > sc->lo))
            continue;
        uint32_t i = i0 + r;
        if (i / 8 != g) {
            g = i / 8;
            rec_block(sc->W, k, sc->h, g * 8, M - g * 8 < 8 ? M - g * 8 : 8, s);
        }
        float f = s[i % 8];
        if (!(f > sc->thr) || (sc->nex && rec_excluded(sc->ex, sc->nex, i)))
            continue;
        topn_offer(sc->items, sc->scores, sc->n, &sc->cnt, f, i);
        if (sc->cnt == sc->n && sc->scores[0] > sc->thr) {
            sc->thr = sc->scores[0];
            sc->lo = wbound_floor(sc->thr, k);
        }
    }
}

/* Chunks the first pass scans: those of the largest bounds, at most
 * REC_SEED_MAX of them. */
#define REC_SEED_MAX 64

static int rec_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/*
 * The same answer from the 8-bit copy (wbound.c), reading at most a
 * third of W's bytes, and much less where the chunks' bounds rule chunks
 * out. Rows are visited in increasing index, 64 at a time: a chunk whose
 * bound C is at most lo is passed over, else the copy gives each row's
 * bound B_i, and a row is scored exactly only if B_i > lo =
 * wbound_floor(thr), thr the n-th best exact score so far. wbound.c
 * proves f_i <= thr for every other row, and such a row could not enter
 * the heap (ties go to the lower index, which came first), so the result
 * is model_top_scores' bit for bit.
 *
 * The bar starts where a first pass leaves it: over the chunks' bounds
 * C (k floats a chunk), then the rows of the P = min(4 + n / 2,
 * REC_SEED_MAX) chunks of largest C, it finds t0, the n-th best exact
 * score among those rows not left out. At least n rows score t0 or more,
 * so a row below t0 is not in the answer, and the second pass, with an
 * empty heap, takes only rows scoring at least t0 (thr = the float below
 * t0) until the heap is full. Without it the bar would climb from 0
 * through whatever comes first: on a W whose items arrive in runs of a
 * topic, every row of the runs before the user's own.
 *
 * Cost: the chunks' bounds twice (M k / 16 bytes each time), the codes
 * (M (k + 4) bytes at most) of the chunks whose C beats the bar, then 8
 * rows of W (512 bytes at k = 16) per group holding a candidate: at most
 * about n ln(M / n) groups on a random order from a bar of 0, plus the
 * rows whose bound, but not score, beats the bar; from the seeded bar,
 * 58 groups and 38 chunks' codes on average at 1 M items, n = 10, on
 * bench_recommend's planted model.
 *
 * h must be non-negative and finite for the bound to hold: otherwise (no
 * model makes such an h) the full scan answers. An all-zero h scores
 * every row 0, and no row is recommended.
 */
uint32_t wbound_top_scores(const struct wbound *b, const float *W, uint32_t M,
                           const float *h, const uint32_t *ex, uint32_t nex,
                           uint32_t n, uint32_t *items, float *scores)
{
    const uint32_t k = b->k;
    if (!n || !M || !k)
        return 0;
    int pos = 0;
    for (uint32_t j = 0; j < k; j++) {
        if (!(h[j] >= 0 && h[j] <= 0x1.fffffep127f))
            return model_top_scores(W, M, k, h, ex, nex, n, items, scores);
        pos |= h[j] > 0;
    }
    if (!pos)
        return 0;
    if (M > b->cap)
        return model_top_scores(W, M, k, h, ex, nex, n, items, scores);
    struct rec_scan sc = {
        .b = b,
        .W = W,
        .h = h,
        .ex = ex,
        .M = M,
        .nex = nex,
        .n = n,
        .items = items,
        .scores = scores,
        .thr = 0,
        .lo = wbound_floor(0, k),
    };
    uint32_t chunks = (M + WBOUND_CHUNK - 1) / WBOUND_CHUNK;
    uint32_t groups = (chunks + WBOUND_GROUP - 1) / WBOUND_GROUP;
    uint32_t P = 4 + n / 2 < REC_SEED_MAX ? 4 + n / 2 : REC_SEED_MAX;
    float cb[WBOUND_GROUP];
    if (chunks > P) {
        uint32_t top[REC_SEED_MAX], ntop = 0;
        float tb[REC_SEED_MAX];
        for (uint32_t G = 0; G < groups; G++) {
            wbound_chunks(b, h, G, cb);
            for (uint32_t c = 0; c < WBOUND_GROUP; c++)
                if (cb[c] > 0 && G * WBOUND_GROUP + c < chunks)
                    topn_offer(top, tb, P, &ntop, cb[c], G * WBOUND_GROUP + c);
        }
        qsort(top, ntop, sizeof(*top), rec_cmp_u32);
        for (uint32_t q = 0; q < ntop; q++)
            rec_chunk(&sc, top[q] * WBOUND_CHUNK);
        if (sc.cnt == n && sc.thr > 0) {
            sc.thr = nextafterf(sc.thr, 0);
            sc.lo = wbound_floor(sc.thr, k);
        } else {
            sc.thr = 0;
            sc.lo = wbound_floor(0, k);
        }
        sc.cnt = 0;
    }
    for (uint32_t G = 0; G < groups; G++) {
        wbound_chunks(b, h, G, cb);
        for (uint32_t c = 0; c < WBOUND_GROUP; c++) {
            uint32_t ch = G * WBOUND_GROUP + c;
            if (ch < chunks && cb[c] > sc.lo)
                rec_chunk(&sc, ch * WBOUND_CHUNK);
        }
    }
    topn_sort(items, scores, sc.cnt);
    return sc.cnt;
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
    uint32_t cnt = wbound_top_scores(&m->wb, m->W, ids_slots(m->iids), v.h, ex,
                                     np, n, items, scores);
    free(ex);
    return (int)cnt;
}
