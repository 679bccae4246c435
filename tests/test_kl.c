/* test_kl.c -- online/kl.c: the per-user KL solve against its optimality
 * (KKT) conditions, and the exact divergence against a dense sum over
 * every item. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kl.h"
#include "rng.h"

static uint64_t seed;

static double unif(void)
{
    return (double)(rng_splitmix64(&seed) >> 11) * 0x1.0p-53;
}

/* W: M x k, non-negative, some entries zero (sparse topics). */
static float *random_W(uint32_t M, uint32_t k, double zeros)
{
    float *W = malloc((size_t)M * k * sizeof(float));
    for (size_t i = 0; i < (size_t)M * k; i++)
        W[i] = unif() < zeros ? 0.0f : (float)unif();
    return W;
}

/* A profile of n distinct items of M with values in (0.5, 5.5). */
static void random_profile(uint32_t M, uint32_t n, uint32_t *it, float *va)
{
    for (uint32_t q = 0; q < n; q++) {
        uint32_t i;
        int dup;
        do {
            i = (uint32_t)(unif() * M);
            dup = 0;
            for (uint32_t r = 0; r < q; r++)
                dup |= it[r] == i;
        } while (dup);
        it[q] = i;
        va[q] = (float)(0.5 + 5 * unif());
    }
}

/* D(v || W h) summed densely over all M items. */
static double dense_divergence(uint32_t M, uint32_t k, const float *W,
                               const uint32_t *it, const float *va, uint32_t n,
                               const double *h)
{
    double d = 0;
    for (uint32_t i = 0; i < M; i++) {
        double wh = 0, v = 0;
        for (uint32_t j = 0; j < k; j++)
            wh += W[(size_t)i * k + j] * h[j];
        for (uint32_t q = 0; q < n; q++)
            if (it[q] == i)
                v = va[q];
        d += v > 0 ? v * log(v / wh) - v + wh : wh;
    }
    return d;
}

Test(kl, divergence_is_the_dense_sum)
{
    seed = 1;
    const uint32_t M = 80, k = 6, n = 15;
    float *W = random_W(M, k, 0.3);
    double s[6], h[6], wh[30];
    uint32_t it[15];
    float va[15];
    kl_colsums(k, M, W, s);
    for (int rep = 0; rep < 20; rep++) {
        random_profile(M, n, it, va);
        for (uint32_t j = 0; j < k; j++)
            h[j] = unif() * 3;
        double d = kl_divergence(k, W, s, it, va, n, h, wh);
        double want = dense_divergence(M, k, W, it, va, n, h);
        cr_assert(fabs(d - want) <= 1e-9 * want, "%.17g vs %.17g", d, want);
    }
    free(W);
}

/* The gradient of D at h: g_j = s_j - sum_q W_qj v_q / (W h)_q. */
static void gradient(uint32_t k, const float *W, const double *s,
                     const uint32_t *it, const float *va, uint32_t n,
                     const double *h, double *g)
{
    for (uint32_t j = 0; j < k; j++)
        g[j] = s[j];
    for (uint32_t q = 0; q < n; q++) {
        const float *wi = W + (size_t)it[q] * k;
        double wh = 0;
        for (uint32_t j = 0; j < k; j++)
            wh += wi[j] * h[j];
        for (uint32_t j = 0; j < k; j++)
            g[j] -= wi[j] * va[q] / wh;
    }
}

/* KKT of min D over h >= 0: g_j = 0 where h_j > 0, g_j >= 0 where h_j = 0
 * (to a tolerance relative to s_j, the scale of g). */
static void assert_kkt(uint32_t k, const float *W, const double *s,
                       const uint32_t *it, const float *va, uint32_t n,
                       const double *h, double tol)
{
    double g[16];
    gradient(k, W, s, it, va, n, h, g);
    for (uint32_t j = 0; j < k; j++) {
        cr_assert(h[j] >= 0);
        if (h[j] > 0)
            cr_assert(fabs(g[j]) <= tol * s[j], "h_%u = %g > 0, g %g (s %g)", j,
                      h[j], g[j], s[j]);
        else
            cr_assert(g[j] >= -tol * s[j], "h_%u = 0, g %g < 0", j, g[j]);
    }
}

