/* bench_util.h -- what every bench program measures with: the wall clock
 * (monotonic) and the calling thread's CPU time, in milliseconds, and the
 * double comparison that sorts timings for their median and percentiles;
 * and the generator of the synthetic Zipf streams of bench_fold and
 * bench_holdout. */
#ifndef NMF_BENCH_UTIL_H
#define NMF_BENCH_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static inline double bench_wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static inline double bench_cpu_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* For qsort over doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A uniform draw in [0, 1) from the splitmix64 state *s (Steele, Lea &
 * Flood 2014), the same sequence for the same seed on every host. */
static inline double bench_unif(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* The cumulative distribution of Zipf(s) over n ranks (malloc'd). */
static inline double *bench_zipf_cdf(uint32_t n, double s)
{
    double *c = malloc(n * sizeof(double)), t = 0;
    for (uint32_t i = 0; i < n; i++)
        c[i] = (t += pow(i + 1.0, -s));
    for (uint32_t i = 0; i < n; i++)
        c[i] /= t;
    return c;
}

/* A rank drawn from the distribution c of n ranks, by bisection. */
static inline uint32_t bench_zipf_draw(uint64_t *s, const double *c, uint32_t n)
{
    double x = bench_unif(s);
    uint32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (c[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

#endif
