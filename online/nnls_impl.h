/* nnls_impl.h -- the body of nnls_solve, for inlining into the model's
 * per-user step, where k is a constant of the caller's specialisation
 * (model.c) and the loops unroll. Not part of the API: see nnls.h. */
#ifndef NMFD_ONLINE_NNLS_IMPL_H
#define NMFD_ONLINE_NNLS_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NNLS_K_MAX 256

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
 *
 * Order. A code is sparse (a user belongs to few segments), so most
 * coordinates sit at 0 with a non-negative gradient, and a step on one of
 * them moves nothing. Each sweep therefore visits the coordinates that are
 * positive at its start, in index order, then the zero ones in index
 * order, and a zero coordinate costs one test of its gradient (the step
 * moves it only if g_j = (G h)_j - b_j + l1 < 0) instead of a step.
 * That is cyclic coordinate descent with the sweep's order fixed at its
 * start, so the descent and the stopping rule are those above; with s
 * positive coordinates a sweep costs O(s k + k) instead of O(k^2).
 */
/* Largest support solved directly (nnls__face). */
#define NNLS_FACE_MAX 8

/* Masks of coordinates: bit j % 32 of word j / 32. Words of 32 bits,
 * since GCC turns a 32-bit mask loop over a constant k into vector
 * compares but leaves a 64-bit one scalar (x86-64-v3 and v4 alike). */
#define NNLS_MASK_WORDS ((NNLS_K_MAX + 31) / 32)

/* Bit j set where g_j + c_j < 0. */
static inline __attribute__((always_inline)) void
nnls__mask_neg(const uint32_t k, const double *restrict g,
               const double *restrict c, uint32_t *restrict mask)
{
    for (uint32_t w = 0; 32 * w < k; w++) {
        const uint32_t n = k - 32 * w < 32 ? k - 32 * w : 32;
        const double *restrict gw = g + 32 * w, *restrict cw = c + 32 * w;
        uint32_t bits = 0;
        for (uint32_t j = 0; j < n; j++)
            bits |= (uint32_t)(gw[j] + cw[j] < 0) << j;
        mask[w] = bits;
    }
}

/* Bit j set where x_j > 0. */
static inline __attribute__((always_inline)) void
nnls__mask_pos(const uint32_t k, const double *restrict x,
               uint32_t *restrict mask)
{
    for (uint32_t w = 0; 32 * w < k; w++) {
        const uint32_t n = k - 32 * w < 32 ? k - 32 * w : 32;
        const double *restrict xw = x + 32 * w;
        uint32_t bits = 0;
        for (uint32_t j = 0; j < n; j++)
            bits |= (uint32_t)(xw[j] > 0) << j;
        mask[w] = bits;
    }
}

/*
 * The face step: the exact minimiser on the warm start's support S
 * (the coordinates with h_j > 0), tried before any sweep, since an event
 * rarely changes which segments a user belongs to. On S the problem is
 * unconstrained:
 *     (G_SS + l2 I) x = b_S - l1,
 * solved by Cholesky (|S| <= NNLS_FACE_MAX; a pivot below 1e-12 of its
 * diagonal gives up; |S| = 1, the common case, is one division). x is the
 * solution of the whole problem when x > 0 and no coordinate off S would move,
 * that is when the step of the sweep below, max(0, -g_j / (G_jj + l2)) with g_j
 * = (G x)_j - b_j + l1, is at most tol * max x for every j off S: exactly the
 * sweep's stopping rule, met by a point the sweeps only approach. Then h = x,
 * gh = G x and it returns 1; otherwise it returns 0 with h and gh untouched.
 * This is the first step of an active-set method (Lawson & Hanson 1974, ch. 23)
 * with the warm start as the guess of the active set; Kim & Park (SIAM J. Sci.
 * Comput. 2011) use the same guess in block principal pivoting.
 */
