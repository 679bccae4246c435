/* online/hals.c -- the dictionary (W) update of the online NMF.
 *
 * Given the sufficient statistics A = sum_u c_u h_u h_u^T and
 * B = sum_u c_u v_u h_u^T it improves W by hierarchical alternating least
 * squares, row by row so that W is read once per sweep in its row-major
 * order, and computes Gram matrices of W. It owns nothing and allocates
 * nothing; it must never touch users or the statistics themselves.
 */
#include <string.h>

#include "hals.h"
#include "model.h"
#include "simd.h"

/*
 * Objective (Mairal, Bach, Ponce & Sapiro, JMLR 2010, eq. 9, with the
 * elastic-net penalty of scikit-learn's NMF):
 *     min_{W >= 0} 1/2 tr(W^T W A) - tr(W^T B) + l1 sum(W) + l2/2 |W|_F^2
 * which equals sum_u c_u 1/2 ||v_u - W h_u||^2 + penalty, up to a constant.
 * Update, column j in turn (HALS: Cichocki & Phan, IEICE Trans. 2009;
 * Gillis, "The why and how of nonnegative matrix factorization", 2014):
 *     w_j <- max(0, (b_j - W a_j + A_jj w_j - l1) / (A_jj + l2))
 * Entry (i, j) of that update reads only row i of W, so sweeping each row
 * through j = 0..k-1 gives exactly the column-by-column HALS result while
 * streaming W and B once. Eight rows go through together, one per vector
 * lane, and (W a_j) for them is computed when coordinate j is updated:
 * O(k^2) per row and sweep, with no dependency chain between lanes.
 */
#define HALS_R 32 /* rows updated together: independent lanes */

ONLINE_KERNEL
void hals_update(uint32_t k, size_t rows, float *restrict W,
                 const double *restrict B, const double *restrict bscale,
                 const double *restrict A, const uint8_t *restrict skip,
                 double l1, double l2, uint32_t sweeps, double *restrict colsq)
{
    /* Blocks of HALS_R rows, transposed so that every step below is a
     * vector operation across the rows of the block. */
    double w[MODEL_K_MAX][HALS_R], bb[MODEL_K_MAX][HALS_R];
    double inv[MODEL_K_MAX], ajj[MODEL_K_MAX], sq[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        ajj[j] = A[(size_t)j * k + j];
        double den = ajj[j] + l2;
        inv[j] = !skip[j] && den > 0 ? 1.0 / den : 0;
        sq[j] = 0;
    }
    for (size_t i0 = 0; i0 < rows; i0 += HALS_R) {
        size_t nr = rows - i0 < HALS_R ? rows - i0 : HALS_R;
        for (uint32_t j = 0; j < k; j++) {
            for (size_t x = 0; x < HALS_R; x++) {
                size_t i = i0 + (x < nr ? x : 0);
                w[j][x] = x < nr ? W[i * k + j] : 0;
                bb[j][x] = x < nr ? B[i * k + j] * bscale[j] - l1 : 0;
            }
        }
        for (uint32_t s = 0; s < sweeps; s++) {
            for (uint32_t j = 0; j < k; j++) {
                if (inv[j] == 0)
                    continue;
                /* (W a_j) for the block's rows, with the current w. */
                const double *restrict aj = A + (size_t)j * k;
                double r[HALS_R] = {0};
                for (uint32_t l = 0; l < k; l++)
                    for (size_t x = 0; x < HALS_R; x++)
                        r[x] += aj[l] * w[l][x];
                for (size_t x = 0; x < HALS_R; x++) {
                    double nw = (bb[j][x] - r[x] + ajj[j] * w[j][x]) * inv[j];
                    w[j][x] = nw > 0 ? nw : 0;
                }
            }
        }
        for (size_t x = 0; x < nr; x++) {
            float *restrict wi = W + (i0 + x) * k;
            for (uint32_t j = 0; j < k; j++) {
                float f = (float)w[j][x];
                wi[j] = f;
                sq[j] += (double)f * f;
            }
        }
    }
    for (uint32_t j = 0; j < k; j++)
        if (!skip[j])
            colsq[j] += sq[j];
}

/*
 * G += W^T W (G_jl = sum_i W_ij W_il), after scaling each row's columns
 * when asked (the unit-norm reparametrisation). W is float, G double.
 * Blocked so that the arithmetic, not G's loads and stores, sets the
 * pace: a chunk of rows goes to a double buffer once (scaled and stored
 * back on the way), then for each band of HALS_GRAM_J rows of G the whole
 * chunk is accumulated in registers (HALS_GRAM_J x k doubles in vectors
 * of HALS_GRAM_VD: 16 AVX2 registers at k = 16) and added to G once per
 * chunk. The vectors are 4 doubles wide: with 8 (a 64-byte vector type),
 * GCC's x86-64-v3 clone, having no 512-bit registers, lowered the
 * accumulators to memory and the kernel ran 23 times slower on AVX2
 * machines (625 ms at k = 16, 1 M rows, against 27 ms). A buffered row is
 * padded with zeros to kp columns (whole vectors of 8 for k <= 32, whole
 * bands beyond), so every band and every vector is full. At k = 16, 1 M
 * rows: 32 ms before this blocking (four rows per update of all of G),
 * 12.6 ms after (docs/benchmarks.md).
 */
#define HALS_GRAM_J   4
#define HALS_GRAM_BUF 4096 /* doubles: 32 KiB, within L1 */
#define HALS_GRAM_VD 4 /* doubles per vector of the k <= 32 path */
#define HALS_GRAM_VB (HALS_GRAM_VD * 8)

