/* online/model.c -- the online non-negative matrix factorisation.
 *
 * This subsystem folds engagement events into V ~= W H and keeps W, every
 * user's h, the profiles and the sufficient statistics consistent. It owns
 * all model state (ids, profiles, W, H, A, B, G, counters, the random
 * generator) and is the only code that changes it; model_state.c
 * serialises it. It must never do I/O, read a clock, log, or allocate per
 * event (memory grows by doubling when users or items arrive).
 *
 * Objective. V is items x users, v_u the sparse, time-decayed profile of
 * user u; W (items x k) and H (k x users) are non-negative. We minimise
 *     sum_u c_u [ 1/2 ||v_u - W h_u||^2
 *                 + alpha_h (l1 |h_u|_1 + (1 - l1)/2 |h_u|^2) ]
 *     + alpha_w (l1 |W|_1 + (1 - l1)/2 |W|_F^2)
 * where c_u = 2^(-(T - t_u) / half_life) is the recency weight of user u
 * (t_u its latest event, T the latest event overall; c_u = 1 without
 * decay), the penalties being scikit-learn's NMF elastic net.
 *
 * Updates. (1) Per event: the profile is decayed lazily by
 * 2^(-(ts - t_u)/half_life), the weight added, and h_u re-solved by
 * coordinate-descent NNLS on G = W^T W and W^T v_u, warm-started from the
 * decayed old h_u, after an exact solve on the warm start's support that
 * usually settles it (nnls_impl.h). (2) The statistics of Mairal, Bach, Ponce &
 * Sapiro ("Online learning for matrix factorization and sparse coding",
 * JMLR 2010), A = sum_u c_u h_u h_u^T and B = sum_u c_u v_u h_u^T, are kept
 * exact for the current data by replacing u's old contribution with the
 * new one (not by accumulating the history, as in the paper's Algorithm 1:
 * each user counts once, with its current h). (3) W is refreshed by HALS
 * on A and B (Cichocki & Phan 2009; Gillis 2014; hals.c) when the fold
 * work since the last refresh reaches a multiple of a refresh's own cost
 * or after refresh_events folds (model_refresh_due), never by event
 * time, and on the caller's clock. (4) Between events,
 * model_refine re-solves users whose h predates the current W, then
 * refreshes W again: with half_life = 0 this is exact alternating NNLS on
 * the full data (block coordinate descent, the loss never increases).
 * (5) Starts: W begins random; the warm-up (after warmup_events folds, or
 * in model_refine if the stream stops before) seeds it by NNDSVDa from
 * the profiles (Boutsidis & Gallopoulos 2008; nndsvd.c) and runs batch
 * alternating NNLS; at idle convergence model_refine may restart from a
 * fresh NNDSVDa seed of all the data and keep the better of the two
 * (model_restart.c), so that the model does not stay in the local
 * minimum its start happened to lead to. Every re-seeded column (a seed,
 * a restart's W, a resampled dead column) first takes the index of the
 * old column it resembles most, by an optimal assignment on cosine
 * similarity (match.c), so that topic j keeps its meaning.
 *
 * Choices. Columns of W have unit L2 norm, restored after each refresh as
 * a reparametrisation (w_j /= n_j, h_u[j] *= n_j, A and B scaled alike),
 * so W H and the statistics do not move and h values are comparable
 * across topics. A dead column (no mass in A) is resampled from the
 * normalised profile of a heavy user drawn with the model's generator.
 * A and B live in a scaled time frame: a contribution made at time t is
 * stored with weight 2^((t - T0)/half_life), and the true statistics are
 * the stored ones times 2^(-(T - T0)/half_life), so time passing costs
 * nothing; T0 moves forward every MODEL_FRAME_SPAN half-lives. B and H
 * carry per-column scales (bcol, hs: true h_u[j] = H[u][j] hs[j], applied
 * when h is read or solved) so that normalising W costs O(k^2), not a
 * pass over B or over the users; the rescaling is exact in double, and
 * every MODEL_REBUILD_EVERY rescaling refreshes (or when a scale leaves
 * its range) the scales are folded into H and A and B rebuilt from the
 * users.
 *
 * Cost. A fold is O(|v| k + sweeps k^2) as the design asks, with two
 * refinements that keep it exact: B is exact whenever HALS reads it, but
 * a heavy user's share (>= MODEL_BCACHE_MIN entries) is brought up to date
 * only then: between refreshes B holds it as c v g^T with the h of the
 * refresh (g), each event changes the rows of the entries it changes, in
 * O(k), and the sync replaces g by h in one pass. So its many events in
 * between pay O(k^2) each, with W^T v kept up to date in O(k)
 * (b <- f b + w W_i) while W does not change. A light user's share is
 * replaced at each of its events the same way, held with its old h for
 * the changed rows and then moved to the new h in one pass, not two
 * (subtract, add). model_fold_batch folds a
 * run of events identically to model_fold but prefetches the memory of
 * the events ahead. The loss of a solved user is at hand:
 * ||v - W h||^2 = v^T v - 2 h^T (W^T v) + h^T G h; its recency-weighted
 * sum over users divided by sum_u c_u ||v_u||^2 is the relative loss.
 * Everything is a deterministic function of the calls and the seed.
 *
 * loss = kl. The objective becomes sum_u c_u D(v_u || W h_u), the
 * generalised Kullback-Leibler divergence. The same fold solves h by
 * kl.c's coordinate Newton solve (no b, no G), B holds the statistics
 * of the multiplicative update of W instead of v h^T, each user's share
 * replaced at its re-solve from the ratios kept in its profile slab
 * (model_kl_share_k), and the refresh is that update (model_kl_update,
 * whose comment says what is exact and what is not); the rest (columns,
 * scales, frame, refinement, dead columns, matching) is shared. The
 * restart's rounds are the divergence's too (model_restart.c), and the
 * reported loss is the divergence per unit of weight by a pass over the
 * users. The warm-up is shared as it is: its rounds are the solves and
 * refreshes of the model, so under kl they are kl's.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hals.h"
#include "kl.h"
#include "model_impl.h"
#include "nnls_impl.h"
#include "simd.h"
#include "topn.h"

_Static_assert(sizeof(struct model_user) == 48, "48 bytes per user record");

/* The per-user kernels below are written for any k and instantiated by
 * MODEL_BY_K for the ranks in common use: with k a constant the loops
 * over it unroll, short vectors stay in registers and the whole step is
 * one function (the calls inline). The arithmetic is the same for every
 * instance, so the results are too. */
#define MODEL_KI static inline __attribute__((always_inline))
#define MODEL_BY_K(k, f, ...)                                                  \
    do {                                                                       \
        switch (k) {                                                           \
        case 8:                                                                \
            f(__VA_ARGS__, 8);                                                 \
            break;                                                             \
        case 16:                                                               \
            f(__VA_ARGS__, 16);                                                \
            break;                                                             \
        case 32:                                                               \
            f(__VA_ARGS__, 32);                                                \
            break;                                                             \
        default:                                                               \
            f(__VA_ARGS__, k);                                                 \
            break;                                                             \
        }                                                                      \
    } while (0)

/* One event as seen by a user's solve. */
struct model_ev {
    uint32_t item;
    int64_t pos; /* index of the item in the profile, -1 if absent */
    double f;    /* decay factor of the profile */
    float w;     /* weight, decayed to the user's time if older */
    int64_t t;   /* the user's new time */
    int defer;   /* the user's next event follows: h is solved there */
};

void model_params_default(struct model_params *p)
{
    memset(p, 0, sizeof(*p));
    p->k = 16;
    p->half_life_ms = 0;
    p->alpha_h = 0;
    p->alpha_w = 0;
    p->l1_ratio = 0;
    p->profile_max = 16384;
    p->refresh_events = 200000;
    p->robust = MODEL_ROBUST_NONE;
    p->loss = MODEL_LOSS_FROBENIUS;
    p->ttl_ms = 0;
    p->seed = 1;
    p->warmup_events = 10000;
    p->nnls_sweeps = 50;
    p->nnls_tol = 1e-4;
    p->hals_sweeps = 1; /* measured: 2 or 3 do not lower the loss */
    p->refine_tol = 1e-5;
}

const char *model_params_check(const struct model_params *p)
{
    if (!p)
        return "no parameters";
    if (p->k < 1 || p->k > MODEL_K_MAX)
        return "k must be 1..256";
    if (p->half_life_ms < 0)
        return "half_life must be >= 0";
    if (!isfinite(p->alpha_h) || p->alpha_h < 0)
        return "alpha_h must be finite and >= 0";
    if (!isfinite(p->alpha_w) || p->alpha_w < 0)
        return "alpha_w must be finite and >= 0";
    if (!(p->l1_ratio >= 0 && p->l1_ratio <= 1))
        return "l1_ratio must be in [0, 1]";
    if (p->profile_max < 1 || p->profile_max > MODEL_PROFILE_MAX)
        return "profile_max must be 1..65535";
    if (p->ttl_ms < 0)
        return "ttl must be >= 0";
    if (p->nnls_sweeps < 1 || p->nnls_sweeps > 100000)
        return "nnls_sweeps must be 1..100000";
    if (!isfinite(p->nnls_tol) || p->nnls_tol < 0)
        return "nnls_tol must be finite and >= 0";
    if (p->hals_sweeps < 1 || p->hals_sweeps > 1000)
        return "hals_sweeps must be 1..1000";
    if (!isfinite(p->refine_tol) || p->refine_tol < 0)
        return "refine_tol must be finite and >= 0";
    if (!isfinite(p->refresh_work) || p->refresh_work < 0)
        return "refresh_work must be finite and >= 0";
    if (!(p->holdout >= 0 && p->holdout < 1))
        return "holdout must be in [0, 1)";
    if (p->robust != MODEL_ROBUST_NONE && p->robust != MODEL_ROBUST_L21)
        return "robust must be none or l21";
    if (p->loss != MODEL_LOSS_FROBENIUS && p->loss != MODEL_LOSS_KL)
        return "loss must be frobenius or kl";
    /* kl: its solve and its update of W have no penalty, and the l21
     * weights are defined on the squared residual. */
    if (p->loss == MODEL_LOSS_KL && p->robust != MODEL_ROBUST_NONE)
        return "loss = kl does not support robust = l21";
    if (p->loss == MODEL_LOSS_KL && (p->alpha_h > 0 || p->alpha_w > 0))
        return "loss = kl does not support alpha_h or alpha_w";
    /* holdout.c scores and nmfctl rank validates by squared error, the
     * loss kl does not minimise. */
    if (p->loss == MODEL_LOSS_KL && p->holdout > 0)
        return "loss = kl does not support holdout";
    return NULL;
}

struct model *model__alloc(const struct model_params *p)
{
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->p = *p;
    m->k = p->k;
    size_t kk = (size_t)p->k * p->k;
    m->uids = ids_new(p->seed);
    m->iids = ids_new(~p->seed);
    m->A = calloc(kk, sizeof(double));
    m->G = calloc(kk, sizeof(double));
    m->S = calloc(kk, sizeof(double));
    m->bcol = calloc(p->k, sizeof(double));
    m->hs = calloc(p->k, sizeof(double));
    m->hsi = calloc(p->k, sizeof(double));
    if (p->loss == MODEL_LOSS_KL) {
        m->pool.aux = 1;
        m->kb = calloc(p->k, sizeof(double));
        m->kls = calloc(p->k, sizeof(double));
        m->klwh = calloc(2 * (p->profile_max + 1u), sizeof(double));
    }
    if (p->robust == MODEL_ROBUST_L21)
        m->l21_hist = calloc(MODEL_L21_BINS, sizeof(uint32_t));
    if (!m->uids || !m->iids || !m->A || !m->G || !m->S || !m->bcol || !m->hs ||
        !m->hsi ||
        (p->loss == MODEL_LOSS_KL && (!m->kb || !m->kls || !m->klwh)) ||
        (p->robust == MODEL_ROBUST_L21 && !m->l21_hist)) {
        model_free(m);
        return NULL;
    }
    for (uint32_t j = 0; j < m->k; j++)
        m->bcol[j] = m->hs[j] = m->hsi[j] = 1;
    if (p->holdout > 0 && !(m->ho = holdout_new(p->holdout, p->holdout_salt))) {
        model_free(m);
        return NULL;
    }
    rng_seed(&m->rng, p->seed);
    m->refine_prev = -1;
    return m;
}

struct model *model_new(const struct model_params *p)
{
    if (model_params_check(p))
        return NULL;
    return model__alloc(p);
}

void model_free(struct model *m)
{
    if (!m)
        return;
    model__restart_drop(m);
    holdout_free(m->ho);
    ids_free(m->uids);
    ids_free(m->iids);
    free(m->u);
    free(m->uev);
    free(m->Hraw);
    free(m->Wraw);
    wbound_free(&m->wb);
    free(m->Braw);
    free(m->item_t);
    free(m->A);
    free(m->G);
    free(m->S);
    free(m->bcol);
    free(m->hs);
    free(m->hsi);
    free(m->kb);
    free(m->kls);
    free(m->klwh);
    free(m->l21_hist);
    free(m->bc);
    free(m->bc_gen);
    free(m->bg);
    free(m->pend);
    free(m->bc_free);
    pool_free(&m->pool);
    free(m);
}

void model_destroy(struct model **m)
{
    model_free(*m);
    *m = NULL;
}

const struct model_params *model_params(const struct model *m)
{
    return &m->p;
}

/* Grows a 64-byte aligned array p lying in the allocation *raw (rows of
 * W, B and H then start on cache lines: one line per W or H row at
 * k = 16, two per B row) and returns where it now starts, or NULL with
 * nothing changed. By realloc, not a fresh aligned block and a copy: a
 * large block then moves by remapping its pages, so growth copies nothing
 * and touches no new page before it is used; only if the new block sits
 * at another offset from a line are the contents moved. The array comes
 * back as a return value, not through a void ** aimed at a float * or
 * double *, which would be a store through the wrong type. */
static void *model_grow_aligned(void **raw, void *p, size_t old_bytes,
                                size_t new_bytes)
{
    size_t old_off = *raw ? (size_t)((char *)p - (char *)*raw) : 0;
    char *r = realloc(*raw, new_bytes + 64);
    if (!r)
        return NULL;
    char *a = (char *)(((uintptr_t)r + 63) & ~(uintptr_t)63);
    if (old_bytes && (size_t)(a - r) != old_off)
        memmove(a, r + old_off, old_bytes);
    *raw = r;
    return a;
}

static uint32_t model_grow_cap(uint32_t cap, uint32_t need)
{
    uint64_t c = cap ? cap : 1024;
    while (c < need)
        c *= 2;
    return c > 0xfffffff0u ? 0xfffffff0u : (uint32_t)c;
}

int model__users_grow(struct model *m, uint32_t need)
{
    if (need <= m->ucap)
        return 0;
    uint32_t cap = model_grow_cap(m->ucap, need);
    if (cap < need)
        return -ENOMEM;
    struct model_user *u = realloc(m->u, (size_t)cap * sizeof(*u));
    if (!u)
        return -ENOMEM;
    m->u = u;
    size_t ow = ((size_t)m->ucap + 63) / 64, nw = ((size_t)cap + 63) / 64;
    uint64_t *pend = realloc(m->pend, nw * sizeof(*pend));
    if (!pend)
        return -ENOMEM;
    memset(pend + ow, 0, (nw - ow) * sizeof(*pend));
    m->pend = pend;
    float *ev = realloc(m->uev, (size_t)cap * sizeof(*ev));
    if (!ev)
        return -ENOMEM;
    memset(ev + m->ucap, 0, (size_t)(cap - m->ucap) * sizeof(*ev));
    m->uev = ev;
    float *h = model_grow_aligned(&m->Hraw, m->H,
                                  (size_t)m->ucap * m->k * sizeof(float),
                                  (size_t)cap * m->k * sizeof(float));
    if (!h)
        return -ENOMEM;
    m->H = h;
    m->ucap = cap;
    return 0;
}

void model__w_changed(struct model *m, uint32_t i0, uint32_t i1)
{
    m->sgen++;
    wbound_set(&m->wb, m->W, ids_slots(m->iids), i0, i1);
}

int model__w_copy_ok(const struct model *m)
{
    return wbound_matches(&m->wb, m->W, ids_slots(m->iids));
}

int model__items_grow(struct model *m, uint32_t need)
{
    if (need <= m->icap)
        return 0;
    uint32_t cap = model_grow_cap(m->icap, need);
    if (cap < need)
        return -ENOMEM;
    float *w = model_grow_aligned(&m->Wraw, m->W,
                                  (size_t)m->icap * m->k * sizeof(float),
                                  (size_t)cap * m->k * sizeof(float));
    if (!w)
        return -ENOMEM;
    m->W = w;
    double *b = model_grow_aligned(&m->Braw, m->B,
                                   (size_t)m->icap * m->k * sizeof(double),
                                   (size_t)cap * m->k * sizeof(double));
    if (!b)
        return -ENOMEM;
    m->B = b;
    int64_t *t = realloc(m->item_t, (size_t)cap * sizeof(*t));
    if (!t)
        return -ENOMEM;
    m->item_t = t;
    if (wbound_reserve(&m->wb, m->k, cap))
        return -ENOMEM;
    m->icap = cap;
    return 0;
}

