/* test_holdout.c -- held-out pairs: they never reach the fold (checked
 * against a model fed only the other pairs), their score equals a direct
 * computation from the dense W and h, and they survive a save and load. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_impl.h"
#include "nnls.h"
#include "rng.h"
#include "state_buf.h"

#define USERS 300
#define ITEMS 80
#define K     4

static struct model *model_ho(double share, uint64_t salt, int64_t half_life)
{
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.half_life_ms = half_life;
    p.warmup_events = 2000;
    p.refresh_events = 3000;
    p.holdout = share;
    p.holdout_salt = salt;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    return m;
}

/* One event of a planted stream: user u of segment u % K engages with
 * its segment's items, 10% noise. */
struct ev {
    char user[32], item[32];
    size_t ul, il;
    uint32_t u, i;
    double w;
    int64_t ts;
};

static void next_event(uint64_t *s, int64_t *ts, struct ev *e)
{
    uint64_t a = rng_splitmix64(s), b = rng_splitmix64(s);
    e->u = (uint32_t)(a % USERS);
    if ((b >> 40) % 10 == 0)
        e->i = (uint32_t)(b % ITEMS);
    else
        e->i = (e->u % K) * (ITEMS / K) + (uint32_t)(b % (ITEMS / K));
    e->ul = (size_t)snprintf(e->user, sizeof(e->user), "user-%u", e->u);
    e->il = (size_t)snprintf(e->item, sizeof(e->item), "item-%u", e->i);
    e->w = 0.5 + (double)(a >> 59) / 8.0;
    *ts += 1 + (int64_t)(b >> 60);
    e->ts = *ts;
}

static int fold_ev(struct model *m, const struct ev *e)
{
    return model_fold(m, e->user, e->ul, e->item, e->il, e->w, e->ts);
}

/* fold_ev told the event that follows (NULL: none), so that a run of one
 * user's events is solved once (model_fold_next). */
static int fold_ev_next(struct model *m, const struct ev *e,
                        const struct ev *next)
{
    struct model_event a = {e->user, e->ul, e->item, e->il, e->w, e->ts};
    if (!next)
        return model_fold_next(m, &a, NULL);
    struct model_event b = {next->user, next->ul, next->item,
                            next->il,   next->w,  next->ts};
    return model_fold_next(m, &a, &b);
}

Test(holdout, params_refused)
{
    struct model_params p;
    model_params_default(&p);
    cr_assert_eq(p.holdout, 0);
    p.holdout = 1;
    cr_assert_str_eq(model_params_check(&p), "holdout must be in [0, 1)");
    p.holdout = -0.1;
    cr_assert_not_null(model_params_check(&p));
    p.holdout = NAN;
    cr_assert_not_null(model_params_check(&p));
    cr_assert_null(model_new(&p));
    p.holdout = 0.999;
    cr_assert_null(model_params_check(&p));
}

Test(holdout, share_and_salt_choose_the_pairs)
{
    struct model *a = model_ho(0.2, 0, 0), *b = model_ho(0.2, 1, 0),
                 *z = model_ho(0, 0, 0);
    int held = 0, both = 0, again = 0;
    const int n = 20000;
    for (int x = 0; x < n; x++) {
        char u[32], i[32];
        int ul = snprintf(u, sizeof(u), "u%d", x % 997);
        int il = snprintf(i, sizeof(i), "i%d", x / 997);
        int ha = model_holdout_held(a, u, (size_t)ul, i, (size_t)il);
        int hb = model_holdout_held(b, u, (size_t)ul, i, (size_t)il);
        held += ha;
        both += ha && hb;
        again += ha == model_holdout_held(a, u, (size_t)ul, i, (size_t)il);
        cr_assert_not(model_holdout_held(z, u, (size_t)ul, i, (size_t)il));
    }
    /* Binomial(20000, 0.2): sd 57. Another salt is another, independent
     * set: overlap about 0.04 n. */
    cr_assert(abs(held - n / 5) < 400, "held %d", held);
    cr_assert(abs(both - n / 25) < 250, "both %d", both);
    cr_assert_eq(again, n);
    model_free(a);
    model_free(b);
    model_free(z);
}

/* The model with held-out pairs and a model fed only the other pairs
 * are the same model: W, A, B, every h and profile, bit for bit. */
