/* records.c -- the msgpack records nmfd publishes, and their readers.
 *
 * Encodes, from a struct model, the three record types of docs/design.md §3
 * (segment, topic, manifest) and the full dense snapshot, either into a
 * reusable buffer or streamed through a callback in 64 KiB pieces so that
 * a big model is never held twice in memory. It also reads a dense
 * snapshot back into flat arrays (nmfctl eval, tests) and renders any
 * msgpack value as one line of JSON (nmfctl dump). docs/snapshot-format.md
 * is the field-by-field description of what is written here; change the
 * two together.
 *
 * It owns its encode buffers and the snapshots it reads. It never talks
 * to Kafka, never mutates the model, and never trusts what it reads:
 * untrusted msgpack is bounded by mpscan before msgpack-c sees it.
 *
 * The dump writes JSON itself rather than through jansson: jansson would
 * build a tree of one json_t per float of a snapshot (gigabytes for a big
 * model) and cannot print float32 values in their own shortest form.
 */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>

#include "atomic.h"
#include "mpscan.h"
#include "records.h"
#include "utf8.h"

#define RECORDS_CHUNK      (64u << 10) /* streaming piece */
#define RECORDS_READ_DEPTH 8           /* a snapshot nests 2 deep */
#define RECORDS_READ_KEYS  256         /* top-level keys, 13 today */

size_t records_topic_key(char out[RECORDS_KEY_MAX], uint32_t topic)
{
    return (size_t)snprintf(out, RECORDS_KEY_MAX, "topic-%" PRIu32, topic);
}

size_t records_manifest_key(char out[RECORDS_KEY_MAX], uint64_t epoch)
{
    return (size_t)snprintf(out, RECORDS_KEY_MAX, "%" PRIu64, epoch);
}

/* ---- sinks: a growing buffer, or chunks through a callback ---- */

struct records_enc {
    char *data;
    size_t len, cap;
    int err; /* why the last append failed */
    /* Scratch: top items of a topic, segment sizes, A. */
    uint32_t *items;
    float *weights;
    uint32_t nscratch;
    uint64_t *sizes;
    double *mass;
    double *A;
    uint32_t kscratch;
};

static int enc_append(void *ctx, const char *buf, size_t len)
{
    struct records_enc *e = ctx;

    if (len > e->cap - e->len) {
        size_t cap = e->cap ? e->cap : 256;
        char *p;
        while (cap - e->len < len) {
            if (cap > SIZE_MAX / 2) {
                e->err = -ENOMEM;
                return -1;
            }
            cap *= 2;
        }
        p = realloc(e->data, cap);
        if (p == NULL) {
            e->err = -ENOMEM;
            return -1;
        }
        e->data = p;
        e->cap = cap;
    }
    /* The packer writes a byte or a few at a time: skip the call. */
    if (len <= 16) {
        for (size_t i = 0; i < len; i++)
            e->data[e->len + i] = buf[i];
    } else
        memcpy(e->data + e->len, buf, len);
    e->len += len;
    return 0;
}

struct stream {
    records_write_fn write;
    void *ctx;
    int err;
    size_t n;
    char buf[RECORDS_CHUNK];
};

static int stream_flush(struct stream *s)
{
    int rc;

    if (s->n == 0)
        return 0;
    rc = s->write(s->ctx, s->buf, s->n);
    s->n = 0;
    if (rc < 0) {
        s->err = rc;
        return -1;
    }
    return 0;
}

static int stream_append(void *ctx, const char *buf, size_t len)
{
    struct stream *s = ctx;

    while (len > 0) {
        size_t take = RECORDS_CHUNK - s->n;
        if (take > len)
            take = len;
        memcpy(s->buf + s->n, buf, take);
        s->n += take;
        buf += take;
        len -= take;
        if (s->n == RECORDS_CHUNK && stream_flush(s) < 0)
            return -1;
    }
    return 0;
}

struct records_enc *records_enc_new(void)
{
    return calloc(1, sizeof(struct records_enc));
}

void records_enc_free(struct records_enc *e)
{
    if (e == NULL)
        return;
    free(e->data);
    free(e->items);
    free(e->weights);
    free(e->sizes);
    free(e->mass);
    free(e->A);
    free(e);
}

void records_enc_destroy(struct records_enc **e)
{
    records_enc_free(*e);
    *e = NULL;
}

const void *records_enc_data(const struct records_enc *e, size_t *len)
{
    *len = e->len;
    return e->data;
}

void *records_enc_release(struct records_enc *e, size_t *len)
{
    void *p = e->data;

    *len = e->len;
    if (p == NULL || e->len == 0) {
        *len = 0;
        return NULL;
    }
    e->data = NULL;
    e->len = e->cap = 0;
    return p;
}

static void enc_start(struct records_enc *e, msgpack_packer *pk)
{
    e->len = 0;
    e->err = 0;
    msgpack_packer_init(pk, e, enc_append);
}

