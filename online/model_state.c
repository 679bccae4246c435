/* online/model_state.c -- the model's complete state as bytes.
 *
 * model_save streams everything that determines the model's future
 * behaviour (parameters, ids, W, B, A, G, profiles, h, per-user times,
 * losses and epochs, counters, generator state) through the caller's
 * writer, in a fixed little-endian layout with a magic, a version, explicit
 * lengths and a trailing 64-bit checksum. model_load checks the checksum,
 * then every length, index and number (finite, within the magnitudes the
 * model keeps them to, ids unique, profiles referring to live items once),
 * then the statistics against the users and W they summarise
 * (state_verify), and builds a fresh model that behaves bit for bit like
 * the saved one, or returns NULL with a static message. It must never do I/O
 * itself, never trust a length before checking it against the bytes left, and
 * never return a partly built model.
 *
 * Layout (all little-endian):
 *   "NMFDMODL" u32 version u32 k
 *   params, scalars (version 2 added the restart counters, version 6
 *   the refresh work counters), RNG state,
 *   A (k*k f64), G (k*k f64), bcol (k f64), hs (k f64, version 4)
 *   items: u32 slots, u32 nfree, per slot u16 len (0 = free) [bytes,
 *          i64 last time], nfree u32 free list (next reused first),
 *          W (slots*k f32), B (slots*k f64)
 *   users: u32 slots, u32 nfree, per slot u16 len (0 = free) [bytes,
 *          i64 t, u64 changed, f32 loss, f32 vnorm, u32 solved, u32 n,
 *          u8 marked segment, u16 marked share, f32 marked sum (version
 *          3), u8 B flags (in B; version 5: in B with g), u8 cached
 *          [u64 generation, k f64 W^T v, (version 5, with g) k f64 g],
 *          k f32 h, n u32 items, n f32 values], nfree u32 free list
 *   evictions (version 6): f64 evicted weight, u32 count, count x (u32
 *          user slot, increasing, f32 evicted mass within its vnorm)
 *   held-out pairs (version 7): f64 share, u64 salt, the section of
 *          holdout.c (holdout_save); in version 8 a share of 0 stands
 *          for none, with nothing after it
 *   variant (version 8): u32 robust (0 none, 1 l21), u32 loss (0
 *          frobenius, 1 kl); with kl, f64 kb[k] and each live user's
 *          n f32 ratios q, in slot order (B then holds sum c q h^T)
 *   robust weights (version 9, written with robust = l21 only; an l21
 *          state of version 8 had weights that followed from the loss
 *          and is refused): f64 threshold Q, each live user's u8
 *          weight code, in slot order (robust.c)
 *   u64 checksum of everything before it
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hals.h"
#include "model_impl.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model_state.c writes its arrays in native order: little-endian only"
#endif

#define STATE_MAGIC "NMFDMODL"
/* Reads 4 to 7 too: 7 is 8 without the variant (robust = none, loss =
 * frobenius, the only ones then) and always with held-out pairs, 6 is 7
 * without them, 5 is 6 without the refresh work counters (they start at
 * 0, so the first refresh after the load may come a little later than it
 * would have) and without the evictions (none was counted then), 4 is 5
 * without g. */
#define STATE_VERSION 9u
/* Written by a variant without robust = l21 (kl). */
#define STATE_VERSION_VARIANT 8u
/* A model of the default variant writes version 7 with held-out pairs
 * and 6 without: its state is byte for byte what it was before the next
 * version existed. */
#define STATE_VERSION_HOLDOUT 7u
#define STATE_VERSION_PLAIN   6u
#define STATE_BUF             65536

/* A streaming 64-bit checksum in the style of xxHash64's rounds: detects
 * corruption, not tampering. */
struct state_hash {
    uint64_t v[4];
    uint8_t tail[32];
    size_t nt;
    uint64_t total;
};

#define SH_P1 0x9e3779b185ebca87ull
#define SH_P2 0xc2b2ae3d27d4eb4full
#define SH_P3 0x165667b19e3779f9ull

static inline uint64_t sh_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t sh_round(uint64_t acc, uint64_t in)
{
    acc += in * SH_P2;
    acc = sh_rotl(acc, 31);
    return acc * SH_P1;
}

static void sh_init(struct state_hash *h)
{
    memset(h, 0, sizeof(*h));
    h->v[0] = SH_P1 + SH_P2;
    h->v[1] = SH_P2;
    h->v[2] = 0;
    h->v[3] = -SH_P1;
}

static void sh_block(struct state_hash *h, const uint8_t *p)
{
    for (int i = 0; i < 4; i++) {
        uint64_t x;
        memcpy(&x, p + 8 * i, 8);
        h->v[i] = sh_round(h->v[i], x);
    }
}

static void sh_update(struct state_hash *h, const uint8_t *p, size_t n)
{
    h->total += n;
    if (h->nt) {
        size_t c = 32 - h->nt < n ? 32 - h->nt : n;
        memcpy(h->tail + h->nt, p, c);
        h->nt += c;
        p += c;
        n -= c;
        if (h->nt < 32)
            return;
        sh_block(h, h->tail);
        h->nt = 0;
    }
    for (; n >= 32; p += 32, n -= 32)
        sh_block(h, p);
    memcpy(h->tail, p, n);
    h->nt = n;
}

