/* online/holdout.c -- held-out pairs: the model's own validation set.
 *
 * With model.holdout = F, a share F of the (user, item) pairs, chosen by
 * a hash of the two ids with a fixed salt, never reaches the fold: their
 * events build a separate sparse matrix V_ho here instead of a profile,
 * A or B. The model is then scored on what it never saw, as
 *     holdout_loss = sum_(u,i) in ho (V_ho[i,u] - w_i . h_u)^2
 *                    / sum_(u,i) in ho V_ho[i,u]^2,
 * missing entries predicted by one dot product each (Kanagal & Sindhwani,
 * "Rank selection in low-rank matrix approximations", NIPS workshop 2010).
 * The fold sees a held-out pair as an empty cell, a zero to fit, so this
 * score watches a live model but does not choose k; the bi-cross-
 * validation below (whole users held out, scored on half the items) does,
 * for nmfctl rank. This file owns
 * the held-out matrix (its own user and item ids, one entry per pair, its
 * value decayed as a profile is; the same structure holds the held-out
 * users' rows of bi-cross-validation), its state section and the score's
 * cache (derived, never saved); it reads the model's W and H to score and
 * must never change the model.
 *
 * The score is exact against the current W and H and kept incrementally
 * (above holdout_score): a call costs O(1) when nothing changed, the
 * entries of the users whose h or entries changed since, and one sweep
 * of every entry, O(entries k), after W changed. A held-out user or item
 * the model does not know (all its pairs held out, or forgotten by ttl)
 * predicts 0. With a half-life, the entry is valued at the model's
 * latest time T, V_ho decayed by 2^(-(T - t)/half_life), and the
 * prediction, which fits the user's profile at its time t_u, by
 * 2^(-(T - t_u)/half_life).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "holdout.h"
#include "ids.h"
#include "model_impl.h"
#include "nnls.h"

/* The fixed salt of the pair hash (any constant; changing it changes
 * which pairs every model holds out). */
#define HOLDOUT_SALT 0x6e6d66642d686f21ull
/* Coordinate-descent sweeps bounding a held-out user's cold solve. */
#define HOLDOUT_BCV_SWEEPS 500

/* The score's cache (derived from the entries and the model, never
 * saved; holdout_score builds it at its first call). Per held-out user:
 * the model's index, its entries in ascending order, and its terms
 * sum (v - p)^2 and sum v^2 in the frame of origin R (below), valid while
 * the model's latest time stays under until. Per held-out item, the
 * model's index and its entries. */
#define HO_NONE  UINT32_MAX
#define HO_BLOCK 32 /* users a block sum covers */

struct ho_user {
    double loss, norm;
    int64_t until;
    uint32_t mu;          /* model user index, HO_NONE: unknown */
    uint32_t first, last; /* entries, chained by next_u */
    uint32_t pairs;
    uint32_t heap; /* position in the heap of until, HO_NONE */
};

struct ho_item {
    uint32_t mi;    /* model item index, HO_NONE: unknown */
    uint32_t first; /* entries, chained by next_i */
};

struct ho_cache {
    int built;
    const struct model *m;
    /* The model's wgen and sgen, and the frame origin, at the last full
     * sweep; a change of any sweeps again. */
    uint64_t wgen, sgen;
    int64_t R;
    int64_t now; /* the latest time at the last call */
    int swept;   /* every user scored once since the cache was built */
    uint32_t nu, ni, ne; /* users, items, entries the cache covers */
    uint32_t ucap, icap, ecap, mcap, bcap;
    struct ho_user *u;
    struct ho_item *it;
    uint32_t *next_u, *next_i; /* per entry */
    uint32_t *m2u;             /* model user index -> held-out user */
    /* Users to score again: a bit each (small enough to stay cached,
     * as the fold marks a user at every re-solve) and their list. */
    uint64_t *dbit;
    uint32_t *dirty, ndirty;
    uint32_t *heap, nheap;     /* users by until, a binary min-heap */
    double *bloss, *bnorm;     /* sums over blocks of HO_BLOCK users */
    uint8_t *bdirty;
    uint32_t *blist, nblist;
    double loss, norm; /* sums of the block sums, in the frame of R */
    uint64_t pairs;
};

struct holdout {
    double share;
    uint64_t salt;
    struct ids *users, *items;
    /* Entries: pair (eu, ei), value ev valued at time et. */
    uint32_t *eu, *ei;
    double *ev;
    int64_t *et;
    uint32_t n, cap;
    /* Open addressing on the pair: slot holds entry index + 1, 0 empty;
     * mask + 1 slots, a power of two, at most half full. */
    uint32_t *slot;
    uint32_t mask;
    uint64_t events;
    double weight_sum;
    int64_t tmax; /* latest entry time (derived) */
    struct ho_cache c;
};

/* The score's cache (below holdout_score's equation). */
static void ho_cache_drop(struct holdout *h);
static int ho_cache_sync(struct holdout *h);
static void ho_dirty(struct ho_cache *c, uint32_t x);

