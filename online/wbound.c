/* online/wbound.c -- an 8-bit copy of W whose dot products bound every
 * item's score from above.
 *
 * A recommendation needs the n rows of W with the largest w_i . h, and a
 * float32 scan of W reads M k 4 bytes (64 MB at 1 M items, k = 16): at
 * memory bandwidth that alone is several milliseconds. This copy is a
 * third of W (k + 4 bytes a row and k floats per 64 rows: 21 MB at 1 M
 * items, k = 16); a scan of it bounds each score from above, so that only
 * the rows whose bound can beat the n-th best exact score are scored from
 * W (recommend.c), and most of it goes unread. It owns
 * the codes, the quantisation and the bound kernel. It must follow W
 * exactly: the model calls wbound_set (through model__w_changed) for
 * every row it writes, and a row whose copy lags W could be missed.
 *
 * Quantisation (non-negative W, as the model's is): row i gets the step
 * s_i, the least power of two with 255 s_i >= max_j w_ij (so at most
 * twice max_j w_ij / 255), and codes c_ij = ceil(w_ij / s_i) in 0..255,
 * computed exactly: w / s is a float when s is a power of two (a row of
 * entries below 2^-118 gets mx / 255 rounded up instead, its codes
 * checked in double). So c_ij s_i >= w_ij exactly, and for h >= 0,
 *
 *     R_i = s_i sum_j c_ij h_j  >=  sum_j w_ij h_j = S_i,
 *
 * with R_i - S_i < s_i |h|_1 (upward rounding costs less than a step per
 * entry). Two rows are special: an all-zero row (a forgotten item, a
 * slot not yet used) has step -inf and codes 1, so its bound is -inf
 * whatever h > 0 is: its score, 0, is never recommended (only positive
 * ones are); a row with an entry that is negative, NaN or infinite (none
 * in a model, whose W is non-negative and finite) has step +inf and codes
 * 1: an infinite bound, always scored exactly.
 *
 * Rounding. The scan computes B_i = fl(s_i fl(sum_j c_ij h_j)), with at
 * most 2k + 1 roundings on any term's path; the exact kernel computes
 * f_i, the score model_top_scores reports, with at most k + 9. Rounding
 * a non-negative x to nearest gives a value in [x(1 - u) - e, x(1 + u) +
 * e] (u = 2^-24, e = 2^-150 half the least subnormal), so
 *
 *     B_i >= R_i (1 - u)^(2k+1) - (2k+1) e,
 *     f_i <= S_i (1 + u)^(k+9) + (k+9) e (1 + u)^(k+9),
 *
 * and, with S_i <= R_i, for k <= 256 (eps = (4k + 16) u, d = 2^-120):
 *
 *     f_i <= B_i (1 + eps) + d.
 *
 * So a row with B_i <= lo, where lo (1 + eps) + d <= thr, scores at most
 * thr and cannot beat an n-th best of thr (wbound_floor gives lo). The
 * margin is about 1e-6 relative: it costs nothing in pruning, and keeps
 * the answer exact rather than nearly so. (The bounds on rounding are
 * the usual ones for sums and dot products, Higham, Accuracy and
 * Stability of Numerical Algorithms, 2nd ed. 2002, section 3.1, with the
 * underflow term added.)
 *
 * Chunks. Each run of WBOUND_CHUNK rows also keeps cmax, the largest
 * entry of each column over its rows: C = h . cmax >= S_i for each of
 * them, and C's float sum has 2k roundings, so the same argument lets a
 * whole chunk go unread when C <= lo. On the models measured
 * (docs/benchmarks.md section 6) that rules out 85 to 99.8% of the
 * chunks, the items in any order. Exact top-n retrieval from a matrix
 * factorisation by bounds on w . h that prune groups of items before
 * scoring single ones is that of Koenigstein, Ram and Shavitt (CIKM
 * 2012) and of Teflioudi, Gemulla and Mykytiuk (LEMP, SIGMOD 2015), who
 * bound by norms; these bounds use h >= 0 and W >= 0 instead.
 */
#include "wbound.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define WBOUND_GROUP_ROWS ((size_t)WBOUND_CHUNK * WBOUND_GROUP)

static size_t wbound_round(uint32_t cap)
{
    return ((size_t)cap + WBOUND_GROUP_ROWS - 1) / WBOUND_GROUP_ROWS *
           WBOUND_GROUP_ROWS;
}

/* Where chunk c's maximum of column j lies: groups of WBOUND_GROUP
 * chunks, each k columns of WBOUND_GROUP floats. */
static inline size_t wbound_cm(uint32_t k, uint32_t c, uint32_t j)
{
    return ((size_t)(c / WBOUND_GROUP) * k + j) * WBOUND_GROUP +
           c % WBOUND_GROUP;
}

