/* test_nndsvd.c -- NNDSVDa seeding: the singular values of the subspace
 * iteration against a dense eigensolver, the seed's shape on block and
 * rank-one data, its invariants and its determinism. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nndsvd.h"
#include "rng.h"

/* A dense rows x cols matrix fed column by column, zeros skipped. */
struct dense {
    uint32_t rows, cols;
    float *v; /* cols x rows: column u at v + u * rows */
};

static void feed(struct nndsvd *s, const struct dense *d, const double *c)
{
    uint32_t it[256];
    float va[256];
    for (uint32_t u = 0; u < d->cols; u++) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < d->rows; i++) {
            float x = d->v[(size_t)u * d->rows + i];
            if (x != 0) {
                it[n] = i;
                va[n++] = x;
            }
        }
        nndsvd_column(s, it, va, n, c ? c[u] : 1.0);
    }
}

static struct nndsvd *run(const struct dense *d, uint32_t k, uint64_t seed,
                          const double *c)
{
    struct rng r;
    rng_seed(&r, seed);
    struct nndsvd *s = nndsvd_new(k, d->rows, 30, &r);
    cr_assert_not_null(s);
    int passes = 0;
    while (nndsvd_pass(s) != NNDSVD_DONE) {
        feed(s, d, c);
        nndsvd_pass_end(s);
        passes++;
    }
    cr_assert_eq(passes, 30 + 1 + 1);
    return s;
}

/* Eigenvalues of a symmetric n x n matrix (destroyed), descending, by a
 * plain cyclic Jacobi written independently of the one under test. */