static uint64_t sh_final(const struct state_hash *h)
{
    uint64_t a = sh_rotl(h->v[0], 1) + sh_rotl(h->v[1], 7) +
                 sh_rotl(h->v[2], 12) + sh_rotl(h->v[3], 18);
    a ^= h->total * SH_P3;
    for (size_t i = 0; i < h->nt; i++)
        a = sh_rotl(a ^ (h->tail[i] * SH_P3), 11) * SH_P1;
    a ^= a >> 33;
    a *= SH_P2;
    a ^= a >> 29;
    a *= SH_P3;
    return a ^ (a >> 32);
}

uint64_t model__state_checksum(const void *buf, size_t len)
{
    struct state_hash h;
    sh_init(&h);
    sh_update(&h, buf, len);
    return sh_final(&h);
}

struct state_writer {
    model_write_fn fn;
    void *ctx;
    uint8_t *buf;
    size_t n;
    int err;
    struct state_hash h;
};

static void sw_flush(struct state_writer *w)
{
    if (!w->n || w->err)
        return;
    sh_update(&w->h, w->buf, w->n);
    int rc = w->fn(w->ctx, w->buf, w->n);
    if (rc)
        w->err = rc < 0 ? rc : -EIO;
    w->n = 0;
}

static void sw_put(struct state_writer *w, const void *p, size_t len)
{
    const uint8_t *s = p;
    while (len && !w->err) {
        size_t c = STATE_BUF - w->n < len ? STATE_BUF - w->n : len;
        memcpy(w->buf + w->n, s, c);
        w->n += c;
        s += c;
        len -= c;
        if (w->n == STATE_BUF)
            sw_flush(w);
    }
}

#define SW(w, x) sw_put((w), &(x), sizeof(x))

static void sw_put_cb(void *ctx, const void *p, size_t len)
{
    sw_put(ctx, p, len);
}

static void sw_u8(struct state_writer *w, uint8_t x)
{
    SW(w, x);
}
static void sw_u16(struct state_writer *w, uint16_t x)
{
    SW(w, x);
}
static void sw_u32(struct state_writer *w, uint32_t x)
{
    SW(w, x);
}
static void sw_u64(struct state_writer *w, uint64_t x)
{
    SW(w, x);
}
static void sw_i64(struct state_writer *w, int64_t x)
{
    SW(w, x);
}
static void sw_f64(struct state_writer *w, double x)
{
    SW(w, x);
}

static void sw_params(struct state_writer *w, const struct model_params *p)
{
    sw_u32(w, p->k);
    sw_i64(w, p->half_life_ms);
    sw_f64(w, p->alpha_h);
    sw_f64(w, p->alpha_w);
    sw_f64(w, p->l1_ratio);
    sw_u32(w, p->profile_max);
    sw_u64(w, p->refresh_events);
    sw_i64(w, p->ttl_ms);
    sw_u64(w, p->seed);
    sw_u64(w, p->warmup_events);
    sw_u32(w, p->nnls_sweeps);
    sw_f64(w, p->nnls_tol);
    sw_u32(w, p->hals_sweeps);
    sw_f64(w, p->refine_tol);
}

static void sw_free_list(struct state_writer *w, const struct ids *t)
{
    for (int64_t i = ids_free_next(t, -1); i >= 0; i = ids_free_next(t, i))
        sw_u32(w, (uint32_t)i);
}

