/* online/model_restart.c -- NNDSVDa seeding and restarts of the model.
 *
 * Alternating NNLS (the model's fold, refresh and refinement) converges to
 * a local minimum that depends on where W started; a start that merges two
 * real topics into one column, or splits one over two, stays there. This
 * subsystem gives the model better starts: the NNDSVDa seed of W from all
 * current profiles (nndsvd.c) for the warm-up, and, when the model has
 * converged in idle time, a restart: batch alternating NNLS from a fresh
 * NNDSVDa seed run beside the live model on its own copies of W and the
 * statistics, whose W replaces the live one only if it reaches a clearly
 * lower loss. Whatever replaces W goes through model__w_install, which
 * first gives each new column the index of the old column it continues
 * (topic identity, DESIGN.md section 1; the assignment is match.c's), so
 * that a re-seed never silently changes what topic j means. It owns the
 * restart's work state (struct model_restart) and
 * never changes the live model except in model__restart_install; it
 * draws no number from the model's generator (its own is seeded from the
 * seed and the event count), so an abandoned restart leaves no trace and a
 * model loaded from a checkpoint taken during one reaches the same result.
 *
 * Cost. A restart reads every profile about (iterations + 2) times for the
 * seed and once per round of alternating NNLS, up to MODEL_RESTART_ROUNDS
 * rounds. model_refine drives it in slices of at most max_users users per
 * call, plus at most one O(items k^2) step (orthonormalisation, HALS,
 * Gram matrix) per call, so every call stays bounded like a refresh. It
 * runs at the first idle convergence once the folded events have at least
 * doubled since the previous restart, so that the restarts of a growing
 * stream cost O(1) times the work of the last one (a geometric series),
 * and any fold, refresh or expiry that changes the live model abandons it
 * (it is tried again at the next convergence). Memory while it runs:
 * items x k (two double blocks for the seed, then one float and one double
 * block), nothing per user.
 *
 * loss = kl. The same restart with the divergence's rounds: each user's h
 * by a few multiplicative updates from an even start against the
 * candidate (kl.c's kl_mu), the candidate's divergence summed, and W
 * updated by the multiplicative update of Lee & Seung from that round's
 * statistics (model_restart_user_kl, model_restart_update_kl). The
 * candidate is compared by divergence per unit of weight with the live
 * model's and installed by the same path. The updates stay near the local
 * minimum they start in; the live refinement's start is the warm-up's
 * seed of the first events, the restart's a seed of all of them (on
 * factominer_hobbies the former's fixed point is 20% above the latter's),
 * taken with MODEL_NNDSVD_ITERS_KL subspace iterations (model_impl.h
 * says why), so its seed reads every profile about 100 times.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hals.h"
#include "kl.h"
#include "match.h"
#include "model_impl.h"
#include "nndsvd.h"
#include "nnls.h"

enum { MODEL_RS_SEED, MODEL_RS_SOLVE };

/* Exists only while the live model stays as it was when the restart
 * began (model.c drops it on any change), so it keeps no copy of it. */
struct model_restart {
    uint32_t M;      /* item slots */
    uint32_t cursor; /* next user of the current pass */
    uint32_t rounds; /* rounds of alternating NNLS done */
    int phase;
    struct rng rng;
    struct nndsvd *sv; /* the seed, while phase == MODEL_RS_SEED */
    float *W;          /* M x k candidate, unit columns */
    double *B;         /* M x k: sum_u c_u v_u h_u^T of the current round */
    double *A, *G;     /* k x k: sum_u c_u h_u h_u^T; W^T W */
    double loss, prev; /* this round's sum_u c_u |v_u - W h_u|^2; last */
    /* loss = kl: B holds KA = sum_u c_u q_u h_u^T (q_u = v_u / (W h_u)),
     * kb = sum_u c_u h_u, ks the candidate's column sums; A and G are
     * not used, and loss is sum_u c_u D(v_u || W h_u). */
    double kb[MODEL_K_MAX], ks[MODEL_K_MAX];
};

/* Feeds users [*cursor, U) to the seed, at most max of them; returns how
 * many live users it visited. */