/* Stored statistics times this are the true ones at time T. */
static double model_scale(const struct model *m)
{
    if (m->p.half_life_ms <= 0)
        return 1.0;
    return exp2(-(double)(m->T - m->T0) / (double)m->p.half_life_ms);
}

static double model_rel_loss(const struct model *m)
{
    if (!(m->norm_s > 0))
        return 0;
    return m->loss_s > 0 ? m->loss_s / m->norm_s : 0;
}

/* B's column scales are folded into B itself only when one leaves the
 * range [MODEL_BCOL_MIN, MODEL_BCOL_MAX], rarely: the frame moves and the
 * refreshes' normalisations multiply them. */
static void model_bcol_fold(struct model *m)
{
    const uint32_t k = m->k;
    int fold = 0;
    for (uint32_t j = 0; j < k; j++)
        if (!(m->bcol[j] > MODEL_BCOL_MIN && m->bcol[j] < MODEL_BCOL_MAX))
            fold = 1;
    if (!fold)
        return;
    size_t M = ids_slots(m->iids);
    for (size_t i = 0; i < M; i++) {
        double *restrict bi = m->B + i * k;
        for (uint32_t j = 0; j < k; j++) {
            double x = bi[j] * m->bcol[j];
            bi[j] = fabs(x) < 0x1p-900 ? 0 : x;
        }
    }
    for (uint32_t j = 0; j < k && m->kb; j++)
        m->kb[j] *= m->bcol[j];
    for (uint32_t j = 0; j < k; j++)
        m->bcol[j] = 1;
}

static void model_b_settle(struct model *m, uint32_t u);

/* Moves the frame origin to t0: stored A, B and loss sums are multiplied
 * by 2^(-(t0 - T0)/half_life). B's share goes into its column scales. */
static void model_frame_move(struct model *m, int64_t t0)
{
    const uint32_t k = m->k;
    /* g is in B's stored units, which change below: the shares held
     * with a g are settled first (rare: every MODEL_FRAME_SPAN
     * half-lives). */
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++)
        if (m->u[u].flags & MODEL_U_GB)
            model_b_settle(m, u);
    double r = exp2(-(double)(t0 - m->T0) / (double)m->p.half_life_ms);
    for (size_t i = 0; i < (size_t)k * k; i++)
        m->A[i] *= r;
    for (uint32_t j = 0; j < k; j++)
        m->bcol[j] *= r;
    m->loss_s *= r;
    m->norm_s *= r;
    m->T0 = t0;
    model_bcol_fold(m);
}

/* Moves a profile into the next size class (reserved by the caller). */
static void model_profile_move(struct model *m, struct model_user *us)
{
    uint32_t c = us->slab == POOL_NONE ? 0 : us->cls + 1u;
    uint32_t s = pool_alloc(&m->pool, c);
    if (us->slab != POOL_NONE) {
        memcpy(pool_items(&m->pool, c, s),
               pool_items(&m->pool, us->cls, us->slab),
               us->n * sizeof(uint32_t));
        memcpy(pool_vals(&m->pool, c, s),
               pool_vals(&m->pool, us->cls, us->slab), us->n * sizeof(float));
        pool_release(&m->pool, us->cls, us->slab);
    }
    us->slab = s;
    us->cls = (uint8_t)c;
}

int model__bcache_reserve(struct model *m)
{
    if (m->bc_nfree || m->bc_n < m->bc_cap)
        return 0;
    size_t cap = m->bc_cap ? 2 * (size_t)m->bc_cap : 256;
    if (cap > 0xffffff00u)
        return -ENOMEM;
    double *bc = realloc(m->bc, cap * m->k * sizeof(double));
    if (!bc)
        return -ENOMEM;
    m->bc = bc;
    double *bg = realloc(m->bg, cap * m->k * sizeof(double));
    if (!bg)
        return -ENOMEM;
    m->bg = bg;
    uint64_t *gen = realloc(m->bc_gen, cap * sizeof(uint64_t));
    if (!gen)
        return -ENOMEM;
    m->bc_gen = gen;
    uint32_t *fl = realloc(m->bc_free, cap * sizeof(uint32_t));
    if (!fl)
        return -ENOMEM;
    m->bc_free = fl;
    m->bc_cap = (uint32_t)cap;
    return 0;
}

uint32_t model__bcache_take(struct model *m)
{
    uint32_t s = m->bc_nfree ? m->bc_free[--m->bc_nfree] : m->bc_n++;
    m->bc_gen[s] = m->wgen - 1; /* not valid yet */
    return s;
}

/* Every cache line of [p, p + bytes): a 48-byte user record, say, lies
 * across two lines half the time. */
static inline void model_prefetch_span(const void *p, size_t bytes, int rw)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + bytes;
    for (; a < end; a += 64) {
        if (rw)
            __builtin_prefetch((const void *)a, 1);
        else
            __builtin_prefetch((const void *)a, 0);
    }
}

/* How far ahead (in profile entries) a pass over a profile hints the W
 * or B rows it is about to touch. A heavy user's rows lie scattered over
 * megabytes, which the hardware prefetcher cannot guess and the core's
 * window covers only a few entries of; 32 was the best of 4 to 64
 * (docs/benchmarks.md, section 2). The pipeline of model_fold_batch
 * already hints a light user's rows; this serves the heavy users' W^T v
 * after a refresh and the sync's settling of their shares. */
#define MODEL_ROW_AHEAD 32

/* Before entry q of a pass over a profile (it, n) whose rows of row bytes
 * start at base: hints the row MODEL_ROW_AHEAD entries ahead, and at the
 * first entry the rows up to there. */
static inline void model_rows_ahead(const void *base, size_t row,
                                    const uint32_t *it, uint32_t q, uint32_t n,
                                    int rw)
{
    const char *b = base;
    if (q == 0)
        for (uint32_t r = 0; r < n && r < MODEL_ROW_AHEAD; r++)
            model_prefetch_span(b + (size_t)it[r] * row, row, rw);
    if (q + MODEL_ROW_AHEAD < n)
        model_prefetch_span(b + (size_t)it[q + MODEL_ROW_AHEAD] * row, row, rw);
}

/* B[i] += v_i c for every profile entry (i, v_i). */
MODEL_KI void model_b_pass_k(struct model *m, const struct model_user *us,
                             const double *restrict c, const uint32_t k)
{
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    double *restrict B = m->B;
    for (uint32_t q = 0; q < us->n; q++) {
        model_rows_ahead(B, k * sizeof(double), it, q, us->n, 1);
        double *restrict bi = B + (size_t)it[q] * k;
        double v = va[q];
        for (uint32_t j = 0; j < k; j++)
            bi[j] += v * c[j];
    }
}

/* Subtracts (sign -1) or adds (sign +1) the user's contribution
 * c_u v_u h_u^T to the stored B (c_u v_u g^T if held with a g): one pass
 * over the profile. */
MODEL_KI void model_b_apply_k(struct model *m, uint32_t u, double sign,
                              const uint32_t k)
{
    const struct model_user *us = &m->u[u];
    if (!us->n)
        return;
    const float *restrict hu = m->H + (size_t)u * k;
    double c[MODEL_K_MAX];
    double s = sign * model__frame_weight(m, us->t);
    int any = 0;
    if (us->flags & MODEL_U_GB) {
        const double *g = m->bg + (size_t)us->bslot * k;
        for (uint32_t j = 0; j < k; j++) {
            c[j] = s * g[j];
            any |= g[j] != 0;
        }
    } else {
        s *= model__uweight(m, us);
        for (uint32_t j = 0; j < k; j++) {
            c[j] = s * ((double)hu[j] * m->hs[j]) / m->bcol[j];
            any |= hu[j] != 0;
        }
    }
    if (!any)
        return;
    model_b_pass_k(m, us, c, k);
}

ONLINE_KERNEL
static void model_b_apply(struct model *m, uint32_t u, double sign)
{
    MODEL_BY_K(m->k, model_b_apply_k, m, u, sign);
}

/* A share held with g brought to h, in one pass over the profile:
 *     B += c_u v_u (d_u h / bcol - g)^T       (B's stored units)
 * equal to subtracting c v g^T and adding c d v h^T, with half the rows;
 * d_u is the user's weight for its current loss (1 without robust). */
MODEL_KI void model_b_move_k(struct model *m, const struct model_user *us,
                             const double *restrict g, const float *restrict h,
                             double s, const uint32_t k)
{
    if (!us->n)
        return;
    double c[MODEL_K_MAX];
    int any = 0;
    const double sd = s * model__uweight(m, us);
    for (uint32_t j = 0; j < k; j++) {
        c[j] = sd * ((double)h[j] * m->hs[j]) / m->bcol[j] - s * g[j];
        any |= c[j] != 0;
    }
    if (any)
        model_b_pass_k(m, us, c, k);
}

/* A heavy user's held share brought to its current h (the sync). */
MODEL_KI void model_b_settle_k(struct model *m, uint32_t u, const uint32_t k)
{
    struct model_user *us = &m->u[u];
    us->flags &= (uint8_t)~MODEL_U_GB;
    model_b_move_k(m, us, m->bg + (size_t)us->bslot * k, m->H + (size_t)u * k,
                   model__frame_weight(m, us->t), k);
}

ONLINE_KERNEL
static void model_b_settle(struct model *m, uint32_t u)
{
    MODEL_BY_K(m->k, model_b_settle_k, m, u);
}

/* Marks user u as one the sync may owe B. */
void model__pend(struct model *m, uint32_t u)
{
    m->pend[u / 64] |= (uint64_t)1 << (u % 64);
}

/* Brings user u's share into the stored B, if the sync owes it. */
static void model_b_sync_user(struct model *m, uint32_t u)
{
    struct model_user *us = &m->u[u];
    if (!(us->flags & MODEL_U_LIVE))
        return;
    if (us->flags & MODEL_U_GB) {
        model_b_settle(m, u);
        m->sync_rows += us->n;
        return;
    }
    if (us->flags & MODEL_U_INB)
        return;
    model_b_apply(m, u, 1);
    us->flags |= MODEL_U_INB;
    m->sync_rows += us->n;
}

/* Brings every pending user's contribution into the stored B, in user
 * index order, so that B is exact before HALS reads it. The pending bits
 * spare reading every user: with a million of them, a 48 MB walk per
 * refresh for the few thousand that changed. */
void model__b_sync(struct model *m)
{
    uint32_t U = ids_slots(m->uids);
    size_t words = ((size_t)U + 63) / 64;
    if (m->pend_all) {
        for (uint32_t u = 0; u < U; u++)
            model_b_sync_user(m, u);
        m->pend_all = 0;
    } else {
        for (size_t w = 0; w < words; w++)
            for (uint64_t bits = m->pend[w]; bits; bits &= bits - 1)
                model_b_sync_user(
                    m, (uint32_t)(64 * w + (size_t)__builtin_ctzll(bits)));
    }
    if (words)
        memset(m->pend, 0, words * sizeof(*m->pend));
}

/* b = W^T v over the profile. */
MODEL_KI void model_wtv_k(const struct model *m, const struct model_user *us,
                          double *restrict b, const uint32_t k)
{
    for (uint32_t j = 0; j < k; j++)
        b[j] = 0;
    if (!us->n)
        return;
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    const float *restrict W = m->W;
    for (uint32_t q = 0; q < us->n; q++) {
        model_rows_ahead(W, k * sizeof(float), it, q, us->n, 0);
        const float *restrict wi = W + (size_t)it[q] * k;
        double v = va[q];
        for (uint32_t j = 0; j < k; j++)
            b[j] += v * wi[j];
    }
}

static void model_rebuild(struct model *m);

/* Bit j % 32 of mask[j / 32] set where a_j or b_j is non-zero (vector
 * compares when k is a constant; see nnls_impl.h on the word size). */
MODEL_KI void model_mask_nz2(const uint32_t k, const double *restrict a,
                             const double *restrict b, uint32_t *restrict mask)
{
    for (uint32_t w = 0; 32 * w < k; w++) {
        const uint32_t n = k - 32 * w < 32 ? k - 32 * w : 32;
        const double *restrict aw = a + 32 * w, *restrict bw = b + 32 * w;
        uint32_t bits = 0;
        for (uint32_t j = 0; j < n; j++)
            bits |= (uint32_t)((aw[j] != 0) | (bw[j] != 0)) << j;
        mask[w] = bits;
    }
}

/* Segment (first largest entry), share of it and sum of h, for h >= 0
 * and not NaN (every stored h): such floats order as their bit patterns,
 * so the largest is an integer maximum, and the sum runs in eight lanes
 * added pairwise at the end; with k a constant all of it is vector code. */
MODEL_KI uint32_t model_h_summary(const uint32_t k, const float *restrict h,
                                  double *share, double *sum)
{
    double lane[8] = {0};
    uint32_t top = 0, j = 0;
    for (; j + 8 <= k; j += 8) {
        for (uint32_t l = 0; l < 8; l++) {
            uint32_t x;
            memcpy(&x, h + j + l, sizeof(x));
            top = x > top ? x : top;
            lane[l] += h[j + l];
        }
    }
    for (; j < k; j++) {
        uint32_t x;
        memcpy(&x, h + j, sizeof(x));
        top = x > top ? x : top;
        lane[j % 8] += h[j];
    }
    uint32_t seg = 0;
    for (uint32_t w = 0; 32 * w < k; w++) {
        const uint32_t n = k - 32 * w < 32 ? k - 32 * w : 32;
        uint32_t eq = 0;
        for (uint32_t l = 0; l < n; l++) {
            uint32_t x;
            memcpy(&x, h + 32 * w + l, sizeof(x));
            eq |= (uint32_t)(x == top) << l;
        }
        if (eq) {
            seg = 32 * w + (uint32_t)__builtin_ctz(eq);
            break;
        }
    }
    double s = ((lane[0] + lane[4]) + (lane[2] + lane[6])) +
               ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    *sum = s;
    *share = s > 0 ? h[seg] / s : 0;
    return seg;
}

/* The rule of model.h for the changed epoch: a fold always marks the
 * user; a re-solve only when the segment, the share or sum(h) moved
 * materially since the last mark. */
MODEL_KI void model_user_mark(const struct model *m, struct model_user *us,
                              const float *h, int folded, const uint32_t k)
{
    double share, sum;
    uint32_t seg = model_h_summary(k, h, &share, &sum);
    if (!folded && seg == us->mseg &&
        fabs(share - us->mshare / 65535.0) <= MODEL_MARK_TOL &&
        fabs(sum - us->msum) <= MODEL_MARK_TOL * us->msum)
        return;
    us->changed = m->epoch;
    us->mseg = (uint8_t)seg;
    us->mshare = (uint16_t)lrint(share * 65535.0);
    us->msum = sum < FLT_MAX ? (float)sum : FLT_MAX;
}

/* The first of the weakest entries of a profile after decay, va[q] f,
 * and its value. Stored values are positive floats, which order as their
 * bit patterns, and x -> x f rounds monotonically, so the weakest value is
 * min(va) f: an integer minimum, then the first q with va[q] f equal to
 * it, a block of 32 at a time, both vector compares. A full profile
 * (profile_max entries, 512 by default) is searched on every event. */
MODEL_KI uint32_t model_weakest(const float *restrict va, uint32_t n, float f,
                                float *minv)
{
    uint32_t lo = UINT32_MAX;
    for (uint32_t q = 0; q < n; q++) {
        uint32_t x;
        memcpy(&x, va + q, sizeof(x));
        lo = x < lo ? x : lo;
    }
    float v;
    memcpy(&v, &lo, sizeof(v));
    v *= f;
    *minv = v;
    uint32_t q = 0;
    for (; q + 32 <= n; q += 32) {
        uint32_t eq = 0;
        for (uint32_t l = 0; l < 32; l++)
            eq |= (uint32_t)(va[q + l] * f == v) << l;
        if (eq)
            return q + (uint32_t)__builtin_ctz(eq);
    }
    for (; q < n; q++)
        if (va[q] * f == v)
            return q;
    return 0; /* not reached: some entry holds the minimum */
}

/*
 * loss = kl: the user's share of the statistics of the multiplicative
 * update of W (see model_kl_update), added with s > 0 or taken out with
 * s < 0: B's row it[q] += s q_q h / bcol and kb += s h / bcol (B's
 * stored units), with q the profile's ratios v_i / (W h)_i as stored in
 * the slab's aux floats at the user's last solve, and h the true h.
 */
MODEL_KI void model_kl_share_k(struct model *m, const struct model_user *us,
                               const double *restrict h, double s,
                               const uint32_t k)
{
    double c[MODEL_K_MAX];
    int any = 0;
    for (uint32_t j = 0; j < k; j++) {
        c[j] = s * h[j] / m->bcol[j];
        m->kb[j] += c[j];
        any |= c[j] != 0;
    }
    if (!any || !us->n)
        return;
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *qa = pool_aux(&m->pool, us->cls, us->slab);
    for (uint32_t q = 0; q < us->n; q++) {
        double *restrict bi = m->B + (size_t)it[q] * k;
        const double x = qa[q];
        for (uint32_t j = 0; j < k; j++)
            bi[j] += x * c[j];
    }
}