int model_save(const struct model *m, model_write_fn write, void *ctx)
{
    const uint32_t k = m->k;
    struct state_writer w = {.fn = write, .ctx = ctx};
    w.buf = malloc(STATE_BUF);
    if (!w.buf)
        return -ENOMEM;
    sh_init(&w.h);

    sw_put(&w, STATE_MAGIC, 8);
    const int variant =
        m->p.robust != MODEL_ROBUST_NONE || m->p.loss != MODEL_LOSS_FROBENIUS;
    const int l21 = m->p.robust == MODEL_ROBUST_L21;
    sw_u32(&w, l21       ? STATE_VERSION
               : variant ? STATE_VERSION_VARIANT
               : m->ho   ? STATE_VERSION_HOLDOUT
                         : STATE_VERSION_PLAIN);
    sw_u32(&w, k);
    sw_params(&w, &m->p);
    sw_i64(&w, m->T);
    sw_i64(&w, m->T0);
    sw_u8(&w, m->has_time);
    sw_u8(&w, m->warm_done);
    sw_u8(&w, m->dirty);
    sw_u8(&w, 0);
    sw_u32(&w, m->cursor);
    sw_u32(&w, m->reparams);
    sw_u64(&w, m->wgen);
    sw_f64(&w, m->loss_s);
    sw_f64(&w, m->norm_s);
    sw_u64(&w, m->events);
    sw_f64(&w, m->weight_sum);
    sw_u64(&w, m->refreshes);
    sw_u64(&w, m->epoch);
    sw_u64(&w, m->since_refresh);
    sw_u64(&w, m->stale);
    sw_u64(&w, m->refine_events);
    sw_f64(&w, m->refine_prev);
    sw_u64(&w, m->restart_events);
    sw_u64(&w, m->restarts);
    sw_u64(&w, m->work);
    sw_u64(&w, m->sync_rows);
    for (int i = 0; i < 4; i++)
        sw_u64(&w, m->rng.s[i]);
    sw_put(&w, m->A, (size_t)k * k * sizeof(double));
    sw_put(&w, m->G, (size_t)k * k * sizeof(double));
    sw_put(&w, m->bcol, (size_t)k * sizeof(double));
    sw_put(&w, m->hs, (size_t)k * sizeof(double));

    uint32_t M = ids_slots(m->iids);
    sw_u32(&w, M);
    sw_u32(&w, ids_free_count(m->iids));
    for (uint32_t i = 0; i < M; i++) {
        size_t len = 0;
        const char *id = ids_get(m->iids, i, &len);
        sw_u16(&w, (uint16_t)(id ? len : 0));
        if (!id)
            continue;
        sw_put(&w, id, len);
        sw_i64(&w, m->item_t[i]);
    }
    sw_free_list(&w, m->iids);
    sw_put(&w, m->W, (size_t)M * k * sizeof(float));
    sw_put(&w, m->B, (size_t)M * k * sizeof(double));

    uint32_t U = ids_slots(m->uids);
    sw_u32(&w, U);
    sw_u32(&w, ids_free_count(m->uids));
    for (uint32_t u = 0; u < U; u++) {
        size_t len = 0;
        const char *id = ids_get(m->uids, u, &len);
        sw_u16(&w, (uint16_t)(id ? len : 0));
        if (!id)
            continue;
        const struct model_user *us = &m->u[u];
        sw_put(&w, id, len);
        sw_i64(&w, us->t);
        sw_u64(&w, us->changed);
        sw_put(&w, &us->loss, sizeof(float));
        sw_put(&w, &us->vnorm, sizeof(float));
        sw_u32(&w, us->solved);
        sw_u32(&w, us->n);
        sw_u8(&w, us->mseg);
        sw_u16(&w, us->mshare);
        sw_put(&w, &us->msum, sizeof(float));
        sw_u8(&w, us->flags & (MODEL_U_INB | MODEL_U_GB));
        sw_u8(&w, us->bslot != POOL_NONE);
        if (us->bslot != POOL_NONE) {
            sw_u64(&w, m->bc_gen[us->bslot]);
            sw_put(&w, m->bc + (size_t)us->bslot * k, k * sizeof(double));
            if (us->flags & MODEL_U_GB)
                sw_put(&w, m->bg + (size_t)us->bslot * k, k * sizeof(double));
        }
        sw_put(&w, m->H + (size_t)u * k, k * sizeof(float));
        if (us->n) {
            sw_put(&w, pool_items(&m->pool, us->cls, us->slab),
                   us->n * sizeof(uint32_t));
            sw_put(&w, pool_vals(&m->pool, us->cls, us->slab),
                   us->n * sizeof(float));
        }
    }
    sw_free_list(&w, m->uids);
    uint32_t nev = 0;
    for (uint32_t u = 0; u < U; u++)
        nev += (m->u[u].flags & MODEL_U_EV) != 0;
    sw_f64(&w, m->evicted_weight);
    sw_u32(&w, nev);
    for (uint32_t u = 0; u < U; u++) {
        if (!(m->u[u].flags & MODEL_U_EV))
            continue;
        sw_u32(&w, u);
        sw_put(&w, &m->uev[u], sizeof(float));
    }
    if (m->ho) {
        sw_f64(&w, m->p.holdout);
        sw_u64(&w, m->p.holdout_salt);
        holdout_save(m->ho, sw_put_cb, &w);
    } else if (variant) {
        sw_f64(&w, 0);
    }
    if (variant) {
        sw_u32(&w, m->p.robust);
        sw_u32(&w, m->p.loss);
    }
    if (model__kl(m)) {
        sw_put(&w, m->kb, (size_t)k * sizeof(double));
        for (uint32_t u = 0; u < U; u++) {
            const struct model_user *us = &m->u[u];
            if ((us->flags & MODEL_U_LIVE) && us->n)
                sw_put(&w, pool_aux(&m->pool, us->cls, us->slab),
                       us->n * sizeof(float));
        }
    }
    if (l21) {
        sw_f64(&w, m->l21_q);
        for (uint32_t u = 0; u < U; u++)
            if (m->u[u].flags & MODEL_U_LIVE)
                sw_u8(&w, m->u[u].wq);
    }
    sw_flush(&w);
    if (!w.err) {
        uint64_t sum = sh_final(&w.h);
        int rc = write(ctx, &sum, sizeof(sum));
        if (rc)
            w.err = rc < 0 ? rc : -EIO;
    }
    free(w.buf);
    return w.err;
}

struct state_reader {
    const uint8_t *p;
    size_t n, off;
    int bad;
};

static int sr_get(struct state_reader *r, void *out, size_t len)
{
    if (!len) /* out may be NULL then (an empty model's W and B) */
        return r->bad ? -1 : 0;
    if (r->bad || len > r->n - r->off) {
        r->bad = 1;
        memset(out, 0, len);
        return -1;
    }
    memcpy(out, r->p + r->off, len);
    r->off += len;
    return 0;
}