static size_t model_nndsvd_feed(struct model *m, struct nndsvd *sv,
                                uint32_t *cursor, size_t max)
{
    const uint32_t U = ids_slots(m->uids);
    size_t done = 0;
    for (; *cursor < U && done < max; (*cursor)++) {
        const struct model_user *us = &m->u[*cursor];
        if (!(us->flags & MODEL_U_LIVE))
            continue;
        done++;
        if (!us->n)
            continue;
        m->work_all += 2u * (uint64_t)m->k * us->n;
        /* robust = l21: the weight of h = 0 (residual v), so that a
         * few heavy outliers cannot take the seed's columns (robust.c). */
        nndsvd_column(sv, pool_items(&m->pool, us->cls, us->slab),
                      pool_vals(&m->pool, us->cls, us->slab), us->n,
                      model__frame_weight(m, us->t) *
                          model__l21_weight(m, us->vnorm, us->vnorm));
    }
    return done;
}

/* Live item rows (1) and forgotten ones (0); NULL when out of memory. */
static uint8_t *model_live_items(const struct model *m, uint32_t M)
{
    uint8_t *live = malloc(M ? M : 1);
    if (live)
        for (uint32_t i = 0; i < M; i++)
            live[i] = ids_get(m->iids, i, NULL) != NULL;
    return live;
}

int model__seedable(const struct model *m)
{
    return m->k <= m->nprof && m->k <= ids_live(m->iids);
}

int model__seed_nndsvd(struct model *m, int match)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    if (!model__seedable(m))
        return -EINVAL;
    if (m->p.robust == MODEL_ROBUST_L21 && !(m->l21_q > 0))
        model__l21_threshold(m);
    struct nndsvd *sv = nndsvd_new(k, M, MODEL_NNDSVD_ITERS, &m->rng);
    uint8_t *live = model_live_items(m, M);
    float *Wn = malloc(((size_t)M * k + 1) * sizeof(float));
    if (!sv || !live || !Wn) {
        nndsvd_free(sv);
        free(live);
        free(Wn);
        return -ENOMEM;
    }
    while (nndsvd_pass(sv) != NNDSVD_DONE) {
        uint32_t cursor = 0;
        model_nndsvd_feed(m, sv, &cursor, SIZE_MAX);
        nndsvd_pass_end(sv);
    }
    nndsvd_factor(sv, live, Wn);
    nndsvd_free(sv);
    free(live);
    model__w_install(m, Wn, match);
    free(Wn);
    return 0;
}

/*
 * Topic identity (DESIGN.md section 1). A re-seeded column is a new
 * vector with no tie to the index it was made at (NNDSVDa orders its
 * columns by singular value, a resample takes whichever column died), so
 * before anyone sees it, it takes the index of the old column it resembles
 * most. With cos(a, b) = a . b / (|a| |b|) (0 when either is zero) over the
 * item rows, the n old columns o_1..o_n and the n new ones c_1..c_n are
 * paired by the permutation
 *     to = argmax_sigma  sum_a [cos(o_a, c_sigma(a)) + eps [sigma(a) = a]]
 * (the linear assignment problem, match.c), eps = MODEL_MATCH_TIE so that
 * among assignments equal to rounding the one that moves nothing wins.
 * Cost O(M n^2 + n^3), once per re-seed, never per event.
 */
#define MODEL_MATCH_TIE 1e-9

int model__match(uint32_t M, uint32_t n, const float *Wo, size_t ldo,
                 const uint32_t *co, const float *Wn, size_t ldn,
                 const uint32_t *cn, uint32_t *to)
{
    double *C = calloc((size_t)n * n, sizeof(double));
    double no[MODEL_K_MAX] = {0}, nn[MODEL_K_MAX] = {0};
    double xo[MODEL_K_MAX], xn[MODEL_K_MAX];
    for (uint32_t a = 0; a < n; a++)
        to[a] = a;
    if (!C)
        return -ENOMEM;
    for (uint32_t i = 0; i < M; i++) {
        const float *oi = Wo + (size_t)i * ldo, *ni = Wn + (size_t)i * ldn;
        for (uint32_t a = 0; a < n; a++) {
            xo[a] = oi[co[a]];
            xn[a] = ni[cn[a]];
            no[a] += xo[a] * xo[a];
            nn[a] += xn[a] * xn[a];
        }
        for (uint32_t a = 0; a < n; a++) {
            double *restrict ca = C + (size_t)a * n;
            for (uint32_t b = 0; b < n; b++)
                ca[b] += xo[a] * xn[b];
        }
    }
    for (uint32_t a = 0; a < n; a++) {
        for (uint32_t b = 0; b < n; b++) {
            double d = sqrt(no[a]) * sqrt(nn[b]);
            double c = d > 0 ? C[(size_t)a * n + b] / d : 0;
            C[(size_t)a * n + b] =
                (isfinite(c) ? c : 0) + (a == b ? MODEL_MATCH_TIE : 0);
        }
    }
    int rc = match_assign(n, C, to);
    free(C);
    if (rc)
        for (uint32_t a = 0; a < n; a++)
            to[a] = a;
    return rc;
}