/* The rc of a failed pack: the sink's errno. */
static int enc_fail(struct records_enc *e)
{
    e->len = 0;
    return e->err ? e->err : -ENOMEM;
}

static int enc_k_scratch(struct records_enc *e, uint32_t k)
{
    if (k <= e->kscratch)
        return 0;
    free(e->sizes);
    free(e->mass);
    free(e->A);
    e->sizes = malloc(sizeof(*e->sizes) * k);
    e->mass = malloc(sizeof(*e->mass) * k);
    e->A = malloc(sizeof(*e->A) * k * k);
    if (e->sizes == NULL || e->mass == NULL || e->A == NULL) {
        e->kscratch = 0;
        return -ENOMEM;
    }
    e->kscratch = k;
    return 0;
}

/* ---- packing helpers: each returns < 0 when the sink failed ---- */

static int pk_key(msgpack_packer *pk, const char *k)
{
    return msgpack_pack_str_with_body(pk, k, strlen(k));
}

static int pk_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    if (pk_key(pk, k) < 0)
        return -1;
    return msgpack_pack_uint64(pk, v);
}

static int pk_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
    if (pk_key(pk, k) < 0)
        return -1;
    return msgpack_pack_int64(pk, v);
}

static int pk_kv_f64(msgpack_packer *pk, const char *k, double v)
{
    if (pk_key(pk, k) < 0)
        return -1;
    return msgpack_pack_double(pk, v);
}

/* float32 little-endian, whatever the host. */
static void f32_le(unsigned char *out, float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    out[0] = (unsigned char)u;
    out[1] = (unsigned char)(u >> 8);
    out[2] = (unsigned char)(u >> 16);
    out[3] = (unsigned char)(u >> 24);
}

static float f32_from_le(const unsigned char *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    float f;

    memcpy(&f, &u, 4);
    return f;
}

/* Bin body of n floats, converted in slices. */
static int pk_f32_body(msgpack_packer *pk, const float *v, size_t n)
{
    unsigned char tmp[1024];

    while (n > 0) {
        size_t m = n < sizeof(tmp) / 4 ? n : sizeof(tmp) / 4;
        for (size_t i = 0; i < m; i++)
            f32_le(tmp + 4 * i, v[i]);
        if (msgpack_pack_bin_body(pk, tmp, 4 * m) < 0)
            return -1;
        v += m;
        n -= m;
    }
    return 0;
}

/* The "model" map: the parameters that shaped the factors, under the
 * names of the [model] config keys (docs/design.md §6), durations in ms. */
static int pk_model(msgpack_packer *pk, const struct model_params *p,
                    int64_t refresh_interval_ms)
{
    const char *robust = p->robust == MODEL_ROBUST_L21 ? "l21" : "none";
    const char *loss = p->loss == MODEL_LOSS_KL ? "kl" : "frobenius";
    if (msgpack_pack_map(pk, 16 + (refresh_interval_ms > 0) +
                                 (p->holdout > 0)) < 0 ||
        pk_kv_u64(pk, "k", p->k) < 0 ||
        pk_kv_i64(pk, "half_life", p->half_life_ms) < 0 ||
        pk_kv_f64(pk, "alpha_h", p->alpha_h) < 0 ||
        pk_kv_f64(pk, "alpha_w", p->alpha_w) < 0 ||
        pk_kv_f64(pk, "l1_ratio", p->l1_ratio) < 0 ||
        pk_kv_u64(pk, "profile_max", p->profile_max) < 0 ||
        pk_kv_u64(pk, "refresh_events", p->refresh_events) < 0 ||
        pk_kv_i64(pk, "ttl", p->ttl_ms) < 0 ||
        pk_kv_u64(pk, "seed", p->seed) < 0 ||
        pk_kv_u64(pk, "warmup_events", p->warmup_events) < 0 ||
        pk_kv_u64(pk, "nnls_sweeps", p->nnls_sweeps) < 0 ||
        pk_kv_f64(pk, "nnls_tol", p->nnls_tol) < 0 ||
        pk_kv_u64(pk, "hals_sweeps", p->hals_sweeps) < 0 ||
        pk_kv_f64(pk, "refine_tol", p->refine_tol) < 0 ||
        pk_key(pk, "robust") < 0 ||
        msgpack_pack_str_with_body(pk, robust, strlen(robust)) < 0 ||
        pk_key(pk, "loss") < 0 ||
        msgpack_pack_str_with_body(pk, loss, strlen(loss)) < 0)
        return -1;
    if (refresh_interval_ms > 0 &&
        pk_kv_i64(pk, "refresh_interval", refresh_interval_ms) < 0)
        return -1;
    if (p->holdout > 0 && pk_kv_f64(pk, "holdout", p->holdout) < 0)
        return -1;
    return 0;
}

/* ---- the three records ---- */