/* Whether len more bytes are there (for sizes before allocating). */
static int sr_has(const struct state_reader *r, uint64_t len)
{
    return !r->bad && len <= r->n - r->off;
}

#define SR(r, x) sr_get((r), &(x), sizeof(x))

static void sr_params(struct state_reader *r, struct model_params *p)
{
    memset(p, 0, sizeof(*p));
    SR(r, p->k);
    SR(r, p->half_life_ms);
    SR(r, p->alpha_h);
    SR(r, p->alpha_w);
    SR(r, p->l1_ratio);
    SR(r, p->profile_max);
    SR(r, p->refresh_events);
    SR(r, p->ttl_ms);
    SR(r, p->seed);
    SR(r, p->warmup_events);
    SR(r, p->nnls_sweeps);
    SR(r, p->nnls_tol);
    SR(r, p->hals_sweeps);
    SR(r, p->refine_tol);
}

static int state_finite(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

static int state_time_ok(int64_t t)
{
    return t >= 0 && t <= MODEL_TS_MAX;
}

/* Reads the slot count and free-list length of an id table and sizes the
 * model for it. Returns a message or NULL. */
static const char *state_ids(struct state_reader *r, struct model *m,
                             struct ids *t, int items, uint32_t *nslots,
                             uint32_t *nfreep)
{
    uint32_t n = 0, nfree = 0;
    SR(r, n);
    SR(r, nfree);
    /* Every slot takes at least 2 bytes, every free index 4. */
    if (!sr_has(r, 2ull * n + 4ull * nfree) || nfree > n)
        return "truncated or inconsistent id table";
    int rc = items ? model__items_grow(m, n) : model__users_grow(m, n);
    if (rc || ids_load_slots(t, n))
        return "out of memory";
    *nslots = n;
    *nfreep = nfree;
    return NULL;
}

static const char *state_free_list(struct state_reader *r, struct ids *t,
                                   uint32_t nfree)
{
    if (!sr_has(r, 4ull * nfree))
        return "truncated";
    uint32_t *fl = malloc(nfree ? 4ull * nfree : 1);
    if (!fl)
        return "out of memory";
    sr_get(r, fl, 4ull * nfree);
    int rc = ids_load_free(t, fl, nfree);
    free(fl);
    return rc ? "bad free list" : NULL;
}

static double state_max_abs_diff(const double *a, const double *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs(a[i] - b[i]) <= d))
            d = fabs(a[i] - b[i]);
    return d;
}

/*
 * The stored statistics against the users they summarise: G = W^T W,
 * A = sum_u c_u h_u h_u^T, the column sums of B over the users whose share
 * is in it (B >= 0, so they bound every entry), the loss sums, and each
 * valid cached W^T v against the profile. The model keeps them exact up to
 * a drift of about 1e-6 (one float rounding of h per rescaling refresh,
 * rebuilt every MODEL_REBUILD_EVERY refreshes); 1e-3 of the data's own scale
 * refuses what no run can produce (a crafted state with valid checksums) and no
 * state that one did. Without any profile the model holds them at exactly
 * zero. O(nnz k + users k^2 + items k^2), like one rebuild.
 */
