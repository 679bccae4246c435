/* model.h -- the online NMF model: V (items x users) ~= W H, W, H >= 0.
 *
 * The whole API of online/: plain C on flat arrays, no I/O. Ids are byte
 * strings of 1..MODEL_ID_MAX bytes; users and items get dense indices
 * (uint32) on first sight. Times are event times in milliseconds since the
 * Unix epoch. Functions returning int give 0 or a negative errno.
 *
 * The equations, the papers and the choices (unit L2 columns of W, the
 * recency weighting of A and B) are described at the top of model.c.
 *
 * A model is used by one thread at a time; functions taking a const model
 * may run concurrently with each other (e.g. model_save in a worker while
 * the owner waits), never with a mutating call.
 */
#ifndef NMFD_ONLINE_MODEL_H
#define NMFD_ONLINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define MODEL_ID_MAX 256
#define MODEL_K_MAX  256
/* Accepted event times are 0..MODEL_TS_MAX ms (about 285,000 years) and
 * weights 0..MODEL_WEIGHT_MAX; anything else is -ERANGE. */
#define MODEL_TS_MAX      ((int64_t)1 << 53)
#define MODEL_WEIGHT_MAX  1e12
#define MODEL_PROFILE_MAX 65535
/* A profile value (the decayed sum of a user's weights on an item)
 * saturates here: a million events of MODEL_WEIGHT_MAX on one item. */
#define MODEL_VALUE_MAX 1e18f

/* The offline paths' refresh_work: a refresh once the re-solves since the
 * last one cost four refreshes (measured, docs/benchmarks.md: against 1,
 * the pass of nmfctl fit is 10-30% quicker on the sets with few items,
 * which refresh every few dozen events at 1, and its bounded refinement
 * ends within a few parts in a thousand of the same loss). */
#define MODEL_REFRESH_WORK 4.0

struct model_params {
    uint32_t k;              /* rank, 1..MODEL_K_MAX (default 16) */
    int64_t half_life_ms;    /* profile, A and B decay; 0 = none */
    double alpha_h;          /* regularisation of h (scikit-learn NMF) */
    double alpha_w;          /* regularisation of W */
    double l1_ratio;         /* 0 = pure L2, 1 = pure L1 */
    uint32_t profile_max;    /* items kept per user profile (default
                                16384): a safety valve against runaway
                                ids; what it evicts stays in the loss */
    uint64_t refresh_events; /* W refresh after this many folds at most;
                                0 = only by the caller */
    uint32_t robust;         /* MODEL_ROBUST_NONE (default) or
                                MODEL_ROBUST_L21: each user's share of A
                                and B weighted by the inverse of its
                                residual (model.c, robust.c) */
    uint32_t loss;           /* MODEL_LOSS_FROBENIUS (default) or
                                MODEL_LOSS_KL: the generalised
                                Kullback-Leibler divergence (model.c,
                                kl.c) */
    double refresh_work;     /* also refresh once the re-solves since the
                                last refresh did this many times the work
                                of a refresh (model_refresh_due); 0 = off,
                                the default: the daemon refreshes by the
                                clock. Offline paths set
                                MODEL_REFRESH_WORK. Not saved in a state. */
    int64_t ttl_ms;          /* forget users/items unseen this long; 0 */
    uint64_t seed;           /* initial W */
    uint64_t warmup_events;  /* batch HALS on the first N events; 0 = off */
    uint32_t nnls_sweeps;    /* max coordinate-descent sweeps per solve */
    double nnls_tol;         /* stop a solve when max |dh| <= tol*max h */
    uint32_t hals_sweeps;    /* HALS sweeps over W per refresh */
    double refine_tol;       /* model_refine stops refreshing when a round
                                improves the relative loss by less than
                                this fraction */
    double holdout;          /* share of (user, item) pairs, chosen by a
                                salted hash, kept out of the fold and
                                scored as held-out error; 0 = none (the
                                default), below 1 */
    uint64_t holdout_salt;   /* which pairs: another salt holds out
                                another share-F set (the folds of a
                                cross-validation); 0 by default */
};

