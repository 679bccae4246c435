/* test_model.c -- the online NMF model: recovery of planted segments,
 * exactness of the statistics and the loss, decay, eviction, expiry,
 * refused input, determinism and the saved state. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "match.h"
#include "model_impl.h"
#include "rng.h"
#include "state_buf.h"

/* ---- helpers ---------------------------------------------------------- */

struct trng {
    uint64_t s;
};

static uint64_t trng_next(struct trng *r)
{
    return rng_splitmix64(&r->s);
}

static double trng_unif(struct trng *r)
{
    return (double)(trng_next(r) >> 11) * 0x1.0p-53;
}

static uint32_t trng_below(struct trng *r, uint32_t n)
{
    return (uint32_t)(trng_unif(r) * n);
}

static int fold(struct model *m, uint32_t u, uint32_t i, double w, int64_t ts)
{
    char us[32], is[32];
    int ul = snprintf(us, sizeof(us), "user-%u", u);
    int il = snprintf(is, sizeof(is), "item-%u", i);
    return model_fold(m, us, (size_t)ul, is, (size_t)il, w, ts);
}

/* A planted stream: K segments, each with its own bundle of items, users
 * of segment u % K, Zipf(1) user activity, a fraction noise of events on
 * random items. */
struct planted {
    uint32_t users, items, K;
    double noise;
    double *cdf;
    struct trng r;
};

static void planted_init(struct planted *p, uint32_t users, uint32_t items,
                         uint32_t K, double noise, uint64_t seed)
{
    p->users = users;
    p->items = items;
    p->K = K;
    p->noise = noise;
    p->r.s = seed;
    p->cdf = malloc(users * sizeof(double));
    double s = 0;
    for (uint32_t u = 0; u < users; u++)
        p->cdf[u] = (s += 1.0 / (u + 1));
    for (uint32_t u = 0; u < users; u++)
        p->cdf[u] /= s;
}

static void planted_event(struct planted *p, uint32_t *u, uint32_t *i)
{
    double x = trng_unif(&p->r);
    uint32_t lo = 0, hi = p->users - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (p->cdf[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* Scatter ranks over ids so segments are not ordered by activity. */
    *u = (uint32_t)((lo * 2654435761u) % p->users);
    uint32_t per = p->items / p->K;
    if (trng_unif(&p->r) < p->noise)
        *i = trng_below(&p->r, p->items);
    else
        *i = (*u % p->K) * per + trng_below(&p->r, per);
}

static void planted_free(struct planted *p)
{
    free(p->cdf);
}

static struct model *model_with(uint32_t k, int64_t half_life, uint64_t warmup,
                                uint64_t refresh)
{
    struct model_params p;
    model_params_default(&p);
    p.k = k;
    p.half_life_ms = half_life;
    p.warmup_events = warmup;
    p.refresh_events = refresh;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    return m;
}

static void refine_converge(struct model *m, int max_rounds)
{
    for (int r = 0; r < max_rounds; r++) {
        struct model_stats st;
        model_stats(m, &st);
        uint64_t f0 = st.refreshes;
        size_t n = model_refine(m, SIZE_MAX);
        model_stats(m, &st);
        if (!n && st.refreshes == f0)
            return;
    }
}

/* The number in an id "user-N" / "item-N" (ids are not NUL-terminated). */
static uint32_t id_num(const char *id, size_t len)
{
    uint32_t x = 0;
    for (size_t i = 5; i < len; i++)
        x = x * 10 + (uint32_t)(id[i] - '0');
    return x;
}

static double user_weight(const struct model *m, int64_t ts)
{
    struct model_stats st;
    model_stats(m, &st);
    int64_t hl = model_params(m)->half_life_ms;
    return hl > 0 ? exp2(-(double)(st.now - ts) / (double)hl) : 1.0;
}

/* A and B recomputed from scratch: sum_u c_u h h^T, sum_u c_u v h^T. */
static void recompute(const struct model *m, double *A, double *B)
{
    uint32_t k = model_params(m)->k, M = model_item_slots(m);
    memset(A, 0, (size_t)k * k * sizeof(double));
    memset(B, 0, (size_t)M * k * sizeof(double));
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        double c = user_weight(m, v.ts);
        const uint32_t *it;
        const float *va;
        uint32_t n;
        cr_assert_eq(model_user_profile(m, u, &it, &va, &n), 0);
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                A[j * k + l] += c * v.h[j] * v.h[l];
        for (uint32_t q = 0; q < n; q++)
            for (uint32_t j = 0; j < k; j++)
                B[(size_t)it[q] * k + j] += c * va[q] * v.h[j];
    }
}

static double max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m)
            m = fabs(x[i]);
    return m;
}

/* A refresh rescales h (stored as float) by the column norms: each such
 * rounding moves the incrementally kept A and B by ~6e-8 relative to a
 * recomputation from the stored h, and the model rebuilds them every
 * MODEL_REBUILD_EVERY rescaling refreshes, bounding the drift below 1e-6.
 * Folds, refines and expiry alone keep them to ~1e-15. */
#define STATS_RTOL 1e-6

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The recommendations' 8-bit copy follows W (every write of W went
 * through model__w_changed), and model_recommend's pruned scan answers
 * what the full scan over W does, bit for bit, for some live users. */
static void assert_recommend_exact(const struct model *m)
{
    cr_assert(model__w_copy_ok(m), "the 8-bit copy of W lags W");
    uint32_t k = model_params(m)->k, M = model_item_slots(m);
    uint32_t U = model_user_slots(m), step = U / 16 ? U / 16 : 1;
    uint32_t it[20], ir[20], ex[4096];
    float sc[20], sr[20];
    for (uint32_t u = 0; u < U; u += step) {
        struct model_user_view v;
        const uint32_t *pi;
        const float *pv;
        uint32_t np;
        if (model_user_get(m, u, &v))
            continue;
        model_user_profile(m, u, &pi, &pv, &np);
        if (np > 4096)
            continue;
        memcpy(ex, pi, np * sizeof(*ex));
        qsort(ex, np, sizeof(*ex), u32_cmp);
        int got = model_recommend(m, u, 20, it, sc);
        uint32_t want =
            model_top_scores(model_W(m), M, k, v.h, ex, np, 20, ir, sr);
        cr_assert_eq(got, (int)want, "user %u: %d vs %u", u, got, want);
        for (uint32_t q = 0; q < want; q++)
            cr_assert(it[q] == ir[q] && !memcmp(&sc[q], &sr[q], sizeof(float)),
                      "user %u at %u: %u %.9g vs %u %.9g", u, q, it[q],
                      (double)sc[q], ir[q], (double)sr[q]);
    }
}

static void assert_stats_exact(const struct model *m, double rtol)
{
    assert_recommend_exact(m);
    uint32_t k = model_params(m)->k, M = model_item_slots(m);
    double *A = malloc(k * k * sizeof(double));
    double *Ar = malloc(k * k * sizeof(double));
    double *B = malloc((M ? M : 1) * k * sizeof(double));
    double *Br = malloc((M ? M : 1) * k * sizeof(double));
    model_A(m, A);
    model_B(m, B);
    recompute(m, Ar, Br);
    double sa = max_abs(Ar, k * k), sb = max_abs(Br, (size_t)M * k);
    for (size_t i = 0; i < (size_t)k * k; i++)
        cr_assert(fabs(A[i] - Ar[i]) <= rtol * sa, "A[%zu] %.17g vs %.17g", i,
                  A[i], Ar[i]);
    for (size_t i = 0; i < (size_t)M * k; i++)
        cr_assert(fabs(B[i] - Br[i]) <= rtol * sb, "B[%zu] %.17g vs %.17g", i,
                  B[i], Br[i]);
    free(A);
    free(Ar);
    free(B);
    free(Br);
}

/* sum_u c_u ||v_u - W h_u||^2 over every item row, and sum_u c_u |v_u|^2. */
static void direct_loss(const struct model *m, double *loss, double *norm)
{
    uint32_t k = model_params(m)->k, M = model_item_slots(m);
    const float *W = model_W(m);
    double *v = calloc(M ? M : 1, sizeof(double));
    *loss = *norm = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view uv;
        if (model_user_get(m, u, &uv))
            continue;
        double c = user_weight(m, uv.ts);
        const uint32_t *it;
        const float *va;
        uint32_t n;
        model_user_profile(m, u, &it, &va, &n);
        for (uint32_t q = 0; q < n; q++) {
            v[it[q]] = va[q];
            *norm += c * (double)va[q] * va[q];
        }
        double l = 0;
        for (uint32_t i = 0; i < M; i++) {
            double p = 0;
            for (uint32_t j = 0; j < k; j++)
                p += (double)W[(size_t)i * k + j] * uv.h[j];
            double r = v[i] - p;
            l += r * r;
        }
        *loss += c * l;
        for (uint32_t q = 0; q < n; q++)
            v[it[q]] = 0;
    }
    free(v);
}

/* Adjusted Rand index of two labelings with values < K. */
static double ari(const uint32_t *a, const uint32_t *b, size_t n, uint32_t K)
{
    double *t = calloc((size_t)K * K, sizeof(double));
    double *ra = calloc(K, sizeof(double)), *rb = calloc(K, sizeof(double));
    for (size_t x = 0; x < n; x++) {
        t[a[x] * K + b[x]]++;
        ra[a[x]]++;
        rb[b[x]]++;
    }
    double sij = 0, sa = 0, sb = 0;
    for (uint32_t i = 0; i < K * K; i++)
        sij += t[i] * (t[i] - 1) / 2;
    for (uint32_t i = 0; i < K; i++) {
        sa += ra[i] * (ra[i] - 1) / 2;
        sb += rb[i] * (rb[i] - 1) / 2;
    }
    double tot = (double)n * (n - 1) / 2, exp = sa * sb / tot;
    free(t);
    free(ra);
    free(rb);
    return (sij - exp) / (0.5 * (sa + sb) - exp);
}

/* ---- parameters and refused input ------------------------------------ */

Test(model, params_defaults_and_checks)
{
    struct model_params p;
    model_params_default(&p);
    cr_assert_null(model_params_check(&p));
    cr_assert_eq(p.k, 16);
    cr_assert_eq(p.profile_max, 16384);
    cr_assert_eq(p.refresh_events, 200000);
    cr_assert_eq(p.warmup_events, 10000);
    cr_assert_eq(p.seed, 1);
    struct model_params q;
#define BAD(field, value)                                                      \
    do {                                                                       \
        q = p;                                                                 \
        q.field = value;                                                       \
        cr_assert_not_null(model_params_check(&q), #field);                    \
        cr_assert_null(model_new(&q), #field);                                 \
    } while (0)
    BAD(k, 0);
    BAD(k, MODEL_K_MAX + 1);
    BAD(half_life_ms, -1);
    BAD(alpha_h, -0.1);
    BAD(alpha_h, NAN);
    BAD(alpha_w, INFINITY);
    BAD(l1_ratio, 1.5);
    BAD(l1_ratio, NAN);
    BAD(profile_max, 0);
    BAD(profile_max, MODEL_PROFILE_MAX + 1);
    BAD(ttl_ms, -5);
    BAD(nnls_sweeps, 0);
    BAD(nnls_tol, -1);
    BAD(hals_sweeps, 0);
    BAD(refine_tol, NAN);
#undef BAD
    cr_assert_not_null(model_params_check(NULL));
}

Test(model, refused_input_changes_nothing)
{
    struct model *m = model_with(4, 1000, 0, 0);
    cr_assert_eq(fold(m, 1, 1, 1.0, 100), 0);
    struct buf before = save(m);
    char big[MODEL_ID_MAX + 1];
    memset(big, 'x', sizeof(big));
    cr_assert_eq(model_fold(m, "", 0, "i", 1, 1, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "", 0, 1, 100), -EINVAL);
    cr_assert_eq(model_fold(m, NULL, 1, "i", 1, 1, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, NULL, 1, 1, 100), -EINVAL);
    cr_assert_eq(model_fold(m, big, sizeof(big), "i", 1, 1, 100),
                 -ENAMETOOLONG);
    cr_assert_eq(model_fold(m, "u", 1, big, sizeof(big), 1, 100),
                 -ENAMETOOLONG);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, -1, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, -0.0 - 1e-300, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, NAN, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, INFINITY, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, -INFINITY, 100), -EINVAL);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, 2e12, 100), -ERANGE);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, 1, -1), -ERANGE);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, 1, MODEL_TS_MAX + 1), -ERANGE);
    cr_assert_eq(model_fold(m, "u", 1, "i", 1, 1, INT64_MIN), -ERANGE);
    struct buf after = save(m);
    cr_assert(bufs_equal(&before, &after), "a refused event changed state");
    /* The limits themselves are accepted. */
    cr_assert_eq(model_fold(m, big, MODEL_ID_MAX, "i", 1, 0, 0), 0);
    cr_assert_eq(model_fold(m, "u", 1, big, MODEL_ID_MAX, MODEL_WEIGHT_MAX,
                            MODEL_TS_MAX),
                 0);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.events, 3);
    cr_assert_eq(st.users, 3);
    cr_assert(isfinite(st.rel_loss));
    cr_assert_eq(model_user_find(m, "", 0), -ENOENT);
    cr_assert_eq(model_user_find(m, big, sizeof(big)), -ENOENT);
    free(before.p);
    free(after.p);
    model_free(m);
}