/* loss = kl: q_i = v_i / (W h)_i as the slab's aux floats keep it; 0
 * where W h is 0 (no gradient to follow). */
static inline float model_kl_ratio(float v, double wh)
{
    double x = wh > 0 ? v / wh : 0;
    return x < MODEL_KL_QMAX ? (float)x : MODEL_KL_QMAX;
}

/* loss = kl: the ratios into the slab's aux floats, from wh (W h over
 * the profile). */
static void model_kl_ratios(struct model *m, const struct model_user *us,
                            const double *wh)
{
    if (!us->n)
        return;
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    float *qa = pool_aux(&m->pool, us->cls, us->slab);
    for (uint32_t q = 0; q < us->n; q++)
        qa[q] = model_kl_ratio(va[q], wh[q]);
}

/* loss = kl: a share in B (model_kl_share_k with s = c) brought to the
 * ratios of the current W for the same h, in one pass over the profile:
 * B's row it[q] += (q_new - q_old) c h / bcol. kb does not change (the
 * same h goes out and in). Only the coordinates where h is not 0 are
 * visited: the others add exact zeros to W h and to the share, so the
 * ratios are those of a pass over all k and the share differs from
 * taking the old one out and putting the new one in by rounding only. */
MODEL_KI void model_kl_resync_k(struct model *m, const struct model_user *us,
                                const double *restrict h, double c,
                                const uint32_t k)
{
    uint32_t nz[MODEL_K_MAX], nn = 0;
    double hz[MODEL_K_MAX], cz[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        if (h[j] != 0) {
            nz[nn] = j;
            hz[nn] = h[j];
            cz[nn] = c * h[j] / m->bcol[j];
            nn++;
        }
    }
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    float *qa = pool_aux(&m->pool, us->cls, us->slab);
    const float *restrict W = m->W;
    double *restrict B = m->B;
    for (uint32_t q = 0; q < us->n; q++) {
        if (q + 4 < us->n) {
            __builtin_prefetch(W + (size_t)it[q + 4] * k);
            __builtin_prefetch(B + (size_t)it[q + 4] * k + (nn ? nz[0] : 0),
                               1);
        }
        const float *restrict wi = W + (size_t)it[q] * k;
        double x = 0;
        for (uint32_t a = 0; a < nn; a++)
            x += wi[nz[a]] * hz[a];
        const float qn = model_kl_ratio(va[q], x);
        const double d = (double)qn - (double)qa[q];
        qa[q] = qn;
        if (d != 0) {
            double *restrict bi = B + (size_t)it[q] * k;
            for (uint32_t a = 0; a < nn; a++)
                bi[nz[a]] += d * cz[a];
        }
    }
}

/* g = d h in B's stored units, (d h_j hs_j) / bcol_j: the g a share is
 * held with (d the user's weight, 1 without robust). */
MODEL_KI void model_b_units_k(const struct model *m, const float *restrict h,
                              double d, double *restrict g, const uint32_t k)
{
    for (uint32_t j = 0; j < k; j++)
        g[j] = d * ((double)h[j] * m->hs[j]) / m->bcol[j];
}

/* B's row i += a g: the entry of item i in a share held with g changed
 * by a (in c v units). */
MODEL_KI void model_b_row_k(struct model *m, const double *restrict g,
                            uint32_t i, double a, const uint32_t k)
{
    double *restrict bi = m->B + (size_t)i * k;
    for (uint32_t j = 0; j < k; j++)
        bi[j] += a * g[j];
}

/* What the stages of one user's step (model_user_solve_k) hand each
 * other. */
struct model_step {
    const struct model_ev *ev;
    const uint8_t *drop;
    double f;            /* the profile's decay since the user's last event */
    float ff;            /* f as the float entries are scaled */
    int64_t t_new;       /* the user's time after the step */
    int64_t pos;         /* the event's entry in the profile, -1 none */
    int64_t evict;       /* the entry the event replaces, -1 none */
    int add;             /* the event is a new entry */
    int eager;           /* B's share is put back in this step (light) */
    float dropped;       /* an event too weak to evict the weakest entry */
    double s_old, s_new; /* the frame weights of the old and new time */
    const double *g;     /* the h B's share is held with; NULL: not held */
    uint32_t out;        /* profile entries after the step */
    double vtv;          /* v^T v after it, evicted mass included */
    int moved;           /* some entry changed beyond f v + event */
    float ve;            /* the evicted entry, decayed */
    uint32_t ie;         /* and its item */
    uint32_t sweeps;     /* of the solve */
    uint32_t nn;         /* coordinates non-zero in the new or the old h */
    double loss;         /* of the stored h */
    uint64_t rows;       /* profile rows of W or B gone through (work) */
    int kl;              /* loss = kl: the KL solve and share (kl.c) */
    int lazy;            /* kl: the event changes v only (model_kl_lazy) */
    int defer;           /* h kept as it was: the next event solves it */
    double d_old;        /* the user's l21 weight before (1 without) */
};

/*
 * loss = kl: whether a heavy user's event may leave h and its share as
 * they are. A KL solve reads the whole profile at each Newton sweep,
 * O(|v| k sweeps), where the Frobenius fold of a heavy user costs O(k^2)
 * from its cached W^T v; so a heavy user's solve is deferred until its
 * profile has moved enough to be worth one: until v^T v crosses into
 * another of MODEL_KL_LAZY_STEPS geometric buckets per octave (the
 * exponent and top mantissa bits of the float v^T v, so the rule needs
 * no state and is the same after a load), or the event needs what only a
 * solve gives (a new slab, an eviction, decay, a profile under
 * MODEL_KL_LAZY_MIN entries, an item whose (W h)_i is 0). A deferred
 * event keeps the share in B exactly as it went in (a new entry's ratio
 * is 0 until the next solve), updates the user's divergence by the one
 * entry's term, D += v' log(v'/x) - v' - (v log(v/x) - v) with x = (W h)_i
 * (O(k)), and leaves the user stale, so that the refresh's sync brings its
 * ratios to the current v and W and the idle refinement re-solves it. The
 * amortised cost of a heavy user's event falls from O(|v| k sweeps) to
 * O(k) plus one solve per bucket.
 */
#define MODEL_KL_LAZY_MIN   32
#define MODEL_KL_LAZY_SHIFT 20 /* 23 - 3: 8 buckets per octave of v^T v */

static inline uint32_t model_kl_bucket(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b >> MODEL_KL_LAZY_SHIFT;
}

/* The decision above, and the change of the user's divergence into
 * st->loss when the event is deferred. */
MODEL_KI int model_kl_lazy_k(const struct model *m, uint32_t u,
                             struct model_step *st, const uint32_t k)
{
    const struct model_user *us = &m->u[u];
    const struct model_ev *ev = st->ev;
    if (!ev || st->drop || st->f != 1.0 || st->s_old != st->s_new ||
        !(us->flags & MODEL_U_INB) || us->n < MODEL_KL_LAZY_MIN ||
        !(ev->w >= FLT_MIN))
        return 0;
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    double v = 0, vtv = us->vnorm;
    if (ev->pos >= 0) {
        v = va[ev->pos];
        double vn = v + ev->w;
        if (vn > MODEL_VALUE_MAX)
            return 0;
        vtv += vn * vn - v * v;
    } else {
        if (us->n >= m->p.profile_max || us->n >= pool_cap(us->cls))
            return 0;
        vtv += (double)ev->w * ev->w;
    }
    if (!(vtv < FLT_MAX) ||
        model_kl_bucket((float)vtv) != model_kl_bucket(us->vnorm))
        return 0;
    const float *restrict wi = m->W + (size_t)ev->item * k;
    const float *restrict hu = m->H + (size_t)u * k;
    double x = 0;
    for (uint32_t j = 0; j < k; j++)
        x += (double)wi[j] * ((double)hu[j] * m->hs[j]);
    if (!(x > 0))
        return 0;
    const double vn = v + ev->w;
    double d = vn * log(vn / x) - vn - (v > 0 ? v * log(v / x) - v : 0);
    st->loss = (double)us->loss + d;
    if (!(st->loss > 0))
        st->loss = 0;
    return 1;
}

/* Stage 1, the share of B: held with g if no entry but the event's
 * changes (a light user's g on the stack for this step, a heavy user's in
 * its slot until the sync); otherwise it goes now, and light users put
 * the new one back at the end of this step, heavy ones at the sync. Then
 * where the event goes: a new entry, or in place of the weakest one. */
MODEL_KI void model_step_share_k(struct model *m, uint32_t u,
                                 struct model_step *st, double *restrict g_old,
                                 const uint32_t k)
{
    struct model_user *us = &m->u[u];
    const float *restrict hu = m->H + (size_t)u * k;
    const struct model_ev *ev = st->ev;

    /* loss = kl: the share goes now, with the ratios of the last solve,
     * before the profile changes under them. */
    if (st->kl)
        st->lazy = model_kl_lazy_k(m, u, st, k);
    if (st->kl && !st->lazy && (us->flags & MODEL_U_INB)) {
        for (uint32_t j = 0; j < k; j++)
            g_old[j] = (double)hu[j] * m->hs[j];
        model_kl_share_k(m, us, g_old, -st->s_old, k);
        us->flags &= (uint8_t) ~(MODEL_U_INB | MODEL_U_GB);
        st->rows += us->n;
    }
    if (!st->kl && (us->flags & MODEL_U_INB)) {
        if (st->eager && st->f == 1.0 && st->s_old == st->s_new) {
            model_b_units_k(m, hu, st->d_old, g_old, k);
            st->g = g_old;
        } else if (!st->eager && !st->drop && st->f == 1.0 &&
                   st->s_old == st->s_new && us->bslot != POOL_NONE) {
            double *gs = m->bg + (size_t)us->bslot * k;
            if (!(us->flags & MODEL_U_GB)) {
                model_b_units_k(m, hu, st->d_old, gs, k);
                us->flags |= MODEL_U_GB;
            }
            st->g = gs;
        } else {
            model_b_apply_k(m, u, -1, k);
            us->flags &= (uint8_t) ~(MODEL_U_INB | MODEL_U_GB);
            st->rows += us->n;
        }
    }
    if (ev && st->pos < 0 && ev->w >= FLT_MIN) {
        if (us->n < m->p.profile_max) {
            st->add = 1;
            if (us->slab == POOL_NONE || us->n == pool_cap(us->cls))
                model_profile_move(m, us);
        } else {
            /* Full: the weakest entry after decay makes room, unless the
             * new one is weaker still (ties keep the older entry). Full
             * means n >= profile_max >= 1 (model_params_check). */
            const float *va = pool_vals(&m->pool, us->cls, us->slab);
            float minv;
            st->evict = model_weakest(va, us->n, st->ff, &minv);
            if (!(ev->w > minv)) {
                st->evict = -1;
                st->dropped = ev->w;
            }
        }
    }
}

/* Stage 2b, what the profile could not keep stays in v^T v
 * (docs/design.md section 1: evicted mass is residual, never dropped):
 * the evicted entry, or the event itself when it was the weakest. The
 * user's earlier evictions decay with the profile; the recomputation of
 * stage 2 counted the kept entries only. */
MODEL_KI void model_step_residual(struct model *m, uint32_t u,
                                  struct model_step *st)
{
    struct model_user *us = &m->u[u];
    if (st->evict >= 0 || st->dropped > 0 || (us->flags & MODEL_U_EV)) {
        double e_old = us->flags & MODEL_U_EV ? m->uev[u] : 0;
        double e_new =
            (double)st->ve * st->ve + (double)st->dropped * st->dropped;
        if (st->ff != 1.0f || st->drop) {
            e_old *= st->f * st->f;
            st->vtv += e_old;
        }
        st->vtv += e_new;
        float e = (float)(e_old + e_new);
        m->uev[u] = e >= FLT_MIN ? e : 0;
        us->flags = (uint8_t)(m->uev[u] > 0 ? us->flags | MODEL_U_EV
                                            : us->flags & ~MODEL_U_EV);
        m->evicted_weight += (double)st->ve + st->dropped;
    }
}

/* Stage 2, the profile updated in place, v^T v alongside, and the rows
 * of B a held share changes; then the residual (2b), the new entry, and
 * the slab given back when the profile is empty. */
MODEL_KI void model_step_profile_k(struct model *m, uint32_t u,
                                   struct model_step *st, const uint32_t k)
{
    struct model_user *us = &m->u[u];
    const struct model_ev *ev = st->ev;
    const uint8_t *drop = st->drop;
    const float ff = st->ff;
    const int64_t pos = st->pos, evict = st->evict;
    const double *g = st->g;
    const double s_new = st->s_new;
    const uint32_t n = us->n;
    uint32_t *it =
        us->slab != POOL_NONE ? pool_items(&m->pool, us->cls, us->slab) : NULL;
    float *va =
        us->slab != POOL_NONE ? pool_vals(&m->pool, us->cls, us->slab) : NULL;
    float ve = 0;
    uint32_t ie = 0;
    uint32_t out = n;
    double vtv = us->vnorm;
    int moved = 0;
    if (ff != 1.0f || drop) {
        vtv = 0;
        out = 0;
        for (uint32_t q = 0; q < n; q++) {
            uint32_t io = it[q];
            float v;
            if (q == evict) {
                ve = va[q] * ff;
                ie = io;
                v = ev->w;
                io = ev->item;
            } else if (drop && drop[io]) {
                v = 0;
                moved = 1;
            } else {
                v = va[q] * ff;
                if (q == pos)
                    v += ev->w;
                if (v > MODEL_VALUE_MAX) {
                    v = MODEL_VALUE_MAX;
                    moved = 1;
                }
                if (!(v >= FLT_MIN)) {
                    v = 0;
                    moved = 1;
                }
            }
            if (v != 0) {
                it[out] = io;
                va[out] = v;
                out++;
                vtv += (double)v * v;
            }
        }
    } else if (pos >= 0) {
        float vo = va[pos], v = vo + ev->w;
        if (v > MODEL_VALUE_MAX) {
            v = MODEL_VALUE_MAX;
            moved = 1;
        }
        vtv += (double)v * v - (double)vo * vo;
        va[pos] = v;
        if (g)
            model_b_row_k(m, g, ev->item, s_new * ((double)v - vo), k);
    } else if (evict >= 0) {
        ve = va[evict];
        ie = it[evict];
        vtv += (double)ev->w * ev->w - (double)ve * ve;
        it[evict] = ev->item;
        va[evict] = ev->w;
        if (g) {
            model_b_row_k(m, g, ie, -s_new * ve, k);
            model_b_row_k(m, g, ev->item, s_new * ev->w, k);
        }
    }
    st->ve = ve;
    st->ie = ie;
    st->moved = moved;
    st->vtv = vtv;
    model_step_residual(m, u, st);
    vtv = st->vtv;
    if (st->add) {
        it = pool_items(&m->pool, us->cls, us->slab);
        va = pool_vals(&m->pool, us->cls, us->slab);
        it[out] = ev->item;
        va[out] = ev->w;
        out++;
        vtv += (double)ev->w * ev->w;
        if (g)
            model_b_row_k(m, g, ev->item, s_new * ev->w, k);
    }
    us->n = (uint16_t)out;
    if (!out) {
        vtv = 0;
        m->uev[u] = 0;
        us->flags &= (uint8_t)~MODEL_U_EV;
        if (us->slab != POOL_NONE) {
            pool_release(&m->pool, us->cls, us->slab);
            us->slab = POOL_NONE;
            us->cls = 0;
        }
    } else if (!(vtv > 0)) {
        vtv = 0;
    }
    st->out = out;
    st->vtv = vtv;
}

/* Stage 3, b = W^T v: from the user's cache when it is valid (b <- f b +
 * w W_i - v_e W_e: O(k)), else one pass over the profile. Not under kl,
 * whose solve reads W's rows itself. */
MODEL_KI void model_step_wtv_k(struct model *m, uint32_t u,
                               struct model_step *st, double *restrict b,
                               const uint32_t k)
{
    struct model_user *us = &m->u[u];
    const struct model_ev *ev = st->ev;
    double *bc = NULL;
    if (st->kl) {
        for (uint32_t j = 0; j < k; j++)
            b[j] = 0;
        return;
    }
    if (us->bslot == POOL_NONE && st->out >= MODEL_BCACHE_MIN &&
        (m->bc_nfree || m->bc_n < m->bc_cap))
        us->bslot = model__bcache_take(m);
    if (us->bslot != POOL_NONE)
        bc = m->bc + (size_t)us->bslot * k;
    if (bc && m->bc_gen[us->bslot] == m->wgen && !st->moved) {
        const double f = st->f;
        st->rows += 1 + (st->evict >= 0);
        for (uint32_t j = 0; j < k; j++)
            b[j] = f * bc[j];
        if (ev && (st->pos >= 0 || st->add || st->evict >= 0)) {
            const float *restrict wi = m->W + (size_t)ev->item * k;
            double w = ev->w;
            for (uint32_t j = 0; j < k; j++)
                b[j] += w * wi[j];
        }
        if (st->evict >= 0) {
            const float *restrict we = m->W + (size_t)st->ie * k;
            double v = st->ve;
            for (uint32_t j = 0; j < k; j++)
                b[j] -= v * we[j];
        }
    } else {
        model_wtv_k(m, us, b, k);
        st->rows += st->out;
    }
    if (bc) {
        memcpy(bc, b, k * sizeof(double));
        m->bc_gen[us->bslot] = m->wgen;
    }
}

