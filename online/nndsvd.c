/* online/nndsvd.c -- NNDSVDa: a non-negative W from the leading singular
 * vectors of the data.
 *
 * Seeds the k columns of W (items x k) from the data matrix V (items x
 * users, non-negative, sparse), which the caller streams column by column
 * in a few passes, so that a large model can spread the work over many
 * short calls. It owns its work arrays (two items x k double blocks) and a
 * generator seeded from one draw of the caller's; it must never read the
 * model or allocate after nndsvd_new.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nndsvd.h"

#define NNDSVD_K_MAX 256
/* Jacobi sweeps on the k x k Rayleigh quotient; 6-10 are typical. */
#define NNDSVD_JACOBI_SWEEPS 100

struct nndsvd {
    uint32_t k, iters, done; /* ITERATE passes wanted / done */
    size_t rows;
    enum nndsvd_pass pass;
    double *Q; /* rows x k: orthonormal basis, then the left vectors */
    double *Z; /* rows x k: V V^T Q, accumulated over the columns */
    struct rng rng;
    double lam[NNDSVD_K_MAX]; /* eigenvalues of Q^T V V^T Q, desc */
    double yp[NNDSVD_K_MAX];  /* |y+|^2 of each right vector */
    double yn[NNDSVD_K_MAX];  /* |y-|^2 */
    double sum;               /* sum of the weighted entries */
    uint64_t ncols;           /* non-empty columns seen */
};

/* Gram-Schmidt, each column twice ("twice is enough": Giraud, Langou &
 * Rozloznik 2005), so that Q stays orthonormal to working precision even
 * when Z is close to rank-deficient; a column with nothing left after the
 * projections is redrawn at random and orthogonalised again. */
static void nndsvd_orth(struct nndsvd *s, double *Q)
{
    const uint32_t k = s->k;
    const size_t rows = s->rows;
    for (uint32_t j = 0; j < k; j++) {
        for (int attempt = 0; attempt < 3; attempt++) {
            double n0 = 0, n = 0;
            for (size_t i = 0; i < rows; i++)
                n0 += Q[i * k + j] * Q[i * k + j];
            for (int twice = 0; twice < 2; twice++) {
                for (uint32_t l = 0; l < j; l++) {
                    double d = 0;
                    for (size_t i = 0; i < rows; i++)
                        d += Q[i * k + j] * Q[i * k + l];
                    for (size_t i = 0; i < rows; i++)
                        Q[i * k + j] -= d * Q[i * k + l];
                }
            }
            for (size_t i = 0; i < rows; i++)
                n += Q[i * k + j] * Q[i * k + j];
            if (n > 1e-24 * n0 && n > 0) {
                double inv = 1.0 / sqrt(n);
                for (size_t i = 0; i < rows; i++)
                    Q[i * k + j] *= inv;
                break;
            }
            for (size_t i = 0; i < rows; i++)
                Q[i * k + j] = rng_uniform(&s->rng) - 0.5;
        }
    }
}

struct nndsvd *nndsvd_new(uint32_t k, size_t rows, uint32_t iters,
                          struct rng *r)
{
    if (!k || k > NNDSVD_K_MAX || rows < k)
        return NULL;
    struct nndsvd *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->k = k;
    s->rows = rows;
    /* With as many rows as columns, Q spans the whole space: the
     * Rayleigh-Ritz of the first product is already exact, and further
     * products only add rounding (a data set of 10 items at k = 10 spent
     * a fifth of its fit on 30 of them). */
    s->iters = rows == k ? 0 : iters;
    s->Q = malloc(rows * k * sizeof(double));
    s->Z = calloc(rows * k, sizeof(double));
    if (!s->Q || !s->Z) {
        nndsvd_free(s);
        return NULL;
    }
    rng_seed(&s->rng, rng_next(r));
    for (size_t i = 0; i < rows * k; i++)
        s->Q[i] = rng_uniform(&s->rng) - 0.5;
    nndsvd_orth(s, s->Q);
    s->pass = NNDSVD_ITERATE;
    return s;
}

void nndsvd_free(struct nndsvd *s)
{
    if (!s)
        return;
    free(s->Q);
    free(s->Z);
    free(s);
}

enum nndsvd_pass nndsvd_pass(const struct nndsvd *s)
{
    return s->pass;
}

/* One column v (weight c) of the product: Z += c v (v^T Q) in the
 * iteration; y = sqrt(c) v^T X and the signs' sums in the second pass. */
