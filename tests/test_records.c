/* test_records.c -- the published records and the dense snapshot: every
 * field and its msgpack type against docs/design.md §3, the snapshot of a
 * small real model against the model, in memory, streamed and as a file,
 * the snapshot reader on good and corrupt input, and the JSON dump. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>

#include "records.h"

/* ---- a small real model: 3 planted topics of 8 items, 48 users ---- */

#define K      3
#define NITEMS 24
#define NUSERS 48

static uint32_t small_robust = MODEL_ROBUST_NONE;  /* model.robust */
static uint32_t small_loss = MODEL_LOSS_FROBENIUS; /* model.loss */

static struct model *model_small(int64_t ttl_ms)
{
    struct model_params p;
    struct model *m;
    char u[32], it[32];

    model_params_default(&p);
    p.k = K;
    p.warmup_events = 0;
    p.refresh_events = 100;
    p.ttl_ms = ttl_ms;
    p.seed = 7;
    p.robust = small_robust;
    p.loss = small_loss;
    m = model_new(&p);
    cr_assert_not_null(m);
    for (int round = 0; round < 3; round++)
        for (int x = 0; x < NUSERS; x++) {
            int topic = x % K;
            snprintf(u, sizeof(u), "user-%d", x);
            for (int j = 0; j < 4; j++) {
                int item =
                    topic * (NITEMS / K) + (x + j + round) % (NITEMS / K);
                snprintf(it, sizeof(it), "item-%d", item);
                cr_assert_eq(model_fold(m, u, strlen(u), it, strlen(it),
                                        1.0 + j, 1000 + round * 100 + x),
                             0);
            }
        }
    model_refresh(m);
    for (int i = 0; i < 50 && model_refine(m, 1000) > 0; i++)
        ;
    return m;
}

/* ---- msgpack helpers ---- */

struct doc {
    msgpack_zone zone;
    msgpack_object root;
};

static void doc_parse(struct doc *d, const void *buf, size_t len)
{
    size_t off = 0;
    msgpack_zone_init(&d->zone, 4096);
    cr_assert_eq(msgpack_unpack(buf, len, &off, &d->zone, &d->root),
                 MSGPACK_UNPACK_SUCCESS, "not one msgpack value");
    cr_assert_eq(off, len);
    cr_assert_eq(d->root.type, MSGPACK_OBJECT_MAP);
}

static void doc_free(struct doc *d)
{
    msgpack_zone_destroy(&d->zone);
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    const msgpack_object *found = NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        cr_assert_eq(k->type, MSGPACK_OBJECT_STR, "a key is not a string");
        if (k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0) {
            cr_assert_null(found, "key %s twice", key);
            found = &map->via.map.ptr[i].val;
        }
    }
    cr_assert_not_null(found, "no key %s", key);
    return found;
}

/* The map has exactly these keys. */
static void keys_exactly(const msgpack_object *map, const char *const *keys,
                         size_t n)
{
    cr_assert_eq(map->via.map.size, n, "%u keys, want %zu", map->via.map.size,
                 n);
    for (size_t i = 0; i < n; i++)
        get(map, keys[i]);
}

static uint64_t get_u(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = get(map, key);
    cr_assert_eq(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER, "%s not uint", key);
    return o->via.u64;
}

static double get_f64(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = get(map, key);
    cr_assert_eq(o->type, MSGPACK_OBJECT_FLOAT64, "%s not float64", key);
    return o->via.f64;
}

static int64_t get_i(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = get(map, key);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return (int64_t)o->via.u64;
    cr_assert_eq(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER, "%s not int", key);
    return o->via.i64;
}

static bool str_is(const msgpack_object *o, const char *s, size_t n)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

static float le_f32(const char *p)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static const char *const model_keys[] = {
    "k",           "half_life",     "alpha_h",        "alpha_w",
    "l1_ratio",    "profile_max",   "refresh_events", "ttl",
    "seed",        "warmup_events", "nnls_sweeps",    "nnls_tol",
    "hals_sweeps", "refine_tol",    "robust",         "loss",
};
#define NMODEL_KEYS (sizeof(model_keys) / sizeof(model_keys[0]))