/* model.robust (docs/design.md section 6). */
#define MODEL_ROBUST_NONE 0u
#define MODEL_ROBUST_L21  1u
/* model.loss (docs/design.md section 6). */
#define MODEL_LOSS_FROBENIUS 0u
#define MODEL_LOSS_KL        1u

/* Defaults of docs/design.md section 6. */
void model_params_default(struct model_params *p);
/* NULL when p is usable, else a static lowercase message. */
const char *model_params_check(const struct model_params *p);

struct model;

struct model *model_new(const struct model_params *p);
void model_free(struct model *m);
void model_destroy(struct model **m);
const struct model_params *model_params(const struct model *m);

/* Folds one event: decay u's profile to ts, add weight to item, re-solve
 * h_u, replace u's contribution in A and B. May refresh W itself: at
 * warmup_events, after refresh_events folds, or, with refresh_work set,
 * once the work of the re-solves since the last refresh reaches that
 * share of a refresh's (the rule above model_refresh_due in model.c; all
 * off with refresh_events = 0). The timestamps never decide a refresh.
 *   -EINVAL       NULL or empty id, weight negative/NaN/Inf
 *   -ENAMETOOLONG id over MODEL_ID_MAX bytes
 *   -ERANGE       ts outside 0..MODEL_TS_MAX, weight over MODEL_WEIGHT_MAX
 *   -ENOMEM       growth failed (model unchanged)
 * On error nothing is folded. */
int model_fold(struct model *m, const char *user, size_t user_len,
               const char *item, size_t item_len, double weight, int64_t ts);

/* One event for model_fold_batch. */
struct model_event {
    const char *user;
    size_t user_len;
    const char *item;
    size_t item_len;
    double weight;
    int64_t ts;
};

/* model_fold of e, told the event that comes next (NULL: none known).
 * When next is a valid event of the same user, h_u is not re-solved for
 * e: the profile, the loss and A and B change exactly as for the h_u it
 * had (decayed), and next's fold solves it once for both. A run of one
 * user's events then costs one solve, not one each, and the state after
 * the run is a model_fold of each event but the intermediate h. If next
 * never comes (it is refused for lack of memory), u is left stale, as
 * after a refresh, and the idle refinement solves it. */
int model_fold_next(struct model *m, const struct model_event *e,
                    const struct model_event *next);

/* Folds ev[0..n) in order with exactly the effect of model_fold_next on
 * each event, told the one after it (same results, same refreshes; one
 * solve per run of a user's consecutive events), but faster: it looks
 * ahead and brings
 * the memory of upcoming events (id table slots and records, user state,
 * profiles, W rows) into cache while folding the current one. rc, if not
 * NULL, receives each event's model_fold result. Returns the number of
 * events folded (rc 0). */
size_t model_fold_batch(struct model *m, const struct model_event *ev, size_t n,
                        int *rc);

/* W refresh by HALS on A and B, column normalisation, dead column
 * resampling, then G = W^T W. Callers run it on their own clock too. */
void model_refresh(struct model *m);

/* Idle convergence, in bounded steps: re-solves up to max_users users
 * whose h is stale against the current W; when none is stale and A, B
 * moved since the last refresh, refreshes W, unless the previous refresh
 * made here (with no event folded since) improved the relative loss by
 * less than refine_tol. With half_life 0, repeated calls are exact
 * alternating NNLS on the full data, so the loss does not increase from
 * round to round.
 *
 * Two more things happen in idle time. If the stream went quiet before
 * warmup_events (a whole round of refinement passed without an event),
 * the warm-up's seed of W replaces the current one (every user becomes
 * stale; the following rounds are the warm-up's batch rounds). And at
 * the first
 * convergence once the folded events have at least doubled since the
 * last restart (so at the first one), a restart tries to escape a poor
 * local minimum: alternating NNLS from an NNDSVDa seed of all current
 * profiles, run beside the live model (which does not change meanwhile)
 * over many calls, each going through at most max_users users plus one
 * O(items k^2) step. Its W replaces the live one only if its loss is
 * lower by more than 0.1%; then every user is re-solved by the following
 * calls as after a refresh. Any fold, refresh or expiry abandons it.
 *
 * Returns how many users it re-solved or went through (0 with no
 * refresh done means converged; 0 always when max_users is 0). */
