/* online/match.c -- the linear assignment problem.
 *
 * The model gives its topics stable ids: when W's columns are replaced
 * (a restart, a seed, a resampled dead column) the new columns take the
 * ids of the old ones they resemble most, as a whole, not one greedy pick
 * at a time (a greedy pick can take a column another one needed more, and
 * then force the rest into poor pairs). That is the linear assignment
 * problem on the matrix of cosine similarities; this file solves it
 * exactly, on flat arrays, with no allocation and no knowledge of the
 * model. It must stay free of any I/O.
 *
 * Problem. Given the n x n scores s, find the permutation sigma with
 *     max_sigma  sum_r s[r, sigma(r)],
 * i.e. min sum_r c[r, sigma(r)] with c = -s. Its linear programming dual is
 *     max  sum_r u_r + sum_c v_c   s.t.  u_r + v_c <= c[r, c],
 * and an assignment is optimal exactly when every reduced cost
 * c[r, c] - u_r - v_c is >= 0 and those on the assignment are 0.
 *
 * Method. The Hungarian method of Kuhn (Naval Res. Logist. Q. 2, 1955) and
 * Munkres (J. SIAM 5, 1957) in its shortest augmenting path form, the
 * augmentation phase of Jonker & Volgenant ("A shortest augmenting path
 * algorithm for dense and sparse linear assignment problems", Computing
 * 38, 1987) without their initialisation heuristics: rows are added one at
 * a time; for each, a Dijkstra search over the reduced costs (minv[c]: the
 * shortest path to column c so far) finds the cheapest path to a free
 * column, the potentials move by the path lengths so that the reduced
 * costs stay >= 0, and the path is flipped. n rows, O(n^2) each: O(n^3).
 * Ties are broken towards the lowest column, so equal scores give the
 * same answer on every machine.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "match.h"

int match_assign(uint32_t n, const double *score, uint32_t *to)
{
    /* Index 0 is the search's virtual start column (p[0] the row being
     * added); real rows and columns are 1..n. */
    double u[MATCH_N_MAX + 1], v[MATCH_N_MAX + 1], minv[MATCH_N_MAX + 1];
    uint32_t p[MATCH_N_MAX + 1], way[MATCH_N_MAX + 1];
    uint8_t used[MATCH_N_MAX + 1];

    if (n < 1 || n > MATCH_N_MAX || !score || !to)
        return -EINVAL;
    for (size_t i = 0; i < (size_t)n * n; i++)
        if (!(fabs(score[i]) <= MATCH_SCORE_MAX))
            return -EINVAL;
    for (uint32_t c = 0; c <= n; c++) {
        u[c] = v[c] = 0;
        p[c] = way[c] = 0;
    }
    for (uint32_t r = 1; r <= n; r++) {
        uint32_t c0 = 0;
        p[0] = r;
        for (uint32_t c = 0; c <= n; c++) {
            minv[c] = INFINITY;
            used[c] = 0;
        }
        do {
            used[c0] = 1;
            uint32_t r0 = p[c0], c1 = 0;
            double delta = INFINITY;
            const double *s = score + (size_t)(r0 - 1) * n;
            for (uint32_t c = 1; c <= n; c++) {
                if (used[c])
                    continue;
                double cur = -s[c - 1] - u[r0] - v[c];
                if (cur < minv[c]) {
                    minv[c] = cur;
                    way[c] = c0;
                }
                if (minv[c] < delta) {
                    delta = minv[c];
                    c1 = c;
                }
            }
            for (uint32_t c = 0; c <= n; c++) {
                if (used[c]) {
                    u[p[c]] += delta;
                    v[c] -= delta;
                } else {
                    minv[c] -= delta;
                }
            }
            c0 = c1;
        } while (p[c0] != 0);
        do {
            uint32_t c1 = way[c0];
            p[c0] = p[c1];
            c0 = c1;
        } while (c0);
    }
    for (uint32_t c = 1; c <= n; c++)
        to[p[c] - 1] = c - 1;
    return 0;
}