Test(kl, solve_meets_kkt_cold_and_warm)
{
    seed = 2;
    const uint32_t M = 120, k = 8;
    float *W = random_W(M, k, 0.5);
    double s[8], wh[80];
    uint32_t it[40];
    float va[40];
    kl_colsums(k, M, W, s);
    int zeros = 0;
    for (int rep = 0; rep < 40; rep++) {
        uint32_t n = 1 + (uint32_t)(unif() * 39);
        random_profile(M, n, it, va);
        double h[8] = {0}, h2[8];
        uint32_t sw = kl_solve(k, W, s, it, va, n, h, 5000, 1e-12, wh);
        cr_assert_leq(sw, 5000);
        assert_kkt(k, W, s, it, va, n, h, 1e-6);
        for (uint32_t j = 0; j < k; j++)
            zeros += h[j] == 0;
        /* Warm from a perturbed optimum: the same optimum (D is convex
         * in h), to the tolerance of the divergence. */
        for (uint32_t j = 0; j < k; j++)
            h2[j] = h[j] * (0.5 + unif()) + (unif() < 0.3 ? unif() : 0);
        kl_solve(k, W, s, it, va, n, h2, 5000, 1e-12, wh);
        assert_kkt(k, W, s, it, va, n, h2, 1e-6);
        double d1 = kl_divergence(k, W, s, it, va, n, h, wh);
        double d2 = kl_divergence(k, W, s, it, va, n, h2, wh);
        cr_assert(fabs(d1 - d2) <= 1e-9 * (d1 + 1), "%.17g vs %.17g", d1, d2);
    }
    cr_assert_gt(zeros, 10, "no active bound: the test misses the h = 0 case");
    free(W);
}

/* v = W h_true exactly: the solve finds D = 0. */
Test(kl, solve_recovers_an_exact_fit)
{
    seed = 3;
    const uint32_t M = 50, k = 4;
    float *W = random_W(M, k, 0.0);
    double s[4], h_true[4] = {1.5, 0, 2.0, 0.25}, h[4] = {0}, wh[100];
    uint32_t it[50];
    float va[50];
    kl_colsums(k, M, W, s);
    for (uint32_t i = 0; i < M; i++) {
        double x = 0;
        for (uint32_t j = 0; j < k; j++)
            x += W[(size_t)i * k + j] * h_true[j];
        it[i] = i;
        va[i] = (float)x;
    }
    kl_solve(k, W, s, it, va, M, h, 10000, 1e-14, wh);
    double d = kl_divergence(k, W, s, it, va, M, h, wh);
    double vsum = 0;
    for (uint32_t i = 0; i < M; i++)
        vsum += va[i];
    cr_assert_leq(d, 1e-6 * vsum, "D = %g", d);
    free(W);
}

/* Edge cases: an empty profile gives h = 0; a profile item no topic
 * covers has an infinite divergence whatever h, and the solve still
 * returns a finite h >= 0 meeting the KKT conditions of the rest. */
Test(kl, empty_and_uncovered_profiles)
{
    const uint32_t k = 3;
    float W[4 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1};
    double s[3], h[3] = {1, 2, 3}, wh[4];
    kl_colsums(k, 4, W, s);
    cr_assert_eq(kl_solve(k, W, s, NULL, NULL, 0, h, 10, 1e-9, wh), 0);
    cr_assert(h[0] == 0 && h[1] == 0 && h[2] == 0);
    uint32_t it[2] = {0, 2};
    float va[2] = {2, 1};
    kl_solve(k, W, s, it, va, 2, h, 100, 1e-12, wh);
    for (uint32_t j = 0; j < k; j++)
        cr_assert(isfinite(h[j]) && h[j] >= 0);
    cr_assert(fabs(h[0] - 2) <= 1e-9, "h_0 %g", h[0]); /* v_0 / W_00 */
    cr_assert_eq(h[1], 0);
    cr_assert(isinf(kl_divergence(k, W, s, it, va, 2, h, wh)));
}

/* kl_mu: each multiplicative update lowers D(v || W h) or leaves it (Lee
 * & Seung's theorem), run long it reaches the coordinate solve's minimum
 * (D is convex in h), and W h on return is that of the h returned. */