/* ---- recovery --------------------------------------------------------- */

Test(model, planted_segments_recovered)
{
    const uint32_t K = 5, U = 1500, I = 250;
    struct model *m = model_with(K, 0, 5000, 20000);
    struct planted p;
    planted_init(&p, U, I, K, 0.01, 42);
    for (int e = 0; e < 60000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, 1000 + e), 0);
    }
    refine_converge(m, 300);
    uint32_t *truth = malloc(U * sizeof(uint32_t));
    uint32_t *got = malloc(U * sizeof(uint32_t));
    size_t n = 0;
    for (uint32_t x = 0; x < model_user_slots(m); x++) {
        struct model_user_view v;
        if (model_user_get(m, x, &v))
            continue;
        truth[n] = id_num(v.id, v.id_len) % K;
        got[n] = v.segment;
        n++;
    }
    double a = ari(truth, got, n, K);
    cr_assert_geq(a, 0.95, "ARI %.4f over %zu users", a, n);
    /* Every topic's strongest items come from one bundle. */
    for (uint32_t j = 0; j < K; j++) {
        uint32_t items[10];
        float w[10];
        uint32_t c = model_topic_top(m, j, 10, items, w);
        cr_assert_eq(c, 10);
        size_t len;
        const char *id0 = model_item_id(m, items[0], &len);
        uint32_t b0 = id_num(id0, len) / (I / K);
        for (uint32_t q = 1; q < c; q++) {
            const char *id = model_item_id(m, items[q], &len);
            cr_assert_eq(id_num(id, len) / (I / K), b0);
            cr_assert_geq(w[q - 1], w[q]);
        }
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_lt(st.rel_loss, 0.9);
    free(truth);
    free(got);
    planted_free(&p);
    model_free(m);
}

/* ---- exactness of A, B and the loss ---------------------------------- */

static void stream_mixed(struct model *m, int events, uint64_t seed,
                         int out_of_order)
{
    struct planted p;
    planted_init(&p, 400, 120, 4, 0.05, seed);
    int64_t ts = 1000;
    for (int e = 0; e < events; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        ts += 1 + (int64_t)trng_below(&p.r, 20);
        int64_t t = ts;
        if (out_of_order && trng_unif(&p.r) < 0.2)
            t -= (int64_t)trng_below(&p.r, 3000);
        double w = 0.5 + trng_unif(&p.r) * 2;
        cr_assert_eq(fold(m, u, i, w, t < 0 ? 0 : t), 0);
    }
    planted_free(&p);
}

Test(model, statistics_exact_without_decay)
{
    struct model *m = model_with(6, 0, 1000, 2500);
    stream_mixed(m, 8000, 5, 0);
    assert_stats_exact(m, STATS_RTOL);
    model_refresh(m);
    assert_stats_exact(m, STATS_RTOL);
    model_refine(m, 150);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

Test(model, statistics_exact_with_decay_and_out_of_order)
{
    struct model *m = model_with(6, 5000, 1000, 2500);
    stream_mixed(m, 8000, 6, 1);
    assert_stats_exact(m, STATS_RTOL);
    model_refresh(m);
    model_refine(m, 200);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

/* A few heavy users (most over MODEL_BCACHE_MIN entries) on many items:
 * ts advances every `tick` events only, so with a half-life most events
 * see no decay; weights up to 3. */
static void stream_heavy(struct model *m, int events, uint64_t seed, int tick)
{
    struct planted p;
    planted_init(&p, 40, 300, 4, 0.4, seed);
    int64_t ts = 1000;
    for (int e = 0; e < events; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        if (e % tick == 0)
            ts += 1 + (int64_t)trng_below(&p.r, 50);
        cr_assert_eq(fold(m, u, i, 0.5 + trng_unif(&p.r) * 2.5, ts), 0);
    }
    planted_free(&p);
}

static uint32_t users_held_with_g(const struct model *m)
{
    uint32_t n = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++)
        n += (m->u[u].flags & MODEL_U_GB) != 0;
    return n;
}

/* Between refreshes a heavy user's share stays in B with the h of the
 * last refresh (g), and its events change only their own rows: B, read
 * with those shares brought to h, must equal a recomputation to rounding,
 * and the refresh's sync must leave none behind. */
Test(model, heavy_shares_held_between_refreshes_stay_exact)
{
    for (int decay = 0; decay < 2; decay++) {
        /* refresh_events 0: no refresh but the test's own. */
        struct model *m = model_with(6, decay ? 4000 : 0, 500, 0);
        stream_heavy(m, 6000, 91 + decay, decay ? 7 : 1);
        /* A refresh that rebuilds A and B, so that what follows starts
         * exact (a rescaling one leaves ~1e-7, see STATS_RTOL). */
        m->reparams = MODEL_REBUILD_EVERY - 1;
        model_refresh(m);
        cr_assert_eq(m->reparams, 0);
        cr_assert_eq(users_held_with_g(m), 0);
        /* Re-solves without an event hold the share too. */
        size_t rd = model_refine(m, 8);
        cr_assert_eq(rd, 8);
        cr_assert_gt(users_held_with_g(m), 3, "decay %d", decay);
        assert_stats_exact(m, 1e-12);
        stream_heavy(m, 3000, 93 + decay, decay ? 7 : 1);
        cr_assert_gt(users_held_with_g(m), 5, "decay %d", decay);
        assert_stats_exact(m, 1e-12);
        /* Held shares are saved with their g: the loaded model goes on
         * bit for bit like the original, through a sync. */
        struct buf s1 = save(m);
        const char *err = NULL;
        struct model *l = model_load(s1.p, s1.n, &err);
        cr_assert_not_null(l, "load: %s", err);
        cr_assert_eq(users_held_with_g(l), users_held_with_g(m));
        stream_heavy(m, 500, 97, decay ? 7 : 1);
        stream_heavy(l, 500, 97, decay ? 7 : 1);
        struct buf s2 = save(m), s3 = save(l);
        cr_assert(bufs_equal(&s2, &s3), "a loaded model diverged");
        model_free(l);
        free(s1.p);
        free(s2.p);
        free(s3.p);
        /* Dropping items (expiry) takes such a share out the slow way. */
        struct model_stats st;
        model_stats(m, &st);
        uint32_t held = users_held_with_g(m);
        m->p.ttl_ms = 400;
        model_expire(m, st.now);
        m->p.ttl_ms = 0;
        cr_assert_lt(users_held_with_g(m), held);
        assert_stats_exact(m, 1e-12);
        /* The sync brings every held share to h, in place. */
        stream_heavy(m, 1000, 95 + decay, decay ? 7 : 1);
        cr_assert_gt(users_held_with_g(m), 0, "decay %d", decay);
        model_refresh(m);
        cr_assert_eq(users_held_with_g(m), 0);
        assert_stats_exact(m, STATS_RTOL);
        model_free(m);
    }
}

Test(model, statistics_exact_across_frame_moves)
{
    /* 8000 events spread over about 400 half-lives: the frame origin
     * moves several times; old users' weight underflows harmlessly. */
    struct model *m = model_with(4, 200, 500, 1500);
    stream_mixed(m, 8000, 7, 1);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_gt(st.now, 64 * 200 * 4);
    assert_stats_exact(m, STATS_RTOL);
    cr_assert(isfinite(st.loss) && isfinite(st.norm));
    model_free(m);
}

Test(model, reported_loss_equals_direct_computation)
{
    int64_t hls[2] = {0, 4000};
    for (int c = 0; c < 2; c++) {
        struct model *m = model_with(5, hls[c], 1000, 3000);
        stream_mixed(m, 6000, 8 + c, c);
        struct model_stats st;
        double loss, norm;
        /* Mid-stream, users solved against many older W's, some shares
         * still owed to B: the identity holds all the same. */
        for (int r = 0; r < 3; r++) {
            model_stats(m, &st);
            direct_loss(m, &loss, &norm);
            cr_assert_float_eq(st.loss, loss, 1e-6 * norm,
                               "mid-stream %d: loss %g vs %g", r, st.loss, loss);
            stream_mixed(m, 700, 20 + r, c);
        }
        refine_converge(m, 200);
        model_stats(m, &st);
        cr_assert_eq(st.stale, 0);
        direct_loss(m, &loss, &norm);
        /* Each user's loss and |v|^2 are kept in float: relative 6e-8. */
        cr_assert_float_eq(st.norm, norm, 1e-6 * norm);
        cr_assert_float_eq(st.loss, loss, 1e-6 * norm, "loss %g vs %g", st.loss,
                           loss);
        cr_assert_float_eq(st.rel_loss, loss / norm, 1e-6);
        model_free(m);
    }
}

Test(model, loss_never_increases_across_refine_rounds)
{
    struct model *m = model_with(5, 0, 0, 0);
    stream_mixed(m, 6000, 9, 0);
    double prev_direct = INFINITY, prev_rel = INFINITY;
    model_refresh(m);
    for (int round = 0; round < 25; round++) {
        /* Every h against the current W: the stored loss is exact. */
        cr_assert_gt(model_refine(m, SIZE_MAX), 0);
        struct model_stats st;
        model_stats(m, &st);
        cr_assert_eq(st.stale, 0);
        cr_assert_leq(st.rel_loss, prev_rel * (1 + 1e-9),
                      "round %d: %.12g after %.12g", round, st.rel_loss,
                      prev_rel);
        prev_rel = st.rel_loss;
        /* The HALS sweeps of a refresh lower the loss of the same H. */
        double before, after, norm;
        direct_loss(m, &before, &norm);
        cr_assert_leq(before, prev_direct * (1 + 1e-9));
        model_refresh(m);
        direct_loss(m, &after, &norm);
        cr_assert_leq(after, before * (1 + 1e-9), "refresh raised the loss");
        prev_direct = after;
    }
    model_free(m);
}

/* model_work counts every kind of work and only work: it grows with
 * folds, refreshes and refinement, never moves on a call that
 * does nothing, agrees with model_stats and does not depend on the
 * timestamps (the same events a day apart count the same). */
Test(model, work_counts_each_phase)
{
    struct model *a = model_with(4, 0, 0, 0), *b = model_with(4, 0, 0, 0);
    struct model_stats st;
    cr_assert_eq(model_work(a), 0);
    char u[16], it[16];
    for (int e = 0; e < 3000; e++) {
        int un = snprintf(u, sizeof(u), "u%d", e % 97);
        int in = snprintf(it, sizeof(it), "i%d", (e * 7 + e / 97) % 31);
        cr_assert_eq(model_fold(a, u, (size_t)un, it, (size_t)in, 1.0f,
                                1700000000000 + e),
                     0);
        cr_assert_eq(model_fold(b, u, (size_t)un, it, (size_t)in, 1.0f,
                                1700000000000 + (int64_t)e * 86400000),
                     0);
    }
    uint64_t folded = model_work(a);
    cr_assert_gt(folded, 0);
    cr_assert_eq(model_work(b), folded, "timestamps changed the count");
    model_stats(a, &st);
    cr_assert_eq(st.work, folded);
    model_stats(a, &st); /* reading is not work */
    cr_assert_eq(model_work(a), folded);
    model_refresh(a);
    uint64_t refreshed = model_work(a);
    cr_assert_gt(refreshed, folded, "a refresh costs work");
    uint64_t last = refreshed;
    /* As nmfctl fit drives it: until a call neither solves nor refreshes. */
    int converged = 0;
    for (int r = 0; r < 5000 && !converged; r++) {
        uint64_t before = model_refreshes(a);
        size_t solved = model_refine(a, 64);
        cr_assert_geq(model_work(a), last);
        last = model_work(a);
        converged = solved == 0 && model_refreshes(a) == before;
    }
    cr_assert(converged);
    cr_assert_gt(last, refreshed, "refinement costs work");
    /* Converged: another call does nothing and costs nothing. */
    cr_assert_eq(model_refine(a, 64), 0);
    cr_assert_eq(model_work(a), last);
    model_free(a);
    model_free(b);
}

/* The per-event solves satisfy the KKT conditions of their NNLS problem
 * (checked on a model asked to solve to high precision). */
Test(model, each_solve_meets_kkt)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 5;
    p.warmup_events = 500;
    p.refresh_events = 1500;
    p.nnls_sweeps = 100000;
    p.nnls_tol = 1e-13;
    p.alpha_h = 0.05;
    p.l1_ratio = 0.3;
    struct model *m = model_new(&p);
    stream_mixed(m, 4000, 10, 0);
    /* Re-solve every user against the current W, then check each. */
    model_refresh(m);
    cr_assert_gt(model_refine(m, SIZE_MAX), 0);
    uint32_t k = p.k, M = model_item_slots(m);
    const float *W = model_W(m);
    double G[25] = {0};
    for (uint32_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t l = 0; l < k; l++)
                G[j * k + l] += (double)W[i * k + j] * W[i * k + l];
    double a1 = p.alpha_h * p.l1_ratio, a2 = p.alpha_h * (1 - p.l1_ratio);
    int checked = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        const uint32_t *it;
        const float *va;
        uint32_t n;
        model_user_profile(m, u, &it, &va, &n);
        double b[5] = {0}, vtv = 0;
        for (uint32_t q = 0; q < n; q++) {
            vtv += (double)va[q] * va[q];
            for (uint32_t j = 0; j < k; j++)
                b[j] += (double)va[q] * W[(size_t)it[q] * k + j];
        }
        double eps = 1e-5 * (1 + sqrt(vtv));
        for (uint32_t j = 0; j < k; j++) {
            double g = -b[j] + a1 + a2 * v.h[j];
            for (uint32_t l = 0; l < k; l++)
                g += G[j * k + l] * v.h[l];
            cr_assert_geq(v.h[j], 0);
            if (v.h[j] > 0)
                cr_assert_leq(fabs(g), eps, "user %u grad %g h %g", u, g,
                              v.h[j]);
            else
                cr_assert_geq(g, -eps, "user %u grad %g at 0", u, g);
        }
        checked++;
    }
    cr_assert_gt(checked, 300);
    model_free(m);
}

