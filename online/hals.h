/* hals.h -- the dictionary update: HALS sweeps over the rows of W. */
#ifndef NMFD_ONLINE_HALS_H
#define NMFD_ONLINE_HALS_H

#include <stddef.h>
#include <stdint.h>

/* HALS on min_{W>=0} 1/2 tr(W^T W A) - tr(W^T B) + l1 sum(W) +
 * l2/2 |W|^2 for rows [0, rows) of W (row-major, rows x k float), with
 * B's true column j equal to B[:, j] * bscale[j] (rows x k double) and A
 * symmetric k x k. Columns with skip[j] set are left alone. Adds the
 * squared L2 norm of each updated column to colsq (k doubles). */
void hals_update(uint32_t k, size_t rows, float *W, const double *B,
                 const double *bscale, const double *A, const uint8_t *skip,
                 double l1, double l2, uint32_t sweeps, double *colsq);

/* Adds W^T W (rows x k float, row-major) to G (k x k double); with scale
 * (k doubles, may be NULL) first sets W[i][j] = (float)(W[i][j] * scale[j])
 * in the same pass. */
void hals_gram(uint32_t k, size_t rows, float *W, const double *scale,
               double *G);

#endif