static void ref_eigen(uint32_t n, double *a, double *out)
{
    for (int sweep = 0; sweep < 200; sweep++) {
        double off = 0;
        for (uint32_t p = 0; p < n; p++)
            for (uint32_t q = 0; q < n; q++)
                if (p != q)
                    off += a[p * n + q] * a[p * n + q];
        if (off < 1e-26)
            break;
        for (uint32_t p = 0; p + 1 < n; p++)
            for (uint32_t q = p + 1; q < n; q++) {
                if (fabs(a[p * n + q]) < 1e-300)
                    continue;
                double phi =
                    0.5 * atan2(2 * a[p * n + q], a[q * n + q] - a[p * n + p]);
                double c = cos(phi), s = sin(phi);
                for (uint32_t r = 0; r < n; r++) {
                    double x = a[r * n + p], y = a[r * n + q];
                    a[r * n + p] = c * x - s * y;
                    a[r * n + q] = s * x + c * y;
                }
                for (uint32_t r = 0; r < n; r++) {
                    double x = a[p * n + r], y = a[q * n + r];
                    a[p * n + r] = c * x - s * y;
                    a[q * n + r] = s * x + c * y;
                }
            }
    }
    for (uint32_t i = 0; i < n; i++)
        out[i] = a[i * n + i];
    for (uint32_t i = 1; i < n; i++)
        for (uint32_t j = i; j > 0 && out[j - 1] < out[j]; j--) {
            double t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
}

static double unif(uint64_t *x)
{
    return (double)(rng_splitmix64(x) >> 11) * 0x1.0p-53;
}

Test(nndsvd, singular_values_match_a_dense_eigensolver)
{
    /* A sparse non-negative 40 x 120 matrix with decaying structure, the
     * columns weighted as the model weights users by recency. */
    struct dense d = {40, 120, calloc(40 * 120, sizeof(float))};
    double c[120];
    uint64_t x = 7;
    for (uint32_t u = 0; u < d.cols; u++) {
        c[u] = 0.25 + unif(&x);
        for (uint32_t i = 0; i < d.rows; i++)
            if (unif(&x) < 0.3)
                d.v[u * d.rows + i] = (float)(unif(&x) * (1 + i % 5));
    }
    const uint32_t k = 6;
    struct nndsvd *s = run(&d, k, 3, c);
    double *a = calloc(40 * 40, sizeof(double)), ev[40];
    for (uint32_t u = 0; u < d.cols; u++)
        for (uint32_t i = 0; i < d.rows; i++)
            for (uint32_t l = 0; l < d.rows; l++)
                a[i * 40 + l] +=
                    c[u] * d.v[u * d.rows + i] * (double)d.v[u * d.rows + l];
    ref_eigen(40, a, ev);
    /* Subspace iteration converges as (sigma_{k+1} / sigma_j)^(2 iters):
     * the leading values to working precision, the last ones less. */
    for (uint32_t j = 0; j < k; j++) {
        double ref = sqrt(ev[j]), tol = (j < 3 ? 1e-9 : 1e-3) * ref;
        cr_assert_float_eq(nndsvd_sigma(s, j), ref, tol,
                           "sigma %u: %.12g vs %.12g", j, nndsvd_sigma(s, j),
                           ref);
    }
    cr_assert_eq(nndsvd_sigma(s, k), 0);
    nndsvd_free(s);
    free(a);
    free(d.v);
}

/* As many rows as columns (10 items at k = 10): Q spans everything, so one
 * product and its Rayleigh-Ritz are exact and no further pass is made. */
Test(nndsvd, a_full_basis_is_exact_in_one_pass)
{
    const uint32_t n = 10;
    struct dense d = {n, 80, calloc(n * 80, sizeof(float))};
    uint64_t x = 5;
    for (uint32_t u = 0; u < d.cols; u++)
        for (uint32_t i = 0; i < n; i++)
            if (unif(&x) < 0.4)
                d.v[u * n + i] = (float)(unif(&x) * (1 + i % 3));
    struct rng r;
    rng_seed(&r, 9);
    struct nndsvd *s = nndsvd_new(n, n, 30, &r);
    cr_assert_not_null(s);
    int passes = 0;
    while (nndsvd_pass(s) != NNDSVD_DONE) {
        feed(s, &d, NULL);
        nndsvd_pass_end(s);
        passes++;
    }
    cr_assert_eq(passes, 2); /* the product, then the signs */
    double a[10 * 10] = {0}, ev[10];
    for (uint32_t u = 0; u < d.cols; u++)
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t l = 0; l < n; l++)
                a[i * n + l] += d.v[u * n + i] * (double)d.v[u * n + l];
    ref_eigen(n, a, ev);
    for (uint32_t j = 0; j < n; j++)
        cr_assert_float_eq(nndsvd_sigma(s, j), sqrt(ev[j]),
                           1e-9 * sqrt(ev[0]), "sigma %u: %.12g vs %.12g", j,
                           nndsvd_sigma(s, j), sqrt(ev[j]));
    nndsvd_free(s);
    free(d.v);
}