/* Stage 4, the solve (nnls.c), warm-started from the old h decayed like
 * the profile (the true h: stored h times the column scales); ho is the
 * old true h. Then h stored as float in H's scale, in hf; he, the true h
 * the model keeps from now on, is exactly what later reads of H will
 * give. */
MODEL_KI void model_step_solve_k(struct model *m, uint32_t u,
                                 struct model_step *st,
                                 const double *restrict b, double *restrict ho,
                                 double *restrict he, float *restrict hf,
                                 const uint32_t k)
{
    const float *restrict hu = m->H + (size_t)u * k;
    double h[MODEL_K_MAX], gh[MODEL_K_MAX];
    const double *restrict hs = m->hs, *restrict hsi = m->hsi;
    uint32_t sweeps = 0;
    for (uint32_t j = 0; j < k; j++)
        ho[j] = (double)hu[j] * hs[j];
    if (st->defer) {
        /* The next event is this user's: h stays, decayed like the
         * profile, and the loss and the statistics below are exact for
         * it; the next event's solve starts from it. */
        for (uint32_t j = 0; j < k; j++)
            h[j] = ho[j] * st->f;
    } else if (st->vtv > 0) {
        for (uint32_t j = 0; j < k; j++)
            h[j] = ho[j] * st->f;
        double a1 = m->p.alpha_h * m->p.l1_ratio;
        double a2 = m->p.alpha_h * (1 - m->p.l1_ratio);
        if (st->kl) {
            const struct model_user *us = &m->u[u];
            sweeps = kl_solve(k, m->W, m->kls,
                              pool_items(&m->pool, us->cls, us->slab),
                              pool_vals(&m->pool, us->cls, us->slab), st->out,
                              h, m->p.nnls_sweeps, m->p.nnls_tol, m->klwh);
            st->rows += (uint64_t)st->out * sweeps;
        } else {
            sweeps = nnls__solve(k, m->G, b, a1, a2, m->p.nnls_sweeps,
                                 m->p.nnls_tol, h, gh);
        }
    } else {
        for (uint32_t j = 0; j < k; j++)
            h[j] = 0;
    }
    st->sweeps = sweeps;
    /* Clamped to [FLT_MIN, MODEL_H_MAX] or +0 (NaN gives +0) by a minimum
     * and a mask of the bits, which vectorise; written as conditionals,
     * the loop kept a branch per coordinate. */
    for (uint32_t j = 0; j < k; j++) {
        float x = (float)(h[j] * hsi[j]);
        float y = x < MODEL_H_MAX ? x : MODEL_H_MAX;
        uint32_t bits;
        memcpy(&bits, &y, sizeof(bits));
        bits &= -(uint32_t)(x >= FLT_MIN);
        memcpy(&y, &bits, sizeof(y));
        hf[j] = y;
        he[j] = (double)y * hs[j];
    }
}

/* Stage 5, the loss of the stored h:
 *     l = v^T v - 2 h^T b + h^T G h,
 * over the coordinates where the new or the old h is non-zero (nz, from
 * one vector compare of each; the other terms are exact zeros, so the
 * sums are those over all k), with G h as a sum of columns (vector
 * operations, no long reduction chain). A solve that did worse than h = 0
 * gives h = 0. */
MODEL_KI void model_step_loss_k(const struct model *m, uint32_t u,
                                struct model_step *st, const double *restrict b,
                                const double *restrict ho, double *restrict he,
                                float *restrict hf, uint32_t *restrict nz,
                                const uint32_t k)
{
    double gh[MODEL_K_MAX];
    const double vtv = st->vtv;
    uint32_t nn = 0;
    {
        uint32_t mask[NNLS_MASK_WORDS];
        model_mask_nz2(k, he, ho, mask);
        for (uint32_t w = 0; 32 * w < k; w++)
            for (uint32_t bits = mask[w]; bits; bits &= bits - 1)
                nz[nn++] = 32 * w + (uint32_t)__builtin_ctz(bits);
    }
    double hb = 0, hgh = 0;
    for (uint32_t j = 0; j < k; j++)
        gh[j] = 0;
    for (uint32_t q = 0; q < nn && !st->kl; q++) {
        double hl = he[nz[q]];
        const double *restrict gl = m->G + (size_t)nz[q] * k;
        for (uint32_t j = 0; j < k; j++)
            gh[j] += gl[j] * hl;
    }
    for (uint32_t q = 0; q < nn && !st->kl; q++) {
        hb += he[nz[q]] * b[nz[q]];
        hgh += he[nz[q]] * gh[nz[q]];
    }
    double loss = vtv - 2 * hb + hgh;
    if (st->kl) {
        /* D(v || W h) of the stored h, and W h left in klwh for the
         * ratios of the share. */
        const struct model_user *us = &m->u[u];
        loss = st->out ? kl_divergence(k, m->W, m->kls,
                                       pool_items(&m->pool, us->cls, us->slab),
                                       pool_vals(&m->pool, us->cls, us->slab),
                                       st->out, he, m->klwh)
                       : 0;
    } else if (!(loss <= vtv)) {
        /* h = 0 is feasible with loss |v|^2: a solve stopped early from
         * a poor start (or a degenerate W) never does worse than that. */
        for (uint32_t j = 0; j < k; j++)
            hf[j] = 0, he[j] = 0;
        loss = vtv;
    }
    if (!(loss > 0))
        loss = 0;
    st->nn = nn;
    st->loss = loss;
}

/* Stage 6, the user's contribution to the statistics replaced,
 *     A += c_new d_new h_new h_new^T - c_old d_old h_old h_old^T
 *     loss += c_new l_new - c_old l_old, norm += c_new |v_new|^2 - ...,
 * (d the user's l21 weight, 1 without robust) the new h and marks
 * stored, B's share put back (light users, and every user under kl) or
 * left owed to the sync (heavy ones), and the step's work counted. */
MODEL_KI void
model_step_commit_k(struct model *m, uint32_t u, struct model_step *st,
                    const double *restrict ho, const double *restrict he,
                    const float *restrict hf, const uint32_t *restrict nz,
                    int had_profile, const uint32_t k)
{
    struct model_user *us = &m->u[u];
    float *restrict hu = m->H + (size_t)u * k;
    double an[MODEL_K_MAX], ao[MODEL_K_MAX];
    float ht[MODEL_K_MAX];
    const double s_old = st->s_old, s_new = st->s_new, d_old = st->d_old;
    const double loss = st->loss, vtv = st->vtv;
    const uint32_t nn = st->nn, out = st->out;
    /* Per user in float (the sums use exactly the stored values, and the
     * weight follows from them). */
    float lf = loss < FLT_MAX ? (float)loss : FLT_MAX;
    float vf = vtv < FLT_MAX ? (float)vtv : FLT_MAX;
    const uint8_t wq = model__l21_code(m, lf, vf);
    const double d_new = model__weight_of(m, wq, vf);

    for (uint32_t j = 0; j < k; j++) {
        ao[j] = s_old * d_old * ho[j];
        an[j] = s_new * d_new * he[j];
        ht[j] = (float)he[j];
    }
    double *restrict A = m->A;
    for (uint32_t q = 0; q < nn; q++) {
        double *restrict aj = A + (size_t)nz[q] * k;
        double anj = an[nz[q]], aoj = ao[nz[q]];
        for (uint32_t l = 0; l < k; l++)
            aj[l] += anj * he[l] - aoj * ho[l];
    }
    m->dsum += d_new - d_old;
    m->loss_s += s_new * lf - s_old * us->loss;
    m->norm_s += s_new * vf - s_old * us->vnorm;
    model__l21_count(m, us->loss, us->vnorm, -1);
    model__l21_count(m, lf, vf, 1);
    us->loss = lf;
    us->vnorm = vf;
    us->wq = wq;
    us->t = st->t_new;
    memcpy(hu, hf, k * sizeof(float));
    if (m->ho)
        holdout_note_user(m->ho, u);
    model_user_mark(m, us, ht, st->ev != NULL, k);
    if (st->lazy || st->defer) {
        /* h not re-solved: the user is stale until it is (the sync and
         * the refinement look for those). */
        if (us->solved == (uint32_t)m->refreshes) {
            us->solved = (uint32_t)m->refreshes - 1u;
            m->stale++;
        }
    } else if (us->solved != (uint32_t)m->refreshes) {
        us->solved = (uint32_t)m->refreshes;
        if (m->stale)
            m->stale--;
    }
    if (st->lazy) {
        /* The share stays in B as it went in. */
    } else if (st->kl) {
        model_kl_ratios(m, us, m->klwh);
        model_kl_share_k(m, us, he, s_new, k);
        us->flags |= MODEL_U_INB;
        st->rows += out;
    } else if (st->eager && st->g) {
        model_b_move_k(m, us, st->g, hf, s_new, k);
        st->rows += out;
    } else if (st->eager) {
        model_b_apply_k(m, u, 1, k);
        us->flags |= MODEL_U_INB;
        st->rows += out;
    }
    if (model__owes_b(us))
        model__pend(m, u);
    m->dirty = 1;
    /* The step's multiply-adds: k per profile row, k^2 per sweep of the
     * solve plus two for the warm start and the statistics (A, loss). */
    m->work += k * st->rows + (uint64_t)k * k * (st->sweeps + 2u);
    m->work_all += k * st->rows + (uint64_t)k * k * (st->sweeps + 2u);
    if (had_profile != (out > 0)) {
        m->nprof = out ? m->nprof + 1 : m->nprof - 1;
        if (!m->nprof)
            model_rebuild(m);
    }
}

/*
 * One user's step: apply the event ev (if any) and drop the items marked
 * in drop (if any) to the profile, re-solve h_u (nnls.c), and replace the
 * user's contribution to the statistics:
 *     A += c_new h_new h_new^T - c_old h_old h_old^T
 *     loss += c_new l_new - c_old l_old, norm += c_new |v_new|^2 - ...
 * with l = v^T v - 2 h^T (W^T v) + h^T G h computed from the stored
 * (float) h, so the sums are those of the stored model.
 *
 * B's share, c_u v_u h_u^T, is replaced eagerly for light users (fewer
 * than MODEL_BCACHE_MIN entries) and lazily for heavy ones. Either way,
 * when c v_i stays as it was on every entry but the event's (no decay
 * since the last event, f = 1 and the same c, and nothing dropped), the
 * share is held with g, the h it was last exact with: the event changes
 * the rows of the entries it changes (B_i += (c v_i' - c v_i) g: O(k)
 * each), and one pass over the profile later moves the whole share from
 * g to the new h (model_b_move_k). A light user holds g on the stack and
 * makes that pass at the end of this step; a heavy user keeps g in its
 * cache slot until model_b_sync makes it, before the next HALS, so its
 * many events between refreshes pay one pass, not one each. Otherwise
 * (half-life set and time moving, or items dropped) the old share is
 * subtracted here in one pass over the old profile, and the new one added
 * at the end of this step (light) or by the sync (heavy).
 *
 * b = W^T v comes from the user's cache when valid (b <- f b + w W_i -
 * v_e W_e: O(k)), else from one pass over the profile. Needs any growth
 * reserved beforehand; cannot fail.
 *
 * The stages above, in order: the share of B (1), the profile (2, with
 * the residual, 2b), b = W^T v (3), the solve (4), the loss (5), and the
 * statistics (6). All are inlined: this is the fold's hot path.
 */
MODEL_KI void model_user_solve_k(struct model *m, uint32_t u,
                                 const struct model_ev *ev, const uint8_t *drop,
                                 const uint32_t k)
{
    struct model_user *us = &m->u[u];
    double g_old[MODEL_K_MAX], b[MODEL_K_MAX], ho[MODEL_K_MAX], he[MODEL_K_MAX];
    float hf[MODEL_K_MAX];
    uint32_t nz[MODEL_K_MAX];
    const int had_profile = us->n > 0;
    struct model_step st = {
        .ev = ev,
        .drop = drop,
        .f = ev ? ev->f : 1.0,
        .t_new = ev ? ev->t : us->t,
        .pos = ev ? ev->pos : -1,
        .evict = -1,
        .eager = us->n < MODEL_BCACHE_MIN && !drop,
        .kl = model__kl(m),
        .defer = ev && ev->defer,
        .d_old = model__uweight(m, us),
    };
    st.ff = (float)st.f;
    st.s_old = model__frame_weight(m, us->t);
    st.s_new = model__frame_weight(m, st.t_new);

    model_step_share_k(m, u, &st, g_old, k);
    model_step_profile_k(m, u, &st, k);
    if (st.lazy) {
        /* loss = kl, deferred (model_kl_lazy_k): h as it was, a new
         * entry's ratio 0, the divergence already in st.loss. */
        const float *hu = m->H + (size_t)u * k;
        for (uint32_t j = 0; j < k; j++) {
            hf[j] = hu[j];
            ho[j] = he[j] = (double)hu[j] * m->hs[j];
        }
        if (st.add)
            pool_aux(&m->pool, us->cls, us->slab)[st.out - 1] = 0;
        st.nn = 0;
        st.rows += 1;
    } else {
        model_step_wtv_k(m, u, &st, b, k);
        model_step_solve_k(m, u, &st, b, ho, he, hf, k);
        model_step_loss_k(m, u, &st, b, ho, he, hf, nz, k);
    }
    model_step_commit_k(m, u, &st, ho, he, hf, nz, had_profile, k);
}

ONLINE_KERNEL
static void model_user_solve(struct model *m, uint32_t u,
                             const struct model_ev *ev, const uint8_t *drop)
{
    MODEL_BY_K(m->k, model_user_solve_k, m, u, ev, drop);
}

/* Forgets a user: subtracts its contribution and frees its slot. */
void model__user_remove(struct model *m, uint32_t u)
{
    const uint32_t k = m->k;
    struct model_user *us = &m->u[u];
    float *hu = m->H + (size_t)u * k;
    if (model__kl(m) && (us->flags & MODEL_U_INB)) {
        double h[MODEL_K_MAX];
        for (uint32_t j = 0; j < k; j++)
            h[j] = (double)hu[j] * m->hs[j];
        model_kl_share_k(m, us, h, -model__frame_weight(m, us->t), k);
        us->flags &= (uint8_t) ~(MODEL_U_INB | MODEL_U_GB);
    }
    if (us->flags & MODEL_U_INB)
        model_b_apply(m, u, -1);
    double s_old = model__frame_weight(m, us->t);
    double d_old = model__uweight(m, us);
    m->dsum -= d_old;
    model__l21_count(m, us->loss, us->vnorm, -1);
    s_old *= d_old;
    if (us->slab != POOL_NONE)
        pool_release(&m->pool, us->cls, us->slab);
    if (us->bslot != POOL_NONE)
        m->bc_free[m->bc_nfree++] = us->bslot;
    double ho[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        ho[j] = (double)hu[j] * m->hs[j];
    for (uint32_t j = 0; j < k; j++)
        for (uint32_t l = 0; l < k; l++)
            m->A[(size_t)j * k + l] -= s_old * ho[j] * ho[l];
    m->loss_s -= model__frame_weight(m, us->t) * us->loss;
    m->norm_s -= model__frame_weight(m, us->t) * us->vnorm;
    m->uev[u] = 0;
    if (us->solved != (uint32_t)m->refreshes && m->stale)
        m->stale--;
    if (us->n)
        m->nprof--;
    memset(us, 0, sizeof(*us));
    us->slab = POOL_NONE;
    us->bslot = POOL_NONE;
    memset(hu, 0, k * sizeof(float));
    if (m->ho)
        holdout_note_user_id(m->ho, u, NULL, 0, 0);
    ids_remove(m->uids, u);
    m->dirty = 1;
}

uint32_t model__user_add(struct model *m, const char *id, size_t len,
                         int64_t ts)
{
    uint32_t u = ids_insert(m->uids, id, len);
    struct model_user *us = &m->u[u];
    memset(us, 0, sizeof(*us));
    us->t = ts;
    us->changed = m->epoch;
    us->solved = (uint32_t)m->refreshes;
    us->slab = POOL_NONE;
    us->bslot = POOL_NONE;
    us->flags = MODEL_U_LIVE;
    memset(m->H + (size_t)u * m->k, 0, m->k * sizeof(float));
    if (m->ho)
        holdout_note_user_id(m->ho, u, id, len, 1);
    return u;
}

/* A new item's row of W is random non-negative, of the magnitude of an
 * entry of a unit column spread over the live items, so that users of
 * brand-new items get a non-zero h and the item enters the next refresh;
 * G follows the new row exactly. */
uint32_t model__item_add(struct model *m, const char *id, size_t len,
                         int64_t ts)
{
    const uint32_t k = m->k;
    uint32_t i = ids_insert(m->iids, id, len);
    float *wi = m->W + (size_t)i * k;
    double *bi = m->B + (size_t)i * k;
    double scale = 1.0 / sqrt((double)ids_live(m->iids));
    for (uint32_t j = 0; j < k; j++) {
        wi[j] = (float)(rng_uniform(&m->rng) * scale);
        bi[j] = 0;
    }
    for (uint32_t j = 0; j < k; j++)
        for (uint32_t l = 0; l < k; l++)
            m->G[(size_t)j * k + l] += (double)wi[j] * wi[l];
    for (uint32_t j = 0; j < k && m->kls; j++)
        m->kls[j] += wi[j];
    /* The slot is new or was freed by expiry, which zeroed its row. */
    wbound_add(&m->wb, m->W, i);
    m->item_t[i] = ts;
    if (m->ho)
        holdout_note_item_id(m->ho, i, id, len, 1);
    return i;
}

/* Rebuilds A, B and the loss sums from the users, exactly (in the sense
 * of one rounding per term): sum_u c_u h h^T, sum_u c_u v h^T. */
static void model_rebuild(struct model *m)
{
    const uint32_t k = m->k;
    int scaled = 0;
    m->sgen++;
    for (uint32_t j = 0; j < k; j++)
        scaled |= m->hs[j] != 1;
    memset(m->A, 0, (size_t)k * k * sizeof(double));
    if (ids_slots(m->iids))
        memset(m->B, 0, (size_t)ids_slots(m->iids) * k * sizeof(double));
    for (uint32_t j = 0; j < k; j++)
        m->bcol[j] = 1;
    for (uint32_t j = 0; j < k && m->kb; j++)
        m->kb[j] = 0;
    m->loss_s = 0;
    m->norm_s = 0;
    m->dsum = 0;
    uint32_t U = ids_slots(m->uids);
    double an[MODEL_K_MAX];
    for (uint32_t u = 0; u < U; u++) {
        struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE))
            continue;
        float *hu = m->H + (size_t)u * k;
        /* The column scales go into H (one rounding to float). */
        for (uint32_t j = 0; j < k && scaled; j++) {
            float x = (float)((double)hu[j] * m->hs[j]);
            hu[j] = x >= FLT_MIN ? (x <= MODEL_H_MAX ? x : MODEL_H_MAX) : 0;
        }
        double s = model__frame_weight(m, us->t);
        double d = model__uweight(m, us);
        m->dsum += d;
        for (uint32_t j = 0; j < k; j++)
            an[j] = s * d * (double)hu[j];
        if (model__kl(m)) {
            /* The ratios against the current W, then the share. */
            double h[MODEL_K_MAX];
            for (uint32_t j = 0; j < k; j++)
                h[j] = (double)hu[j];
            if (us->n) {
                const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
                for (uint32_t q = 0; q < us->n; q++) {
                    const float *wi = m->W + (size_t)it[q] * k;
                    double x = 0;
                    for (uint32_t j = 0; j < k; j++)
                        x += wi[j] * h[j];
                    m->klwh[q] = x;
                }
                model_kl_ratios(m, us, m->klwh);
            }
            MODEL_BY_K(k, model_kl_share_k, m, us, h, s);
        } else if (us->n) {
            const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
            const float *va = pool_vals(&m->pool, us->cls, us->slab);
            for (uint32_t q = 0; q < us->n; q++) {
                double *bi = m->B + (size_t)it[q] * k;
                double v = va[q];
                for (uint32_t j = 0; j < k; j++)
                    bi[j] += v * an[j];
            }
        }
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                m->A[(size_t)j * k + l] += an[j] * (double)hu[l];
        m->loss_s += s * us->loss;
        m->norm_s += s * us->vnorm;
        us->flags = (uint8_t)((us->flags | MODEL_U_INB) & ~MODEL_U_GB);
    }
    for (uint32_t j = 0; j < k; j++)
        m->hs[j] = m->hsi[j] = 1;
}

