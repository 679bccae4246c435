/* model_impl.h -- the model's state, shared by model.c and model_state.c
 * only. Not part of the API: everyone else goes through model.h. */
#ifndef NMFD_ONLINE_MODEL_IMPL_H
#define NMFD_ONLINE_MODEL_IMPL_H

#include <float.h>
#include <math.h>
#include <string.h>

#include "holdout.h"
#include "ids.h"
#include "model.h"
#include "pool.h"
#include "rng.h"
#include "wbound.h"

/* Renormalise the time frame of A, B and the loss sums when the newest
 * event is this many half-lives past the frame origin. */
#define MODEL_FRAME_SPAN 64.0
/* Fold the column scales of h into H and rebuild A and B from the users
 * after this many refreshes that rescaled h, or sooner when a scale
 * leaves [1/MODEL_HS_RANGE, MODEL_HS_RANGE]. The rescaling itself is
 * exact in double (A, B and the scales move together), so the rebuild
 * only bounds the scales' range and the slow double-precision drift of
 * the incremental sums; each costs O(nnz k + users k^2). */
#define MODEL_REBUILD_EVERY 1024
#define MODEL_HS_RANGE      0x1p64

/* Magnitudes the model keeps its numbers within, so that every sum it
 * forms stays finite and model_load can refuse anything beyond them:
 * profile values saturate at MODEL_VALUE_MAX (model.h), an entry of h at
 * MODEL_H_MAX (with unit columns and W, h >= 0, |h| <= |v| at the
 * optimum, so only a degenerate W gets near it), entries of W are at most
 * 1 (unit columns; MODEL_W_MAX leaves room for rounding) and B's column
 * scales stay in [MODEL_BCOL_MIN, MODEL_BCOL_MAX] (folded into B when one
 * leaves). */
#define MODEL_H_MAX    1e30f
#define MODEL_W_MAX    2.0f
#define MODEL_BCOL_MIN 0x1p-256
#define MODEL_BCOL_MAX 0x1p256

/* 48 bytes. The mark (changed, mseg, mshare, msum) is what the user's
 * last published record showed, for the rule in model.h. */
struct model_user {
    int64_t t;        /* latest event time; the profile is valued at t */
    uint64_t changed; /* epoch of the last mark */
    float loss;       /* ||v - W h||^2 at the last solve, valued at t */
    float vnorm;      /* ||v||^2, valued at t */
    uint32_t solved;  /* refresh count at the last solve */
    uint32_t slab;    /* profile slab in class cls, POOL_NONE if none */
    uint32_t bslot;   /* cached W^T v slot, POOL_NONE if none */
    float msum;       /* sum(h) at the last mark */
    uint16_t n;       /* profile entries */
    uint16_t mshare;  /* share at the last mark, in 1/65535 */
    uint8_t cls;
    uint8_t flags; /* MODEL_U_* */
    uint8_t mseg;  /* segment at the last mark */
    /* robust = l21: the code of the weight the user's share of A and B
     * went in with, 2^(-wq / MODEL_L21_STEPS) (robust.c); 0 otherwise. */
    uint8_t wq;
};

/* A re-solve marks the user when its share moves by more than this
 * (absolute) or sum(h) by more than this relative to the mark. */
#define MODEL_MARK_TOL 1e-3

#define MODEL_U_LIVE 1u
#define MODEL_U_INB  2u /* the user's contribution is in the stored B */
/* With MODEL_U_INB: the stored B holds c v g^T, not c v h^T, with g (in
 * B's stored units, h_j hs_j / bcol_j when it was taken) at the user's
 * cache slot in bg; model_b_sync brings it to h. */
#define MODEL_U_GB 4u
/* m->uev[u] > 0: the profile lost entries to profile_max. */
#define MODEL_U_EV 8u

/* Users with at least this many profile entries keep b = W^T v between
 * events (k doubles), updated in O(k) per event while W is unchanged. */
#define MODEL_BCACHE_MIN 32

/* NNDSVDa seeds (model_restart.c): subspace iterations; a restart's
 * rounds of alternating NNLS at most, its convergence tolerance (or
 * refine_tol if larger), and by how much (relative) it must beat the live
 * model's loss to replace W. */