int records_segment_encode(struct records_enc *e, uint64_t epoch, uint32_t k,
                           const struct model_user_view *u)
{
    msgpack_packer pk;

    if (u == NULL || u->id == NULL || u->h == NULL || k == 0)
        return -EINVAL;
    enc_start(e, &pk);
    if (msgpack_pack_map(&pk, 7) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        pk_kv_u64(&pk, "epoch", epoch) < 0 || pk_key(&pk, "user") < 0 ||
        msgpack_pack_str_with_body(&pk, u->id, u->id_len) < 0 ||
        pk_key(&pk, "h") < 0 || msgpack_pack_array(&pk, k) < 0)
        return enc_fail(e);
    for (uint32_t j = 0; j < k; j++)
        if (msgpack_pack_float(&pk, u->h[j]) < 0)
            return enc_fail(e);
    if (pk_kv_u64(&pk, "segment", u->segment) < 0 || pk_key(&pk, "share") < 0 ||
        msgpack_pack_float(&pk, u->share) < 0 ||
        pk_kv_i64(&pk, "ts", u->ts) < 0)
        return enc_fail(e);
    return 0;
}

int records_topic_encode(struct records_enc *e, const struct model *m,
                         uint64_t epoch, uint32_t topic, uint32_t top_n,
                         uint64_t users, double mass, double continuity)
{
    msgpack_packer pk;
    uint32_t k = model_params(m)->k, n, live = 0;

    if (topic >= k || !(continuity >= 0 && continuity <= 1))
        return -EINVAL;
    if (top_n > e->nscratch) {
        uint32_t *it = realloc(e->items, sizeof(*it) * top_n);
        if (it == NULL)
            return -ENOMEM;
        e->items = it;
        float *w = realloc(e->weights, sizeof(*w) * top_n);
        if (w == NULL)
            return -ENOMEM;
        e->weights = w;
        e->nscratch = top_n;
    }
    n = top_n ? model_topic_top(m, topic, top_n, e->items, e->weights) : 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        if (model_item_id(m, e->items[i], &len) != NULL) {
            e->items[live] = e->items[i];
            e->weights[live++] = e->weights[i];
        }
    }
    enc_start(e, &pk);
    if (msgpack_pack_map(&pk, 8) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        pk_kv_u64(&pk, "epoch", epoch) < 0 ||
        pk_kv_u64(&pk, "topic", topic) < 0 || pk_kv_u64(&pk, "k", k) < 0 ||
        pk_key(&pk, "top") < 0 || msgpack_pack_array(&pk, live) < 0)
        return enc_fail(e);
    for (uint32_t i = 0; i < live; i++) {
        size_t len;
        const char *id = model_item_id(m, e->items[i], &len);
        if (msgpack_pack_array(&pk, 2) < 0 ||
            msgpack_pack_str_with_body(&pk, id, len) < 0 ||
            msgpack_pack_float(&pk, e->weights[i]) < 0)
            return enc_fail(e);
    }
    if (pk_kv_u64(&pk, "users", users) < 0 ||
        pk_kv_f64(&pk, "mass", mass) < 0 ||
        pk_kv_f64(&pk, "continuity", continuity) < 0)
        return enc_fail(e);
    return 0;
}

int records_manifest_encode(struct records_enc *e, const struct model *m,
                            const struct records_manifest *mf)
{
    msgpack_packer pk;
    struct model_stats st;
    const struct model_params *p = model_params(m);
    const uint64_t *sizes = mf->segment_sizes;

    if (mf->ep == NULL)
        return -EINVAL;
    if (sizes == NULL) {
        if (enc_k_scratch(e, p->k) < 0)
            return -ENOMEM;
        model_segment_sizes(m, e->sizes, e->mass);
        sizes = e->sizes;
    }
    model_stats(m, &st);
    enc_start(e, &pk);
    /* holdout_loss only with held-out pairs (DESIGN section 3). */
    const int ho = p->holdout > 0;
    if (msgpack_pack_map(&pk, 15 + ho) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        pk_kv_u64(&pk, "epoch", mf->ep->epoch) < 0 ||
        pk_kv_i64(&pk, "ts", mf->ep->ts) < 0 || pk_kv_u64(&pk, "k", p->k) < 0 ||
        pk_key(&pk, "full") < 0 ||
        (mf->full ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk)) < 0 ||
        pk_kv_u64(&pk, "users", st.users) < 0 ||
        pk_kv_u64(&pk, "items", st.items) < 0 ||
        pk_kv_u64(&pk, "events", st.events) < 0 ||
        pk_kv_f64(&pk, "weight_sum", st.weight_sum) < 0 ||
        pk_kv_u64(&pk, "rejected", mf->rejected) < 0 ||
        pk_kv_f64(&pk, "loss", st.rel_loss) < 0 ||
        pk_kv_f64(&pk, "evicted_weight", st.evicted_weight) < 0 ||
        (ho && pk_kv_f64(&pk, "holdout_loss", st.holdout_loss) < 0) ||
        pk_kv_u64(&pk, "segments", mf->segments) < 0 ||
        pk_key(&pk, "segment_sizes") < 0 || msgpack_pack_array(&pk, p->k) < 0)
        return enc_fail(e);
    for (uint32_t j = 0; j < p->k; j++)
        if (msgpack_pack_uint64(&pk, sizes[j]) < 0)
            return enc_fail(e);
    if (pk_key(&pk, "model") < 0 ||
        pk_model(&pk, p, mf->ep->refresh_interval_ms) < 0)
        return enc_fail(e);
    return 0;
}