size_t model_refine(struct model *m, size_t max_users);

/* Forgets users and items unseen since now - ttl (event time), removing
 * their contributions from A and B. Returns how many were forgotten. */
size_t model_expire(struct model *m, int64_t now);

/* Epochs: every user records the epoch in which it was last marked
 * changed (model_user_view.changed), so that a publisher can send only
 * the users changed since the last epoch. A user is marked (changed = the
 * current epoch) when
 *   (a) it folds an event (model_fold, model_fold_batch), or
 *   (b) a re-solve without an event (model_refine, model_expire, the
 *       warm-up, a restart) moves its segment, moves its share by more
 *       than 1e-3, or moves sum(h) by more than 1e-3 of its value, all
 *       compared with the values at its last mark,
 * and never by the W refresh's rescaling of h (the unit-norm
 * reparametrisation, which leaves W h unchanged). So a user not marked
 * since its last published record still has that record's segment, a
 * share within 1e-3 and a sum(h) within 0.1% of it. */
uint64_t model_epoch(const struct model *m);
void model_epoch_set(struct model *m, uint64_t epoch);

struct model_stats {
    uint64_t events;    /* events folded since the model began */
    double weight_sum;  /* undecayed sum of folded weights */
    uint64_t users;     /* live users */
    uint64_t items;     /* live items */
    uint64_t refreshes; /* W refreshes so far */
    /* The loss of the current W and H on the current V (docs/design.md
     * section 1), exact at any moment, in O(items k + k^2):
     *     ||V - W H||^2 = ||V||^2 - 2 <W, B> + <W^T W, A>,
     * weighted by recency as the objective of model.c is, with ||V||^2
     * counting the mass profiles evicted (all of it residual); not a sum
     * of the losses users had when last solved, against older W's. */
    double loss;           /* sum_u c_u ||v_u - W h_u||^2 */
    double norm;           /* sum_u c_u ||v_u||^2 */
    double rel_loss;       /* loss / norm, 0 when norm is 0 */
    double evicted_weight; /* profile values evicted at profile_max (and
                              events too weak to evict), valued when
                              evicted, since the model began */
    int64_t now;           /* latest event time seen */
    uint64_t stale;        /* users not re-solved since the last refresh;
                              every live user while a restart is under way
                              (model_refine: any h may still change) */
    uint64_t restarts;     /* restarts that replaced W */
    /* Topic identity, since the model was made or loaded: columns of W
     * re-seeded (a restart's or a seed's k, a resampled dead column's
     * one), and those the matching to the old columns (DESIGN.md section
     * 1) gave another index than the one they were made at. */
    uint64_t reseeded;
    uint64_t moved;
    /* Multiply-adds the model has done since it was made or loaded, by
     * its own count (re-solves, W refreshes, seeds, restarts): a measure
     * of work that does not depend on the machine, so that a caller can
     * bound one phase by another (nmfctl fit bounds its refinement by
     * its pass). */
    uint64_t work;

    /* With params.holdout: the held-out matrix V_ho scored against the
     * current W and H over its entries (holdout.c),
     *     holdout_loss = ||V_ho - W H||^2 / ||V_ho||^2 on those entries,
     * exact, kept incrementally: O(1) when nothing changed since the
     * last call, O(k) per entry of the users re-solved since, one sweep
     * in O(entries k) after W changed. Held-out events count in events
     * and weight_sum (everything accepted), and in holdout_events. */
    double holdout_loss;
    double holdout_norm;     /* ||V_ho||^2 */
    uint64_t holdout_pairs;  /* entries scored */
    uint64_t holdout_events; /* events held out since the model began */
};
/* Reads the model only; with params.holdout it updates the held-out
 * score's cache, which the model owns: two threads must not call it on
 * one model at once (nothing else may run on the model meanwhile anyway). */