/* The bands of G for a chunk of nr buffered rows (kp doubles each), in
 * scalar loops: k > 32. */
static inline __attribute__((always_inline)) void
hals_gram_bands(const uint32_t k, const uint32_t kp, const double *buf,
                size_t nr, double *restrict G)
{
    for (uint32_t j0 = 0; j0 < kp; j0 += HALS_GRAM_J) {
        double acc[HALS_GRAM_J][MODEL_K_MAX];
        for (uint32_t q = 0; q < HALS_GRAM_J; q++)
            for (uint32_t l = 0; l < k; l++)
                acc[q][l] = 0;
        for (size_t x = 0; x < nr; x++) {
            const double *restrict bx = buf + x * kp;
            for (uint32_t q = 0; q < HALS_GRAM_J; q++) {
                double a = bx[j0 + q];
                for (uint32_t l = 0; l < k; l++)
                    acc[q][l] += a * bx[l];
            }
        }
        for (uint32_t q = 0; q < HALS_GRAM_J && j0 + q < k; q++) {
            double *restrict gj = G + (size_t)(j0 + q) * k;
            for (uint32_t l = 0; l < k; l++)
                gj[l] += acc[q][l];
        }
    }
}

/* The same for k <= 32 with the band's accumulators as vectors of
 * HALS_GRAM_VD doubles that stay in registers (kp a multiple of 8; k a
 * constant when inlined for 8, 16 or 32). */
typedef double hals_v8d __attribute__((vector_size(HALS_GRAM_VB)));
static inline __attribute__((always_inline)) void
hals_gram_bands_v(const uint32_t k, const uint32_t kp, const double *buf,
                  size_t nr, double *restrict G)
{
    const uint32_t nv = kp / HALS_GRAM_VD;
    for (uint32_t j0 = 0; j0 < k; j0 += HALS_GRAM_J) {
        hals_v8d acc[HALS_GRAM_J][32 / HALS_GRAM_VD] = {{{0}}};
        for (size_t x = 0; x < nr; x++) {
            const double *restrict bx = buf + x * kp;
            hals_v8d row[32 / HALS_GRAM_VD];
#pragma GCC unroll 8
            for (uint32_t v = 0; v < nv; v++)
                memcpy(&row[v], bx + HALS_GRAM_VD * v, sizeof(row[v]));
#pragma GCC unroll 4
            for (uint32_t q = 0; q < HALS_GRAM_J; q++) {
                double a = bx[j0 + q];
#pragma GCC unroll 8
                for (uint32_t v = 0; v < nv; v++)
                    acc[q][v] += a * row[v];
            }
        }
        for (uint32_t q = 0; q < HALS_GRAM_J && j0 + q < k; q++) {
            double *restrict gj = G + (size_t)(j0 + q) * k;
            if (k == kp) {
#pragma GCC unroll 8
                for (uint32_t v = 0; v < nv; v++) {
                    hals_v8d g;
                    memcpy(&g, gj + HALS_GRAM_VD * v, sizeof(g));
                    g += acc[q][v];
                    memcpy(gj + HALS_GRAM_VD * v, &g, sizeof(g));
                }
            } else {
                double a[32];
                memcpy(a, acc[q], sizeof(a));
                for (uint32_t l = 0; l < k; l++)
                    gj[l] += a[l];
            }
        }
    }
}

static inline __attribute__((always_inline)) void
hals_gram_k(const uint32_t k, size_t rows, float *restrict W,
            const double *restrict scale, double *restrict G)
{
    /* Row stride of the buffer: k rounded up to whole vectors of 8 up to
     * k = 32 (the vector bands), to whole bands beyond. */
    const uint32_t kp = k <= 32
                            ? (k + 7) / 8 * 8
                            : (k + HALS_GRAM_J - 1) / HALS_GRAM_J * HALS_GRAM_J;
    const size_t chunk = HALS_GRAM_BUF / kp;
    double buf[HALS_GRAM_BUF] __attribute__((aligned(64)));
    for (size_t i0 = 0; i0 < rows; i0 += chunk) {
        size_t nr = rows - i0 < chunk ? rows - i0 : chunk;
        for (size_t x = 0; x < nr; x++) {
            float *restrict wi = W + (i0 + x) * k;
            double *restrict bx = buf + x * kp;
            if (scale) {
                for (uint32_t j = 0; j < k; j++) {
                    float f = (float)((double)wi[j] * scale[j]);
                    wi[j] = f;
                    bx[j] = f;
                }
            } else {
                for (uint32_t j = 0; j < k; j++)
                    bx[j] = wi[j];
            }
            for (uint32_t j = k; j < kp; j++)
                bx[j] = 0;
        }
        if (k <= 32)
            hals_gram_bands_v(k, kp, buf, nr, G);
        else
            hals_gram_bands(k, kp, buf, nr, G);
    }
}

ONLINE_KERNEL
void hals_gram(uint32_t k, size_t rows, float *restrict W,
               const double *restrict scale, double *restrict G)
{
    switch (k) {
    case 8:
        hals_gram_k(8, rows, W, scale, G);
        break;
    case 16:
        hals_gram_k(16, rows, W, scale, G);
        break;
    case 32:
        hals_gram_k(32, rows, W, scale, G);
        break;
    default:
        hals_gram_k(k, rows, W, scale, G);
        break;
    }
}