/* ---- the dense snapshot ---- */

/* Packs the snapshot through pk. A is k*k doubles of scratch. Returns 0,
 * -1 when the sink failed, -EFBIG when a count or bin does not fit
 * msgpack's 32-bit lengths. */
static int snap_pack(msgpack_packer *pk, const struct model *m,
                     const struct records_epoch *ep, double *A)
{
    const struct model_params *p = model_params(m);
    const uint32_t k = p->k;
    const uint32_t uslots = model_user_slots(m), islots = model_item_slots(m);
    const float *W = model_W(m);
    struct model_stats st;
    struct model_user_view v;
    uint64_t nu = 0, ni = 0;
    size_t len;

    for (uint32_t u = 0; u < uslots; u++)
        nu += model_user_get(m, u, &v) == 0;
    for (uint32_t i = 0; i < islots; i++)
        ni += model_item_id(m, i, &len) != NULL;
    if (nu * k * 4 > UINT32_MAX || ni * k * 4 > UINT32_MAX)
        return -EFBIG;
    model_stats(m, &st);

    if (msgpack_pack_map(pk, 13) < 0 ||
        pk_kv_u64(pk, "v", RECORDS_VERSION) < 0 ||
        pk_kv_u64(pk, "epoch", ep->epoch) < 0 ||
        pk_kv_i64(pk, "ts", ep->ts) < 0 || pk_kv_u64(pk, "k", k) < 0 ||
        pk_kv_u64(pk, "events", st.events) < 0 ||
        pk_kv_f64(pk, "weight_sum", st.weight_sum) < 0 ||
        pk_kv_f64(pk, "loss", st.rel_loss) < 0 || pk_key(pk, "users") < 0 ||
        msgpack_pack_array(pk, nu) < 0)
        return -1;
    for (uint32_t u = 0; u < uslots; u++)
        if (model_user_get(m, u, &v) == 0 &&
            msgpack_pack_str_with_body(pk, v.id, v.id_len) < 0)
            return -1;
    if (pk_key(pk, "items") < 0 || msgpack_pack_array(pk, ni) < 0)
        return -1;
    for (uint32_t i = 0; i < islots; i++) {
        const char *id = model_item_id(m, i, &len);
        if (id != NULL && msgpack_pack_str_with_body(pk, id, len) < 0)
            return -1;
    }
    if (pk_key(pk, "W") < 0 || msgpack_pack_bin(pk, ni * k * 4) < 0)
        return -1;
    for (uint32_t i = 0; i < islots; i++)
        if (model_item_id(m, i, &len) != NULL &&
            pk_f32_body(pk, W + (size_t)i * k, k) < 0)
            return -1;
    if (pk_key(pk, "H") < 0 || msgpack_pack_bin(pk, nu * k * 4) < 0)
        return -1;
    for (uint32_t u = 0; u < uslots; u++)
        if (model_user_get(m, u, &v) == 0 && pk_f32_body(pk, v.h, k) < 0)
            return -1;
    model_A(m, A);
    if (pk_key(pk, "A") < 0 || msgpack_pack_bin(pk, (size_t)k * k * 4) < 0)
        return -1;
    for (size_t i = 0; i < (size_t)k * k; i++) {
        float f = (float)A[i];
        if (pk_f32_body(pk, &f, 1) < 0)
            return -1;
    }
    if (pk_key(pk, "model") < 0 || pk_model(pk, p, ep->refresh_interval_ms))
        return -1;
    return 0;
}

int records_snapshot_encode(struct records_enc *e, const struct model *m,
                            const struct records_epoch *ep)
{
    msgpack_packer pk;
    int rc;

    if (enc_k_scratch(e, model_params(m)->k) < 0)
        return -ENOMEM;
    enc_start(e, &pk);
    rc = snap_pack(&pk, m, ep, e->A);
    if (rc == -1)
        return enc_fail(e);
    if (rc < 0)
        e->len = 0;
    return rc;
}