int64_t model__heavy_user(const struct model *m, struct rng *rng)
{
    const uint32_t U = ids_slots(m->uids);
    int64_t best = -1;
    double bw = 0;
    for (int t = 0; t < MODEL_HEAVY_DRAWS && U; t++) {
        uint32_t u = (uint32_t)rng_below(rng, U);
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n)
            continue;
        double w = model__frame_weight(m, us->t) * us->vnorm;
        if (best < 0 || w > bw) {
            bw = w;
            best = u;
        }
    }
    return best;
}

void model__column_from_user(const struct model *m, uint32_t u, float *W,
                             size_t M, uint32_t j)
{
    const uint32_t k = m->k;
    const struct model_user *us = &m->u[u];
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    double nv = 0;
    for (uint32_t q = 0; q < us->n; q++)
        nv += (double)va[q] * va[q];
    nv = sqrt(nv);
    for (size_t i = 0; i < M; i++)
        W[i * k + j] = 0;
    for (uint32_t q = 0; q < us->n; q++)
        W[(size_t)it[q] * k + j] = (float)(va[q] / nv);
}

/* Picks a heavy user (model__heavy_user with the model's generator; any
 * user with a profile if none of the draws has one) and sets column j of
 * W to its normalised profile. Returns 0 when no user has a profile. */
static int model_resample(struct model *m, uint32_t j)
{
    uint32_t U = ids_slots(m->uids);
    if (!ids_live(m->uids))
        return 0;
    int64_t best = model__heavy_user(m, &m->rng);
    if (best < 0) {
        uint32_t start = (uint32_t)rng_below(&m->rng, U);
        for (uint32_t c = 0; c < U && best < 0; c++) {
            uint32_t u = (start + c) % U;
            if ((m->u[u].flags & MODEL_U_LIVE) && m->u[u].n)
                best = u;
        }
    }
    if (best < 0)
        return 0;
    model__column_from_user(m, (uint32_t)best, m->W, ids_slots(m->iids), j);
    return 1;
}

/* Column j of W set to the uniform unit column over the live items, for a
 * column that has to be replaced when no profile exists to resample from.
 * Returns 0 when no item is live. */
static int model_column_uniform(struct model *m, uint32_t j)
{
    const uint32_t k = m->k, M = ids_slots(m->iids), live = ids_live(m->iids);
    if (!live)
        return 0;
    float x = (float)(1.0 / sqrt((double)live));
    for (uint32_t i = 0; i < M; i++)
        m->W[(size_t)i * k + j] = ids_get(m->iids, i, NULL) ? x : 0;
    return 1;
}

/* Columns cols[0..n) of W, side by side (M x n floats), or NULL. */
static float *model_columns_copy(const struct model *m, const uint32_t *cols,
                                 uint32_t n)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    float *c = malloc((size_t)M * n * sizeof(float));
    if (c)
        for (uint32_t i = 0; i < M; i++)
            for (uint32_t a = 0; a < n; a++)
                c[(size_t)i * n + a] = m->W[(size_t)i * k + cols[a]];
    return c;
}

/* Topic identity for the columns a refresh resampled (mult[j] == 0 among
 * the nd dead ones, whose columns before the refresh are in old, M x nd,
 * or NULL when fewer than two died or no memory): they are matched among
 * themselves (model__match), each taking the index of the dead column it
 * resembles most. Only among themselves: a live column is not re-seeded,
 * its users' h and the statistics carry its identity. A resampled column
 * has h_j = 0 for everyone and a zero row and column in A and B, so
 * moving W's columns is the whole permutation. */
static void model_dead_match(struct model *m, const uint32_t *dead, uint32_t nd,
                             const float *old, const double *mult)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    uint32_t co[MODEL_K_MAX], cn[MODEL_K_MAX], to[MODEL_K_MAX], n = 0;
    float x[MODEL_K_MAX];
    for (uint32_t a = 0; a < nd; a++) {
        if (mult[dead[a]] != 0)
            continue;
        co[n] = a;
        cn[n++] = dead[a];
    }
    m->reseeded += n;
    if (n < 2 || !old || model__match(M, n, old, nd, co, m->W, k, cn, to))
        return;
    for (uint32_t i = 0; i < M; i++) {
        float *wi = m->W + (size_t)i * k;
        for (uint32_t a = 0; a < n; a++)
            x[a] = wi[cn[to[a]]];
        for (uint32_t a = 0; a < n; a++)
            wi[cn[a]] = x[a];
    }
    for (uint32_t a = 0; a < n; a++)
        m->moved += to[a] != a;
}

/*
 * W refresh: HALS sweeps on the true A and B (hals.c), then each column
 * normalised to unit L2 norm as a reparametrisation: with n_j the norm of
 * column j, w_j /= n_j while h_u[j] *= n_j for every user (through the
 * column scale hs[j], not a pass over the users), A's row and column
 * j *= n_j and B's column j *= n_j, so W H, A and B describe the same
 * model. HALS is invariant to a common scale of A and B except for
 * alpha_w, which is divided by the frame scale. A dead column (A_jj below
 * 1e-12 of the largest, or a zero column) is resampled from a heavy user
 * and its h entries, A row/column and B column set to zero. G = W^T W is
 * recomputed at the end and every user becomes stale.
 */
/*
 * loss = kl: W refreshed by one multiplicative update from online
 * statistics, the online KL NMF of Lefevre, Bach & Fevotte ("Online
 * algorithms for nonnegative matrix factorization with the Itakura-Saito
 * divergence", WASPAA 2011, whose updates are those of the beta
 * divergences, KL being beta = 1):
 *     W_ij <- W_ij * KA_ij / kb_j,
 *     KA_ij = sum_u c_u h_uj v_ui / (W h_u)_i,   kb_j = sum_u c_u h_uj,
 * the update of Lee & Seung (NIPS 2001) with its sums over users kept as
 * running statistics: each re-solve takes the user's old share out and
 * puts the new one in (model_kl_share_k), as the Frobenius path does
 * for A and B. We chose it over the general-divergence framework of
 * Zhao, Tan & Xu (arXiv 1608.00075), which takes a projected stochastic
 * gradient step per user with a step size to tune, because this update
 * has no step size, keeps W >= 0 by construction and is the batch
 * algorithm's exact step whenever every share is current.
 *
 * A share's ratios are taken at the W of the user's last solve. Taken
 * as they are, as in the paper, the shares of users not re-solved since
 * W moved keep asking for the same correction at every refresh, and W
 * compounds it: measured on the MovieLens prefix at the work-based
 * refresh rate, h ran to 1e12 and most users ended with h = 0 and an
 * infinite divergence. So each refresh first brings those shares to the
 * current W (model_kl_sync, one pass over their profiles, charged to the
 * refresh by the work rule): the update is then the exact batch step of
 * Lee & Seung on the current H, and between refreshes KA stays exact as
 * users are re-solved. What is not exact is H, as in the Frobenius path:
 * a user's h is the solve at its last event or refinement. kb is exact
 * for the current h. W_ij is floored at MODEL_KL_WMIN (relative
 * to its column's largest entry) so that (W h)_i stays positive and an
 * entry the update zeroed can come back; dead items (zero rows) stay 0.
 * In B's stored units both sums carry the same column scales and frame,
 * which cancel in the ratio. Columns then go to unit L2 norm as in
 * model_refresh; colsq receives their squared norms. O(items k).
 */

/* loss = kl, before the update: the share of every user whose ratios
 * were taken at an older W (not re-solved since the last refresh, or W
 * replaced since, kl_wgen) brought to the ratios of the current W and its
 * current h, so that KA is exact for the W the update multiplies. One
 * pass over those profiles (model_kl_resync_k: W h and B's rows over the
 * coordinates where h is not 0, the share moved by the change of its
 * ratios), counted in sync_rows (the refresh-by-work rule charges it to
 * the refresh). The pass is bound by memory, rows of W and B scattered
 * over the items for every profile entry, so it hints the rows of the
 * users ahead (model_kl_sync_hint). */
/* The sync's hints, users ahead of the one it moves: the profile slab
 * and h of the user two ahead, the W and B rows of the first entries of
 * the next (most profiles are a few entries, shorter than the look-ahead
 * within one, model_kl_resync_k's). */
static void model_kl_sync_hint(const struct model *m, uint32_t u, uint32_t U)
{
    const size_t k = m->k;
    if (u + 2 < U) {
        const struct model_user *x = &m->u[u + 2];
        if (x->slab != POOL_NONE) {
            __builtin_prefetch(pool_items(&m->pool, x->cls, x->slab));
            __builtin_prefetch(pool_vals(&m->pool, x->cls, x->slab));
            __builtin_prefetch(pool_aux(&m->pool, x->cls, x->slab), 1);
            __builtin_prefetch(m->H + (u + 2) * k);
        }
    }
    if (u + 1 < U) {
        const struct model_user *x = &m->u[u + 1];
        if (x->slab != POOL_NONE) {
            const uint32_t *it = pool_items(&m->pool, x->cls, x->slab);
            for (uint32_t q = 0; q < x->n && q < 4; q++) {
                model_prefetch_span(m->W + it[q] * k, k * sizeof(float), 0);
                model_prefetch_span(m->B + it[q] * k, k * sizeof(double), 1);
            }
        }
    }
}

static void model_kl_sync(struct model *m)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    const int all = m->kl_wgen != m->wgen;
    double h[MODEL_K_MAX];
    for (uint32_t u = 0; u < U; u++) {
        struct model_user *us = &m->u[u];
        model_kl_sync_hint(m, u, U);
        if (!(us->flags & MODEL_U_LIVE) || !us->n ||
            (!all && us->solved == (uint32_t)m->refreshes))
            continue;
        const double c = model__frame_weight(m, us->t);
        for (uint32_t j = 0; j < k; j++)
            h[j] = (double)m->H[(size_t)u * k + j] * m->hs[j];
        if (us->flags & MODEL_U_INB) {
            MODEL_BY_K(k, model_kl_resync_k, m, us, h, c);
            m->sync_rows += us->n;
            continue;
        }
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++) {
            const float *wi = m->W + (size_t)it[q] * k;
            double x = 0;
            for (uint32_t j = 0; j < k; j++)
                x += wi[j] * h[j];
            m->klwh[q] = x;
        }
        model_kl_ratios(m, us, m->klwh);
        MODEL_BY_K(k, model_kl_share_k, m, us, h, c);
        us->flags |= MODEL_U_INB;
        m->sync_rows += 2u * us->n;
    }
    m->kl_wgen = m->wgen + 1; /* the refresh's own bump follows */
}

static void model_kl_update(struct model *m, const uint8_t *skip, double *colsq)
{
    const uint32_t k = m->k;
    const size_t M = ids_slots(m->iids);
    double r[MODEL_K_MAX];
    float wmax[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        r[j] = !skip[j] && m->kb[j] > 0 ? 1.0 / m->kb[j] : 0;
        wmax[j] = 0;
    }
    for (size_t i = 0; i < M; i++) {
        float *restrict wi = m->W + i * k;
        const double *restrict bi = m->B + i * k;
        for (uint32_t j = 0; j < k; j++) {
            if (skip[j])
                continue;
            double x = wi[j] * (bi[j] > 0 ? bi[j] * r[j] : 0);
            float y = x < MODEL_W_MAX ? (float)x : MODEL_W_MAX;
            wi[j] = isfinite(x) ? y : 0;
            if (wi[j] > wmax[j])
                wmax[j] = wi[j];
        }
    }
    for (size_t i = 0; i < M; i++) {
        float *restrict wi = m->W + i * k;
        const int live = ids_get(m->iids, (uint32_t)i, NULL) != NULL;
        for (uint32_t j = 0; j < k; j++) {
            if (skip[j])
                continue;
            float lo = MODEL_KL_WMIN * wmax[j];
            if (live && wi[j] < lo)
                wi[j] = lo;
            colsq[j] += (double)wi[j] * wi[j];
        }
    }
}

void model__kl_colsums(struct model *m)
{
    if (model__kl(m))
        kl_colsums(m->k, ids_slots(m->iids), m->W, m->kls);
}

void model__loss_kl(const struct model *m, double *loss, double *norm)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    double sl = 0, sn = 0;
    for (uint32_t u = 0; u < U; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n)
            continue;
        double c = model__frame_weight(m, us->t), h[MODEL_K_MAX], vs = 0;
        const float *hu = m->H + (size_t)u * k;
        for (uint32_t j = 0; j < k; j++)
            h[j] = (double)hu[j] * m->hs[j];
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        const float *va = pool_vals(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++)
            vs += va[q];
        sl += c * kl_divergence(k, m->W, m->kls, it, va, us->n, h, m->klwh);
        sn += c * vs;
    }
    *loss = sl;
    *norm = sn;
}

int model__kl_load(struct model *m)
{
    if (!model__kl(m))
        return 0;
    if (!m->kb) {
        m->kb = calloc(m->k, sizeof(double));
        m->kls = calloc(m->k, sizeof(double));
        m->klwh = calloc(2 * (m->p.profile_max + 1u), sizeof(double));
        if (!m->kb || !m->kls || !m->klwh)
            return -ENOMEM;
    }
    if (!m->pool.aux) {
        /* Every profile into a pool whose slabs have the ratios' room. */
        struct pool np;
        memset(&np, 0, sizeof(np));
        np.aux = 1;
        for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++) {
            struct model_user *us = &m->u[u];
            if (us->slab == POOL_NONE)
                continue;
            if (pool_reserve(&np, us->cls)) {
                pool_free(&np);
                return -ENOMEM;
            }
            uint32_t s = pool_alloc(&np, us->cls);
            memcpy(pool_items(&np, us->cls, s),
                   pool_items(&m->pool, us->cls, us->slab),
                   us->n * sizeof(uint32_t));
            memcpy(pool_vals(&np, us->cls, s),
                   pool_vals(&m->pool, us->cls, us->slab),
                   us->n * sizeof(float));
            us->slab = s;
        }
        pool_free(&m->pool);
        m->pool = np;
    }
    model__kl_colsums(m);
    return 0;
}