static const char *state_verify(struct model *m)
{
    const uint32_t k = m->k, U = ids_slots(m->uids), M = ids_slots(m->iids);
    const size_t kk = (size_t)k * k;
    double bsum[MODEL_K_MAX], babs[MODEL_K_MAX];
    double *A = calloc(kk, sizeof(double)), *G = calloc(kk, sizeof(double));
    double loss = 0, norm = 0, gmax = 0;
    const char *err = NULL;
    if (!A || !G) {
        err = "out of memory";
        goto out;
    }
    hals_gram(k, M, m->W, NULL, G);
    for (size_t i = 0; i < kk; i++)
        if (fabs(G[i]) > gmax)
            gmax = fabs(G[i]);
    if (!(state_max_abs_diff(m->G, G, kk) <= 1e-6 * gmax)) {
        err = "G does not match W";
        goto out;
    }
    for (uint32_t j = 0; j < k; j++)
        bsum[j] = babs[j] = 0;
    m->nprof = 0;
    for (uint32_t u = 0; u < U && !err; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE))
            continue;
        if (!model__kl(m) && !(us->loss <= us->vnorm)) {
            err = "bad user loss";
            break;
        }
        const float *hu = m->H + (size_t)u * k;
        double h[MODEL_K_MAX];
        for (uint32_t j = 0; j < k; j++)
            h[j] = (double)hu[j] * m->hs[j];
        double c = model__frame_weight(m, us->t), vsum = 0;
        const double d = model__uweight(m, us);
        m->dsum += d;
        if (us->n) {
            /* loss = kl: B holds c q h^T, q the stored ratios. */
            const float *va = model__kl(m)
                                  ? pool_aux(&m->pool, us->cls, us->slab)
                                  : pool_vals(&m->pool, us->cls, us->slab);
            for (uint32_t q = 0; q < us->n; q++)
                vsum += va[q];
            m->nprof++;
        }
        const double *g =
            us->flags & MODEL_U_GB ? m->bg + (size_t)us->bslot * k : NULL;
        for (uint32_t j = 0; j < k; j++) {
            double cj = c * d * h[j];
            if (g)
                bsum[j] += c * g[j] * m->bcol[j] * vsum;
            else if (us->flags & MODEL_U_INB)
                bsum[j] += cj * vsum;
            if (cj == 0)
                continue;
            for (uint32_t l = 0; l < k; l++)
                A[(size_t)j * k + l] += cj * h[l];
        }
        loss += c * us->loss;
        norm += c * us->vnorm;
        if (us->bslot != POOL_NONE && m->bc_gen[us->bslot] == m->wgen) {
            const double *bc = m->bc + (size_t)us->bslot * k;
            for (uint32_t j = 0; j < k; j++)
                if (!(fabs(bc[j]) <= 1.001 * MODEL_W_MAX * vsum))
                    err = "bad cached product";
        }
    }
    if (err)
        goto out;
    if (!m->nprof) {
        for (size_t i = 0; i < kk; i++)
            if (m->A[i] != 0)
                err = "statistics without data";
        for (size_t i = 0; i < (size_t)M * k; i++)
            if (m->B[i] != 0)
                err = "statistics without data";
        if (m->loss_s != 0 || m->norm_s != 0)
            err = "statistics without data";
        goto out;
    }
    double scale = norm;
    for (size_t i = 0; i < kk; i++)
        if (fabs(A[i]) > scale)
            scale = fabs(A[i]);
    const double tol = 1e-3 * scale;
    if (!(state_max_abs_diff(m->A, A, kk) <= tol))
        err = "A does not match the users";
    else if (!(fabs(m->loss_s - loss) <= 1e-3 * norm) ||
             !(fabs(m->norm_s - norm) <= 1e-3 * norm))
        err = "loss sums do not match the users";
    if (err)
        goto out;
    for (uint32_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            babs[j] += fabs(m->B[(size_t)i * k + j]);
    for (uint32_t j = 0; j < k; j++)
        if (!(babs[j] * m->bcol[j] <= (1 + 1e-3) * bsum[j] + tol))
            err = "B does not match the users";
out:
    free(A);
    free(G);
    return err;
}

/* The evicted mass of the users whose profiles lost entries: part of
 * their vnorm, so at most that, and only where a profile is. */
static const char *state_evictions(struct state_reader *r, struct model *m,
                                   uint32_t U)
{
    uint32_t nev = 0, prev = 0;
    SR(r, m->evicted_weight);
    SR(r, nev);
    if (r->bad)
        return "truncated";
    if (!(m->evicted_weight >= 0 && isfinite(m->evicted_weight)) || nev > U)
        return "bad evictions";
    for (uint32_t q = 0; q < nev; q++) {
        uint32_t u = 0;
        float e = 0;
        SR(r, u);
        SR(r, e);
        if (r->bad)
            return "truncated";
        if (u >= U || (q && u <= prev) || !(m->u[u].flags & MODEL_U_LIVE) ||
            !m->u[u].n || !(e > 0 && e <= m->u[u].vnorm))
            return "bad evictions";
        m->uev[u] = e;
        m->u[u].flags |= MODEL_U_EV;
        prev = u;
    }
    return NULL;
}

/* The held-out pairs: a share in (0, 1) (a model without them writes
 * version 6, or in version 8 a share of 0 and nothing else), their salt,
 * then holdout.c's section. */
static const char *state_holdout(struct state_reader *r, struct model *m,
                                 uint32_t version)
{
    double share = 0;
    uint64_t salt = 0;
    SR(r, share);
    if (r->bad)
        return "truncated";
    if (version >= 8 && share == 0 && !signbit(share))
        return NULL;
    SR(r, salt);
    if (r->bad)
        return "truncated";
    if (!(share > 0 && share < 1))
        return "bad held-out share";
    m->p.holdout = share;
    m->p.holdout_salt = salt;
    if (!(m->ho = holdout_new(share, salt)))
        return "out of memory";
    size_t used = 0;
    const char *err = holdout_load(m->ho, r->p + r->off, r->n - r->off, &used);
    if (err)
        return err;
    r->off += used;
    return NULL;
}

/* loss = kl: kb, then each live user's ratios q (n f32 >= 0), into
 * profile slabs that have their room (model__kl_load). */
static const char *state_kl(struct state_reader *r, struct model *m)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    if (model__kl_load(m))
        return "out of memory";
    sr_get(r, m->kb, (size_t)k * sizeof(double));
    for (uint32_t j = 0; j < k; j++)
        if (!(isfinite(m->kb[j]) && m->kb[j] >= 0))
            return "bad KL statistics";
    for (uint32_t u = 0; u < U && !r->bad; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n)
            continue;
        float *qa = pool_aux(&m->pool, us->cls, us->slab);
        sr_get(r, qa, us->n * sizeof(float));
        for (uint32_t q = 0; q < us->n && !r->bad; q++)
            if (!(qa[q] >= 0 && qa[q] <= MODEL_KL_QMAX))
                return "bad KL ratios";
    }
    return r->bad ? "truncated" : NULL;
}

/* The variant (version 8): robust and loss, a pair the parameters'
 * check accepts and not the default one (which writes 6 or 7), then
 * kl's section. */