#define MODEL_NNDSVD_ITERS   30
#define MODEL_RESTART_ROUNDS 300
#define MODEL_RESTART_TOL    1e-5
#define MODEL_RESTART_MARGIN 1e-3
/* loss = kl: the restart's seed takes more subspace iterations. Its
 * multiplicative updates stay in the basin of the seed they start from,
 * and the seed's trailing columns converge as (sigma_{k+1} / sigma_k)^2
 * per iteration: on factominer_hobbies (k = 16 of 17 items) that ratio is
 * 0.916, 30 iterations left the 16th column at cosine 0.978 from the
 * exact one, and the rounds from it ended at a divergence 1.56 times
 * theirs from the exact seed (scikit-learn's, an exact SVD). 100 leave
 * 1.5e-4 there (50 and 70 reached the exact seed's minimum too; each
 * iteration is a pass over the profiles, 3.5 of glibc_changelog's 12 CPU
 * seconds at 200). */
#define MODEL_NNDSVD_ITERS_KL 100
/* loss = kl: multiplicative updates of each h per restart round, from an
 * even start. On factominer_hobbies 10 reach scikit-learn's minimum
 * (and 30 in a batch prototype, in about as many rounds); with 5 the
 * rounds ended above the live model and the restart was not installed.
 * Each costs a pass over the profile; they are most of a round. */
#define MODEL_RESTART_KL_MU 10

struct model_restart;

/* robust = l21 (robust.c): user u's weight is 1 while q_u = ||r_u||^4 /
 * ||v_u||^2 is at most Q = MODEL_L21_C^4 times the users' median q, and
 * Q / q_u above but never below 2^-8 (a code of MODEL_L21_STEPS steps
 * per halving, at most MODEL_L21_CODE_MAX); the median is read from a
 * histogram of MODEL_L21_BINS bins on q's float bits (the exponent and
 * the top 3 bits of the mantissa: 8 bins per doubling). */
#define MODEL_L21_C        1.75
#define MODEL_L21_STEPS    16
#define MODEL_L21_BINS     2048
#define MODEL_L21_CODE_MAX 128

