/* pool.h -- size-class pools for the users' sparse profiles. */
#ifndef NMFD_ONLINE_POOL_H
#define NMFD_ONLINE_POOL_H

#include <stddef.h>
#include <stdint.h>

#define POOL_CLASSES 32 /* capacities 1, 2, 3, 4, 6, 8, 12, ..., 65536 */
#define POOL_NONE    0xffffffffu

/* Capacities grow by about 1.5 (alternately 4/3 and 3/2), so a profile
 * fills about 80% of its slab on average. */
static const uint32_t pool_caps[POOL_CLASSES] = {
    1,    2,    3,    4,    6,     8,     12,    16,    24,    32,   48,
    64,   96,   128,  192,  256,   384,   512,   768,   1024,  1536, 2048,
    3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536};

struct pool_class {
    /* Slab s of class c: pool_caps[c] item indices, then as many values
     * (float bits), contiguous, so a small profile is one cache line. */
    uint32_t *words;
    uint32_t *freel; /* free slabs, most recently freed last */
    uint32_t nslabs, cap, nfree;
};

struct pool {
    struct pool_class c[POOL_CLASSES];
    /* 0, or 1: each slab also holds one float per entry after the values
     * (pool_aux), for what a mode keeps per profile entry (model.c's KL
     * share). Set before the first slab is reserved. */
    uint32_t aux;
};

static inline uint32_t pool_cap(uint32_t c)
{
    return pool_caps[c];
}

/* Smallest class whose slabs hold n entries (n <= 65536). */
static inline uint32_t pool_class_for(uint32_t n)
{
    uint32_t c = 0;
    while (pool_caps[c] < n)
        c++;
    return c;
}

static inline uint32_t *pool_items(const struct pool *p, uint32_t c,
                                   uint32_t slab)
{
    return p->c[c].words + (size_t)slab * (2 + p->aux) * pool_caps[c];
}

static inline float *pool_vals(const struct pool *p, uint32_t c, uint32_t slab)
{
    return (float *)(void *)(p->c[c].words +
                             (size_t)slab * (2 + p->aux) * pool_caps[c] +
                             pool_caps[c]);
}

/* The slab's extra float per entry (only with aux = 1). */
static inline float *pool_aux(const struct pool *p, uint32_t c, uint32_t slab)
{
    return (float *)(void *)(p->c[c].words + (size_t)slab * 3 * pool_caps[c] +
                             2 * (size_t)pool_caps[c]);
}

void pool_free(struct pool *p);
/* Ensures the next pool_alloc in class c cannot fail: 0 or -ENOMEM. */
int pool_reserve(struct pool *p, uint32_t c);
uint32_t pool_alloc(struct pool *p, uint32_t c);
void pool_release(struct pool *p, uint32_t c, uint32_t slab);
size_t pool_bytes(const struct pool *p);

#endif