static const char *state_variant(struct state_reader *r, struct model *m,
                                 uint32_t version)
{
    SR(r, m->p.robust);
    SR(r, m->p.loss);
    if (r->bad)
        return "truncated";
    if (model_params_check(&m->p) ||
        (m->p.robust == MODEL_ROBUST_NONE && m->p.loss == MODEL_LOSS_FROBENIUS))
        return "bad model variant";
    if ((m->p.robust == MODEL_ROBUST_L21) != (version >= 9))
        return m->p.robust == MODEL_ROBUST_L21
                   ? "robust = l21 state of an earlier weight: refit"
                   : "bad model variant";
    const char *err = model__kl(m) ? state_kl(r, m) : NULL;
    if (err || m->p.robust != MODEL_ROBUST_L21)
        return err;
    /* The weights' threshold and codes (version 9), and the histogram
     * (the parameters read first said robust = none). */
    if (!m->l21_hist &&
        !(m->l21_hist = calloc(MODEL_L21_BINS, sizeof(uint32_t))))
        return "out of memory";
    SR(r, m->l21_q);
    if (r->bad)
        return "truncated";
    if (!(m->l21_q >= 0 && m->l21_q < 1e300))
        return "bad robust threshold";
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U && !r->bad; u++) {
        if (!(m->u[u].flags & MODEL_U_LIVE))
            continue;
        SR(r, m->u[u].wq);
        if (m->u[u].wq > MODEL_L21_CODE_MAX)
            return "bad robust weight";
    }
    if (r->bad)
        return "truncated";
    model__l21_recount(m);
    return NULL;
}

/* The header, the format version and the parameters; the empty model
 * they describe is allocated into *out (the caller frees it on error). */
static const char *state_load_head(struct state_reader *r, struct model **out,
                                   uint32_t *versionp)
{
    char magic[8];
    uint32_t version = 0, k = 0;
    struct model_params p;
    sr_get(r, magic, 8);
    if (r->bad || memcmp(magic, STATE_MAGIC, 8))
        return "not a model state";
    SR(r, version);
    if (version < 4 || version > STATE_VERSION)
        return "unsupported model state version";
    SR(r, k);
    sr_params(r, &p);
    if (r->bad)
        return "truncated";
    if (model_params_check(&p) || p.k != k)
        return "bad model parameters";
    *out = model__alloc(&p);
    if (!*out)
        return "out of memory";
    *versionp = version;
    return NULL;
}

/* The model's clocks, totals, counters, generator and k x k statistics,
 * each checked against what a model can hold. */
static const char *state_load_totals(struct state_reader *r, struct model *m,
                                     uint32_t version)
{
    const uint32_t k = m->k;
    uint8_t pad = 0;
    SR(r, m->T);
    SR(r, m->T0);
    SR(r, m->has_time);
    SR(r, m->warm_done);
    SR(r, m->dirty);
    SR(r, pad);
    SR(r, m->cursor);
    SR(r, m->reparams);
    SR(r, m->wgen);
    SR(r, m->loss_s);
    SR(r, m->norm_s);
    SR(r, m->events);
    SR(r, m->weight_sum);
    SR(r, m->refreshes);
    SR(r, m->epoch);
    SR(r, m->since_refresh);
    SR(r, m->stale);
    SR(r, m->refine_events);
    SR(r, m->refine_prev);
    SR(r, m->restart_events);
    SR(r, m->restarts);
    if (version >= 6) {
        SR(r, m->work);
        SR(r, m->sync_rows);
    }
    for (int i = 0; i < 4; i++)
        SR(r, m->rng.s[i]);
    size_t kk = (size_t)k * k;
    sr_get(r, m->A, kk * sizeof(double));
    sr_get(r, m->G, kk * sizeof(double));
    sr_get(r, m->bcol, k * sizeof(double));
    sr_get(r, m->hs, k * sizeof(double));
    if (r->bad)
        return "truncated";
    if (m->has_time > 1 || m->warm_done > 1 || m->dirty > 1 || pad)
        return "bad flags";
    if (!m->has_time && (m->T || m->T0 || m->events))
        return "bad times";
    if (!state_time_ok(m->T) || !state_time_ok(m->T0) || m->T0 > m->T)
        return "bad times";
    if (m->p.half_life_ms > 0 &&
        (double)(m->T - m->T0) > MODEL_FRAME_SPAN * (double)m->p.half_life_ms)
        return "bad time frame";
    if (!isfinite(m->loss_s) || !isfinite(m->norm_s) ||
        !isfinite(m->weight_sum) || !(m->weight_sum >= 0) ||
        !isfinite(m->refine_prev) || m->refine_prev < -1)
        return "bad totals";
    if (m->restart_events > m->events || m->refine_events > m->events)
        return "bad counters";
    if (!(m->rng.s[0] | m->rng.s[1] | m->rng.s[2] | m->rng.s[3]))
        return "bad generator state";
    if (!state_finite(m->A, kk) || !state_finite(m->G, kk))
        return "bad statistics";
    for (uint32_t j = 0; j < k; j++) {
        if (!(m->bcol[j] >= MODEL_BCOL_MIN && m->bcol[j] <= MODEL_BCOL_MAX))
            return "bad statistics";
        if (!(m->hs[j] >= 1.0 / MODEL_HS_RANGE && m->hs[j] <= MODEL_HS_RANGE))
            return "bad column scales of h";
        m->hsi[j] = 1.0 / m->hs[j];
    }
    return NULL;
}

