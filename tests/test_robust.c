/* test_robust.c -- model.robust = l21 (online/robust.c): the users'
 * weights, A and B against a computation from scratch after thousands of
 * folds, the true loss, the weights of bots, the saved state and the
 * refused values. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_impl.h"
#include "rng.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rs_seed;
static int64_t rs_t0 = 1000; /* the streams' first ts */
static int64_t rs_ttl = 0;   /* model.ttl of the models made */

static uint32_t below(uint32_t n)
{
    return (uint32_t)((double)(rng_splitmix64(&rs_seed) >> 11) * 0x1.0p-53 * n);
}

static int fold_id(struct model *m, const char *prefix, uint32_t u, uint32_t i,
                   double w, int64_t ts)
{
    char us[32], is[32];
    int ul = snprintf(us, sizeof(us), "%s%u", prefix, u);
    int il = snprintf(is, sizeof(is), "item-%u", i);
    return model_fold(m, us, (size_t)ul, is, (size_t)il, w, ts);
}

static struct model *robust_model(uint32_t k, int64_t half_life,
                                  uint64_t refresh, uint32_t robust)
{
    struct model_params p;
    model_params_default(&p);
    p.k = k;
    p.half_life_ms = half_life;
    p.warmup_events = 1000;
    p.refresh_events = refresh;
    p.robust = robust;
    p.ttl_ms = rs_ttl;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    return m;
}

/* A planted stream of `events` events: users of segment u % K click
 * their segment's bundle of items/K items (10% noise anywhere); with
 * bots, `bots` ids click uniformly at random as often as the users
 * together. ts moves every `tick` events. */
static void stream(struct model *m, uint32_t users, uint32_t items, uint32_t K,
                   uint32_t bots, int events, int tick, uint64_t seed)
{
    rs_seed = seed;
    int64_t ts = rs_t0;
    uint32_t span = items / K;
    for (int e = 0; e < events; e++) {
        if (e % tick == 0)
            ts += 1 + below(20);
        double w = 0.5 + below(1000) / 400.0;
        if (bots && below(2)) {
            cr_assert_eq(fold_id(m, "bot-", below(bots), below(items), w, ts),
                         0);
            continue;
        }
        uint32_t u = below(users);
        uint32_t i = below(10) ? (u % K) * span + below(span) : below(items);
        cr_assert_eq(fold_id(m, "user-", u, i, w, ts), 0);
    }
}

static double recency(const struct model *m, int64_t ts)
{
    struct model_stats st;
    model_stats(m, &st);
    int64_t hl = model_params(m)->half_life_ms;
    return hl > 0 ? exp2(-(double)(st.now - ts) / (double)hl) : 1.0;
}

/* ||v_u - W h_u||^2 and ||v_u||^2 of user u, dense over every item row,
 * with the evicted mass (none in these streams) left out. */
static void user_residual(const struct model *m, uint32_t u,
                          const struct model_user_view *uv, double *r2,
                          double *v2)
{
    const uint32_t k = model_params(m)->k, M = model_item_slots(m);
    const float *W = model_W(m);
    const uint32_t *it;
    const float *va;
    uint32_t n;
    cr_assert_eq(model_user_profile(m, u, &it, &va, &n), 0);
    double *v = calloc(M ? M : 1, sizeof(double));
    *v2 = 0;
    for (uint32_t q = 0; q < n; q++) {
        v[it[q]] = va[q];
        *v2 += (double)va[q] * va[q];
    }
    *r2 = 0;
    for (uint32_t i = 0; i < M; i++) {
        double p = 0;
        for (uint32_t j = 0; j < k; j++)
            p += (double)W[(size_t)i * k + j] * uv->h[j];
        *r2 += (v[i] - p) * (v[i] - p);
    }
    free(v);
}

static double max_abs(const double *x, size_t n)
{
    double a = 0;
    for (size_t i = 0; i < n; i++)
        a = fabs(x[i]) > a ? fabs(x[i]) : a;
    return a;
}

/* The weight of a user with ||v - W h||^2 = r2 and ||v||^2 = v2 under
 * the threshold Q, from its definition (robust.c): 1 while q = r2^2 / v2
 * is at most Q, Q / q above. */
static double weight_of(double r2, double v2, double Q)
{
    double q = r2 * r2 / v2;
    return Q > 0 && q > Q ? Q / q : 1.0;
}

/* A and B from scratch, sum_u c_u d_u h h^T and sum_u c_u d_u v h^T,
 * with d_u the weight the view reports, compared with the model's; and
 * every weight that the current W determines (users solved since the
 * last refresh) compared with weight_of its residual computed densely,
 * to within the stored code's rounding (half a step of 2^(1/16)).
 * Returns how many weights were checked that way. */