static void check_never_folded(int64_t half_life)
{
    struct model *x = model_ho(0.2, 7, half_life),
                 *y = model_ho(0, 0, half_life);
    uint64_t s = 42, held = 0, total = 30000;
    int64_t ts = 1000;
    for (uint64_t n = 0; n < total; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(x, &e), 0);
        if (model_holdout_held(x, e.user, e.ul, e.item, e.il))
            held++;
        else
            cr_assert_eq(fold_ev(y, &e), 0);
    }
    cr_assert(held > total / 10 && held < total * 3 / 10);
    struct model_stats sx, sy;
    model_stats(x, &sx);
    model_stats(y, &sy);
    cr_assert_eq(sx.events, total);
    cr_assert_eq(sx.holdout_events, held);
    cr_assert_eq(sy.events + held, total);
    cr_assert_eq(sx.refreshes, sy.refreshes);
    cr_assert(sx.holdout_pairs > 0 && sx.holdout_loss > 0);
    cr_assert_eq(sy.holdout_pairs, 0);

    const uint32_t M = model_item_slots(x), U = model_user_slots(x);
    cr_assert_eq(M, model_item_slots(y));
    cr_assert_eq(U, model_user_slots(y));
    cr_assert_eq(memcmp(model_W(x), model_W(y), (size_t)M * K * sizeof(float)),
                 0);
    double Ax[K * K], Ay[K * K];
    model_A(x, Ax);
    model_A(y, Ay);
    cr_assert_eq(memcmp(Ax, Ay, sizeof(Ax)), 0);
    double *Bx = calloc((size_t)M * K, sizeof(double));
    double *By = calloc((size_t)M * K, sizeof(double));
    model_B(x, Bx);
    model_B(y, By);
    cr_assert_eq(memcmp(Bx, By, (size_t)M * K * sizeof(double)), 0);
    free(Bx);
    free(By);
    for (uint32_t u = 0; u < U; u++) {
        struct model_user_view vx, vy;
        cr_assert_eq(model_user_get(x, u, &vx), model_user_get(y, u, &vy));
        cr_assert_eq(vx.id_len, vy.id_len);
        cr_assert_eq(memcmp(vx.id, vy.id, vx.id_len), 0);
        cr_assert_eq(memcmp(vx.h, vy.h, K * sizeof(float)), 0);
        const uint32_t *ix, *iy;
        const float *fx, *fy;
        uint32_t nx, ny;
        model_user_profile(x, u, &ix, &fx, &nx);
        model_user_profile(y, u, &iy, &fy, &ny);
        cr_assert_eq(nx, ny);
        for (uint32_t q = 0; q < nx; q++) {
            size_t len;
            const char *it = model_item_id(x, ix[q], &len);
            /* No held-out pair in any profile. */
            cr_assert_not(model_holdout_held(x, vx.id, vx.id_len, it, len));
            cr_assert_eq(ix[q], iy[q]);
            cr_assert_eq(memcmp(&fx[q], &fy[q], sizeof(float)), 0);
        }
    }
    model_free(x);
    model_free(y);
}

Test(holdout, held_out_pairs_never_reach_the_fold)
{
    check_never_folded(0);
}

Test(holdout, held_out_pairs_never_reach_the_fold_with_decay)
{
    check_never_folded(5000);
}

/* The score from scratch: the held-out matrix summed (and decayed to the
 * latest time) by the test, the prediction from the dense W and h. */
static void check_score(int64_t half_life)
{
    struct model *m = model_ho(0.25, 3, half_life);
    double *v = calloc((size_t)USERS * ITEMS, sizeof(double));
    int64_t *vt = calloc((size_t)USERS * ITEMS, sizeof(int64_t));
    uint64_t s = 9;
    int64_t ts = 5000;
    for (int n = 0; n < 20000; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(m, &e), 0);
        if (model_holdout_held(m, e.user, e.ul, e.item, e.il)) {
            size_t c = (size_t)e.u * ITEMS + e.i;
            if (half_life > 0 && vt[c])
                v[c] *= exp2(-(double)(e.ts - vt[c]) / (double)half_life);
            v[c] += e.w;
            vt[c] = e.ts;
        }
    }
    for (int r = 0; r < 3; r++)
        model_refine(m, SIZE_MAX); /* a score for a W after the stream */
    /* Item numbers to the model's item indices. */
    int64_t idx[ITEMS];
    for (uint32_t i = 0; i < ITEMS; i++)
        idx[i] = -1;
    for (uint32_t i = 0; i < model_item_slots(m); i++) {
        size_t len;
        const char *id = model_item_id(m, i, &len);
        char num[32];
        memcpy(num, id + 5, len - 5); /* ids are not NUL-terminated */
        num[len - 5] = 0;
        idx[atoi(num)] = i;
    }
    const float *W = model_W(m);
    double loss = 0, norm = 0;
    uint64_t pairs = 0;
    for (uint32_t u = 0; u < USERS; u++) {
        char us[32];
        int ul = snprintf(us, sizeof(us), "user-%u", u);
        int64_t mu = model_user_find(m, us, (size_t)ul);
        struct model_user_view view;
        if (mu >= 0)
            cr_assert_eq(model_user_get(m, (uint32_t)mu, &view), 0);
        for (uint32_t i = 0; i < ITEMS; i++) {
            size_t c = (size_t)u * ITEMS + i;
            if (!vt[c])
                continue;
            double val = v[c], p = 0;
            if (half_life > 0)
                val *= exp2(-(double)(ts - vt[c]) / (double)half_life);
            if (mu >= 0 && idx[i] >= 0) {
                for (uint32_t j = 0; j < K; j++)
                    p += (double)W[idx[i] * K + j] * view.h[j];
                if (half_life > 0)
                    p *= exp2(-(double)(ts - view.ts) / (double)half_life);
            }
            loss += (val - p) * (val - p);
            norm += val * val;
            pairs++;
        }
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.holdout_pairs, pairs);
    cr_assert(pairs > 100);
    cr_assert_float_eq(st.holdout_norm, norm, 1e-9 * norm);
    cr_assert_float_eq(st.holdout_loss, loss / norm, 1e-5 * loss / norm,
                       "model %.9g direct %.9g", st.holdout_loss, loss / norm);
    /* A planted stream is predictable: well under the null prediction's 1. */
    cr_assert(st.holdout_loss < 0.9, "holdout_loss %g", st.holdout_loss);
    free(v);
    free(vt);
    model_free(m);
}