static void check_model_map(const msgpack_object *mo,
                            const struct model_params *p, int64_t refresh)
{
    cr_assert_eq(mo->type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(mo->via.map.size, NMODEL_KEYS + (refresh > 0));
    for (size_t i = 0; i < NMODEL_KEYS; i++)
        get(mo, model_keys[i]);
    cr_assert_eq(get_u(mo, "k"), p->k);
    cr_assert_eq(get_i(mo, "half_life"), p->half_life_ms);
    cr_assert_eq(get_f64(mo, "alpha_h"), p->alpha_h);
    cr_assert_eq(get_f64(mo, "alpha_w"), p->alpha_w);
    cr_assert_eq(get_f64(mo, "l1_ratio"), p->l1_ratio);
    cr_assert_eq(get_u(mo, "profile_max"), p->profile_max);
    cr_assert_eq(get_u(mo, "refresh_events"), p->refresh_events);
    cr_assert_eq(get_i(mo, "ttl"), p->ttl_ms);
    cr_assert_eq(get_u(mo, "seed"), p->seed);
    cr_assert_eq(get_u(mo, "warmup_events"), p->warmup_events);
    cr_assert_eq(get_u(mo, "nnls_sweeps"), p->nnls_sweeps);
    cr_assert_eq(get_f64(mo, "nnls_tol"), p->nnls_tol);
    cr_assert_eq(get_u(mo, "hals_sweeps"), p->hals_sweeps);
    cr_assert_eq(get_f64(mo, "refine_tol"), p->refine_tol);
    const char *robust = p->robust == MODEL_ROBUST_L21 ? "l21" : "none";
    cr_assert(str_is(get(mo, "robust"), robust, strlen(robust)));
    const char *loss = p->loss == MODEL_LOSS_KL ? "kl" : "frobenius";
    cr_assert(str_is(get(mo, "loss"), loss, strlen(loss)));
    if (refresh > 0)
        cr_assert_eq(get_i(mo, "refresh_interval"), refresh);
}

/* ---- keys ---- */

Test(records, keys)
{
    char key[RECORDS_KEY_MAX];

    cr_assert_eq(records_topic_key(key, 3), 7);
    cr_assert_str_eq(key, "topic-3");
    cr_assert_eq(records_topic_key(key, UINT32_MAX), 16);
    cr_assert_str_eq(key, "topic-4294967295");
    cr_assert_eq(records_manifest_key(key, 42), 2);
    cr_assert_str_eq(key, "42");
    cr_assert_eq(records_manifest_key(key, UINT64_MAX), 20);
    cr_assert_str_eq(key, "18446744073709551615");
}

/* ---- segment ---- */

Test(records, segment_record_fields_and_types)
{
    static const char *const keys[] = {"v",       "epoch", "user", "h",
                                       "segment", "share", "ts"};
    float h[4] = {0.5f, 0.0f, 1.5f, 0.25f};
    struct model_user_view u = {.id = "alice",
                                .id_len = 5,
                                .h = h,
                                .segment = 2,
                                .share = 1.5f / 2.25f,
                                .ts = 1700000000123};
    struct records_enc *e = records_enc_new();
    struct doc d;
    const void *buf;
    size_t len;

    cr_assert_eq(records_segment_encode(e, 9, 4, &u), 0);
    buf = records_enc_data(e, &len);
    doc_parse(&d, buf, len);
    keys_exactly(&d.root, keys, 7);
    cr_assert_eq(get_u(&d.root, "v"), 1);
    cr_assert_eq(get_u(&d.root, "epoch"), 9);
    cr_assert(str_is(get(&d.root, "user"), "alice", 5));
    const msgpack_object *ho = get(&d.root, "h");
    cr_assert_eq(ho->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(ho->via.array.size, 4);
    for (int j = 0; j < 4; j++) {
        cr_assert_eq(ho->via.array.ptr[j].type, MSGPACK_OBJECT_FLOAT32);
        cr_assert_eq((float)ho->via.array.ptr[j].via.f64, h[j]);
    }
    cr_assert_eq(get_u(&d.root, "segment"), 2);
    const msgpack_object *sh = get(&d.root, "share");
    cr_assert_eq(sh->type, MSGPACK_OBJECT_FLOAT32);
    cr_assert_float_eq(sh->via.f64, 1.5 / 2.25, 1e-6);
    cr_assert_eq(get_i(&d.root, "ts"), 1700000000123);
    doc_free(&d);
    cr_assert_eq(records_segment_encode(e, 9, 0, &u), -EINVAL);
    cr_assert_eq(records_segment_encode(e, 9, 4, NULL), -EINVAL);
    records_enc_free(e);
}

Test(records, segment_records_of_a_real_model)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct model_user_view u;
    uint32_t n = 0;

    for (uint32_t i = 0; i < model_user_slots(m); i++) {
        struct doc d;
        size_t len;
        const void *buf;
        if (model_user_get(m, i, &u) < 0)
            continue;
        cr_assert_eq(records_segment_encode(e, 1, K, &u), 0);
        buf = records_enc_data(e, &len);
        doc_parse(&d, buf, len);
        cr_assert(str_is(get(&d.root, "user"), u.id, u.id_len));
        cr_assert_eq(get_u(&d.root, "segment"), u.segment);
        cr_assert_lt(u.segment, K);
        double sum = 0;
        const msgpack_object *ho = get(&d.root, "h");
        for (int j = 0; j < K; j++) {
            cr_assert_geq(ho->via.array.ptr[j].via.f64, 0);
            sum += ho->via.array.ptr[j].via.f64;
        }
        cr_assert_float_eq(get(&d.root, "share")->via.f64,
                           sum > 0 ? u.h[u.segment] / sum : 0, 1e-5);
        doc_free(&d);
        n++;
    }
    cr_assert_eq(n, NUSERS);
    records_enc_free(e);
    model_free(m);
}

/* ---- topic ---- */

Test(records, topic_record_fields_and_types)
{
    static const char *const keys[] = {"v",   "epoch", "topic", "k",
                                       "top", "users", "mass",  "continuity"};
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    uint64_t sizes[K];
    double mass[K];
    uint32_t items[5];
    float weights[5];

    model_segment_sizes(m, sizes, mass);
    for (uint32_t j = 0; j < K; j++) {
        struct doc d;
        size_t len;
        const void *buf;
        uint32_t n = model_topic_top(m, j, 5, items, weights);

        cr_assert_eq(
            records_topic_encode(e, m, 4, j, 5, sizes[j], mass[j], 0.125 * j),
            0);
        buf = records_enc_data(e, &len);
        doc_parse(&d, buf, len);
        keys_exactly(&d.root, keys, 8);
        cr_assert_eq(get_u(&d.root, "v"), 1);
        cr_assert_eq(get_u(&d.root, "epoch"), 4);
        cr_assert_eq(get_u(&d.root, "topic"), j);
        cr_assert_eq(get_u(&d.root, "k"), K);
        cr_assert_eq(get_u(&d.root, "users"), sizes[j]);
        cr_assert_eq(get_f64(&d.root, "mass"), mass[j]);
        cr_assert_eq(get_f64(&d.root, "continuity"), 0.125 * j);
        const msgpack_object *top = get(&d.root, "top");
        cr_assert_eq(top->type, MSGPACK_OBJECT_ARRAY);
        cr_assert_eq(top->via.array.size, n);
        cr_assert_eq(n, 5);
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *pair = &top->via.array.ptr[i];
            size_t idlen;
            const char *id = model_item_id(m, items[i], &idlen);
            cr_assert_eq(pair->type, MSGPACK_OBJECT_ARRAY);
            cr_assert_eq(pair->via.array.size, 2);
            cr_assert(str_is(&pair->via.array.ptr[0], id, idlen));
            cr_assert_eq(pair->via.array.ptr[1].type, MSGPACK_OBJECT_FLOAT32);
            cr_assert_eq((float)pair->via.array.ptr[1].via.f64, weights[i]);
            if (i > 0)
                cr_assert_geq(weights[i - 1], weights[i],
                              "not strongest first");
        }
        doc_free(&d);
    }
    /* top_items = 0 gives an empty list; a topic out of range is EINVAL. */
    struct doc d;
    size_t len;
    const void *buf;
    cr_assert_eq(records_topic_encode(e, m, 4, 0, 0, 1, 1.0, 1.0), 0);
    buf = records_enc_data(e, &len);
    doc_parse(&d, buf, len);
    cr_assert_eq(get(&d.root, "top")->via.array.size, 0);
    doc_free(&d);
    cr_assert_eq(records_topic_encode(e, m, 4, K, 5, 0, 0, 1.0), -EINVAL);
    /* A continuity that is no cosine of non-negative columns is refused. */
    cr_assert_eq(records_topic_encode(e, m, 4, 0, 5, 0, 0, NAN), -EINVAL);
    cr_assert_eq(records_topic_encode(e, m, 4, 0, 5, 0, 0, -0.5), -EINVAL);
    cr_assert_eq(records_topic_encode(e, m, 4, 0, 5, 0, 0, 1.0001), -EINVAL);
    records_enc_free(e);
    model_free(m);
}

/* ---- manifest ---- */