static inline uint64_t ho_mix(uint64_t x)
{
    /* splitmix64's finaliser. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* FNV-1a over the bytes: ids are short. */
static uint64_t ho_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int holdout_pair_held(double share, uint64_t salt, const char *user,
                      size_t user_len, const char *item, size_t item_len)
{
    if (!(share > 0))
        return 0;
    uint64_t hu = ho_bytes(user, user_len), hi = ho_bytes(item, item_len);
    uint64_t x = ho_mix(ho_mix(hu ^ HOLDOUT_SALT ^ ho_mix(salt)) ^ hi);
    return (double)(x >> 11) * 0x1p-53 < share;
}

struct holdout *holdout_new(double share, uint64_t salt)
{
    struct holdout *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->share = share;
    h->salt = salt;
    h->users = ids_new(HOLDOUT_SALT);
    h->items = ids_new(~HOLDOUT_SALT);
    h->mask = 63;
    h->slot = calloc(h->mask + 1, sizeof(uint32_t));
    if (!h->users || !h->items || !h->slot) {
        holdout_free(h);
        return NULL;
    }
    return h;
}

void holdout_free(struct holdout *h)
{
    if (!h)
        return;
    ho_cache_drop(h);
    ids_free(h->users);
    ids_free(h->items);
    free(h->eu);
    free(h->ei);
    free(h->ev);
    free(h->et);
    free(h->slot);
    free(h);
}

static inline uint32_t ho_pair_slot(uint32_t u, uint32_t i)
{
    return (uint32_t)ho_mix(((uint64_t)u << 32) | i);
}

/* Entry index of the pair, or -1. */
static int64_t ho_find(const struct holdout *h, uint32_t u, uint32_t i)
{
    for (uint32_t s = ho_pair_slot(u, i) & h->mask;; s = (s + 1) & h->mask) {
        uint32_t e = h->slot[s];
        if (!e)
            return -1;
        if (h->eu[e - 1] == u && h->ei[e - 1] == i)
            return e - 1;
    }
}

static void ho_place(uint32_t *slot, uint32_t mask, uint32_t u, uint32_t i,
                     uint32_t e)
{
    uint32_t s = ho_pair_slot(u, i) & mask;
    while (slot[s])
        s = (s + 1) & mask;
    slot[s] = e + 1;
}

/* Room for one more entry: 0 or -ENOMEM with nothing changed but
 * capacity. */
static int ho_reserve(struct holdout *h)
{
    if (h->n == UINT32_MAX - 1)
        return -ENOMEM;
    if (h->n == h->cap) {
        uint32_t cap =
            h->cap ? (h->cap > UINT32_MAX / 2 ? UINT32_MAX - 1 : 2 * h->cap)
                   : 64;
        uint32_t *eu = realloc(h->eu, (size_t)cap * sizeof(*eu));
        if (eu)
            h->eu = eu;
        uint32_t *ei = realloc(h->ei, (size_t)cap * sizeof(*ei));
        if (ei)
            h->ei = ei;
        double *ev = realloc(h->ev, (size_t)cap * sizeof(*ev));
        if (ev)
            h->ev = ev;
        int64_t *et = realloc(h->et, (size_t)cap * sizeof(*et));
        if (et)
            h->et = et;
        if (!eu || !ei || !ev || !et)
            return -ENOMEM;
        h->cap = cap;
    }
    if ((uint64_t)(h->n + 1) * 2 > (uint64_t)h->mask + 1) {
        uint32_t mask = 2 * h->mask + 1;
        uint32_t *slot = calloc((size_t)mask + 1, sizeof(*slot));
        if (!slot)
            return -ENOMEM;
        for (uint32_t e = 0; e < h->n; e++)
            ho_place(slot, mask, h->eu[e], h->ei[e], e);
        free(h->slot);
        h->slot = slot;
        h->mask = mask;
    }
    return 0;
}

static int64_t ho_intern(struct ids *t, const char *s, size_t len, int *rc)
{
    int64_t x = ids_find(t, s, len);
    if (x >= 0)
        return x;
    if ((*rc = ids_reserve(t, len)))
        return -1;
    return ids_insert(t, s, len);
}

int holdout_add(struct holdout *h, const char *user, size_t user_len,
                const char *item, size_t item_len, double weight, int64_t ts,
                int64_t half_life_ms)
{
    int rc = 0;
    /* An id interned before a later failure is harmless: it holds no
     * entry, so the held-out matrix is unchanged. */
    int64_t u = ho_intern(h->users, user, user_len, &rc);
    if (u < 0)
        return rc;
    int64_t i = ho_intern(h->items, item, item_len, &rc);
    if (i < 0)
        return rc;
    int64_t e = ho_find(h, (uint32_t)u, (uint32_t)i);
    if (e < 0) {
        if ((rc = ho_reserve(h)))
            return rc;
        e = h->n++;
        h->eu[e] = (uint32_t)u;
        h->ei[e] = (uint32_t)i;
        h->ev[e] = 0;
        h->et[e] = ts;
        ho_place(h->slot, h->mask, (uint32_t)u, (uint32_t)i, (uint32_t)e);
    }
    /* v(t) = 2^(-(t - t_e)/half_life) v(t_e) + w, as a profile entry. */
    if (half_life_ms > 0 && ts > h->et[e])
        h->ev[e] *= exp2(-(double)(ts - h->et[e]) / (double)half_life_ms);
    else if (half_life_ms > 0 && ts < h->et[e])
        weight *= exp2(-(double)(h->et[e] - ts) / (double)half_life_ms);
    if (ts > h->et[e])
        h->et[e] = ts;
    h->ev[e] += weight;
    if (h->ev[e] > MODEL_VALUE_MAX)
        h->ev[e] = MODEL_VALUE_MAX;
    h->events++;
    h->weight_sum += weight;
    if (ts > h->tmax)
        h->tmax = ts;
    /* The score's cache: a changed entry marks its user; a new entry,
     * user or item waits for the next score's ho_cache_sync (nothing on
     * the fold's path but a bit). */
    if (h->c.built && (uint32_t)e < h->c.ne)
        ho_dirty(&h->c, (uint32_t)u);
    return 0;
}

static inline double ho_decay(int64_t dt, int64_t hl)
{
    return hl > 0 && dt > 0 ? exp2(-(double)dt / (double)hl) : 1.0;
}

/*
 * The score, kept incrementally and exact against the current W and H.
 *
 * With a half-life every value and prediction is decayed to the latest
 * time now, a factor 2^(-(now - t)/hl) = c 2^((t - R)/hl) with
 * c = 2^(-(now - R)/hl) common to every term, so the terms are kept in
 * the frame of an origin R and the sums multiplied by c^2 when read:
 *     loss = c^2 sum_u sum_(e of u) (v_e f(t_e) - (w_i . h_u) f(t_u))^2,
 *     f(t) = 2^((t - R)/hl),
 * and a later event moves no kept term. R is now rounded down to a
 * multiple of HO_FRAME half-lives (0 without a half-life), a function of
 * now alone, so that the score is a function of the state and not of the
 * calls that led to it; crossing a multiple sweeps everything again.
 *
 * A user's terms change when its h, time or liveness changes (the model
 * says so: holdout_note_user*), when one of its entries changes
 * (holdout_add), when one of its items becomes known or is forgotten
 * (holdout_note_item_id), and with a ttl when now passes until, the
 * first time at which one of its counted entries ages out (a heap on
 * until). Such users are marked and scored again at the next call, in
 * O(their entries k). A new W, new column scales of H or a new frame
 * change every term: then the call sweeps every held-out entry, one dot
 * product each, O(entries k), unavoidable for an exact score against a
 * new W; but no id lookup (the model's indices are kept, and follow the
 * model's slots as they are freed and reused). A call with nothing
 * changed costs O(1).
 *
 * The totals never drift: a user's terms are summed afresh each time in
 * the order of its entries, a block's sum afresh from its HO_BLOCK users
 * when one changed, the totals afresh from the blocks; the same sums in
 * the same order as a full sweep, so the figure is the same bit for bit
 * whatever the history of calls.
 */
#define HO_FRAME 16

static int64_t ho_origin(int64_t now, int64_t hl)
{
    if (hl <= 0 || hl > INT64_MAX / HO_FRAME)
        return 0;
    int64_t q = hl * HO_FRAME;
    return now - now % q; /* now >= 0 */
}

static inline double ho_frame(int64_t t, int64_t R, int64_t hl)
{
    return hl > 0 ? exp2((double)(t - R) / (double)hl) : 1.0;
}

/* The capacity to hold need after cap: doubled until it does. */
static uint32_t ho_cap(uint32_t cap, uint32_t need)
{
    uint64_t c = cap ? cap : 64;
    while (c < need)
        c *= 2;
    return c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
}

/* *p resized to n elements of elem bytes: 0 or -ENOMEM (*p kept). */
static int ho_resize(void *p, size_t elem, uint32_t n)
{
    void *q = realloc(*(void **)p, (size_t)n * elem);
    if (!q)
        return -ENOMEM;
    *(void **)p = q;
    return 0;
}

static void ho_cache_drop(struct holdout *h)
{
    struct ho_cache *c = &h->c;
    free(c->u);
    free(c->it);
    free(c->next_u);
    free(c->next_i);
    free(c->m2u);
    free(c->dirty);
    free(c->dbit);
    free(c->heap);
    free(c->bloss);
    free(c->bnorm);
    free(c->bdirty);
    free(c->blist);
    memset(c, 0, sizeof(*c));
}

static size_t ho_cache_bytes(const struct ho_cache *c)
{
    return (size_t)c->ucap * (sizeof(struct ho_user) + 2 * sizeof(uint32_t)) +
           ((size_t)c->ucap / 64 + 1) * sizeof(uint64_t) +
           (size_t)c->icap * sizeof(struct ho_item) +
           (size_t)c->ecap * 2 * sizeof(uint32_t) +
           (size_t)c->mcap * sizeof(uint32_t) +
           (size_t)c->bcap * (2 * sizeof(double) + 1 + sizeof(uint32_t));
}

static inline int ho_is_dirty(const struct ho_cache *c, uint32_t x)
{
    return (int)(c->dbit[x / 64] >> (x % 64) & 1);
}

static void ho_dirty(struct ho_cache *c, uint32_t x)
{
    if (ho_is_dirty(c, x))
        return;
    c->dbit[x / 64] |= (uint64_t)1 << (x % 64);
    c->dirty[c->ndirty++] = x;
}

/* The heap of users by until (users whose until is INT64_MAX are out). */
static void ho_heap_swap(struct ho_cache *c, uint32_t a, uint32_t b)
{
    uint32_t x = c->heap[a], y = c->heap[b];
    c->heap[a] = y;
    c->heap[b] = x;
    c->u[y].heap = a;
    c->u[x].heap = b;
}

static void ho_heap_fix(struct ho_cache *c, uint32_t p)
{
    while (p > 0) {
        uint32_t q = (p - 1) / 2;
        if (c->u[c->heap[q]].until <= c->u[c->heap[p]].until)
            break;
        ho_heap_swap(c, p, q);
        p = q;
    }
    for (;;) {
        uint32_t l = 2 * p + 1, r = l + 1, s = p;
        if (l < c->nheap && c->u[c->heap[l]].until < c->u[c->heap[s]].until)
            s = l;
        if (r < c->nheap && c->u[c->heap[r]].until < c->u[c->heap[s]].until)
            s = r;
        if (s == p)
            break;
        ho_heap_swap(c, p, s);
        p = s;
    }
}

static void ho_heap_set(struct ho_cache *c, uint32_t x, int64_t until)
{
    struct ho_user *hu = &c->u[x];
    hu->until = until;
    if (hu->heap == HO_NONE) {
        if (until == INT64_MAX)
            return;
        hu->heap = c->nheap;
        c->heap[c->nheap++] = x;
        ho_heap_fix(c, hu->heap);
    } else if (until == INT64_MAX) {
        uint32_t p = hu->heap;
        hu->heap = HO_NONE;
        if (p != --c->nheap) {
            c->heap[p] = c->heap[c->nheap];
            c->u[c->heap[p]].heap = p;
            ho_heap_fix(c, p);
        }
    } else {
        ho_heap_fix(c, hu->heap);
    }
}

/* Model index of held-out user x's id, or HO_NONE. */
static uint32_t ho_find_model(const struct ids *mine, uint32_t x,
                              const struct ids *model)
{
    size_t len;
    const char *s = ids_get(mine, x, &len);
    int64_t r = s ? ids_find(model, s, len) : -1;
    return r >= 0 ? (uint32_t)r : HO_NONE;
}

/* m2u[mu] = x, growing m2u (HO_NONE-filled): 0 or -ENOMEM. */
static int ho_link_user(struct ho_cache *c, uint32_t mu, uint32_t x)
{
    if (mu >= c->mcap) {
        uint32_t cap = ho_cap(c->mcap, mu + 1);
        if (ho_resize(&c->m2u, sizeof(uint32_t), cap))
            return -ENOMEM;
        for (uint32_t q = c->mcap; q < cap; q++)
            c->m2u[q] = HO_NONE;
        c->mcap = cap;
    }
    c->m2u[mu] = x;
    return 0;
}

/* Room in the cache for U users, I items and n entries: 0 or -ENOMEM. */
static int ho_cache_room(struct ho_cache *c, uint32_t U, uint32_t I,
                         uint32_t n)
{
    if (U > c->ucap) {
        uint32_t cap = ho_cap(c->ucap, U);
        if (ho_resize(&c->u, sizeof(*c->u), cap) ||
            ho_resize(&c->dirty, sizeof(uint32_t), cap) ||
            ho_resize(&c->heap, sizeof(uint32_t), cap) ||
            ho_resize(&c->dbit, sizeof(uint64_t), cap / 64 + 1))
            return -ENOMEM;
        memset(c->dbit + (c->ucap ? c->ucap / 64 + 1 : 0), 0,
               (cap / 64 + 1 - (c->ucap ? c->ucap / 64 + 1 : 0)) *
                   sizeof(uint64_t));
        c->ucap = cap;
    }
    uint32_t nb = (U + HO_BLOCK - 1) / HO_BLOCK;
    if (nb > c->bcap) {
        uint32_t cap = ho_cap(c->bcap, nb);
        if (ho_resize(&c->bloss, sizeof(double), cap) ||
            ho_resize(&c->bnorm, sizeof(double), cap) ||
            ho_resize(&c->bdirty, 1, cap) ||
            ho_resize(&c->blist, sizeof(uint32_t), cap))
            return -ENOMEM;
        c->bcap = cap;
    }
    if (I > c->icap) {
        uint32_t cap = ho_cap(c->icap, I);
        if (ho_resize(&c->it, sizeof(*c->it), cap))
            return -ENOMEM;
        c->icap = cap;
    }
    if (n > c->ecap) {
        uint32_t cap = ho_cap(c->ecap, n);
        if (ho_resize(&c->next_u, sizeof(uint32_t), cap) ||
            ho_resize(&c->next_i, sizeof(uint32_t), cap))
            return -ENOMEM;
        c->ecap = cap;
    }
    return 0;
}

/* Brings the cache up to the holdout's users, items and entries (ids
 * interned since, entries added since): new users and items looked up in
 * the model once, new entries chained, their users marked. 0, or -ENOMEM
 * with the cache to be dropped. */
static int ho_cache_sync(struct holdout *h)
{
    struct ho_cache *c = &h->c;
    const struct model *m = c->m;
    const uint32_t U = ids_slots(h->users), I = ids_slots(h->items);
    if (ho_cache_room(c, U, I, h->n))
        return -ENOMEM;
    for (uint32_t b = (c->nu + HO_BLOCK - 1) / HO_BLOCK;
         b < (U + HO_BLOCK - 1) / HO_BLOCK; b++) {
        c->bloss[b] = c->bnorm[b] = 0;
        c->bdirty[b] = 0;
    }
    for (; c->nu < U; c->nu++) {
        struct ho_user *hu = &c->u[c->nu];
        memset(hu, 0, sizeof(*hu));
        hu->until = INT64_MAX;
        hu->first = hu->last = hu->heap = HO_NONE;
        hu->mu = ho_find_model(h->users, c->nu, m->uids);
        if (hu->mu != HO_NONE && ho_link_user(c, hu->mu, c->nu))
            return -ENOMEM;
    }
    for (; c->ni < I; c->ni++) {
        c->it[c->ni].mi = ho_find_model(h->items, c->ni, m->iids);
        c->it[c->ni].first = HO_NONE;
    }
    for (; c->ne < h->n; c->ne++) {
        uint32_t e = c->ne, x = h->eu[e], i = h->ei[e];
        struct ho_user *hu = &c->u[x];
        c->next_u[e] = HO_NONE;
        if (hu->last == HO_NONE)
            hu->first = e;
        else
            c->next_u[hu->last] = e;
        hu->last = e;
        c->next_i[e] = c->it[i].first;
        c->it[i].first = e;
        ho_dirty(c, x);
    }
    return 0;
}
/* The clock of one call: the latest time, the frame origin, the ttl's
 * cut (entries before it are left out, as the model forgets). */
struct ho_clock {
    int64_t now, R, hl, ttl, cut;
};

/* Held-out user x's terms against the current W and H, in the frame of
 * R: the user's entries in ascending order, each value decayed as a
 * profile is and its prediction one dot product (0 for a user or item
 * the model does not know). Sets the user's until and the totals' pairs;
 * the caller sums the block. */
static void ho_user_score(struct holdout *h, uint32_t x,
                          const struct ho_clock *ck)
{
    struct ho_cache *c = &h->c;
    const struct model *m = c->m;
    struct ho_user *hu = &c->u[x];
    const uint32_t k = m->k;
    double hh[MODEL_K_MAX], fu = 0;
    int64_t until = INT64_MAX;
    /* A slot freed is unlinked at once (holdout_note_user_id), so a
     * user known is live. Its h (and its time, with a half-life) is
     * read at its first entry predicted: not at all for a user whose
     * entries all aged out. */
    int known = hu->mu != HO_NONE, ready = 0;
    double loss = 0, norm = 0;
    uint32_t pairs = 0;
    for (uint32_t e = hu->first; e != HO_NONE; e = c->next_u[e]) {
        const int64_t t = h->et[e];
        if (ck->ttl > 0) {
            if (t < ck->cut)
                continue; /* forgotten, as the model forgets */
            /* Counted while now <= t + ttl. */
            int64_t end =
                t > INT64_MAX - 1 - ck->ttl ? INT64_MAX : t + ck->ttl + 1;
            if (end < until)
                until = end;
        }
        double v = h->ev[e] * ho_frame(t, ck->R, ck->hl), p = 0;
        const uint32_t mi = c->it[h->ei[e]].mi;
        if (known && mi != HO_NONE) {
            if (!ready) {
                const float *hr = m->H + (size_t)hu->mu * k;
                for (uint32_t j = 0; j < k; j++)
                    hh[j] = (double)hr[j] * m->hs[j];
                int64_t tu = ck->hl > 0 ? m->u[hu->mu].t : 0;
                if (ck->hl > 0 && tu > ck->now) {
                    /* Valued at now undecayed, as ho_decay leaves a time
                     * ahead of now: a term that moves with now, until now
                     * reaches tu. */
                    fu = ho_frame(ck->now, ck->R, ck->hl);
                    until = ck->now + 1;
                } else {
                    fu = ho_frame(tu, ck->R, ck->hl);
                }
                ready = 1;
            }
            const float *wi = m->W + (size_t)mi * k;
            for (uint32_t j = 0; j < k; j++)
                p += (double)wi[j] * hh[j];
            p *= fu;
        }
        loss += (v - p) * (v - p);
        norm += v * v;
        pairs++;
    }
    c->pairs += (uint64_t)pairs - hu->pairs;
    hu->loss = loss;
    hu->norm = norm;
    hu->pairs = pairs;
    c->dbit[x / 64] &= ~((uint64_t)1 << (x % 64));
    ho_heap_set(c, x, until);
}

/* Block b's sums afresh from its users. */
static void ho_block_sum(struct ho_cache *c, uint32_t b)
{
    double l = 0, n = 0;
    uint32_t x1 = (b + 1) * HO_BLOCK < c->nu ? (b + 1) * HO_BLOCK : c->nu;
    for (uint32_t x = b * HO_BLOCK; x < x1; x++) {
        l += c->u[x].loss;
        n += c->u[x].norm;
    }
    c->bloss[b] = l;
    c->bnorm[b] = n;
    c->bdirty[b] = 0;
}

static void ho_totals(struct ho_cache *c)
{
    const uint32_t nb = (c->nu + HO_BLOCK - 1) / HO_BLOCK;
    double l = 0, n = 0;
    for (uint32_t b = 0; b < nb; b++) {
        l += c->bloss[b];
        n += c->bnorm[b];
    }
    c->loss = l;
    c->norm = n;
}

static inline void ho_prefetch_span(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + bytes;
    for (; a < end; a += 64)
        __builtin_prefetch((const void *)a, 0);
}

/* The sweep's memory hints: the users it scores next lie scattered in
 * the model (the user, its h) and in the entries, and their items' rows
 * of W behind two indirections; each is hinted once the index it needs
 * has been hinted a few users earlier (the hardware cannot guess them).
 * Only each user's first entry: most held-out users have one or two. */
#define HO_AHEAD 12
static void ho_sweep_hint(const struct holdout *h, uint32_t x)
{
    const struct ho_cache *c = &h->c;
    const struct model *m = c->m;
    const uint32_t k = m->k;
    if (x + HO_AHEAD < c->nu) {
        const struct ho_user *hu = &c->u[x + HO_AHEAD];
        if (hu->mu != HO_NONE) {
            if (m->p.half_life_ms > 0)
                __builtin_prefetch(&m->u[hu->mu], 0);
            ho_prefetch_span(m->H + (size_t)hu->mu * k, k * sizeof(float));
        }
        if (hu->first != HO_NONE) {
            __builtin_prefetch(&h->ev[hu->first], 0);
            __builtin_prefetch(&h->et[hu->first], 0);
            __builtin_prefetch(&h->ei[hu->first], 0);
            __builtin_prefetch(&c->next_u[hu->first], 0);
        }
    }
    if (x + HO_AHEAD / 2 < c->nu) {
        uint32_t e = c->u[x + HO_AHEAD / 2].first;
        if (e != HO_NONE)
            __builtin_prefetch(&c->it[h->ei[e]], 0);
    }
    if (x + HO_AHEAD / 4 < c->nu) {
        uint32_t e = c->u[x + HO_AHEAD / 4].first;
        uint32_t mi = e != HO_NONE ? c->it[h->ei[e]].mi : HO_NONE;
        if (mi != HO_NONE)
            ho_prefetch_span(m->W + (size_t)mi * k, k * sizeof(float));
    }
}

/* Every user scored afresh: O(entries k). */
static void ho_sweep(struct holdout *h, const struct ho_clock *ck)
{
    struct ho_cache *c = &h->c;
    c->nheap = 0;
    c->ndirty = 0;
    c->nblist = 0;
    /* With a ttl, a user whose every entry aged out holds zero terms
     * that stay zero (now never goes back: below) until an entry of its
     * changes, which marks it; the sweep leaves it be. */
    const int skip = ck->ttl > 0 && c->swept;
    for (uint32_t x = 0; x < c->nu; x++)
        c->u[x].heap = HO_NONE;
    for (uint32_t x = 0; x < c->nu; x++) {
        if (skip && !c->u[x].pairs && !ho_is_dirty(c, x))
            continue;
        ho_sweep_hint(h, x);
        ho_user_score(h, x, ck);
    }
    c->swept = 1;
    for (uint32_t b = 0; b < (c->nu + HO_BLOCK - 1) / HO_BLOCK; b++)
        ho_block_sum(c, b);
    ho_totals(c);
    c->wgen = c->m->wgen;
    c->sgen = c->m->sgen;
    c->R = ck->R;
}

/* The users marked, and those whose until now reached, scored again;
 * their blocks and the totals summed afresh. */
static void ho_update(struct holdout *h, const struct ho_clock *ck)
{
    struct ho_cache *c = &h->c;
    while (c->nheap && c->u[c->heap[0]].until <= ck->now) {
        uint32_t x = c->heap[0];
        ho_heap_set(c, x, INT64_MAX);
        ho_dirty(c, x);
    }
    if (!c->ndirty)
        return;
    for (uint32_t d = 0; d < c->ndirty; d++) {
        uint32_t x = c->dirty[d], b = x / HO_BLOCK;
        ho_user_score(h, x, ck);
        if (!c->bdirty[b]) {
            c->bdirty[b] = 1;
            c->blist[c->nblist++] = b;
        }
    }
    c->ndirty = 0;
    for (uint32_t q = 0; q < c->nblist; q++)
        ho_block_sum(c, c->blist[q]);
    c->nblist = 0;
    ho_totals(c);
}

/* Builds the cache for model m: every held-out id looked up once. 0 or
 * -ENOMEM (no cache). */
static int ho_cache_build(struct holdout *h, const struct model *m)
{
    ho_cache_drop(h);
    struct ho_cache *c = &h->c;
    c->m = m;
    if (ho_cache_sync(h)) {
        ho_cache_drop(h);
        return -ENOMEM;
    }
    c->built = 1;
    return 0;
}

/* Without memory for the cache: the same figure from scratch, every id
 * looked up for every entry, in the order of the entries. */
static void ho_score_scratch(const struct holdout *h, const struct model *m,
                             const struct ho_clock *ck,
                             struct holdout_score *out)
{
    const uint32_t k = m->k;
    for (uint32_t e = 0; e < h->n; e++) {
        if (ck->ttl > 0 && h->et[e] < ck->cut)
            continue;
        size_t len;
        const char *s = ids_get(h->users, h->eu[e], &len);
        int64_t u = ids_find(m->uids, s, len);
        s = ids_get(h->items, h->ei[e], &len);
        int64_t i = ids_find(m->iids, s, len);
        double v = h->ev[e] * ho_decay(ck->now - h->et[e], ck->hl), p = 0;
        if (u >= 0 && i >= 0 && (m->u[u].flags & MODEL_U_LIVE)) {
            const float *wi = m->W + (size_t)i * k;
            const float *hu = m->H + (size_t)u * k;
            for (uint32_t j = 0; j < k; j++)
                p += (double)wi[j] * ((double)hu[j] * m->hs[j]);
            p *= ho_decay(ck->now - m->u[u].t, ck->hl);
        }
        out->loss += (v - p) * (v - p);
        out->norm += v * v;
        out->pairs++;
    }
}

void holdout_score(struct holdout *h, const struct model *m,
                   struct holdout_score *out)
{
    memset(out, 0, sizeof(*out));
    if (!h || !h->n)
        return;
    struct ho_clock ck = {.hl = m->p.half_life_ms, .ttl = m->p.ttl_ms};
    ck.now = m->has_time && m->T > h->tmax ? m->T : h->tmax;
    ck.cut = ck.now - ck.ttl;
    ck.R = ho_origin(ck.now, ck.hl);
    struct ho_cache *c = &h->c;
    /* Entries and ids added since the last call first; without memory
     * for them the cache is built anew, or the score made from scratch. */
    if (c->built && (c->m != m || ho_cache_sync(h)))
        ho_cache_drop(h);
    if (!c->built) {
        if (ho_cache_build(h, m)) {
            ho_score_scratch(h, m, &ck, out);
            return;
        }
        ho_sweep(h, &ck);
    } else if (ck.now < c->now) {
        /* The model's time went back (never, as models go): entries
         * aged out may count again. Everything afresh. */
        c->swept = 0;
        ho_sweep(h, &ck);
    } else if (c->wgen != m->wgen || c->sgen != m->sgen || c->R != ck.R) {
        ho_sweep(h, &ck);
    } else {
        ho_update(h, &ck);
    }
    c->now = ck.now;
    double f = ck.hl > 0 ? exp2(-(double)(ck.now - ck.R) / (double)ck.hl) : 1;
    out->loss = c->loss * f * f;
    out->norm = c->norm * f * f;
    out->pairs = c->pairs;
}

void holdout_note_user(struct holdout *h, uint32_t u)
{
    struct ho_cache *c = &h->c;
    if (c->built && u < c->mcap && c->m2u[u] != HO_NONE)
        ho_dirty(c, c->m2u[u]);
}

void holdout_note_user_id(struct holdout *h, uint32_t u, const char *id,
                          size_t len, int live)
{
    struct ho_cache *c = &h->c;
    if (!c->built)
        return;
    if (u < c->mcap && c->m2u[u] != HO_NONE) {
        /* The slot's previous id, if held out: unknown from now on. */
        uint32_t x = c->m2u[u];
        c->u[x].mu = HO_NONE;
        c->m2u[u] = HO_NONE;
        ho_dirty(c, x);
    }
    if (!live)
        return;
    int64_t x = ids_find(h->users, id, len);
    if (x < 0 || (uint32_t)x >= c->nu)
        return; /* not held out, or a user the next sync looks up */
    if (ho_link_user(c, u, (uint32_t)x)) {
        ho_cache_drop(h);
        return;
    }
    c->u[x].mu = u;
    ho_dirty(c, (uint32_t)x);
}

void holdout_note_item_id(struct holdout *h, uint32_t i, const char *id,
                          size_t len, int live)
{
    struct ho_cache *c = &h->c;
    if (!c->built)
        return;
    int64_t x = ids_find(h->items, id, len);
    if (x < 0 || (uint32_t)x >= c->ni)
        return;
    c->it[x].mi = live ? i : HO_NONE;
    for (uint32_t e = c->it[x].first; e != HO_NONE; e = c->next_i[e])
        ho_dirty(c, h->eu[e]);
}

/*
 * Bi-cross-validation of the rank (Owen & Perry, "Bi-cross-validation of
 * the SVD and the nonnegative matrix factorization", Ann. Appl. Stat. 3(2),
 * 2009, section 5). The held-out pairs above are scored as missing
 * entries, but a fold that never saw a pair treats it as a zero it should
 * fit: with a few heavy users, a larger k fits those zeros better and the
 * held-out error rises with k past the true rank. BCV needs no masked fit.
 * Hold out whole users U (rows of V^T) and split the items into halves S
 * and T; fit W on the other users only, by the ordinary fold; then for
 * each held-out user u, fit its code on S alone and predict T:
 *     h_u = argmin_{h >= 0} 1/2 ||v_uS - W_S h||^2 + l1 |h|_1 + l2/2 |h|^2
 *         = NNLS on G_S = W_S^T W_S and b_S = W_S^T v_uS,
 *     err_u = ||v_uT - W_T h_u||^2
 *           = ||v_uT||^2 - 2 h_u . (W_T^T v_uT) + h_u^T G_T h_u,
 * which counts every item of T, zeros included, in O(nnz_u k + k^2) with
 * G_S, G_T formed once per fit in O(M k^2). The halves then swap roles
 * (fit on T, score S), as the paper's full BCV uses every held-out block,
 * and the score is
 *     sum_u (err_uT + err_uS) / sum_u (||v_uT||^2 + ||v_uS||^2).
 * A k too small misses structure in T; a k too large fits noise in S that
 * does not carry over to T, so the error has its minimum near the rank.
 */
static inline uint64_t ho_bcv_hash(uint64_t salt, uint64_t side, const char *s,
                                   size_t n)
{
    return ho_mix(ho_mix(ho_bytes(s, n) ^ HOLDOUT_SALT ^ side) ^
                  ho_mix(salt + 1));
}

int holdout_bcv_user_held(double share, uint64_t salt, const char *user,
                          size_t len)
{
    return (double)(ho_bcv_hash(salt, 0x75, user, len) >> 11) * 0x1p-53 < share;
}

int holdout_bcv_item_scored(uint64_t salt, const char *item, size_t len)
{
    return (int)(ho_bcv_hash(salt, 0x69, item, len) >> 63);
}

void holdout_bcv_grams(uint32_t k, const float *W, uint32_t M,
                       const uint8_t *scored, double *GS, double *GT)
{
    memset(GS, 0, (size_t)k * k * sizeof(*GS));
    memset(GT, 0, (size_t)k * k * sizeof(*GT));
    for (uint32_t i = 0; i < M; i++) {
        const float *w = W + (size_t)i * k;
        double *G = scored[i] ? GT : GS;
        for (uint32_t a = 0; a < k; a++) {
            double wa = w[a];
            if (wa == 0)
                continue;
            for (uint32_t c = a; c < k; c++)
                G[(size_t)a * k + c] += wa * (double)w[c];
        }
    }
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t c = 0; c < a; c++) {
            GS[(size_t)a * k + c] = GS[(size_t)c * k + a];
            GT[(size_t)a * k + c] = GT[(size_t)c * k + a];
        }
}