void model_stats(const struct model *m, struct model_stats *st);
/* Whether the pair is held out by this model (params.holdout and
 * holdout_salt): such events never reach a profile, A or B. */
int model_holdout_held(const struct model *m, const char *user, size_t user_len,
                       const char *item, size_t item_len);
/* Bi-cross-validation of the rank (Owen & Perry, Ann. Appl. Stat. 2009;
 * holdout.c): a share of the users, chosen by a hash salted by salt, is
 * held out whole; the caller folds only the other users' events into a
 * model and adds the held-out users' events here (model_bcv_add, valued
 * as a profile is, half_life_ms 0 = none). model_bcv_score then splits
 * the items in two halves by a hash with the same salt, solves each
 * held-out user's h on the half S against the model's W_S, and scores
 * the prediction W_T h on the other half T, zeros included, and the
 * other way round (h on T, scored on S):
 *     loss = sum_u ||v_uT - W_T h_uS||^2 + ||v_uS - W_S h_uT||^2,
 *     norm = sum_u ||v_u||^2.
 * The model is only read. */
struct model_bcv;
struct model_bcv_score {
    double loss;    /* the sum above */
    double norm;    /* sum of ||v_u||^2 over the held-out users */
    uint64_t users; /* held-out users scored */
};
/* NULL on -ENOMEM; share in (0, 1). */
struct model_bcv *model_bcv_new(double share, uint64_t salt);
void model_bcv_free(struct model_bcv *b);
/* 1 if the user's events belong to the held-out rows, else 0. */
int model_bcv_user_held(const struct model_bcv *b, const char *user,
                        size_t len);
/* Errors as model_fold's (nothing added on error). */
int model_bcv_add(struct model_bcv *b, const char *user, size_t user_len,
                  const char *item, size_t item_len, double weight, int64_t ts,
                  int64_t half_life_ms);
/* 0 or -ENOMEM. */
int model_bcv_score(const struct model_bcv *b, const struct model *m,
                    struct model_bcv_score *out);
/* W refreshes so far: model_stats' refreshes without its O(items k). */
uint64_t model_refreshes(const struct model *m);
/* model_stats' work, in O(1). */
uint64_t model_work(const struct model *m);

/* Users by dense index, 0 <= idx < model_user_slots(m). A forgotten slot
 * returns -ENOENT. id stays valid until the next mutating call; h points
 * into the view itself (so a copy of the view must set it again). */
struct model_user_view {
    const char *id;
    size_t id_len;
    const float *h;    /* k values (in hbuf after model_user_get) */
    uint32_t segment;  /* argmax_j h[j] */
    float share;       /* h[segment] / sum(h); 0 if h == 0 */
    int64_t ts;        /* last event time */
    uint64_t changed;  /* epoch of the last mark (see model_epoch) */
    uint32_t nprofile; /* profile entries */
    /* robust = l21: the user's weight in A and B over the mean weight of
     * the users with a profile (1 is a typical user, an outlier is far
     * below), and the weight itself, 1 / max(||v - W h||, eps ||v||);
     * both 1 without robust, 0 without a profile. */
    float weight;
    float weight_raw;
    float hbuf[MODEL_K_MAX]; /* h, which the model keeps in scaled form */
};
uint32_t model_user_slots(const struct model *m);
int model_user_get(const struct model *m, uint32_t idx,
                   struct model_user_view *v);
/* Index of a user id or -ENOENT. */
int64_t model_user_find(const struct model *m, const char *id, size_t len);
/* Profile entries of a user (item index, value at time ts). */
int model_user_profile(const struct model *m, uint32_t idx,
                       const uint32_t **items, const float **values,
                       uint32_t *n);

/* Items by dense index; a forgotten slot returns NULL. */
uint32_t model_item_slots(const struct model *m);
const char *model_item_id(const struct model *m, uint32_t idx, size_t *len);