int records_snapshot_write(const struct model *m,
                           const struct records_epoch *ep,
                           records_write_fn write, void *ctx)
{
    msgpack_packer pk;
    struct stream *s;
    double *A;
    uint32_t k = model_params(m)->k;
    int rc;

    s = malloc(sizeof(*s));
    A = malloc(sizeof(*A) * k * k);
    if (s == NULL || A == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    s->write = write;
    s->ctx = ctx;
    s->err = 0;
    s->n = 0;
    msgpack_packer_init(&pk, s, stream_append);
    rc = snap_pack(&pk, m, ep, A);
    if (rc == 0 && stream_flush(s) < 0)
        rc = -1;
    if (rc == -1)
        rc = s->err ? s->err : -EIO;
out:
    free(s);
    free(A);
    return rc;
}

int records_snapshot_save(const struct model *m, const struct records_epoch *ep,
                          const char *path)
{
    struct atomic_file *af;
    int rc;

    rc = atomic_file_open(&af, path);
    if (rc < 0)
        return rc;
    rc = records_snapshot_write(m, ep, atomic_file_write, af);
    if (rc < 0) {
        atomic_file_abort(af);
        return rc;
    }
    return atomic_file_commit(af);
}

/* ---- reading a snapshot back ---- */

/* Unpacks the single msgpack value of buf into a fresh zone. */
static int mp_unpack_one(const void *buf, size_t len, uint32_t max_depth,
                         msgpack_zone **zone, msgpack_object *root, size_t *end,
                         const char **err)
{
    struct mpscan s;
    size_t off = 0;
    int rc;

    *zone = NULL;
    rc = mpscan_value(buf, len, max_depth, &s);
    if (rc == -ENODATA) {
        *err = "empty input";
        return -EBADMSG;
    }
    if (rc == -ELOOP) {
        *err = "msgpack nested too deep";
        return -EBADMSG;
    }
    if (rc < 0) {
        *err = "not msgpack, or truncated";
        return -EBADMSG;
    }
    *zone = msgpack_zone_new(s.dom_bytes + MSGPACK_ZONE_ALIGN);
    if (*zone == NULL) {
        *err = "out of memory";
        return -ENOMEM;
    }
    switch (msgpack_unpack(buf, s.end, &off, *zone, root)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        *err = "out of memory";
        return -ENOMEM;
    default:
        *err = "not msgpack, or truncated";
        return -EBADMSG;
    }
    *end = s.end;
    return 0;
}

static bool obj_key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);

    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

static const msgpack_object *obj_get(const msgpack_object *map, const char *key)
{
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (obj_key_is(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

static bool obj_u64(const msgpack_object *o, uint64_t *v)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *v = o->via.u64;
    return true;
}

static bool obj_i64(const msgpack_object *o, int64_t *v)
{
    if (o == NULL)
        return false;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

static bool obj_num(const msgpack_object *o, double *v)
{
    if (o == NULL)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *v = (double)o->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *v = (double)o->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *v = o->via.f64;
        return true;
    default:
        return false;
    }
}

struct idref {
    const char *s;
    uint32_t len;
};

static int idref_cmp(const void *a, const void *b)
{
    const struct idref *x = a, *y = b;

    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

/* Copies an array of string ids into one block: n pointers then the
 * NUL-terminated bytes. Refuses non-strings, empty or long ids and
 * duplicates. */
static int ids_copy(const msgpack_object *arr, char ***out, size_t **lens,
                    const char *what, const char **err)
{
    static __thread char msg[2][64];
    uint32_t n = arr->via.array.size;
    size_t bytes = 0;
    struct idref *sorted;
    char **ptrs, *p;
    int slot = what[0] == 'u' ? 0 : 1;

    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
            o->via.str.size > MODEL_ID_MAX) {
            snprintf(msg[slot], sizeof(msg[slot]),
                     "%s id %" PRIu32 " is not a string of 1..256 bytes", what,
                     i);
            *err = msg[slot];
            return -EBADMSG;
        }
        bytes += o->via.str.size + 1;
    }
    sorted = malloc(sizeof(*sorted) * (n ? n : 1));
    if (sorted == NULL)
        goto nomem;
    for (uint32_t i = 0; i < n; i++) {
        sorted[i].s = arr->via.array.ptr[i].via.str.ptr;
        sorted[i].len = arr->via.array.ptr[i].via.str.size;
    }
    qsort(sorted, n, sizeof(*sorted), idref_cmp);
    for (uint32_t i = 1; i < n; i++)
        if (idref_cmp(&sorted[i - 1], &sorted[i]) == 0) {
            free(sorted);
            snprintf(msg[slot], sizeof(msg[slot]), "a %s id appears twice",
                     what);
            *err = msg[slot];
            return -EBADMSG;
        }
    free(sorted);
    ptrs = malloc(sizeof(char *) * n + bytes + 1);
    *lens = malloc(sizeof(size_t) * (n ? n : 1));
    if (ptrs == NULL || *lens == NULL) {
        free(ptrs);
        free(*lens);
        *lens = NULL;
        goto nomem;
    }
    p = (char *)(ptrs + n);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        ptrs[i] = p;
        (*lens)[i] = o->via.str.size;
        memcpy(p, o->via.str.ptr, o->via.str.size);
        p[o->via.str.size] = '\0';
        p += o->via.str.size + 1;
    }
    *out = ptrs;
    return 0;
nomem:
    *err = "out of memory";
    return -ENOMEM;
}