double holdout_bcv_user(uint32_t k, const float *W, const double *GS,
                        const double *GT, const int64_t *row,
                        const uint8_t *scored, const double *v, uint32_t n,
                        double l1, double l2, uint32_t sweeps, double tol,
                        double *scratch, double *norm)
{
    double *bS = scratch, *bT = scratch + k, *h = scratch + 2 * k,
           *gh = scratch + 3 * k;
    double vT = 0, vS = 0;
    for (uint32_t j = 0; j < k; j++)
        bS[j] = bT[j] = h[j] = 0;
    for (uint32_t e = 0; e < n; e++) {
        if (scored[e])
            vT += v[e] * v[e];
        else
            vS += v[e] * v[e];
        if (row[e] < 0)
            continue;
        const float *w = W + (size_t)row[e] * k;
        double *b = scored[e] ? bT : bS;
        for (uint32_t j = 0; j < k; j++)
            b[j] += v[e] * (double)w[j];
    }
    *norm = vT;
    if (vS > 0)
        nnls_solve(k, GS, bS, l1, l2, sweeps, tol, h, gh);
    double err = vT;
    for (uint32_t a = 0; a < k; a++) {
        if (h[a] == 0)
            continue;
        double gth = 0;
        for (uint32_t c = 0; c < k; c++)
            gth += GT[(size_t)a * k + c] * h[c];
        err += h[a] * (gth - 2 * bT[a]);
    }
    return err > 0 ? err : 0;
}

