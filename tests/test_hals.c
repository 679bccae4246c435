/* test_hals.c -- the refresh's kernels against direct computations: the
 * Gram matrix for every shape its blocking treats differently, and one
 * HALS sweep against the column-by-column update it must equal. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hals.h"
#include "rng.h"

static uint64_t seed_state = 7;

static double unif(void)
{
    return (double)(rng_splitmix64(&seed_state) >> 11) * 0x1.0p-53;
}

static float *random_w(uint32_t k, size_t rows)
{
    float *W = malloc((rows ? rows : 1) * k * sizeof(float));
    for (size_t i = 0; i < rows * k; i++)
        W[i] = unif() < 0.3 ? 0.0f : (float)unif();
    return W;
}

/* G += W^T W of the (scaled, stored as float) W, in the plain order. */
static void gram_direct(uint32_t k, size_t rows, const float *W,
                        const double *scale, double *G)
{
    for (size_t i = 0; i < rows; i++)
        for (uint32_t j = 0; j < k; j++) {
            double a =
                scale ? (float)((double)W[i * k + j] * scale[j]) : W[i * k + j];
            for (uint32_t l = 0; l < k; l++) {
                double b = scale ? (float)((double)W[i * k + l] * scale[l])
                                 : W[i * k + l];
                G[j * k + l] += a * b;
            }
        }
}

/* Every k the kernel specialises (8, 16, 32), others padded to whole
 * vectors (1, 3, 13, 20), the band path beyond 32 (33, 40); row counts
 * around the chunk boundaries (4096 / padded k rows), with and without
 * the rescaling, starting from a non-zero G (the kernel adds). */
Test(hals, gram_equals_the_direct_sum)
{
    const uint32_t ks[] = {1, 3, 8, 13, 16, 20, 32, 33, 40};
    const size_t rowss[] = {0, 1, 5, 127, 128, 129, 256, 257, 3001};
    for (size_t a = 0; a < sizeof(ks) / sizeof(ks[0]); a++)
        for (size_t b = 0; b < sizeof(rowss) / sizeof(rowss[0]); b++)
            for (int sc = 0; sc < 2; sc++) {
                uint32_t k = ks[a];
                size_t rows = rowss[b];
                float *W = random_w(k, rows);
                float *W0 = malloc((rows ? rows : 1) * k * sizeof(float));
                memcpy(W0, W, rows * k * sizeof(float));
                double *scale = malloc(k * sizeof(double));
                double *G = malloc(k * k * sizeof(double));
                double *Gd = malloc(k * k * sizeof(double));
                for (uint32_t j = 0; j < k; j++)
                    scale[j] = 0.5 + unif();
                for (uint32_t x = 0; x < k * k; x++)
                    G[x] = Gd[x] = (double)(x % 7);
                hals_gram(k, rows, W, sc ? scale : NULL, G);
                gram_direct(k, rows, W0, sc ? scale : NULL, Gd);
                for (uint32_t x = 0; x < k * k; x++)
                    cr_assert(fabs(G[x] - Gd[x]) <= 1e-12 * (1 + fabs(Gd[x])),
                              "k %u rows %zu scale %d G[%u] %.17g vs %.17g", k,
                              rows, sc, x, G[x], Gd[x]);
                for (size_t i = 0; i < rows * k; i++) {
                    float want =
                        sc ? (float)((double)W0[i] * scale[i % k]) : W0[i];
                    cr_assert_eq(W[i], want, "k %u rows %zu W[%zu]", k, rows,
                                 i);
                }
                free(W);
                free(W0);
                free(scale);
                free(G);
                free(Gd);
            }
}

/* One HALS sweep over the rows, eight or more at a time, must equal the
 * textbook column-by-column update (Cichocki & Phan 2009):
 *     w_j <- max(0, (b_j - W a_j + A_jj w_j - l1) / (A_jj + l2)),
 * the skipped columns untouched and colsq their new squared norms. */
Test(hals, update_equals_the_column_by_column_sweep)
{
    const uint32_t ks[] = {1, 5, 16};
    const size_t rowss[] = {1, 31, 33, 100};
    for (size_t a = 0; a < 3; a++)
        for (size_t r = 0; r < 4; r++) {
            uint32_t k = ks[a];
            size_t rows = rowss[r];
            float *W = random_w(k, rows);
            double *Wd = malloc(rows * k * sizeof(double));
            double *B = malloc(rows * k * sizeof(double));
            double *A = calloc(k * k, sizeof(double));
            double *bs = malloc(k * sizeof(double));
            double *colsq = calloc(k, sizeof(double));
            uint8_t *skip = calloc(k, 1);
            /* A = H H^T of a random H: symmetric positive semi-definite. */
            for (int u = 0; u < 40; u++) {
                double h[16];
                for (uint32_t j = 0; j < k; j++)
                    h[j] = unif();
                for (uint32_t j = 0; j < k; j++)
                    for (uint32_t l = 0; l < k; l++)
                        A[j * k + l] += h[j] * h[l];
            }
            for (size_t i = 0; i < rows * k; i++) {
                B[i] = 3 * unif();
                Wd[i] = W[i];
            }
            for (uint32_t j = 0; j < k; j++)
                bs[j] = 0.5 + unif();
            if (k > 1)
                skip[1] = 1;
            const double l1 = 0.01, l2 = 0.02;
            hals_update(k, rows, W, B, bs, A, skip, l1, l2, 1, colsq);
            for (uint32_t j = 0; j < k; j++) {
                if (skip[j])
                    continue;
                double sq = 0;
                for (size_t i = 0; i < rows; i++) {
                    double wa = 0;
                    for (uint32_t l = 0; l < k; l++)
                        wa += Wd[i * k + l] * A[l * k + j];
                    double nw = (B[i * k + j] * bs[j] - l1 - wa +
                                 A[j * k + j] * Wd[i * k + j]) /
                                (A[j * k + j] + l2);
                    Wd[i * k + j] = nw > 0 ? (float)nw : 0;
                    sq += Wd[i * k + j] * Wd[i * k + j];
                }
                cr_assert(fabs(colsq[j] - sq) <= 1e-5 * (1 + sq),
                          "k %u rows %zu colsq[%u] %g vs %g", k, rows, j,
                          colsq[j], sq);
            }
            for (size_t i = 0; i < rows * k; i++)
                cr_assert(fabs(W[i] - Wd[i]) <= 1e-5 * (1 + fabs(Wd[i])),
                          "k %u rows %zu W[%zu] %g vs %g", k, rows, i, W[i],
                          Wd[i]);
            free(W);
            free(Wd);
            free(B);
            free(A);
            free(bs);
            free(colsq);
            free(skip);
        }
}
