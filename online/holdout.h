/* holdout.h -- held-out (user, item) pairs: kept out of the fold, scored.
 * Internal to online/ (model.c and model_state.c); the API is model.h's
 * model_params.holdout, model_holdout_held and model_stats. */
#ifndef NMFD_ONLINE_HOLDOUT_H
#define NMFD_ONLINE_HOLDOUT_H

#include <stddef.h>
#include <stdint.h>

struct model;
struct holdout;

/* A share in [0, 1) of the pairs, chosen by a salted hash; NULL on
 * -ENOMEM. */
struct holdout *holdout_new(double share, uint64_t salt);
void holdout_free(struct holdout *h);

/* Whether the pair (user, item) is held out under (share, salt): a pure
 * function of the bytes, the same in every process and on every run. */
int holdout_pair_held(double share, uint64_t salt, const char *user,
                      size_t user_len, const char *item, size_t item_len);

/* Adds an event of a held-out pair to the held-out matrix, decayed as a
 * profile is (half_life_ms, 0 = none). 0 or -ENOMEM (nothing changed). */
int holdout_add(struct holdout *h, const char *user, size_t user_len,
                const char *item, size_t item_len, double weight, int64_t ts,
                int64_t half_life_ms);

struct holdout_score {
    double loss;    /* sum over held-out entries of (v - w_i . h_u)^2 */
    double norm;    /* sum of v^2 */
    uint64_t pairs; /* entries scored */
};
/* The held-out matrix against the model's current W and H: exact, kept
 * incrementally in a cache of the holdout (derived, never saved), so h
 * is not const. One model per holdout: m is the model that owns h. */
void holdout_score(struct holdout *h, const struct model *m,
                   struct holdout_score *out);
/* What the cache must hear from the model that owns h (model.c calls
 * these only when it has a holdout): user slot u's h, time or liveness
 * changed; slot u now holds the user id (live) or was freed (!live, id
 * unused); item slot i now holds the item id (live) or is about to be
 * freed (!live, id still the slot's). Global changes (W, H's column
 * scales, every h at once) are seen through the model's wgen and sgen. */
void holdout_note_user(struct holdout *h, uint32_t u);
void holdout_note_user_id(struct holdout *h, uint32_t u, const char *id,
                          size_t len, int live);
void holdout_note_item_id(struct holdout *h, uint32_t i, const char *id,
                          size_t len, int live);

uint64_t holdout_events(const struct holdout *h);
double holdout_weight_sum(const struct holdout *h);
uint64_t holdout_entries(const struct holdout *h);
size_t holdout_bytes(const struct holdout *h);

/* State section: holdout_save writes through put (model_state.c's
 * checksummed writer); holdout_load reads n bytes at p into an empty
 * holdout, sets *used, and returns NULL or a static message. */
/* Bi-cross-validation of the rank (the equation above holdout_bcv_user in
 * holdout.c). Whether a user's row is held out under (share, salt), and
 * whether an item lies in the scored half T under salt: pure functions of
 * the bytes, independent of each other and of holdout_pair_held. */
int holdout_bcv_user_held(double share, uint64_t salt, const char *user,
                          size_t len);
int holdout_bcv_item_scored(uint64_t salt, const char *item, size_t len);

/* G_S = W_S^T W_S and G_T = W_T^T W_T (k x k each, row-major) over the M
 * rows of W (row-major, k floats a row), scored[i] putting row i in T. */
void holdout_bcv_grams(uint32_t k, const float *W, uint32_t M,
                       const uint8_t *scored, double *GS, double *GT);

/* One held-out user: n entries, entry e of value v[e] on W's row row[e]
 * (-1: an item W has no row for, a zero row), in T if scored[e]. Solves
 * h on the entries in S and returns the squared error over T, zeros
 * included; *norm gets ||v_T||^2. scratch holds 4 k doubles. */
double holdout_bcv_user(uint32_t k, const float *W, const double *GS,
                        const double *GT, const int64_t *row,
                        const uint8_t *scored, const double *v, uint32_t n,
                        double l1, double l2, uint32_t sweeps, double tol,
                        double *scratch, double *norm);

void holdout_save(const struct holdout *h,
                  void (*put)(void *ctx, const void *p, size_t len), void *ctx);
const char *holdout_load(struct holdout *h, const uint8_t *p, size_t n,
                         size_t *used);

#endif
