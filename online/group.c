/* online/group.c -- the model's side of a group of processes sharing one W.
 *
 * In a group (docs/design.md section 8) each process owns the users of
 * some input partitions and one of them, the leader, owns W. This file
 * holds what the model must do for that, and nothing about how the pieces
 * travel (daemon/cluster.c): a member follows a W it is given instead of
 * refreshing its own, reports the exact statistics of one partition's
 * users, and forgets users whose partition went to another member; the
 * leader's model, which holds no users, takes the group's summed
 * statistics and refreshes W from them with model_refresh, so that the
 * group's W gets the same HALS, normalisation, dead-column handling and
 * topic identity as a single process's.
 *
 * The statistics are those of Mairal, Bach, Ponce & Sapiro (JMLR 2010)
 * as model.c keeps them, per partition p:
 *     A_p = sum_{u in p} h_u h_u^T,   B_p = sum_{u in p} v_u h_u^T,
 *     n_p = sum_{u in p} ||v_u||^2,
 * and, the users of the partitions being disjoint, A = sum_p A_p and
 * B = sum_p B_p are exactly the statistics of one model holding every
 * user with the same h. The group requires half_life = 0, so that the
 * partitions' sums need no common time frame.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hals.h"
#include "model_impl.h"

void model_follow(struct model *m, int on)
{
    m->follower = on ? 1 : 0;
}

int model_following(const struct model *m)
{
    return m->follower;
}

int64_t model_item_ensure(struct model *m, const char *id, size_t len)
{
    if (!id || !len || len > MODEL_ID_MAX)
        return -EINVAL;
    int64_t i = ids_find(m->iids, id, len);
    if (i >= 0)
        return i;
    int rc;
    if ((rc = ids_reserve(m->iids, len)) ||
        (rc = model__items_grow(m, ids_slots(m->iids) + 1)))
        return rc;
    return model__item_add(m, id, len, m->has_time ? m->T : 0);
}

/* Installs W rows by item id: every user becomes stale against the new W
 * (model_refine re-solves them, replacing their contributions), as after
 * a refresh. Rows of items the given W lacks (items this member saw
 * first) keep their current values until the leader's W has them. */
int model_w_install(struct model *m, uint32_t n, const char *const *ids,
                    const size_t *lens, const float *W)
{
    const uint32_t k = m->k;
    for (size_t q = 0; q < (size_t)n * k; q++)
        if (!(W[q] >= 0) || !isfinite(W[q]))
            return -EINVAL;
    for (uint32_t r = 0; r < n; r++)
        if (!ids[r] || !lens[r] || lens[r] > MODEL_ID_MAX)
            return -EINVAL;
    /* Every new item reserved first: a failure leaves the model as it
     * was. */
    uint32_t fresh = 0;
    for (uint32_t r = 0; r < n; r++)
        fresh += ids_find(m->iids, ids[r], lens[r]) < 0;
    int rc;
    if (fresh && (rc = model__items_grow(m, ids_slots(m->iids) + fresh)))
        return rc;
    model__restart_drop(m);
    model__b_sync(m);
    for (uint32_t r = 0; r < n; r++) {
        int64_t i = model_item_ensure(m, ids[r], lens[r]);
        if (i < 0)
            return (int)i; /* -ENOMEM of the id table: rows so far stay */
        memcpy(m->W + (size_t)i * k, W + (size_t)r * k, k * sizeof(float));
    }
    memset(m->G, 0, (size_t)k * k * sizeof(double));
    hals_gram(k, ids_slots(m->iids), m->W, NULL, m->G);
    model__w_changed(m, 0, ids_slots(m->iids));
    m->wgen++;
    m->refreshes++;
    m->stale = ids_live(m->uids);
    m->since_refresh = 0;
    m->work = 0;
    m->dirty = 0;
    return 0;
}

uint64_t model_stale_users(const struct model *m)
{
    return m->rs ? ids_live(m->uids) : m->stale;
}

int model_user_forget(struct model *m, uint32_t idx)
{
    if (idx >= ids_slots(m->uids) || !(m->u[idx].flags & MODEL_U_LIVE))
        return -ENOENT;
    model__user_remove(m, idx);
    if (!m->nprof) {
        /* The last profile gone: the sums are exactly zero, not the
         * rounding the subtractions left (a saved state checks it). */
        const uint32_t k = m->k;
        memset(m->A, 0, (size_t)k * k * sizeof(double));
        memset(m->B, 0, (size_t)ids_slots(m->iids) * k * sizeof(double));
        m->loss_s = m->norm_s = 0;
    }
    return 0;
}