Test(holdout, score_equals_direct_computation)
{
    check_score(0);
}

Test(holdout, score_equals_direct_computation_with_decay)
{
    check_score(20000);
}

Test(holdout, survives_save_and_load)
{
    struct model *m = model_ho(0.2, 5, 0);
    uint64_t s = 1;
    int64_t ts = 1;
    for (int n = 0; n < 8000; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(m, &e), 0);
    }
    struct buf a = save(m);
    uint32_t version;
    memcpy(&version, a.p + 8, 4);
    cr_assert_eq(version, 7);
    const char *err = NULL;
    struct model *l = model_load(a.p, a.n, &err);
    cr_assert_not_null(l, "%s", err);
    cr_assert_eq(model_params(l)->holdout, 0.2);
    cr_assert_eq(model_params(l)->holdout_salt, 5);
    struct buf b = save(l);
    cr_assert(bufs_equal(&a, &b));
    struct model_stats s1, s2;
    model_stats(m, &s1);
    model_stats(l, &s2);
    cr_assert_eq(s1.holdout_loss, s2.holdout_loss);
    cr_assert_eq(s1.holdout_events, s2.holdout_events);
    cr_assert_eq(s1.events, s2.events);
    /* Both go on alike: the loaded model holds out the same pairs. */
    for (int n = 0; n < 2000; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(m, &e), 0);
        cr_assert_eq(fold_ev(l, &e), 0);
    }
    free(a.p);
    free(b.p);
    a = save(m);
    b = save(l);
    cr_assert(bufs_equal(&a, &b));

    /* A bad share or a cut section is refused. */
    double share = 0.2;
    uint8_t *at = memmem(a.p, a.n, &share, sizeof(share));
    cr_assert_not_null(at);
    double bad[] = {0, 1, -0.5, NAN};
    for (size_t q = 0; q < sizeof(bad) / sizeof(bad[0]); q++) {
        memcpy(at, &bad[q], sizeof(double));
        uint64_t sum = model__state_checksum(a.p, a.n - 8);
        memcpy(a.p + a.n - 8, &sum, 8);
        cr_assert_null(model_load(a.p, a.n, &err));
        cr_assert_str_eq(err, "bad held-out share");
    }
    memcpy(at, &share, sizeof(double));
    size_t cut = a.n - 8 - 10;
    uint64_t sum = model__state_checksum(a.p, cut);
    memcpy(a.p + cut, &sum, 8);
    cr_assert_null(model_load(a.p, cut + 8, &err));
    cr_assert_str_eq(err, "bad held-out entries"); /* fewer than it counts */
    free(a.p);
    free(b.p);
    model_free(m);
    model_free(l);
}

/* Without held-out pairs the state is version 6, as before version 7. */
Test(holdout, zero_share_writes_the_plain_state)
{
    struct model *m = model_ho(0, 0, 0);
    uint64_t s = 1;
    int64_t ts = 1;
    for (int n = 0; n < 3000; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(m, &e), 0);
    }
    struct buf a = save(m);
    uint32_t version;
    memcpy(&version, a.p + 8, 4);
    cr_assert_eq(version, 6);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.holdout_events, 0);
    cr_assert_eq(st.holdout_loss, 0);
    free(a.p);
    model_free(m);
}

/* The score is kept incrementally (holdout.c): after any history of
 * folds, refreshes, refinements, restarts, expiry (users and items
 * forgotten, their slots reused) and forgotten users, it must equal the
 * score computed from scratch. The reference below is the computation
 * holdout_score made at every call before the cache: the held-out
 * matrix kept by the test itself, every id looked up, one dot product per
 * entry against the model's W and H. */
#define SU 400
#define SI 120

struct heldmat {
    double *v;  /* SU x SI, valued at t */
    int64_t *t; /* 0: no entry */
    int64_t tmax;
};

static void heldmat_add(struct heldmat *hm, const struct ev *e, int64_t hl)
{
    size_t c = (size_t)e->u * SI + e->i;
    double w = e->w;
    if (hm->t[c] && hl > 0 && e->ts > hm->t[c])
        hm->v[c] *= exp2(-(double)(e->ts - hm->t[c]) / (double)hl);
    else if (hm->t[c] && hl > 0 && e->ts < hm->t[c])
        w *= exp2(-(double)(hm->t[c] - e->ts) / (double)hl);
    if (e->ts > hm->t[c])
        hm->t[c] = e->ts;
    hm->v[c] += w;
    if (e->ts > hm->tmax)
        hm->tmax = e->ts;
}

