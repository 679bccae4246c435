/* match.h -- the linear assignment problem, for matching topics. */
#ifndef NMFD_ONLINE_MATCH_H
#define NMFD_ONLINE_MATCH_H

#include <stddef.h>
#include <stdint.h>

#define MATCH_N_MAX 256
/* Scores beyond this magnitude (or NaN) are refused: the potentials add
 * and subtract n of them and must stay finite. */
#define MATCH_SCORE_MAX 1e100

/* The assignment of n rows to n columns (1 <= n <= MATCH_N_MAX) that
 * maximises sum_r score[r * n + to[r]]: to[r] is row r's column. Returns
 * 0, or -EINVAL (n out of range, a score NaN or beyond
 * MATCH_SCORE_MAX) with to unchanged.
 * O(n^3) time, no allocation. */
int match_assign(uint32_t n, const double *score, uint32_t *to);

#endif