void nndsvd_column(struct nndsvd *s, const uint32_t *it, const float *va,
                   uint32_t n, double c)
{
    const uint32_t k = s->k;
    double y[NNDSVD_K_MAX];
    if (!n || !(c > 0) || s->pass == NNDSVD_DONE)
        return;
    for (uint32_t j = 0; j < k; j++)
        y[j] = 0;
    for (uint32_t q = 0; q < n; q++) {
        const double *restrict qi = s->Q + (size_t)it[q] * k;
        double v = va[q];
        for (uint32_t j = 0; j < k; j++)
            y[j] += v * qi[j];
    }
    if (s->pass == NNDSVD_ITERATE) {
        for (uint32_t j = 0; j < k; j++)
            y[j] *= c;
        for (uint32_t q = 0; q < n; q++) {
            double *restrict zi = s->Z + (size_t)it[q] * k;
            double v = va[q];
            for (uint32_t j = 0; j < k; j++)
                zi[j] += v * y[j];
        }
        return;
    }
    double sc = sqrt(c), vs = 0;
    for (uint32_t j = 0; j < k; j++) {
        double x = sc * y[j];
        if (x > 0)
            s->yp[j] += x * x;
        else
            s->yn[j] += x * x;
    }
    for (uint32_t q = 0; q < n; q++)
        vs += va[q];
    s->sum += sc * vs;
    s->ncols++;
}

/* Eigen-decomposition of the symmetric k x k matrix T by cyclic Jacobi
 * rotations (Golub & Van Loan, Matrix Computations, 4th ed., 8.5): T is
 * overwritten by a diagonal matrix of eigenvalues, E (k x k, row-major)
 * receives the eigenvectors as columns. */
static void nndsvd_jacobi(uint32_t k, double *T, double *E)
{
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t b = 0; b < k; b++)
            E[a * k + b] = a == b;
    double norm = 0;
    for (size_t i = 0; i < (size_t)k * k; i++)
        norm += T[i] * T[i];
    for (int sweep = 0; sweep < NNDSVD_JACOBI_SWEEPS; sweep++) {
        double off = 0;
        for (uint32_t p = 0; p < k; p++)
            for (uint32_t q = p + 1; q < k; q++)
                off += T[p * k + q] * T[p * k + q];
        if (!(off > 1e-30 * norm))
            break;
        for (uint32_t p = 0; p < k; p++) {
            for (uint32_t q = p + 1; q < k; q++) {
                double apq = T[p * k + q];
                if (apq == 0)
                    continue;
                double theta = (T[q * k + q] - T[p * k + p]) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) /
                           (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (uint32_t r = 0; r < k; r++) {
                    double x = T[r * k + p], y = T[r * k + q];
                    T[r * k + p] = c * x - s * y;
                    T[r * k + q] = s * x + c * y;
                }
                for (uint32_t r = 0; r < k; r++) {
                    double x = T[p * k + r], y = T[q * k + r];
                    T[p * k + r] = c * x - s * y;
                    T[q * k + r] = s * x + c * y;
                }
                for (uint32_t r = 0; r < k; r++) {
                    double x = E[r * k + p], y = E[r * k + q];
                    E[r * k + p] = c * x - s * y;
                    E[r * k + q] = s * x + c * y;
                }
            }
        }
    }
}

/* Rayleigh-Ritz: with Q orthonormal and Z = V V^T Q, the eigenpairs
 * (lambda, e) of T = Q^T Z give the left singular vectors x = Q e of V
 * and its singular values sqrt(lambda), strongest first (ties by index).
 * The vectors replace Q. */
static int nndsvd_ritz(struct nndsvd *s)
{
    const uint32_t k = s->k;
    const size_t rows = s->rows, kk = (size_t)k * k;
    double *T = calloc(kk, sizeof(double)), *E = malloc(kk * sizeof(double));
    uint32_t ord[NNDSVD_K_MAX];
    if (!T || !E) {
        free(T);
        free(E);
        return -1;
    }
    for (size_t i = 0; i < rows; i++)
        for (uint32_t a = 0; a < k; a++)
            for (uint32_t b = 0; b < k; b++)
                T[a * k + b] += s->Q[i * k + a] * s->Z[i * k + b];
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t b = a + 1; b < k; b++)
            T[a * k + b] = T[b * k + a] = 0.5 * (T[a * k + b] + T[b * k + a]);
    nndsvd_jacobi(k, T, E);
    for (uint32_t j = 0; j < k; j++)
        ord[j] = j;
    for (uint32_t a = 1; a < k; a++) {
        uint32_t x = ord[a], b = a;
        for (; b > 0 && T[ord[b - 1] * k + ord[b - 1]] < T[x * k + x]; b--)
            ord[b] = ord[b - 1];
        ord[b] = x;
    }
    for (uint32_t j = 0; j < k; j++)
        s->lam[j] = T[ord[j] * k + ord[j]];
    for (size_t i = 0; i < rows; i++) {
        double *zi = s->Z + i * k;
        const double *qi = s->Q + i * k;
        for (uint32_t j = 0; j < k; j++) {
            double x = 0;
            for (uint32_t a = 0; a < k; a++)
                x += qi[a] * E[a * k + ord[j]];
            zi[j] = x;
        }
    }
    double *X = s->Z;
    s->Z = s->Q;
    s->Q = X;
    free(T);
    free(E);
    return 0;
}