static double ref_decay(int64_t dt, int64_t hl)
{
    return hl > 0 && dt > 0 ? exp2(-(double)dt / (double)hl) : 1.0;
}

static void ref_score(const struct model *m, const struct heldmat *hm,
                      struct holdout_score *r)
{
    const int64_t hl = m->p.half_life_ms, ttl = m->p.ttl_ms;
    const uint32_t k = m->k;
    int64_t now = m->has_time ? m->T : 0;
    if (hm->tmax > now)
        now = hm->tmax;
    int64_t mi[SI];
    for (uint32_t i = 0; i < SI; i++) {
        char s[32];
        int l = snprintf(s, sizeof(s), "item-%u", i);
        mi[i] = ids_find(m->iids, s, (size_t)l);
    }
    memset(r, 0, sizeof(*r));
    for (uint32_t u = 0; u < SU; u++) {
        char s[32];
        int l = snprintf(s, sizeof(s), "user-%u", u);
        int64_t mu = ids_find(m->uids, s, (size_t)l);
        for (uint32_t i = 0; i < SI; i++) {
            size_t c = (size_t)u * SI + i;
            if (!hm->t[c] || (ttl > 0 && hm->t[c] < now - ttl))
                continue;
            double v = hm->v[c] * ref_decay(now - hm->t[c], hl), p = 0;
            if (mu >= 0 && mi[i] >= 0 && (m->u[mu].flags & MODEL_U_LIVE)) {
                for (uint32_t j = 0; j < k; j++)
                    p += (double)m->W[mi[i] * k + j] *
                         ((double)m->H[mu * k + j] * m->hs[j]);
                p *= ref_decay(now - m->u[mu].t, hl);
            }
            r->loss += (v - p) * (v - p);
            r->norm += v * v;
            r->pairs++;
        }
    }
}

/* The model's score against the reference (1e-9 relative), and a second
 * call, with nothing changed, the same bits. */
static void check_ref(struct model *m, const struct heldmat *hm)
{
    struct model_stats st, again;
    struct holdout_score r;
    model_stats(m, &st);
    ref_score(m, hm, &r);
    double rl = r.norm > 0 ? r.loss / r.norm : 0;
    cr_assert_eq(st.holdout_pairs, r.pairs);
    cr_assert(fabs(st.holdout_norm - r.norm) <= 1e-9 * r.norm,
              "norm %.17g reference %.17g", st.holdout_norm, r.norm);
    cr_assert(fabs(st.holdout_loss - rl) <= 1e-9 * rl,
              "holdout_loss %.17g reference %.17g", st.holdout_loss, rl);
    model_stats(m, &again);
    cr_assert_eq(again.holdout_loss, st.holdout_loss);
    cr_assert_eq(again.holdout_norm, st.holdout_norm);
}

/* A drifting stream: the active users and items move with the phase, so
 * that with a ttl users and items are forgotten and their slots reused;
 * each phase ends with a jump of jump ms. */
static void drift_event(uint64_t *s, int64_t *ts, uint32_t phase,
                        struct ev *e)
{
    uint64_t a = rng_splitmix64(s), b = rng_splitmix64(s);
    e->u = (uint32_t)((phase * 37 + a % 150) % SU);
    if ((b >> 40) % 10 == 0)
        e->i = (uint32_t)(b % SI);
    else
        e->i = (e->u % K) * (SI / K) + (uint32_t)(b % (SI / K));
    e->i = (e->i + phase * 7) % SI;
    e->ul = (size_t)snprintf(e->user, sizeof(e->user), "user-%u", e->u);
    e->il = (size_t)snprintf(e->item, sizeof(e->item), "item-%u", e->i);
    e->w = 0.5 + (double)(a >> 59) / 8.0;
    *ts += 1 + (int64_t)(b >> 60);
    e->ts = *ts;
}

