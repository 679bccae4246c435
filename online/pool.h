/* pool.h -- size-class pools for the users' sparse profiles. */
#ifndef NMFD_ONLINE_POOL_H
#define NMFD_ONLINE_POOL_H

#include <stddef.h>
#include <stdint.h>

#define POOL_CLASSES 17 /* capacities 1, 2, 4, ..., 65536 */
#define POOL_NONE    0xffffffffu

struct pool_class {
    /* Slab s of class c: 2^c item indices, then 2^c values (as float
     * bits), contiguous, so a small profile is one cache line. */
    uint32_t *words;
    uint32_t *freel; /* free slabs, most recently freed last */
    uint32_t nslabs, cap, nfree;
};

struct pool {
    struct pool_class c[POOL_CLASSES];
};

/* Smallest class whose slabs hold n entries (n <= 65536). */
static inline uint32_t pool_class_for(uint32_t n)
{
    uint32_t c = 0;
    while ((1u << c) < n)
        c++;
    return c;
}

static inline uint32_t *pool_items(const struct pool *p, uint32_t c,
                                   uint32_t slab)
{
    return p->c[c].words + ((size_t)slab << (c + 1));
}

static inline float *pool_vals(const struct pool *p, uint32_t c, uint32_t slab)
{
    return (float *)(void *)(p->c[c].words + ((size_t)slab << (c + 1)) +
                             ((size_t)1 << c));
}

void pool_free(struct pool *p);
/* Ensures the next pool_alloc in class c cannot fail: 0 or -ENOMEM. */
int pool_reserve(struct pool *p, uint32_t c);
uint32_t pool_alloc(struct pool *p, uint32_t c);
void pool_release(struct pool *p, uint32_t c, uint32_t slab);
size_t pool_bytes(const struct pool *p);

#endif