/* The held-out users' matrix is a struct holdout of whole rows. */
struct model_bcv {
    double share;
    uint64_t salt;
    struct holdout *h;
};

struct model_bcv *model_bcv_new(double share, uint64_t salt)
{
    struct model_bcv *b = calloc(1, sizeof(*b));
    if (!b || !(b->h = holdout_new(share, salt))) {
        free(b);
        return NULL;
    }
    b->share = share;
    b->salt = salt;
    return b;
}

void model_bcv_free(struct model_bcv *b)
{
    if (!b)
        return;
    holdout_free(b->h);
    free(b);
}

int model_bcv_user_held(const struct model_bcv *b, const char *user, size_t len)
{
    return holdout_bcv_user_held(b->share, b->salt, user, len);
}

int model_bcv_add(struct model_bcv *b, const char *user, size_t user_len,
                  const char *item, size_t item_len, double weight, int64_t ts,
                  int64_t half_life_ms)
{
    if (!user || !item || !user_len || !item_len || !(weight >= 0) ||
        isinf(weight))
        return -EINVAL;
    if (user_len > MODEL_ID_MAX || item_len > MODEL_ID_MAX)
        return -ENAMETOOLONG;
    if (ts < 0 || ts > MODEL_TS_MAX || weight > MODEL_WEIGHT_MAX)
        return -ERANGE;
    return holdout_add(b->h, user, user_len, item, item_len, weight, ts,
                       half_life_ms);
}