/* Row r of a block: every code 1 and the step s (the zero row's -inf or
 * the unbounded row's +inf). */
static void wbound_special(struct wbound *b, uint32_t i, float s)
{
    const uint32_t k = b->k;
    uint8_t *blk = b->q + (size_t)(i / WBOUND_BLOCK) * WBOUND_BLOCK * k;
    for (uint32_t j = 0; j < k; j++)
        blk[(size_t)j * WBOUND_BLOCK + i % WBOUND_BLOCK] = 1;
    b->scale[i] = s;
}

int wbound_reserve(struct wbound *b, uint32_t k, uint32_t cap)
{
    size_t nc = wbound_round(cap);
    if (b->q && b->k == k && nc <= b->cap)
        return 0;
    if (b->q && b->k != k)
        return -EINVAL;
    size_t ncm = nc / WBOUND_CHUNK * k;
    _Static_assert(WBOUND_GROUP == 64, "wbound_chunks: 4 vectors of 16");
    uint8_t *q = aligned_alloc(64, nc * k);
    float *s = aligned_alloc(64, nc * sizeof(float));
    float *cm = malloc(ncm * sizeof(float));
    if (!q || !s || !cm) {
        free(q);
        free(s);
        free(cm);
        return -ENOMEM;
    }
    size_t old = b->q ? b->cap : 0;
    if (old) {
        memcpy(q, b->q, old * k);
        memcpy(s, b->scale, old * sizeof(float));
        memcpy(cm, b->cmax, old / WBOUND_CHUNK * k * sizeof(float));
    }
    free(b->q);
    free(b->scale);
    free(b->cmax);
    b->q = q;
    b->scale = s;
    b->cmax = cm;
    b->k = k;
    b->cap = (uint32_t)nc;
    for (size_t i = old; i < nc; i++)
        wbound_special(b, (uint32_t)i, -INFINITY);
    /* A chunk with no row in use bounds nothing: -inf (the groups are
     * whole, so the new chunks' maxima are the tail of the array). */
    for (size_t x = old / WBOUND_CHUNK * k; x < ncm; x++)
        cm[x] = -INFINITY;
    return 0;
}

void wbound_free(struct wbound *b)
{
    free(b->q);
    free(b->scale);
    free(b->cmax);
    memset(b, 0, sizeof(*b));
}

size_t wbound_bytes(const struct wbound *b)
{
    return b->q ? (size_t)b->cap * (b->k + sizeof(float)) +
                      (size_t)b->cap / WBOUND_CHUNK * b->k * sizeof(float)
                : 0;
}

typedef uint32_t wb_u32x8 __attribute__((vector_size(32), aligned(4)));

/* Row i's step and codes (codes into c, k of them), from its k floats.
 * The loops over k are branch-free so that they vectorise: a refresh
 * re-quantises every row. */
static inline __attribute__((always_inline)) float
wbound_quantise(const float *w, uint32_t k, uint8_t *c)
{
    /* The largest entry by its bits: non-negative floats order as their
     * bit patterns, and a negative one (but -0), an infinity or a NaN
     * has bits at 0x7f800000 or above, so one integer maximum finds both
     * the step and a bad row. */
    uint32_t mb = 0, j0 = 0;
    if (k % 8 == 0) {
        /* Eight lanes at a time (GCC does not vectorise this maximum
         * by itself), then across the lanes. */
        wb_u32x8 m = {0};
        for (; j0 < k; j0 += 8) {
            wb_u32x8 x;
            memcpy(&x, &w[j0], sizeof(x));
            x &= ~(wb_u32x8)(x == 0x80000000u);
            wb_u32x8 gt = (wb_u32x8)(x > m);
            m = (x & gt) | (m & ~gt);
        }
        for (uint32_t l = 0; l < 8; l++)
            mb = m[l] > mb ? m[l] : mb;
    }
    for (uint32_t j = j0; j < k; j++) {
        uint32_t x;
        memcpy(&x, &w[j], sizeof(x));
        x = x == 0x80000000u ? 0 : x;
        mb = x > mb ? x : mb;
    }
    if (mb >= 0x7f800000u || mb == 0) {
        for (uint32_t j = 0; j < k; j++)
            c[j] = 1;
        return mb ? INFINITY : -INFINITY;
    }
    float mx;
    memcpy(&mx, &mb, sizeof(mx));
    if (mb >= 9u << 23) {
        /* s = 2^e, the least power of two with 255 s >= mx: w / s is
         * then exact in float, and so is its ceiling, with no division.
         * mx's exponent E (mx in [2^E, 2^(E+1))) gives 2^(E-7) or, when
         * mx > 255 2^(E-7), 2^(E-6); both normal floats here. */
        uint32_t sb = ((mb >> 23) - 7) << 23;
        float s;
        memcpy(&s, &sb, sizeof(s));
        s = mx > 255 * s ? 2 * s : s;
        float inv = 1 / s;
        for (uint32_t j = 0; j < k; j++) {
            float x = w[j] * inv;
            int32_t t = (int32_t)x;
            t += (float)t < x;
            c[j] = (uint8_t)t;
        }
        return s;
    }
    /* mx below 2^-118: w / s would leave the normal range. The step is
     * mx / 255 rounded up to a float (one ulp up when the nearest was
     * below), and the codes come from double. */
    double sd = (double)mx / 255;
    float s = (float)sd;
    if ((double)s < sd) {
        uint32_t bits;
        memcpy(&bits, &s, sizeof(bits));
        bits++;
        memcpy(&s, &bits, sizeof(s));
    }
    sd = s;
    double inv = 1.0 / sd;
    for (uint32_t j = 0; j < k; j++) {
        /* w inv is within a few ulps of w / s (< 256): its floor is
         * ceil(w / s) or one below, which the exact test t s < w (8 by 24
         * bits, exact in double) moves up. */
        int32_t t = (int32_t)((double)w[j] * inv);
        t += (double)t * sd < (double)w[j];
        c[j] = (uint8_t)(t < 255 ? t : 255);
    }
    return s;
}

