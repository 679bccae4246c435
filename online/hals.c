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

/* G += W^T W, accumulated in double four rows at a time (four outer
 * products per update of G, no branches), after scaling each row's
 * columns when asked (the unit-norm reparametrisation). */
ONLINE_KERNEL
void hals_gram(uint32_t k, size_t rows, float *restrict W,
               const double *restrict scale, double *restrict G)
{
    double w[4][MODEL_K_MAX];
    for (size_t i0 = 0; i0 < rows; i0 += 4) {
        size_t nr = rows - i0 < 4 ? rows - i0 : 4;
        for (size_t x = 0; x < 4; x++) {
            float *restrict wi = W + (i0 + (x < nr ? x : 0)) * k;
            for (uint32_t j = 0; j < k; j++) {
                double v = 0;
                if (x < nr) {
                    if (scale) {
                        float f = (float)((double)wi[j] * scale[j]);
                        wi[j] = f;
                        v = f;
                    } else {
                        v = wi[j];
                    }
                }
                w[x][j] = v;
            }
        }
        for (uint32_t j = 0; j < k; j++) {
            double a0 = w[0][j], a1 = w[1][j], a2 = w[2][j], a3 = w[3][j];
            double *restrict gj = G + (size_t)j * k;
            for (uint32_t l = 0; l < k; l++)
                gj[l] +=
                    a0 * w[0][l] + a1 * w[1][l] + a2 * w[2][l] + a3 * w[3][l];
        }
    }
}