/* Groups the entries by user (a counting sort), looks each item up once
 * in the model and in the halves, and scores user by user. With a
 * half-life every entry is valued at the latest time seen, as
 * holdout_score does; with a ttl, entries the model would have forgotten
 * are left out. */
int model_bcv_score(const struct model_bcv *b, const struct model *m,
                    struct model_bcv_score *out)
{
    const struct holdout *h = b->h;
    const uint32_t k = m->k, M = ids_slots(m->iids);
    const uint32_t U = ids_slots(h->users), I = ids_slots(h->items);
    const int64_t hl = m->p.half_life_ms;
    int64_t now = m->has_time ? m->T : 0;
    int rc = -ENOMEM;
    memset(out, 0, sizeof(*out));
    for (uint32_t e = 0; e < h->n; e++)
        if (h->et[e] > now)
            now = h->et[e];
    uint32_t *start = calloc((size_t)U + 1, sizeof(*start));
    uint32_t *order = malloc(((size_t)h->n + 1) * sizeof(*order));
    int64_t *mi = malloc(((size_t)I + 1) * sizeof(*mi));
    uint8_t *ti = malloc((size_t)I + 1);
    uint8_t *tm = calloc((size_t)M + 1, 1);
    int64_t *row = malloc(((size_t)h->n + 1) * sizeof(*row));
    uint8_t *sc = malloc((size_t)h->n + 1);
    double *v = malloc(((size_t)h->n + 1) * sizeof(*v));
    double *G = malloc((2 * (size_t)k * k + 4 * (size_t)k) * sizeof(*G));
    if (!start || !order || !mi || !ti || !tm || !row || !sc || !v || !G)
        goto out;
    for (uint32_t i = 0; i < M; i++) {
        size_t len;
        const char *s = ids_get(m->iids, i, &len);
        tm[i] = s ? (uint8_t)holdout_bcv_item_scored(b->salt, s, len) : 0;
    }
    for (uint32_t i = 0; i < I; i++) {
        size_t len;
        const char *s = ids_get(h->items, i, &len);
        mi[i] = ids_find(m->iids, s, len);
        ti[i] = (uint8_t)holdout_bcv_item_scored(b->salt, s, len);
    }
    for (uint32_t e = 0; e < h->n; e++)
        start[h->eu[e] + 1]++;
    for (uint32_t u = 0; u < U; u++)
        start[u + 1] += start[u];
    for (uint32_t e = 0; e < h->n; e++)
        order[start[h->eu[e]]++] = e;
    for (uint32_t u = U; u > 0; u--)
        start[u] = start[u - 1];
    start[0] = 0;
    double *GS = G, *GT = G + (size_t)k * k, *scratch = GT + (size_t)k * k;
    holdout_bcv_grams(k, m->W, M, tm, GS, GT);
    const double l1 = m->p.alpha_h * m->p.l1_ratio;
    const double l2 = m->p.alpha_h * (1 - m->p.l1_ratio);
    for (uint32_t u = 0; u < U; u++) {
        uint32_t n = 0;
        for (uint32_t x = start[u]; x < start[u + 1]; x++) {
            uint32_t e = order[x];
            if (m->p.ttl_ms > 0 && h->et[e] < now - m->p.ttl_ms)
                continue;
            row[n] = mi[h->ei[e]];
            sc[n] = ti[h->ei[e]];
            v[n] = h->ev[e] * ho_decay(now - h->et[e], hl);
            n++;
        }
        if (!n)
            continue;
        double norm;
        /* A cold start: the solve runs to convergence, not to the
         * fold's warm-started bound. Then the halves swap roles. */
        out->loss +=
            holdout_bcv_user(k, m->W, GS, GT, row, sc, v, n, l1, l2,
                             HOLDOUT_BCV_SWEEPS, m->p.nnls_tol, scratch, &norm);
        out->norm += norm;
        for (uint32_t e = 0; e < n; e++)
            sc[e] = !sc[e];
        out->loss +=
            holdout_bcv_user(k, m->W, GT, GS, row, sc, v, n, l1, l2,
                             HOLDOUT_BCV_SWEEPS, m->p.nnls_tol, scratch, &norm);
        out->norm += norm;
        out->users++;
    }
    rc = 0;
out:
    free(start);
    free(order);
    free(mi);
    free(ti);
    free(tm);
    free(row);
    free(sc);
    free(v);
    free(G);
    return rc;
}

