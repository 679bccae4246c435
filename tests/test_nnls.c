/* test_nnls.c -- the per-user NNLS solver against its optimality
 * conditions and against exhaustive active-set enumeration. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nnls.h"
#include "rng.h"

#define KM 8

static uint64_t seed_state;

static double unif(void)
{
    return (double)(rng_splitmix64(&seed_state) >> 11) * 0x1.0p-53;
}

/* G = W^T W and b = W^T v for a random non-negative W (rows x k) and v. */
static void problem(uint32_t k, uint32_t rows, double *G, double *b,
                    double *vtv)
{
    double W[64 * KM], v[64];
    for (uint32_t i = 0; i < rows; i++) {
        v[i] = unif() < 0.4 ? unif() * 3 : 0;
        for (uint32_t j = 0; j < k; j++)
            W[i * k + j] = unif() < 0.5 ? unif() : 0;
    }
    *vtv = 0;
    for (uint32_t i = 0; i < rows; i++)
        *vtv += v[i] * v[i];
    for (uint32_t j = 0; j < k; j++) {
        b[j] = 0;
        for (uint32_t i = 0; i < rows; i++)
            b[j] += W[i * k + j] * v[i];
        for (uint32_t l = 0; l < k; l++) {
            G[j * k + l] = 0;
            for (uint32_t i = 0; i < rows; i++)
                G[j * k + l] += W[i * k + j] * W[i * k + l];
        }
    }
}

static double objective(uint32_t k, const double *G, const double *b, double l1,
                        double l2, const double *h)
{
    double f = 0;
    for (uint32_t j = 0; j < k; j++) {
        double gh = 0;
        for (uint32_t l = 0; l < k; l++)
            gh += G[j * k + l] * h[l];
        f += 0.5 * h[j] * gh - b[j] * h[j] + l1 * h[j] + 0.5 * l2 * h[j] * h[j];
    }
    return f;
}

/* KKT of min f(h) s.t. h >= 0: h >= 0, grad >= -eps where h = 0,
 * |grad| <= eps where h > 0. */
static void assert_kkt(uint32_t k, const double *G, const double *b, double l1,
                       double l2, const double *h, double eps)
{
    for (uint32_t j = 0; j < k; j++) {
        double g = -b[j] + l1 + l2 * h[j];
        for (uint32_t l = 0; l < k; l++)
            g += G[j * k + l] * h[l];
        cr_assert(h[j] >= 0, "h[%u] = %g < 0", j, h[j]);
        if (h[j] > 0)
            cr_assert(fabs(g) <= eps, "grad[%u] = %g with h = %g", j, g, h[j]);
        else
            cr_assert(g >= -eps, "grad[%u] = %g at h = 0", j, g);
    }
}

/* Solves the unconstrained problem on subset mask by Gaussian elimination;
 * returns 0 if singular. */
static int subset_solve(uint32_t k, const double *G, const double *b, double l1,
                        double l2, unsigned mask, double *h)
{
    double M[KM][KM + 1];
    uint32_t idx[KM], n = 0;
    for (uint32_t j = 0; j < k; j++)
        if (mask & (1u << j))
            idx[n++] = j;
    for (uint32_t a = 0; a < n; a++) {
        for (uint32_t c = 0; c < n; c++)
            M[a][c] = G[idx[a] * k + idx[c]] + (a == c ? l2 : 0);
        M[a][n] = b[idx[a]] - l1;
    }
    for (uint32_t c = 0; c < n; c++) {
        uint32_t piv = c;
        for (uint32_t a = c + 1; a < n; a++)
            if (fabs(M[a][c]) > fabs(M[piv][c]))
                piv = a;
        if (fabs(M[piv][c]) < 1e-12)
            return 0;
        for (uint32_t x = 0; x <= n; x++) {
            double t = M[c][x];
            M[c][x] = M[piv][x];
            M[piv][x] = t;
        }
        for (uint32_t a = 0; a < n; a++) {
            if (a == c)
                continue;
            double f = M[a][c] / M[c][c];
            for (uint32_t x = c; x <= n; x++)
                M[a][x] -= f * M[c][x];
        }
    }
    memset(h, 0, k * sizeof(double));
    for (uint32_t a = 0; a < n; a++)
        h[idx[a]] = M[a][n] / M[a][a];
    return 1;
}