static uint32_t assert_weighted_stats(const struct model *m, double rtol)
{
    const uint32_t k = model_params(m)->k, M = model_item_slots(m);
    double *A = malloc(k * k * sizeof(double));
    double *Ar = calloc(k * k, sizeof(double));
    double *B = malloc((M ? M : 1) * k * sizeof(double));
    double *Br = calloc((M ? M : 1) * k, sizeof(double));
    model_A(m, A);
    model_B(m, B);
    uint32_t checked = 0, nprof = 0;
    double dsum = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (model_user_get(m, u, &uv))
            continue;
        const uint32_t *it;
        const float *va;
        uint32_t n;
        cr_assert_eq(model_user_profile(m, u, &it, &va, &n), 0);
        double c = recency(m, uv.ts) * uv.weight_raw;
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                Ar[j * k + l] += c * uv.h[j] * uv.h[l];
        for (uint32_t q = 0; q < n; q++)
            for (uint32_t j = 0; j < k; j++)
                Br[(size_t)it[q] * k + j] += c * va[q] * uv.h[j];
        if (!n) {
            cr_assert_eq(uv.weight_raw, 0);
            continue;
        }
        nprof++;
        dsum += uv.weight_raw;
        if (m->u[u].solved != (uint32_t)m->refreshes)
            continue;
        double r2, v2;
        user_residual(m, u, &uv, &r2, &v2);
        double want = weight_of(r2, v2, m->l21_q);
        cr_assert(fabs(log2(uv.weight_raw / want)) <=
                      0.5 / MODEL_L21_STEPS + 1e-3,
                  "user %u weight %.9g, from its residual %.9g", u,
                  uv.weight_raw, want);
        checked++;
    }
    double sa = max_abs(Ar, k * k), sb = max_abs(Br, (size_t)M * k);
    for (size_t i = 0; i < (size_t)k * k; i++)
        cr_assert(fabs(A[i] - Ar[i]) <= rtol * sa, "A[%zu] %.17g vs %.17g", i,
                  A[i], Ar[i]);
    for (size_t i = 0; i < (size_t)M * k; i++)
        cr_assert(fabs(B[i] - Br[i]) <= rtol * sb, "B[%zu] %.17g vs %.17g", i,
                  B[i], Br[i]);
    struct model_robust_summary rs;
    model_robust_summary(m, 0.5, &rs);
    cr_assert(fabs(rs.mean - dsum / nprof) <= 1e-6 * rs.mean,
              "mean weight %.17g vs %.17g", rs.mean, dsum / nprof);
    free(A);
    free(Ar);
    free(B);
    free(Br);
    return checked;
}

/* The threshold a refresh just set against MODEL_L21_C^4 times the
 * median q of the users, from their stored loss and v^T v (the
 * histogram's bin: within 2^(1/8)). */
static void assert_threshold(const struct model *m)
{
    uint32_t n = 0, U = model_user_slots(m);
    double *q = malloc((U ? U : 1) * sizeof(double));
    for (uint32_t u = 0; u < U; u++) {
        const struct model_user *us = &m->u[u];
        if ((us->flags & MODEL_U_LIVE) && us->vnorm > 0)
            q[n++] = (double)us->loss * us->loss / us->vnorm;
    }
    cr_assert_gt(n, 0);
    for (uint32_t i = 1; i < n; i++) /* insertion sort */
        for (uint32_t j = i; j > 0 && q[j - 1] > q[j]; j--) {
            double x = q[j];
            q[j] = q[j - 1];
            q[j - 1] = x;
        }
    double c = MODEL_L21_C * MODEL_L21_C;
    double want = c * c * q[(n + 1) / 2 - 1];
    cr_assert(fabs(log2(m->l21_q / want)) <= 0.125,
              "threshold %.9g, from the users' median %.9g", m->l21_q, want);
    free(q);
}

/* The loss model_stats reports against a dense computation. */
static void assert_loss_true(const struct model *m)
{
    double loss = 0, norm = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (model_user_get(m, u, &uv))
            continue;
        double r2, v2, c = recency(m, uv.ts);
        user_residual(m, u, &uv, &r2, &v2);
        loss += c * r2;
        norm += c * v2;
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert(fabs(st.norm - norm) <= 1e-6 * norm, "norm %.17g vs %.17g",
              st.norm, norm);
    cr_assert(fabs(st.loss - loss) <= 1e-4 * loss, "loss %.17g vs %.17g",
              st.loss, loss);
}