uint64_t holdout_events(const struct holdout *h)
{
    return h ? h->events : 0;
}

double holdout_weight_sum(const struct holdout *h)
{
    return h ? h->weight_sum : 0;
}

uint64_t holdout_entries(const struct holdout *h)
{
    return h ? h->n : 0;
}

size_t holdout_bytes(const struct holdout *h)
{
    if (!h)
        return 0;
    return sizeof(*h) + ids_bytes(h->users) + ids_bytes(h->items) +
           (size_t)h->cap *
               (2 * sizeof(uint32_t) + sizeof(double) + sizeof(int64_t)) +
           ((size_t)h->mask + 1) * sizeof(uint32_t) + ho_cache_bytes(&h->c);
}

/*
 * Section layout (little-endian): u64 events, f64 weight sum, then for
 * users and items each u32 slots and per slot u16 len and the bytes
 * (held-out ids are never forgotten, so every slot is live), then u32
 * entries and per entry u32 user, u32 item, f64 value, i64 time.
 */
static void ho_put_ids(const struct ids *t,
                       void (*put)(void *, const void *, size_t), void *ctx)
{
    uint32_t n = ids_slots(t);
    put(ctx, &n, sizeof(n));
    for (uint32_t x = 0; x < n; x++) {
        size_t len;
        const char *s = ids_get(t, x, &len);
        uint16_t l = (uint16_t)len;
        put(ctx, &l, sizeof(l));
        put(ctx, s, len);
    }
}

