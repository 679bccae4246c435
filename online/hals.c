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
 * and sweep.
 */
ONLINE_KERNEL
void hals_update(uint32_t k, size_t rows, float *restrict W,
                 const double *restrict B, const double *restrict bscale,
                 const double *restrict A, const uint8_t *restrict skip,
                 double l1, double l2, uint32_t sweeps, double *restrict colsq)
{
    double w[MODEL_K_MAX], r[MODEL_K_MAX], sq[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        sq[j] = 0;
    for (size_t i = 0; i < rows; i++) {
        float *restrict wi = W + i * k;
        const double *restrict bi = B + i * k;
        for (uint32_t j = 0; j < k; j++) {
            w[j] = wi[j];
            r[j] = 0;
        }
        for (uint32_t l = 0; l < k; l++) {
            double wl = w[l];
            if (wl == 0)
                continue;
            const double *restrict al = A + (size_t)l * k;
            for (uint32_t j = 0; j < k; j++)
                r[j] += al[j] * wl;
        }
        for (uint32_t s = 0; s < sweeps; s++) {
            for (uint32_t j = 0; j < k; j++) {
                if (skip[j])
                    continue;
                const double *restrict aj = A + (size_t)j * k;
                double num = bi[j] * bscale[j] - r[j] + aj[j] * w[j] - l1;
                double nw = num > 0 ? num / (aj[j] + l2) : 0;
                double d = nw - w[j];
                if (d != 0) {
                    w[j] = nw;
                    for (uint32_t l = 0; l < k; l++)
                        r[l] += d * aj[l];
                }
            }
        }
        for (uint32_t j = 0; j < k; j++) {
            float f = (float)w[j];
            wi[j] = f;
            sq[j] += (double)f * f;
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