/* Chunk c's column maxima over W's rows in use, into cm (k floats). */
static inline __attribute__((always_inline)) void
wbound_chunk_max(const float *W, uint32_t k, uint32_t M, uint32_t c, float *cm)
{
    uint32_t r0 = c * WBOUND_CHUNK, r1 = r0 + WBOUND_CHUNK;
    r1 = r1 < M ? r1 : M;
    for (uint32_t j = 0; j < k; j++)
        cm[j] = r0 < r1 ? 0 : -INFINITY;
    for (uint32_t i = r0; i < r1; i++) {
        const float *w = W + (size_t)i * k;
        for (uint32_t j = 0; j < k; j++)
            cm[j] = w[j] != w[j] ? INFINITY : w[j] > cm[j] ? w[j] : cm[j];
    }
}

static inline __attribute__((always_inline)) void
wbound_set_k(struct wbound *b, const float *W, uint32_t k, uint32_t M,
             uint32_t i0, uint32_t i1)
{
    uint8_t c[256];
    for (uint32_t i = i0; i < i1; i++) {
        float s = wbound_quantise(W + (size_t)i * k, k, c);
        uint8_t *blk = b->q + (size_t)(i / WBOUND_BLOCK) * WBOUND_BLOCK * k;
        for (uint32_t j = 0; j < k; j++)
            blk[(size_t)j * WBOUND_BLOCK + i % WBOUND_BLOCK] = c[j];
        b->scale[i] = s;
    }
    float cm[256];
    for (uint32_t ch = i0 / WBOUND_CHUNK; ch <= (i1 - 1) / WBOUND_CHUNK; ch++) {
        wbound_chunk_max(W, k, M, ch, cm);
        for (uint32_t j = 0; j < k; j++)
            b->cmax[wbound_cm(k, ch, j)] = cm[j];
    }
}

/* A refresh re-quantises every row: the common k are compiled with k
 * known, so that the loops over k unroll and vectorise. */
ONLINE_KERNEL
void wbound_set(struct wbound *b, const float *W, uint32_t M, uint32_t i0,
                uint32_t i1)
{
    if (i0 >= i1)
        return;
    switch (b->k) {
    case 16:
        wbound_set_k(b, W, 16, M, i0, i1);
        break;
    case 32:
        wbound_set_k(b, W, 32, M, i0, i1);
        break;
    default:
        wbound_set_k(b, W, b->k, M, i0, i1);
        break;
    }
}

void wbound_add(struct wbound *b, const float *W, uint32_t i)
{
    const uint32_t k = b->k;
    uint8_t c[256];
    const float *w = W + (size_t)i * k;
    float s = wbound_quantise(w, k, c);
    uint8_t *blk = b->q + (size_t)(i / WBOUND_BLOCK) * WBOUND_BLOCK * k;
    for (uint32_t j = 0; j < k; j++)
        blk[(size_t)j * WBOUND_BLOCK + i % WBOUND_BLOCK] = c[j];
    b->scale[i] = s;
    /* The row was zero or not in use: the chunk's maxima can only grow,
     * from 0 (a chunk with no row in use had -inf), as
     * wbound_chunk_max would find them. */
    for (uint32_t j = 0; j < k; j++) {
        float *cm = &b->cmax[wbound_cm(k, i / WBOUND_CHUNK, j)];
        float x = *cm < 0 ? 0 : *cm;
        *cm = w[j] != w[j] ? INFINITY : w[j] > x ? w[j] : x;
    }
}

