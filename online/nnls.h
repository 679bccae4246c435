/* nnls.h -- non-negative least squares on a Gram matrix. */
#ifndef NMFD_ONLINE_NNLS_H
#define NMFD_ONLINE_NNLS_H

#include <stdint.h>

/* Minimises 1/2 h^T G h - b^T h + l1 sum(h) + l2/2 |h|^2 over h >= 0 by
 * coordinate descent, from the h given (warm start). G is k x k,
 * symmetric positive semi-definite, row-major. On return gh = G h.
 * Stops after max_sweeps sweeps or when a sweep moved no coordinate by
 * more than tol * max(h). Returns the sweeps done. */
uint32_t nnls_solve(uint32_t k, const double *G, const double *b, double l1,
                    double l2, uint32_t max_sweeps, double tol, double *h,
                    double *gh);

#endif
