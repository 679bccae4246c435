/* bench_gram.c -- the Gram matrix G = W^T W of a refresh: online/'s own
 * kernel (float W, double G) against OpenBLAS (dsyrk on a double copy of
 * W, and ssyrk in float), single-threaded, with the accuracy of each.
 * This is the one k x k product of the model where BLAS might win.
 *
 *   bench_gram [k [rows]]     defaults: 16 1000000
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "hals.h"

#define REPS 5

int main(int argc, char **argv)
{
    int k = argc > 1 ? atoi(argv[1]) : 16;
    size_t rows = argc > 2 ? (size_t)atol(argv[2]) : 1000000;
    if (k < 1 || k > 256 || !rows) {
        fprintf(stderr, "usage: bench_gram [k [rows]]\n");
        return 2;
    }
    openblas_set_num_threads(1);
    float *W = malloc(rows * k * sizeof(float));
    double *Wd = malloc(rows * k * sizeof(double));
    double *G1 = calloc((size_t)k * k, sizeof(double));
    double *G2 = calloc((size_t)k * k, sizeof(double));
    float *G3 = calloc((size_t)k * k, sizeof(float));
    uint64_t x = 1;
    for (size_t i = 0; i < rows * k; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        W[i] = (x >> 40) % 7 == 0 ? (float)((x >> 33) % 1000) / 1000.0f : 0;
    }
    double t[3][REPS];
    for (int r = 0; r < REPS; r++) {
        memset(G1, 0, (size_t)k * k * sizeof(double));
        double a = bench_cpu_ms();
        hals_gram((uint32_t)k, rows, W, NULL, G1);
        t[0][r] = bench_cpu_ms() - a;
        a = bench_cpu_ms();
        for (size_t i = 0; i < rows * k; i++)
            Wd[i] = W[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, k, (int)rows, 1.0,
                    Wd, k, 0.0, G2, k);
        t[1][r] = bench_cpu_ms() - a;
        a = bench_cpu_ms();
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, (int)rows, 1.0f,
                    W, k, 0.0f, G3, k);
        t[2][r] = bench_cpu_ms() - a;
    }
    double e2 = 0, e3 = 0;
    for (int j = 0; j < k; j++) {
        for (int l = j; l < k; l++) {
            double s = fabs(G1[j * k + j]) > 0 ? fabs(G1[j * k + j]) : 1;
            e2 = fmax(e2, fabs(G1[j * k + l] - G2[j * k + l]) / s);
            e3 = fmax(e3, fabs(G1[j * k + l] - G3[j * k + l]) / s);
        }
    }
    for (int v = 0; v < 3; v++)
        qsort(t[v], REPS, sizeof(double), bench_cmp_double);
    printf("k %d rows %zu (median of %d, CPU ms)\n", k, rows, REPS);
    printf("  online hals_gram, float W -> double G: %.1f ms\n",
           t[0][REPS / 2]);
    printf("  W to double + cblas_dsyrk:             %.1f ms (max rel diff "
           "%.1e)\n",
           t[1][REPS / 2], e2);
    printf("  cblas_ssyrk, float G:                  %.1f ms (max rel diff "
           "%.1e)\n",
           t[2][REPS / 2], e3);
    free(W);
    free(Wd);
    free(G1);
    free(G2);
    free(G3);
    return 0;
}