static double brute_force(uint32_t k, const double *G, const double *b,
                          double l1, double l2)
{
    double best = 0; /* h = 0 */
    double h[KM];
    for (unsigned mask = 1; mask < (1u << k); mask++) {
        if (!subset_solve(k, G, b, l1, l2, mask, h))
            continue;
        int ok = 1;
        for (uint32_t j = 0; j < k; j++)
            ok &= h[j] >= 0;
        if (!ok)
            continue;
        double f = objective(k, G, b, l1, l2, h);
        if (f < best)
            best = f;
    }
    return best;
}

Test(nnls, matches_exhaustive_active_sets)
{
    seed_state = 11;
    for (int trial = 0; trial < 200; trial++) {
        uint32_t k = 1 + trial % KM;
        double G[KM * KM], b[KM], h[KM], gh[KM], vtv;
        problem(k, 20 + trial % 30, G, b, &vtv);
        memset(h, 0, sizeof(h));
        nnls_solve(k, G, b, 0, 0, 100000, 1e-13, h, gh);
        double f = objective(k, G, b, 0, 0, h);
        double fb = brute_force(k, G, b, 0, 0);
        cr_assert(f <= fb + 1e-9 * (1 + fabs(fb)),
                  "trial %d: cd %.12g > best %.12g", trial, f, fb);
        assert_kkt(k, G, b, 0, 0, h, 1e-7 * (1 + vtv));
    }
}

Test(nnls, elastic_net_kkt_and_optimum)
{
    seed_state = 12;
    for (int trial = 0; trial < 100; trial++) {
        uint32_t k = 2 + trial % (KM - 1);
        double G[KM * KM], b[KM], h[KM], gh[KM], vtv;
        problem(k, 30, G, b, &vtv);
        double l1 = unif() * 0.5, l2 = unif() * 0.5;
        memset(h, 0, sizeof(h));
        nnls_solve(k, G, b, l1, l2, 100000, 1e-13, h, gh);
        assert_kkt(k, G, b, l1, l2, h, 1e-7 * (1 + vtv));
        double f = objective(k, G, b, l1, l2, h);
        double fb = brute_force(k, G, b, l1, l2);
        cr_assert(f <= fb + 1e-9 * (1 + fabs(fb)));
    }
}

Test(nnls, warm_start_reaches_the_same_optimum)
{
    seed_state = 13;
    double G[KM * KM], b[KM], h0[KM], h1[KM], gh[KM], vtv;
    problem(KM, 40, G, b, &vtv);
    memset(h0, 0, sizeof(h0));
    nnls_solve(KM, G, b, 0, 0, 100000, 1e-14, h0, gh);
    for (uint32_t j = 0; j < KM; j++)
        h1[j] = unif() * 5;
    nnls_solve(KM, G, b, 0, 0, 100000, 1e-14, h1, gh);
    cr_assert_float_eq(objective(KM, G, b, 0, 0, h0),
                       objective(KM, G, b, 0, 0, h1), 1e-9 * (1 + vtv));
}

Test(nnls, each_sweep_decreases_the_objective_and_gh_is_G_h)
{
    seed_state = 14;
    double G[KM * KM], b[KM], h[KM], gh[KM], vtv;
    problem(KM, 40, G, b, &vtv);
    for (uint32_t j = 0; j < KM; j++)
        h[j] = unif() * 3;
    double prev = objective(KM, G, b, 0, 0, h);
    for (int s = 0; s < 30; s++) {
        uint32_t done = nnls_solve(KM, G, b, 0, 0, 1, 0, h, gh);
        cr_assert_eq(done, 1);
        double f = objective(KM, G, b, 0, 0, h);
        cr_assert(f <= prev + 1e-12 * (1 + fabs(prev)));
        prev = f;
    }
    for (uint32_t j = 0; j < KM; j++) {
        double x = 0;
        for (uint32_t l = 0; l < KM; l++)
            x += G[j * KM + l] * h[l];
        cr_assert_float_eq(gh[j], x, 1e-9 * (1 + fabs(x)));
    }
}

Test(nnls, zero_rhs_gives_zero_and_stops_at_once)
{
    double G[4] = {2, 1, 1, 2}, b[2] = {0, 0}, h[2] = {0, 0}, gh[2];
    uint32_t s = nnls_solve(2, G, b, 0, 0, 50, 1e-4, h, gh);
    cr_assert_eq(s, 1);
    cr_assert(h[0] == 0 && h[1] == 0);
}