Test(nndsvd, block_data_gives_one_column_per_block)
{
    /* Four disjoint bundles of 10 items, each bought by its own users in
     * proportions of its own (a rank-one block), with different weights
     * so the singular values are distinct. Row 45 is forgotten. */
    const uint32_t k = 4, rows = 46;
    struct dense d = {rows, 200, calloc(46 * 200, sizeof(float))};
    uint64_t x = 11;
    for (uint32_t u = 0; u < d.cols; u++) {
        uint32_t b = u % k;
        double y = 0.5 + unif(&x);
        for (uint32_t i = 0; i < 10; i++)
            d.v[u * rows + b * 10 + i] =
                (float)((1 + b) * y * (1 + 0.1 * ((i * (b + 3)) % 7)));
    }
    uint8_t live[46];
    memset(live, 1, sizeof(live));
    live[45] = 0;
    struct nndsvd *s = run(&d, k, 5, NULL);
    float W[46 * 4];
    nndsvd_factor(s, live, W);
    int seen[4] = {0};
    for (uint32_t j = 0; j < k; j++) {
        double sq = 0;
        float low = INFINITY;
        for (uint32_t i = 0; i < rows; i++) {
            float w = W[i * k + j];
            cr_assert(w >= 0 && isfinite(w));
            sq += (double)w * w;
            if (live[i])
                low = w < low ? w : low;
        }
        cr_assert_float_eq(sq, 1.0, 1e-5, "column %u norm^2 %g", j, sq);
        cr_assert(W[45 * k + j] == 0, "a forgotten row has weight");
        cr_assert_gt(low, 0, "NNDSVDa leaves no zero on live rows");
        /* One bundle's rows hold the column's ten largest entries; every
         * other live row holds the same fill. */
        uint32_t best = 0;
        for (uint32_t i = 1; i < 40; i++)
            if (W[i * k + j] > W[best * k + j])
                best = i;
        best /= 10;
        float fill = W[(best == 0 ? 10 : 0) * k + j];
        for (uint32_t i = 0; i < 45; i++) {
            if (i / 10 == best)
                cr_assert_gt(W[i * k + j], fill, "column %u", j);
            else
                cr_assert(W[i * k + j] == fill, "column %u row %u", j, i);
        }
        seen[best]++;
        /* Strongest triplet first: bundle 3 has the largest weights. */
        if (j == 0)
            cr_assert_eq(best, 3);
    }
    for (uint32_t b = 0; b < k; b++)
        cr_assert_eq(seen[b], 1, "bundle %u in %d columns", b, seen[b]);
    nndsvd_free(s);
    free(d.v);
}

Test(nndsvd, rank_one_data_gives_its_left_vector)
{
    struct dense d = {20, 30, calloc(20 * 30, sizeof(float))};
    double xv[20], nx = 0;
    for (uint32_t i = 0; i < 20; i++) {
        xv[i] = 1 + i;
        nx += xv[i] * xv[i];
    }
    for (uint32_t u = 0; u < 30; u++)
        for (uint32_t i = 0; i < 20; i++)
            d.v[u * 20 + i] = (float)(xv[i] * (1 + u % 3));
    struct nndsvd *s = run(&d, 2, 1, NULL);
    float W[40];
    nndsvd_factor(s, NULL, W);
    double dot = 0;
    for (uint32_t i = 0; i < 20; i++)
        dot += W[i * 2] * xv[i];
    cr_assert_float_eq(dot / sqrt(nx), 1.0, 1e-6);
    cr_assert_lt(nndsvd_sigma(s, 1), 1e-3 * nndsvd_sigma(s, 0));
    /* The second column (no structure left) is finite and unit. */
    double sq = 0;
    for (uint32_t i = 0; i < 20; i++)
        sq += (double)W[i * 2 + 1] * W[i * 2 + 1];
    cr_assert_float_eq(sq, 1.0, 1e-5);
    nndsvd_free(s);
    free(d.v);
}

Test(nndsvd, same_input_same_bits_and_refused_shapes)
{
    struct dense d = {12, 25, calloc(12 * 25, sizeof(float))};
    uint64_t x = 3;
    for (uint32_t q = 0; q < 12 * 25; q++)
        if (unif(&x) < 0.4)
            d.v[q] = (float)unif(&x);
    struct nndsvd *a = run(&d, 3, 9, NULL), *b = run(&d, 3, 9, NULL);
    float wa[36], wb[36];
    nndsvd_factor(a, NULL, wa);
    nndsvd_factor(b, NULL, wb);
    cr_assert(!memcmp(wa, wb, sizeof(wa)));
    nndsvd_free(a);
    nndsvd_free(b);
    struct rng r;
    rng_seed(&r, 1);
    cr_assert_null(nndsvd_new(0, 10, 5, &r));
    cr_assert_null(nndsvd_new(11, 10, 5, &r));
    cr_assert_null(nndsvd_new(257, 1000, 5, &r));
    nndsvd_free(NULL);
    free(d.v);
}