/* Adds user u's share to A, B and sums (model_part_stats). */
static void part_add_user(const struct model *m, uint32_t u, double *A,
                          double *B, struct model_part_sums *sums)
{
    const uint32_t k = m->k;
    const struct model_user *us = &m->u[u];
    double h[MODEL_K_MAX];
    const float *hu = m->H + (size_t)u * k;
    uint32_t seg = 0;
    for (uint32_t j = 0; j < k; j++) {
        h[j] = (double)hu[j] * m->hs[j];
        /* The segment as model_segment_sizes finds it, in float. */
        float fj = (float)h[j], fs = (float)h[seg];
        if (fj > fs)
            seg = j;
        sums->mass[j] += fj;
    }
    sums->sizes[seg]++;
    for (uint32_t j = 0; j < k; j++)
        for (uint32_t l = 0; l < k; l++)
            A[(size_t)j * k + l] += h[j] * h[l];
    if (us->n) {
        const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
        const float *va = pool_vals(&m->pool, us->cls, us->slab);
        for (uint32_t q = 0; q < us->n; q++) {
            double *bi = B + (size_t)it[q] * k, v = va[q];
            for (uint32_t j = 0; j < k; j++)
                bi[j] += v * h[j];
        }
    }
    sums->norm += us->vnorm;
    sums->users++;
}

static void part_zero(const struct model *m, double *A, double *B,
                      struct model_part_sums *sums)
{
    const uint32_t k = m->k;
    memset(A, 0, (size_t)k * k * sizeof(double));
    memset(B, 0, (size_t)ids_slots(m->iids) * k * sizeof(double));
    memset(sums, 0, sizeof(*sums));
}

int model_part_stats(const struct model *m,
                     int32_t (*part_of)(void *ctx, const char *id, size_t len),
                     void *ctx, int32_t part, double *A, double *B,
                     struct model_part_sums *sums)
{
    const uint32_t U = ids_slots(m->uids);
    if (m->p.half_life_ms > 0)
        return -EINVAL;
    part_zero(m, A, B, sums);
    for (uint32_t u = 0; u < U; u++) {
        if (!(m->u[u].flags & MODEL_U_LIVE))
            continue;
        size_t len;
        const char *id = ids_get(m->uids, u, &len);
        if (part_of(ctx, id, len) != part)
            continue;
        part_add_user(m, u, A, B, sums);
    }
    return 0;
}

static int users_stats(const struct model *m, const uint32_t *users, size_t n,
                       double *A, double *B, struct model_part_sums *sums,
                       int zero_b)
{
    const uint32_t U = ids_slots(m->uids);
    if (m->p.half_life_ms > 0 || (n && !users))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (users[i] >= U)
            return -EINVAL;
    if (zero_b) {
        part_zero(m, A, B, sums);
    } else {
        memset(A, 0, (size_t)m->k * m->k * sizeof(double));
        memset(sums, 0, sizeof(*sums));
    }
    for (size_t i = 0; i < n; i++)
        if (m->u[users[i]].flags & MODEL_U_LIVE)
            part_add_user(m, users[i], A, B, sums);
    return 0;
}

int model_users_stats(const struct model *m, const uint32_t *users, size_t n,
                      double *A, double *B, struct model_part_sums *sums)
{
    return users_stats(m, users, n, A, B, sums, 1);
}

/* B added to, not zeroed: zeroing every item's row for each partition
 * made a round over P partitions cost P x items however few items each
 * partition's users hold. */
int model_users_stats_add(const struct model *m, const uint32_t *users,
                          size_t n, double *A, double *B,
                          struct model_part_sums *sums)
{
    return users_stats(m, users, n, A, B, sums, 0);
}

int model_stats_set(struct model *m, const double *A, const double *B)
{
    const uint32_t k = m->k;
    const size_t M = ids_slots(m->iids);
    if (m->p.half_life_ms > 0 || ids_live(m->uids))
        return -EINVAL;
    model__restart_drop(m);
    memcpy(m->A, A, (size_t)k * k * sizeof(double));
    memcpy(m->B, B, M * k * sizeof(double));
    for (uint32_t j = 0; j < k; j++)
        m->bcol[j] = 1;
    m->dirty = 1;
    return 0;
}

/* ||V - W H||^2 = ||V||^2 - 2 <W, B> + <W^T W, A>, with the statistics the
 * model holds (the leader's: the group's, rescaled with W by the refresh
 * so that W H did not move) and norm = ||V||^2 from the partitions. */
