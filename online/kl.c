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
 * (the divergence is infinite there), and W h updated in O(n) after each
 * coordinate. It converges much faster than the multiplicative updates of
 * Lee & Seung (NIPS 2001), and unlike them can set a coordinate to zero
 * and bring it back, which a warm start from the previous h needs.
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

/* Column sums of W (M rows of k): s_j = sum_i W_ij. */
void kl_colsums(uint32_t k, size_t M, const float *W, double *s)
{
    for (uint32_t j = 0; j < k; j++)
        s[j] = 0;
    for (size_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            s[j] += W[i * k + j];
}

/* (W h)_q for every profile entry q. */
static void kl_wh(uint32_t k, const float *W, const uint32_t *it, uint32_t n,
                  const double *h, double *wh)
{
    for (uint32_t q = 0; q < n; q++) {
        const float *wi = W + (size_t)it[q] * k;
        double x = 0;
        for (uint32_t j = 0; j < k; j++)
            x += wi[j] * h[j];
        wh[q] = x;
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
    /* iw = 1 / (W h), kept beside W h and renewed only where a step
     * moves W h: most coordinates of h sit at 0 and most of their steps
     * are 0, so this saves most of the divisions of the sweeps. */
    double *restrict iw = wh + n;
    for (uint32_t q = 0; q < n; q++)
        iw[q] = wh[q] > 0 ? 1.0 / wh[q] : 0; /* 0: a row of W all 0 */
    uint32_t sw = 0;
    while (sw < sweeps) {
        sw++;
        double dmax = 0, hmax = 0;
        for (uint32_t j = 0; j < k; j++) {
            double g = s[j], H = 0;
            for (uint32_t q = 0; q < n; q++) {
                double w = W[(size_t)it[q] * k + j];
                /* r / (W h)_i = v_i iw^2; w = 0 adds nothing. */
                double r = va[q] * iw[q];
                g -= w * r;
                H += w * w * r * iw[q];
            }
            double x;
            if (!(H > 0))
                x = 0; /* no profile item in topic j: g = s_j >= 0 */
            else
                x = h[j] - g / H;
            if (x < 0)
                x = 0;
            double step = x - h[j];
            /* Halve while some (W h)_i would leave the positives (an
             * item no topic covers, W_i = 0, stays at 0 whatever h). */
            for (int t = 0; t < 60 && step < 0; t++) {
                int ok = 1;
                for (uint32_t q = 0; q < n && ok; q++) {
                    double w = W[(size_t)it[q] * k + j];
                    ok = w == 0 || wh[q] + w * step > 0;
                }
                if (ok)
                    break;
                step *= 0.5;
                if (t == 59)
                    step = 0;
            }
            if (step != 0) {
                h[j] += step;
                if (h[j] < 0)
                    h[j] = 0;
                for (uint32_t q = 0; q < n; q++) {
                    double w = W[(size_t)it[q] * k + j];
                    if (w != 0) {
                        wh[q] += w * step;
                        iw[q] = 1.0 / wh[q];
                    }
                }
            }
            dmax = fabs(step) > dmax ? fabs(step) : dmax;
            hmax = h[j] > hmax ? h[j] : hmax;
        }
        if (dmax <= tol * hmax)
            break;
        /* Recompute W h now and then: the updates accumulate rounding. */
        if (sw % 16 == 0) {
            kl_wh(k, W, it, n, h, wh);
            for (uint32_t q = 0; q < n; q++)
                iw[q] = wh[q] > 0 ? 1.0 / wh[q] : 0;
        }
    }
    return sw;
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