static void check_incremental(int64_t half_life, int64_t ttl, uint64_t seed)
{
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.half_life_ms = half_life;
    p.ttl_ms = ttl;
    p.warmup_events = 1500;
    p.refresh_events = 2500;
    p.holdout = 0.25;
    p.holdout_salt = seed;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    struct heldmat hm = {calloc((size_t)SU * SI, sizeof(double)),
                         calloc((size_t)SU * SI, sizeof(int64_t)), 0};
    uint64_t s = seed * 1000 + 17, r = seed + 99;
    int64_t ts = 1000;
    size_t gone = 0, forgot = 0, checks = 0;
    int restarted = 0;
    const int n = 16000, phase_len = 2000;
    /* One event read ahead, and a third of the events repeat the user of
     * the one before: runs of a user's events, solved once a run. */
    struct ev e, next;
    drift_event(&s, &ts, 0, &next);
    for (int x = 0; x < n; x++) {
        uint32_t phase = (uint32_t)((x + 1) / phase_len);
        e = next;
        if ((x + 1) % phase_len == 0)
            ts += ttl > 0 ? ttl / 2 : 7000;
        drift_event(&s, &ts, phase, &next);
        if (rng_splitmix64(&s) % 3 == 0) {
            next.u = e.u;
            memcpy(next.user, e.user, sizeof(e.user));
            next.ul = e.ul;
        }
        cr_assert_eq(fold_ev_next(m, &e, x + 1 < n ? &next : NULL), 0);
        if (model_holdout_held(m, e.user, e.ul, e.item, e.il))
            heldmat_add(&hm, &e, half_life);
        uint64_t d = rng_splitmix64(&r);
        if (d % 40 == 0) {
            check_ref(m, &hm);
            checks++;
        }
        if (x % 500 == 499)
            model_refine(m, 150);
        if (x % 3000 == 2999)
            model_refresh(m);
        if (ttl > 0 && x % 700 == 699)
            gone += model_expire(m, ts);
        if (d % 997 == 1) {
            /* A user handed over (or forgotten): its slot goes free. */
            uint32_t slots = model_user_slots(m);
            uint32_t u = (uint32_t)((d >> 20) % (slots ? slots : 1));
            forgot += model_user_forget(m, u) == 0;
        }
        if (x == n / 2) {
            /* A restart trial run to its end, then the refinement. */
            restarted = model_restart_try(m) == 0;
            for (int q = 0; q < 400 && m->rs; q++)
                model_refine(m, 1u << 30);
            check_ref(m, &hm);
        }
        if (x % 5000 == 4999) {
            /* The state's score is the same bit for bit, from a fresh
             * cache after a load as from the cache kept since. */
            struct model_stats a, b;
            model_stats(m, &a);
            struct buf buf = save(m);
            const char *err = NULL;
            struct model *l = model_load(buf.p, buf.n, &err);
            cr_assert_not_null(l, "%s", err);
            model_stats(l, &b);
            cr_assert_eq(a.holdout_loss, b.holdout_loss, "%.17g vs %.17g",
                         a.holdout_loss, b.holdout_loss);
            cr_assert_eq(a.holdout_norm, b.holdout_norm);
            cr_assert_eq(a.holdout_pairs, b.holdout_pairs);
            model_free(l);
            free(buf.p);
        }
    }
    for (int q = 0; q < 20; q++)
        model_refine(m, SIZE_MAX);
    check_ref(m, &hm);
    if (ttl > 0)
        check_ref(m, &hm), model_expire(m, ts + ttl / 2), check_ref(m, &hm);
    cr_assert(checks > 300);
    cr_assert(forgot > 0, "no user forgotten");
    cr_assert(restarted, "no restart trial");
    if (ttl > 0)
        cr_assert(gone > 100, "expiry forgot %zu", gone);
    free(hm.v);
    free(hm.t);
    model_free(m);
}

Test(holdout, incremental_score_equals_scratch)
{
    check_incremental(0, 0, 1);
}

Test(holdout, incremental_score_equals_scratch_with_decay)
{
    check_incremental(4000, 0, 2);
}

Test(holdout, incremental_score_equals_scratch_with_ttl)
{
    check_incremental(0, 30000, 3);
}

Test(holdout, incremental_score_equals_scratch_with_decay_and_ttl)
{
    check_incremental(6000, 30000, 4);
}

/* A held-out item the model forgets (ttl) while its held-out entries stay
 * recent, and whose slot a new item then takes: the held-out item must
 * predict 0, not through the new item's row. */
static void fold_pair(struct model *m, struct heldmat *hm, uint32_t u,
                      uint32_t i, int64_t ts)
{
    struct ev e;
    e.u = u;
    e.i = i;
    e.ul = (size_t)snprintf(e.user, sizeof(e.user), "user-%u", u);
    e.il = (size_t)snprintf(e.item, sizeof(e.item), "item-%u", i);
    e.w = 1;
    e.ts = ts;
    cr_assert_eq(fold_ev(m, &e), 0);
    if (model_holdout_held(m, e.user, e.ul, e.item, e.il))
        heldmat_add(hm, &e, 0);
}

static int pair_held(const struct model *m, uint32_t u, uint32_t i)
{
    char us[32], is[32];
    int ul = snprintf(us, sizeof(us), "user-%u", u);
    int il = snprintf(is, sizeof(is), "item-%u", i);
    return model_holdout_held(m, us, (size_t)ul, is, (size_t)il);
}