struct model {
    struct model_params p;
    uint32_t k;
    struct ids *uids, *iids;
    struct model_user *u; /* ucap users */
    float *H;             /* ucap x k; true h_u[j] = H[u][j] * hs[j] */
    /* ucap: the squared mass each user's profile could not keep (entries
     * evicted at profile_max, and events too weak to evict one), valued
     * at the user's t and decayed with the profile. It is part of the
     * user's vnorm, so it stays in ||V||^2 and in the loss as residual. */
    float *uev;
    uint32_t ucap;
    float *W;  /* icap x k, row-major */
    /* An 8-bit copy of W bounding each score from above, for the
     * recommendations' scan: rows kept exactly in step with W by
     * model__w_changed, room for icap rows. */
    struct wbound wb;
    double *B; /* icap x k; true B[:, j] = B[:, j] * bcol[j] * scale */
    void *Hraw, *Wraw, *Braw; /* the allocations H, W and B lie in */
    int64_t *item_t;          /* latest event time per item */
    uint32_t icap;
    double *A;    /* k x k, true A = A * scale */
    double *G;    /* k x k, W^T W */
    double *bcol; /* k */
    double *hs;   /* k: column scales of H (the refresh's rescaling) */
    double *hsi;  /* k: 1 / hs */
    double *S;    /* k x k scratch of model_refresh */
    /* Cached b = W^T v of heavy users: slot s holds k doubles, valid
     * while bc_gen[s] == wgen (bumped whenever W changes under them);
     * bg's slot s the g of a MODEL_U_GB user (k doubles). */
    double *bc;
    double *bg;
    uint64_t *bc_gen;
    uint32_t *bc_free;
    uint32_t bc_n, bc_cap, bc_nfree;
    uint64_t wgen;
    /* Users whose share the sync may owe B (MODEL_U_GB, or live without
     * MODEL_U_INB), one bit each (ucap bits): a superset, so the sync
     * visits them in index order without reading every user; pend_all
     * (after a load) means every user. */
    uint64_t *pend;
    uint8_t pend_all;
    struct pool pool;
    struct rng rng;
    /* Time: scale = 2^(-(T - T0) / half_life) turns the stored A, B and
     * loss sums into the true ones; a contribution made at time t is
     * added with weight 2^((t - T0) / half_life). */
    int64_t T, T0;
    uint8_t has_time, warm_done, dirty;
    uint8_t follower; /* W comes from a group's leader (group.c) */
    double loss_s, norm_s;
    uint64_t events;
    double weight_sum;
    double evicted_weight; /* profile values evicted, valued when evicted */
    uint64_t refreshes, epoch, since_refresh, stale;
    /* The refresh-by-work rule (model_refresh_due): multiply-adds done by
     * re-solves since the last refresh, and the profile rows the last
     * refresh's B sync went through. */
    uint64_t work, sync_rows;
    /* Multiply-adds of every kind the model has done since it was made
     * or loaded (model_stats' work): re-solves, refreshes, seeds and
     * restarts, counted as above. Not saved in a state. */
    uint64_t work_all;
    uint64_t refine_events;   /* events at the last refine-made refresh */
    double refine_prev;       /* relative loss then, -1 if none */
    uint32_t cursor;          /* next user the refine pass looks at */
    uint32_t reparams;        /* rescaling refreshes since the last rebuild */
    uint32_t nprof;           /* live users with a non-empty profile */
    uint64_t restart_events;  /* events at the last finished restart */
    uint64_t restarts;        /* restarts that replaced W */
    struct model_restart *rs; /* the restart under way, NULL if none */
    /* Since this process made or loaded the model (not in the saved
     * state): columns of W re-seeded, and how many of those the matching
     * gave another index than the one they were made at. */
    uint64_t reseeded, moved;
    /* The held-out pairs (holdout.c), NULL when params.holdout is 0. */
    struct holdout *ho;
    /* Bumped whenever W, H's column scales or every h at once may have
     * changed (model__w_changed, model_rebuild): the held-out score's
     * cache is swept again. With wgen, what holdout.c watches besides
     * the per-user notes. Not saved in a state. */
    uint64_t sgen;
    /* robust = l21: sum of the weights of the users with a profile, kept
     * with every re-solve (recomputed at a rebuild and a load). */
    double dsum;
    /* robust = l21: the threshold Q on q (0 until the first refresh:
     * every weight 1), set at each refresh from the users' median q;
     * the histogram of the q of the users with a profile (l21_users of
     * them) it is read from, kept with every re-solve. */
    double l21_q;
    uint32_t *l21_hist;
    uint32_t l21_users;
    /* loss = kl (model.c): kb = sum_u c_u h_u, the denominators of the
     * multiplicative update, in B's stored frame and column scales
     * (true kb_j = kb[j] bcol[j] scale); kls, W's column sums (kept with
     * G); klwh, 2 (profile_max + 1) doubles of scratch for the solve. B holds
     * the numerators sum_u c_u q_u h_u^T instead of sum_u c_u v_u h_u^T,
     * with q_u in the profile slabs' aux floats. */
    double *kb, *kls, *klwh;
    /* wgen after the last refresh's sync (model_kl_sync): another value
     * means W was replaced since and every share is resynced. */
    uint64_t kl_wgen;
};

/* loss = kl: a stored ratio v_i / (W h)_i saturates here (W h can be
 * as small as the floor of model_kl_update). */
#define MODEL_KL_QMAX 1e30f
/* loss = kl: the floor of W_ij after a multiplicative update, relative
 * to its column's largest entry (model_kl_update, and the restart's). */
#define MODEL_KL_WMIN 1e-12f

static inline int model__kl(const struct model *m)
{
    return m->p.loss == MODEL_LOSS_KL;
}

/* Whether the sync owes B the live user's share: held with a g, or out. */
static inline int model__owes_b(const struct model_user *us)
{
    return (us->flags & (MODEL_U_INB | MODEL_U_GB)) != MODEL_U_INB;
}

/* Weight of a contribution made at time t in the stored frame. */
static inline double model__frame_weight(const struct model *m, int64_t t)
{
    if (m->p.half_life_ms <= 0)
        return 1.0;
    return exp2((double)(t - m->T0) / (double)m->p.half_life_ms);
}

/* robust = l21: q = ||r||^4 / ||v||^2 from the loss and v^T v stored
 * with the user, and its histogram bin. */
static inline double model__l21_qof(float loss, float vnorm)
{
    double l = loss > 0 ? (double)loss : 0.0;
    return l * l / (double)vnorm;
}

static inline uint32_t model__l21_bin(double q)
{
    float f = q < FLT_MAX ? (float)q : FLT_MAX;
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return b >> 20; /* q >= 0: the sign bit is 0 */
}

