/* bench_util.h -- what every bench program measures with: the wall clock
 * (monotonic) and the calling thread's CPU time, in milliseconds, and the
 * double comparison that sorts timings for their median and percentiles. */
#ifndef NMF_BENCH_UTIL_H
#define NMF_BENCH_UTIL_H

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

#endif
