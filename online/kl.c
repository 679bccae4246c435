/* online/kl.c -- one user's factor under the generalised Kullback-Leibler
 * divergence, the Poisson likelihood of count data.
 *
 * This is the per-user part of model.loss = kl: the solve of h for a
 * sparse profile against a fixed W, and the user's exact divergence. It
 * owns no state and allocates nothing (the caller gives the scratch).
 * model.c calls it at each re-solve and for the reported loss, and keeps
 * the statistics of W's multiplicative update (model_kl_update).
 *
 * Objective, for a profile v (n entries, items it[], values va[] > 0):
 *     D(v || W h) = sum_i [ v_i log(v_i / (W h)_i) - v_i + (W h)_i ]
 * over every item i, h >= 0. The items outside the profile (v_i = 0)
 * contribute (W h)_i only, and sum_i (W h)_i = s^T h with s_j = sum_i
 * W_ij the column sums of W (one k-vector per W, kept with it), so the
 * divergence and the solve cost O(n k) per pass whatever the item count.
 *
 * Solve: cyclic coordinate descent with a Newton step per coordinate
 * (Hsieh & Dhillon, "Fast coordinate descent methods with variable
 * selection for non-negative matrix factorization", KDD 2011, section 4,
 * the KL case): with r_i = v_i / (W h)_i on the profile,
 *     g_j = s_j - sum_i W_ij r_i,   H_jj = sum_i W_ij^2 r_i / (W h)_i,
 *     h_j <- max(0, h_j - g_j / H_jj),
 * the step halved while it would leave some (W h)_i <= 0 where v_i > 0
 * (the divergence is infinite there; in practice under 1e-9 of itself,
 * kl_coord_rows says why), and W h updated in O(n) after each
 * coordinate. It converges much faster than the multiplicative updates of
 * Lee & Seung (NIPS 2001), and unlike them can set a coordinate to zero
 * and bring it back, which a warm start from the previous h needs. The
 * sweeps go over an active set (the coordinates away from their bound,
 * and those the full gradient would move off it), checked against the
 * full gradient before the solve stops, and a short profile works on a
 * copy of its rows of W by columns, by vectors (kl_solve).
 *
 * A second solve, kl_mu, takes a fixed number of the multiplicative
 * updates of Lee & Seung from an even start. It is for the restart's
 * batch rounds (model_restart.c), not for the fold: when a profile has
 * fewer items than there are topics, many h reach the minimum, and the
 * coordinate solve picks a sparse one while the multiplicative updates
 * stay in the interior, spread over the topics that explain v, and the W
 * updates that follow differ. Measured with the restart's rounds at
 * k = 16: on factominer_hobbies from a 30-iteration seed the coordinate
 * solve ended at 0.0664 per unit of weight, these at 0.0336 (from a
 * 100-iteration seed both reach 0.02158); on glibc_changelog from the
 * 100-iteration seed it ended at 0.8907, these at 0.8870, for about the
 * same CPU.
 */
#include <math.h>
#include <string.h>

#include "kl.h"
#include "simd.h"