void model__w_install(struct model *m, const float *Wn, int match)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    uint32_t all[MODEL_K_MAX], to[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++)
        all[j] = j;
    /* A W never refreshed is the random start (model_item_add): no
     * topic has a meaning yet, and the seed keeps its own order. Without
     * memory for the scores the new columns keep their order too: the
     * ids then change meaning, which the records' continuity shows. */
    if (match && m->refreshes)
        model__match(M, k, m->W, k, all, Wn, k, all, to);
    else
        for (uint32_t j = 0; j < k; j++)
            to[j] = j;
    for (uint32_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            m->W[(size_t)i * k + j] = Wn[(size_t)i * k + to[j]];
    for (uint32_t j = 0; j < k; j++)
        m->moved += to[j] != j;
    m->reseeded += k;
    model__w_replaced(m);
}

size_t model__restart_bytes(const struct model *m)
{
    const struct model_restart *rs = m->rs;
    if (!rs)
        return 0;
    size_t mk = (size_t)rs->M * m->k;
    return sizeof(*rs) + 2 * (size_t)m->k * m->k * sizeof(double) +
           mk * sizeof(float) + (rs->B ? mk * sizeof(double) : 0) +
           (rs->sv ? 2 * mk * sizeof(double) : 0);
}

void model__restart_drop(struct model *m)
{
    struct model_restart *rs = m->rs;
    if (!rs)
        return;
    nndsvd_free(rs->sv);
    free(rs->W);
    free(rs->B);
    free(rs->A);
    free(rs->G);
    free(rs);
    m->rs = NULL;
}

int model__restart_due(const struct model *m)
{
    return !m->rs && m->events > m->restart_events &&
           m->events / 2 >= m->restart_events && model__seedable(m);
}

int model__restart_begin(struct model *m)
{
    const uint32_t k = m->k, M = ids_slots(m->iids);
    struct model_restart *rs = calloc(1, sizeof(*rs));
    if (!rs)
        goto fail;
    m->rs = rs;
    rs->M = M;
    rs->phase = MODEL_RS_SEED;
    rs->prev = -1;
    rng_seed(&rs->rng, m->p.seed ^ (m->events * 0x9e3779b97f4a7c15ull));
    rs->A = calloc((size_t)k * k, sizeof(double));
    rs->G = calloc((size_t)k * k, sizeof(double));
    rs->W = malloc((size_t)M * k * sizeof(float));
    rs->sv = nndsvd_new(
        k, M, model__kl(m) ? MODEL_NNDSVD_ITERS_KL : MODEL_NNDSVD_ITERS,
        &rs->rng);
    if (!rs->A || !rs->G || !rs->W || !rs->sv)
        goto fail;
    return 0;
fail:
    /* No memory: not again before the data has doubled. */
    model__restart_drop(m);
    m->restart_events = m->events;
    return -ENOMEM;
}

/*
 * loss = kl: one user of a round. Against the candidate W (column sums s),
 * h by MODEL_RESTART_KL_MU multiplicative updates of Lee & Seung
 * ("Algorithms for non-negative matrix factorization", NIPS 2001,
 * Theorem 2) from an even start (kl.c's kl_mu, which says why not its
 * coordinate solve),
 *     h_j <- h_j (sum_i W_ij v_i / (W h)_i) / s_j,
 * its divergence D(v || W h) into the round's loss, and its share of the
 * statistics of the same paper's update of W:
 *     KA_ij += c h_j v_i / (W h)_i,   kb_j += c h_j,
 * with W h that of this W and this h, so that the update after the round
 * is the exact batch step for the round's H. Both updates never increase
 * the divergence; h starts afresh each round (no per-user state).
 */