static inline __attribute__((always_inline)) int
nnls__face(const uint32_t k, const double *restrict G, const double *restrict b,
           double l1, double l2, double tol, double *restrict h,
           double *restrict gh)
{
    /* S from a mask of h > 0, given up as soon as it is too large. */
    uint32_t pm[NNLS_MASK_WORDS];
    uint32_t S[NNLS_FACE_MAX], s = 0;
    nnls__mask_pos(k, h, pm);
    for (uint32_t w = 0; 32 * w < k; w++) {
        for (uint32_t bits = pm[w]; bits; bits &= bits - 1) {
            if (s == NNLS_FACE_MAX)
                return 0;
            S[s++] = 32 * w + (uint32_t)__builtin_ctz(bits);
        }
    }
    if (!s)
        return 0;
    double x[NNLS_FACE_MAX], maxh;
    if (s == 1) {
        double d = G[(size_t)S[0] * k + S[0]] + l2;
        x[0] = (b[S[0]] - l1) / d;
        if (!(d > 0) || !(x[0] > 0))
            return 0;
        maxh = x[0];
    } else {
        double L[NNLS_FACE_MAX][NNLS_FACE_MAX];
        for (uint32_t p = 0; p < s; p++) {
            const double *restrict gp = G + (size_t)S[p] * k;
            for (uint32_t q = 0; q <= p; q++) {
                double a = gp[S[q]] + (p == q ? l2 : 0);
                for (uint32_t r = 0; r < q; r++)
                    a -= L[p][r] * L[q][r];
                if (p == q) {
                    if (!(a > 1e-12 * (gp[S[p]] + l2)))
                        return 0;
                    L[p][p] = sqrt(a);
                } else {
                    L[p][q] = a / L[q][q];
                }
            }
        }
        for (uint32_t p = 0; p < s; p++) {
            double a = b[S[p]] - l1;
            for (uint32_t r = 0; r < p; r++)
                a -= L[p][r] * x[r];
            x[p] = a / L[p][p];
        }
        maxh = 0;
        for (uint32_t p = s; p-- > 0;) {
            double a = x[p];
            for (uint32_t r = p + 1; r < s; r++)
                a -= L[r][p] * x[r];
            x[p] = a / L[p][p];
            if (!(x[p] > 0))
                return 0;
            maxh = x[p] > maxh ? x[p] : maxh;
        }
    }
    double g[NNLS_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        g[j] = 0;
    for (uint32_t p = 0; p < s; p++) {
        const double *restrict gp = G + (size_t)S[p] * k;
        for (uint32_t j = 0; j < k; j++)
            g[j] += gp[j] * x[p];
    }
    /* Off S (h_j = 0) the sweep's step is -(g_j - b_j + l1) / (G_jj + l2)
     * when positive, 0 for a dead coordinate (G_jj + l2 = 0); on S it is 0
     * up to rounding and not tested. Compared without the division. */
    int bad = 0;
    const double lim = tol * maxh;
    for (uint32_t j = 0; j < k; j++) {
        double hjj = G[(size_t)j * k + j] + l2;
        bad |= (h[j] == 0) & (hjj > 0) & (b[j] - l1 - g[j] > lim * hjj);
    }
    if (bad)
        return 0;
    for (uint32_t j = 0; j < k; j++)
        gh[j] = g[j];
    for (uint32_t p = 0; p < s; p++)
        h[S[p]] = x[p];
    return 1;
}

static inline __attribute__((always_inline)) uint32_t
nnls__solve(const uint32_t k, const double *restrict G,
            const double *restrict b, double l1, double l2, uint32_t max_sweeps,
            double tol, double *restrict h, double *restrict gh)
{
    if (max_sweeps && nnls__face(k, G, b, l1, l2, tol, h, gh))
        return 1;
    /* Inverse curvatures once per solve: no division in the sweeps. With
     * no curvature (a zero column of W) h_j is 0: c_j = +inf keeps such a
     * coordinate out of the zero pass, and the positive pass zeroes it. */
    double inv[NNLS_K_MAX], c[NNLS_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        double hjj = G[(size_t)j * k + j] + l2;
        inv[j] = hjj > 0 ? 1.0 / hjj : 0;
        c[j] = hjj > 0 ? l1 - b[j] : INFINITY;
    }
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
    const uint32_t words = (k + 31) / 32;
    uint32_t sweep = 0;
    while (sweep < max_sweeps) {
        double maxd = 0, maxh = 0;
        uint32_t pos[NNLS_MASK_WORDS];
        nnls__mask_pos(k, h, pos);
        /* The positive coordinates. */
        for (uint32_t w = 0; w < words; w++) {
            for (uint32_t bits = pos[w]; bits; bits &= bits - 1) {
                uint32_t j = 32 * w + (uint32_t)__builtin_ctz(bits);
                const double *restrict gj = G + (size_t)j * k;
                double hj = h[j];
                double nj = hj - (gh[j] + c[j] + l2 * hj) * inv[j];
                if (!(nj > 0) || inv[j] == 0)
                    nj = 0;
                double d = nj - hj;
                if (d != 0) {
                    h[j] = nj;
                    for (uint32_t l = 0; l < k; l++)
                        gh[l] += d * gj[l];
                    d = d < 0 ? -d : d;
                    maxd = d > maxd ? d : maxd;
                }
                maxh = nj > maxh ? nj : maxh;
            }
        }
        /* The zero ones: only a negative gradient moves one. They are
         * found by one vector compare, in index order; a step changes
         * G h, so the mask is taken again for the coordinates after it. */
        uint32_t neg[NNLS_MASK_WORDS];
        nnls__mask_neg(k, gh, c, neg);
        for (uint32_t w = 0; w < words; w++) {
            uint32_t bits = neg[w] & ~pos[w];
            while (bits) {
                uint32_t at = (uint32_t)__builtin_ctz(bits);
                uint32_t j = 32 * w + at;
                bits &= bits - 1;
                double nj = -(gh[j] + c[j]) * inv[j];
                if (!(nj > 0))
                    continue;
                const double *restrict gj = G + (size_t)j * k;
                h[j] = nj;
                for (uint32_t l = 0; l < k; l++)
                    gh[l] += nj * gj[l];
                maxd = nj > maxd ? nj : maxd;
                maxh = nj > maxh ? nj : maxh;
                nnls__mask_neg(k, gh, c, neg);
                bits = at == 31 ? 0 : neg[w] & ~pos[w] & (~0u << (at + 1));
            }
        }
        sweep++;
        if (maxd <= tol * maxh)
            break;
    }
    return sweep;
}

#endif
