/* kl.h -- one user's factor under the generalised Kullback-Leibler
 * divergence (kl.c): the solve and the exact divergence. W is row-major,
 * rows of k floats, indexed by the profile's items; s its column sums. */
#ifndef NMFD_ONLINE_KL_H
#define NMFD_ONLINE_KL_H

#include <stddef.h>
#include <stdint.h>

/* s_j = sum_i W_ij over M rows. */
void kl_colsums(uint32_t k, size_t M, const float *W, double *s);
/* D(v || W h) over every item, exactly: the profile's terms plus s^T h
 * for the rest. wh: n doubles of scratch. INFINITY when some profile
 * entry has (W h)_i = 0. */
double kl_divergence(uint32_t k, const float *W, const double *s,
                     const uint32_t *it, const float *va, uint32_t n,
                     const double *h, double *wh);
/* h = argmin_{h >= 0} D(v || W h), warm-started from h (k doubles), at
 * most sweeps passes over the active coordinates, stopping when the
 * largest change is at most tol times the largest h and no coordinate at
 * 0 would move by more (by the full gradient). wh: 2n doubles of scratch,
 * W h in the first n on return. Returns its work in passes over the
 * profile with every coordinate (the active set's sweeps count the
 * coordinates they visit; a full gradient counts as one). k <= KL_K_MAX. */
uint32_t kl_solve(uint32_t k, const float *W, const double *s,
                  const uint32_t *it, const float *va, uint32_t n, double *h,
                  uint32_t sweeps, double tol, double *wh);
/* The largest k kl_solve and kl_mu take (model.h's MODEL_K_MAX; model_restart.c
 * checks it). */
#define KL_K_MAX 256
/* h from h_j = sum(v) / sum(s) by iters multiplicative updates of Lee &
 * Seung; W h over the profile in wh (n doubles) on return. */
void kl_mu(uint32_t k, const float *W, const double *s, const uint32_t *it,
           const float *va, uint32_t n, double *h, uint32_t iters, double *wh);

#endif