Test(kl, mu_never_raises_the_divergence_and_reaches_the_minimum)
{
    seed = 5;
    const uint32_t M = 60, k = 5;
    float *W = random_W(M, k, 0.3);
    double s[5], wh[120];
    uint32_t it[30];
    float va[30];
    kl_colsums(k, M, W, s);
    for (int rep = 0; rep < 20; rep++) {
        uint32_t n = 5 + (uint32_t)(unif() * 25);
        random_profile(M, n, it, va);
        double h[5], prev = INFINITY;
        for (uint32_t t = 0; t <= 40; t++) {
            kl_mu(k, W, s, it, va, n, h, t, wh);
            double d = kl_divergence(k, W, s, it, va, n, h, wh + n);
            cr_assert(d <= prev * (1 + 1e-12), "iteration %u: %.17g > %.17g", t,
                      d, prev);
            prev = d;
        }
        kl_mu(k, W, s, it, va, n, h, 3, wh);
        for (uint32_t q = 0; q < n; q++) {
            double x = 0;
            for (uint32_t j = 0; j < k; j++)
                x += W[(size_t)it[q] * k + j] * h[j];
            cr_assert(fabs(wh[q] - x) <= 1e-12 * x, "W h %g vs %g", wh[q], x);
        }
        double hm[5], hs[5] = {0};
        kl_mu(k, W, s, it, va, n, hm, 20000, wh);
        double dm = kl_divergence(k, W, s, it, va, n, hm, wh);
        kl_solve(k, W, s, it, va, n, hs, 5000, 1e-12, wh);
        double ds = kl_divergence(k, W, s, it, va, n, hs, wh);
        cr_assert(fabs(dm - ds) <= 1e-6 * (ds + 1), "MU %.12g, solve %.12g", dm,
                  ds);
    }
    free(W);
}

/* kl_mu's edges: an empty profile gives h = 0; a topic whose column is 0
 * (s_j = 0) stays at 0; an item no topic covers is left out of the
 * update (its term is infinite whatever h). */
Test(kl, mu_empty_profiles_and_zero_columns)
{
    const uint32_t k = 3;
    float W[4 * 3] = {1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0};
    double s[3], h[3] = {1, 2, 3}, wh[4];
    kl_colsums(k, 4, W, s);
    cr_assert_eq(s[2], 0);
    kl_mu(k, W, s, NULL, NULL, 0, h, 10, wh);
    cr_assert(h[0] == 0 && h[1] == 0 && h[2] == 0);
    uint32_t it[3] = {0, 2, 3};
    float va[3] = {2, 3, 1};
    kl_mu(k, W, s, it, va, 3, h, 500, wh);
    for (uint32_t j = 0; j < k; j++)
        cr_assert(isfinite(h[j]) && h[j] >= 0);
    cr_assert_eq(h[2], 0);
    cr_assert_gt(h[0], 0);
    cr_assert_gt(h[1], 0);
    cr_assert_eq(wh[2], 0); /* item 3: W's row is 0 */
    cr_assert(isinf(kl_divergence(k, W, s, it, va, 3, h, wh)));
}

/* A Newton step down that takes h_j to 0 where topic j alone covers an
 * item leaves (W h)_i = W_ij h_j - W_ij h_j, which in floating point can
 * be a positive rounding residue instead of 0: the positivity test alone
 * took that step, and the solve then stopped (its steps doubling from the
 * residue, each under the tolerance) far from the minimum. h_0 is chosen
 * so that the residue is positive; the solve, at the fold's sweeps and
 * tolerance, must still meet the KKT conditions. */
Test(kl, a_step_to_a_rounding_residue_is_not_taken)
{
    const uint32_t k = 2, M = 3;
    /* item 0: topic 0 alone; item 1: both; item 2 (not in the profile)
     * makes s_0 large, so that the Newton step from a large h_0 falls
     * below 0 and is cut to 0. */
    float W[3 * 2] = {0.1f, 0, 0.3f, 0.7f, 5.0f, 0};
    double s[2], wh[4];
    kl_colsums(k, M, W, s);
    uint32_t it[2] = {0, 1};
    float va[2] = {1, 2};
    double h0 = 0;
    for (double c = 100; c < 200 && h0 == 0; c += 0.013) {
        double p = (double)W[0] * c;
        if (fma((double)W[0], -c, p) > 0)
            h0 = c;
    }
    cr_assert_gt(h0, 0, "no warm start leaves a positive residue");
    double h[2] = {h0, 0.5};
    kl_solve(k, W, s, it, va, 2, h, 50, 1e-4, wh);
    assert_kkt(k, W, s, it, va, 2, h, 1e-3);
    cr_assert(h[0] > 1e-3, "h_0 = %g: left at the residue", h[0]);
}