/* ---- decay, out-of-order, eviction ---------------------------------- */

static float profile_value(const struct model *m, const char *user,
                           const char *item)
{
    int64_t u = model_user_find(m, user, strlen(user));
    cr_assert_geq(u, 0);
    const uint32_t *it;
    const float *va;
    uint32_t n;
    model_user_profile(m, (uint32_t)u, &it, &va, &n);
    for (uint32_t q = 0; q < n; q++) {
        size_t len;
        const char *id = model_item_id(m, it[q], &len);
        if (len == strlen(item) && !memcmp(id, item, len))
            return va[q];
    }
    return -1;
}

Test(model, decay_matches_closed_form)
{
    const int64_t hl = 1000;
    struct model *m = model_with(3, hl, 0, 0);
    cr_assert_eq(model_fold(m, "u", 1, "a", 1, 4.0, 10000), 0);
    cr_assert_eq(model_fold(m, "u", 1, "b", 1, 2.0, 11000), 0);
    /* Out of order: 1.5 half-lives before the user's time. */
    cr_assert_eq(model_fold(m, "u", 1, "c", 1, 8.0, 9500), 0);
    cr_assert_eq(model_fold(m, "u", 1, "a", 1, 1.0, 12500), 0);
    double d = exp2(-1.5);
    cr_assert_float_eq(profile_value(m, "u", "a"), 4.0 * exp2(-2.5) + 1.0,
                       1e-5);
    cr_assert_float_eq(profile_value(m, "u", "b"), 2.0 * d, 1e-5);
    cr_assert_float_eq(profile_value(m, "u", "c"), 8.0 * exp2(-1.5) * d, 1e-5);
    struct model_user_view v;
    cr_assert_eq(model_user_get(m, 0, &v), 0);
    cr_assert_eq(v.ts, 12500);
    cr_assert_eq(v.nprofile, 3);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.now, 12500);
    cr_assert_float_eq(st.weight_sum, 15.0, 1e-12);
    /* An event older than the user's time, not the model's. */
    cr_assert_eq(model_fold(m, "w", 1, "a", 1, 2.0, 11500), 0);
    cr_assert_float_eq(profile_value(m, "w", "a"), 2.0, 1e-6);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

Test(model, no_decay_sums_weights)
{
    struct model *m = model_with(2, 0, 0, 0);
    model_fold(m, "u", 1, "a", 1, 1.5, 100);
    model_fold(m, "u", 1, "a", 1, 2.0, 5);
    model_fold(m, "u", 1, "a", 1, 0.25, 1000000);
    cr_assert_float_eq(profile_value(m, "u", "a"), 3.75, 1e-6);
    model_free(m);
}

Test(model, full_profile_evicts_the_weakest)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 2;
    p.profile_max = 3;
    p.warmup_events = 0;
    struct model *m = model_new(&p);
    model_fold(m, "u", 1, "a", 1, 5, 0);
    model_fold(m, "u", 1, "b", 1, 1, 0);
    model_fold(m, "u", 1, "c", 1, 3, 0);
    model_fold(m, "u", 1, "d", 1, 2, 0); /* evicts b (1) */
    cr_assert_float_eq(profile_value(m, "u", "b"), -1, 0);
    cr_assert_float_eq(profile_value(m, "u", "d"), 2, 1e-6);
    model_fold(m, "u", 1, "e", 1, 0.5, 0); /* weaker than all: ignored */
    cr_assert_float_eq(profile_value(m, "u", "e"), -1, 0);
    struct model_user_view v;
    model_user_get(m, 0, &v);
    cr_assert_eq(v.nprofile, 3);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

/* A profile longer than one block of the search (32 entries): the
 * weakest found in a later block, the first of equal ones evicted, and a
 * new entry only as strong as the weakest left out. */
Test(model, full_long_profile_evicts_the_first_weakest)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 2;
    p.profile_max = 70;
    p.warmup_events = 0;
    struct model *m = model_new(&p);
    char id[16];
    for (int i = 0; i < 70; i++) {
        int n = snprintf(id, sizeof(id), "i%d", i);
        double w = i == 40 || i == 55 ? 1 : 10 + i;
        cr_assert_eq(model_fold(m, "u", 1, id, (size_t)n, w, 0), 0);
    }
    model_fold(m, "u", 1, "n1", 2, 2, 0); /* evicts i40, the first 1 */
    cr_assert_float_eq(profile_value(m, "u", "i40"), -1, 0);
    cr_assert_float_eq(profile_value(m, "u", "i55"), 1, 1e-6);
    cr_assert_float_eq(profile_value(m, "u", "n1"), 2, 1e-6);
    model_fold(m, "u", 1, "n2", 2, 3, 0); /* evicts i55 */
    cr_assert_float_eq(profile_value(m, "u", "i55"), -1, 0);
    model_fold(m, "u", 1, "n3", 2, 2, 0); /* ties n1: left out */
    cr_assert_float_eq(profile_value(m, "u", "n3"), -1, 0);
    cr_assert_float_eq(profile_value(m, "u", "n1"), 2, 1e-6);
    model_fold(m, "u", 1, "n4", 2, 50, 0); /* evicts n1 */
    cr_assert_float_eq(profile_value(m, "u", "n1"), -1, 0);
    cr_assert_float_eq(profile_value(m, "u", "i0"), 10, 1e-6);
    struct model_user_view v;
    model_user_get(m, 0, &v);
    cr_assert_eq(v.nprofile, 70);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

/* A light user's share of B is replaced at every fold, whatever the
 * profile went through: entries decayed below the float range and
 * dropped, the weakest evicted from a full profile under decay, events out
 * of order. Every path must leave A and B equal to a recomputation from
 * the stored users. */
Test(model, light_users_share_of_b_through_every_profile_change)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 3;
    p.half_life_ms = 1000;
    p.profile_max = 4;
    p.warmup_events = 200;
    p.refresh_events = 97;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    struct trng r = {.s = 2024};
    int64_t t = 0;
    for (int e = 0; e < 6000; e++) {
        /* Mostly small steps; now and then 100 s of silence, after which
         * the weak entries of a returning user underflow and go. */
        t += trng_below(&r, 200) == 0 ? 100000 : (int64_t)trng_below(&r, 400);
        int64_t ts = trng_below(&r, 10) == 0 ? t - 3000 : t;
        /* A few weights so small that any silence drops them. */
        double w = trng_below(&r, 10) == 0 ? 1e-30 : 0.1 + 10 * trng_unif(&r);
        cr_assert_eq(
            fold(m, trng_below(&r, 40), trng_below(&r, 12), w, ts < 0 ? 0 : ts),
            0);
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.events, 6000);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

Test(model, profiles_grow_through_size_classes)
{
    struct model *m = model_with(3, 0, 0, 0);
    for (uint32_t i = 0; i < 300; i++)
        cr_assert_eq(fold(m, 7, i, 1.0 + i, 10), 0);
    for (uint32_t i = 0; i < 40; i++)
        cr_assert_eq(fold(m, 8 + i, i, 1.0, 10), 0);
    int64_t u = model_user_find(m, "user-7", 6);
    const uint32_t *it;
    const float *va;
    uint32_t n;
    model_user_profile(m, (uint32_t)u, &it, &va, &n);
    cr_assert_eq(n, 300);
    for (uint32_t q = 0; q < n; q++)
        cr_assert_float_eq(va[q], 1.0 + it[q], 1e-6);
    assert_stats_exact(m, STATS_RTOL);
    model_free(m);
}

/* ---- new items, expiry --------------------------------------------- */

Test(model, new_items_mid_stream_join_their_topic)
{
    const uint32_t K = 3;
    struct model *m = model_with(K, 0, 3000, 10000);
    struct planted p;
    planted_init(&p, 600, 90, K, 0.0, 77);
    for (int e = 0; e < 20000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        fold(m, u, i, 1.0, e);
    }
    /* Segment 1 adopts 10 brand-new items. */
    for (int e = 0; e < 8000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        if (u % K == 1 && trng_unif(&p.r) < 0.5)
            i = 1000 + trng_below(&p.r, 10);
        fold(m, u, i, 1.0, 20000 + e);
    }
    refine_converge(m, 200);
    /* The topic of segment 1's users holds the new items. */
    int64_t u1 = model_user_find(m, "user-1", 6);
    struct model_user_view v;
    model_user_get(m, (uint32_t)u1, &v);
    uint32_t j = v.segment, k = K;
    const float *W = model_W(m);
    for (uint32_t x = 0; x < 10; x++) {
        char id[32];
        snprintf(id, sizeof(id), "item-%u", 1000 + x);
        int found = 0;
        for (uint32_t i = 0; i < model_item_slots(m); i++) {
            size_t len;
            const char *s = model_item_id(m, i, &len);
            if (!s || len != strlen(id) || memcmp(s, id, len))
                continue;
            found = 1;
            for (uint32_t l = 0; l < k; l++)
                if (l != j)
                    cr_assert_gt(W[i * k + j], W[i * k + l]);
        }
        cr_assert(found);
    }
    planted_free(&p);
    model_free(m);
}

Test(model, expiry_forgets_users_and_items_exactly)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 4;
    p.ttl_ms = 5000;
    p.warmup_events = 500;
    p.refresh_events = 2000;
    p.half_life_ms = 20000;
    struct model *m = model_new(&p);
    stream_mixed(m, 3000, 21, 0);
    /* Items 200..209 and users 900..919 only early, then stale. */
    for (uint32_t x = 0; x < 20; x++)
        cr_assert_eq(fold(m, 900 + x, 200 + x % 10, 1.0, 1000), 0);
    for (uint32_t x = 0; x < 20; x++)
        cr_assert_eq(fold(m, x, 200 + x % 10, 1.0, 1000), 0);
    struct model_stats st0;
    model_stats(m, &st0);
    size_t gone = model_expire(m, st0.now);
    cr_assert_geq(gone, 30);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_leq(st.items + 10, st0.items, "items %lu -> %lu",
                  (unsigned long)st0.items, (unsigned long)st.items);
    for (uint32_t x = 0; x < 20; x++) {
        char id[32];
        int n = snprintf(id, sizeof(id), "user-%u", 900 + x);
        cr_assert_eq(model_user_find(m, id, (size_t)n), -ENOENT);
    }
    /* No profile mentions a forgotten item; forgotten rows are zero. */
    const float *W = model_W(m);
    for (uint32_t i = 0; i < model_item_slots(m); i++) {
        if (model_item_id(m, i, NULL))
            continue;
        for (uint32_t j = 0; j < p.k; j++)
            cr_assert(W[i * p.k + j] == 0);
    }
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        const uint32_t *it;
        const float *va;
        uint32_t n;
        if (model_user_profile(m, u, &it, &va, &n))
            continue;
        for (uint32_t q = 0; q < n; q++)
            cr_assert_not_null(model_item_id(m, it[q], NULL));
    }
    assert_stats_exact(m, STATS_RTOL);
    /* Freed slots are reused. */
    uint32_t slots = model_item_slots(m), uslots = model_user_slots(m);
    cr_assert_eq(fold(m, 5000, 5000, 1.0, st.now), 0);
    cr_assert_eq(model_item_slots(m), slots);
    cr_assert_eq(model_user_slots(m), uslots);
    assert_stats_exact(m, STATS_RTOL);
    /* Everything expires eventually. */
    model_expire(m, st.now + 100000);
    model_stats(m, &st);
    cr_assert_eq(st.users, 0);
    cr_assert_eq(st.items, 0);
    cr_assert_float_eq(st.norm, 0, 1e-9);
    double A[16];
    model_A(m, A);
    cr_assert_leq(max_abs(A, 16), 1e-9);
    model_free(m);
}