/* The item table: ids and last times, the free list, then W and B (a
 * forgotten item holds zero rows). *Mp: the item slots. */
static const char *state_load_items(struct state_reader *r, struct model *m,
                                    uint32_t *Mp)
{
    const uint32_t k = m->k;
    uint32_t M = 0, nfree = 0;
    const char *err = state_ids(r, m, m->iids, 1, &M, &nfree);
    if (err)
        return err;
    for (uint32_t i = 0; i < M; i++) {
        uint16_t len = 0;
        char id[MODEL_ID_MAX];
        SR(r, len);
        m->item_t[i] = 0;
        if (!len)
            continue;
        if (len > MODEL_ID_MAX)
            return "bad item id";
        sr_get(r, id, len);
        SR(r, m->item_t[i]);
        if (r->bad)
            return "truncated";
        if (!state_time_ok(m->item_t[i]))
            return "bad item time";
        int rc = ids_load_put(m->iids, i, id, len);
        if (rc == -EEXIST)
            return "duplicate item id";
        if (rc)
            return "out of memory";
    }
    if ((err = state_free_list(r, m->iids, nfree)))
        return err;
    if (!sr_has(r, (uint64_t)M * k * (sizeof(float) + sizeof(double))))
        return "truncated";
    sr_get(r, m->W, (size_t)M * k * sizeof(float));
    sr_get(r, m->B, (size_t)M * k * sizeof(double));
    for (uint32_t i = 0; i < M; i++) {
        int live = ids_get(m->iids, i, NULL) != NULL;
        for (uint32_t j = 0; j < k; j++) {
            float w = m->W[(size_t)i * k + j];
            double b = m->B[(size_t)i * k + j];
            if (!(w >= 0 && w <= MODEL_W_MAX) || !isfinite(b))
                return "bad W or B";
            if (!live && (w != 0 || b != 0))
                return "forgotten item with a W or B row";
        }
    }
    model__w_changed(m, 0, M);
    *Mp = M;
    return NULL;
}

/* The cached products of a user record (b = W^T v, and g when B's share
 * is held with it) in a slot of the cache. */
static const char *state_load_user_cache(struct state_reader *r,
                                         struct model *m, struct model_user *us,
                                         uint8_t flags)
{
    const uint32_t k = m->k;
    if (model__bcache_reserve(m))
        return "out of memory";
    us->bslot = model__bcache_take(m);
    double *bc = m->bc + (size_t)us->bslot * k;
    SR(r, m->bc_gen[us->bslot]);
    sr_get(r, bc, k * sizeof(double));
    if (!state_finite(bc, k))
        return "bad cached product";
    if (flags & MODEL_U_GB) {
        double *g = m->bg + (size_t)us->bslot * k;
        sr_get(r, g, k * sizeof(double));
        for (uint32_t j = 0; j < k; j++)
            if (!(g[j] >= 0 && g[j] < INFINITY))
                return "bad h";
    }
    return NULL;
}

/* The n entries of a user's profile into a slab of the pool; stamp marks
 * the items of user u's profile (an item twice is an error). */
static const char *state_load_profile(struct state_reader *r, struct model *m,
                                      struct model_user *us, uint32_t u,
                                      uint32_t n, uint32_t M, uint32_t *stamp)
{
    uint32_t c = pool_class_for(n);
    if (pool_reserve(&m->pool, c))
        return "out of memory";
    us->slab = pool_alloc(&m->pool, c);
    us->cls = (uint8_t)c;
    uint32_t *it = pool_items(&m->pool, c, us->slab);
    float *va = pool_vals(&m->pool, c, us->slab);
    sr_get(r, it, 4ull * n);
    sr_get(r, va, 4ull * n);
    us->n = (uint16_t)n;
    for (uint32_t q = 0; q < n; q++) {
        if (it[q] >= M || !ids_get(m->iids, it[q], NULL) ||
            stamp[it[q]] == u + 1)
            return "bad profile item";
        if (!(va[q] >= FLT_MIN && va[q] <= MODEL_VALUE_MAX))
            return "bad profile value";
        stamp[it[q]] = u + 1;
    }
    return NULL;
}

/* One user record: id, clocks, loss, marks, flags, the cached products,
 * h and the profile, each checked. An empty slot is a free one; *stale
 * counts the users not re-solved since the last refresh. */