/* Reads a bin of exactly n float32 into a fresh array. */
static int bin_floats(const msgpack_object *o, size_t n, float **out,
                      bool nonneg, const char *name, const char **err)
{
    static __thread char msg[3][80];
    int slot = name[0] == 'W' ? 0 : name[0] == 'H' ? 1 : 2;
    const unsigned char *p;
    float *v;

    if (o == NULL || o->type != MSGPACK_OBJECT_BIN) {
        snprintf(msg[slot], sizeof(msg[slot]), "%s is missing or not a bin",
                 name);
        *err = msg[slot];
        return -EBADMSG;
    }
    if (o->via.bin.size != n * 4) {
        snprintf(msg[slot], sizeof(msg[slot]),
                 "%s has %" PRIu32 " bytes, expected %zu", name,
                 o->via.bin.size, n * 4);
        *err = msg[slot];
        return -EBADMSG;
    }
    v = malloc(sizeof(float) * (n ? n : 1));
    if (v == NULL) {
        *err = "out of memory";
        return -ENOMEM;
    }
    p = (const unsigned char *)o->via.bin.ptr;
    for (size_t i = 0; i < n; i++) {
        v[i] = f32_from_le(p + 4 * i);
        if (!isfinite(v[i]) || (nonneg && v[i] < 0)) {
            snprintf(msg[slot], sizeof(msg[slot]), "%s[%zu] is %s", name, i,
                     isfinite(v[i]) ? "negative" : "not finite");
            free(v);
            *err = msg[slot];
            return -EBADMSG;
        }
    }
    *out = v;
    return 0;
}

/* Known keys of the "model" map; absent ones keep their defaults. */
static int params_read(const msgpack_object *mo, struct model_params *p,
                       const char **err)
{
    const msgpack_object *o;
    uint64_t u;
    int64_t i;
    double d;

    model_params_default(p);
    if (mo == NULL)
        return 0;
    if (mo->type != MSGPACK_OBJECT_MAP) {
        *err = "model is not a map";
        return -EBADMSG;
    }
#define RD_U(key, field)                                                       \
    if ((o = obj_get(mo, key)) != NULL) {                                      \
        if (!obj_u64(o, &u))                                                   \
            goto bad;                                                          \
        p->field = u;                                                          \
    }
#define RD_I(key, field)                                                       \
    if ((o = obj_get(mo, key)) != NULL) {                                      \
        if (!obj_i64(o, &i))                                                   \
            goto bad;                                                          \
        p->field = i;                                                          \
    }
#define RD_D(key, field)                                                       \
    if ((o = obj_get(mo, key)) != NULL) {                                      \
        if (!obj_num(o, &d))                                                   \
            goto bad;                                                          \
        p->field = d;                                                          \
    }
    RD_U("k", k);
    RD_I("half_life", half_life_ms);
    RD_D("alpha_h", alpha_h);
    RD_D("alpha_w", alpha_w);
    RD_D("l1_ratio", l1_ratio);
    RD_U("profile_max", profile_max);
    RD_U("refresh_events", refresh_events);
    RD_I("ttl", ttl_ms);
    RD_U("seed", seed);
    RD_U("warmup_events", warmup_events);
    RD_U("nnls_sweeps", nnls_sweeps);
    RD_D("nnls_tol", nnls_tol);
    RD_U("hals_sweeps", hals_sweeps);
    RD_D("refine_tol", refine_tol);
    if ((o = obj_get(mo, "robust")) != NULL) {
        if (obj_key_is(o, "none"))
            p->robust = MODEL_ROBUST_NONE;
        else if (obj_key_is(o, "l21"))
            p->robust = MODEL_ROBUST_L21;
        else
            goto bad;
    }
    if ((o = obj_get(mo, "loss")) != NULL) {
        if (obj_key_is(o, "frobenius"))
            p->loss = MODEL_LOSS_FROBENIUS;
        else if (obj_key_is(o, "kl"))
            p->loss = MODEL_LOSS_KL;
        else
            goto bad;
    }
#undef RD_U
#undef RD_I
#undef RD_D
    return 0;
bad:
    *err = "model has a parameter of the wrong type";
    return -EBADMSG;
}