Test(model, expiry_off_keeps_everything)
{
    struct model *m = model_with(3, 0, 0, 0);
    fold(m, 1, 1, 1, 0);
    cr_assert_eq(model_expire(m, MODEL_TS_MAX), 0);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.users, 1);
    model_free(m);
}

/* ---- refresh details ------------------------------------------------ */

Test(model, refresh_keeps_unit_columns_and_no_dead_column)
{
    /* Rank 2 data, k = 6: surplus columns die and are resampled. */
    struct model *m = model_with(6, 0, 1000, 2000);
    struct planted p;
    planted_init(&p, 300, 40, 2, 0.0, 3);
    for (int e = 0; e < 10000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        fold(m, u, i, 1.0, e);
    }
    model_refresh(m);
    uint32_t k = 6, M = model_item_slots(m);
    const float *W = model_W(m);
    for (uint32_t j = 0; j < k; j++) {
        double s = 0;
        for (uint32_t i = 0; i < M; i++) {
            cr_assert(isfinite(W[i * k + j]) && W[i * k + j] >= 0);
            s += (double)W[i * k + j] * W[i * k + j];
        }
        cr_assert_float_eq(s, 1.0, 1e-5, "column %u norm^2 %g", j, s);
    }
    assert_stats_exact(m, STATS_RTOL);
    refine_converge(m, 100);
    assert_stats_exact(m, STATS_RTOL);
    planted_free(&p);
    model_free(m);
}

/* The refresh's rescaling of h (w_j /= n_j, h_j *= n_j) costs O(k): the
 * stored H does not move, the h users see does (through the column
 * scales), A and B follow exactly, and the periodic rebuild folds the
 * scales into H. */
Test(model, refresh_rescales_h_lazily)
{
    struct model *m = model_with(4, 0, 500, 0);
    stream_mixed(m, 3000, 23, 0);
    uint32_t k = 4, U = model_user_slots(m);
    size_t hbytes = (size_t)U * k * sizeof(float);
    float *H0 = malloc(hbytes);
    memcpy(H0, m->H, hbytes);
    model_refresh(m);
    cr_assert(!memcmp(H0, m->H, hbytes), "a refresh wrote H");
    int scaled = 0;
    for (uint32_t j = 0; j < k; j++)
        scaled |= m->hs[j] != 1;
    cr_assert(scaled);
    for (uint32_t u = 0; u < U; u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        for (uint32_t j = 0; j < k; j++)
            cr_assert(v.h[j] == (float)((double)H0[u * k + j] * m->hs[j]));
    }
    assert_stats_exact(m, STATS_RTOL);
    refine_converge(m, 200);
    assert_stats_exact(m, STATS_RTOL);
    /* The rebuild after MODEL_REBUILD_EVERY rescaling refreshes. */
    m->reparams = MODEL_REBUILD_EVERY - 1;
    model_refresh(m);
    for (uint32_t j = 0; j < k; j++)
        cr_assert(m->hs[j] == 1);
    cr_assert_eq(m->reparams, 0);
    assert_stats_exact(m, 1e-12);
    free(H0);
    model_free(m);
}

Test(model, segment_sizes_and_mass_match_users)
{
    struct model *m = model_with(4, 0, 500, 2000);
    stream_mixed(m, 3000, 31, 0);
    uint64_t sizes[4], n = 0;
    double mass[4], ref[4] = {0};
    uint64_t cnt[4] = {0};
    model_segment_sizes(m, sizes, mass);
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        cnt[v.segment]++;
        double s = 0;
        for (uint32_t j = 0; j < 4; j++) {
            ref[j] += v.h[j];
            s += v.h[j];
            cr_assert_leq(v.h[j], v.h[v.segment]);
        }
        if (s > 0)
            cr_assert_float_eq(v.share, v.h[v.segment] / s, 1e-6);
        n++;
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(n, st.users);
    for (uint32_t j = 0; j < 4; j++) {
        cr_assert_eq(sizes[j], cnt[j]);
        cr_assert_float_eq(mass[j], ref[j], 1e-9 * (1 + ref[j]));
    }
    model_free(m);
}

Test(model, topic_top_is_a_partial_sort)
{
    struct model *m = model_with(3, 0, 500, 1000);
    stream_mixed(m, 3000, 41, 0);
    uint32_t k = 3, M = model_item_slots(m);
    const float *W = model_W(m);
    for (uint32_t j = 0; j < k; j++) {
        uint32_t items[50];
        float w[50];
        uint32_t n = model_topic_top(m, j, 50, items, w);
        uint32_t pos = 0;
        for (uint32_t i = 0; i < M; i++)
            pos += W[i * k + j] > 0;
        cr_assert_eq(n, pos < 50 ? pos : 50);
        for (uint32_t q = 0; q < n; q++) {
            cr_assert(w[q] == W[items[q] * k + j]);
            if (q)
                cr_assert_geq(w[q - 1], w[q]);
            /* Nothing outside the list is stronger than its last. */
        }
        for (uint32_t i = 0; i < M; i++) {
            int in = 0;
            for (uint32_t q = 0; q < n; q++)
                in |= items[q] == i;
            if (!in)
                cr_assert_leq(W[i * k + j], w[n - 1]);
        }
    }
    uint32_t it[1];
    float w[1];
    cr_assert_eq(model_topic_top(m, k, 1, it, w), 0);
    cr_assert_eq(model_topic_top(m, 0, 0, it, w), 0);
    model_free(m);
}

Test(model, epochs_track_changes_of_h)
{
    struct model *m = model_with(3, 0, 0, 0);
    model_epoch_set(m, 7);
    cr_assert_eq(model_epoch(m), 7);
    fold(m, 1, 1, 1, 0);
    fold(m, 2, 2, 1, 0);
    model_epoch_set(m, 8);
    fold(m, 1, 3, 1, 0);
    struct model_user_view v1, v2;
    model_user_get(m, (uint32_t)model_user_find(m, "user-1", 6), &v1);
    model_user_get(m, (uint32_t)model_user_find(m, "user-2", 6), &v2);
    cr_assert_eq(v1.changed, 8);
    cr_assert_eq(v2.changed, 7);
    cr_assert_eq(model_user_get(m, 99, &v1), -ENOENT);
    cr_assert_null(model_item_id(m, 99, NULL));
    model_free(m);
}

/* What each user's last published record (at its last mark) showed. */
struct mark {
    int set;
    uint32_t seg;
    double share, sum;
};

static double h_sum(const float *h, uint32_t k)
{
    double s = 0;
    for (uint32_t j = 0; j < k; j++)
        s += h[j];
    return s;
}

/* After an operation run in epoch e: users marked in e take their mark as
 * their record (what a publisher sends right after the mark). With values
 * set (only when every h is re-solved against the current W: a refresh's
 * rescaling marks nobody and moves h until the re-solve), every user's h
 * must still match its record within the rule's tolerances. Returns how
 * many were marked. */
static size_t check_marks(const struct model *m, struct mark *rec,
                          uint32_t nrec, uint64_t e, int values)
{
    uint32_t k = model_params(m)->k;
    size_t marked = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        cr_assert_lt(u, nrec);
        if (v.changed == e) {
            const struct model_user *us = &m->u[u];
            rec[u] = (struct mark){1, us->mseg, us->mshare / 65535.0, us->msum};
            marked++;
        }
        cr_assert(rec[u].set, "user %u never marked", u);
        if (!values)
            continue;
        double sum = h_sum(v.h, k);
        cr_assert_eq(v.segment, rec[u].seg, "user %u left its segment", u);
        cr_assert_leq(fabs(v.share - rec[u].share), 1e-3 + 1e-6,
                      "user %u share %g, published %g", u, v.share,
                      rec[u].share);
        cr_assert_leq(fabs(sum - rec[u].sum), 1e-3 * rec[u].sum + 1e-30,
                      "user %u sum %g, published %g", u, sum, rec[u].sum);
    }
    return marked;
}

/* Re-solves every stale user, in slices, without the refresh after. */
static void resolve_stale(struct model *m)
{
    struct model_stats st;
    for (model_stats(m, &st); st.stale; model_stats(m, &st))
        cr_assert_gt(model_refine(m, 97), 0);
}

Test(model, changed_marks_follow_the_rule)
{
    struct model *m = model_with(5, 0, 500, 1500);
    static struct mark rec[1000];
    uint64_t e = 1;
    struct model_stats st;
    model_epoch_set(m, e);
    stream_mixed(m, 3000, 17, 0);
    check_marks(m, rec, 1000, e, 0);
    model_epoch_set(m, ++e);
    resolve_stale(m);
    check_marks(m, rec, 1000, e, 1);
    /* Rounds of refinement: a refresh (the reparametrisation and a new W)
     * marks nobody by itself; the re-solves mark material moves only. */
    size_t late = 0;
    for (int r = 0; r < 40; r++) {
        model_epoch_set(m, ++e);
        model_refresh(m);
        cr_assert_eq(check_marks(m, rec, 1000, e, 0), 0);
        model_epoch_set(m, ++e);
        resolve_stale(m);
        size_t n = check_marks(m, rec, 1000, e, 1);
        if (r >= 30)
            late += n;
    }
    model_stats(m, &st);
    /* Before the rule every round re-marked every user (10 x 284). */
    cr_assert_lt(late, st.users / 2, "%zu marks in 10 late rounds", late);
    /* A fold marks its user, even one that changes nothing (weight 0). */
    model_epoch_set(m, ++e);
    cr_assert_eq(fold(m, 3, 4, 0.0, 1), 0);
    cr_assert_eq(check_marks(m, rec, 1000, e, 0), 1);
    /* More events, then refinement to convergence (with a restart). */
    model_epoch_set(m, ++e);
    stream_mixed(m, 3000, 18, 0);
    check_marks(m, rec, 1000, e, 0);
    for (int r = 0; r < 1000; r++) {
        model_epoch_set(m, ++e);
        resolve_stale(m);
        check_marks(m, rec, 1000, e, 1);
        model_stats(m, &st);
        uint64_t f0 = st.refreshes;
        model_epoch_set(m, ++e);
        size_t n = model_refine(m, SIZE_MAX);
        check_marks(m, rec, 1000, e, 0);
        model_stats(m, &st);
        if (!n && st.refreshes == f0)
            break;
    }
    model_free(m);
}

Test(model, warmup_runs_once_and_leaves_exact_statistics)
{
    struct model *m = model_with(4, 0, 2000, 0);
    stream_mixed(m, 1999, 51, 0);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.refreshes, 0);
    stream_mixed(m, 1, 52, 0);
    model_stats(m, &st);
    cr_assert_gt(st.refreshes, 0);
    cr_assert_eq(st.stale, 0);
    assert_stats_exact(m, 1e-12);
    uint64_t r = st.refreshes;
    stream_mixed(m, 3000, 53, 0);
    model_stats(m, &st);
    cr_assert_eq(st.refreshes, r);
    model_free(m);
}

/* The warm-up's rounds solve against W's that no refresh made (the
 * extrapolated ones, model.c), with heavy users, who keep W^T v between
 * solves, among the profiles: right after the warm-up the reported loss
 * is the loss of the model's own W and H, and A and B are exact. */
Test(model, warmup_rounds_leave_heavy_users_exact)
{
    struct model *m = model_with(6, 0, 6000, 0);
    struct planted p;
    planted_init(&p, 150, 360, 6, 0.1, 91);
    uint32_t heavy = 0;
    for (int e = 0; e < 6000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0 + (e % 3), 0), 0);
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_gt(st.refreshes, 0, "the warm-up ran");
    cr_assert_eq(st.stale, 0);
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (!model_user_get(m, u, &v) && v.nprofile >= 32)
            heavy++;
    }
    cr_assert_geq(heavy, 5, "%u users over the W^T v cache's threshold", heavy);
    double loss, norm;
    direct_loss(m, &loss, &norm);
    cr_assert_float_eq(st.loss, loss, 1e-6 * norm, "loss %g vs %g", st.loss,
                       loss);
    assert_stats_exact(m, 1e-9);
    planted_free(&p);
    model_free(m);
}

/* ---- refreshes by work -------------------------------------------- */

/* Folds a planted stream with events step ms apart and returns the model. */
static struct model *fold_spaced(uint32_t items, int64_t step)
{
    struct model_params p0;
    model_params_default(&p0);
    p0.k = 4;
    p0.warmup_events = 2000;
    p0.refresh_events = 1000000;
    p0.refresh_work = MODEL_REFRESH_WORK;
    struct model *m = model_new(&p0);
    cr_assert_not_null(m);
    struct planted p;
    planted_init(&p, 600, items, 4, 0.05, 17);
    for (int e = 0; e < 20000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, (int64_t)e * step), 0);
    }
    planted_free(&p);
    return m;
}

/* Automatic refreshes come from the work of the folds, never from the
 * timestamps: the same events 1 ms and a day apart give the same
 * refreshes and the same W, bit for bit; they come well before
 * refresh_events; and a costlier refresh (more items) comes less often. */