Test(records, manifest_fields_and_types)
{
    static const char *const keys[] = {
        "v",          "epoch",         "ts",    "k",
        "full",       "users",         "items", "events",
        "weight_sum", "rejected",      "loss",  "evicted_weight",
        "segments",   "segment_sizes", "model"};
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {
        .epoch = 12, .ts = 1700000000999, .refresh_interval_ms = 5000};
    struct records_manifest mf = {
        .ep = &ep, .full = true, .rejected = 17, .segments = NUSERS};
    struct model_stats st;
    uint64_t sizes[K];
    double mass[K];
    struct doc d;
    size_t len;
    const void *buf;

    model_stats(m, &st);
    model_segment_sizes(m, sizes, mass);
    cr_assert_eq(records_manifest_encode(e, m, &mf), 0);
    buf = records_enc_data(e, &len);
    doc_parse(&d, buf, len);
    keys_exactly(&d.root, keys, 15);
    cr_assert_eq(get_u(&d.root, "v"), 1);
    cr_assert_eq(get_f64(&d.root, "evicted_weight"), st.evicted_weight);
    cr_assert_eq(get_u(&d.root, "epoch"), 12);
    cr_assert_eq(get_i(&d.root, "ts"), 1700000000999);
    cr_assert_eq(get_u(&d.root, "k"), K);
    cr_assert_eq(get(&d.root, "full")->type, MSGPACK_OBJECT_BOOLEAN);
    cr_assert_eq(get(&d.root, "full")->via.boolean, true);
    cr_assert_eq(get_u(&d.root, "users"), NUSERS);
    cr_assert_eq(get_u(&d.root, "items"), NITEMS);
    cr_assert_eq(get_u(&d.root, "events"), st.events);
    cr_assert_eq(st.events, 3 * NUSERS * 4);
    cr_assert_eq(get_f64(&d.root, "weight_sum"), st.weight_sum);
    cr_assert_float_eq(st.weight_sum, 3.0 * NUSERS * (1 + 2 + 3 + 4), 1e-9);
    cr_assert_eq(get_u(&d.root, "rejected"), 17);
    cr_assert_eq(get_f64(&d.root, "loss"), st.rel_loss);
    cr_assert(st.rel_loss >= 0 && st.rel_loss < 1);
    cr_assert_eq(get_u(&d.root, "segments"), NUSERS);
    const msgpack_object *ss = get(&d.root, "segment_sizes");
    cr_assert_eq(ss->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(ss->via.array.size, K);
    uint64_t total = 0;
    for (int j = 0; j < K; j++) {
        cr_assert_eq(ss->via.array.ptr[j].type,
                     MSGPACK_OBJECT_POSITIVE_INTEGER);
        cr_assert_eq(ss->via.array.ptr[j].via.u64, sizes[j]);
        total += sizes[j];
    }
    cr_assert_eq(total, NUSERS);
    check_model_map(get(&d.root, "model"), model_params(m), 5000);
    doc_free(&d);

    /* Caller's sizes are used as given; full false; no refresh_interval. */
    uint64_t mine[K] = {1, 2, 3};
    ep.refresh_interval_ms = 0;
    mf.full = false;
    mf.segment_sizes = mine;
    cr_assert_eq(records_manifest_encode(e, m, &mf), 0);
    buf = records_enc_data(e, &len);
    doc_parse(&d, buf, len);
    cr_assert_eq(get(&d.root, "full")->via.boolean, false);
    for (int j = 0; j < K; j++)
        cr_assert_eq(get(&d.root, "segment_sizes")->via.array.ptr[j].via.u64,
                     mine[j]);
    check_model_map(get(&d.root, "model"), model_params(m), 0);
    doc_free(&d);
    records_enc_free(e);
    model_free(m);
}

/* With model.holdout the manifest carries holdout_loss and the model map
 * the share; without, neither (the test above). */
Test(records, manifest_holdout_loss)
{
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.warmup_events = 0;
    p.refresh_events = 100;
    p.holdout = 0.25;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    char u[32], it[32];
    for (int x = 0; x < 400; x++) {
        snprintf(u, sizeof(u), "user-%d", x % NUSERS);
        snprintf(it, sizeof(it), "item-%d",
                 (x % NUSERS % K) * (NITEMS / K) + x % (NITEMS / K));
        cr_assert_eq(model_fold(m, u, strlen(u), it, strlen(it), 1, 1000 + x),
                     0);
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert(st.holdout_pairs > 0 && st.holdout_loss > 0);
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 1, .ts = 1, .refresh_interval_ms = 0};
    struct records_manifest mf = {.ep = &ep, .segments = 0};
    struct doc d;
    size_t len;
    cr_assert_eq(records_manifest_encode(e, m, &mf), 0);
    const void *buf = records_enc_data(e, &len);
    doc_parse(&d, buf, len);
    cr_assert_eq(d.root.via.map.size, 16);
    cr_assert_eq(get_f64(&d.root, "holdout_loss"), st.holdout_loss);
    cr_assert_eq(get_u(&d.root, "events"), 400);
    const msgpack_object *mo = get(&d.root, "model");
    cr_assert_eq(mo->via.map.size, NMODEL_KEYS + 1);
    cr_assert_eq(get_f64(mo, "holdout"), 0.25);
    doc_free(&d);
    records_enc_free(e);
    model_free(m);
}

/* ---- dense snapshot ---- */

/* Checks a snapshot document against the model it was taken from. */
static void check_snapshot(const void *buf, size_t len, const struct model *m,
                           const struct records_epoch *ep)
{
    static const char *const keys[] = {
        "v",     "epoch", "ts", "k", "events", "weight_sum", "loss",
        "users", "items", "W",  "H", "A",      "model"};
    const struct model_params *p = model_params(m);
    const uint32_t k = p->k;
    struct model_stats st;
    struct doc d;
    double *A = malloc(sizeof(double) * k * k);

    model_stats(m, &st);
    doc_parse(&d, buf, len);
    keys_exactly(&d.root, keys, 13);
    cr_assert_eq(get_u(&d.root, "v"), 1);
    cr_assert_eq(get_u(&d.root, "epoch"), ep->epoch);
    cr_assert_eq(get_i(&d.root, "ts"), ep->ts);
    cr_assert_eq(get_u(&d.root, "k"), k);
    cr_assert_eq(get_u(&d.root, "events"), st.events);
    cr_assert_eq(get_f64(&d.root, "weight_sum"), st.weight_sum);
    cr_assert_eq(get_f64(&d.root, "loss"), st.rel_loss);

    const msgpack_object *users = get(&d.root, "users");
    const msgpack_object *items = get(&d.root, "items");
    const msgpack_object *W = get(&d.root, "W"), *H = get(&d.root, "H");
    const msgpack_object *Ao = get(&d.root, "A");
    cr_assert_eq(users->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(items->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(users->via.array.size, st.users);
    cr_assert_eq(items->via.array.size, st.items);
    cr_assert_eq(W->type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(H->type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(Ao->type, MSGPACK_OBJECT_BIN);
    cr_assert_eq(W->via.bin.size, st.items * k * 4);
    cr_assert_eq(H->via.bin.size, st.users * k * 4);
    cr_assert_eq(Ao->via.bin.size, k * k * 4);

    /* Row r of W is the r-th live item, in slot order. */
    uint32_t r = 0;
    const float *Wm = model_W(m);
    for (uint32_t i = 0; i < model_item_slots(m); i++) {
        size_t idlen;
        const char *id = model_item_id(m, i, &idlen);
        if (id == NULL)
            continue;
        cr_assert(str_is(&items->via.array.ptr[r], id, idlen));
        for (uint32_t j = 0; j < k; j++)
            cr_assert_eq(le_f32(W->via.bin.ptr + 4 * ((size_t)r * k + j)),
                         Wm[(size_t)i * k + j]);
        r++;
    }
    cr_assert_eq(r, st.items);
    r = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v) < 0)
            continue;
        cr_assert(str_is(&users->via.array.ptr[r], v.id, v.id_len));
        for (uint32_t j = 0; j < k; j++)
            cr_assert_eq(le_f32(H->via.bin.ptr + 4 * ((size_t)r * k + j)),
                         v.h[j]);
        r++;
    }
    cr_assert_eq(r, st.users);
    model_A(m, A);
    for (uint32_t i = 0; i < k * k; i++)
        cr_assert_eq(le_f32(Ao->via.bin.ptr + 4 * i), (float)A[i]);
    check_model_map(get(&d.root, "model"), p, ep->refresh_interval_ms);
    doc_free(&d);
    free(A);
}

struct sink {
    char *buf;
    size_t len, cap;
    size_t calls, max_piece;
    int fail_after; /* fail on this call (1-based), 0 never */
};

static int sink_write(void *ctx, const void *buf, size_t len)
{
    struct sink *s = ctx;
    s->calls++;
    if (s->fail_after && (int)s->calls == s->fail_after)
        return -ENOSPC;
    if (len > s->max_piece)
        s->max_piece = len;
    if (s->len + len > s->cap) {
        s->cap = (s->len + len) * 2;
        s->buf = realloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, buf, len);
    s->len += len;
    return 0;
}

Test(records, snapshot_of_a_real_model_in_memory_and_streamed)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 3, .ts = 1700000000000};
    struct sink s = {0};
    const void *buf;
    size_t len;

    cr_assert_eq(records_snapshot_encode(e, m, &ep), 0);
    buf = records_enc_data(e, &len);
    check_snapshot(buf, len, m, &ep);
    cr_assert_eq(records_snapshot_write(m, &ep, sink_write, &s), 0);
    cr_assert_eq(s.len, len);
    cr_assert(memcmp(s.buf, buf, len) == 0, "streamed bytes differ");
    cr_assert_leq(s.max_piece, 64 * 1024);
    free(s.buf);

    /* A failing writer stops the stream with its error. */
    struct sink f = {.fail_after = 1};
    cr_assert_eq(records_snapshot_write(m, &ep, sink_write, &f), -ENOSPC);
    cr_assert_eq(f.calls, 1);
    free(f.buf);

    /* release hands the buffer over and the encoder starts afresh. */
    void *owned = records_enc_release(e, &len);
    cr_assert_not_null(owned);
    check_snapshot(owned, len, m, &ep);
    free(owned);
    cr_assert_null(records_enc_release(e, &len));
    cr_assert_eq(len, 0);
    records_enc_destroy(&e);
    cr_assert_null(e);
    model_free(m);
}