Test(nnls, dead_coordinate_stays_zero)
{
    /* Column 1 of W is zero: G[1][1] = 0. */
    double G[4] = {1, 0, 0, 0}, b[2] = {2, 0}, h[2] = {0, 7}, gh[2];
    nnls_solve(2, G, b, 0, 0, 50, 1e-12, h, gh);
    cr_assert_float_eq(h[0], 2.0, 1e-12);
    cr_assert(h[1] == 0);
}

Test(nnls, sweep_limit_is_respected)
{
    seed_state = 15;
    double G[KM * KM], b[KM], h[KM], gh[KM], vtv;
    problem(KM, 40, G, b, &vtv);
    memset(h, 0, sizeof(h));
    cr_assert_leq(nnls_solve(KM, G, b, 0, 0, 3, 0, h, gh), 3);
}

/* A warm start on the optimum's support: the face step gives the optimum
 * itself (no sweep could do better than rounding) in one step. */
Test(nnls, warm_start_on_the_support_is_solved_exactly_at_once)
{
    seed_state = 16;
    int exact = 0;
    for (int trial = 0; trial < 100; trial++) {
        uint32_t k = 2 + trial % (KM - 1);
        double G[KM * KM], b[KM], h[KM], opt[KM], gh[KM], vtv;
        problem(k, 30, G, b, &vtv);
        double l1 = trial % 2 ? unif() * 0.2 : 0, l2 = unif() * 0.2;
        memset(opt, 0, sizeof(opt));
        nnls_solve(k, G, b, l1, l2, 100000, 1e-15, opt, gh);
        uint32_t support = 0;
        for (uint32_t j = 0; j < k; j++) {
            h[j] = opt[j] > 0 ? unif() * 4 + 0.01 : 0;
            support += opt[j] > 0;
        }
        if (!support)
            continue;
        uint32_t sweeps = nnls_solve(k, G, b, l1, l2, 50, 1e-4, h, gh);
        cr_assert_eq(sweeps, 1, "trial %d: %u sweeps", trial, sweeps);
        for (uint32_t j = 0; j < k; j++)
            cr_assert(fabs(h[j] - opt[j]) <= 1e-9 * (1 + fabs(opt[j])),
                      "trial %d: h[%u] = %.15g, optimum %.15g", trial, j, h[j],
                      opt[j]);
        assert_kkt(k, G, b, l1, l2, h, 1e-9 * (1 + vtv));
        for (uint32_t j = 0; j < k; j++) {
            double x = 0;
            for (uint32_t l = 0; l < k; l++)
                x += G[j * k + l] * h[l];
            cr_assert_float_eq(gh[j], x, 1e-9 * (1 + fabs(x)));
        }
        exact++;
    }
    cr_assert_gt(exact, 50);
}

/* A warm start whose support is too large (a coordinate that is 0 at the
 * optimum) or misses one: the face step must not stop there, and the
 * sweeps reach the optimum. */
Test(nnls, wrong_support_falls_back_to_the_sweeps)
{
    seed_state = 17;
    int tried = 0;
    for (int trial = 0; trial < 200; trial++) {
        uint32_t k = 3 + trial % (KM - 2);
        double G[KM * KM], b[KM], h[KM], opt[KM], gh[KM], vtv;
        problem(k, 30, G, b, &vtv);
        memset(opt, 0, sizeof(opt));
        nnls_solve(k, G, b, 0, 0, 100000, 1e-15, opt, gh);
        uint32_t in = KM, out = KM;
        for (uint32_t j = 0; j < k; j++) {
            if (opt[j] > 0 && in == KM)
                in = j;
            if (opt[j] == 0 && out == KM)
                out = j;
        }
        if (in == KM || out == KM)
            continue;
        for (uint32_t j = 0; j < k; j++)
            h[j] = opt[j] > 0 ? opt[j] : 0;
        if (trial % 2)
            h[out] = 1; /* one too many */
        else
            h[in] = 0; /* one missing */
        nnls_solve(k, G, b, 0, 0, 100000, 1e-13, h, gh);
        assert_kkt(k, G, b, 0, 0, h, 1e-7 * (1 + vtv));
        cr_assert(objective(k, G, b, 0, 0, h) <=
                  objective(k, G, b, 0, 0, opt) + 1e-9 * (1 + vtv));
        tried++;
    }
    cr_assert_gt(tried, 50);
}