static const char *state_load_user(struct state_reader *r, struct model *m,
                                   uint32_t u, uint32_t version, uint32_t M,
                                   uint32_t *stamp, uint64_t *stale)
{
    const uint32_t k = m->k;
    const char *err;
    uint16_t len = 0;
    char id[MODEL_ID_MAX];
    struct model_user *us = &m->u[u];
    float *h = m->H + (size_t)u * k;
    memset(us, 0, sizeof(*us));
    us->slab = POOL_NONE;
    us->bslot = POOL_NONE;
    memset(h, 0, k * sizeof(float));
    SR(r, len);
    if (!len)
        return NULL;
    uint32_t n = 0;
    uint8_t flags = 0, cached = 0;
    if (len > MODEL_ID_MAX)
        return "bad user id";
    sr_get(r, id, len);
    SR(r, us->t);
    SR(r, us->changed);
    SR(r, us->loss);
    SR(r, us->vnorm);
    SR(r, us->solved);
    SR(r, n);
    SR(r, us->mseg);
    SR(r, us->mshare);
    SR(r, us->msum);
    SR(r, flags);
    SR(r, cached);
    const uint8_t known = version >= 5 ? MODEL_U_INB | MODEL_U_GB : MODEL_U_INB;
    if (flags & ~known || cached > 1 ||
        ((flags & MODEL_U_GB) && (!cached || !(flags & MODEL_U_INB))))
        return "bad user flags";
    if (us->mseg >= k || !(us->msum >= 0 && us->msum <= FLT_MAX))
        return "bad user mark";
    us->flags = (uint8_t)(MODEL_U_LIVE | flags);
    if (model__owes_b(us))
        m->pend_all = 1;
    if (cached && (err = state_load_user_cache(r, m, us, flags)))
        return err;
    sr_get(r, h, k * sizeof(float));
    if (r->bad)
        return "truncated";
    if (!state_time_ok(us->t) || us->t > m->T)
        return "bad user time";
    /* A solve never leaves a loss above |v|^2 (h = 0 gives that):
     * checked by state_verify, which knows model.loss (a KL loss,
     * D(v || W h), has no such bound). */
    if (!(us->loss >= 0 && us->loss <= FLT_MAX) || !(us->vnorm <= FLT_MAX))
        return "bad user loss";
    for (uint32_t j = 0; j < k; j++)
        if (!(h[j] >= 0 && h[j] <= MODEL_H_MAX))
            return "bad h";
    if (n > m->p.profile_max || !sr_has(r, 8ull * n))
        return "bad profile";
    if (n && (err = state_load_profile(r, m, us, u, n, M, stamp)))
        return err;
    if (us->solved != (uint32_t)m->refreshes)
        (*stale)++;
    int rc = ids_load_put(m->uids, u, id, len);
    if (rc)
        return rc == -EEXIST ? "duplicate user id" : "out of memory";
    return NULL;
}

/* The user table: every record, the free list, the counts the records
 * must agree with, then (from version 6) the users' evicted mass. */
static const char *state_load_users(struct state_reader *r, struct model *m,
                                    uint32_t version, uint32_t M)
{
    uint32_t U = 0, nfree = 0;
    const char *err;
    if ((err = state_ids(r, m, m->uids, 0, &U, &nfree)))
        return err;
    uint32_t *stamp = M ? calloc(M, sizeof(uint32_t)) : NULL;
    if (M && !stamp)
        return "out of memory";
    uint64_t stale = 0;
    err = NULL;
    for (uint32_t u = 0; u < U && !err; u++)
        err = state_load_user(r, m, u, version, M, stamp, &stale);
    free(stamp);
    if (err)
        return err;
    if ((err = state_free_list(r, m->uids, nfree)))
        return err;
    if (stale != m->stale)
        return "bad stale count";
    if (m->cursor > U || m->reparams >= MODEL_REBUILD_EVERY)
        return "bad cursor";
    if (version >= 6 && (err = state_evictions(r, m, U)))
        return err;
    return NULL;
}

/* A model state, stage by stage: the header, the totals, the items, the
 * users, the held-out pairs (7 and 8) and the variant (8); then nothing
 * may follow, and the whole must agree with itself (state_verify). NULL
 * or what is wrong with it; *out, when set, is the caller's to free
 * either way. */
static const char *state_load(struct state_reader *r, struct model **out)
{
    uint32_t version = 0, M = 0;
    const char *err = state_load_head(r, out, &version);
    if (err)
        return err;
    struct model *m = *out;
    if ((err = state_load_totals(r, m, version)) ||
        (err = state_load_items(r, m, &M)) ||
        (err = state_load_users(r, m, version, M)) ||
        (version >= 7 && (err = state_holdout(r, m, version))) ||
        (version >= 8 && (err = state_variant(r, m, version))))
        return err;
    if (r->off != r->n)
        return "trailing bytes";
    return state_verify(m);
}

struct model *model_load(const void *buf, size_t len, const char **err)
{
    const char *e = NULL;
    struct model *m = NULL;
    if (!buf || len < 8 + 8) {
        e = "truncated";
        goto out;
    }
    struct state_hash h;
    uint64_t sum;
    sh_init(&h);
    sh_update(&h, buf, len - 8);
    memcpy(&sum, (const uint8_t *)buf + len - 8, 8);
    if (sh_final(&h) != sum) {
        e = len >= 8 && !memcmp(buf, STATE_MAGIC, 8)
                ? "checksum mismatch (corrupt or truncated)"
                : "not a model state";
        goto out;
    }
    struct state_reader r = {.p = buf, .n = len - 8};
    e = state_load(&r, &m);
out:
    if (e) {
        model_free(m);
        m = NULL;
    }
    if (err)
        *err = e;
    return m;
}