struct records_snapshot *records_snapshot_read(const void *buf, size_t len,
                                               const char **err)
{
    struct records_snapshot *s = NULL;
    msgpack_zone *zone = NULL;
    msgpack_object root;
    const msgpack_object *o, *users, *items;
    const char *dummy;
    size_t end;
    uint64_t v, k;

    if (err == NULL)
        err = &dummy;
    if (mp_unpack_one(buf, len, RECORDS_READ_DEPTH, &zone, &root, &end, err) <
        0)
        goto fail;
    if (end != len) {
        *err = "trailing bytes after the snapshot";
        goto fail;
    }
    if (root.type != MSGPACK_OBJECT_MAP) {
        *err = "snapshot is not a map";
        goto fail;
    }
    if (root.via.map.size > RECORDS_READ_KEYS) {
        *err = "snapshot has too many keys";
        goto fail;
    }
    for (uint32_t i = 0; i < root.via.map.size; i++)
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *a = &root.via.map.ptr[i].key;
            const msgpack_object *b = &root.via.map.ptr[j].key;
            if (a->type == MSGPACK_OBJECT_STR &&
                b->type == MSGPACK_OBJECT_STR &&
                a->via.str.size == b->via.str.size &&
                (a->via.str.size == 0 || /* msgpack-c: ptr NULL */
                 memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) ==
                     0)) {
                *err = "a key appears twice";
                goto fail;
            }
        }
    if (!obj_u64(obj_get(&root, "v"), &v)) {
        *err = "no version (v)";
        goto fail;
    }
    if (v != RECORDS_VERSION) {
        *err = "unsupported snapshot version";
        goto fail;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = "out of memory";
        goto fail;
    }
    if (!obj_u64(obj_get(&root, "k"), &k) || k < 1 || k > MODEL_K_MAX) {
        *err = "k is missing or not in 1..256";
        goto fail;
    }
    s->k = (uint32_t)k;
    if (!obj_u64(obj_get(&root, "epoch"), &s->epoch) ||
        !obj_i64(obj_get(&root, "ts"), &s->ts) ||
        !obj_u64(obj_get(&root, "events"), &s->events) ||
        !obj_num(obj_get(&root, "weight_sum"), &s->weight_sum) ||
        !obj_num(obj_get(&root, "loss"), &s->loss)) {
        *err = "epoch, ts, events, weight_sum or loss missing or mistyped";
        goto fail;
    }
    users = obj_get(&root, "users");
    items = obj_get(&root, "items");
    if (users == NULL || users->type != MSGPACK_OBJECT_ARRAY || items == NULL ||
        items->type != MSGPACK_OBJECT_ARRAY) {
        *err = "users or items missing or not an array";
        goto fail;
    }
    s->nusers = users->via.array.size;
    s->nitems = items->via.array.size;
    if (ids_copy(users, &s->users, &s->user_lens, "user", err) < 0 ||
        ids_copy(items, &s->items, &s->item_lens, "item", err) < 0)
        goto fail;
    if (bin_floats(obj_get(&root, "W"), (size_t)s->nitems * s->k, &s->W, true,
                   "W", err) < 0 ||
        bin_floats(obj_get(&root, "H"), (size_t)s->nusers * s->k, &s->H, true,
                   "H", err) < 0 ||
        bin_floats(obj_get(&root, "A"), (size_t)s->k * s->k, &s->A, false, "A",
                   err) < 0)
        goto fail;
    o = obj_get(&root, "model");
    if (params_read(o, &s->params, err) < 0)
        goto fail;
    if (o != NULL && s->params.k != s->k) {
        *err = "model.k differs from k";
        goto fail;
    }
    msgpack_zone_free(zone);
    return s;
fail:
    msgpack_zone_free(zone);
    records_snapshot_free(s);
    return NULL;
}

struct records_snapshot *records_snapshot_load(const char *path,
                                               const char **err)
{
    static __thread char msg[128];
    struct records_snapshot *s = NULL;
    struct stat st;
    void *map;
    const char *dummy;
    int fd;

    if (err == NULL)
        err = &dummy;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(msg, sizeof(msg), "%s", strerror(errno));
        *err = msg;
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        close(fd);
        *err = S_ISREG(st.st_mode) ? "empty input" : "not a regular file";
        return NULL;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(msg, sizeof(msg), "%s", strerror(errno));
        *err = msg;
        return NULL;
    }
    s = records_snapshot_read(map, (size_t)st.st_size, err);
    munmap(map, (size_t)st.st_size);
    return s;
}

void records_snapshot_free(struct records_snapshot *s)
{
    if (s == NULL)
        return;
    free(s->users);
    free(s->user_lens);
    free(s->items);
    free(s->item_lens);
    free(s->W);
    free(s->H);
    free(s->A);
    free(s);
}

void records_snapshot_destroy(struct records_snapshot **s)
{
    records_snapshot_free(*s);
    *s = NULL;
}

/* ---- msgpack -> JSON lines ---- */

static void json_str(FILE *f, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;

    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t k = utf8_seq(p + i, n - i);
        if (k == 0) {
            fputs("\xef\xbf\xbd", f); /* U+FFFD */
            i++;
        } else if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc((int)c, f);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n':
                fputs("\\n", f);
                break;
            case '\t':
                fputs("\\t", f);
                break;
            case '\r':
                fputs("\\r", f);
                break;
            default:
                fprintf(f, "\\u%04x", c);
                break;
            }
            i++;
        } else {
            fwrite(p + i, 1, k, f);
            i += k;
        }
    }
    fputc('"', f);
}