void holdout_save(const struct holdout *h,
                  void (*put)(void *ctx, const void *p, size_t len), void *ctx)
{
    put(ctx, &h->events, sizeof(h->events));
    put(ctx, &h->weight_sum, sizeof(h->weight_sum));
    ho_put_ids(h->users, put, ctx);
    ho_put_ids(h->items, put, ctx);
    put(ctx, &h->n, sizeof(h->n));
    for (uint32_t e = 0; e < h->n; e++) {
        put(ctx, &h->eu[e], sizeof(uint32_t));
        put(ctx, &h->ei[e], sizeof(uint32_t));
        put(ctx, &h->ev[e], sizeof(double));
        put(ctx, &h->et[e], sizeof(int64_t));
    }
}

struct ho_reader {
    const uint8_t *p;
    size_t n, off;
};

static int ho_get(struct ho_reader *r, void *out, size_t len)
{
    if (len > r->n - r->off)
        return -1;
    memcpy(out, r->p + r->off, len);
    r->off += len;
    return 0;
}

static const char *ho_get_ids(struct ho_reader *r, struct ids *t)
{
    uint32_t n;
    if (ho_get(r, &n, sizeof(n)))
        return "truncated";
    /* Every slot takes at least its 2-byte length. */
    if (n > (r->n - r->off) / 2)
        return "bad held-out ids";
    if (ids_load_slots(t, n))
        return "out of memory";
    for (uint32_t x = 0; x < n; x++) {
        uint16_t len;
        if (ho_get(r, &len, sizeof(len)))
            return "truncated";
        if (!len || len > MODEL_ID_MAX || len > r->n - r->off)
            return "bad held-out ids";
        int rc = ids_load_put(t, x, (const char *)r->p + r->off, len);
        if (rc == -EEXIST)
            return "duplicate held-out id";
        if (rc)
            return rc == -ENOMEM ? "out of memory" : "bad held-out ids";
        r->off += len;
    }
    if (ids_load_free(t, NULL, 0))
        return "bad held-out ids";
    return NULL;
}