Test(holdout, forgotten_item_slot_reused)
{
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.ttl_ms = 10000;
    p.holdout = 0.5;
    p.holdout_salt = 21;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    struct heldmat hm = {calloc((size_t)SU * SI, sizeof(double)),
                         calloc((size_t)SU * SI, sizeof(int64_t)), 0};
    /* Users whose pair with item 0 is held out (a) and not (b); items
     * 1..20 keep the users known, on their pairs not held out. */
    uint32_t a[8], b[8], na = 0, nb = 0;
    for (uint32_t u = 0; u < SU && (na < 8 || nb < 8); u++) {
        if (pair_held(m, u, 0) && na < 8)
            a[na++] = u;
        else if (!pair_held(m, u, 0) && nb < 8)
            b[nb++] = u;
    }
    cr_assert(na == 8 && nb == 8);
    int64_t ts = 1000;
    for (int round = 0; round < 3; round++)
        for (uint32_t q = 0; q < 8; q++) {
            fold_pair(m, &hm, b[q], 0, ts++);
            fold_pair(m, &hm, a[q], 0, ts++);
            for (uint32_t i = 1; i <= 20; i++)
                if (!pair_held(m, a[q], i))
                    fold_pair(m, &hm, a[q], i, ts++);
        }
    size_t len0 = 6;
    int64_t slot0 = ids_find(m->iids, "item-0", len0);
    cr_assert(slot0 >= 0);
    check_ref(m, &hm);
    /* Past the ttl: item 0 only in held-out pairs, the rest refreshed. */
    ts += 20000;
    for (uint32_t q = 0; q < 8; q++) {
        fold_pair(m, &hm, a[q], 0, ts++);
        for (uint32_t i = 1; i <= 20; i++)
            if (!pair_held(m, a[q], i))
                fold_pair(m, &hm, a[q], i, ts++);
    }
    check_ref(m, &hm);
    model_expire(m, ts);
    cr_assert(ids_find(m->iids, "item-0", len0) < 0);
    check_ref(m, &hm);
    /* A new item takes the freed slot. */
    uint32_t q = 0;
    while (pair_held(m, a[q], 100))
        q++;
    fold_pair(m, &hm, a[q], 100, ts++);
    cr_assert_eq(ids_find(m->iids, "item-100", 8), slot0);
    check_ref(m, &hm);
    free(hm.v);
    free(hm.t);
    model_free(m);
}

/* Scoring never changes the model: a model scored every few events and
 * one never scored save the same state, with and without held-out
 * pairs (a share of 0 keeps no cache at all). */
static void check_score_is_read_only(double share, int64_t half_life)
{
    struct model *a = model_ho(share, 11, half_life),
                 *b = model_ho(share, 11, half_life);
    uint64_t s = 5;
    int64_t ts = 1000;
    for (int x = 0; x < 9000; x++) {
        struct ev e;
        next_event(&s, &ts, &e);
        cr_assert_eq(fold_ev(a, &e), 0);
        cr_assert_eq(fold_ev(b, &e), 0);
        if (x % 37 == 0) {
            struct model_stats st;
            model_stats(a, &st);
        }
        if (x % 1000 == 999) {
            model_refine(a, 100);
            model_refine(b, 100);
        }
    }
    struct buf x = save(a), y = save(b);
    cr_assert(bufs_equal(&x, &y));
    free(x.p);
    free(y.p);
    model_free(a);
    model_free(b);
}

Test(holdout, scoring_leaves_the_model_alone)
{
    check_score_is_read_only(0.2, 0);
    check_score_is_read_only(0.2, 5000);
    check_score_is_read_only(0, 0);
}

/* Bi-cross-validation. A dense reference for one held-out user: the NNLS
 * by enumerating the supports of h (k = 4: 16 unconstrained least
 * squares on W_S restricted to the support, keeping the feasible one of
 * least objective), then the error over every item of T, zeros included,
 * from the dense v. Independent of nnls.c and of the Gram shortcut. */
#define BM 40
#define BK 4

static int solve_small(int n, double a[BK][BK + 1], double *x)
{
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r][c]) > fabs(a[p][c]))
                p = r;
        if (fabs(a[p][c]) < 1e-12)
            return -1;
        for (int j = 0; j <= n; j++) {
            double t = a[c][j];
            a[c][j] = a[p][j];
            a[p][j] = t;
        }
        for (int r = 0; r < n; r++)
            if (r != c) {
                double f = a[r][c] / a[c][c];
                for (int j = c; j <= n; j++)
                    a[r][j] -= f * a[c][j];
            }
    }
    for (int c = 0; c < n; c++)
        x[c] = a[c][n] / a[c][c];
    return 0;
}