/* W, row-major model_item_slots x k floats (forgotten rows are zero). */
const float *model_W(const struct model *m);
/* A, k x k doubles, in the current time frame. */
void model_A(const struct model *m, double *out);
/* B, model_item_slots x k doubles, in the current time frame. */
void model_B(const struct model *m, double *out);

/* Memory held, in bytes, by part. */
struct model_memory {
    size_t users;             /* per-user state, h and user ids */
    size_t items;             /* W, B, per-item state and item ids */
    size_t profiles;          /* profile pools */
    uint64_t profile_entries; /* profile entries in use */
    size_t total;             /* with the work arrays of a restart */
};
void model_memory(const struct model *m, struct model_memory *mm);

/* The n strongest items of topic j, strongest first; returns how many. */
uint32_t model_topic_top(const struct model *m, uint32_t j, uint32_t n,
                         uint32_t *items, float *weights);
/* Continuity of each topic with an earlier version of W (prev: rows x k
 * floats, a copy of model_W taken then, rows its model_item_slots):
 * cont[j] = cos(w_j, prev_j) over the item rows both have, in [0, 1]; 0
 * when either column is zero. An item slot freed by expiry and reused
 * since counts as the same row (a forgotten item's row is zero). */
void model_topic_continuity(const struct model *m, const float *prev,
                            uint32_t rows, double *cont);
/* robust = l21: the users' weights, relative to their mean (as
 * model_user_view.weight), in one pass over the users: how many users
 * with a profile weigh less than below, and the lowest weight (1 and 0
 * without robust or without users). */
struct model_robust_summary {
    uint64_t below; /* users with a relative weight under the threshold */
    double lowest;  /* the smallest relative weight */
    double mean;    /* the mean raw weight */
};
void model_robust_summary(const struct model *m, double below,
                          struct model_robust_summary *out);
/* Users per segment (k counts) and topic mass sum_u h_u[j] (k values). */
void model_segment_sizes(const struct model *m, uint64_t *sizes, double *mass);

/* Recommendations (recommend.c). The n rows i of W (M rows of k floats)
 * with the largest positive score w_i . h, leaving out the rows listed in
 * ex (nex indices, sorted ascending), strongest first (ties: lower index
 * first), into items and scores (n each). Returns how many (fewer than n
 * when fewer rows score above 0). One pass over W; no allocation. */
uint32_t model_top_scores(const float *W, uint32_t M, uint32_t k,
                          const float *h, const uint32_t *ex, uint32_t nex,
                          uint32_t n, uint32_t *items, float *scores);
/* The same for a user of the model (index as model_user_find gives),
 * leaving out its profile's items: how many, -ENOENT (no such user) or
 * -ENOMEM (a sorted copy of the profile is the only allocation). */
int model_recommend(const struct model *m, uint32_t user, uint32_t n,
                    uint32_t *items, float *scores);

/* The complete state, for checkpoints: no I/O, the writer is the
 * caller's. model_load refuses anything inconsistent (returns NULL and
 * sets *err to a static message) and never returns half a model: bad
 * checksums, lengths, indices and flags, numbers that are not finite or
 * beyond what the model can hold (profile values over MODEL_VALUE_MAX, W
 * entries over 2, a user's loss above its |v|^2), and statistics (A, B,
 * G, the loss sums) that do not match the users and W they summarise.
 * What it accepts, model_save writes back byte for byte. */
typedef int (*model_write_fn)(void *ctx, const void *buf, size_t len);
int model_save(const struct model *m, model_write_fn write, void *ctx);
struct model *model_load(const void *buf, size_t len, const char **err);

/* A group of processes sharing one W (docs/design.md section 8; group.c).
 * A follower never changes W itself (no warm-up, refresh or restart, in
 * model_fold or model_refine; model_refresh does nothing): it takes the
 * group's W by model_w_install. Requires half_life_ms = 0 for the statistics. */
void model_follow(struct model *m, int on);
int model_following(const struct model *m);
/* Sets the rows of W of the n items named (adding the items not yet
 * known); rows of other items stay. Every user becomes stale against it,
 * as after a refresh. -EINVAL a bad id or a value that is negative or not
 * finite (nothing changed), -ENOMEM. */
