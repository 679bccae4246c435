/* online/pool.c -- size-class pools for the users' sparse profiles.
 *
 * A profile of n entries (uint32 item, float value) lives in a slab of
 * class c, holding pool_caps[c] items then as many values, inside one flat
 * array per class,
 * so that a user costs a slab index and no allocation of its own. Pools
 * grow by half their size in pool_reserve, which is the only place that
 * allocates; a slab that a user outgrows goes back to its class's free
 * list for the next user. Slabs are addressed by index, never by pointer,
 * so growth may move the arrays. The pool never looks inside a slab.
 */
#include <errno.h>
#include <stdlib.h>

#include "pool.h"

void pool_free(struct pool *p)
{
    for (int c = 0; c < POOL_CLASSES; c++) {
        free(p->c[c].words);
        free(p->c[c].freel);
    }
}

int pool_reserve(struct pool *p, uint32_t c)
{
    if (c >= POOL_CLASSES)
        return -EINVAL;
    struct pool_class *pc = &p->c[c];
    if (pc->nfree || pc->nslabs < pc->cap)
        return 0;
    /* Small classes start with room for many users at once. */
    size_t cap = pc->cap ? pc->cap + (size_t)pc->cap / 2 : (c < 12 ? 1024 : 16);
    if (cap > 0xffffff00u)
        return -ENOMEM;
    size_t n = cap * (2 + p->aux) * pool_caps[c];
    uint32_t *words = realloc(pc->words, n * sizeof(*words));
    if (!words)
        return -ENOMEM;
    pc->words = words;
    uint32_t *fl = realloc(pc->freel, cap * sizeof(*fl));
    if (!fl)
        return -ENOMEM;
    pc->freel = fl;
    pc->cap = (uint32_t)cap;
    return 0;
}

uint32_t pool_alloc(struct pool *p, uint32_t c)
{
    struct pool_class *pc = &p->c[c];
    return pc->nfree ? pc->freel[--pc->nfree] : pc->nslabs++;
}

void pool_release(struct pool *p, uint32_t c, uint32_t slab)
{
    struct pool_class *pc = &p->c[c];
    pc->freel[pc->nfree++] = slab;
}

size_t pool_bytes(const struct pool *p)
{
    size_t b = 0;
    for (int c = 0; c < POOL_CLASSES; c++)
        b += (size_t)p->c[c].cap * (2 + p->aux) * pool_caps[c] *
                 sizeof(uint32_t) +
             (size_t)p->c[c].cap * sizeof(uint32_t);
    return b;
}
