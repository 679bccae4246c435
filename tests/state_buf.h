/* state_buf.h -- a model's saved state in memory, for the tests that
 * compare, patch or reload states (test_model, test_holdout): save()
 * writes model_save into a growing buffer, bufs_equal() compares two
 * byte for byte. The caller frees .p. */
#ifndef NMF_TESTS_STATE_BUF_H
#define NMF_TESTS_STATE_BUF_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static inline int buf_write(void *ctx, const void *data, size_t len)
{
    struct buf *b = ctx;
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

static inline struct buf save(const struct model *m)
{
    struct buf b = {0};
    cr_assert_eq(model_save(m, buf_write, &b), 0);
    return b;
}

static inline int bufs_equal(const struct buf *a, const struct buf *b)
{
    return a->n == b->n && !memcmp(a->p, b->p, a->n);
}

#endif