/* The histogram with the user at (loss, vnorm) added (dir 1) or taken
 * out (-1); users without a profile are not in it. */
static inline void model__l21_count(struct model *m, float loss, float vnorm,
                                    int dir)
{
    if (m->p.robust != MODEL_ROBUST_L21 || !(vnorm > 0))
        return;
    m->l21_hist[model__l21_bin(model__l21_qof(loss, vnorm))] += (uint32_t)dir;
    m->l21_users += (uint32_t)dir;
}

/* The weight code of a user solved to (loss, vnorm) under the current
 * threshold: 0 (weight 1) at q <= Q, else log2(q / Q) halvings. */
static inline uint8_t model__l21_code(const struct model *m, float loss,
                                      float vnorm)
{
    if (m->p.robust != MODEL_ROBUST_L21 || !(m->l21_q > 0) || !(vnorm > 0))
        return 0;
    double q = model__l21_qof(loss, vnorm);
    if (!(q > m->l21_q))
        return 0;
    double c = MODEL_L21_STEPS * log2(q / m->l21_q) + 0.5;
    return c < MODEL_L21_CODE_MAX ? (uint8_t)c : MODEL_L21_CODE_MAX;
}

static inline double model__l21_decode(uint8_t wq)
{
    return wq ? exp2(-(double)wq / MODEL_L21_STEPS) : 1.0;
}

/* The weight of code wq for a user whose v^T v is vnorm (robust.c): 1
 * without robust; with l21 the one the code says, 0 without a profile. */
static inline double model__weight_of(const struct model *m, uint8_t wq,
                                      float vnorm)
{
    if (m->p.robust != MODEL_ROBUST_L21)
        return 1.0;
    if (!(vnorm > 0))
        return 0.0;
    return model__l21_decode(wq);
}

/* The weight the user's share of A and B went in with: its stored code. */
static inline double model__uweight(const struct model *m,
                                    const struct model_user *us)
{
    return model__weight_of(m, us->wq, us->vnorm);
}

/* The weight a user solved to (loss, vnorm) would take now (the
 * restart's candidates). */
static inline double model__l21_weight(const struct model *m, float loss,
                                       float vnorm)
{
    return model__weight_of(m, model__l21_code(m, loss, vnorm), vnorm);
}

/* robust = l21: a user's term of the objective whose reweighting the
 * weights are, from its squared loss L and v^T v: L up to the threshold
 * t = sqrt(Q v^T v) of L (where q = Q), then 2 t - t^2 / L, whose slope
 * (t / L)^2 = Q / q is the weight (robust.c). */
static inline double model__l21_term(const struct model *m, double loss,
                                     double vnorm)
{
    if (!(loss > 0) || !(vnorm > 0))
        return 0;
    if (!(m->l21_q > 0))
        return loss;
    double t = sqrt(m->l21_q * vnorm);
    return loss <= t ? loss : 2 * t - t * t / loss;
}

/* robust.c: the threshold Q from the histogram (at a refresh). */
void model__l21_threshold(struct model *m);
/* robust.c: the histogram of q from the users (a load; the sum of the
 * weights is model_state.c's). */
void model__l21_recount(struct model *m);

/* robust.c: sum_u c_u ||v_u - W h_u||^2 and sum_u c_u ||v_u||^2 in the
 * stored frame, by a pass over the users. */
void model__loss_users(const struct model *m, double *loss, double *norm);
/* model.c, loss = kl: sum_u c_u D(v_u || W h_u) and sum_u c_u sum_i v_ui
 * in the stored frame, by a pass over the users against the current W. */
void model__loss_kl(const struct model *m, double *loss, double *norm);
/* model.c, loss = kl: W's column sums into kls, after W changed. */
void model__kl_colsums(struct model *m);
/* model.c, loss = kl, in a load (model_state.c): the KL arrays made,
 * the profiles moved to slabs with the ratios' room, W's column sums.
 * 0 or -ENOMEM. */
int model__kl_load(struct model *m);
/* robust.c: the robust objective of the live model as its users were
 * last solved, sum_u c_u rho(||v_u - W h_u||^2) in the stored frame. */
double model__l21_objective(const struct model *m);

int model__users_grow(struct model *m, uint32_t need);
/* Shared with group.c: the B sync before W changes, a user's removal with
 * its contribution, and a new item (random row of W). */