void model_refresh(struct model *m)
{
    const uint32_t k = m->k;
    const size_t M = ids_slots(m->iids);
    double *S = m->S;
    uint8_t skip[MODEL_K_MAX];
    double colsq[MODEL_K_MAX], mult[MODEL_K_MAX];
    double maxdiag = 0;

    if (m->follower)
        return; /* the group's leader refreshes W (group.c) */
    model__restart_drop(m);
    m->sync_rows = 0;
    model__b_sync(m);
    if (model__kl(m))
        model_kl_sync(m);
    if (m->p.robust == MODEL_ROBUST_L21)
        model__l21_threshold(m);
    m->wgen++;
    for (uint32_t j = 0; j < k; j++)
        for (uint32_t l = 0; l < k; l++)
            S[(size_t)j * k + l] =
                0.5 * (m->A[(size_t)j * k + l] + m->A[(size_t)l * k + j]);
    for (uint32_t j = 0; j < k; j++)
        if (S[(size_t)j * k + j] > maxdiag)
            maxdiag = S[(size_t)j * k + j];
    int any = 0;
    for (uint32_t j = 0; j < k; j++) {
        skip[j] = !(maxdiag > 0 && S[(size_t)j * k + j] > 1e-12 * maxdiag);
        any |= !skip[j];
        colsq[j] = 0;
        mult[j] = 1;
    }
    if (M && any && model__kl(m)) {
        model_kl_update(m, skip, colsq);
    } else if (M && any) {
        double scale = model_scale(m);
        double a1 = m->p.alpha_w * m->p.l1_ratio / scale;
        double a2 = m->p.alpha_w * (1 - m->p.l1_ratio) / scale;
        hals_update(k, M, m->W, m->B, m->bcol, S, skip, a1, a2,
                    m->p.hals_sweeps, colsq);
    }
    int rescale = 0;
    uint32_t dead[MODEL_K_MAX], nd = 0;
    for (uint32_t j = 0; j < k; j++)
        if (skip[j] || !(sqrt(colsq[j]) > 0 && isfinite(sqrt(colsq[j]))))
            dead[nd++] = j;
    float *old = nd > 1 && M ? model_columns_copy(m, dead, nd) : NULL;
    for (uint32_t j = 0; j < k; j++) {
        if (!skip[j]) {
            double nj = sqrt(colsq[j]);
            if (nj > 0 && isfinite(nj)) {
                mult[j] = nj;
                rescale |= nj != 1;
                continue;
            }
        }
        /* Dead: resample when a profile exists; with none, a column
         * that HALS overwrote (zero or not finite) becomes uniform and
         * one it skipped is left be. */
        if (M && (model_resample(m, j) ||
                  (!skip[j] && model_column_uniform(m, j)))) {
            mult[j] = 0;
            rescale = 1;
        }
    }
    model_dead_match(m, dead, nd, old, mult);
    free(old);
    double inv[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        inv[j] = mult[j] > 0 ? 1.0 / mult[j] : 1.0;
    int rebuild = 0;
    if (rescale) {
        /* W's columns are divided below, in the pass that builds G; h's
         * are multiplied through their column scales, in O(k). */
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                m->A[(size_t)j * k + l] *= mult[j] * mult[l];
        uint32_t U = ids_slots(m->uids);
        for (uint32_t j = 0; j < k; j++) {
            if (mult[j] > 0) {
                m->bcol[j] *= mult[j];
                m->hs[j] *= mult[j];
                m->hsi[j] = 1.0 / m->hs[j];
                rebuild |= !(m->hs[j] >= 1.0 / MODEL_HS_RANGE &&
                             m->hs[j] <= MODEL_HS_RANGE);
                continue;
            }
            /* A resampled column starts with h_j = 0 for everyone. */
            for (size_t i = 0; i < M; i++)
                m->B[i * k + j] = 0;
            m->bcol[j] = 1;
            if (m->kb)
                m->kb[j] = 0;
            for (uint32_t u = 0; u < U; u++)
                m->H[(size_t)u * k + j] = 0;
            m->hs[j] = m->hsi[j] = 1;
        }
        model_bcol_fold(m);
        rebuild |= ++m->reparams >= MODEL_REBUILD_EVERY;
    }
    memset(m->G, 0, (size_t)k * k * sizeof(double));
    hals_gram(k, M, m->W, rescale ? inv : NULL, m->G);
    model__kl_colsums(m);
    model__w_changed(m, 0, M);
    if (rebuild) {
        model_rebuild(m);
        m->reparams = 0;
    }
    m->refreshes++;
    m->stale = ids_live(m->uids);
    m->since_refresh = 0;
    m->work = 0;
    m->dirty = 0;
    /* A refresh's cost, as model_refresh_due counts it. */
    m->work_all += (uint64_t)k * k * (m->p.hals_sweeps + 1u) * M +
                   (uint64_t)k * m->sync_rows + (uint64_t)k * k * k;
}

static void model_solve_all(struct model *m)
{
    uint32_t U = ids_slots(m->uids);
    for (uint32_t u = 0; u < U; u++)
        if (m->u[u].flags & MODEL_U_LIVE)
            model_user_solve(m, u, NULL, NULL);
}

/*
 * Seeding of W for the warm-up when NNDSVDa cannot (k above the live items
 * or the users with a profile), k-means++ style (Arthur & Vassilvitskii,
 * SODA 2007) on the users' normalised profiles with cosine distance:
 * column j is the normalised profile of a user drawn with probability
 * proportional to d_u^2 sqrt(c_u |v_u|^2), d_u being its distance
 * 1 - cos(v_u, w_l) to the closest column already chosen, plus a small
 * random floor so that no item row starts at zero. Starting alternating
 * NNLS from distinct, data-shaped columns avoids most of the merged/split
 * topic local minima that a uniform random start falls into. Skipped (W
 * stays random) when there are fewer users with a profile than k or no
 * memory for the work arrays.
 */
static void model_seed_columns(struct model *m, int match)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    const size_t M = ids_slots(m->iids);
    uint32_t have = 0;
    for (uint32_t u = 0; u < U; u++)
        have += (m->u[u].flags & MODEL_U_LIVE) && m->u[u].n;
    if (have < k || !M)
        return;
    double *d = malloc((size_t)U * sizeof(double));
    double *x = calloc(M, sizeof(double));
    /* The seed is built beside W (the columns it does not reach keep
     * theirs) and then installed (model__w_install, matched with
     * match). */
    float *Wn = malloc(M * k * sizeof(float));
    if (!d || !x || !Wn)
        goto out;
    memcpy(Wn, m->W, M * k * sizeof(float));
    for (uint32_t u = 0; u < U; u++)
        d[u] = 1;
    double floor = 1e-3 / sqrt((double)M);
    for (uint32_t j = 0; j < k; j++) {
        double total = 0;
        for (uint32_t u = 0; u < U; u++) {
            const struct model_user *us = &m->u[u];
            if ((us->flags & MODEL_U_LIVE) && us->n)
                total += d[u] * d[u] *
                         sqrt(model__frame_weight(m, us->t) * us->vnorm);
        }
        double r = rng_uniform(&m->rng) * total, acc = 0;
        int64_t pick = -1;
        for (uint32_t u = 0; u < U; u++) {
            const struct model_user *us = &m->u[u];
            if (!(us->flags & MODEL_U_LIVE) || !us->n)
                continue;
            double w =
                d[u] * d[u] * sqrt(model__frame_weight(m, us->t) * us->vnorm);
            if (w <= 0)
                continue;
            pick = u;
            acc += w;
            if (acc > r)
                break;
        }
        if (pick < 0)
            break;
        const struct model_user *ps = &m->u[pick];
        const uint32_t *pit = pool_items(&m->pool, ps->cls, ps->slab);
        const float *pva = pool_vals(&m->pool, ps->cls, ps->slab);
        double nv = sqrt(ps->vnorm);
        for (uint32_t q = 0; q < ps->n; q++)
            x[pit[q]] = pva[q] / nv;
        double sq = 0;
        for (size_t i = 0; i < M; i++) {
            double w = ids_get(m->iids, (uint32_t)i, NULL)
                           ? x[i] + floor * rng_uniform(&m->rng)
                           : 0;
            Wn[i * k + j] = (float)w;
            sq += w * w;
        }
        for (size_t i = 0; i < M; i++)
            Wn[i * k + j] = (float)(Wn[i * k + j] / sqrt(sq));
        for (uint32_t u = 0; u < U; u++) {
            const struct model_user *us = &m->u[u];
            if (!(us->flags & MODEL_U_LIVE) || !us->n)
                continue;
            const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
            const float *va = pool_vals(&m->pool, us->cls, us->slab);
            double dot = 0;
            for (uint32_t q = 0; q < us->n; q++)
                dot += va[q] * x[it[q]];
            double dist = 1 - dot / sqrt(us->vnorm);
            if (dist < d[u])
                d[u] = dist > 0 ? dist : 0;
        }
        for (uint32_t q = 0; q < ps->n; q++)
            x[pit[q]] = 0;
    }
    model__w_install(m, Wn, match);
out:
    free(d);
    free(x);
    free(Wn);
}

/*
 * Relabels the topics: topic j becomes what topic src[j] was, in
 * everything indexed by topic, so that the model is the same model with
 * its topics in another order: W's columns and G's rows and columns with
 * them, H's columns with their scales hs, A's rows and columns, B's
 * columns with their scales bcol, the cached W^T v and held g of heavy
 * users. Every number is moved, none recomputed, so the loss (a sum over
 * users) and every user's h stay bit for bit, in the new order. A user's
 * mark stays what its last record showed; one whose segment now has
 * another index is marked (model.h's rule), so its next record says so.
 * O((items + users) k + k^2); used where nothing was published since the
 * order being undone appeared (the end of the warm-up).
 */
void model__topics_permute(struct model *m, const uint32_t *src)
{
    const uint32_t k = m->k, M = ids_slots(m->iids), U = ids_slots(m->uids);
    double x[MODEL_K_MAX], y[MODEL_K_MAX];
    float f[MODEL_K_MAX], ht[MODEL_K_MAX];
    double *T = m->S;
    model__restart_drop(m);
    for (uint32_t i = 0; i < M; i++) {
        float *wi = m->W + (size_t)i * k;
        double *bi = m->B + (size_t)i * k;
        for (uint32_t j = 0; j < k; j++) {
            f[j] = wi[src[j]];
            x[j] = bi[src[j]];
        }
        memcpy(wi, f, k * sizeof(float));
        memcpy(bi, x, k * sizeof(double));
    }
    model__w_changed(m, 0, M);
    for (uint32_t u = 0; u < U; u++) {
        float *hu = m->H + (size_t)u * k;
        for (uint32_t j = 0; j < k; j++)
            f[j] = hu[src[j]];
        memcpy(hu, f, k * sizeof(float));
    }
    for (uint32_t s = 0; s < m->bc_n; s++) {
        double *b = m->bc + (size_t)s * k, *g = m->bg + (size_t)s * k;
        for (uint32_t j = 0; j < k; j++) {
            x[j] = b[src[j]];
            y[j] = g[src[j]];
        }
        memcpy(b, x, k * sizeof(double));
        memcpy(g, y, k * sizeof(double));
    }
    double *kv[] = {m->bcol, m->hs, m->hsi, m->kb, m->kls};
    for (size_t v = 0; v < sizeof(kv) / sizeof(kv[0]); v++) {
        if (!kv[v])
            continue; /* kb and kls: loss = kl only */
        for (uint32_t j = 0; j < k; j++)
            x[j] = kv[v][src[j]];
        memcpy(kv[v], x, k * sizeof(double));
    }
    double *kk[] = {m->A, m->G};
    for (size_t v = 0; v < sizeof(kk) / sizeof(kk[0]); v++) {
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                T[(size_t)j * k + l] = kk[v][(size_t)src[j] * k + src[l]];
        memcpy(kk[v], T, (size_t)k * k * sizeof(double));
    }
    for (uint32_t u = 0; u < U; u++) {
        struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE))
            continue;
        const float *hu = m->H + (size_t)u * k;
        for (uint32_t j = 0; j < k; j++)
            ht[j] = (float)((double)hu[j] * m->hs[j]);
        model_user_mark(m, us, ht, 0, k);
    }
    for (uint32_t j = 0; j < k; j++)
        m->moved += src[j] != j;
}

/* W was replaced outside a refresh: W^T W, KL's column sums, the bounds
 * of the recommendations and every cache keyed on W's generation (the
 * heavy users' W^T v, the held-out score) follow it. */
void model__w_replaced(struct model *m)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    memset(m->G, 0, (size_t)k * k * sizeof(double));
    hals_gram(k, M, m->W, NULL, m->G);
    model__kl_colsums(m);
    model__w_changed(m, 0, M);
    m->wgen++;
}

/*
 * The warm-up's rounds, accelerated by extrapolation (Ang & Gillis,
 * "Accelerating nonnegative matrix factorization algorithms using
 * extrapolation", Neural Computation 31(2), 2019, the scheme "with
 * restarts"). A round of alternating NNLS solves every h exactly against
 * W, then refreshes W from the exact A and B (HALS); with W_n the
 * refreshed W of round n, the next round solves against
 *
 *     W~_n = P( W_n + beta (W_n - W_{n-1}) ),   P: max(0, .), then each
 *                                               column scaled to unit norm
 *
 * instead of W_n. If its loss is above the round before, the step is
 * undone: h is solved again against W_n (its loss is at most the round
 * before's, since a refresh never raises the loss of the h it was built
 * from), beta is divided by eta and becomes the new ceiling. Otherwise
 * beta grows by gamma, up to the ceiling, which grows by gamma_bar up to
 * 1. Only W is extrapolated: every h is solved exactly against each W, so
 * an extrapolated H would only feed a W update that HALS recomputes from
 * A and B. beta0 = 0.5, eta = 1.5, gamma = 1.05, gamma_bar = 1.01.
 *
 * Measured on the data sets of data/ (k = 16, docs/benchmarks.md
 * section 1): the rounds to the warm-up's stop fall from 30 to 17
 * (kernlab_ticdata), 20 (hobbies), 21 (MovieLens) and 23 (supermarket),
 * at the same or a lower loss; glibc's fast rounds (9, now 10) keep their
 * minimum by starting the extrapolation at the third round.
 * Not under loss = kl, whose W update is multiplicative.
 */
struct model_warm_ex {
    float *Wn;   /* W_n, the last refreshed W */
    float *Wp;   /* W_{n-1} */
    double beta, ceil;
    int on;      /* the round just solved used W~ */
};

static void model_warm_extrapolate(struct model *m, struct model_warm_ex *x)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    double nrm[MODEL_K_MAX] = {0};
    float *W = m->W;
    for (size_t i = 0; i < (size_t)M; i++)
        for (uint32_t j = 0; j < k; j++) {
            size_t o = i * k + j;
            float y = x->Wn[o] + (float)x->beta * (x->Wn[o] - x->Wp[o]);
            W[o] = y > 0 ? y : 0;
            nrm[j] += (double)W[o] * W[o];
        }
    for (uint32_t j = 0; j < k; j++) {
        /* A column extrapolated to nothing keeps W_n's. */
        int keep = !(nrm[j] > 0 && isfinite(nrm[j]));
        float inv = keep ? 1 : (float)(1.0 / sqrt(nrm[j]));
        for (size_t i = 0; i < (size_t)M; i++)
            W[i * k + j] = keep ? x->Wn[i * k + j] : W[i * k + j] * inv;
    }
    model__w_replaced(m);
    x->on = 1;
}

/* Warm-up: W seeded from the profiles seen so far (NNDSVDa, else
 * k-means++), then batch alternating NNLS on them (solve every h, refresh
 * W, extrapolate W as above) until the relative loss improves by less
 * than 1e-4 or 30 solves of every user, then A and B rebuilt exactly. The
 * rounds move the seed's columns far, and nothing is published in
 * between: so when refreshes had given the old W a meaning, the warm-up's
 * result, not only its seed, is matched to it and the whole model
 * relabelled (model__topics_permute). */
