/* online/hals.c -- the dictionary (W) update of the online NMF.
 *
 * Given the sufficient statistics A = sum_u c_u h_u h_u^T and
 * B = sum_u c_u v_u h_u^T it improves W by hierarchical alternating least
 * squares, row by row so that W is read once per sweep in its row-major
 * order, and computes Gram matrices of W. It owns nothing and allocates
 * nothing; it must never touch users or the statistics themselves.
 */
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
 * streaming W and B once. r = w_i A is kept incrementally: O(k^2) per row
 * and sweep; eight rows go through together, one per vector lane.
 */
#define HALS_R 8 /* rows updated together, one vector lane each */

ONLINE_KERNEL
void hals_update(uint32_t k, size_t rows, float *restrict W,
                 const double *restrict B, const double *restrict bscale,
                 const double *restrict A, const uint8_t *restrict skip,
                 double l1, double l2, uint32_t sweeps, double *restrict colsq)
{
    /* Blocks of HALS_R rows, transposed so that every step below is a
     * vector operation across the rows of the block. */
    double w[MODEL_K_MAX][HALS_R], r[MODEL_K_MAX][HALS_R];
    double bb[MODEL_K_MAX][HALS_R];
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
                r[j][x] = 0;
            }
        }
        /* r = A w for each row (A symmetric). */
        for (uint32_t j = 0; j < k; j++) {
            const double *restrict aj = A + (size_t)j * k;
            for (uint32_t l = 0; l < k; l++)
                for (size_t x = 0; x < HALS_R; x++)
                    r[l][x] += aj[l] * w[j][x];
        }
        for (uint32_t s = 0; s < sweeps; s++) {
            for (uint32_t j = 0; j < k; j++) {
                if (inv[j] == 0)
                    continue;
                const double *restrict aj = A + (size_t)j * k;
                double d[HALS_R];
                for (size_t x = 0; x < HALS_R; x++) {
                    double nw =
                        (bb[j][x] - r[j][x] + ajj[j] * w[j][x]) * inv[j];
                    nw = nw > 0 ? nw : 0;
                    d[x] = nw - w[j][x];
                    w[j][x] = nw;
                }
                for (uint32_t l = 0; l < k; l++)
                    for (size_t x = 0; x < HALS_R; x++)
                        r[l][x] += aj[l] * d[x];
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

/* G += W^T W, one outer product per row, accumulated in double. */
ONLINE_KERNEL
void hals_gram(uint32_t k, size_t rows, const float *restrict W,
               double *restrict G)
{
    double w[MODEL_K_MAX];
    for (size_t i = 0; i < rows; i++) {
        const float *restrict wi = W + i * k;
        int any = 0;
        for (uint32_t j = 0; j < k; j++) {
            w[j] = wi[j];
            any |= wi[j] != 0;
        }
        if (!any)
            continue;
        for (uint32_t j = 0; j < k; j++) {
            double wj = w[j];
            if (wj == 0)
                continue;
            double *restrict gj = G + (size_t)j * k;
            for (uint32_t l = 0; l < k; l++)
                gj[l] += wj * w[l];
        }
    }
}