Test(records, snapshot_streams_a_bigger_model_in_pieces)
{
    struct model_params p;
    struct model *m;
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 1, .ts = 5};
    struct sink s = {0};
    char u[32], it[32];
    size_t len;

    model_params_default(&p);
    p.k = 16;
    p.warmup_events = 0;
    m = model_new(&p);
    for (int x = 0; x < 3000; x++) {
        snprintf(u, sizeof(u), "u%d", x);
        snprintf(it, sizeof(it), "i%d", x * 7 % 2000);
        cr_assert_eq(model_fold(m, u, strlen(u), it, strlen(it), 1, x), 0);
    }
    cr_assert_eq(records_snapshot_encode(e, m, &ep), 0);
    const void *buf = records_enc_data(e, &len);
    cr_assert_gt(len, 64 * 1024);
    cr_assert_eq(records_snapshot_write(m, &ep, sink_write, &s), 0);
    cr_assert_eq(s.len, len);
    cr_assert(memcmp(s.buf, buf, len) == 0);
    cr_assert_gt(s.calls, 1);
    cr_assert_eq(s.max_piece, 64 * 1024);
    check_snapshot(buf, len, m, &ep);
    free(s.buf);
    records_enc_free(e);
    model_free(m);
}

Test(records, snapshot_leaves_out_forgotten_users_and_items)
{
    struct model_params p;
    struct model *m;
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 2, .ts = 100000};
    struct model_stats st;
    size_t len;

    model_params_default(&p);
    p.k = 2;
    p.warmup_events = 0;
    p.ttl_ms = 1000;
    m = model_new(&p);
    cr_assert_eq(model_fold(m, "old", 3, "gone", 4, 1, 0), 0);
    cr_assert_eq(model_fold(m, "old2", 4, "kept", 4, 1, 0), 0);
    cr_assert_eq(model_fold(m, "new", 3, "kept", 4, 2, 50000), 0);
    cr_assert_eq(model_fold(m, "new", 3, "fresh", 5, 1, 50000), 0);
    cr_assert_gt(model_expire(m, 50000), 0);
    model_stats(m, &st);
    cr_assert_eq(st.users, 1);
    cr_assert_eq(st.items, 2);
    cr_assert_eq(records_snapshot_encode(e, m, &ep), 0);
    const void *buf = records_enc_data(e, &len);
    check_snapshot(buf, len, m, &ep);
    records_enc_free(e);
    model_free(m);
}

static char tmpdir[] = "/tmp/nmfd-records-XXXXXX";

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Under model.loss = kl the model map says so, the snapshot's loss is
 * the divergence per unit of weight, and both are read back. */
Test(records, snapshot_of_a_kl_model_says_kl)
{
    small_loss = MODEL_LOSS_KL;
    struct model *m = model_small(0);
    small_loss = MODEL_LOSS_FROBENIUS;
    struct records_epoch ep = {.epoch = 2, .ts = 9};
    const char *err = NULL;
    char path[128];
    size_t len;
    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(path, sizeof(path), "%s/snap.msgpack", tmpdir);
    cr_assert_eq(records_snapshot_save(m, &ep, path), 0);
    char *buf = slurp(path, &len);
    check_snapshot(buf, len, m, &ep);
    struct records_snapshot *s = records_snapshot_load(path, &err);
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(s->params.loss, MODEL_LOSS_KL);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(s->loss, st.rel_loss);
    cr_assert_gt(s->loss, 0);
    records_snapshot_free(s);
    free(buf);
    unlink(path);
    rmdir(tmpdir);
    model_free(m);
}

Test(records, snapshot_file_atomic_and_read_back)
{
    small_robust = MODEL_ROBUST_L21; /* the variant is read back too */
    struct model *m = model_small(0);
    small_robust = MODEL_ROBUST_NONE;
    struct records_epoch ep = {.epoch = 5, .ts = 77};
    struct records_snapshot *s;
    const char *err = NULL;
    char path[128], bad[160];
    size_t len;

    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(path, sizeof(path), "%s/snap.msgpack", tmpdir);
    cr_assert_eq(records_snapshot_save(m, &ep, path), 0);
    ep.epoch = 6; /* overwrite in place */
    cr_assert_eq(records_snapshot_save(m, &ep, path), 0);
    cr_assert_eq(dir_entries(tmpdir), 1, "a temp file was left behind");
    char *buf = slurp(path, &len);
    check_snapshot(buf, len, m, &ep);

    s = records_snapshot_load(path, &err);
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(s->epoch, 6);
    cr_assert_eq(s->ts, 77);
    cr_assert_eq(s->k, K);
    cr_assert_eq(s->nusers, NUSERS);
    cr_assert_eq(s->nitems, NITEMS);
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(s->events, st.events);
    cr_assert_eq(s->weight_sum, st.weight_sum);
    cr_assert_eq(s->loss, st.rel_loss);
    cr_assert_eq(s->params.k, K);
    cr_assert_eq(s->params.seed, 7);
    cr_assert_eq(s->params.refresh_events, 100);
    cr_assert_eq(s->params.robust, MODEL_ROBUST_L21);
    uint32_t r = 0;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v) < 0)
            continue;
        cr_assert_eq(s->user_lens[r], v.id_len);
        cr_assert(memcmp(s->users[r], v.id, v.id_len) == 0);
        cr_assert_eq(s->users[r][v.id_len], '\0');
        for (uint32_t j = 0; j < K; j++)
            cr_assert_eq(s->H[r * K + j], v.h[j]);
        r++;
    }
    r = 0;
    for (uint32_t i = 0; i < model_item_slots(m); i++) {
        size_t idlen;
        const char *id = model_item_id(m, i, &idlen);
        if (id == NULL)
            continue;
        cr_assert_eq(s->item_lens[r], idlen);
        cr_assert(memcmp(s->items[r], id, idlen) == 0);
        cr_assert_eq(s->items[r][idlen], '\0');
        for (uint32_t j = 0; j < K; j++)
            cr_assert_eq(s->W[r * K + j], model_W(m)[i * K + j]);
        r++;
    }
    double A[K * K];
    model_A(m, A);
    for (int i = 0; i < K * K; i++)
        cr_assert_eq(s->A[i], (float)A[i]);
    records_snapshot_destroy(&s);
    cr_assert_null(s);

    /* A directory that does not exist: error, nothing created. */
    snprintf(bad, sizeof(bad), "%s/nope/snap.msgpack", tmpdir);
    cr_assert_eq(records_snapshot_save(m, &ep, bad), -ENOENT);
    cr_assert_null(records_snapshot_load(bad, &err));
    cr_assert_not_null(err);
    cr_assert_eq(dir_entries(tmpdir), 1);
    unlink(path);
    rmdir(tmpdir);
    free(buf);
    model_free(m);
}