/* ---- tests ------------------------------------------------------------- */

/* A STATS_RTOL as in test_model.c: the float h's rescaling at each
 * refresh moves the incremental sums by ~6e-8 relative. */
#define RTOL 1e-6

Test(robust, weights_and_statistics_exact_after_thousands_of_folds)
{
    struct model *m = robust_model(6, 0, 2500, MODEL_ROBUST_L21);
    stream(m, 300, 960, 6, 12, 12000, 1, 11);
    cr_assert_gt(assert_weighted_stats(m, RTOL), 50);
    assert_loss_true(m);
    model_refresh(m);
    assert_threshold(m);
    assert_weighted_stats(m, RTOL);
    assert_loss_true(m);
    model_refine(m, 200);
    assert_weighted_stats(m, RTOL);
    for (int r = 0; r < 20 && model_refine(m, SIZE_MAX); r++)
        ;
    assert_weighted_stats(m, RTOL);
    assert_loss_true(m);
    /* The threshold moved with the refreshes: the shares in A and B are
     * those of the weights they went in with. */
    uint32_t below1 = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++)
        below1 += (m->u[u].flags & MODEL_U_LIVE) && m->u[u].wq;
    cr_assert_geq(below1, 5, "%u users weigh under 1", below1);
    model_free(m);
}

/* The same in runs of one user's events (one solve a run, model_fold_next
 * through model_fold_batch): the deferred events keep the weights and
 * their shares exact too. */
Test(robust, weights_and_statistics_exact_in_runs_of_a_users_events)
{
    struct model *m = robust_model(6, 3000, 2500, MODEL_ROBUST_L21);
    enum { N = 12000 };
    static char ids[N][2][32];
    static struct model_event ev[N];
    rs_seed = 23;
    int64_t ts = rs_t0;
    for (int e = 0; e < N;) {
        int bot = below(2), run = 1 + (int)below(8);
        uint32_t u = bot ? below(12) : below(300);
        for (int r = 0; r < run && e < N; r++, e++) {
            uint32_t i = bot || !below(10) ? below(960)
                                           : (u % 6) * 160 + below(160);
            int ul = snprintf(ids[e][0], 32, "%s%u", bot ? "bot-" : "user-", u);
            int il = snprintf(ids[e][1], 32, "item-%u", i);
            ts += below(3);
            ev[e] = (struct model_event){ids[e][0],  (size_t)ul,
                                         ids[e][1],  (size_t)il,
                                         0.5 + below(1000) / 400.0, ts};
        }
    }
    for (int e = 0; e < N; e += 500)
        cr_assert_eq(model_fold_batch(m, ev + e, 500, NULL), 500);
    cr_assert_gt(assert_weighted_stats(m, RTOL), 50);
    assert_loss_true(m);
    model_refresh(m);
    assert_weighted_stats(m, RTOL);
    for (int r = 0; r < 20 && model_refine(m, SIZE_MAX); r++)
        ;
    assert_weighted_stats(m, RTOL);
    assert_loss_true(m);
    model_free(m);
}

Test(robust, weights_and_statistics_exact_with_decay_and_held_shares)
{
    /* Between refreshes (refresh_events 0: only the test's own) heavy
     * users' shares are held in B with a g that carries the weight they
     * were added with; ts moves every 7 events, so decay runs too. */
    struct model *m = robust_model(6, 4000, 0, MODEL_ROBUST_L21);
    stream(m, 40, 300, 6, 4, 6000, 7, 12);
    model_refresh(m);
    cr_assert_eq(model_refine(m, 8), 8);
    int held = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++)
        held += (m->u[u].flags & MODEL_U_GB) != 0;
    cr_assert_gt(held, 3, "no share held with g: the test misses its path");
    assert_weighted_stats(m, RTOL);
    stream(m, 40, 300, 6, 4, 3000, 7, 13);
    assert_weighted_stats(m, RTOL);
    assert_loss_true(m);
    model_refresh(m);
    assert_weighted_stats(m, RTOL);
    model_free(m);
}

/* Forgetting users takes out their weighted shares. */
Test(robust, expiry_takes_out_weighted_shares)
{
    rs_ttl = 100000;
    struct model *m = robust_model(5, 0, 2000, MODEL_ROBUST_L21);
    rs_ttl = 0;
    stream(m, 200, 150, 5, 3, 6000, 1, 18);
    rs_t0 = 1000000; /* later users: "user-" ids above 200 only */
    rs_seed = 19;
    for (int e = 0; e < 3000; e++)
        cr_assert_eq(
            fold_id(m, "user-", 1000 + below(100), below(150), 1.0, rs_t0 + e),
            0);
    rs_t0 = 1000;
    struct model_stats st;
    model_stats(m, &st);
    uint64_t before = st.users;
    cr_assert_gt(model_expire(m, 1000000 + 3000), 150);
    model_stats(m, &st);
    cr_assert_eq(st.users, 100, "%llu of %llu users left",
                 (unsigned long long)st.users, (unsigned long long)before);
    assert_weighted_stats(m, RTOL);
    assert_loss_true(m);
    model_free(m);
}