_Static_assert(MODEL_K_MAX <= KL_K_MAX, "kl_mu takes every k");
static void model_restart_user_kl(struct model *m, struct model_restart *rs,
                                  const struct model_user *us)
{
    const uint32_t k = m->k;
    double h[MODEL_K_MAX], ch[MODEL_K_MAX];
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    const double c = model__frame_weight(m, us->t);
    double *wh = m->klwh;
    kl_mu(k, rs->W, rs->ks, it, va, us->n, h, MODEL_RESTART_KL_MU, wh);
    rs->loss += c * kl_divergence(k, rs->W, rs->ks, it, va, us->n, h, wh);
    m->work_all += 2u * (uint64_t)k * us->n * (MODEL_RESTART_KL_MU + 2u);
    for (uint32_t j = 0; j < k; j++) {
        ch[j] = c * h[j];
        rs->kb[j] += ch[j];
    }
    for (uint32_t q = 0; q < us->n; q++) {
        double r = wh[q] > 0 ? va[q] / wh[q] : 0;
        double *restrict bi = rs->B + (size_t)it[q] * k;
        for (uint32_t j = 0; j < k; j++)
            bi[j] += r * ch[j];
    }
}

/* One user of a round: h = argmin_{h >= 0} of the model's objective
 * against the candidate W (cold start: no per-user state is kept), its
 * loss, and its share of A and B. */
static void model_restart_user(struct model *m, struct model_restart *rs,
                               uint32_t u)
{
    const uint32_t k = m->k;
    const struct model_user *us = &m->u[u];
    double b[MODEL_K_MAX], h[MODEL_K_MAX], gh[MODEL_K_MAX], ch[MODEL_K_MAX];
    if (!us->n)
        return;
    if (model__kl(m)) {
        model_restart_user_kl(m, rs, us);
        return;
    }
    const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
    const float *va = pool_vals(&m->pool, us->cls, us->slab);
    double vtv = 0, c = model__frame_weight(m, us->t);
    for (uint32_t j = 0; j < k; j++)
        b[j] = h[j] = 0;
    for (uint32_t q = 0; q < us->n; q++) {
        const float *restrict wi = rs->W + (size_t)it[q] * k;
        double v = va[q];
        vtv += v * v;
        for (uint32_t j = 0; j < k; j++)
            b[j] += v * wi[j];
    }
    double a1 = m->p.alpha_h * m->p.l1_ratio;
    double a2 = m->p.alpha_h * (1 - m->p.l1_ratio);
    uint32_t sweeps =
        nnls_solve(k, rs->G, b, a1, a2, m->p.nnls_sweeps, m->p.nnls_tol, h, gh);
    m->work_all += 2u * (uint64_t)k * us->n + (uint64_t)k * k * (sweeps + 2u);
    double hb = 0, hgh = 0;
    for (uint32_t j = 0; j < k; j++) {
        hb += h[j] * b[j];
        hgh += h[j] * gh[j];
    }
    double loss = vtv - 2 * hb + hgh;
    loss = loss > 0 ? (loss < vtv ? loss : vtv) : 0;
    /* robust = l21: the robust objective, and the share weighted by
     * this round's residual (robust.c). */
    const int l21 = m->p.robust == MODEL_ROBUST_L21;
    rs->loss += c * (l21 ? model__l21_term(m, loss, vtv) : loss);
    if (l21)
        c *= model__l21_weight(m, (float)loss, (float)vtv);
    for (uint32_t j = 0; j < k; j++)
        ch[j] = c * h[j];
    for (uint32_t j = 0; j < k; j++) {
        if (ch[j] == 0)
            continue;
        double *restrict aj = rs->A + (size_t)j * k;
        for (uint32_t l = 0; l < k; l++)
            aj[l] += ch[j] * h[l];
    }
    for (uint32_t q = 0; q < us->n; q++) {
        double *restrict bi = rs->B + (size_t)it[q] * k;
        double v = va[q];
        for (uint32_t j = 0; j < k; j++)
            bi[j] += v * ch[j];
    }
}

/* After either round's W update: each column of the candidate to unit
 * norm (colsq its squared norm), or, when dead (dead[j], or a norm that
 * is zero or not finite), the normalised profile of the heaviest of a
 * few users drawn with the restart's generator. */
static void model_restart_columns(struct model *m, struct model_restart *rs,
                                  const uint8_t *dead, const double *colsq)
{
    const uint32_t k = m->k, M = rs->M;
    for (uint32_t j = 0; j < k; j++) {
        double nj = sqrt(colsq[j]);
        if (!dead[j] && nj > 0 && isfinite(nj)) {
            for (uint32_t i = 0; i < M; i++)
                rs->W[(size_t)i * k + j] =
                    (float)(rs->W[(size_t)i * k + j] / nj);
            continue;
        }
        int64_t best = model__heavy_user(m, &rs->rng);
        if (best >= 0)
            model__column_from_user(m, (uint32_t)best, rs->W, M, j);
    }
}