static void model_warmup(struct model *m)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    const size_t wbytes = (size_t)M * k * sizeof(float);
    float *old = m->refreshes && M ? malloc(wbytes) : NULL;
    struct model_warm_ex x = {.beta = 0.5, .ceil = 1};
    double prev = -1;
    if (old)
        memcpy(old, m->W, wbytes);
    if (M && !model__kl(m)) {
        x.Wn = malloc(wbytes);
        x.Wp = malloc(wbytes);
    }
    /* The seed in its own order: the rounds from it are the warm-up's
     * tuned path, and their result is what gets matched. */
    if (model__seed_nndsvd(m, 0))
        model_seed_columns(m, 0);
    for (int r = 0; r < 30; r++) {
        model_solve_all(m);
        double rel = model_rel_loss(m);
        if (x.on && rel > prev) {
            x.ceil = x.beta;
            x.beta /= 1.5;
            memcpy(m->W, x.Wn, wbytes);
            model__w_replaced(m);
            model_solve_all(m);
            rel = model_rel_loss(m);
            r++;
        } else if (x.on) {
            x.beta = fmin(x.beta * 1.05, x.ceil);
            x.ceil = fmin(x.ceil * 1.01, 1);
        }
        x.on = 0;
        if (r >= 29 || (prev >= 0 && prev - rel <= 1e-4 * prev))
            break;
        prev = rel;
        if (x.Wn && x.Wp)
            memcpy(x.Wp, r ? x.Wn : m->W, wbytes);
        model_refresh(m);
        if (x.Wn && x.Wp) {
            memcpy(x.Wn, m->W, wbytes);
            if (r >= 1)
                model_warm_extrapolate(m, &x);
        }
    }
    free(x.Wn);
    free(x.Wp);
    model_rebuild(m);
    if (old) {
        uint32_t all[MODEL_K_MAX], to[MODEL_K_MAX];
        for (uint32_t j = 0; j < k; j++)
            all[j] = j;
        if (!model__match(M, k, old, k, all, m->W, k, all, to))
            model__topics_permute(m, to);
        free(old);
    }
    m->warm_done = 1;
}

void model_warm(struct model *m)
{
    uint8_t f = m->follower;
    m->follower = 0;
    model_warmup(m);
    m->follower = f;
}

/*
 * When a fold refreshes W by itself: by work done, never by time.
 *
 * A refresh costs C = k^2 (hals_sweeps + 1) M + k R + k^3 multiply-adds:
 * the HALS sweeps and the Gram matrix over the M item rows, the B sync
 * over the R profile rows it last went through (the heavy users' shares
 * held since the previous refresh), the symmetrised A. The re-solves
 * since the last refresh did F multiply-adds (model_user_solve_k counts
 * them: k per profile row of W or B it went through, k^2 per NNLS
 * sweep). The fold refreshes when
 *
 *     F >= refresh_work * C    or    folds >= refresh_events,
 *
 * so refreshes take at most 1 / (1 + refresh_work) of the time (a fifth
 * at MODEL_REFRESH_WORK, 4, which the offline paths set) whatever the
 * data, and W moves as often as that budget
 * allows: early in a stream, with few items, every few dozen events;
 * with many items and light users, every few thousand; refresh_events
 * bounds the gap when the folds are cheap against a huge item set (a
 * big catalogue with few active users). The ratio was measured
 * (docs/benchmarks.md): against 1, at 0.25 the pass ends 1-2% lower in
 * loss on the real data sets for twice the time, at 4 and 16 it ends
 * 1-12% higher (36% on glibc_changelog at 4); after the idle refinement
 * run to convergence all end within 0.1%, after nmfctl fit's bounded one
 * 4 ends 0-9% higher than 1 and the pass is 10-30% quicker where items
 * are few and refreshes frequent, which is where fit was slowest against
 * its peers.
 * Before the warm-up only refresh_events counts (the warm-up replaces W
 * anyway), and refresh_events = 0 turns automatic refreshes off (the
 * caller refreshes). Since F and C are counts of the model's own
 * operations, the same events give the same refreshes whatever their
 * timestamps and however fast the machine is.
 *
 * refresh_work is off (0) by default and in the daemon, which refreshes
 * by its wall-clock refresh_interval and refresh_events: a live stream
 * arrives over time and W need not move faster than the epochs that
 * publish it, and the rule would cost a third of its fold rate
 * (docs/benchmarks.md). A backfill (nmfctl fit, rank) has no clock worth
 * following and turns it on.
 */
static int model_refresh_due(const struct model *m)
{
    const uint64_t k = m->k;
    if (!m->p.refresh_events)
        return 0;
    if (m->since_refresh >= m->p.refresh_events)
        return 1;
    if (m->p.refresh_work <= 0 || (m->p.warmup_events && !m->warm_done))
        return 0;
    /* loss = kl: the multiplicative update, the floor and the column
     * sums are three passes of k over the item rows, then G. */
    double rowc = model__kl(m) ? (double)k * (k + 3.0)
                               : (double)(k * k) * (m->p.hals_sweeps + 1.0);
    double cost = rowc * (double)ids_slots(m->iids) +
                  (double)(k * m->sync_rows) + (double)(k * k * k);
    return (double)m->work >= m->p.refresh_work * cost;
}

/* Position of item x in a profile, -1 if absent: blocks of 16 compared
 * at once (a vector compare, then a test of the whole block), then the
 * exact position in the block that hit. */
typedef uint32_t model_u32x8 __attribute__((vector_size(32), aligned(4)));
typedef uint64_t model_u64x4 __attribute__((vector_size(32)));
ONLINE_KERNEL
static int64_t model_find(const uint32_t *restrict it, uint32_t n, uint32_t x)
{
    uint32_t q = 0;
    for (; q + 16 <= n; q += 16) {
        model_u32x8 a, b;
        memcpy(&a, it + q, sizeof(a));
        memcpy(&b, it + q + 8, sizeof(b));
        model_u32x8 eq = (model_u32x8)((a == x) | (b == x));
        model_u64x4 w;
        memcpy(&w, &eq, sizeof(w));
        if (w[0] | w[1] | w[2] | w[3])
            break;
    }
    for (; q < n; q++)
        if (it[q] == x)
            return q;
    return -1;
}

/* The API's refusals, before anything is looked at. */
static int model_event_check(const char *user, size_t user_len,
                             const char *item, size_t item_len, double weight,
                             int64_t ts)
{
    if (!user || !item || !user_len || !item_len)
        return -EINVAL;
    if (user_len > MODEL_ID_MAX || item_len > MODEL_ID_MAX)
        return -ENAMETOOLONG;
    if (!(weight >= 0) || !isfinite(weight))
        return -EINVAL;
    if (weight > MODEL_WEIGHT_MAX || ts < 0 || ts > MODEL_TS_MAX)
        return -ERANGE;
    return 0;
}

/* model_fold of a checked event whose id hashes are known, and maybe its
 * indices (ui, ii: -1 when not known to exist; ids are never removed
 * while folding, so an index found earlier stays right). */
static int model_fold_checked(struct model *m, const char *user,
                              size_t user_len, uint64_t uh, int64_t ui,
                              const char *item, size_t item_len, uint64_t ih,
                              int64_t ii, double weight, int64_t ts, int defer)
{
    /* A held-out pair goes to the held-out matrix and nowhere else: not
     * the profile, A, B, the time or the counters that decide refreshes. */
    if (m->ho && holdout_pair_held(m->p.holdout, m->p.holdout_salt, user,
                                   user_len, item, item_len))
        return holdout_add(m->ho, user, user_len, item, item_len, weight, ts,
                           m->p.half_life_ms);
    /* Reserve every growth first: a failure leaves the model unchanged. */
    if (ui < 0)
        ui = ids_find_hash(m->uids, user, user_len, uh);
    if (ii < 0)
        ii = ids_find_hash(m->iids, item, item_len, ih);
    int64_t pos = -1;
    int rc;
    if (ii < 0) {
        if ((rc = ids_reserve(m->iids, item_len)) ||
            (rc = model__items_grow(m, ids_slots(m->iids) + 1)))
            return rc;
    }
    if (ui < 0) {
        if ((rc = ids_reserve(m->uids, user_len)) ||
            (rc = model__users_grow(m, ids_slots(m->uids) + 1)) ||
            (rc = pool_reserve(&m->pool, 0)))
            return rc;
    } else {
        const struct model_user *us = &m->u[ui];
        if (ii >= 0 && us->n)
            pos = model_find(pool_items(&m->pool, us->cls, us->slab), us->n,
                             (uint32_t)ii);
        if (pos < 0 && us->n < m->p.profile_max &&
            (us->slab == POOL_NONE || us->n == pool_cap(us->cls))) {
            uint32_t c = us->slab == POOL_NONE ? 0 : us->cls + 1u;
            if ((rc = pool_reserve(&m->pool, c)))
                return rc;
        }
        if (!model__kl(m) && us->bslot == POOL_NONE &&
            us->n + 1u >= MODEL_BCACHE_MIN && (rc = model__bcache_reserve(m)))
            return rc;
    }

    if (m->rs)
        model__restart_drop(m);
    const int64_t hl = m->p.half_life_ms;
    if (!m->has_time) {
        m->T = m->T0 = ts;
        m->has_time = 1;
    }
    if (ts > m->T) {
        m->T = ts;
        if (hl > 0 && (double)(ts - m->T0) > MODEL_FRAME_SPAN * (double)hl)
            model_frame_move(m, ts);
    }
    if (ii < 0)
        ii = model__item_add(m, item, item_len, ts);
    else if (ts > m->item_t[ii])
        m->item_t[ii] = ts;
    if (ui < 0)
        ui = model__user_add(m, user, user_len, ts);

    const struct model_user *us = &m->u[ui];
    struct model_ev ev = {.item = (uint32_t)ii,
                          .pos = pos,
                          .f = 1,
                          .t = us->t,
                          .defer = defer && !model__kl(m)};
    double w = weight;
    if (ts > us->t) {
        ev.t = ts;
        if (hl > 0)
            ev.f = exp2(-(double)(ts - us->t) / (double)hl);
    } else if (ts < us->t && hl > 0) {
        w = weight * exp2(-(double)(us->t - ts) / (double)hl);
    }
    ev.w = (float)w;
    if (!(ev.w >= FLT_MIN))
        ev.w = 0;
    model_user_solve(m, (uint32_t)ui, &ev, NULL);
    m->events++;
    m->weight_sum += weight;
    m->since_refresh++;

    if (m->follower)
        return 0; /* W comes from the group (group.c) */
    int warm = m->p.warmup_events && !m->warm_done &&
               m->events >= m->p.warmup_events;
    int refresh = !warm && model_refresh_due(m);
    /* A deferred solve is made before W moves: the refresh then sees the
     * user as a fold of each event would have left it, and a heavy
     * user's long run still teaches W its items as it goes. */
    if (ev.defer && (warm || refresh))
        model_user_solve(m, (uint32_t)ui, NULL, NULL);
    if (warm)
        model_warmup(m);
    else if (refresh)
        model_refresh(m);
    return 0;
}

int model_fold(struct model *m, const char *user, size_t user_len,
               const char *item, size_t item_len, double weight, int64_t ts)
{
    int rc = model_event_check(user, user_len, item, item_len, weight, ts);
    if (rc)
        return rc;
    return model_fold_checked(
        m, user, user_len, ids_hash_id(m->uids, user, user_len), -1, item,
        item_len, ids_hash_id(m->iids, item, item_len), -1, weight, ts, 0);
}

/* Whether next, an event found valid, continues e's run: the same user,
 * and a pair that reaches the profile (a held-out pair's event goes to
 * the held-out matrix and re-solves no one, model_fold_checked). Then
 * e's fold may leave h_u to next's (model_user_solve_k, st->defer). */
static int model_run_goes_on(const struct model *m,
                             const struct model_event *e,
                             const struct model_event *next)
{
    return next->user_len == e->user_len &&
           !memcmp(next->user, e->user, e->user_len) &&
           (!m->ho || !holdout_pair_held(m->p.holdout, m->p.holdout_salt,
                                         next->user, next->user_len,
                                         next->item, next->item_len));
}

int model_fold_next(struct model *m, const struct model_event *e,
                    const struct model_event *next)
{
    int rc = model_event_check(e->user, e->user_len, e->item, e->item_len,
                               e->weight, e->ts);
    if (rc)
        return rc;
    return model_fold_checked(
        m, e->user, e->user_len, ids_hash_id(m->uids, e->user, e->user_len),
        -1, e->item, e->item_len, ids_hash_id(m->iids, e->item, e->item_len),
        -1, e->weight, e->ts,
        next &&
            !model_event_check(next->user, next->user_len, next->item,
                               next->item_len, next->weight, next->ts) &&
            model_run_goes_on(m, e, next));
}

/* Look-ahead distance (events) between the batch pipeline's stages. */
#define MODEL_PF_D    3
#define MODEL_PF_RING 32

struct model_pf {
    uint64_t uh, ih;
    int ok;
    int64_t ui, ii;
};

/* Hints for a light user's profile rows: W (for W^T v) and B (for the
 * eager replacement of its share). */
static void model_prefetch_rows(const struct model *m, int64_t ui)
{
    if (ui < 0 || (uint32_t)ui >= ids_slots(m->uids))
        return;
    const struct model_user *us = &m->u[ui];
    if (us->slab == POOL_NONE || us->n >= MODEL_BCACHE_MIN)
        return;
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const size_t k = m->k;
    for (uint32_t q = 0; q < us->n; q++) {
        model_prefetch_span(m->W + it[q] * k, k * sizeof(float), 0);
        if (us->flags & MODEL_U_INB)
            model_prefetch_span(m->B + it[q] * k, k * sizeof(double), 1);
    }
}

/*
 * The batch fold is the plain sequence of folds plus memory hints for
 * events ahead, one stage every MODEL_PF_D events: their id hashes and
 * table slots, then the records the slots point to, then (lookups now
 * hitting the cache) the user's state, h row and the item's W row, then
 * the profile, then the W and B rows of its items. Hints never change the
 * model, so the result is exactly that of model_fold in turn (an id
 * created in between is simply looked up again).
 */
size_t model_fold_batch(struct model *m, const struct model_event *ev, size_t n,
                        int *rc)
{
    struct model_pf pf[MODEL_PF_RING];
    size_t done = 0;
    const size_t d = MODEL_PF_D;
    for (size_t e = 0; e < n + 4 * d; e++) {
        if (e < n) {
            struct model_pf *p = &pf[e % MODEL_PF_RING];
            const struct model_event *x = &ev[e];
            p->ok = !model_event_check(x->user, x->user_len, x->item,
                                       x->item_len, x->weight, x->ts);
            p->ui = p->ii = -1;
            if (p->ok) {
                p->uh = ids_hash_id(m->uids, x->user, x->user_len);
                p->ih = ids_hash_id(m->iids, x->item, x->item_len);
                ids_prefetch_slot(m->uids, p->uh);
                ids_prefetch_slot(m->iids, p->ih);
            }
        }
        if (e >= d && e - d < n) {
            const struct model_pf *p = &pf[(e - d) % MODEL_PF_RING];
            if (p->ok) {
                const struct model_event *x = &ev[e - d];
                ids_prefetch_record(m->uids, p->uh, x->user_len);
                ids_prefetch_record(m->iids, p->ih, x->item_len);
            }
        }
        if (e >= 2 * d && e - 2 * d < n) {
            struct model_pf *p = &pf[(e - 2 * d) % MODEL_PF_RING];
            const struct model_event *x = &ev[e - 2 * d];
            if (p->ok) {
                p->ui = ids_find_hash(m->uids, x->user, x->user_len, p->uh);
                p->ii = ids_find_hash(m->iids, x->item, x->item_len, p->ih);
                int64_t ii = p->ii;
                if (p->ui >= 0) {
                    model_prefetch_span(&m->u[p->ui], sizeof(*m->u), 1);
                    model_prefetch_span(m->H + (size_t)p->ui * m->k,
                                        m->k * sizeof(float), 1);
                }
                if (ii >= 0) {
                    __builtin_prefetch(&m->item_t[ii], 1);
                    model_prefetch_span(m->W + (size_t)ii * m->k,
                                        m->k * sizeof(float), 0);
                    model_prefetch_span(m->B + (size_t)ii * m->k,
                                        m->k * sizeof(double), 1);
                }
            }
        }
        if (e >= 3 * d && e - 3 * d < n) {
            const struct model_pf *p = &pf[(e - 3 * d) % MODEL_PF_RING];
            if (p->ui >= 0 && (uint32_t)p->ui < ids_slots(m->uids)) {
                const struct model_user *us = &m->u[p->ui];
                if (us->slab != POOL_NONE) {
                    size_t span = (us->n < MODEL_BCACHE_MIN ? us->n : 16) *
                                  sizeof(uint32_t);
                    model_prefetch_span(pool_items(&m->pool, us->cls, us->slab),
                                        span, 1);
                    model_prefetch_span(pool_vals(&m->pool, us->cls, us->slab),
                                        span, 1);
                }
                if (us->bslot != POOL_NONE) {
                    model_prefetch_span(m->bc + (size_t)us->bslot * m->k,
                                        m->k * sizeof(double), 1);
                    if (us->flags & MODEL_U_GB)
                        model_prefetch_span(m->bg + (size_t)us->bslot * m->k,
                                            m->k * sizeof(double), 0);
                }
            }
        }
        if (e >= 4 * d) {
            size_t i = e - 4 * d;
            if (i + d / 2 + 1 < n)
                model_prefetch_rows(m, pf[(i + d / 2 + 1) % MODEL_PF_RING].ui);
            const struct model_pf *p = &pf[i % MODEL_PF_RING];
            const struct model_event *x = &ev[i];
            /* The user's next event is the next one: one solve for both
             * (model_fold_next). */
            const struct model_pf *q = &pf[(i + 1) % MODEL_PF_RING];
            int defer = i + 1 < n && q->ok && q->uh == p->uh &&
                        model_run_goes_on(m, x, &ev[i + 1]);
            int r = p->ok ? model_fold_checked(m, x->user, x->user_len, p->uh,
                                               p->ui, x->item, x->item_len,
                                               p->ih, p->ii, x->weight, x->ts,
                                               defer)
                          : model_event_check(x->user, x->user_len, x->item,
                                              x->item_len, x->weight, x->ts);
            if (rc)
                rc[i] = r;
            done += r == 0;
        }
    }
    return done;
}