/* Column sums of W (M rows of k): s_j = sum_i W_ij. */
void kl_colsums(uint32_t k, size_t M, const float *W, double *s)
{
    for (uint32_t j = 0; j < k; j++)
        s[j] = 0;
    for (size_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            s[j] += W[i * k + j];
}

/* (W h)_q for every profile entry q, each a sum over j in four
 * interleaved partial sums (j mod 4), added at the end: four chains of
 * k / 4 multiply-adds instead of one of k, which the processor runs side
 * by side (the loop over j is short, a row of W, and a single chain made
 * this pass a quarter of the solve's time). */
static inline __attribute__((always_inline)) void
kl_wh(uint32_t k, const float *W, const uint32_t *it, uint32_t n,
      const double *h, double *wh)
{
    for (uint32_t q = 0; q < n; q++) {
        const float *restrict wi = W + (size_t)it[q] * k;
        double x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        uint32_t j = 0;
        for (; j + 4 <= k; j += 4) {
            x0 += wi[j] * h[j];
            x1 += wi[j + 1] * h[j + 1];
            x2 += wi[j + 2] * h[j + 2];
            x3 += wi[j + 3] * h[j + 3];
        }
        for (; j < k; j++)
            x0 += wi[j] * h[j];
        wh[q] = (x0 + x2) + (x1 + x3);
    }
}

double kl_divergence(uint32_t k, const float *W, const double *s,
                     const uint32_t *it, const float *va, uint32_t n,
                     const double *h, double *wh)
{
    kl_wh(k, W, it, n, h, wh);
    double d = 0;
    for (uint32_t j = 0; j < k; j++)
        d += s[j] * h[j];
    for (uint32_t q = 0; q < n; q++) {
        double v = va[q];
        if (!(wh[q] > 0))
            return INFINITY;
        d += v * log(v / wh[q]) - v;
    }
    return d > 0 ? d : 0;
}

/* The Newton step of one coordinate from its passes over the profile:
 * x = max(0, h_j - g_j / H_jj) (0 where H_jj = 0: no profile item in
 * topic j, g_j = s_j >= 0), as a change of h_j. */
static inline double kl_newton(double hj, double g, double H)
{
    double x = H > 0 ? hj - g / H : 0;
    return (x > 0 ? x : 0) - hj;
}

/*
 * A step down (h_j smaller) may overshoot: along coordinate j the
 * divergence's curvature grows as h_j falls, so the Newton step, which
 * takes it as constant, goes too far down. When it takes h_j to 0 where
 * topic j alone covers an item, (W h)_i - W_ij h_j is 0 only in exact
 * arithmetic: in floating point it can be a positive rounding residue,
 * which a test of (W h)_i > 0 passes. From there the Newton steps only
 * double h_j, each below the stopping tolerance, and the solve stops far
 * from the minimum (test_kl has such a case). So (W h)_i must stay above
 * KL_RESIDUE of its value, far above the rounding of a sum of k products
 * (a few 1e-16 of it), or the step is halved like an infeasible one.
 * (A test that a step cutting some (W h)_i to under half lowers D, tried
 * with it, took the one-pass divergence of the planted streams 2e-4
 * higher, and no test needed it.)
 */
#define KL_RESIDUE 1e-9

/* One coordinate's step (the equations at the top) on a profile read in
 * place, W[it[q] k + j]: g_j and H_jj, the step halved while it would
 * leave some (W h)_i under KL_RESIDUE of itself (an item no topic
 * covers, W_i = 0, stays at 0 whatever h), then h_j, W h and
 * iw = 1 / (W h) updated where W_ij is not 0. Returns the step. */
static inline __attribute__((always_inline)) double
kl_coord_rows(const float *restrict W, const uint32_t *restrict it, uint32_t k,
              uint32_t j, const float *restrict va, uint32_t n, double sj,
              double *restrict hj, double *restrict wh, double *restrict iw)
{
    double g = sj, H = 0;
    for (uint32_t q = 0; q < n; q++) {
        const double w = W[(size_t)it[q] * k + j];
        /* r / (W h)_i = v_i iw^2; w = 0 adds nothing. */
        const double r = va[q] * iw[q];
        g -= w * r;
        H += w * w * r * iw[q];
    }
    double step = kl_newton(*hj, g, H);
    for (int t = 0; t < 60 && step < 0; t++) {
        int ok = 1;
        for (uint32_t q = 0; q < n && ok; q++) {
            const double w = W[(size_t)it[q] * k + j];
            ok = w == 0 || wh[q] + w * step > KL_RESIDUE * wh[q];
        }
        if (ok)
            break;
        step = t == 59 ? 0 : step * 0.5;
    }
    if (step != 0) {
        *hj += step;
        if (*hj < 0)
            *hj = 0;
        for (uint32_t q = 0; q < n; q++) {
            const double w = W[(size_t)it[q] * k + j];
            if (w != 0) {
                wh[q] += w * step;
                iw[q] = 1.0 / wh[q];
            }
        }
    }
    return step;
}

/* A short profile's solve works on copies padded to whole vectors of
 * KL_V doubles: its rows of W by columns (wt[j n4 + q] = W_{it[q] j}),
 * v, W h and iw, the padding W = 0, v = 0, W h = 1. Gathered when
 * n <= KL_GATHER_N and n k <= KL_GATHER_MAX (on the stack, 16 KiB for
 * W); a longer profile reads W in place (kl_coord_rows). */
#define KL_V          4
#define KL_GATHER_N   256
#define KL_GATHER_MAX 4096
typedef double kl_v4d __attribute__((vector_size(KL_V * sizeof(double))));
typedef float kl_v4f __attribute__((vector_size(KL_V * sizeof(float)),
                                    aligned(4)));
typedef int64_t kl_v4l __attribute__((vector_size(KL_V * sizeof(double))));

/* By pointer: a vector argument by value draws GCC's note on the ABI of
 * 32-byte arguments in the builds without AVX. */
static inline double kl_hsum(const kl_v4d *x)
{
    return ((*x)[0] + (*x)[2]) + ((*x)[1] + (*x)[3]);
}

/* kl_coord_rows's step on the padded copies, n4 a multiple of KL_V, by
 * vectors: the same g_j, H_jj (summed in another order), halving and
 * update. iw is renewed as y > 0 ? 1 / y : 0 for every entry, which for
 * W_ij = 0 (W h unchanged) gives back the iw it had. */
static inline __attribute__((always_inline)) double
kl_coord_cols(const float *restrict col, uint32_t n4, const double *restrict vd,
              double sj, double *restrict hj, double *restrict whd,
              double *restrict iwd)
{
    kl_v4d gv = {0, 0, 0, 0}, Hv = {0, 0, 0, 0};
    for (uint32_t q = 0; q < n4; q += KL_V) {
        kl_v4f wf;
        kl_v4d v, iw;
        memcpy(&wf, col + q, sizeof(wf));
        memcpy(&v, vd + q, sizeof(v));
        memcpy(&iw, iwd + q, sizeof(iw));
        const kl_v4d w = __builtin_convertvector(wf, kl_v4d);
        const kl_v4d r = v * iw;
        gv += w * r;
        Hv += w * w * r * iw;
    }
    double step = kl_newton(*hj, sj - kl_hsum(&gv), kl_hsum(&Hv));
    for (int t = 0; t < 60 && step < 0; t++) {
        kl_v4l bad = {0, 0, 0, 0};
        for (uint32_t q = 0; q < n4; q += KL_V) {
            kl_v4f wf;
            kl_v4d wh;
            memcpy(&wf, col + q, sizeof(wf));
            memcpy(&wh, whd + q, sizeof(wh));
            const kl_v4d w = __builtin_convertvector(wf, kl_v4d);
            bad |= (w != 0) & ~(wh + w * step > KL_RESIDUE * wh);
        }
        if (!(bad[0] | bad[1] | bad[2] | bad[3]))
            break;
        step = t == 59 ? 0 : step * 0.5;
    }
    if (step != 0) {
        *hj += step;
        if (*hj < 0)
            *hj = 0;
        const kl_v4d one = {1, 1, 1, 1}, zero = {0, 0, 0, 0};
        for (uint32_t q = 0; q < n4; q += KL_V) {
            kl_v4f wf;
            kl_v4d wh;
            memcpy(&wf, col + q, sizeof(wf));
            memcpy(&wh, whd + q, sizeof(wh));
            const kl_v4d w = __builtin_convertvector(wf, kl_v4d);
            const kl_v4d y = wh + w * step;
            const kl_v4l pos = y > zero;
            const kl_v4d inv = one / y;
            kl_v4l bits;
            memcpy(&bits, &inv, sizeof(bits));
            bits &= pos;
            memcpy(whd + q, &y, sizeof(y));
            memcpy(iwd + q, &bits, sizeof(bits));
        }
    }
    return step;
}

/* The gradient and the diagonal of the Hessian of D at the current W h,
 * for every coordinate at once, by rows of W (contiguous, vectorised over
 * j):
 *     g_j = s_j - sum_q W_qj v_q / (W h)_q,
 *     H_jj = sum_q W_qj^2 v_q / (W h)_q^2.
 * iw holds 1 / (W h) (0 where a row of W is all 0). */
static inline __attribute__((always_inline)) void
kl_grad(uint32_t k, const float *restrict W, const double *restrict s,
        const uint32_t *restrict it, const float *restrict va, uint32_t n,
        const double *restrict iw, double *restrict g, double *restrict H)
{
    for (uint32_t j = 0; j < k; j++) {
        g[j] = s[j];
        H[j] = 0;
    }
    for (uint32_t q = 0; q < n; q++) {
        const float *restrict wi = W + (size_t)it[q] * k;
        const double r = va[q] * iw[q], t = r * iw[q];
        for (uint32_t j = 0; j < k; j++) {
            const double w = wi[j];
            g[j] -= w * r;
            H[j] += w * w * t;
        }
    }
}

ONLINE_KERNEL
uint32_t kl_solve(uint32_t k, const float *W, const double *s,
                  const uint32_t *it, const float *va, uint32_t n, double *h,
                  uint32_t sweeps, double tol, double *wh)
{
    if (!n) {
        for (uint32_t j = 0; j < k; j++)
            h[j] = 0;
        return 0;
    }
    /* A start the divergence is finite at: every profile entry needs
     * (W h)_i > 0. If the warm start misses one, every coordinate that
     * can reach the profile gets the mass of v spread over them. */
    kl_wh(k, W, it, n, h, wh);
    int finite = 1;
    for (uint32_t q = 0; q < n; q++)
        finite &= wh[q] > 0;
    if (!finite) {
        double vsum = 0, ssum = 0;
        for (uint32_t q = 0; q < n; q++)
            vsum += va[q];
        for (uint32_t j = 0; j < k; j++)
            ssum += s[j];
        for (uint32_t j = 0; j < k; j++)
            h[j] = ssum > 0 ? (h[j] > 0 ? h[j] : 0) + vsum / ssum : 0;
        kl_wh(k, W, it, n, h, wh);
    }
    /* iw = 1 / (W h), kept beside W h and renewed where a step moves
     * W h. */
    double *restrict iw = wh + n;
    for (uint32_t q = 0; q < n; q++)
        iw[q] = wh[q] > 0 ? 1.0 / wh[q] : 0; /* 0: a row of W all 0 */

    const int cols = n <= KL_GATHER_N && (uint64_t)n * k <= KL_GATHER_MAX;
    const uint32_t n4 = (n + KL_V - 1) / KL_V * KL_V;
    float wt[KL_GATHER_MAX + KL_V];
    double vd[KL_GATHER_N + KL_V], whd[KL_GATHER_N + KL_V],
        iwd[KL_GATHER_N + KL_V];
    if (cols) {
        for (uint32_t q = 0; q < n4; q++) {
            vd[q] = q < n ? va[q] : 0;
            whd[q] = q < n ? wh[q] : 1;
            iwd[q] = q < n ? iw[q] : 0;
        }
        for (uint32_t q = 0; q < n4; q++) {
            const float *restrict wi = W + (size_t)it[q < n ? q : 0] * k;
            for (uint32_t j = 0; j < k; j++)
                wt[(size_t)j * n4 + q] = q < n ? wi[j] : 0;
        }
    }

    /* The active set: the coordinates the sweeps visit, those with
     * h_j > 0 or whose Newton step from 0 is positive at the full
     * gradient. The others sit at their bound with g_j >= 0, where a
     * sweep's step is 0 and costs a pass over the profile all the same
     * (the shrinking of coordinate descent, as in LIBLINEAR; Hsieh &
     * Dhillon's variable selection is another way to skip them). */
    double g[KL_K_MAX], H[KL_K_MAX];
    uint32_t act[KL_K_MAX], na = 0, grads = 1;
    uint64_t visits = 0;
    kl_grad(k, W, s, it, va, n, iw, g, H);
    for (uint32_t j = 0; j < k; j++)
        if (h[j] > 0 || kl_newton(0, g[j], H[j]) > 0)
            act[na++] = j;
    uint32_t sw = 0;
    while (sw < sweeps) {
        sw++;
        visits += na;
        double dmax = 0, hmax = 0;
        for (uint32_t a = 0; a < na; a++) {
            const uint32_t j = act[a];
            double step =
                cols ? kl_coord_cols(wt + (size_t)j * n4, n4, vd, s[j], &h[j],
                                     whd, iwd)
                     : kl_coord_rows(W, it, k, j, va, n, s[j], &h[j], wh, iw);
            dmax = fabs(step) > dmax ? fabs(step) : dmax;
        }
        for (uint32_t j = 0; j < k; j++)
            hmax = h[j] > hmax ? h[j] : hmax;
        if (cols) {
            for (uint32_t q = 0; q < n; q++) {
                wh[q] = whd[q];
                iw[q] = iwd[q];
            }
        }
        /* Recompute W h now and then: the updates accumulate rounding. */
        if (sw % 16 == 0) {
            kl_wh(k, W, it, n, h, wh);
            for (uint32_t q = 0; q < n; q++) {
                iw[q] = wh[q] > 0 ? 1.0 / wh[q] : 0;
                if (cols) {
                    whd[q] = wh[q];
                    iwd[q] = iw[q];
                }
            }
        }
        if (dmax > tol * hmax)
            continue;
        /* The active set has converged: the full gradient says whether
         * some coordinate at 0 would now take a step above the
         * tolerance. If none, this is the stopping rule of a full sweep
         * (every step at most tol max h); else those join and the sweeps
         * go on, over the coordinates away from their bound. */
        kl_grad(k, W, s, it, va, n, iw, g, H);
        grads++;
        uint32_t nb = 0;
        na = 0;
        for (uint32_t j = 0; j < k; j++) {
            if (h[j] > 0) {
                act[na++] = j;
            } else if (kl_newton(0, g[j], H[j]) > tol * hmax) {
                act[na++] = j;
                nb++;
            }
        }
        if (!nb)
            break;
    }
    /* The work in passes over the profile with every coordinate: the
     * coordinates visited, and each full gradient as one. */
    return (uint32_t)((visits + k - 1) / k) + grads;
}

/*
 * h <- h * (W^T (v / (W h))) / s, elementwise, iters times from
 * h_j = sum(v) / sum(s): the update of Lee & Seung ("Algorithms for
 * non-negative matrix factorization", NIPS 2001, Theorem 2) for h with W
 * fixed, which never increases D(v || W h). The ratio v_i / (W h)_i is
 * taken over the profile only (the rest of the items have v_i = 0 and
 * add nothing to the numerator; their W_ij are in s_j). A coordinate
 * whose s_j is 0 (a zero column) stays 0.
 */
void kl_mu(uint32_t k, const float *W, const double *s, const uint32_t *it,
           const float *va, uint32_t n, double *h, uint32_t iters, double *wh)
{
    double vsum = 0, ssum = 0, g[KL_K_MAX];
    for (uint32_t q = 0; q < n; q++)
        vsum += va[q];
    for (uint32_t j = 0; j < k; j++)
        ssum += s[j];
    for (uint32_t j = 0; j < k; j++)
        h[j] = n && ssum > 0 && s[j] > 0 ? vsum / ssum : 0;
    for (uint32_t t = 0; t < iters && n; t++) {
        kl_wh(k, W, it, n, h, wh);
        for (uint32_t j = 0; j < k; j++)
            g[j] = 0;
        for (uint32_t q = 0; q < n; q++) {
            if (!(wh[q] > 0))
                continue; /* no topic covers the item: nothing to gain */
            const float *wi = W + (size_t)it[q] * k;
            double r = va[q] / wh[q];
            for (uint32_t j = 0; j < k; j++)
                g[j] += wi[j] * r;
        }
        for (uint32_t j = 0; j < k; j++)
            h[j] = s[j] > 0 ? h[j] * g[j] / s[j] : 0;
    }
    kl_wh(k, W, it, n, h, wh);
}
