/* online/nnls.c -- per-user non-negative least squares.
 *
 * Solves one user's code h against the dictionary W through its Gram
 * matrix G = W^T W and b = W^T v only, so the cost is independent of the
 * item count. It owns nothing: flat arrays in, flat arrays out, no
 * allocation, and it must never read W or the profile itself.
 */
#include <stddef.h>

#include "nnls.h"
#include "nnls_impl.h"
#include "simd.h"

ONLINE_KERNEL
uint32_t nnls_solve(uint32_t k, const double *restrict G,
                    const double *restrict b, double l1, double l2,
                    uint32_t max_sweeps, double tol, double *restrict h,
                    double *restrict gh)
{
    return nnls__solve(k, G, b, l1, l2, max_sweeps, tol, h, gh);
}