double model_stats_loss(const struct model *m, double norm)
{
    const uint32_t k = m->k;
    const size_t M = ids_slots(m->iids);
    double wb = 0, ga = 0;
    for (size_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            wb += (double)m->W[i * k + j] * m->B[i * k + j] * m->bcol[j];
    for (size_t q = 0; q < (size_t)k * k; q++)
        ga += m->G[q] * m->A[q];
    double loss = norm - 2 * wb + ga;
    return loss > 0 ? loss : 0;
}

int model_user_sums(const struct model *m, uint32_t idx, float *loss,
                    float *vnorm, float *evicted)
{
    if (idx >= ids_slots(m->uids) || !(m->u[idx].flags & MODEL_U_LIVE))
        return -ENOENT;
    *loss = m->u[idx].loss;
    *vnorm = m->u[idx].vnorm;
    *evicted = m->u[idx].flags & MODEL_U_EV ? m->uev[idx] : 0;
    return 0;
}

/* A user handed over by another member: its profile and h as they were
 * there, so that its contribution h h^T, v h^T is exactly the one the
 * group's statistics held. It is stale against this member's W (the
 * refinement re-solves it) and marked changed (the next epoch publishes
 * its segment from here). */
int model_user_put(struct model *m, const struct model_user_state *st)
{
    const uint32_t k = m->k;
    if (!st->id || !st->id_len || st->id_len > MODEL_ID_MAX ||
        st->n > MODEL_PROFILE_MAX || st->n > m->p.profile_max ||
        !(st->vnorm >= 0) || !isfinite(st->vnorm) || !(st->loss >= 0) ||
        !(st->loss <= st->vnorm) || !(st->evicted >= 0) ||
        !(st->evicted <= st->vnorm) || st->t < 0 || st->t > MODEL_TS_MAX)
        return -EINVAL;
    for (uint32_t j = 0; j < k; j++)
        if (!(st->h[j] >= 0) || !(st->h[j] <= MODEL_H_MAX))
            return -EINVAL;
    for (uint32_t q = 0; q < st->n; q++)
        if (!st->items[q] || !st->item_lens[q] ||
            st->item_lens[q] > MODEL_ID_MAX || !(st->values[q] > 0) ||
            !(st->values[q] <= MODEL_VALUE_MAX))
            return -EINVAL;
    if (ids_find(m->uids, st->id, st->id_len) >= 0)
        return -EEXIST;
    /* Every growth first: a failure leaves the model unchanged. The items
     * found here are not looked up again (a restore puts every user of a
     * partition, and the lookups were half its time). */
    uint32_t fresh = 0, cls = st->n ? pool_class_for(st->n) : 0;
    int64_t *it = NULL;
    if (st->n) {
        it = malloc(st->n * sizeof(*it));
        if (!it)
            return -ENOMEM;
    }
    for (uint32_t q = 0; q < st->n; q++) {
        it[q] = ids_find(m->iids, st->items[q], st->item_lens[q]);
        fresh += it[q] < 0;
    }
    int rc;
    if ((rc = ids_reserve(m->uids, st->id_len)) ||
        (rc = model__users_grow(m, ids_slots(m->uids) + 1)) ||
        (fresh && (rc = model__items_grow(m, ids_slots(m->iids) + fresh))) ||
        (st->n && (rc = pool_reserve(&m->pool, cls)))) {
        free(it);
        return rc;
    }
    for (uint32_t q = 0; q < st->n && fresh; q++) {
        if (it[q] >= 0)
            continue;
        it[q] = model_item_ensure(m, st->items[q], st->item_lens[q]);
        if (it[q] < 0) {
            rc = (int)it[q];
            free(it);
            return rc;
        }
    }
    model__restart_drop(m);
    if (!m->has_time) {
        m->T = m->T0 = st->t;
        m->has_time = 1;
    } else if (st->t > m->T) {
        m->T = st->t;
    }
    uint32_t u = model__user_add(m, st->id, st->id_len, st->t);
    struct model_user *us = &m->u[u];
    if (st->n) {
        us->slab = pool_alloc(&m->pool, cls);
        us->cls = (uint8_t)cls;
        us->n = (uint16_t)st->n;
        uint32_t *pi = pool_items(&m->pool, cls, us->slab);
        for (uint32_t q = 0; q < st->n; q++)
            pi[q] = (uint32_t)it[q];
        memcpy(pool_vals(&m->pool, cls, us->slab), st->values,
               st->n * sizeof(float));
        m->nprof++;
    }
    free(it);
    us->loss = st->loss;
    us->vnorm = st->vnorm;
    /* robust = l21: in at weight 1 (code 0) until its next solve. */
    model__l21_count(m, us->loss, us->vnorm, 1);
    if (us->vnorm > 0 && m->p.robust == MODEL_ROBUST_L21)
        m->dsum += 1;
    if (st->evicted > 0) {
        m->uev[u] = st->evicted;
        us->flags |= MODEL_U_EV;
    }
    /* A += s h h^T, h the true values hu * hs: each term rounded as
     * (s h_j) h_l, row by row on a copy of h (no aliasing with A, so the
     * compiler vectorises the row; it was most of a restore's import). */
    float *hu = m->H + (size_t)u * k;
    double s = model__frame_weight(m, st->t), g[MODEL_K_MAX];
    for (uint32_t j = 0; j < k; j++) {
        hu[j] = (float)((double)st->h[j] * m->hsi[j]);
        g[j] = (double)hu[j] * m->hs[j];
    }
    for (uint32_t j = 0; j < k; j++) {
        double *restrict aj = m->A + (size_t)j * k;
        const double sj = s * g[j];
        for (uint32_t l = 0; l < k; l++)
            aj[l] += sj * g[l];
    }
    m->loss_s += s * us->loss;
    m->norm_s += s * us->vnorm;
    /* Not in B yet: the sync adds it before W is next read against B. */
    model__pend(m, u);
    /* Stale against this W, as after a refresh. */
    us->solved = (uint32_t)m->refreshes - 1u;
    m->stale++;
    m->dirty = 1;
    return 0;
}

int model_restart_try(struct model *m)
{
    if (m->rs || m->follower || !model__seedable(m))
        return -EAGAIN;
    return model__restart_begin(m);
}
