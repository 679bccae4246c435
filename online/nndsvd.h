/* nndsvd.h -- NNDSVDa seeding of W from a sparse non-negative matrix fed
 * column by column, in passes the caller can spread over many calls. */
#ifndef NMFD_ONLINE_NNDSVD_H
#define NMFD_ONLINE_NNDSVD_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

struct nndsvd;

/* The pass the seeding wants next. */
enum nndsvd_pass {
    NNDSVD_ITERATE, /* subspace iteration: feed every column once */
    NNDSVD_SIGNS,   /* the right singular vectors' signs: every column once */
    NNDSVD_DONE,    /* nndsvd_factor can write W */
};

/* Work state for a rows x k seed (k <= rows), iters subspace iterations,
 * the random start seeded by one draw from r. NULL when out of memory or
 * k is 0, over 256 or over rows. Holds 2 rows k doubles. */
struct nndsvd *nndsvd_new(uint32_t k, size_t rows, uint32_t iters,
                          struct rng *r);
void nndsvd_free(struct nndsvd *s);
enum nndsvd_pass nndsvd_pass(const struct nndsvd *s);
/* Feeds one column of the matrix to the current pass: n entries at rows
 * it[] (each < rows, distinct) with values va[], the column weighted by c
 * (the objective's sum_u c_u |v_u - W h_u|^2; 1 without one). */
void nndsvd_column(struct nndsvd *s, const uint32_t *it, const float *va,
                   uint32_t n, double c);
/* Ends the current pass after every column was fed: O(rows k^2). */
void nndsvd_pass_end(struct nndsvd *s);
/* Once NNDSVD_SIGNS or NNDSVD_DONE: the j-th largest singular value of
 * the (weighted) matrix, from the Rayleigh-Ritz step. */
double nndsvd_sigma(const struct nndsvd *s, uint32_t j);
/* Once NNDSVD_DONE: writes the seed into W (rows x k floats, row-major),
 * unit L2 columns, strongest singular triplet first. Rows with live[i]
 * == 0 (live may be NULL: all live) are zero; on live rows the zeros of
 * NNDSVD are filled with the mean of the matrix over the live rows and
 * the non-empty columns (the "a" of NNDSVDa). */
void nndsvd_factor(const struct nndsvd *s, const uint8_t *live, float *W);

#endif