/* ---- the reader refuses corrupt snapshots ---- */

/* Re-encodes a snapshot with one key replaced (NULL value: removed). */
typedef void (*mutate_fn)(msgpack_packer *pk, const msgpack_object *v);

static void *rewrite(const void *buf, size_t len, const char *key,
                     mutate_fn mut, size_t *outlen)
{
    struct doc d;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t n;

    doc_parse(&d, buf, len);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    n = d.root.via.map.size - (mut == NULL);
    msgpack_pack_map(&pk, n);
    for (uint32_t i = 0; i < d.root.via.map.size; i++) {
        const msgpack_object *k = &d.root.via.map.ptr[i].key;
        const msgpack_object *v = &d.root.via.map.ptr[i].val;
        if (str_is(k, key, strlen(key))) {
            if (mut == NULL)
                continue;
            msgpack_pack_object(&pk, *k);
            mut(&pk, v);
        } else {
            msgpack_pack_object(&pk, *k);
            msgpack_pack_object(&pk, *v);
        }
    }
    doc_free(&d);
    *outlen = sb.size;
    return sb.data;
}

static void mut_two(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_uint64(pk, 2);
}

static void mut_short_bin(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_bin_with_body(pk, v->via.bin.ptr, v->via.bin.size - 4);
}

static void mut_nan_bin(msgpack_packer *pk, const msgpack_object *v)
{
    char *b = malloc(v->via.bin.size);
    float nan_ = NAN;
    memcpy(b, v->via.bin.ptr, v->via.bin.size);
    memcpy(b + 4, &nan_, 4);
    msgpack_pack_bin_with_body(pk, b, v->via.bin.size);
    free(b);
}

static void mut_neg_bin(msgpack_packer *pk, const msgpack_object *v)
{
    char *b = malloc(v->via.bin.size);
    float neg = -1.0f;
    memcpy(b, v->via.bin.ptr, v->via.bin.size);
    memcpy(b, &neg, 4);
    msgpack_pack_bin_with_body(pk, b, v->via.bin.size);
    free(b);
}

static void mut_dup_id(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_array(pk, v->via.array.size);
    for (uint32_t i = 0; i < v->via.array.size; i++)
        msgpack_pack_object(pk, v->via.array.ptr[i ? i : 1]);
}

static void mut_int_id(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_array(pk, v->via.array.size);
    msgpack_pack_uint64(pk, 5);
    for (uint32_t i = 1; i < v->via.array.size; i++)
        msgpack_pack_object(pk, v->via.array.ptr[i]);
}

static void mut_one_less(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_array(pk, v->via.array.size - 1);
    for (uint32_t i = 1; i < v->via.array.size; i++)
        msgpack_pack_object(pk, v->via.array.ptr[i]);
}

static void mut_str(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_str_with_body(pk, "x", 1);
}

static void mut_k_zero(msgpack_packer *pk, const msgpack_object *v)
{
    msgpack_pack_uint64(pk, 0);
}

Test(records, reader_refuses_corrupt_snapshots)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 1, .ts = 1};
    struct records_snapshot *s;
    const char *err;
    const void *buf;
    size_t len;
    struct {
        const char *key;
        mutate_fn mut;
        const char *want; /* substring of the error */
    } cases[] = {
        {"v", mut_two, "version"},
        {"v", NULL, "version"},
        {"k", mut_k_zero, "k is"},
        {"k", mut_two, "W has"},
        {"W", mut_short_bin, "W has"},
        {"H", mut_short_bin, "H has"},
        {"A", mut_short_bin, "A has"},
        {"W", mut_nan_bin, "not finite"},
        {"H", mut_neg_bin, "negative"},
        {"W", NULL, "W is missing"},
        {"users", mut_dup_id, "twice"},
        {"items", mut_int_id, "not a string"},
        {"users", mut_one_less, "H has"},
        {"users", NULL, "users or items"},
        {"epoch", mut_str, "epoch"},
        {"loss", NULL, "loss"},
        {"model", mut_str, "model is not a map"},
    };

    cr_assert_eq(records_snapshot_encode(e, m, &ep), 0);
    buf = records_enc_data(e, &len);
    s = records_snapshot_read(buf, len, &err);
    cr_assert_not_null(s, "%s", err);
    records_snapshot_free(s);

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t blen;
        void *b = rewrite(buf, len, cases[i].key, cases[i].mut, &blen);
        err = NULL;
        s = records_snapshot_read(b, blen, &err);
        cr_assert_null(s, "case %zu (%s) accepted", i, cases[i].key);
        cr_assert_not_null(err);
        cr_assert(strstr(err, cases[i].want) != NULL,
                  "case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
        free(b);
    }

    /* Every truncation, trailing bytes, not a map, empty. */
    for (size_t cut = 0; cut < len; cut += 1 + cut / 8) {
        err = NULL;
        cr_assert_null(records_snapshot_read(buf, cut, &err), "cut %zu", cut);
        cr_assert_not_null(err);
    }
    char *plus = malloc(len + 1);
    memcpy(plus, buf, len);
    plus[len] = '\xc0';
    cr_assert_null(records_snapshot_read(plus, len + 1, &err));
    cr_assert_str_eq(err, "trailing bytes after the snapshot");
    free(plus);
    /* Two empty keys (msgpack-c gives them a NULL pointer). */
    cr_assert_null(records_snapshot_read("\x82\xa0\x01\xa0\x02", 5, &err));
    cr_assert_str_eq(err, "a key appears twice");
    cr_assert_null(records_snapshot_read("\x93\x01\x02\x03", 4, &err));
    cr_assert_str_eq(err, "snapshot is not a map");
    cr_assert_null(records_snapshot_read("", 0, &err));
    cr_assert_str_eq(err, "empty input");
    cr_assert_null(records_snapshot_read("\xdd\xff\xff\xff\xff", 5, &err));
    cr_assert_str_eq(err, "not msgpack, or truncated");
    records_enc_free(e);
    model_free(m);
}