static double dense_bcv(const float *W, const double *v, const uint8_t *T,
                        double *vnorm)
{
    double best = INFINITY, h[BK] = {0};
    for (int sup = 0; sup < 1 << BK; sup++) {
        int idx[BK], n = 0;
        for (int j = 0; j < BK; j++)
            if (sup >> j & 1)
                idx[n++] = j;
        double a[BK][BK + 1] = {{0}}, x[BK] = {0}, hh[BK] = {0};
        for (int i = 0; i < BM; i++) {
            if (T[i])
                continue;
            for (int r = 0; r < n; r++) {
                for (int c = 0; c < n; c++)
                    a[r][c] += (double)W[i * BK + idx[r]] * W[i * BK + idx[c]];
                a[r][n] += (double)W[i * BK + idx[r]] * v[i];
            }
        }
        if (n && solve_small(n, a, x))
            continue;
        int ok = 1;
        for (int r = 0; r < n; r++) {
            ok &= x[r] >= 0;
            hh[idx[r]] = x[r];
        }
        if (!ok)
            continue;
        double obj = 0;
        for (int i = 0; i < BM; i++) {
            if (T[i])
                continue;
            double p = 0;
            for (int j = 0; j < BK; j++)
                p += (double)W[i * BK + j] * hh[j];
            obj += (v[i] - p) * (v[i] - p);
        }
        if (obj < best) {
            best = obj;
            memcpy(h, hh, sizeof(h));
        }
    }
    double err = 0;
    *vnorm = 0;
    for (int i = 0; i < BM; i++) {
        if (!T[i])
            continue;
        double p = 0;
        for (int j = 0; j < BK; j++)
            p += (double)W[i * BK + j] * h[j];
        err += (v[i] - p) * (v[i] - p);
        *vnorm += v[i] * v[i];
    }
    return err;
}

Test(holdout, bcv_user_equals_dense_computation)
{
    uint64_t s = 42;
    for (int trial = 0; trial < 50; trial++) {
        float W[BM * BK];
        double v[BM], GS[BK * BK], GT[BK * BK], scratch[4 * BK];
        uint8_t T[BM], sc[BM + 2];
        int64_t row[BM + 2];
        double val[BM + 2];
        uint32_t n = 0;
        for (int i = 0; i < BM * BK; i++) /* sparse-ish, non-negative */
            W[i] = rng_splitmix64(&s) % 3
                       ? 0.0f
                       : (float)(rng_splitmix64(&s) >> 40) / 0x1p24f;
        for (int i = 0; i < BM; i++) {
            T[i] = rng_splitmix64(&s) & 1;
            v[i] = rng_splitmix64(&s) % 4
                       ? 0
                       : 1 + (double)(rng_splitmix64(&s) % 5);
            if (v[i] > 0) {
                row[n] = i;
                sc[n] = T[i];
                val[n++] = v[i];
            }
        }
        /* Items W has no row for: one in S (no say in h), one in T (all
         * error). */
        row[n] = -1;
        sc[n] = 0;
        val[n++] = 7;
        row[n] = -1;
        sc[n] = 1;
        val[n++] = 3;
        holdout_bcv_grams(BK, W, BM, T, GS, GT);
        double norm, dnorm;
        double got = holdout_bcv_user(BK, W, GS, GT, row, sc, val, n, 0, 0,
                                      10000, 1e-14, scratch, &norm);
        double want = dense_bcv(W, v, T, &dnorm) + 9;
        dnorm += 9;
        cr_assert_float_eq(norm, dnorm, 1e-12 * dnorm);
        cr_assert_float_eq(got, want, 1e-6 * (want + 1),
                           "trial %d: %.12g %.12g", trial, got, want);
    }
}

Test(holdout, bcv_halves_and_users_follow_the_hash)
{
    uint32_t held = 0, scored = 0, moved = 0;
    for (int i = 0; i < 20000; i++) {
        char id[32];
        size_t n = (size_t)snprintf(id, sizeof(id), "id-%d", i);
        held += (uint32_t)holdout_bcv_user_held(0.2, 1, id, n);
        scored += (uint32_t)holdout_bcv_item_scored(1, id, n);
        moved += holdout_bcv_item_scored(1, id, n) !=
                 holdout_bcv_item_scored(2, id, n);
        cr_assert_eq(holdout_bcv_user_held(0.2, 1, id, n),
                     holdout_bcv_user_held(0.2, 1, id, n));
    }
    cr_assert(held > 3700 && held < 4300, "held %u of 20000", held);
    cr_assert(scored > 9600 && scored < 10400, "scored %u", scored);
    /* Another salt splits the items another way. */
    cr_assert(moved > 9600 && moved < 10400, "moved %u", moved);
}

Test(holdout, bcv_add_refuses_bad_events)
{
    struct model_bcv *b = model_bcv_new(0.2, 0);
    char longid[MODEL_ID_MAX + 1];
    memset(longid, 'x', sizeof(longid));
    cr_assert_not_null(b);
    cr_assert_eq(model_bcv_add(b, "", 0, "i", 1, 1, 1, 0), -EINVAL);
    cr_assert_eq(model_bcv_add(b, "u", 1, NULL, 1, 1, 1, 0), -EINVAL);
    cr_assert_eq(model_bcv_add(b, "u", 1, "i", 1, -1, 1, 0), -EINVAL);
    cr_assert_eq(model_bcv_add(b, "u", 1, "i", 1, NAN, 1, 0), -EINVAL);
    cr_assert_eq(model_bcv_add(b, "u", 1, "i", 1, INFINITY, 1, 0), -EINVAL);
    cr_assert_eq(model_bcv_add(b, longid, sizeof(longid), "i", 1, 1, 1, 0),
                 -ENAMETOOLONG);
    cr_assert_eq(model_bcv_add(b, "u", 1, "i", 1, 1, -1, 0), -ERANGE);
    cr_assert_eq(model_bcv_add(b, "u", 1, "i", 1, 2e12, 1, 0), -ERANGE);
    /* Nothing was added: an empty score. */
    struct model *m = model_ho(0, 0, 0);
    struct model_bcv_score bs;
    cr_assert_eq(model_bcv_score(b, m, &bs), 0);
    cr_assert(bs.users == 0 && bs.norm == 0 && bs.loss == 0);
    model_free(m);
    model_bcv_free(b);
}