void nndsvd_pass_end(struct nndsvd *s)
{
    if (s->pass == NNDSVD_SIGNS) {
        s->pass = NNDSVD_DONE;
        return;
    }
    if (s->pass != NNDSVD_ITERATE)
        return;
    /* iters orthonormalised products, then one for Rayleigh-Ritz. */
    if (++s->done <= s->iters) {
        double *t = s->Q;
        s->Q = s->Z;
        s->Z = t;
        nndsvd_orth(s, s->Q);
        memset(s->Z, 0, s->rows * s->k * sizeof(double));
        return;
    }
    if (nndsvd_ritz(s)) {
        /* No memory for the k x k work: the basis itself, unsorted. */
        for (uint32_t j = 0; j < s->k; j++)
            s->lam[j] = 1;
    }
    s->pass = NNDSVD_SIGNS;
}

double nndsvd_sigma(const struct nndsvd *s, uint32_t j)
{
    if (j >= s->k || s->pass == NNDSVD_ITERATE)
        return 0;
    return s->lam[j] > 0 ? sqrt(s->lam[j]) : 0;
}

/*
 * NNDSVDa (Boutsidis & Gallopoulos, "SVD based initialization: a head
 * start for nonnegative matrix factorization", Pattern Recognition 41,
 * 2008; the "a" variant fills zeros with the mean, as scikit-learn's
 * init='nndsvda'). With V ~ sum_j sigma_j x_j y_j^T the leading singular
 * triplets (computed by subspace iteration on V V^T, Rutishauser 1970 /
 * Halko, Martinsson & Tropp 2011, then Rayleigh-Ritz), each signed rank-one
 * term is replaced by its dominant non-negative part: with x+, x- (y+, y-)
 * the positive and negative parts,
 *     m+ = |x+| |y+|,  m- = |x-| |y-|,
 *     w_j = sqrt(sigma_j m+) x+ / |x+|   if m+ >= m-,
 *           sqrt(sigma_j m-) x- / |x-|   otherwise,
 * (for j = 1, x_1 >= 0 up to sign by Perron-Frobenius: w_1 = sigma_1^1/2
 * |x_1|), then zero entries become mean(V), and each column is scaled to
 * unit norm, the model's convention. The y are only needed through
 * |y+|, |y-|, accumulated in the second pass as y = V^T x = sigma y_unit.
 */
void nndsvd_factor(const struct nndsvd *s, const uint8_t *live, float *W)
{
    const uint32_t k = s->k;
    const size_t rows = s->rows;
    size_t nlive = 0;
    for (size_t i = 0; i < rows; i++)
        nlive += !live || live[i];
    double avg = nlive && s->ncols ? s->sum / ((double)nlive * s->ncols) : 0;
    for (uint32_t j = 0; j < k; j++) {
        double sig = s->lam[j] > 0 ? sqrt(s->lam[j]) : 0;
        /* Entries that are zero in exact arithmetic come out of the
         * iteration as rounding noise: below 1e-9 of the largest, they
         * count as zero (and get the fill). */
        double xp = 0, xn = 0, xmax = 0;
        for (size_t i = 0; i < rows; i++)
            xmax = fabs(s->Q[i * k + j]) > xmax ? fabs(s->Q[i * k + j]) : xmax;
        const double eps = 1e-9 * xmax;
        for (size_t i = 0; i < rows; i++) {
            double x = s->Q[i * k + j];
            if (x > eps)
                xp += x * x;
            else if (x < -eps)
                xn += x * x;
        }
        xp = sqrt(xp);
        xn = sqrt(xn);
        double yp = sig > 0 ? sqrt(s->yp[j]) / sig : 0;
        double yn = sig > 0 ? sqrt(s->yn[j]) / sig : 0;
        double mp = xp * yp, mn = xn * yn;
        int pos = mp >= mn;
        double nx = pos ? xp : xn, scale = sqrt(sig * (pos ? mp : mn));
        double sq = 0;
        for (size_t i = 0; i < rows; i++) {
            double w = 0;
            if (!live || live[i]) {
                double x = s->Q[i * k + j];
                x = pos ? (x > eps ? x : 0) : (x < -eps ? -x : 0);
                w = nx > 0 ? scale * x / nx : 0;
                if (w == 0)
                    w = avg;
            }
            W[i * k + j] = (float)w;
            sq += (double)W[i * k + j] * W[i * k + j];
        }
        double inv = sq > 0 ? 1.0 / sqrt(sq) : 0;
        for (size_t i = 0; i < rows; i++)
            W[i * k + j] = (float)(W[i * k + j] * inv);
    }
}