Test(model, refreshes_follow_work_not_time)
{
    struct model *a = fold_spaced(100, 1), *b = fold_spaced(100, 86400000);
    struct model_stats sa, sb;
    model_stats(a, &sa);
    model_stats(b, &sb);
    cr_assert_eq(sa.refreshes, sb.refreshes);
    cr_assert_gt(sa.refreshes, 60, "%" PRIu64, sa.refreshes);
    cr_assert_eq(model_item_slots(a), model_item_slots(b));
    cr_assert_eq(memcmp(model_W(a), model_W(b),
                        (size_t)model_item_slots(a) * 4 * sizeof(float)),
                 0);
    cr_assert_eq(sa.rel_loss, sb.rel_loss);
    /* Every refresh by work left the counter below its threshold: a
     * refresh costs at least k^2 (hals_sweeps + 1) M. */
    struct model *c = fold_spaced(2000, 1);
    struct model_stats sc;
    model_stats(c, &sc);
    cr_assert_lt(sc.refreshes * 3, sa.refreshes, "%" PRIu64 " vs %" PRIu64,
                 sc.refreshes, sa.refreshes);
    model_free(a);
    model_free(b);
    model_free(c);
}

/* By default (refresh_work 0, the daemon's setting) the work of the
 * folds never refreshes W: after the warm-up, exactly one refresh per
 * refresh_events folds, however cheap a refresh is against the folds. */
Test(model, without_refresh_work_only_the_event_count_refreshes)
{
    struct model *m = model_with(4, 0, 2000, 5000);
    cr_assert_eq(model_params(m)->refresh_work, 0);
    struct planted p;
    planted_init(&p, 600, 100, 4, 0.05, 17);
    struct model_stats st;
    uint64_t warm = 0;
    for (int e = 0; e < 22000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, e), 0);
        if (e + 1 == 2000) {
            model_stats(m, &st);
            warm = st.refreshes;
        }
    }
    model_stats(m, &st);
    /* The warm-up at 2000 starts the count again: then 7000, 12000,
     * 17000, 22000. */
    cr_assert_eq(st.refreshes - warm, 4, "%" PRIu64 " after the warm-up",
                 st.refreshes - warm);
    planted_free(&p);
    model_free(m);
}

/* refresh_events = 0: the model never refreshes by itself after the
 * warm-up, however much work the folds do. */
Test(model, refresh_events_zero_leaves_refreshes_to_the_caller)
{
    struct model_params p0;
    model_params_default(&p0);
    p0.k = 4;
    p0.warmup_events = 500;
    p0.refresh_events = 0;
    p0.refresh_work = MODEL_REFRESH_WORK;
    struct model *m = model_new(&p0);
    cr_assert_not_null(m);
    struct planted p;
    planted_init(&p, 300, 60, 4, 0.05, 18);
    for (int e = 0; e < 600; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, e), 0);
    }
    struct model_stats st;
    model_stats(m, &st);
    uint64_t r = st.refreshes;
    for (int e = 0; e < 20000; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, 600 + e), 0);
    }
    model_stats(m, &st);
    cr_assert_eq(st.refreshes, r);
    cr_assert_gt(m->work, 0);
    planted_free(&p);
    model_free(m);
}

/* ---- warm-up in idle time, restarts -------------------------------- */

static void fold_planted(struct model *m, struct planted *p, int events,
                         int64_t t0)
{
    for (int e = 0; e < events; e++) {
        uint32_t u, i;
        planted_event(p, &u, &i);
        cr_assert_eq(fold(m, u, i, 1.0, t0 + e), 0);
    }
}

Test(model, warmup_runs_in_refine_when_the_stream_stops_early)
{
    struct model *m = model_with(4, 0, 10000, 0);
    struct planted p;
    planted_init(&p, 400, 80, 4, 0.0, 12);
    fold_planted(m, &p, 3000, 0);
    cr_assert_eq(m->warm_done, 0);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.refreshes, 0);
    /* Refinement while events keep coming is not quiet. */
    for (int r = 0; r < 20; r++) {
        model_refine(m, SIZE_MAX);
        fold_planted(m, &p, 1, 3000 + r);
    }
    cr_assert_eq(m->warm_done, 0);
    /* A whole round without an event is: the seed replaces W, and the
     * refinement's rounds (one refresh per call at most) do the rest. */
    int calls = 0;
    while (!m->warm_done && calls < 10) {
        model_refine(m, 100);
        calls++;
    }
    cr_assert_eq(m->warm_done, 1);
    cr_assert_leq(calls, 8);
    model_stats(m, &st);
    cr_assert_eq(st.stale, st.users, "a new W: every h is stale");
    for (int c = 0; c < 100000; c++) {
        uint64_t f0 = st.refreshes;
        size_t n = model_refine(m, 100);
        model_stats(m, &st);
        cr_assert_leq(st.refreshes, f0 + 1);
        if (!n && st.refreshes == f0)
            break;
    }
    cr_assert_eq(st.stale, 0);
    assert_stats_exact(m, STATS_RTOL);
    /* The same events with the warm-up at warmup_events: same basin. */
    struct model *w = model_with(4, 0, 3000, 0);
    struct planted q;
    planted_init(&q, 400, 80, 4, 0.0, 12);
    fold_planted(w, &q, 3000, 0);
    for (int r = 0; r < 20; r++)
        fold_planted(w, &q, 1, 3000 + r);
    refine_converge(w, 100000);
    struct model_stats sw;
    model_stats(w, &sw);
    cr_assert_float_eq(st.rel_loss, sw.rel_loss, 1e-3 * sw.rel_loss,
                       "%.8g vs %.8g", st.rel_loss, sw.rel_loss);
    planted_free(&q);
    model_free(w);
    /* It does not run again when the events reach warmup_events. */
    uint64_t r = st.refreshes;
    fold_planted(m, &p, 8000, 3100);
    model_stats(m, &st);
    cr_assert_eq(st.refreshes, r);
    planted_free(&p);
    model_free(m);
}

/* Planted stream, k = 6, no warm-up: from a random W the alternating NNLS
 * of the refinement settles in a worse local minimum than the warm-up's
 * NNDSVDa start reaches; the restart at convergence finds the latter. */
static struct model *six_bundles(uint64_t warmup, double *rel)
{
    struct model *m = model_with(6, 0, warmup, 200000);
    struct planted p;
    planted_init(&p, 1500, 300, 6, 0.0, 3);
    fold_planted(m, &p, 40000, 1000);
    planted_free(&p);
    if (rel) {
        struct model_stats st;
        model_stats(m, &st);
        *rel = st.rel_loss;
    }
    return m;
}

Test(model, restart_escapes_a_local_minimum)
{
    struct model *good = six_bundles(10000, NULL);
    refine_converge(good, 1000);
    struct model_stats sg, st;
    model_stats(good, &sg);
    cr_assert_eq(sg.restarts, 0, "the warm-up start needs no restart");

    struct model *m = six_bundles(0, NULL);
    double incumbent = -1;
    int began = 0;
    for (int r = 0; r < 100000; r++) {
        model_stats(m, &st);
        uint64_t f0 = st.refreshes;
        double before = st.rel_loss;
        size_t n = model_refine(m, SIZE_MAX);
        if (m->rs && !began) {
            began = 1;
            incumbent = before;
            /* The live model waits; every user counts as stale. */
            model_stats(m, &st);
            cr_assert_eq(st.stale, st.users);
            cr_assert(st.rel_loss == before);
        }
        model_stats(m, &st);
        if (!n && st.refreshes == f0)
            break;
    }
    cr_assert(began);
    model_stats(m, &st);
    cr_assert_eq(st.restarts, 1);
    cr_assert_eq(st.stale, 0);
    cr_assert_lt(st.rel_loss, 0.95 * incumbent, "%g vs incumbent %g",
                 st.rel_loss, incumbent);
    cr_assert_float_eq(st.rel_loss, sg.rel_loss, 1e-4 * sg.rel_loss,
                       "%.8g vs the warm-up's %.8g", st.rel_loss, sg.rel_loss);
    assert_stats_exact(m, STATS_RTOL);
    /* Converged: no second restart without new data. */
    cr_assert_eq(model_refine(m, SIZE_MAX), 0);
    cr_assert_null(m->rs);
    model_free(good);
    model_free(m);
}

Test(model, restart_slices_are_bounded_and_reach_the_same_model)
{
    struct model *a = six_bundles(0, NULL), *b = six_bundles(0, NULL);
    refine_converge(a, 100000);
    size_t calls = 0, restart_calls = 0;
    for (;;) {
        struct model_stats st;
        model_stats(b, &st);
        uint64_t f0 = st.refreshes;
        int during = b->rs != NULL;
        size_t n = model_refine(b, 13);
        cr_assert_leq(n, 13);
        if (during || b->rs) {
            cr_assert_geq(n, 1, "a restart slice returned 0");
            restart_calls++;
        }
        model_stats(b, &st);
        if (!n && st.refreshes == f0)
            break;
        cr_assert_lt(++calls, 10000000);
    }
    cr_assert_gt(restart_calls, 1000);
    struct model_stats sa, sb;
    model_stats(a, &sa);
    model_stats(b, &sb);
    cr_assert_eq(sa.restarts, 1);
    cr_assert_eq(sb.restarts, 1);
    cr_assert_float_eq(sa.rel_loss, sb.rel_loss, 1e-6 * sa.rel_loss);
    cr_assert_eq(model_refine(b, 0), 0);
    model_free(a);
    model_free(b);
}

/* ---- topic identity ---------------------------------------------------- */

/* cos(old column a, new column b) for every pair, over M rows of k. */
static void column_cosines(uint32_t k, uint32_t M, const float *Wo,
                           const float *Wn, double *C)
{
    double no[MODEL_K_MAX] = {0}, nn[MODEL_K_MAX] = {0};
    memset(C, 0, (size_t)k * k * sizeof(double));
    for (uint32_t i = 0; i < M; i++)
        for (uint32_t a = 0; a < k; a++) {
            no[a] += (double)Wo[(size_t)i * k + a] * Wo[(size_t)i * k + a];
            nn[a] += (double)Wn[(size_t)i * k + a] * Wn[(size_t)i * k + a];
            for (uint32_t b = 0; b < k; b++)
                C[(size_t)a * k + b] +=
                    (double)Wo[(size_t)i * k + a] * Wn[(size_t)i * k + b];
        }
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t b = 0; b < k; b++)
            C[(size_t)a * k + b] /= sqrt(no[a]) * sqrt(nn[b]);
}

/* A restart replaces W with columns of its own order (NNDSVDa's, by
 * singular value): each new column must sit at the index of the old
 * column it continues, i.e. the identity is the best assignment of the
 * cosines old x new, and each new column's best old match is its own
 * index. */
Test(model, a_restart_keeps_each_topic_id)
{
    struct model *m = six_bundles(0, NULL);
    const uint32_t k = 6;
    double C[36];
    uint32_t to[6];
    float *before = NULL;
    int restarted = 0;
    for (int r = 0; r < 100000 && !restarted; r++) {
        struct model_stats st;
        uint32_t M = model_item_slots(m);
        before = realloc(before, (size_t)M * k * sizeof(float));
        memcpy(before, model_W(m), (size_t)M * k * sizeof(float));
        model_stats(m, &st);
        uint64_t f0 = st.refreshes, r0 = st.restarts, s0 = st.reseeded;
        size_t n = model_refine(m, SIZE_MAX);
        model_stats(m, &st);
        if (st.restarts > r0) {
            restarted = 1;
            cr_assert_eq(st.reseeded - s0, k, "reseeded %lu",
                         (unsigned long)(st.reseeded - s0));
            column_cosines(k, M, before, model_W(m), C);
            cr_assert_eq(match_assign(k, C, to), 0);
            for (uint32_t j = 0; j < k; j++) {
                cr_assert_eq(to[j], j, "old topic %u continues as %u", j,
                             to[j]);
                for (uint32_t a = 0; a < k; a++)
                    cr_assert_geq(C[(size_t)j * k + j], C[(size_t)a * k + j],
                                  "new %u is closer to old %u (%g) than to "
                                  "old %u (%g)",
                                  j, a, C[(size_t)a * k + j], j,
                                  C[(size_t)j * k + j]);
            }
            /* The seed's own order was not the live one: the matching
             * moved columns (or this test would not test it). */
            cr_assert_gt(st.moved, 0);
        }
        if (!n && st.refreshes == f0)
            break;
    }
    cr_assert(restarted, "no restart replaced W");
    free(before);
    model_free(m);
}

/* The warm-up's seed replaces a W that refreshes have already fitted to
 * the data (a slow stream: refresh_events before warmup_events): the
 * identity is the best assignment of the old topics to the new. */