const char *holdout_load(struct holdout *h, const uint8_t *p, size_t n,
                         size_t *used)
{
    struct ho_reader r = {.p = p, .n = n};
    const char *err;
    uint32_t cnt;
    if (ho_get(&r, &h->events, sizeof(h->events)) ||
        ho_get(&r, &h->weight_sum, sizeof(h->weight_sum)))
        return "truncated";
    if (!(h->weight_sum >= 0 && isfinite(h->weight_sum)))
        return "bad held-out counters";
    if ((err = ho_get_ids(&r, h->users)) || (err = ho_get_ids(&r, h->items)))
        return err;
    if (ho_get(&r, &cnt, sizeof(cnt)))
        return "truncated";
    if (cnt > (r.n - r.off) / 24 || cnt > h->events)
        return "bad held-out entries";
    const uint32_t U = ids_slots(h->users), I = ids_slots(h->items);
    for (uint32_t e = 0; e < cnt; e++) {
        uint32_t u, i;
        double v;
        int64_t t;
        if (ho_get(&r, &u, 4) || ho_get(&r, &i, 4) || ho_get(&r, &v, 8) ||
            ho_get(&r, &t, 8))
            return "truncated";
        if (u >= U || i >= I || !(v >= 0 && v <= MODEL_VALUE_MAX) || t < 0 ||
            t > MODEL_TS_MAX)
            return "bad held-out entry";
        if (ho_find(h, u, i) >= 0)
            return "duplicate held-out pair";
        if (ho_reserve(h))
            return "out of memory";
        h->eu[h->n] = u;
        h->ei[h->n] = i;
        h->ev[h->n] = v;
        h->et[h->n] = t;
        ho_place(h->slot, h->mask, u, i, h->n);
        h->n++;
        if (t > h->tmax)
            h->tmax = t;
    }
    *used = r.off;
    return NULL;
}