/* ---- dump ---- */

static char *dump(const void *buf, size_t len, unsigned flags, int *rc,
                  const char **err)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    *rc = records_dump_json(f, buf, len, flags, err);
    fclose(f);
    return out;
}

static json_t *json_line_flags(const char *s, size_t flags)
{
    json_error_t je;
    json_t *j = json_loadb(s, strcspn(s, "\n"), flags, &je);
    cr_assert_not_null(j, "dump is not JSON: %s: %s", je.text, s);
    return j;
}

static json_t *json_line(const char *s)
{
    return json_line_flags(s, 0);
}

Test(records, dump_snapshot_as_json)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct records_epoch ep = {.epoch = 8, .ts = 99};
    struct records_snapshot *s;
    const char *err;
    const void *buf;
    size_t len;
    int rc;

    cr_assert_eq(records_snapshot_encode(e, m, &ep), 0);
    buf = records_enc_data(e, &len);
    s = records_snapshot_read(buf, len, &err);
    char *out = dump(buf, len, 0, &rc, &err);
    cr_assert_eq(rc, 0);
    cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "not one line");
    json_t *j = json_line(out);
    cr_assert_eq(json_integer_value(json_object_get(j, "epoch")), 8);
    cr_assert_eq(json_integer_value(json_object_get(j, "k")), K);
    json_t *W = json_object_get(j, "W");
    cr_assert(json_is_array(W));
    cr_assert_eq(json_array_size(W), (size_t)NITEMS * K);
    for (size_t i = 0; i < json_array_size(W); i++) {
        json_t *x = json_array_get(W, i);
        cr_assert(json_is_number(x));
        /* The shortest text reads back to the same float32. */
        cr_assert_eq((float)json_number_value(x), s->W[i], "W[%zu]", i);
    }
    cr_assert_eq(json_array_size(json_object_get(j, "H")), (size_t)NUSERS * K);
    cr_assert_eq(json_array_size(json_object_get(j, "A")), (size_t)K * K);
    cr_assert_str_eq(
        json_string_value(json_array_get(json_object_get(j, "users"), 0)),
        s->users[0]);
    cr_assert(json_is_object(json_object_get(j, "model")));
    json_decref(j);
    free(out);

    out = dump(buf, len, RECORDS_DUMP_BIN_LENGTH, &rc, &err);
    j = json_line(out);
    cr_assert_eq(
        json_integer_value(json_object_get(json_object_get(j, "W"), "bin")),
        NITEMS * K * 4);
    json_decref(j);
    free(out);

    out = dump(buf, len, RECORDS_DUMP_BIN_BASE64, &rc, &err);
    j = json_line(out);
    const char *b64 = json_string_value(json_object_get(j, "A"));
    cr_assert_not_null(b64);
    cr_assert_eq(strlen(b64), (K * K * 4 + 2) / 3 * 4);
    json_decref(j);
    free(out);
    records_snapshot_free(s);
    records_enc_free(e);
    model_free(m);
}

Test(records, dump_values_and_edge_cases)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    const char *err;
    int rc;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    /* Value 1: a map with every kind of value. */
    msgpack_pack_map(&pk, 10);
    msgpack_pack_str_with_body(&pk, "f32", 3);
    msgpack_pack_float(&pk, 0.1f);
    msgpack_pack_str_with_body(&pk, "f64", 3);
    msgpack_pack_double(&pk, 0.1);
    msgpack_pack_str_with_body(&pk, "nan", 3);
    msgpack_pack_double(&pk, NAN);
    msgpack_pack_str_with_body(&pk, "neg", 3);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_str_with_body(&pk, "big", 3);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_str_with_body(&pk, "s", 1);
    msgpack_pack_str_with_body(&pk, "a\"b\\c\n\x01\xff", 8);
    msgpack_pack_uint64(&pk, 7); /* a non-string key */
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "bin", 3);
    msgpack_pack_bin_with_body(&pk, "abcd", 4);
    msgpack_pack_str_with_body(&pk, "ext", 3);
    msgpack_pack_ext_with_body(&pk, "xy", 2, 5);
    msgpack_pack_str_with_body(&pk, "nil", 3);
    msgpack_pack_nil(&pk);
    /* Value 2: an array. */
    msgpack_pack_array(&pk, 2);
    msgpack_pack_false(&pk);
    msgpack_pack_double(&pk, 1e300);

    char *out = dump(sb.data, sb.size, 0, &rc, &err);
    cr_assert_eq(rc, 0);
    char *nl = strchr(out, '\n');
    cr_assert_not_null(nl);
    cr_assert(strstr(out, "\"f32\":0.1,") != NULL, "%s", out);
    cr_assert(strstr(out, "\"f64\":0.1,") != NULL, "%s", out);
    cr_assert(strstr(out, "\"nan\":null") != NULL, "%s", out);
    cr_assert(strstr(out, "\"big\":18446744073709551615") != NULL, "%s", out);
    cr_assert(strstr(out, "\"7\":true") != NULL, "%s", out);
    cr_assert(strstr(out, "\"bin\":\"YWJjZA==\"") != NULL, "%s", out);
    cr_assert(strstr(out, "\"ext\":{\"ext\":5,\"data\":\"eHk=\"}") != NULL,
              "%s", out);
    /* jansson reads integers as int64: the uint64 needs reals. */
    json_t *j = json_line_flags(out, JSON_DECODE_INT_AS_REAL);
    cr_assert_str_eq(json_string_value(json_object_get(j, "s")),
                     "a\"b\\c\n\x01\xef\xbf\xbd");
    cr_assert_eq(json_real_value(json_object_get(j, "neg")), -5);
    json_decref(j);
    cr_assert_str_eq(nl + 1, "[false,1e+300]\n");
    free(out);

    /* Bad input after a good value: the good one is written. */
    msgpack_pack_array(&pk, 3);
    msgpack_pack_nil(&pk);
    char *out2 = dump(sb.data, sb.size, 0, &rc, &err);
    cr_assert_eq(rc, -EBADMSG);
    cr_assert_str_eq(err, "not msgpack, or truncated");
    size_t lines = 0;
    for (const char *c = out2; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 2, "%s", out2);
    cr_assert_eq(out2[strlen(out2) - 1], '\n');
    free(out2);
    out = dump("\xc1", 1, 0, &rc, &err);
    cr_assert_eq(rc, -EBADMSG);
    free(out);
    msgpack_sbuffer_destroy(&sb);
}

Test(records, dump_container_keys_stay_small)
{
    /* {{{...}: 1}: 1}: a key that is a map, 30 deep. */
    char buf[64];
    const char *err;
    int rc, n = 0;

    for (int i = 0; i < 30; i++)
        buf[n++] = (char)0x81;
    buf[n++] = (char)0xc0;
    for (int i = 0; i < 30; i++)
        buf[n++] = (char)0x01;
    char *out = dump(buf, (size_t)n, 0, &rc, &err);
    cr_assert_eq(rc, 0);
    cr_assert_str_eq(out, "{\"<map>\":1}\n");
    free(out);
    out = dump("\x81\x92\x01\x02\x03", 5, 0, &rc, &err);
    cr_assert_str_eq(out, "{\"<array>\":3}\n");
    free(out);
    out = dump("\x81\xc4\x01\x00\xc3", 5, 0, &rc, &err);
    cr_assert_str_eq(out, "{\"<bin>\":true}\n");
    free(out);
    out = dump("\x82\xc0\x01\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x02", 13, 0,
               &rc, &err);
    cr_assert_str_eq(out, "{\"null\":1,\"1.5\":2}\n");
    free(out);
}

