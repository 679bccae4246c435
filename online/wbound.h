/* wbound.h -- an 8-bit copy of W that bounds every item's score from
 * above (wbound.c), and the exact top-n scan that prunes with it
 * (recommend.c). Internal to online/: the model keeps one beside W and
 * re-quantises the rows of every W write (model__w_changed). */
#ifndef NMFD_ONLINE_WBOUND_H
#define NMFD_ONLINE_WBOUND_H

#include <stddef.h>
#include <stdint.h>

/* Items per block of codes, and per call of wbound_scan. */
#define WBOUND_BLOCK 16
#define WBOUND_CHUNK 64
/* Chunks per group of maxima (wbound_chunks). */
#define WBOUND_GROUP 64

/* Rows are kept in blocks of WBOUND_BLOCK items: block g holds k x 16
 * codes, code (j, r) the column-j entry of row 16 g + r, so that one
 * topic's codes for 16 items are one 16-byte load. scale[i] is row i's
 * step (see wbound.c for the two infinite ones). */
struct wbound {
    uint8_t *q;   /* cap / WBOUND_BLOCK blocks of k x WBOUND_BLOCK */
    float *scale; /* cap */
    /* Per chunk of WBOUND_CHUNK rows, the largest entry of each column of
     * W over the chunk's rows in use (+inf for a NaN; -inf, none in use),
     * so that C_c = h . cmax_c bounds every score of chunk c at once;
     * stored by groups of WBOUND_GROUP chunks, column by column. */
    float *cmax;
    uint32_t k, cap; /* cap: a multiple of WBOUND_CHUNK x WBOUND_GROUP */
};

/* Room for cap rows (rounded up to WBOUND_CHUNK), the new rows zero
 * rows; 0 or -ENOMEM with the copy unchanged. */
int wbound_reserve(struct wbound *b, uint32_t k, uint32_t cap);
void wbound_free(struct wbound *b);
/* Rows [i0, i1) re-quantised from W (rows of k floats, row-major), and
 * the maxima of their chunks over W's rows [0, M) (M >= i1). */
void wbound_set(struct wbound *b, const float *W, uint32_t M, uint32_t i0,
                uint32_t i1);
/* Row i (< M) written where it was all zero or not in use (a new item):
 * wbound_set(b, W, M, i, i + 1) in O(k), without reading the chunk. */
void wbound_add(struct wbound *b, const float *W, uint32_t i);
/* Bytes held. */
size_t wbound_bytes(const struct wbound *b);
/* Whether the copy of rows [0, M) is what wbound_set would make of W:
 * for tests, and cheap enough for none but them. */
int wbound_matches(const struct wbound *b, const float *W, uint32_t M);

/* The bounds of the WBOUND_CHUNK rows from i0 (a multiple of it) for a
 * non-negative h, into out; returns whether any of them exceeds lo. */
int wbound_scan(const struct wbound *b, const float *h, uint32_t i0, float lo,
                float *out);
/* The bounds C of the WBOUND_GROUP chunks of group G (rows G x 4096 on)
 * into out: no row of chunk c scores above thr when C_c <=
 * wbound_floor(thr). */
void wbound_chunks(const struct wbound *b, const float *h, uint32_t G,
                   float *out);
/* The largest float lo such that a row whose bound is at most lo cannot
 * score above thr: see the proof in wbound.c. */
float wbound_floor(float thr, uint32_t k);

/* model_top_scores' answer, bit for bit (the same items, scores and
 * order), with b the copy of W's M rows: the exact score is computed only
 * for rows whose bound beats the n-th best so far (recommend.c). */
uint32_t wbound_top_scores(const struct wbound *b, const float *W, uint32_t M,
                           const float *h, const uint32_t *ex, uint32_t nex,
                           uint32_t n, uint32_t *items, float *scores);

#endif