/* The whole path: the training users folded, the held-out users added
 * (never reaching the model), and model_bcv_score equal to the same
 * computation from the dense held-out matrix, the model's W and both
 * halves in turn. */
Test(holdout, bcv_score_equals_direct_computation)
{
    struct model *m = model_ho(0, 0, 0);
    struct model_bcv *b = model_bcv_new(0.25, 5);
    double *v = calloc((size_t)USERS * ITEMS, sizeof(double));
    uint8_t *hu = calloc(USERS, 1);
    uint64_t s = 11;
    int64_t ts = 5000;
    cr_assert(m && b && v && hu);
    for (int n = 0; n < 20000; n++) {
        struct ev e;
        next_event(&s, &ts, &e);
        if (model_bcv_user_held(b, e.user, e.ul)) {
            cr_assert_eq(
                model_bcv_add(b, e.user, e.ul, e.item, e.il, e.w, e.ts, 0), 0);
            v[(size_t)e.u * ITEMS + e.i] += e.w;
            hu[e.u] = 1;
        } else {
            cr_assert_eq(fold_ev(m, &e), 0);
        }
    }
    for (int r = 0; r < 3; r++)
        model_refine(m, SIZE_MAX);
    const float *W = model_W(m);
    const uint32_t M = model_item_slots(m);
    uint8_t *T = calloc(M, 1);
    for (uint32_t i = 0; i < M; i++) {
        size_t len;
        const char *id = model_item_id(m, i, &len);
        T[i] = (uint8_t)holdout_bcv_item_scored(5, id, len);
    }
    double G[2][K * K] = {{0}};
    for (uint32_t i = 0; i < M; i++)
        for (int a = 0; a < K; a++)
            for (int c = 0; c < K; c++)
                G[T[i]][a * K + c] += (double)W[i * K + a] * W[i * K + c];
    double loss = 0, norm = 0;
    uint64_t users = 0;
    for (uint32_t u = 0; u < USERS; u++) {
        char us[32];
        int ul = snprintf(us, sizeof(us), "user-%u", u);
        if (!hu[u]) {
            cr_assert_eq(model_bcv_user_held(b, us, (size_t)ul), 0);
            continue;
        }
        cr_assert_lt(model_user_find(m, us, (size_t)ul), 0);
        users++;
        for (int side = 0; side < 2; side++) { /* fit on !side, score side */
            double bf[K] = {0}, bs[K] = {0}, h[K] = {0}, gh[K];
            for (uint32_t i = 0; i < M; i++) {
                size_t len;
                const char *id = model_item_id(m, i, &len);
                char num[32];
                memcpy(num, id + 5, len - 5);
                num[len - 5] = 0;
                double x = v[(size_t)u * ITEMS + (uint32_t)atoi(num)];
                for (int j = 0; j < K; j++)
                    (T[i] == side ? bs : bf)[j] += x * W[i * K + j];
            }
            nnls_solve(K, G[!side], bf, 0, 0, 500, model_params(m)->nnls_tol, h,
                       gh);
            /* ||v_side - W_side h||^2 over every item of the side. */
            double hgh = 0, hb = 0, vv = 0;
            for (int a = 0; a < K; a++) {
                hb += h[a] * bs[a];
                for (int c = 0; c < K; c++)
                    hgh += h[a] * G[side][a * K + c] * h[c];
            }
            for (uint32_t i = 0; i < ITEMS; i++) {
                char is[32];
                int il = snprintf(is, sizeof(is), "item-%u", i);
                double x = v[(size_t)u * ITEMS + i];
                if (holdout_bcv_item_scored(5, is, (size_t)il) == side)
                    vv += x * x;
            }
            loss += vv - 2 * hb + hgh;
            norm += vv;
        }
    }
    struct model_bcv_score bs;
    cr_assert_eq(model_bcv_score(b, m, &bs), 0);
    cr_assert_eq(bs.users, users);
    cr_assert(users > 40, "%lu held-out users", (unsigned long)users);
    cr_assert_float_eq(bs.norm, norm, 1e-9 * norm);
    cr_assert_float_eq(bs.loss, loss, 1e-6 * loss, "score %.9g direct %.9g",
                       bs.loss, loss);
    /* A planted stream at its rank predicts the other half well. */
    cr_assert(bs.loss / bs.norm < 0.5, "bcv error %g", bs.loss / bs.norm);
    free(T);
    free(v);
    free(hu);
    model_bcv_free(b);
    model_free(m);
}