Test(records, dump_refuses_nesting_beyond_32)
{
    char deep[40];
    const char *err;
    int rc;

    memset(deep, 0x91, sizeof(deep)); /* [[[[...]]]] */
    deep[32] = (char)0xc0;
    char *out = dump(deep, 33, 0, &rc, &err);
    cr_assert_eq(rc, 0);
    free(out);
    deep[32] = (char)0x91;
    deep[33] = (char)0xc0;
    out = dump(deep, 34, 0, &rc, &err);
    cr_assert_eq(rc, -EBADMSG);
    cr_assert_str_eq(err, "msgpack nested too deep");
    free(out);
}

/* ---- a partition's state: the head alone against the full reader ---- */

static int32_t part_all(void *ctx, const char *id, size_t len)
{
    (void)ctx;
    (void)id;
    (void)len;
    return 2;
}

static int count_user(void *ctx, const struct model_user_state *st)
{
    (void)st;
    (*(uint32_t *)ctx)++;
    return 0;
}

/* records_state_head and records_state_read agree on buf: both refuse it,
 * or both take it with the same head. Returns records_state_head's rc. */
static int state_agree(const void *buf, size_t len)
{
    struct records_state a, b;
    const char *ea = NULL, *eb = NULL;
    int ra = records_state_head(buf, len, &a, &ea);
    int rb = records_state_read(buf, len, &b, NULL, NULL, &eb);
    cr_assert_eq(ra == 0, rb == 0, "head %d (%s), read %d (%s), %zu bytes",
                 ra, ea ? ea : "", rb, eb ? eb : "", len);
    if (ra)
        return ra;
    cr_assert_str_eq(a.cluster, b.cluster);
    cr_assert_eq(a.k, b.k);
    cr_assert_eq(a.part, b.part);
    cr_assert_eq(a.gen, b.gen);
    cr_assert_eq(a.marker, b.marker);
    cr_assert_eq(a.chunk, b.chunk);
    cr_assert_eq(a.users, b.users);
    cr_assert_eq(a.offset, b.offset);
    cr_assert_eq(a.events, b.events);
    cr_assert_eq(a.weight_sum, b.weight_sum);
    cr_assert_eq(a.ts, b.ts);
    return 0;
}

Test(records, state_head_reads_what_the_full_reader_reads)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    struct records_state h = {.k = K, .part = 2, .gen = 1234567890123ull,
                              .chunk = 3};
    struct records_state got;
    uint32_t cursor = 0, n = 0, seen = 0;
    size_t len;
    snprintf(h.cluster, sizeof(h.cluster), "group-a");

    cr_assert_eq(records_state_users_encode(e, &h, m, part_all, NULL, &cursor,
                                            1 << 20, &n),
                 0);
    cr_assert_eq(n, NUSERS);
    const void *enc = records_enc_data(e, &len);
    unsigned char *chunk = malloc(len);
    size_t clen = len;
    memcpy(chunk, enc, len);
    cr_assert_eq(state_agree(chunk, clen), 0);
    cr_assert_eq(records_state_head(chunk, clen, &got, NULL), 0);
    cr_assert_eq(got.users, NUSERS);
    cr_assert_eq(got.chunk, 3);
    cr_assert(!got.marker);
    /* The full reader still hands every user over. */
    cr_assert_eq(records_state_read(chunk, clen, &got, count_user, &seen,
                                    NULL),
                 0);
    cr_assert_eq(seen, NUSERS);

    h.marker = true;
    h.users = NUSERS;
    h.offset = 77;
    h.events = 500;
    h.weight_sum = 1234.5;
    h.ts = -3;
    cr_assert_eq(records_state_marker_encode(e, &h, K), 0);
    enc = records_enc_data(e, &len);
    unsigned char *marker = malloc(len);
    size_t mlen = len;
    memcpy(marker, enc, len);
    cr_assert_eq(state_agree(marker, mlen), 0);
    cr_assert_eq(records_state_head(marker, mlen, &got, NULL), 0);
    cr_assert(got.marker);
    cr_assert_eq(got.offset, 77);
    cr_assert_eq(got.weight_sum, 1234.5);

    /* Every truncation, and bytes changed everywhere: the same verdicts. */
    static const unsigned char bytes[] = {0x00, 0x01, 0x7f, 0x80, 0x8f,
                                          0x9f, 0xa0, 0xc0, 0xc1, 0xc3,
                                          0xca, 0xcb, 0xcf, 0xd3, 0xd9,
                                          0xdc, 0xdd, 0xde, 0xdf, 0xff};
    unsigned char *bufs[2] = {chunk, marker};
    size_t lens[2] = {clen, mlen};
    int taken = 0, refused = 0;
    for (int d = 0; d < 2; d++) {
        for (size_t l = 0; l < lens[d]; l++)
            cr_assert_neq(state_agree(bufs[d], l), 0, "truncated at %zu", l);
        for (size_t pos = 0; pos < lens[d]; pos += pos < 120 ? 1 : 37) {
            unsigned char keep = bufs[d][pos];
            for (size_t b = 0; b < sizeof(bytes); b++) {
                bufs[d][pos] = bytes[b];
                if (state_agree(bufs[d], lens[d]))
                    refused++;
                else
                    taken++;
            }
            bufs[d][pos] = keep;
        }
    }
    cr_assert_gt(taken, 0);
    cr_assert_gt(refused, 0);
    free(chunk);
    free(marker);
    records_enc_free(e);
    model_free(m);
}

/* ---- a partition's statistics: version 3, whole or the rows changed - */

/* The map of buf with key `drop` left out and, when `v` is not 0, "v"
 * set to v: an older or a malformed record made from a good one. */
static void *stats_edit(const void *buf, size_t len, const char *drop,
                        uint64_t v, size_t *out_len)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, buf, len, NULL),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object_map *mp = &u.data.via.map;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint32_t n = 0;
    for (uint32_t i = 0; i < mp->size; i++)
        n += !(drop && mp->ptr[i].key.via.str.size == strlen(drop) &&
               !memcmp(mp->ptr[i].key.via.str.ptr, drop, strlen(drop)));
    msgpack_pack_map(&pk, n);
    for (uint32_t i = 0; i < mp->size; i++) {
        const msgpack_object_str *k = &mp->ptr[i].key.via.str;
        if (drop && k->size == strlen(drop) && !memcmp(k->ptr, drop, k->size))
            continue;
        msgpack_pack_object(&pk, mp->ptr[i].key);
        if (v && k->size == 1 && k->ptr[0] == 'v')
            msgpack_pack_uint64(&pk, v);
        else
            msgpack_pack_object(&pk, mp->ptr[i].val);
    }
    msgpack_unpacked_destroy(&u);
    *out_len = sb.size;
    return sb.data;
}

