/* topn.h -- the n strongest of a stream of (score, index) pairs, kept in
 * the caller's two arrays: a min-heap whose root is the weakest kept, ties
 * broken towards the lower index, then sorted strongest first. A topic's
 * top items (model_topic_top) and a user's recommendations
 * (model_top_scores) both select this way; nothing here allocates. */
#ifndef NMF_TOPN_H
#define NMF_TOPN_H

#include <stdint.h>

/* Is (sa, ia) stronger than (sb, ib)? Larger score, then lower index. */
static inline int topn_before(float sa, uint32_t ia, float sb, uint32_t ib)
{
    return sa > sb || (sa == sb && ia < ib);
}

static inline void topn_swap(uint32_t *items, float *s, uint32_t a, uint32_t b)
{
    float ts = s[a];
    uint32_t ti = items[a];
    s[a] = s[b];
    items[a] = items[b];
    s[b] = ts;
    items[b] = ti;
}

/* Restores the heap below i among the first n entries. */
static inline void topn_sift_down(uint32_t *items, float *s, uint32_t n,
                                  uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && topn_before(s[m], items[m], s[l], items[l]))
            m = l;
        if (r < n && topn_before(s[m], items[m], s[r], items[r]))
            m = r;
        if (m == i)
            return;
        topn_swap(items, s, i, m);
        i = m;
    }
}

/* Offers (score, i) to the heap of *cnt entries out of n: taken while
 * there is room, else in place of the root when stronger than it. */
static inline void topn_offer(uint32_t *items, float *s, uint32_t n,
                              uint32_t *cnt, float score, uint32_t i)
{
    if (*cnt < n) {
        uint32_t c = (*cnt)++;
        items[c] = i;
        s[c] = score;
        while (c > 0) {
            uint32_t p = (c - 1) / 2;
            if (!topn_before(s[p], items[p], s[c], items[c]))
                return;
            topn_swap(items, s, p, c);
            c = p;
        }
    } else if (topn_before(score, i, s[0], items[0])) {
        items[0] = i;
        s[0] = score;
        topn_sift_down(items, s, *cnt, 0);
    }
}

/* Heap sort of the cnt kept: strongest first. */
static inline void topn_sort(uint32_t *items, float *s, uint32_t cnt)
{
    for (uint32_t e = cnt; e > 1; e--) {
        topn_swap(items, s, 0, e - 1);
        topn_sift_down(items, s, e - 1, 0);
    }
}

#endif