/* Without robust every weight is 1 and the mean is 1. */
Test(robust, none_weighs_every_user_one)
{
    struct model *m = robust_model(4, 0, 2000, MODEL_ROBUST_NONE);
    stream(m, 100, 80, 4, 2, 3000, 1, 13);
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (!model_user_get(m, u, &uv))
            cr_assert(uv.weight == 1 && uv.weight_raw == 1);
    }
    struct model_robust_summary rs;
    model_robust_summary(m, 0.5, &rs);
    cr_assert_eq(rs.below, 0);
    cr_assert_eq(rs.lowest, 1);
    model_free(m);
}

/* 20 bots clicking 2 400 items at random, as often as 600 users
 * together: the bots the topics leave unfit (q far above the users'
 * median) weigh about 0.35 of the mean, the normal users 1. The weight's
 * limit shows here too: in this small stream (6 segments of light users,
 * k = 6) six of the bots take topics of their own, are fitted and weigh
 * 1, which no bot does on the planted stream of bench/robust.py (heavy
 * and light users, docs/benchmarks.md, section 8). */
Test(robust, unfit_bots_weigh_least)
{
    struct model *m = robust_model(6, 0, 2500, MODEL_ROBUST_L21);
    stream(m, 600, 2400, 6, 20, 30000, 1, 14);
    for (int r = 0; r < 50 && model_refine(m, SIZE_MAX); r++)
        ;
    uint32_t users = 0, users_below1 = 0, bots_low = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (model_user_get(m, u, &uv) || !uv.nprofile)
            continue;
        if (!memcmp(uv.id, "bot-", 4))
            bots_low += uv.weight < 0.5;
        else
            users++, users_below1 += uv.weight_raw < 1;
    }
    cr_assert_gt(users, 500);
    cr_assert_leq(users_below1, users / 100, "%u of %u users weigh under 1",
                  users_below1, users);
    cr_assert_geq(bots_low, 10, "%u bots of 20 under 0.5 of the mean",
                  bots_low);
    struct model_robust_summary rs;
    model_robust_summary(m, 0.5, &rs);
    cr_assert_eq(rs.below, bots_low, "%llu users below 0.5, not the %u bots",
                 (unsigned long long)rs.below, bots_low);
    model_free(m);
}