size_t model_refine(struct model *m, size_t max_users)
{
    size_t done = 0;
    uint32_t U = ids_slots(m->uids);
    if (!max_users)
        return 0;
    if (m->rs)
        return model__restart_step(m, max_users);
    if (m->stale) {
        for (uint32_t seen = 0; seen < U && done < max_users && m->stale;
             seen++) {
            uint32_t u = m->cursor < U ? m->cursor : 0;
            m->cursor = u + 1 < U ? u + 1 : 0;
            const struct model_user *us = &m->u[u];
            if (!(us->flags & MODEL_U_LIVE) ||
                us->solved == (uint32_t)m->refreshes)
                continue;
            model_user_solve(m, u, NULL, NULL);
            done++;
        }
        return done;
    }
    if (m->follower)
        return 0; /* every h is solved; W is the group's to change */
    /* The stream went quiet before warmup_events (a whole round of
     * refinement went by without an event): the warm-up's seed replaces
     * W, and the refinement's own rounds, one refresh per call, are its
     * batch rounds. */
    if (m->p.warmup_events && !m->warm_done && m->nprof &&
        m->refine_prev >= 0 && m->events == m->refine_events) {
        if (model__seed_nndsvd(m, 1))
            model_seed_columns(m, 1);
        m->warm_done = 1;
        m->refreshes++;
        m->stale = ids_live(m->uids);
        m->since_refresh = 0;
        m->dirty = 1;
        m->refine_prev = -1;
        return ids_live(m->uids);
    }
    if (!m->dirty)
        return 0;
    /* Every h is solved against the current W: refresh W, unless the
     * last such round (with no event since) no longer helped. */
    double rel = model_rel_loss(m);
    if (m->refine_prev >= 0 && m->events == m->refine_events &&
        m->refine_prev - rel <= m->p.refine_tol * m->refine_prev) {
        /* Converged: try a restart from an NNDSVDa seed of all the data,
         * in later slices; keep this W if it does not beat it. */
        if (model__restart_due(m) && !model__restart_begin(m))
            return model__restart_step(m, max_users);
        m->dirty = 0;
        return 0;
    }
    m->refine_prev = rel;
    m->refine_events = m->events;
    model_refresh(m);
    return 0;
}

size_t model_expire(struct model *m, int64_t now)
{
    if (m->p.ttl_ms <= 0)
        return 0;
    const uint32_t k = m->k;
    const int64_t cut = now - m->p.ttl_ms;
    const uint32_t M = ids_slots(m->iids), U = ids_slots(m->uids);
    size_t gone = 0;
    uint8_t *drop = NULL;
    uint32_t nitems = 0;
    for (uint32_t i = 0; i < M; i++)
        if (ids_get(m->iids, i, NULL) && m->item_t[i] < cut)
            nitems++;
    if (nitems)
        drop = calloc(M, 1);
    if (drop) {
        model__restart_drop(m);
        /* Zero the rows first so the re-solves see the W to come. */
        for (uint32_t i = 0; i < M; i++) {
            if (!ids_get(m->iids, i, NULL) || m->item_t[i] >= cut)
                continue;
            drop[i] = 1;
            memset(m->W + (size_t)i * k, 0, k * sizeof(float));
            model__w_changed(m, i, i + 1);
        }
        memset(m->G, 0, (size_t)k * k * sizeof(double));
        hals_gram(k, M, m->W, NULL, m->G);
        model__kl_colsums(m);
        m->wgen++;
    }
    for (uint32_t u = 0; u < U; u++) {
        struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE))
            continue;
        if (us->t < cut) {
            model__restart_drop(m);
            model__user_remove(m, u);
            gone++;
            continue;
        }
        if (!drop || !us->n)
            continue;
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++) {
            if (drop[it[q]]) {
                model_user_solve(m, u, NULL, drop);
                break;
            }
        }
    }
    if (drop) {
        for (uint32_t i = 0; i < M; i++) {
            if (!drop[i])
                continue;
            memset(m->B + (size_t)i * k, 0, k * sizeof(double));
            m->item_t[i] = 0;
            if (m->ho) {
                size_t len;
                const char *id = ids_get(m->iids, i, &len);
                holdout_note_item_id(m->ho, i, id, len, 0);
            }
            ids_remove(m->iids, i);
            gone++;
        }
        free(drop);
        m->dirty = 1;
    }
    /* With no profile left the statistics are exactly zero, not the
     * rounding residue of the subtractions (model_load relies on it). */
    if (gone && !m->nprof)
        model_rebuild(m);
    return gone;
}

uint64_t model_epoch(const struct model *m)
{
    return m->epoch;
}

void model_epoch_set(struct model *m, uint64_t epoch)
{
    m->epoch = epoch;
}

/* What user u's share of B still owes, per topic: its h (times H's
 * column scales and its l21 weight) less, for a held share (MODEL_U_GB),
 * the g it was last added with (times B's column scales). A user whose
 * share is owed (model__owes_b) adds d_j v_ui to B's row i, column j. */
static void model_owed_h(const struct model *m, uint32_t u, double *d)
{
    const uint32_t k = m->k;
    const struct model_user *us = &m->u[u];
    const float *hu = m->H + (size_t)u * k;
    const double *g =
        us->flags & MODEL_U_GB ? m->bg + (size_t)us->bslot * k : NULL;
    const double w = model__uweight(m, us);
    for (uint32_t j = 0; j < k; j++)
        d[j] = w * (double)hu[j] * m->hs[j] - (g ? g[j] * m->bcol[j] : 0);
}

/*
 * The loss identity of Mairal et al. (JMLR 2010, eq. 9 and its proof):
 * with A = sum_u c_u h_u h_u^T and B = sum_u c_u v_u h_u^T exact for the
 * current H,
 *     sum_u c_u ||v_u - W h_u||^2
 *         = sum_u c_u v_u^T v_u - 2 <W, B> + <W^T W, A>,
 * since sum_u c_u h_u^T W^T v_u = <W, B> and sum_u c_u h_u^T G h_u =
 * <G, A>. G = W^T W is kept for the solves, A in double; B is read as
 * model_B reads it (stored rows times the column scales, plus the shares
 * the sync still owes), without writing anything, so that a reader may
 * call it between any two calls. The evicted mass is in the users' v^T v
 * and in neither A nor B: it is residual, as it is in the true V.
 */
static void model_loss(const struct model *m, struct model_stats *out)
{
    const uint32_t k = m->k;
    const double scale = model_scale(m);
    const size_t M = ids_slots(m->iids);
    double c[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        c[j] = m->bcol[j] * scale;
    double wb = 0;
    if (model__kl(m)) {
        /* D(V || W H) per unit of weight, by a pass over the users. */
        double l, nrm;
        model__loss_kl(m, &l, &nrm);
        out->norm = nrm * scale;
        out->loss = l * scale;
        out->rel_loss = out->norm > 0 ? out->loss / out->norm : 0;
        return;
    }
    if (m->p.robust == MODEL_ROBUST_L21) {
        /* A and B are weighted: the identity below would give the
         * weighted loss, so the true one comes from the users. */
        double l, nrm;
        model__loss_users(m, &l, &nrm);
        out->norm = nrm * scale;
        out->loss = l * scale;
        out->rel_loss = out->norm > 0 ? out->loss / out->norm : 0;
        return;
    }
    for (size_t i = 0; i < M; i++) {
        const float *restrict wi = m->W + i * k;
        const double *restrict bi = m->B + i * k;
        double r = 0;
        for (uint32_t j = 0; j < k; j++)
            r += (double)wi[j] * bi[j] * c[j];
        wb += r;
    }
    /* The shares the sync owes: users of the pending bits (every user
     * after a load). */
    uint32_t U = ids_slots(m->uids);
    for (uint32_t u = 0; u < U; u++) {
        if (!m->pend_all && !(m->pend[u / 64] >> (u % 64) & 1)) {
            if (!m->pend[u / 64])
                u |= 63; /* the next word */
            continue;
        }
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n || !model__owes_b(us))
            continue;
        double d[MODEL_K_MAX];
        model_owed_h(m, u, d);
        double s = model__frame_weight(m, us->t) * scale, r = 0;
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        const float *va = pool_vals(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++) {
            const float *wi = m->W + (size_t)it[q] * k;
            double x = 0;
            for (uint32_t j = 0; j < k; j++)
                x += (double)wi[j] * d[j];
            r += va[q] * x;
        }
        wb += s * r;
    }
    double ga = 0;
    for (size_t i = 0; i < (size_t)k * k; i++)
        ga += m->G[i] * m->A[i];
    ga *= scale;
    double norm = m->norm_s > 0 ? m->norm_s * scale : 0;
    double loss = norm - 2 * wb + ga;
    /* Rounding can leave a perfect fit a hair below zero. */
    out->norm = norm;
    out->loss = loss > 0 ? loss : 0;
    out->rel_loss = norm > 0 ? out->loss / norm : 0;
}

void model_stats(const struct model *m, struct model_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->events = m->events;
    st->weight_sum = m->weight_sum;
    st->users = ids_live(m->uids);
    st->items = ids_live(m->iids);
    st->refreshes = m->refreshes;
    st->evicted_weight = m->evicted_weight;
    model_loss(m, st);
    st->now = m->has_time ? m->T : 0;
    st->stale = m->rs ? ids_live(m->uids) : m->stale;
    st->restarts = m->restarts;
    st->reseeded = m->reseeded;
    st->moved = m->moved;
    st->work = m->work_all;
    if (m->ho) {
        struct holdout_score hs;
        holdout_score(m->ho, m, &hs);
        st->events += holdout_events(m->ho);
        st->weight_sum += holdout_weight_sum(m->ho);
        st->holdout_events = holdout_events(m->ho);
        st->holdout_norm = hs.norm;
        st->holdout_pairs = hs.pairs;
        st->holdout_loss = hs.norm > 0 ? hs.loss / hs.norm : 0;
    }
}

int model_holdout_held(const struct model *m, const char *user, size_t user_len,
                       const char *item, size_t item_len)
{
    return m->ho && holdout_pair_held(m->p.holdout, m->p.holdout_salt, user,
                                      user_len, item, item_len);
}

uint64_t model_refreshes(const struct model *m)
{
    return m->refreshes;
}

uint64_t model_work(const struct model *m)
{
    return m->work_all;
}

uint32_t model_user_slots(const struct model *m)
{
    return ids_slots(m->uids);
}

int model_user_get(const struct model *m, uint32_t idx,
                   struct model_user_view *v)
{
    if (idx >= ids_slots(m->uids) || !(m->u[idx].flags & MODEL_U_LIVE))
        return -ENOENT;
    const struct model_user *us = &m->u[idx];
    const float *hu = m->H + (size_t)idx * m->k;
    float *h = v->hbuf;
    for (uint32_t j = 0; j < m->k; j++)
        h[j] = (float)((double)hu[j] * m->hs[j]);
    v->id = ids_get(m->uids, idx, &v->id_len);
    v->h = h;
    double share, sum;
    v->segment = model_h_summary(m->k, h, &share, &sum);
    v->share = (float)share;
    v->ts = us->t;
    v->changed = us->changed;
    v->nprofile = us->n;
    double d = model__uweight(m, us);
    double mean = m->nprof && m->dsum > 0 ? m->dsum / m->nprof : 0;
    v->weight_raw = (float)d;
    v->weight = m->p.robust != MODEL_ROBUST_L21 ? (float)d
                : mean > 0                      ? (float)(d / mean)
                                                : 0;
    return 0;
}

int64_t model_user_find(const struct model *m, const char *id, size_t len)
{
    if (!id || !len || len > MODEL_ID_MAX)
        return -ENOENT;
    return ids_find(m->uids, id, len);
}

int model_user_profile(const struct model *m, uint32_t idx,
                       const uint32_t **items, const float **values,
                       uint32_t *n)
{
    if (idx >= ids_slots(m->uids) || !(m->u[idx].flags & MODEL_U_LIVE))
        return -ENOENT;
    const struct model_user *us = &m->u[idx];
    *n = us->n;
    *items = us->n ? pool_items(&m->pool, us->cls, us->slab) : NULL;
    *values = us->n ? pool_vals(&m->pool, us->cls, us->slab) : NULL;
    return 0;
}

uint32_t model_item_slots(const struct model *m)
{
    return ids_slots(m->iids);
}

const char *model_item_id(const struct model *m, uint32_t idx, size_t *len)
{
    return ids_get(m->iids, idx, len);
}

const float *model_W(const struct model *m)
{
    return m->W;
}

void model_A(const struct model *m, double *out)
{
    double scale = model_scale(m);
    for (size_t i = 0; i < (size_t)m->k * m->k; i++)
        out[i] = m->A[i] * scale;
}

void model_B(const struct model *m, double *out)
{
    const uint32_t k = m->k;
    double scale = model_scale(m);
    double c[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        c[j] = m->bcol[j] * scale;
    size_t M = ids_slots(m->iids);
    for (size_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            out[i * k + j] = m->B[i * k + j] * c[j];
    /* Users whose share is not in the stored B yet, or held there with
     * an older g. */
    uint32_t U = ids_slots(m->uids);
    for (uint32_t u = 0; u < U; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n || !model__owes_b(us))
            continue;
        double d[MODEL_K_MAX];
        model_owed_h(m, u, d);
        double s = model__frame_weight(m, us->t) * scale;
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        const float *va = pool_vals(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++)
            for (uint32_t j = 0; j < k; j++)
                out[(size_t)it[q] * k + j] += s * va[q] * d[j];
    }
}

uint32_t model_topic_top(const struct model *m, uint32_t j, uint32_t n,
                         uint32_t *items, float *weights)
{
    if (j >= m->k || !n)
        return 0;
    const uint32_t k = m->k, M = ids_slots(m->iids);
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < M; i++) {
        float w = m->W[(size_t)i * k + j];
        if (w > 0)
            topn_offer(items, weights, n, &cnt, w, i);
    }
    topn_sort(items, weights, cnt);
    return cnt;
}

/* cos(w_j, p_j) = w_j . p_j / (|w_j| |p_j|), summed in double over the
 * rows both versions have (a row only one has adds to its norm alone). */
void model_topic_continuity(const struct model *m, const float *prev,
                            uint32_t rows, double *cont)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    double nw[MODEL_K_MAX] = {0}, np[MODEL_K_MAX] = {0};
    for (uint32_t j = 0; j < k; j++)
        cont[j] = 0;
    for (uint32_t i = 0; i < M || i < rows; i++) {
        const float *wi = m->W + (size_t)i * k, *pi = prev + (size_t)i * k;
        for (uint32_t j = 0; j < k; j++) {
            double w = i < M ? wi[j] : 0, p = i < rows ? pi[j] : 0;
            cont[j] += w * p;
            nw[j] += w * w;
            np[j] += p * p;
        }
    }
    for (uint32_t j = 0; j < k; j++) {
        double d = sqrt(nw[j]) * sqrt(np[j]);
        double c = d > 0 ? cont[j] / d : 0;
        cont[j] = c > 0 ? (c < 1 ? c : 1) : 0;
    }
}

void model_segment_sizes(const struct model *m, uint64_t *sizes, double *mass)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    for (uint32_t j = 0; j < k; j++) {
        if (sizes)
            sizes[j] = 0;
        if (mass)
            mass[j] = 0;
    }
    for (uint32_t u = 0; u < U; u++) {
        if (!(m->u[u].flags & MODEL_U_LIVE))
            continue;
        const float *hu = m->H + (size_t)u * k;
        float h[MODEL_K_MAX];
        uint32_t seg = 0;
        for (uint32_t j = 0; j < k; j++) {
            h[j] = (float)((double)hu[j] * m->hs[j]);
            if (mass)
                mass[j] += h[j];
            if (h[j] > h[seg])
                seg = j;
        }
        if (sizes)
            sizes[seg]++;
    }
}

void model_memory(const struct model *m, struct model_memory *mm)
{
    const uint32_t k = m->k;
    memset(mm, 0, sizeof(*mm));
    mm->users =
        (size_t)m->ucap *
            (sizeof(struct model_user) + k * sizeof(float) + sizeof(float)) +
        ((size_t)m->ucap + 63) / 64 * sizeof(uint64_t) + ids_bytes(m->uids);
    mm->items = (size_t)m->icap *
                    (k * sizeof(float) + k * sizeof(double) + sizeof(int64_t)) +
                ids_bytes(m->iids) + wbound_bytes(&m->wb);
    mm->users += (size_t)m->bc_cap * (2 * k * sizeof(double) + 12);
    mm->profiles = pool_bytes(&m->pool);
    uint32_t U = ids_slots(m->uids);
    for (uint32_t u = 0; u < U; u++)
        mm->profile_entries += m->u[u].n;
    mm->total = sizeof(*m) + 4 * (size_t)k * k * sizeof(double) + mm->users +
                mm->items + mm->profiles + model__restart_bytes(m) +
                holdout_bytes(m->ho);
}