Test(model, the_warmup_seed_keeps_each_topic_id)
{
    const uint32_t k = 6;
    struct model *m = model_with(k, 0, 30000, 2000);
    struct planted p;
    planted_init(&p, 1500, 300, 6, 0.0, 3);
    fold_planted(m, &p, 29999, 1000);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_gt(st.refreshes, 10);
    cr_assert_eq(st.reseeded, 0);
    uint32_t M = model_item_slots(m);
    float *before = malloc((size_t)M * k * sizeof(float));
    memcpy(before, model_W(m), (size_t)M * k * sizeof(float));
    fold_planted(m, &p, 1, 40000);
    planted_free(&p);
    model_stats(m, &st);
    cr_assert_eq(st.reseeded, k, "no warm-up seed");
    double C[36];
    uint32_t to[6];
    column_cosines(k, M, before, model_W(m), C);
    cr_assert_eq(match_assign(k, C, to), 0);
    /* The random start's refreshes may have merged two planted topics
     * and split another, which the seed undoes: then no order keeps every
     * column closest to its predecessor, and the best assignment as a
     * whole is what ids can keep. */
    for (uint32_t j = 0; j < k; j++)
        cr_assert_eq(to[j], j, "old topic %u continues as %u", j, to[j]);
    cr_assert_gt(st.moved, 0, "the seed's own order was the live one");
    free(before);
    model_free(m);
}

/* Relabelling the topics moves numbers and computes none: the loss, each
 * user's h, W, A and B are the same bits in the new order, the state
 * still passes model_load's checks, users whose segment index changed
 * are marked, and undoing the relabelling gives a model that goes on bit
 * for bit like one never relabelled. With heavy users (the W^T v cache
 * and held shares) and H's column scales in play. */
Test(model, relabelling_topics_changes_nothing_but_the_order)
{
    const uint32_t k = 6;
    struct model *m = model_with(k, 0, 2000, 3000);
    struct planted p;
    planted_init(&p, 300, 200, 6, 0.05, 8);
    fold_planted(m, &p, 20000, 1000);
    model_refresh(m);
    fold_planted(m, &p, 500, 21000);
    struct buf s0 = save(m);
    struct model *twin = model_load(s0.p, s0.n, NULL);
    cr_assert_not_null(twin);
    int scaled = 0, held = 0;
    for (uint32_t j = 0; j < k; j++)
        scaled |= m->hs[j] != 1;
    for (uint32_t u = 0; u < model_user_slots(m); u++)
        held |= (m->u[u].flags & MODEL_U_GB) != 0;
    cr_assert(scaled && held && m->bc_n > 0, "scales %d, held %d, cache %u",
              scaled, held, m->bc_n);

    const uint32_t src[6] = {4, 0, 5, 2, 1, 3}, inv[6] = {1, 4, 3, 5, 0, 2};
    const uint32_t M = model_item_slots(m), U = model_user_slots(m);
    struct model_stats a, b;
    model_stats(m, &a);
    double *A0 = malloc(36 * sizeof(double)), *A1 = malloc(36 * sizeof(double));
    double *B0 = malloc((size_t)M * k * sizeof(double));
    double *B1 = malloc((size_t)M * k * sizeof(double));
    float *W0 = malloc((size_t)M * k * sizeof(float));
    struct model_user_view *v0 = malloc(U * sizeof(*v0));
    model_A(m, A0);
    model_B(m, B0);
    memcpy(W0, model_W(m), (size_t)M * k * sizeof(float));
    for (uint32_t u = 0; u < U; u++)
        cr_assert_eq(model_user_get(m, u, &v0[u]), 0);

    model_epoch_set(m, model_epoch(m) + 1);
    model__topics_permute(m, src);
    model_stats(m, &b);
    /* The loss is the identity ||V||^2 - 2 <W, B> + <G, A> over the new
     * order: the same terms summed in another order, equal to rounding. */
    cr_assert(a.norm == b.norm);
    cr_assert_float_eq(a.loss, b.loss, 1e-12 * a.norm);
    cr_assert_float_eq(a.rel_loss, b.rel_loss, 1e-12);
    cr_assert_eq(b.moved - a.moved, 6);
    model_A(m, A1);
    model_B(m, B1);
    for (uint32_t j = 0; j < k; j++) {
        for (uint32_t l = 0; l < k; l++)
            cr_assert(A1[j * k + l] == A0[src[j] * k + src[l]]);
        for (uint32_t i = 0; i < M; i++) {
            cr_assert(model_W(m)[(size_t)i * k + j] ==
                      W0[(size_t)i * k + src[j]]);
            cr_assert(B1[(size_t)i * k + j] == B0[(size_t)i * k + src[j]]);
        }
    }
    size_t marked = 0;
    for (uint32_t u = 0; u < U; u++) {
        struct model_user_view v;
        cr_assert_eq(model_user_get(m, u, &v), 0);
        for (uint32_t j = 0; j < k; j++)
            cr_assert(v.h[j] == v0[u].h[src[j]], "user %u topic %u", u, j);
        cr_assert_eq(src[v.segment], v0[u].segment);
        cr_assert(v.share == v0[u].share);
        if (v.segment != v0[u].segment) {
            cr_assert_eq(v.changed, model_epoch(m), "user %u not marked", u);
            marked++;
        }
    }
    cr_assert_gt(marked, 0);
    struct buf s1 = save(m);
    struct model *re = model_load(s1.p, s1.n, NULL);
    cr_assert_not_null(re, "the relabelled state fails model_load's checks");
    model_free(re);

    /* Undone, it goes on like the twin. */
    model__topics_permute(m, inv);
    for (int t = 0; t < 2; t++) {
        struct model *x = t ? twin : m;
        struct planted q;
        planted_init(&q, 300, 200, 6, 0.05, 9);
        fold_planted(x, &q, 3000, 30000);
        refine_converge(x, 200);
        planted_free(&q);
    }
    model_stats(m, &a);
    model_stats(twin, &b);
    cr_assert(a.loss == b.loss && a.rel_loss == b.rel_loss);
    cr_assert_eq(memcmp(model_W(m), model_W(twin),
                        (size_t)model_item_slots(m) * k * sizeof(float)),
                 0);
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view x, y;
        int rx = model_user_get(m, u, &x), ry = model_user_get(twin, u, &y);
        cr_assert_eq(rx, ry);
        if (!rx)
            cr_assert_eq(memcmp(x.h, y.h, k * sizeof(float)), 0, "user %u", u);
    }
    planted_free(&p);
    free(s0.p);
    free(s1.p);
    free(A0);
    free(A1);
    free(B0);
    free(B1);
    free(W0);
    free(v0);
    model_free(m);
    model_free(twin);
}

/* A re-seed that brings the same topics in another order changes
 * nothing: the matching puts every column back, so W, the loss and every
 * later step stay bit for bit those of a twin re-seeded with the columns
 * in their own order. */
Test(model, reseed_with_the_same_topics_changes_nothing)
{
    struct model *m = six_bundles(10000, NULL);
    refine_converge(m, 1000);
    struct buf s0 = save(m);
    struct model *twin = model_load(s0.p, s0.n, NULL);
    cr_assert_not_null(twin);
    const uint32_t k = 6, M = model_item_slots(m);
    const uint32_t perm[6] = {3, 5, 0, 1, 4, 2};
    float *W0 = malloc((size_t)M * k * sizeof(float));
    float *Wn = malloc((size_t)M * k * sizeof(float));
    memcpy(W0, model_W(m), (size_t)M * k * sizeof(float));
    for (uint32_t i = 0; i < M; i++)
        for (uint32_t j = 0; j < k; j++)
            Wn[(size_t)i * k + j] = W0[(size_t)i * k + perm[j]];
    struct model_stats a, b;
    model_stats(m, &a);
    model__w_install(m, Wn, 1);
    model_stats(m, &b);
    cr_assert_eq(memcmp(model_W(m), W0, (size_t)M * k * sizeof(float)), 0,
                 "the re-seeded columns are not back at their ids");
    cr_assert_eq(b.reseeded - a.reseeded, k);
    cr_assert_eq(b.moved - a.moved, 5, "perm has one fixed point: %lu moved",
                 (unsigned long)(b.moved - a.moved));
    cr_assert(a.rel_loss == b.rel_loss && a.loss == b.loss);
    /* The twin's re-seed brings the same columns in their own order. */
    model__w_install(twin, W0, 1);
    /* Both go on alike: more events, refinement, and the same bytes. */
    for (int t = 0; t < 2; t++) {
        struct model *x = t ? twin : m;
        struct trng r = {99};
        struct planted p;
        planted_init(&p, 1500, 300, 6, 0.0, 3);
        for (int e = 0; e < 3000; e++) {
            uint32_t u, i;
            planted_event(&p, &u, &i);
            cr_assert_eq(fold(x, u, i, 1 + trng_unif(&r), 40000 + e), 0);
        }
        refine_converge(x, 1000);
        planted_free(&p);
    }
    struct buf s1 = save(m), s2 = save(twin);
    cr_assert(bufs_equal(&s1, &s2), "the re-seeded model took another path");
    free(s0.p);
    free(s1.p);
    free(s2.p);
    free(W0);
    free(Wn);
    model_free(m);
    model_free(twin);
}

/* Continuity against an earlier copy of W: 1 against itself, the cosine
 * of the two columns after the model moved on (with new items, which the
 * earlier copy has no rows for), 0 for an empty earlier version. */
Test(model, topic_continuity_is_the_cosine_to_the_earlier_version)
{
    struct model *m = six_bundles(10000, NULL);
    refine_converge(m, 1000);
    const uint32_t k = 6, M0 = model_item_slots(m);
    double cont[6], C[36];
    float *W0 = malloc((size_t)M0 * k * sizeof(float));
    memcpy(W0, model_W(m), (size_t)M0 * k * sizeof(float));
    model_topic_continuity(m, W0, M0, cont);
    for (uint32_t j = 0; j < k; j++)
        cr_assert_float_eq(cont[j], 1.0, 1e-12, "topic %u: %.17g", j, cont[j]);
    struct trng r = {5};
    for (int e = 0; e < 2000; e++)
        cr_assert_eq(fold(m, trng_below(&r, 1500), 300 + trng_below(&r, 40),
                          1.0, 50000 + e),
                     0);
    model_refresh(m);
    const uint32_t M = model_item_slots(m);
    cr_assert_gt(M, M0);
    float *Wp = calloc((size_t)M * k, sizeof(float));
    memcpy(Wp, W0, (size_t)M0 * k * sizeof(float));
    column_cosines(k, M, Wp, model_W(m), C);
    model_topic_continuity(m, W0, M0, cont);
    int moved = 0;
    for (uint32_t j = 0; j < k; j++) {
        cr_assert_float_eq(cont[j], C[(size_t)j * k + j], 1e-9, "topic %u", j);
        moved |= cont[j] < 0.999999;
    }
    cr_assert(moved, "the new items changed no topic");
    model_topic_continuity(m, Wp, 0, cont);
    for (uint32_t j = 0; j < k; j++)
        cr_assert_eq(cont[j], 0.0);
    free(W0);
    free(Wp);
    model_free(m);
}

/* Drives refinement until a restart is under way; returns the state saved
 * just before the call that began it. */
static struct buf refine_until_restart(struct model *m)
{
    for (int r = 0; r < 100000; r++) {
        struct buf s = save(m);
        model_refine(m, SIZE_MAX);
        if (m->rs)
            return s;
        free(s.p);
    }
    cr_assert_fail("no restart began");
    return (struct buf){0};
}

Test(model, an_abandoned_restart_leaves_no_trace)
{
    struct model *a = six_bundles(0, NULL);
    struct buf s = refine_until_restart(a);
    for (int c = 0; c < 5; c++)
        cr_assert_gt(model_refine(a, 300), 0);
    cr_assert_not_null(a->rs);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    /* An event abandons it; the live model is as if it never began. */
    cr_assert_eq(fold(a, 5, 7, 1.0, 50000), 0);
    cr_assert_null(a->rs);
    cr_assert_eq(fold(b, 5, 7, 1.0, 50000), 0);
    struct buf sa = save(a), sb = save(b);
    cr_assert(bufs_equal(&sa, &sb));
    /* So do a refresh and an expiry that forgets something. */
    free(sa.p);
    free(sb.p);
    free(s.p);
    model_free(a);
    model_free(b);

    struct model_params p;
    model_params_default(&p);
    p.k = 6;
    p.warmup_events = 0;
    p.ttl_ms = 30000;
    a = model_new(&p);
    struct planted pl;
    planted_init(&pl, 1500, 300, 6, 0.0, 3);
    fold_planted(a, &pl, 40000, 1000);
    planted_free(&pl);
    s = refine_until_restart(a);
    model_refresh(a);
    cr_assert_null(a->rs);
    free(s.p);
    s = refine_until_restart(a);
    cr_assert_eq(model_expire(a, 1000), 0);
    cr_assert_not_null(a->rs, "an expiry that forgets nothing keeps it");
    cr_assert_gt(model_expire(a, 1000 + 30000 + 100), 0);
    cr_assert_null(a->rs);
    free(s.p);
    model_free(a);
}