void model__b_sync(struct model *m);
void model__user_remove(struct model *m, uint32_t u);
uint32_t model__user_add(struct model *m, const char *id, size_t len,
                         int64_t ts);
/* Marks user u as one the B sync may owe. */
void model__pend(struct model *m, uint32_t u);
uint32_t model__item_add(struct model *m, const char *id, size_t len,
                         int64_t ts);
/* Ensures a cache slot can be taken without allocating: 0 or -ENOMEM. */
int model__bcache_reserve(struct model *m);
uint32_t model__bcache_take(struct model *m);
int model__items_grow(struct model *m, uint32_t need);
/* Rows [i0, i1) of W were written: every write of W calls this before
 * anything reads the model again, so that the 8-bit copy (wbound.c)
 * follows it; a row whose copy lags could be left out of a user's
 * recommendations. (A new item's row, written where the row was zero,
 * goes through wbound_add, the same in O(k).) */
void model__w_changed(struct model *m, uint32_t i0, uint32_t i1);
/* W replaced outside a refresh: G, KL's column sums, the bounds of the
 * recommendations and every cache keyed on W's generation follow it. */
void model__w_replaced(struct model *m);
/* Whether the copy matches W row for row (for the tests: O(M k)). */
int model__w_copy_ok(const struct model *m);
/* The checksum model_save appends to a state of len bytes. */
uint64_t model__state_checksum(const void *buf, size_t len);
/* Creates the empty model for params p (validated by the caller). */
struct model *model__alloc(const struct model_params *p);
/* The heaviest user (largest c_u ||v_u||^2) of MODEL_HEAVY_DRAWS slots
 * drawn with rng, or -1 when none of them holds a profile (or there are no
 * slots, then nothing is drawn). A dead column of W is reseeded from it. */
#define MODEL_HEAVY_DRAWS 64
int64_t model__heavy_user(const struct model *m, struct rng *rng);
/* Column j of W (M rows, stride k) set to user u's profile at unit norm. */
void model__column_from_user(const struct model *m, uint32_t u, float *W,
                             size_t M, uint32_t j);

/* model_restart.c. A new W (item slots x k, Wn) replaces the current
 * one, with match its columns first matched to the current columns: new
 * column to[j] becomes topic j, where to maximises sum_j cos(w_j,
 * wn_to[j]) (the identity wins ties; a W never refreshed, the random
 * start, is not matched: it has no meaning to keep). Then G. Nothing else
 * is indexed by the new order, so the rest of the state (h, A, B, marks)
 * keeps its meaning: the users are re-solved against the new W by
 * whoever called. Without match the columns keep Wn's order (the warm-up
 * matches its result instead). */
void model__w_install(struct model *m, const float *Wn, int match);
/* model.c. Topic j becomes what topic src[j] (a permutation) was, in
 * all the state indexed by topic; the loss and every h are unchanged bit
 * for bit but for the order. Users whose segment index changed are
 * marked. */
void model__topics_permute(struct model *m, const uint32_t *src);
/* The matching itself, for n columns of each side: old column co[a] of Wo
 * (rows of ldo floats) and new column cn[b] of Wn (rows of ldn), over M
 * rows; to[a] = b pairs them. 0, or -ENOMEM with to the identity. */
int model__match(uint32_t M, uint32_t n, const float *Wo, size_t ldo,
                 const uint32_t *co, const float *Wn, size_t ldn,
                 const uint32_t *cn, uint32_t *to);
/* Whether an NNDSVDa seed is possible (k <= users with a
 * profile and k <= live items). */
int model__seedable(const struct model *m);
/* W seeded from every profile at once (then G; matched as
 * model__w_install does with match), or -EINVAL / -ENOMEM with W
 * unchanged. */
int model__seed_nndsvd(struct model *m, int match);
/* Whether model_refine should begin a restart at this convergence. */
int model__restart_due(const struct model *m);
/* Begins one (0) or gives up until the data doubles (-ENOMEM). */
int model__restart_begin(struct model *m);
/* The next slice of the restart under way: users it went through. */
size_t model__restart_step(struct model *m, size_t max_users);
/* Memory held by the restart under way (0 if none). */
size_t model__restart_bytes(const struct model *m);
/* Abandons the restart under way, if any. */
void model__restart_drop(struct model *m);

#endif