/*
 * loss = kl: the candidate's W update after a round, the multiplicative
 * update of Lee & Seung (NIPS 2001, Theorem 2) for W with H fixed,
 *     W_ij <- W_ij KA_ij / kb_j,
 * with the round's KA and kb (model_restart_user_kl), which does not
 * increase D(V || W H). As in the live update (model.c, model_kl_update),
 * W_ij is floored at MODEL_KL_WMIN of its column's largest entry on the
 * live items, so that (W h)_i stays positive and an entry the update
 * zeroed can come back (forgotten items' rows stay 0). Columns then go to
 * unit norm (h is solved afresh each round, so nothing else moves), a
 * dead column (kb_j below 1e-12 of the largest, or zeroed) is reseeded
 * from a heavy user's profile drawn with the restart's generator, and ks
 * becomes the new column sums. O(items k).
 */
static void model_restart_update_kl(struct model *m, struct model_restart *rs)
{
    const uint32_t k = m->k, M = rs->M;
    uint8_t dead[MODEL_K_MAX];
    double r[MODEL_K_MAX], colsq[MODEL_K_MAX], kbmax = 0;
    float wmax[MODEL_K_MAX];
    uint8_t *live = model_live_items(m, M);
    for (uint32_t j = 0; j < k; j++)
        kbmax = rs->kb[j] > kbmax ? rs->kb[j] : kbmax;
    for (uint32_t j = 0; j < k; j++) {
        dead[j] = !(rs->kb[j] > 1e-12 * kbmax);
        r[j] = dead[j] ? 0 : 1.0 / rs->kb[j];
        wmax[j] = 0;
        colsq[j] = 0;
    }
    for (uint32_t i = 0; i < M; i++) {
        float *restrict wi = rs->W + (size_t)i * k;
        const double *restrict bi = rs->B + (size_t)i * k;
        for (uint32_t j = 0; j < k; j++) {
            double x = wi[j] * (bi[j] > 0 ? bi[j] * r[j] : 0);
            float y = x < MODEL_W_MAX ? (float)x : MODEL_W_MAX;
            wi[j] = isfinite(x) ? y : 0;
            wmax[j] = wi[j] > wmax[j] ? wi[j] : wmax[j];
        }
    }
    for (uint32_t i = 0; i < M; i++) {
        float *restrict wi = rs->W + (size_t)i * k;
        /* Without memory for the mask, every row is floored: a
         * forgotten item's row is then small, not 0, until the next
         * round's users (none of whom has it) let the update shrink it. */
        const int lv = !live || live[i];
        for (uint32_t j = 0; j < k; j++) {
            float lo = MODEL_KL_WMIN * wmax[j];
            if (lv && wi[j] < lo)
                wi[j] = lo;
            colsq[j] += (double)wi[j] * wi[j];
        }
    }
    free(live);
    model_restart_columns(m, rs, dead, colsq);
    kl_colsums(k, M, rs->W, rs->ks);
    m->work_all += 3u * (uint64_t)k * M;
}

/* The candidate's W update after a round: HALS on its A and B as in
 * model_refresh, unit columns (h is solved afresh each round, so nothing
 * else is rescaled), a dead column reseeded from a heavy user's profile
 * drawn with the restart's generator, then G. */
static void model_restart_update(struct model *m, struct model_restart *rs)
{
    const uint32_t k = m->k, M = rs->M;
    uint8_t skip[MODEL_K_MAX];
    double colsq[MODEL_K_MAX], ones[MODEL_K_MAX], maxdiag = 0;
    for (uint32_t j = 0; j < k; j++) {
        double d = rs->A[(size_t)j * k + j];
        maxdiag = d > maxdiag ? d : maxdiag;
        ones[j] = 1;
        colsq[j] = 0;
    }
    for (uint32_t j = 0; j < k; j++)
        skip[j] = !(rs->A[(size_t)j * k + j] > 1e-12 * maxdiag);
    double scale =
        m->p.half_life_ms > 0
            ? exp2(-(double)(m->T - m->T0) / (double)m->p.half_life_ms)
            : 1.0;
    double a1 = m->p.alpha_w * m->p.l1_ratio / scale;
    double a2 = m->p.alpha_w * (1 - m->p.l1_ratio) / scale;
    if (maxdiag > 0)
        hals_update(k, M, rs->W, rs->B, ones, rs->A, skip, a1, a2,
                    m->p.hals_sweeps, colsq);
    model_restart_columns(m, rs, skip, colsq);
    memset(rs->G, 0, (size_t)k * k * sizeof(double));
    hals_gram(k, M, rs->W, NULL, rs->G);
    m->work_all += (uint64_t)k * k * (m->p.hals_sweeps + 1u) * M;
}