int model_w_install(struct model *m, uint32_t n, const char *const *ids,
                    const size_t *lens, const float *W);
/* Users whose h is not yet solved against the current W (every live user
 * while a restart is under way, as model_stats counts them); 0 once all
 * are: a member's statistics are then those of the W it last installed. */
uint64_t model_stale_users(const struct model *m);
/* The index of an item, added (with a random row of W) if new; -EINVAL a
 * bad id, -ENOMEM. */
int64_t model_item_ensure(struct model *m, const char *id, size_t len);
/* The warm-up now, whatever warmup_events says: W seeded by NNDSVDa from
 * the profiles, then batch alternating NNLS (model.c). A group's leader
 * seeds the group's first W this way from its own partitions' users. */
void model_warm(struct model *m);
/* Begins model_refine's restart now, whatever its schedule (the
 * following model_refine calls run it): 0, or -EAGAIN (one is under way,
 * a follower, or too few profiles to seed from), -ENOMEM. */
int model_restart_try(struct model *m);
/* Forgets a user with its contribution to A and B; -ENOENT if the slot
 * is not live. */
int model_user_forget(struct model *m, uint32_t idx);
/* The exact statistics of the users u with part_of(id_u) == part:
 *     A = sum_u h_u h_u^T (k x k), B = sum_u v_u h_u^T (item slots x k),
 * sums->norm = sum_u ||v_u||^2, sums->users. A and B are the caller's,
 * overwritten. -EINVAL with half_life_ms > 0. */
struct model_part_sums {
    double norm;
    uint64_t users;
    uint64_t sizes[MODEL_K_MAX]; /* users by segment, as model_segment_sizes */
    double mass[MODEL_K_MAX];    /* sum of h_j, as model_segment_sizes */
};
int model_part_stats(const struct model *m,
                     int32_t (*part_of)(void *ctx, const char *id, size_t len),
                     void *ctx, int32_t part, double *A, double *B,
                     struct model_part_sums *sums);
/* The same statistics of the users at the given slots (those not live
 * are skipped): a caller that sorts the users by partition in one pass
 * gets every partition's statistics without a pass over all users per
 * partition. -EINVAL with half_life_ms > 0, a slot beyond the user
 * slots, or users NULL with n > 0. */
int model_users_stats(const struct model *m, const uint32_t *users, size_t n,
                      double *A, double *B, struct model_part_sums *sums);
/* The same, but B is added to, not zeroed first (A and the sums are):
 * a caller that keeps B zero outside the rows of the users' items, and
 * clears those after reading them, pays for a partition's users, not
 * for every item. */
int model_users_stats_add(const struct model *m, const uint32_t *users,
                          size_t n, double *A, double *B,
                          struct model_part_sums *sums);
/* The leader's model (no users): takes the group's A (k x k) and B (item
 * slots x k), for the next model_refresh. -EINVAL if it holds users or
 * half_life_ms > 0. */
int model_stats_set(struct model *m, const double *A, const double *B);
/* ||V - W H||^2 from the statistics held and norm = ||V||^2. */
double model_stats_loss(const struct model *m, double norm);

/* A user's sums, for handing it over: ||v - W h||^2 at its last solve,
 * ||v||^2 and the mass its profile evicted. -ENOENT if not live. */
int model_user_sums(const struct model *m, uint32_t idx, float *loss,
                    float *vnorm, float *evicted);
/* A user handed over from another model: its profile, h (true values,
 * k of them), time and sums, exactly as model_user_get, model_user_profile
 * and model_user_sums gave them there. Its contribution enters A and B
 * with that h; it is stale against this W. -EINVAL a bad field, -EEXIST
 * the user is here, -ENOMEM (model unchanged). */
struct model_user_state {
    const char *id;
    size_t id_len;
    int64_t t;
    const float *h;
    uint32_t n;
    const char *const *items;
    const size_t *item_lens;
    const float *values;
    float loss, vnorm, evicted;
};
int model_user_put(struct model *m, const struct model_user_state *st);

#endif