/* Shortest decimal that reads back to the same float (or double). */
static void json_float(FILE *f, double v, bool single)
{
    char tmp[40];

    if (!isfinite(v)) {
        fputs("null", f);
        return;
    }
    for (int prec = single ? 6 : 15; prec <= (single ? 9 : 17); prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (single ? strtof(tmp, NULL) == (float)v : strtod(tmp, NULL) == v)
            break;
    }
    fputs(tmp, f);
}

static void json_base64(FILE *f, const unsigned char *p, size_t n)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fputc('"', f);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        fputc(b64[v >> 18 & 63], f);
        fputc(b64[v >> 12 & 63], f);
        fputc(i + 1 < n ? b64[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? b64[v & 63] : '=', f);
    }
    fputc('"', f);
}

static void json_value(FILE *f, const msgpack_object *o, unsigned flags,
                       bool top);

static void json_bin(FILE *f, const char *p, uint32_t n, unsigned flags,
                     bool floats)
{
    if (flags & RECORDS_DUMP_BIN_LENGTH) {
        fprintf(f, "{\"bin\":%" PRIu32 "}", n);
    } else if (floats && !(flags & RECORDS_DUMP_BIN_BASE64) && n % 4 == 0) {
        fputc('[', f);
        for (uint32_t i = 0; i < n; i += 4) {
            if (i)
                fputc(',', f);
            json_float(f, f32_from_le((const unsigned char *)p + i), true);
        }
        fputc(']', f);
    } else
        json_base64(f, (const unsigned char *)p, n);
}

/* A map key must be a JSON string: a scalar key becomes its text, a
 * container or bin key a placeholder. (Rendering containers and escaping
 * the text would double its size at every nesting level.) */
static void json_key(FILE *f, const msgpack_object *k)
{
    switch (k->type) {
    case MSGPACK_OBJECT_STR:
        json_str(f, k->via.str.ptr, k->via.str.size);
        return;
    case MSGPACK_OBJECT_NIL:
    case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        fputc('"', f);
        json_value(f, k, 0, false);
        fputc('"', f);
        return;
    case MSGPACK_OBJECT_ARRAY:
        fputs("\"<array>\"", f);
        return;
    case MSGPACK_OBJECT_MAP:
        fputs("\"<map>\"", f);
        return;
    default:
        fputs("\"<bin>\"", f);
        return;
    }
}

static void json_value(FILE *f, const msgpack_object *o, unsigned flags,
                       bool top)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        fputs("null", f);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        fputs(o->via.boolean ? "true" : "false", f);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        fprintf(f, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        fprintf(f, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
        json_float(f, o->via.f64, true);
        break;
    case MSGPACK_OBJECT_FLOAT64:
        json_float(f, o->via.f64, false);
        break;
    case MSGPACK_OBJECT_STR:
        json_str(f, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        json_bin(f, o->via.bin.ptr, o->via.bin.size, flags, false);
        break;
    case MSGPACK_OBJECT_EXT:
        fprintf(f, "{\"ext\":%d,\"data\":", o->via.ext.type);
        json_bin(f, o->via.ext.ptr, o->via.ext.size, flags, false);
        fputc('}', f);
        break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                fputc(',', f);
            json_value(f, &o->via.array.ptr[i], flags, false);
        }
        fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            const msgpack_object *v = &o->via.map.ptr[i].val;
            if (i)
                fputc(',', f);
            json_key(f, k);
            fputc(':', f);
            /* The snapshot's factor matrices read as numbers. */
            if (top && v->type == MSGPACK_OBJECT_BIN &&
                (obj_key_is(k, "W") || obj_key_is(k, "H") ||
                 obj_key_is(k, "A")))
                json_bin(f, v->via.bin.ptr, v->via.bin.size, flags, true);
            else
                json_value(f, v, flags, false);
        }
        fputc('}', f);
        break;
    default:
        fputs("null", f);
        break;
    }
}

int records_dump_json(FILE *out, const void *buf, size_t len, unsigned flags,
                      const char **err)
{
    const char *p = buf, *dummy;
    size_t off = 0;

    if (err == NULL)
        err = &dummy;
    *err = NULL;
    while (off < len) {
        msgpack_zone *zone;
        msgpack_object root;
        size_t end;
        int rc = mp_unpack_one(p + off, len - off, MPSCAN_DEPTH_MAX, &zone,
                               &root, &end, err);
        if (rc < 0) {
            msgpack_zone_free(zone);
            return rc;
        }
        json_value(out, &root, flags, true);
        fputc('\n', out);
        msgpack_zone_free(zone);
        if (ferror(out)) {
            *err = "write failed";
            return -EIO;
        }
        off += end;
    }
    return 0;
}