Test(model, a_restart_survives_save_and_load)
{
    struct model *a = six_bundles(0, NULL);
    struct buf s0 = refine_until_restart(a);
    for (int c = 0; c < 40; c++)
        model_refine(a, 500);
    cr_assert_not_null(a->rs);
    /* Saved in the middle of it: the loaded model begins it again and
     * reaches the same model. */
    struct buf s = save(a);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    refine_converge(a, 100000);
    refine_converge(b, 100000);
    struct buf sa = save(a), sb = save(b);
    cr_assert(bufs_equal(&sa, &sb), "diverged after a load mid-restart");
    struct model_stats st;
    model_stats(b, &st);
    cr_assert_eq(st.restarts, 1);
    free(s0.p);
    free(s.p);
    free(sa.p);
    free(sb.p);
    model_free(a);
    model_free(b);
}

Test(model, restarts_again_once_the_data_doubles)
{
    struct model *m = model_with(4, 0, 500, 0);
    struct planted p;
    planted_init(&p, 300, 60, 4, 0.05, 21);
    fold_planted(m, &p, 4000, 0);
    refine_converge(m, 100000);
    cr_assert_eq(m->restart_events, 4000);
    fold_planted(m, &p, 3000, 4000);
    refine_converge(m, 100000);
    cr_assert_eq(m->restart_events, 4000, "7000 < 2 x 4000: no restart");
    fold_planted(m, &p, 1000, 7000);
    refine_converge(m, 100000);
    cr_assert_eq(m->restart_events, 8000);
    assert_stats_exact(m, STATS_RTOL);
    planted_free(&p);
    model_free(m);
}

/* ---- determinism and saved state ------------------------------------ */

Test(model, same_events_same_bits)
{
    struct model *a = model_with(5, 3000, 800, 1500);
    struct model *b = model_with(5, 3000, 800, 1500);
    stream_mixed(a, 5000, 61, 1);
    stream_mixed(b, 5000, 61, 1);
    model_refine(a, 100);
    model_refine(b, 100);
    struct buf sa = save(a), sb = save(b);
    cr_assert(bufs_equal(&sa, &sb));
    free(sa.p);
    free(sb.p);
    model_free(a);
    model_free(b);
}

Test(model, batch_fold_equals_sequential_folds)
{
    struct model *a = model_with(5, 3000, 700, 1300);
    struct model *b = model_with(5, 3000, 700, 1300);
    struct planted p;
    planted_init(&p, 300, 80, 5, 0.05, 66);
    enum { N = 4000 };
    static char ids[N][2][32];
    static struct model_event ev[N];
    int rc[N];
    for (int e = 0; e < N; e++) {
        uint32_t u, i;
        planted_event(&p, &u, &i);
        int ul = snprintf(ids[e][0], 32, "user-%u", u);
        int il = snprintf(ids[e][1], 32, "item-%u", i);
        ev[e] = (struct model_event){ids[e][0],  (size_t)ul,    ids[e][1],
                                     (size_t)il, 0.5 + (e % 7), 1000 + e};
    }
    /* Refused events in the middle, a user seen twice in a row, runs of
     * one user's events (one across a batch's end, one with a refused
     * event after its first), and a run cut by a refused one. */
    ev[10].weight = NAN;
    ev[20].user_len = 0;
    ev[30].item_len = MODEL_ID_MAX + 1;
    ev[41] = ev[40];
    for (int e = 101; e < 140; e++)
        ev[e].user = ev[100].user, ev[e].user_len = ev[100].user_len;
    for (int e = 660; e < 680; e++)
        ev[e].user = ev[659].user, ev[e].user_len = ev[659].user_len;
    for (int e = 901; e < 906; e++)
        ev[e].user = ev[900].user, ev[e].user_len = ev[900].user_len;
    ev[903].weight = -1;
    size_t ok = 0;
    for (int e = 0; e < N; e++)
        ok += model_fold_next(a, &ev[e],
                              (e + 1) % 333 && e + 1 < N ? &ev[e + 1] : NULL) ==
              0;
    size_t done = 0;
    for (int e = 0; e < N; e += 333)
        done += model_fold_batch(b, ev + e, e + 333 <= N ? 333 : N - e, rc + e);
    cr_assert_eq(done, ok);
    cr_assert_eq(ok, N - 4);
    cr_assert_eq(rc[903], -EINVAL);
    cr_assert_eq(rc[10], -EINVAL);
    cr_assert_eq(rc[20], -EINVAL);
    cr_assert_eq(rc[30], -ENAMETOOLONG);
    cr_assert_eq(model_fold_batch(b, ev, 0, NULL), 0);
    struct buf sa = save(a), sb = save(b);
    cr_assert(bufs_equal(&sa, &sb), "batch and sequential folds differ");
    free(sa.p);
    free(sb.p);
    planted_free(&p);
    model_free(a);
    model_free(b);
}

/* A run of one user's events folded with model_fold_next: one solve for
 * the run, the statistics and the reported loss exact all along (every
 * event of a run but the last leaves h as it was), and the run's end
 * gives the h a fold of the whole profile gives. */
Test(model, a_run_of_one_users_events_is_solved_once_and_stays_exact)
{
    int64_t hls[2] = {0, 4000};
    for (int c = 0; c < 2; c++) {
        struct model *m = model_with(5, hls[c], 1000, 3000);
        struct model *r = model_with(5, hls[c], 1000, 3000);
        stream_mixed(m, 3000, 31 + c, c);
        stream_mixed(r, 3000, 31 + c, c);
        char is[40][32];
        struct model_event ev[40];
        for (int e = 0; e < 40; e++) {
            int il = snprintf(is[e], 32, "item-%d", (e * 7) % 120);
            ev[e] = (struct model_event){"user-7", 6, is[e], (size_t)il,
                                         0.5 + (e % 3), 200000 + 10 * e};
        }
        struct model_stats st;
        double loss, norm;
        for (int e = 0; e < 40; e++) {
            uint64_t wm = model_work(m), wr = model_work(r);
            uint64_t rm = model_refreshes(m);
            cr_assert_eq(model_fold_next(m, &ev[e], e + 1 < 40 ? &ev[e + 1]
                                                               : NULL),
                         0);
            cr_assert_eq(model_fold(r, ev[e].user, ev[e].user_len, ev[e].item,
                                    ev[e].item_len, ev[e].weight, ev[e].ts),
                         0);
            if (e + 1 < 40 && model_refreshes(m) == rm)
                cr_assert_lt(model_work(m) - wm, model_work(r) - wr,
                             "event %d: a deferred event did a solve's work",
                             e);
            if (e % 9 == 0) {
                assert_stats_exact(m, STATS_RTOL);
                model_stats(m, &st);
                direct_loss(m, &loss, &norm);
                cr_assert_float_eq(st.loss, loss, 1e-6 * norm,
                                   "event %d: loss %g vs %g", e, st.loss, loss);
            }
        }
        assert_stats_exact(m, STATS_RTOL);
        model_stats(m, &st);
        cr_assert_eq(st.stale, 0, "the run's last event solves its user");
        /* Both end on a solve of the same profile against the same W. */
        cr_assert_eq(model_refreshes(m), model_refreshes(r));
        struct model_user_view vm, vr;
        int64_t um = model_user_find(m, "user-7", 6);
        int64_t ur = model_user_find(r, "user-7", 6);
        cr_assert(um >= 0 && ur >= 0);
        cr_assert_eq(model_user_get(m, (uint32_t)um, &vm), 0);
        cr_assert_eq(model_user_get(r, (uint32_t)ur, &vr), 0);
        cr_assert_eq(vm.nprofile, vr.nprofile);
        for (int j = 0; j < 5; j++)
            cr_assert_float_eq(vm.h[j], vr.h[j], 1e-3 * (fabsf(vr.h[j]) + 1e-3),
                               "h[%d] %g vs %g", j, vm.h[j], vr.h[j]);
        /* A run whose next event never comes: the user is left stale,
         * and the idle refinement solves it. */
        struct model_event cut = {"user-9", 6, "item-3", 6, 2.0, 300000};
        struct model_event never = {"user-9", 6, "item-4", 6, 1.0, 300001};
        cr_assert_eq(model_fold_next(m, &cut, &never), 0);
        model_stats(m, &st);
        cr_assert_eq(st.stale, 1);
        assert_stats_exact(m, STATS_RTOL);
        cr_assert_eq(model_refine(m, 1000), 1);
        model_stats(m, &st);
        cr_assert_eq(st.stale, 0);
        model_free(m);
        model_free(r);
    }
}

/* A run's solve is never left to a held-out event, which reaches no
 * profile: with no refresh, every user ends solved. */
Test(model, a_run_never_waits_on_a_held_out_event)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 4;
    p.warmup_events = 0;
    p.refresh_events = 0;
    p.holdout = 0.4;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    enum { N = 3000 };
    static char ids[N][2][32];
    static struct model_event ev[N];
    for (int e = 0; e < N; e++) {
        int ul = snprintf(ids[e][0], 32, "user-%d", e / 6);
        int il = snprintf(ids[e][1], 32, "item-%d", (e * 13) % 97);
        ev[e] = (struct model_event){ids[e][0],  (size_t)ul, ids[e][1],
                                     (size_t)il, 1.0,        1000 + e};
    }
    for (int e = 0; e < N; e += 500)
        cr_assert_eq(model_fold_batch(m, ev + e, 250, NULL), 250);
    for (int e = 250; e < N; e += 500)
        for (int i = e; i < e + 250; i++)
            cr_assert_eq(model_fold_next(m, &ev[i], i + 1 < e + 250 ? &ev[i + 1]
                                                                    : NULL),
                         0);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_gt(st.holdout_events, N / 5);
    cr_assert_eq(st.stale, 0, "%" PRIu64 " users left unsolved", st.stale);
    model_free(m);
}

Test(model, save_load_round_trip_behaves_identically)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 5;
    p.half_life_ms = 3000;
    p.ttl_ms = 4000;
    p.warmup_events = 800;
    p.refresh_events = 1500;
    struct model *a = model_new(&p);
    stream_mixed(a, 4000, 71, 1);
    struct model_stats st;
    model_stats(a, &st);
    model_expire(a, st.now - 2000);
    model_refine(a, 77);
    struct buf s1 = save(a);
    const char *err = "unset";
    struct model *b = model_load(s1.p, s1.n, &err);
    cr_assert_not_null(b, "load: %s", err);
    cr_assert_null(err);
    struct buf s2 = save(b);
    cr_assert(bufs_equal(&s1, &s2), "save(load(save(m))) differs");
    /* Both go on identically: events, refines, refreshes, expiry. */
    stream_mixed(a, 3000, 72, 1);
    stream_mixed(b, 3000, 72, 1);
    model_refine(a, 500);
    model_refine(b, 500);
    model_stats(a, &st);
    model_expire(a, st.now);
    model_expire(b, st.now);
    model_refresh(a);
    model_refresh(b);
    struct buf t1 = save(a), t2 = save(b);
    cr_assert(bufs_equal(&t1, &t2), "diverged after load");
    struct model_stats sa, sb;
    model_stats(a, &sa);
    model_stats(b, &sb);
    cr_assert(sa.rel_loss == sb.rel_loss && sa.events == sb.events);
    free(s1.p);
    free(s2.p);
    free(t1.p);
    free(t2.p);
    model_free(a);
    model_free(b);
}

static struct buf small_state(void)
{
    struct model *m = model_with(3, 2000, 300, 600);
    stream_mixed(m, 900, 81, 1);
    struct buf b = save(m);
    model_free(m);
    return b;
}

Test(model, load_refuses_truncation_and_flipped_bytes)
{
    struct buf s = small_state();
    const char *err = NULL;
    for (size_t cut = 0; cut < s.n; cut += (cut < 512 ? 1 : 37)) {
        struct model *m = model_load(s.p, cut, &err);
        cr_assert_null(m, "accepted a state cut at %zu of %zu", cut, s.n);
        cr_assert_not_null(err);
    }
    uint8_t *c = malloc(s.n);
    for (size_t off = 0; off < s.n; off += (off < 512 ? 1 : 29)) {
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(c, s.p, s.n);
            c[off] ^= (uint8_t)(1u << bit);
            struct model *m = model_load(c, s.n, &err);
            cr_assert_null(m, "accepted a flip at %zu", off);
            cr_assert_not_null(err);
        }
    }
    cr_assert_null(model_load(NULL, 0, &err));
    cr_assert_null(model_load("hello world, not a model", 24, &err));
    cr_assert_str_eq(err, "not a model state");
    free(c);
    free(s.p);
}

/* A state with a valid checksum but inconsistent content is refused by
 * the structural checks. */
static const char *load_patched(const struct buf *s, size_t off,
                                const void *bytes, size_t n)
{
    uint8_t *c = malloc(s->n);
    memcpy(c, s->p, s->n);
    memcpy(c + off, bytes, n);
    uint64_t sum = model__state_checksum(c, s->n - 8);
    memcpy(c + s->n - 8, &sum, 8);
    const char *err = NULL;
    struct model *m = model_load(c, s->n, &err);
    free(c);
    if (m) {
        model_free(m);
        return NULL;
    }
    return err;
}

