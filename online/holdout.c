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
 * users' rows of bi-cross-validation) and its state section; it reads the
 * model's W and H to score and must never change the model.
 *
 * Scoring costs O(entries k) plus one id lookup per held-out user and
 * item, against the current W and H: a held-out user or item the model
 * does not know (all its pairs held out, or forgotten by ttl) predicts 0.
 * With a half-life, the entry is valued at the model's latest time T,
 * V_ho decayed by 2^(-(T - t)/half_life), and the prediction, which fits
 * the user's profile at its time t_u, by 2^(-(T - t_u)/half_life).
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
};

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
    return 0;
}

static inline double ho_decay(int64_t dt, int64_t hl)
{
    return hl > 0 && dt > 0 ? exp2(-(double)dt / (double)hl) : 1.0;
}

void holdout_score(const struct holdout *h, const struct model *m,
                   struct holdout_score *out)
{
    memset(out, 0, sizeof(*out));
    if (!h || !h->n)
        return;
    const uint32_t k = m->k;
    const int64_t hl = m->p.half_life_ms;
    int64_t now = m->has_time ? m->T : 0;
    for (uint32_t e = 0; e < h->n; e++)
        if (h->et[e] > now)
            now = h->et[e];
    /* The model's index of each held-out user and item, looked up once;
     * without the memory, once per entry. */
    const uint32_t U = ids_slots(h->users), I = ids_slots(h->items);
    int64_t *mu = malloc((size_t)U * sizeof(*mu));
    int64_t *mi = malloc((size_t)I * sizeof(*mi));
    if (mu && mi) {
        for (uint32_t u = 0; u < U; u++) {
            size_t len;
            const char *s = ids_get(h->users, u, &len);
            mu[u] = s ? ids_find(m->uids, s, len) : -1;
        }
        for (uint32_t i = 0; i < I; i++) {
            size_t len;
            const char *s = ids_get(h->items, i, &len);
            mi[i] = s ? ids_find(m->iids, s, len) : -1;
        }
    }
    for (uint32_t e = 0; e < h->n; e++) {
        if (m->p.ttl_ms > 0 && h->et[e] < now - m->p.ttl_ms)
            continue; /* forgotten, as the model forgets */
        int64_t u, i;
        size_t len;
        const char *s;
        if (mu && mi) {
            u = mu[h->eu[e]];
            i = mi[h->ei[e]];
        } else {
            s = ids_get(h->users, h->eu[e], &len);
            u = ids_find(m->uids, s, len);
            s = ids_get(h->items, h->ei[e], &len);
            i = ids_find(m->iids, s, len);
        }
        double v = h->ev[e] * ho_decay(now - h->et[e], hl), p = 0;
        if (u >= 0 && i >= 0 && (m->u[u].flags & MODEL_U_LIVE)) {
            const float *wi = m->W + (size_t)i * k;
            const float *hu = m->H + (size_t)u * k;
            for (uint32_t j = 0; j < k; j++)
                p += (double)wi[j] * ((double)hu[j] * m->hs[j]);
            p *= ho_decay(now - m->u[u].t, hl);
        }
        out->loss += (v - p) * (v - p);
        out->norm += v * v;
        out->pairs++;
    }
    free(mu);
    free(mi);
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
           ((size_t)h->mask + 1) * sizeof(uint32_t);
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
    }
    *used = r.off;
    return NULL;
}