/* Without bots nearly every user weighs 1: l21 is none there. */
Test(robust, clean_stream_weighs_users_one)
{
    struct model *m = robust_model(6, 0, 2500, MODEL_ROBUST_L21);
    stream(m, 600, 2400, 6, 0, 30000, 1, 14);
    for (int r = 0; r < 50 && model_refine(m, SIZE_MAX); r++)
        ;
    uint32_t users = 0, below1 = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (model_user_get(m, u, &uv) || !uv.nprofile)
            continue;
        users++;
        below1 += uv.weight_raw < 1;
    }
    cr_assert_gt(users, 500);
    cr_assert_leq(below1, users / 100, "%u of %u users weigh under 1", below1,
                  users);
    assert_weighted_stats(m, RTOL);
    model_free(m);
}

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static int buf_write(void *ctx, const void *data, size_t len)
{
    struct buf *b = ctx;
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

static struct buf save(const struct model *m)
{
    struct buf b = {0};
    cr_assert_eq(model_save(m, buf_write, &b), 0);
    return b;
}

Test(robust, state_keeps_the_variant)
{
    struct model *m = robust_model(5, 0, 2000, MODEL_ROBUST_L21);
    stream(m, 150, 100, 5, 3, 6000, 1, 15);
    struct buf s = save(m);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(model_params(b)->robust, MODEL_ROBUST_L21);
    struct buf t = save(b);
    cr_assert(s.n == t.n && !memcmp(s.p, t.p, s.n));
    uint32_t live = 0; /* users in the state s */
    for (uint32_t u = 0; u < model_user_slots(b); u++)
        live += (b->u[u].flags & MODEL_U_LIVE) != 0;
    /* Both go on identically. */
    stream(m, 150, 100, 5, 3, 2000, 1, 16);
    stream(b, 150, 100, 5, 3, 2000, 1, 16);
    struct buf s2 = save(m), t2 = save(b);
    cr_assert(s2.n == t2.n && !memcmp(s2.p, t2.p, s2.n));
    assert_weighted_stats(b, RTOL);
    /* Read as version 8, an l21 state of the weight before the stored
     * codes: refused, not run with weights it does not have. */
    uint32_t v8 = 8;
    memcpy(s.p + 8, &v8, 4);
    uint64_t sum = model__state_checksum(s.p, s.n - 8);
    memcpy(s.p + s.n - 8, &sum, 8);
    cr_assert_null(model_load(s.p, s.n, &err));
    cr_assert_str_eq(err, "robust = l21 state of an earlier weight: refit");
    uint32_t v9 = 9;
    memcpy(s.p + 8, &v9, 4);
    /* A variant the model does not know: robust and loss are followed
     * by the threshold (f64) and a code per live user. */
    uint32_t bad = 2;
    memcpy(s.p + s.n - 8 - live - 8 - 8, &bad, 4);
    sum = model__state_checksum(s.p, s.n - 8);
    memcpy(s.p + s.n - 8, &sum, 8);
    cr_assert_null(model_load(s.p, s.n, &err));
    cr_assert_str_eq(err, "bad model variant");
    /* A weight code beyond the floor's. */
    uint32_t l21 = MODEL_ROBUST_L21;
    memcpy(s.p + s.n - 8 - live - 8 - 8, &l21, 4);
    s.p[s.n - 9] = MODEL_L21_CODE_MAX + 1;
    sum = model__state_checksum(s.p, s.n - 8);
    memcpy(s.p + s.n - 8, &sum, 8);
    cr_assert_null(model_load(s.p, s.n, &err));
    cr_assert_str_eq(err, "bad robust weight");
    free(s.p);
    free(t.p);
    free(s2.p);
    free(t2.p);
    model_free(b);
    model_free(m);
}

/* robust = none writes version 6, as before the variant existed, and
 * l21 version 9; each loads as what it was. */
Test(robust, default_variant_writes_version_6)
{
    struct model *m = robust_model(5, 0, 2000, MODEL_ROBUST_NONE);
    stream(m, 150, 100, 5, 0, 4000, 1, 17);
    struct buf s = save(m);
    uint32_t version;
    memcpy(&version, s.p + 8, 4);
    cr_assert_eq(version, 6);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(model_params(b)->robust, MODEL_ROBUST_NONE);
    model_free(b);
    free(s.p);
    model_free(m);
    m = robust_model(5, 0, 2000, MODEL_ROBUST_L21);
    stream(m, 150, 100, 5, 0, 2000, 1, 17);
    s = save(m);
    memcpy(&version, s.p + 8, 4);
    cr_assert_eq(version, 9);
    free(s.p);
    model_free(m);
}

/* l21 with held-out pairs: version 9 carries both, and the state loads
 * and goes on bit for bit with both. */
Test(robust, state_keeps_holdout_and_variant)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 5;
    p.warmup_events = 1000;
    p.refresh_events = 2000;
    p.robust = MODEL_ROBUST_L21;
    p.holdout = 0.1;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    stream(m, 150, 100, 5, 3, 6000, 1, 21);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_gt(st.holdout_events, 0);
    struct buf s = save(m);
    uint32_t version;
    memcpy(&version, s.p + 8, 4);
    cr_assert_eq(version, 9);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(model_params(b)->robust, MODEL_ROBUST_L21);
    cr_assert_float_eq(model_params(b)->holdout, 0.1, 1e-15);
    struct model_stats bt;
    model_stats(b, &bt);
    cr_assert_eq(bt.holdout_events, st.holdout_events);
    cr_assert_float_eq(bt.holdout_loss, st.holdout_loss,
                       1e-12 * (st.holdout_loss + 1));
    stream(m, 150, 100, 5, 3, 2000, 1, 22);
    stream(b, 150, 100, 5, 3, 2000, 1, 22);
    struct buf s2 = save(m), t2 = save(b);
    cr_assert(s2.n == t2.n && !memcmp(s2.p, t2.p, s2.n));
    assert_weighted_stats(b, RTOL);
    free(s.p);
    free(s2.p);
    free(t2.p);
    model_free(b);
    model_free(m);
}

Test(robust, unknown_value_refused)
{
    struct model_params p;
    model_params_default(&p);
    cr_assert_eq(p.robust, MODEL_ROBUST_NONE);
    p.robust = 2;
    cr_assert_str_eq(model_params_check(&p), "robust must be none or l21");
    cr_assert_null(model_new(&p));
}