/* The state's refresh work counters (version 6) lie just before the
 * generator's state and A, at this offset: the older layouts lack them. */
#define STATE_WORK_OFF 244

/* s in the layout of version 4 or 5: without the work counters and
 * without the trailing evictions (which must be none: f64 0, u32 0). */
static struct buf state_older(const struct buf *s, uint32_t version)
{
    static const uint8_t none[12];
    cr_assert_geq(s->n, STATE_WORK_OFF + 16 + 20);
    cr_assert(!memcmp(s->p + s->n - 20, none, 12), "evictions in the state");
    struct buf o = {.n = s->n - 16 - 12};
    o.p = malloc(o.n);
    memcpy(o.p, s->p, STATE_WORK_OFF);
    memcpy(o.p + STATE_WORK_OFF, s->p + STATE_WORK_OFF + 16,
           s->n - STATE_WORK_OFF - 16 - 20);
    memcpy(o.p + 8, &version, 4);
    uint64_t sum = model__state_checksum(o.p, o.n - 8);
    memcpy(o.p + o.n - 8, &sum, 8);
    return o;
}

/* Version 5 is version 6 without the refresh work counters and the
 * evictions: it loads, with them at zero, and the model goes on (its next
 * automatic refresh by work comes when its counters say so). */
Test(model, version_5_state_loads_with_work_counters_at_zero)
{
    struct model *m = model_with(6, 1000000, 500, 1000000);
    stream_heavy(m, 1500, 97, 1);
    cr_assert_gt(m->work, 0);
    struct buf s = save(m);
    cr_assert_eq(memcmp(s.p + STATE_WORK_OFF, &m->work, 8), 0);
    struct buf o = state_older(&s, 5);
    const char *err = NULL;
    struct model *b = model_load(o.p, o.n, &err);
    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(b->work, 0);
    cr_assert_eq(b->sync_rows, 0);
    cr_assert_eq(b->refreshes, m->refreshes);
    cr_assert_eq(b->evicted_weight, 0);
    stream_heavy(b, 500, 98, 1);
    assert_stats_exact(b, STATS_RTOL);
    model_free(b);
    free(o.p);
    free(s.p);
    model_free(m);
}

/* Version 4 is version 5 without shares held with g: such a state still
 * loads, one with them is refused. */
Test(model, version_4_state_loads_without_held_shares)
{
    struct model *m = model_with(6, 0, 500, 1000000);
    stream_heavy(m, 4000, 99, 1);
    model_refresh(m);
    cr_assert_eq(users_held_with_g(m), 0);
    struct buf s6 = save(m), s = state_older(&s6, 4);
    uint32_t v = 4;
    cr_assert_null(load_patched(&s, 8, &v, 4));
    v = 6; /* the older layout read as the newer one */
    cr_assert_not_null(load_patched(&s, 8, &v, 4));
    v = 4;
    stream_heavy(m, 500, 100, 1);
    cr_assert_gt(users_held_with_g(m), 0);
    struct buf t6 = save(m), t = state_older(&t6, 4);
    cr_assert_str_eq(load_patched(&t, 8, &v, 4), "bad user flags");
    free(s.p);
    free(t.p);
    free(s6.p);
    free(t6.p);
    model_free(m);
}

Test(model, load_checks_structure_behind_the_checksum)
{
    struct buf s = small_state();
    /* Sanity: re-checksummed unchanged state loads. */
    uint32_t v = 6;
    cr_assert_null(load_patched(&s, 8, &v, 4));
    v = 3; /* the layout before the column scales of h */
    cr_assert_str_eq(load_patched(&s, 8, &v, 4),
                     "unsupported model state version");
    v = 10;
    cr_assert_str_eq(load_patched(&s, 8, &v, 4),
                     "unsupported model state version");
    v = 8; /* the variant's layout: the held-out share it needs is missing */
    cr_assert_str_eq(load_patched(&s, 8, &v, 4), "truncated");
    v = 9; /* robust = l21's layout: the same */
    cr_assert_str_eq(load_patched(&s, 8, &v, 4), "truncated");
    v = 6;
    cr_assert_str_eq(load_patched(&s, 12, &v, 4), "bad model parameters");
    v = 0;
    cr_assert_str_eq(load_patched(&s, 16, &v, 4), "bad model parameters");
    /* Every 4-byte word replaced by patterns: never a crash, and whatever
     * loads must save back to itself. */
    uint32_t pats[5] = {0xffffffffu, 0x7fc00000u /* NaN */,
                        0xff800000u /* -inf */, 0x80000001u, 0x00010000u};
    int refused = 0;
    for (size_t off = 0; off + 4 <= s.n - 8; off += 4) {
        for (int q = 0; q < 5; q++) {
            uint8_t *c = malloc(s.n);
            memcpy(c, s.p, s.n);
            memcpy(c + off, &pats[q], 4);
            uint64_t sum = model__state_checksum(c, s.n - 8);
            memcpy(c + s.n - 8, &sum, 8);
            const char *err = NULL;
            struct model *m = model_load(c, s.n, &err);
            if (!m) {
                refused++;
                cr_assert_not_null(err);
            } else {
                struct buf r = save(m);
                cr_assert_eq(r.n, s.n);
                cr_assert(!memcmp(r.p, c, s.n),
                          "accepted state at %zu "
                          "does not round-trip",
                          off);
                free(r.p);
                model_free(m);
            }
            free(c);
        }
    }
    cr_assert_gt(refused, 100);
    free(s.p);
}

/* Offset of the only occurrence of pat (n bytes) in the state. */
static size_t find_once(const struct buf *s, const void *pat, size_t n)
{
    size_t at = SIZE_MAX;
    for (size_t o = 0; o + n <= s->n; o++) {
        if (memcmp(s->p + o, pat, n))
            continue;
        cr_assert_eq(at, SIZE_MAX, "pattern found twice (%zu, %zu)", at, o);
        at = o;
    }
    cr_assert_neq(at, SIZE_MAX, "pattern not found");
    return at;
}

Test(model, empty_model_saves_and_loads)
{
    /* No item, no user: the W and B arrays are NULL and of length 0. */
    struct model *m = model_with(4, 0, 0, 0);
    struct buf s = save(m);
    const char *err = "unset";
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "load: %s", err);
    struct buf t = save(b);
    cr_assert(bufs_equal(&s, &t));
    cr_assert_eq(fold(b, 1, 1, 1.0, 5), 0);
    free(s.p);
    free(t.p);
    model_free(b);
    model_free(m);
}

/* A crafted state with valid checksums and numbers the model can never
 * produce (each found through its bytes) is refused, not run into
 * infinities at the next fold. */
Test(model, load_refuses_absurd_magnitudes)
{
    struct model *m = model_with(3, 2000, 300, 600);
    stream_mixed(m, 900, 81, 1);
    cr_assert_eq(model_fold(m, "probe", 5, "item-1", 6, 3.25, 10000), 0);
    int64_t pu = model_user_find(m, "probe", 5);
    struct model_user_view v;
    cr_assert_eq(model_user_get(m, (uint32_t)pu, &v), 0);
    float h[3];
    memcpy(h, m->H + (size_t)pu * 3, sizeof(h)); /* stored, scaled */
    double a0 = m->A[0], loss = m->loss_s, norm = m->norm_s;
    double b0 = m->B[(size_t)model_item_slots(m) / 2 * 3];
    struct buf s = save(m);
    size_t off_h = find_once(&s, h, sizeof(h));
    size_t off_a = find_once(&s, &a0, 8);
    size_t off_b = find_once(&s, &b0, 8);
    size_t off_l = find_once(&s, &loss, 8);
    size_t off_n = find_once(&s, &norm, 8);
    cr_assert_eq(off_a, 292); /* the layout no_profile_... relies on */
    /* h, then the one profile item (u32) and its value (f32). */
    size_t off_v = off_h + sizeof(h) + 4;
    float f;
    memcpy(&f, s.p + off_v, 4);
    cr_assert_float_eq(f, 3.25, 0);
    cr_assert_null(load_patched(&s, off_v, &f, 4));

    f = 5.5e19f;
    cr_assert_str_eq(load_patched(&s, off_v, &f, 4), "bad profile value");
    f = 1e35f;
    cr_assert_str_eq(load_patched(&s, off_h, &f, 4), "bad h");
    double d = 6e15;
    cr_assert_str_eq(load_patched(&s, off_a, &d, 8),
                     "A does not match the users");
    d = 1e39;
    cr_assert_str_eq(load_patched(&s, off_b, &d, 8),
                     "B does not match the users");
    d = 2.5e64;
    cr_assert_str_eq(load_patched(&s, off_l, &d, 8),
                     "loss sums do not match the users");
    d = 4e-310;
    cr_assert_str_eq(load_patched(&s, off_n, &d, 8),
                     "loss sums do not match the users");
    d = -1;
    cr_assert_str_eq(load_patched(&s, off_l, &d, 8),
                     "loss sums do not match the users");
    /* bcol (k doubles) follows A and G; 2e-312 is a denormal. */
    size_t off_bcol = off_a + 2 * 9 * 8;
    d = 2e-312;
    cr_assert_str_eq(load_patched(&s, off_bcol, &d, 8), "bad statistics");
    d = 2e179;
    cr_assert_str_eq(load_patched(&s, off_bcol, &d, 8), "bad statistics");
    /* G follows A. */
    d = 1e3;
    cr_assert_str_eq(load_patched(&s, off_a + 9 * 8, &d, 8),
                     "G does not match W");
    free(s.p);
    model_free(m);
}

/* With no profile left (weight-0 events only, or every item forgotten
 * while the users stay) the statistics are exactly zero, and a state
 * that holds anything else there is refused. */
Test(model, no_profile_means_zero_statistics)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 3;
    p.ttl_ms = 5000;
    p.warmup_events = 0;
    struct model *m = model_new(&p);
    for (uint32_t u = 0; u < 20; u++)
        cr_assert_eq(fold(m, u, u % 7, 1.0 + u, 0), 0);
    model_refresh(m);
    refine_converge(m, 20);
    for (uint32_t u = 0; u < 20; u++)
        cr_assert_eq(fold(m, u, 100, 0.0, 10000), 0);
    cr_assert_eq(model_expire(m, 10000), 7);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(st.users, 20);
    cr_assert_eq(st.items, 1);
    cr_assert(st.loss == 0 && st.norm == 0);
    double A[9];
    model_A(m, A);
    for (int i = 0; i < 9; i++)
        cr_assert(A[i] == 0, "A[%d] = %g", i, A[i]);
    struct buf s = save(m);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    model_free(b);
    /* A = 0 exactly in the state: make its first entry a residue. */
    double zero = 0, tiny = 1e-20;
    size_t off_a = 292;
    cr_assert(!memcmp(s.p + off_a, &zero, 8));
    cr_assert_str_eq(load_patched(&s, off_a, &tiny, 8),
                     "statistics without data");
    free(s.p);
    model_free(m);
}

/* A profile value saturates at MODEL_VALUE_MAX, so that the model never
 * holds what model_load would refuse. */
Test(model, profile_values_saturate)
{
    struct model *m = model_with(2, 0, 0, 0);
    for (int e = 0; e < 1100000; e++)
        cr_assert_eq(model_fold(m, "u", 1, "a", 1, MODEL_WEIGHT_MAX, e), 0);
    cr_assert_float_eq(profile_value(m, "u", "a"), MODEL_VALUE_MAX, 0);
    struct model_user_view v;
    cr_assert_eq(model_user_get(m, 0, &v), 0);
    cr_assert(isfinite(v.h[0]) && isfinite(v.h[1]));
    struct buf s = save(m);
    const char *err = NULL;
    struct model *b = model_load(s.p, s.n, &err);
    cr_assert_not_null(b, "%s", err);
    model_free(b);
    free(s.p);
    model_free(m);
}

struct failing {
    size_t left;
};

static int failing_write(void *ctx, const void *buf, size_t len)
{
    struct failing *f = ctx;
    if (len > f->left)
        return -ENOSPC;
    f->left -= len;
    return 0;
}

Test(model, save_reports_writer_errors)
{
    struct model *m = model_with(3, 0, 0, 0);
    stream_mixed(m, 500, 91, 0);
    struct failing f = {.left = 100};
    cr_assert_eq(model_save(m, failing_write, &f), -ENOSPC);
    model_free(m);
}

Test(model, memory_accounting)
{
    struct model *m = model_with(16, 0, 0, 0);
    stream_mixed(m, 2000, 92, 0);
    struct model_memory mm;
    model_memory(m, &mm);
    cr_assert_gt(mm.users, 0);
    cr_assert_gt(mm.items, 0);
    cr_assert_gt(mm.profiles, 0);
    cr_assert_gt(mm.profile_entries, 0);
    cr_assert_geq(mm.total, mm.users + mm.items + mm.profiles);
    model_free(m);
}