/* The candidate replaces W, matched to the live columns
 * (model__w_install) so that topic j stays topic j and users' h
 * warm-start close to their new solution. Every user becomes stale: the
 * refinement re-solves them against the new W, keeping A, B and the loss
 * exact as after any refresh. */
static void model_restart_install(struct model *m, struct model_restart *rs)
{
    model__w_install(m, rs->W, 1);
    m->refreshes++;
    m->restarts++;
    m->stale = ids_live(m->uids);
    m->since_refresh = 0;
    m->dirty = 1;
    m->refine_prev = -1;
}

/* Ends a round: either the candidate has converged (or used its rounds)
 * and is compared with the live model, or its W is updated for the next. */
static void model_restart_round_end(struct model *m, struct model_restart *rs)
{
    const uint32_t k = m->k;
    double rel = m->norm_s > 0 ? rs->loss / m->norm_s : 0;
    double tol = m->p.refine_tol > MODEL_RESTART_TOL ? m->p.refine_tol
                                                     : MODEL_RESTART_TOL;
    rs->rounds++;
    if ((rs->prev >= 0 && rs->prev - rel <= tol * rs->prev) ||
        rs->rounds >= MODEL_RESTART_ROUNDS) {
        double inc = m->norm_s > 0 && m->loss_s > 0 ? m->loss_s / m->norm_s : 0;
        if (m->p.robust == MODEL_ROBUST_L21 && m->norm_s > 0)
            inc = model__l21_objective(m) / m->norm_s;
        m->restart_events = m->events;
        if (rel < inc * (1 - MODEL_RESTART_MARGIN))
            model_restart_install(m, rs);
        model__restart_drop(m);
        return;
    }
    rs->prev = rel;
    if (model__kl(m))
        model_restart_update_kl(m, rs);
    else
        model_restart_update(m, rs);
    memset(rs->kb, 0, sizeof(rs->kb));
    memset(rs->A, 0, (size_t)k * k * sizeof(double));
    memset(rs->B, 0, (size_t)rs->M * k * sizeof(double));
    rs->loss = 0;
    rs->cursor = 0;
}

static size_t model_restart_slice(struct model *m, size_t max_users);

/* Returns how many users the slice went through, at least 1 (a call that
 * only ends a pass did work too), 0 only when max_users is 0. */
size_t model__restart_step(struct model *m, size_t max_users)
{
    size_t done = max_users ? model_restart_slice(m, max_users) : 0;
    return max_users && !done ? 1 : done;
}

static size_t model_restart_slice(struct model *m, size_t max_users)
{
    struct model_restart *rs = m->rs;
    const uint32_t k = m->k, U = ids_slots(m->uids);
    size_t done = 0;
    if (rs->phase == MODEL_RS_SEED) {
        done = model_nndsvd_feed(m, rs->sv, &rs->cursor, max_users);
        if (rs->cursor < U)
            return done;
        rs->cursor = 0;
        nndsvd_pass_end(rs->sv);
        if (nndsvd_pass(rs->sv) != NNDSVD_DONE)
            return done;
        uint8_t *live = model_live_items(m, rs->M);
        if (!live) {
            model__restart_drop(m);
            m->restart_events = m->events;
            return done;
        }
        nndsvd_factor(rs->sv, live, rs->W);
        free(live);
        nndsvd_free(rs->sv);
        rs->sv = NULL;
        rs->B = calloc((size_t)rs->M * k, sizeof(double));
        if (!rs->B) {
            model__restart_drop(m);
            m->restart_events = m->events;
            return done;
        }
        hals_gram(k, rs->M, rs->W, NULL, rs->G);
        kl_colsums(k, rs->M, rs->W, rs->ks);
        rs->phase = MODEL_RS_SOLVE;
        return done;
    }
    for (; rs->cursor < U && done < max_users; rs->cursor++) {
        if (!(m->u[rs->cursor].flags & MODEL_U_LIVE))
            continue;
        model_restart_user(m, rs, rs->cursor);
        done++;
    }
    if (rs->cursor >= U)
        model_restart_round_end(m, rs);
    return done;
}
