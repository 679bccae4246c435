/* online/nnls.c -- per-user non-negative least squares.
 *
 * Solves one user's code h against the dictionary W through its Gram
 * matrix G = W^T W and b = W^T v only, so the cost is independent of the
 * item count. It owns nothing: flat arrays in, flat arrays out, no
 * allocation, and it must never read W or the profile itself.
 */
#include <stddef.h>

#include "nnls.h"

#define NNLS_K_MAX 256
#include "simd.h"

/*
 * Objective: min_{h >= 0} 1/2 ||v - W h||^2 + l1 sum(h) + l2/2 ||h||^2,
 * written with G = W^T W and b = W^T v as
 *     f(h) = 1/2 h^T G h - b^T h + l1 sum(h) + l2/2 h^T h (+ const).
 * Update (exact minimisation along coordinate j, projected on h_j >= 0):
 *     g_j = (G h)_j - b_j + l1 + l2 h_j
 *     h_j <- max(0, h_j - g_j / (G_jj + l2))
 * and the gradient is kept incrementally: G h += (h_j' - h_j) G[:, j], so
 * a sweep costs O(k^2) and skips the update when h_j does not move.
 * This is the sequential coordinate-wise NNLS of Franc, Hlavac & Navara
 * (CAIP 2005), the per-column subproblem of Hsieh & Dhillon's coordinate
 * descent NMF (KDD 2011) and of Mairal et al. (JMLR 2010, section 3.4 uses
 * the same warm-started solve). Each step cannot increase f.
 * Stopping: max_j |h_j' - h_j| <= tol * max_j h_j after a sweep.
 */
ONLINE_KERNEL
uint32_t nnls_solve(uint32_t k, const double *restrict G,
                    const double *restrict b, double l1, double l2,
                    uint32_t max_sweeps, double tol, double *restrict h,
                    double *restrict gh)
{
    for (uint32_t j = 0; j < k; j++)
        gh[j] = 0;
    for (uint32_t l = 0; l < k; l++) {
        double hl = h[l];
        if (hl == 0)
            continue;
        const double *restrict gl = G + (size_t)l * k;
        for (uint32_t j = 0; j < k; j++)
            gh[j] += gl[j] * hl;
    }
    /* Inverse curvatures once per solve: no division in the sweeps. */
    double inv[NNLS_K_MAX], c[NNLS_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        double hjj = G[(size_t)j * k + j] + l2;
        inv[j] = hjj > 0 ? 1.0 / hjj : 0;
        c[j] = l1 - b[j];
    }
    uint32_t sweep = 0;
    while (sweep < max_sweeps) {
        double maxd = 0, maxh = 0;
        for (uint32_t j = 0; j < k; j++) {
            const double *restrict gj = G + (size_t)j * k;
            double hj = h[j];
            /* With no curvature (a zero column of W) h_j is 0. */
            double nj = hj - (gh[j] + c[j] + l2 * hj) * inv[j];
            if (!(nj > 0) || inv[j] == 0)
                nj = 0;
            double d = nj - hj;
            if (d != 0) {
                h[j] = nj;
                for (uint32_t l = 0; l < k; l++)
                    gh[l] += d * gj[l];
                if (d < 0)
                    d = -d;
                if (d > maxd)
                    maxd = d;
            }
            if (nj > maxh)
                maxh = nj;
        }
        sweep++;
        if (maxd <= tol * maxh)
            break;
    }
    return sweep;
}