Test(records, stats_carry_the_w_version_and_refuse_versions_1_and_2)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    uint32_t M = model_item_slots(m);
    double A[K * K], *B = calloc((size_t)M * K, sizeof(double));
    for (int q = 0; q < K * K; q++)
        A[q] = q + 1;
    for (uint32_t q = 0; q < M * K; q++)
        B[q] = 0.5 * (q % 7);
    struct records_stats h = {.k = K, .part = 1, .seq = 9, .ts = 5,
                              .offset = 40, .events = 40,
                              .weight_sum = 40, .norm = 12.5, .users = 7,
                              .model_version = 31};
    snprintf(h.cluster, sizeof(h.cluster), "group-a");
    snprintf(h.owner, sizeof(h.owner), "owner-b");
    cr_assert_eq(records_stats_encode(e, &h, m, A, B, NULL, 0), 0);
    size_t len;
    const void *buf = records_enc_data(e, &len);
    const char *err = NULL;
    struct records_stats *s = records_stats_read(buf, len, &err);
    cr_assert_not_null(s, "%s", err ? err : "");
    cr_assert_eq(s->model_version, 31);
    cr_assert_eq(s->users, 7);
    cr_assert_eq(s->A[K * K - 1], K * K);
    cr_assert_eq(s->base, 0);
    records_stats_free(s);

    /* A record of version 1 (an older member: no model_version), one of
     * version 2 (every row, no base: what the build before this one
     * sends), one without model_version or base, and one of a version to
     * come: refused, version 2 by name. */
    size_t l1;
    void *old = stats_edit(buf, len, "model_version", 1, &l1);
    err = NULL;
    cr_assert_null(records_stats_read(old, l1, &err));
    cr_assert_str_eq(err, "no version or an unsupported one");
    free(old);
    void *two = stats_edit(buf, len, "base", 2, &l1);
    err = NULL;
    cr_assert_null(records_stats_read(two, l1, &err));
    cr_assert_not_null(strstr(err, "version 2"), "%s", err);
    cr_assert_not_null(strstr(err, "reads version 3"), "%s", err);
    free(two);
    void *none = stats_edit(buf, len, "model_version", 0, &l1);
    err = NULL;
    cr_assert_null(records_stats_read(none, l1, &err));
    cr_assert_not_null(strstr(err, "model_version"), "%s", err);
    free(none);
    void *nobase = stats_edit(buf, len, "base", 0, &l1);
    err = NULL;
    cr_assert_null(records_stats_read(nobase, l1, &err));
    cr_assert_not_null(strstr(err, "base"), "%s", err);
    free(nobase);
    void *next = stats_edit(buf, len, NULL, 4, &l1);
    err = NULL;
    cr_assert_null(records_stats_read(next, l1, &err));
    cr_assert_str_eq(err, "no version or an unsupported one");
    free(next);
    /* The edit itself keeps a good record good. */
    void *same = stats_edit(buf, len, NULL, 3, &l1);
    s = records_stats_read(same, l1, &err);
    cr_assert_not_null(s);
    records_stats_free(s);
    free(same);
    free(B);
    records_enc_free(e);
    model_free(m);
}

/* A record of the rows changed: exactly the rows asked for, a row of
 * zeros (an item gone) among them, on the base it names; the whole
 * record beside it carries every non-zero row, the same from the list
 * of them. A slot that is no item and a base not before the record's
 * seq are refused. */
Test(records, stats_delta_carries_only_the_rows_asked_for)
{
    struct model *m = model_small(0);
    struct records_enc *e = records_enc_new();
    uint32_t M = model_item_slots(m);
    cr_assert_gt(M, 6);
    double A[K * K], *B = calloc((size_t)M * K, sizeof(double));
    for (int q = 0; q < K * K; q++)
        A[q] = q;
    for (uint32_t q = 0; q < M * K; q++)
        B[q] = 1 + q % 5;
    for (uint32_t j = 0; j < K; j++)
        B[(size_t)3 * K + j] = 0; /* slot 3: its item left B_p */
    struct records_stats h = {.k = K, .part = 2, .seq = 12, .base = 0,
                              .ts = 5, .offset = 40, .events = 40,
                              .weight_sum = 40, .norm = 1, .users = 7,
                              .model_version = 3};
    snprintf(h.cluster, sizeof(h.cluster), "group-a");
    snprintf(h.owner, sizeof(h.owner), "owner-b");
    size_t len;
    const char *err = NULL;
    uint32_t rows[] = {5, 3, 1};

    h.base = 9;
    uint32_t bad[] = {1, M};
    cr_assert_eq(records_stats_encode(e, &h, m, A, B, bad, 2), -EINVAL);

    cr_assert_eq(records_stats_encode(e, &h, m, A, B, rows, 3), 0);
    const void *buf = records_enc_data(e, &len);
    struct records_stats *s = records_stats_read(buf, len, &err);
    cr_assert_not_null(s, "%s", err ? err : "");
    cr_assert_eq(s->base, 9);
    cr_assert_eq(s->seq, 12);
    cr_assert_eq(s->nitems, 3);
    for (uint32_t r = 0; r < 3; r++) {
        size_t il;
        const char *id = model_item_id(m, rows[r], &il);
        uint32_t at = s->nitems;
        for (uint32_t i = 0; i < s->nitems; i++)
            if (s->item_lens[i] == il && !memcmp(s->items[i], id, il))
                at = i;
        cr_assert_lt(at, s->nitems, "row %u missing", rows[r]);
        for (uint32_t j = 0; j < K; j++)
            cr_assert_eq(s->B[(size_t)at * K + j], B[(size_t)rows[r] * K + j]);
    }
    records_stats_free(s);

    /* The whole record: every non-zero row, slot 3 not among them. */
    h.base = 0;
    cr_assert_eq(records_stats_encode(e, &h, m, A, B, NULL, 0), 0);
    buf = records_enc_data(e, &len);
    s = records_stats_read(buf, len, &err);
    cr_assert_not_null(s, "%s", err ? err : "");
    uint32_t live = 0;
    for (uint32_t i = 0; i < M; i++) {
        size_t il;
        live += model_item_id(m, i, &il) && i != 3;
    }
    cr_assert_eq(s->nitems, live);
    records_stats_free(s);
    /* The same whole record from the list of its rows, byte for byte. */
    void *whole = malloc(len);
    memcpy(whole, buf, len);
    size_t wlen = len;
    uint32_t *all = malloc(live * sizeof(*all)), na = 0;
    for (uint32_t i = 0; i < M; i++) {
        size_t il;
        if (model_item_id(m, i, &il) && i != 3)
            all[na++] = i;
    }
    cr_assert_eq(records_stats_encode(e, &h, m, A, B, all, na), 0);
    buf = records_enc_data(e, &len);
    cr_assert_eq(len, wlen);
    cr_assert_eq(memcmp(buf, whole, len), 0);
    free(all);
    free(whole);

    /* A base at or after the record's own seq: refused. */
    h.base = 12;
    cr_assert_eq(records_stats_encode(e, &h, m, A, B, rows, 3), 0);
    buf = records_enc_data(e, &len);
    err = NULL;
    cr_assert_null(records_stats_read(buf, len, &err));
    cr_assert_not_null(strstr(err, "base"), "%s", err);
    free(B);
    records_enc_free(e);
    model_free(m);
}