int wbound_matches(const struct wbound *b, const float *W, uint32_t M)
{
    const uint32_t k = b->k;
    uint8_t c[256];
    if (M > b->cap)
        return 0;
    for (uint32_t i = 0; i < M; i++) {
        float s = wbound_quantise(W + (size_t)i * k, k, c);
        const uint8_t *blk =
            b->q + (size_t)(i / WBOUND_BLOCK) * WBOUND_BLOCK * k;
        if (memcmp(&s, &b->scale[i], sizeof(s)))
            return 0;
        for (uint32_t j = 0; j < k; j++)
            if (blk[(size_t)j * WBOUND_BLOCK + i % WBOUND_BLOCK] != c[j])
                return 0;
    }
    float cm[256];
    for (uint32_t ch = 0; ch < (M + WBOUND_CHUNK - 1) / WBOUND_CHUNK; ch++) {
        wbound_chunk_max(W, k, M, ch, cm);
        for (uint32_t j = 0; j < k; j++)
            if (memcmp(&cm[j], &b->cmax[wbound_cm(k, ch, j)], sizeof(float)))
                return 0;
    }
    return 1;
}

float wbound_floor(float thr, uint32_t k)
{
    double eps = (4.0 * k + 16) * 0x1p-24;
    double x = ((double)thr - 0x1p-120) / (1 + eps);
    /* Below the double quotient's own rounding, then a float below x. */
    x -= fabs(x) * 0x1p-50;
    float lo = (float)x;
    if ((double)lo > x)
        lo = nextafterf(lo, -INFINITY);
    return lo;
}

typedef uint8_t wb_u8x16 __attribute__((vector_size(16), aligned(1)));
typedef float wb_f16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t wb_i16 __attribute__((vector_size(64)));

/* C for the WBOUND_GROUP chunks of group G: the group's maxima are k
 * columns of 64 floats, so this is 64 independent sums, one a lane. */
ONLINE_KERNEL
void wbound_chunks(const struct wbound *b, const float *h, uint32_t G,
                   float *out)
{
    const uint32_t k = b->k;
    const float *cm = b->cmax + (size_t)G * k * WBOUND_GROUP;
    wb_f16 acc[4] = {{0}, {0}, {0}, {0}};
    for (uint32_t j = 0; j < k; j++) {
        if (h[j] == 0)
            continue;
        wb_f16 hv = (wb_f16){0} + h[j];
        for (uint32_t g = 0; g < 4; g++) {
            wb_f16 c;
            memcpy(&c, cm + (size_t)j * WBOUND_GROUP + g * 16, sizeof(c));
            acc[g] += c * hv;
        }
    }
    memcpy(out, acc, sizeof(acc));
}

/* B for 64 rows: per block of 16, sum_j c_(j, .) h_j with the codes of
 * topic j for the 16 rows widened to floats (no reduction across lanes),
 * then times the 16 steps. Topics with h_j = 0 add nothing and are
 * skipped: a user's h is often sparse. */
ONLINE_KERNEL
int wbound_scan(const struct wbound *b, const float *h, uint32_t i0, float lo,
                float *out)
{
    const uint32_t k = b->k;
    const uint8_t *q = b->q + (size_t)i0 * k;
    const size_t bs = (size_t)WBOUND_BLOCK * k;
    wb_f16 acc[4] = {{0}, {0}, {0}, {0}};
    for (uint32_t j = 0; j < k; j++) {
        if (h[j] == 0)
            continue;
        wb_f16 hv = (wb_f16){0} + h[j];
        for (uint32_t g = 0; g < 4; g++) {
            wb_u8x16 c;
            memcpy(&c, q + g * bs + (size_t)j * WBOUND_BLOCK, sizeof(c));
            acc[g] += __builtin_convertvector(c, wb_f16) * hv;
        }
    }
    wb_i16 any = {0};
    wb_f16 lov = (wb_f16){0} + lo;
    for (uint32_t g = 0; g < 4; g++) {
        wb_f16 s;
        memcpy(&s, b->scale + i0 + g * WBOUND_BLOCK, sizeof(s));
        wb_f16 bnd = acc[g] * s;
        memcpy(out + g * WBOUND_BLOCK, &bnd, sizeof(bnd));
        any |= bnd > lov;
    }
    int32_t r = 0;
    for (uint32_t l = 0; l < 16; l++)
        r |= any[l];
    return r != 0;
}
