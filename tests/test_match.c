/* test_match.c -- the linear assignment: the best permutation against
 * brute force on small n, ties, the largest n, refused input. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "match.h"
#include "rng.h"

static double total(uint32_t n, const double *s, const uint32_t *to)
{
    double t = 0;
    for (uint32_t r = 0; r < n; r++)
        t += s[(size_t)r * n + to[r]];
    return t;
}

static int is_permutation(uint32_t n, const uint32_t *to)
{
    uint8_t seen[MATCH_N_MAX] = {0};
    for (uint32_t r = 0; r < n; r++) {
        if (to[r] >= n || seen[to[r]])
            return 0;
        seen[to[r]] = 1;
    }
    return 1;
}

/* The best total over all n! permutations (Heap's algorithm). */
static double brute_best(uint32_t n, const double *s)
{
    uint32_t p[8], c[8] = {0};
    for (uint32_t i = 0; i < n; i++)
        p[i] = i;
    double best = total(n, s, p);
    for (uint32_t i = 1; i < n;) {
        if (c[i] < i) {
            uint32_t j = i % 2 ? c[i] : 0, t = p[j];
            p[j] = p[i];
            p[i] = t;
            double x = total(n, s, p);
            best = x > best ? x : best;
            c[i]++;
            i = 1;
        } else {
            c[i++] = 0;
        }
    }
    return best;
}

Test(match, best_assignment_equals_brute_force)
{
    struct rng r;
    rng_seed(&r, 7);
    double s[64];
    uint32_t to[8];
    for (uint32_t n = 1; n <= 8; n++) {
        for (int trial = 0; trial < 200; trial++) {
            /* Cosine-like scores in [0, 1]; every fourth trial coarse
             * (many ties), every fifth with negative entries. */
            for (uint32_t i = 0; i < n * n; i++) {
                double x = rng_uniform(&r);
                if (trial % 4 == 0)
                    x = floor(x * 3) / 3;
                if (trial % 5 == 0)
                    x = 2 * x - 1;
                s[i] = x;
            }
            cr_assert_eq(match_assign(n, s, to), 0);
            cr_assert(is_permutation(n, to), "n=%u trial %d", n, trial);
            double want = brute_best(n, s), got = total(n, s, to);
            cr_assert(fabs(got - want) <= 1e-12 * n,
                      "n=%u trial %d: %.17g < %.17g", n, trial, got, want);
        }
    }
}

/* The case a greedy pick gets wrong: row 0's best column is the only
 * good one for row 1 too. */
Test(match, beats_greedy)
{
    const double s[4] = {0.9, 0.8, 0.85, 0.1};
    uint32_t to[2];
    cr_assert_eq(match_assign(2, s, to), 0);
    cr_assert_eq(to[0], 1);
    cr_assert_eq(to[1], 0);
}

/* A permuted identity of the largest size comes back exactly, and equal
 * scores give the lowest-column answer: the identity. */
Test(match, largest_n_and_ties)
{
    static double s[MATCH_N_MAX * MATCH_N_MAX];
    static uint32_t perm[MATCH_N_MAX], to[MATCH_N_MAX];
    const uint32_t n = MATCH_N_MAX;
    struct rng r;
    rng_seed(&r, 3);
    for (uint32_t i = 0; i < n; i++)
        perm[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)rng_below(&r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (uint32_t a = 0; a < n; a++)
        for (uint32_t b = 0; b < n; b++)
            s[(size_t)a * n + b] = b == perm[a] ? 0.95 + 0.05 * rng_uniform(&r)
                                                : 0.9 * rng_uniform(&r);
    cr_assert_eq(match_assign(n, s, to), 0);
    for (uint32_t a = 0; a < n; a++)
        cr_assert_eq(to[a], perm[a], "row %u", a);

    for (size_t i = 0; i < (size_t)n * n; i++)
        s[i] = 0.5;
    cr_assert_eq(match_assign(n, s, to), 0);
    cr_assert(is_permutation(n, to));
    for (uint32_t a = 0; a < 5; a++) {
        const double e[25] = {0};
        cr_assert_eq(match_assign(a + 1, e, to), 0);
        for (uint32_t b = 0; b <= a; b++)
            cr_assert_eq(to[b], b);
    }
}

Test(match, refuses_bad_input)
{
    double s[4] = {1, 0, 0, 1};
    uint32_t to[4] = {9, 9, 9, 9};
    cr_assert_eq(match_assign(0, s, to), -EINVAL);
    cr_assert_eq(match_assign(MATCH_N_MAX + 1, s, to), -EINVAL);
    cr_assert_eq(match_assign(2, NULL, to), -EINVAL);
    cr_assert_eq(match_assign(2, s, NULL), -EINVAL);
    s[3] = NAN;
    cr_assert_eq(match_assign(2, s, to), -EINVAL);
    s[3] = INFINITY;
    cr_assert_eq(match_assign(2, s, to), -EINVAL);
    s[3] = -2e100;
    cr_assert_eq(match_assign(2, s, to), -EINVAL);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(to[i], 9, "to changed on refusal");
}
