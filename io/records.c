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
#define RECORDS_HEAD_KEYS  32          /* a state record's, 8 or 12 */

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
    uint64_t model_version; /* > 0: segment and topic records say it */
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

void records_enc_set_model_version(struct records_enc *e, uint64_t v)
{
    e->model_version = v;
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

static int pk_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    if (pk_key(pk, k) < 0)
        return -1;
    return msgpack_pack_str_with_body(pk, v, strlen(v));
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
    if (msgpack_pack_map(&pk, 7 + (e->model_version > 0)) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        (e->model_version &&
         pk_kv_u64(&pk, "model_version", e->model_version) < 0) ||
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
    if (msgpack_pack_map(&pk, 8 + (e->model_version > 0)) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        (e->model_version &&
         pk_kv_u64(&pk, "model_version", e->model_version) < 0) ||
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
    const struct records_group *g = mf->group;
    if (g) {
        st.users = g->users;
        st.items = g->items;
        st.events = g->events;
        st.weight_sum = g->weight_sum;
        st.rel_loss = g->loss;
    }
    enc_start(e, &pk);
    /* holdout_loss only with held-out pairs (DESIGN section 3). */
    const int ho = p->holdout > 0;
    if (msgpack_pack_map(&pk, 15 + ho + 3 * (g != NULL)) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_VERSION) < 0 ||
        (g && (pk_kv_u64(&pk, "model_version", g->model_version) < 0 ||
               pk_kv_str(&pk, "cluster", g->cluster) < 0 ||
               pk_kv_u64(&pk, "partitions", g->partitions) < 0)) ||
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
    const int group = ep->model_version > 0;
    if (group && ep->group_totals) {
        st.events = ep->events;
        st.weight_sum = ep->weight_sum;
        st.rel_loss = ep->loss;
    }

    if (msgpack_pack_map(pk, 13 + 2 * group) < 0 ||
        pk_kv_u64(pk, "v", RECORDS_VERSION) < 0 ||
        (group && (pk_kv_u64(pk, "model_version", ep->model_version) < 0 ||
                   pk_key(pk, "cluster") < 0 ||
                   msgpack_pack_str_with_body(pk, ep->cluster,
                                              strlen(ep->cluster)) < 0)) ||
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
    o = obj_get(&root, "model_version");
    if (o != NULL && !obj_u64(o, &s->model_version)) {
        *err = "model_version is not an unsigned integer";
        goto fail;
    }
    o = obj_get(&root, "cluster");
    if (o != NULL) {
        if (o->type != MSGPACK_OBJECT_STR ||
            o->via.str.size >= sizeof(s->cluster)) {
            *err = "cluster is not a string of at most 255 bytes";
            goto fail;
        }
        memcpy(s->cluster, o->via.str.ptr, o->via.str.size);
        s->cluster[o->via.str.size] = 0;
    }
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

/* ---- a partition's statistics (the group's stats topic) ---- */

static int pk_f64_bin(msgpack_packer *pk, const double *v, size_t n)
{
    unsigned char tmp[1024];

    if (msgpack_pack_bin(pk, n * 8) < 0)
        return -1;
    while (n > 0) {
        size_t m = n < sizeof(tmp) / 8 ? n : sizeof(tmp) / 8;
        for (size_t i = 0; i < m; i++) {
            uint64_t u;
            memcpy(&u, &v[i], 8);
            for (int b = 0; b < 8; b++)
                tmp[8 * i + b] = (unsigned char)(u >> (8 * b));
        }
        if (msgpack_pack_bin_body(pk, tmp, m * 8) < 0)
            return -1;
        v += m;
        n -= m;
    }
    return 0;
}

static double f64_from_le(const unsigned char *p)
{
    uint64_t u = 0;
    double d;

    for (int b = 7; b >= 0; b--)
        u = u << 8 | p[b];
    memcpy(&d, &u, 8);
    return d;
}

static int stats_row_live(const struct model *m, const double *B, uint32_t k,
                          uint32_t i)
{
    size_t len;

    if (model_item_id(m, i, &len) == NULL)
        return 0;
    for (uint32_t j = 0; j < k; j++)
        if (B[(size_t)i * k + j] != 0)
            return 1;
    return 0;
}

int records_stats_encode(struct records_enc *e, const struct records_stats *h,
                         const struct model *m, const double *A,
                         const double *B, const uint32_t *rows,
                         uint32_t nrows)
{
    const uint32_t k = model_params(m)->k, islots = model_item_slots(m);
    msgpack_packer pk;
    uint32_t n = 0;
    size_t len;

    if (rows) {
        for (uint32_t q = 0; q < nrows; q++)
            if (rows[q] >= islots || !model_item_id(m, rows[q], &len))
                return -EINVAL;
        n = nrows;
    } else {
        for (uint32_t i = 0; i < islots; i++)
            n += (uint32_t)stats_row_live(m, B, k, i);
    }
    /* The rows in the order the record lists them: rows[], or every
     * live slot. */
#define STATS_ROWS(q, i)                                                      \
    for (uint32_t q = 0, i = 0; rows ? q < nrows : q < islots; q++)          \
        if ((i = rows ? rows[q] : q), rows || stats_row_live(m, B, k, i))
    if ((uint64_t)n * k * 8 > UINT32_MAX)
        return -EFBIG;
    enc_start(e, &pk);
    if (msgpack_pack_map(&pk, 19) < 0 ||
        pk_kv_u64(&pk, "v", RECORDS_STATS_VERSION) < 0 ||
        pk_kv_str(&pk, "cluster", h->cluster) < 0 ||
        pk_kv_str(&pk, "owner", h->owner) < 0 || pk_kv_u64(&pk, "k", k) < 0 ||
        pk_kv_i64(&pk, "partition", h->part) < 0 ||
        pk_kv_u64(&pk, "seq", h->seq) < 0 ||
        pk_kv_u64(&pk, "base", h->base) < 0 ||
        pk_kv_i64(&pk, "ts", h->ts) < 0 ||
        pk_kv_i64(&pk, "offset", h->offset) < 0 ||
        pk_kv_u64(&pk, "events", h->events) < 0 ||
        pk_kv_f64(&pk, "weight_sum", h->weight_sum) < 0 ||
        pk_kv_f64(&pk, "norm", h->norm) < 0 ||
        pk_kv_u64(&pk, "users", h->users) < 0 ||
        pk_kv_u64(&pk, "model_version", h->model_version) < 0 ||
        pk_key(&pk, "sizes") < 0 ||
        msgpack_pack_array(&pk, k) < 0)
        return enc_fail(e);
    for (uint32_t j = 0; j < k; j++)
        if (msgpack_pack_uint64(&pk, h->sizes[j]) < 0)
            return enc_fail(e);
    if (pk_key(&pk, "mass") < 0 || pk_f64_bin(&pk, h->mass, k) < 0 ||
        pk_key(&pk, "A") < 0 ||
        pk_f64_bin(&pk, A, (size_t)k * k) < 0 || pk_key(&pk, "items") < 0 ||
        msgpack_pack_array(&pk, n) < 0)
        return enc_fail(e);
    STATS_ROWS(q, i) {
        const char *id = model_item_id(m, i, &len);
        if (msgpack_pack_str_with_body(&pk, id, len) < 0)
            return enc_fail(e);
    }
    if (pk_key(&pk, "B") < 0 || msgpack_pack_bin(&pk, (size_t)n * k * 8) < 0)
        return enc_fail(e);
    STATS_ROWS(q, i) {
        unsigned char tmp[8 * MODEL_K_MAX];
        for (uint32_t j = 0; j < k; j++) {
            uint64_t u;
            memcpy(&u, &B[(size_t)i * k + j], 8);
            for (int b = 0; b < 8; b++)
                tmp[8 * j + b] = (unsigned char)(u >> (8 * b));
        }
        if (msgpack_pack_bin_body(&pk, tmp, (size_t)k * 8) < 0)
            return enc_fail(e);
    }
#undef STATS_ROWS
    return 0;
}

static int bin_doubles(const msgpack_object *o, size_t n, double **out,
                       const char *name, const char **err)
{
    static __thread char msg[80];
    const unsigned char *p;
    double *v;

    if (o == NULL || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != n * 8) {
        snprintf(msg, sizeof(msg), "%s is missing or not a bin of %zu bytes",
                 name, n * 8);
        *err = msg;
        return -EBADMSG;
    }
    v = malloc(sizeof(double) * (n ? n : 1));
    if (v == NULL) {
        *err = "out of memory";
        return -ENOMEM;
    }
    p = (const unsigned char *)o->via.bin.ptr;
    for (size_t i = 0; i < n; i++) {
        v[i] = f64_from_le(p + 8 * i);
        if (!isfinite(v[i]) || (name[0] == 'B' && v[i] < 0)) {
            snprintf(msg, sizeof(msg), "%s[%zu] is %s", name, i,
                     isfinite(v[i]) ? "negative" : "not finite");
            free(v);
            *err = msg;
            return -EBADMSG;
        }
    }
    *out = v;
    return 0;
}

static int obj_str_copy(const msgpack_object *o, char *out, size_t cap)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
        o->via.str.size >= cap)
        return -1;
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = 0;
    return 0;
}

struct records_stats *records_stats_read(const void *buf, size_t len,
                                         const char **err)
{
    struct records_stats *s = NULL;
    msgpack_zone *zone = NULL;
    msgpack_object root;
    const msgpack_object *items;
    const char *dummy;
    size_t end;
    uint64_t v = 0, k;
    int64_t part;

    if (err == NULL)
        err = &dummy;
    if (mp_unpack_one(buf, len, RECORDS_READ_DEPTH, &zone, &root, &end, err) <
        0)
        goto fail;
    if (end != len || root.type != MSGPACK_OBJECT_MAP) {
        *err = "not one msgpack map";
        goto fail;
    }
    if (!obj_u64(obj_get(&root, "v"), &v) || v != RECORDS_STATS_VERSION) {
        *err = v == 2
                   ? "version 2 (every row, no base: a member of an older "
                     "build); this build reads version 3"
                   : "no version or an unsupported one";
        goto fail;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = "out of memory";
        goto fail;
    }
    if (obj_str_copy(obj_get(&root, "cluster"), s->cluster,
                     sizeof(s->cluster)) < 0 ||
        obj_str_copy(obj_get(&root, "owner"), s->owner, sizeof(s->owner)) <
            0) {
        *err = "cluster or owner missing or not a string";
        goto fail;
    }
    if (!obj_u64(obj_get(&root, "k"), &k) || k < 1 || k > MODEL_K_MAX) {
        *err = "k is missing or not in 1..256";
        goto fail;
    }
    s->k = (uint32_t)k;
    if (!obj_i64(obj_get(&root, "partition"), &part) || part < 0 ||
        part > INT32_MAX || !obj_u64(obj_get(&root, "seq"), &s->seq) ||
        !obj_u64(obj_get(&root, "base"), &s->base) ||
        (s->base && s->base >= s->seq) ||
        !obj_i64(obj_get(&root, "ts"), &s->ts) ||
        !obj_i64(obj_get(&root, "offset"), &s->offset) ||
        !obj_u64(obj_get(&root, "events"), &s->events) ||
        !obj_num(obj_get(&root, "weight_sum"), &s->weight_sum) ||
        !obj_num(obj_get(&root, "norm"), &s->norm) ||
        !obj_u64(obj_get(&root, "users"), &s->users) ||
        !obj_u64(obj_get(&root, "model_version"), &s->model_version) ||
        !isfinite(s->weight_sum) || !isfinite(s->norm) || s->norm < 0) {
        *err = "partition, seq, base, ts, offset, events, weight_sum, norm, "
               "users or model_version missing or out of range";
        goto fail;
    }
    s->part = (int32_t)part;
    const msgpack_object *sz = obj_get(&root, "sizes");
    if (sz == NULL || sz->type != MSGPACK_OBJECT_ARRAY ||
        sz->via.array.size != s->k) {
        *err = "sizes missing or not k counts";
        goto fail;
    }
    for (uint32_t j = 0; j < s->k; j++)
        if (!obj_u64(&sz->via.array.ptr[j], &s->sizes[j])) {
            *err = "sizes holds a value that is not a count";
            goto fail;
        }
    double *mass = NULL;
    if (bin_doubles(obj_get(&root, "mass"), s->k, &mass, "mass", err) < 0)
        goto fail;
    memcpy(s->mass, mass, s->k * sizeof(double));
    free(mass);
    items = obj_get(&root, "items");
    if (items == NULL || items->type != MSGPACK_OBJECT_ARRAY) {
        *err = "items missing or not an array";
        goto fail;
    }
    s->nitems = items->via.array.size;
    if (ids_copy(items, &s->items, &s->item_lens, "item", err) < 0 ||
        bin_doubles(obj_get(&root, "A"), (size_t)s->k * s->k, &s->A, "A",
                    err) < 0 ||
        bin_doubles(obj_get(&root, "B"), (size_t)s->nitems * s->k, &s->B, "B",
                    err) < 0)
        goto fail;
    msgpack_zone_free(zone);
    return s;
fail:
    msgpack_zone_free(zone);
    records_stats_free(s);
    return NULL;
}

void records_stats_free(struct records_stats *s)
{
    if (s == NULL)
        return;
    free(s->items);
    free(s->item_lens);
    free(s->A);
    free(s->B);
    free(s->slot);
    free(s);
}

/* ---- a partition's users (the group's state topic) ---- */

static int pk_state_head(msgpack_packer *pk, const struct records_state *h,
                         uint32_t k, uint32_t extra)
{
    if (msgpack_pack_map(pk, 6 + extra) < 0 ||
        pk_kv_u64(pk, "v", RECORDS_VERSION) < 0 ||
        pk_kv_str(pk, "cluster", h->cluster) < 0 || pk_kv_u64(pk, "k", k) < 0 ||
        pk_kv_i64(pk, "partition", h->part) < 0 ||
        pk_kv_u64(pk, "gen", h->gen) < 0)
        return -1;
    return pk_kv_str(pk, "kind", h->marker ? "marker" : "users");
}

int records_state_users_encode(struct records_enc *e,
                               const struct records_state *h,
                               const struct model *m,
                               int32_t (*part_of)(void *ctx, const char *id,
                                                  size_t len),
                               void *ctx, uint32_t *cursor, size_t max_bytes,
                               uint32_t *nusers)
{
    const uint32_t k = model_params(m)->k, U = model_user_slots(m);
    msgpack_packer pk;
    struct model_user_view v;
    uint32_t u = *cursor, n = 0;
    size_t bytes = 0;

    /* Count first: msgpack wants the array's length before it. */
    for (; u < U && bytes < max_bytes; u++) {
        if (model_user_get(m, u, &v) || part_of(ctx, v.id, v.id_len) != h->part)
            continue;
        bytes += 64 + v.id_len + (size_t)k * 4 + (size_t)v.nprofile * 24;
        n++;
    }
    enc_start(e, &pk);
    if (pk_state_head(&pk, h, k, 2) < 0 || pk_kv_u64(&pk, "chunk", h->chunk) < 0 ||
        pk_key(&pk, "users") < 0 || msgpack_pack_array(&pk, n) < 0)
        return enc_fail(e);
    for (uint32_t w = *cursor; w < u; w++) {
        const uint32_t *it;
        const float *va;
        uint32_t np;
        float loss, vnorm, ev;
        size_t len;
        if (model_user_get(m, w, &v) || part_of(ctx, v.id, v.id_len) != h->part)
            continue;
        model_user_profile(m, w, &it, &va, &np);
        model_user_sums(m, w, &loss, &vnorm, &ev);
        if (msgpack_pack_array(&pk, 8) < 0 ||
            msgpack_pack_str_with_body(&pk, v.id, v.id_len) < 0 ||
            msgpack_pack_int64(&pk, v.ts) < 0 ||
            msgpack_pack_bin(&pk, (size_t)k * 4) < 0 ||
            pk_f32_body(&pk, v.h, k) < 0 || msgpack_pack_array(&pk, np) < 0)
            return enc_fail(e);
        for (uint32_t q = 0; q < np; q++) {
            const char *id = model_item_id(m, it[q], &len);
            if (msgpack_pack_str_with_body(&pk, id, len) < 0)
                return enc_fail(e);
        }
        if (msgpack_pack_bin(&pk, (size_t)np * 4) < 0 ||
            pk_f32_body(&pk, va, np) < 0 || msgpack_pack_float(&pk, loss) < 0 ||
            msgpack_pack_float(&pk, vnorm) < 0 ||
            msgpack_pack_float(&pk, ev) < 0)
            return enc_fail(e);
    }
    *cursor = u;
    *nusers = n;
    return 0;
}

int records_state_marker_encode(struct records_enc *e,
                                const struct records_state *h, uint32_t k)
{
    msgpack_packer pk;

    enc_start(e, &pk);
    if (pk_state_head(&pk, h, k, 6) < 0 ||
        pk_kv_u64(&pk, "chunks", h->chunk) < 0 ||
        pk_kv_u64(&pk, "users", h->users) < 0 ||
        pk_kv_i64(&pk, "offset", h->offset) < 0 ||
        pk_kv_u64(&pk, "events", h->events) < 0 ||
        pk_kv_f64(&pk, "weight_sum", h->weight_sum) < 0 ||
        pk_kv_i64(&pk, "ts", h->ts) < 0)
        return enc_fail(e);
    return 0;
}

static int state_user_read(const msgpack_object *o, uint32_t k,
                           struct model_user_state *st, float *h,
                           const char ***items, size_t **lens, float **vals,
                           uint32_t *cap)
{
    const msgpack_object *a = o->via.array.ptr;
    double x;

    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 8 ||
        a[0].type != MSGPACK_OBJECT_STR || a[0].via.str.size == 0 ||
        a[0].via.str.size > MODEL_ID_MAX || !obj_i64(&a[1], &st->t) ||
        a[2].type != MSGPACK_OBJECT_BIN || a[2].via.bin.size != k * 4 ||
        a[3].type != MSGPACK_OBJECT_ARRAY || a[4].type != MSGPACK_OBJECT_BIN ||
        a[4].via.bin.size != a[3].via.array.size * 4)
        return -EBADMSG;
    st->id = a[0].via.str.ptr;
    st->id_len = a[0].via.str.size;
    for (uint32_t j = 0; j < k; j++)
        h[j] = f32_from_le((const unsigned char *)a[2].via.bin.ptr + 4 * j);
    st->h = h;
    st->n = a[3].via.array.size;
    if (st->n > *cap) {
        uint32_t c = st->n;
        const char **ni = realloc(*items, c * sizeof(**items));
        if (ni)
            *items = ni;
        size_t *nl = realloc(*lens, c * sizeof(**lens));
        if (nl)
            *lens = nl;
        float *nv = realloc(*vals, c * sizeof(**vals));
        if (nv)
            *vals = nv;
        if (!ni || !nl || !nv)
            return -ENOMEM;
        *cap = c;
    }
    for (uint32_t q = 0; q < st->n; q++) {
        const msgpack_object *it = &a[3].via.array.ptr[q];
        if (it->type != MSGPACK_OBJECT_STR)
            return -EBADMSG;
        (*items)[q] = it->via.str.ptr;
        (*lens)[q] = it->via.str.size;
        (*vals)[q] =
            f32_from_le((const unsigned char *)a[4].via.bin.ptr + 4 * q);
    }
    st->items = *items;
    st->item_lens = *lens;
    st->values = *vals;
    if (!obj_num(&a[5], &x))
        return -EBADMSG;
    st->loss = (float)x;
    if (!obj_num(&a[6], &x))
        return -EBADMSG;
    st->vnorm = (float)x;
    if (!obj_num(&a[7], &x))
        return -EBADMSG;
    st->evicted = (float)x;
    return 0;
}

/* The head of a state record (root: its top map), the users' array of a
 * chunk in *users. 0, or -EBADMSG with *err. */
static int state_head(const msgpack_object *root, struct records_state *h,
                      const msgpack_object **users, const char **err)
{
    const msgpack_object *o;
    uint64_t v, k;
    int64_t part;

    *users = NULL;
    if (root->type != MSGPACK_OBJECT_MAP ||
        !obj_u64(obj_get(root, "v"), &v) || v != RECORDS_VERSION) {
        *err = "not one msgpack map of version 1";
        return -EBADMSG;
    }
    if (obj_str_copy(obj_get(root, "cluster"), h->cluster,
                     sizeof(h->cluster)) < 0 ||
        !obj_u64(obj_get(root, "k"), &k) || k < 1 || k > MODEL_K_MAX ||
        !obj_i64(obj_get(root, "partition"), &part) || part < 0 ||
        part > INT32_MAX || !obj_u64(obj_get(root, "gen"), &h->gen)) {
        *err = "cluster, k, partition or gen missing or out of range";
        return -EBADMSG;
    }
    h->k = (uint32_t)k;
    h->part = (int32_t)part;
    o = obj_get(root, "kind");
    if (o && obj_key_is(o, "marker")) {
        uint64_t chunks;
        h->marker = true;
        if (!obj_u64(obj_get(root, "chunks"), &chunks) ||
            chunks > UINT32_MAX ||
            !obj_u64(obj_get(root, "users"), &h->users) ||
            !obj_i64(obj_get(root, "offset"), &h->offset) ||
            !obj_u64(obj_get(root, "events"), &h->events) ||
            !obj_num(obj_get(root, "weight_sum"), &h->weight_sum) ||
            !obj_i64(obj_get(root, "ts"), &h->ts) || h->offset < 0) {
            *err = "a marker without chunks, users, offset, events, "
                   "weight_sum or ts";
            return -EBADMSG;
        }
        h->chunk = (uint32_t)chunks;
        return 0;
    }
    if (!o || !obj_key_is(o, "users")) {
        *err = "kind is neither users nor marker";
        return -EBADMSG;
    }
    uint64_t chunk;
    o = obj_get(root, "users");
    if (!obj_u64(obj_get(root, "chunk"), &chunk) || chunk > UINT32_MAX ||
        o == NULL || o->type != MSGPACK_OBJECT_ARRAY) {
        *err = "chunk or users missing";
        return -EBADMSG;
    }
    h->chunk = (uint32_t)chunk;
    h->users = o->via.array.size;
    *users = o;
    return 0;
}

int records_state_read(const void *buf, size_t len, struct records_state *h,
                       records_state_user_fn each, void *ctx, const char **err)
{
    msgpack_zone *zone = NULL;
    msgpack_object root;
    const msgpack_object *o;
    const char *dummy;
    size_t end;
    int rc = -EBADMSG;

    if (err == NULL)
        err = &dummy;
    memset(h, 0, sizeof(*h));
    if (mp_unpack_one(buf, len, RECORDS_READ_DEPTH, &zone, &root, &end, err) <
        0)
        goto out;
    if (end != len) {
        *err = "not one msgpack map of version 1";
        goto out;
    }
    if ((rc = state_head(&root, h, &o, err)) || h->marker || !each)
        goto out;
    float hv[MODEL_K_MAX];
    const char **items = NULL;
    size_t *lens = NULL;
    float *vals = NULL;
    uint32_t cap = 0;
    for (uint32_t i = 0; i < o->via.array.size && rc == 0; i++) {
        struct model_user_state st;
        memset(&st, 0, sizeof(st));
        rc = state_user_read(&o->via.array.ptr[i], h->k, &st, hv, &items,
                             &lens, &vals, &cap);
        if (rc)
            *err = rc == -ENOMEM ? "out of memory" : "a malformed user";
        else if ((rc = each(ctx, &st)) != 0)
            *err = "a user the model refused";
    }
    free(items);
    free(lens);
    free(vals);
out:
    msgpack_zone_free(zone);
    return rc;
}

/* One element of a map at p (avail bytes), checked by mpscan to depth:
 * a scalar decoded as msgpack-c would, a container or a blob only typed
 * (an array with its size, no elements). Its bytes in *used. */
static int mp_shallow(const uint8_t *p, size_t avail, uint32_t depth,
                      msgpack_object *o, size_t *used)
{
    struct mpscan sc;
    if (mpscan_value(p, avail, depth, &sc) < 0)
        return -EBADMSG;
    *used = sc.end;
    memset(o, 0, sizeof(*o));
    uint8_t b = p[0];
    uint64_t u = 0;
    unsigned n = 0;
    if (b <= 0x7f) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = b;
    } else if (b >= 0xe0) {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = (int8_t)b;
    } else if (b <= 0x8f) {
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = b & 0x0f;
    } else if (b <= 0x9f) {
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = b & 0x0f;
    } else if (b <= 0xbf || (b >= 0xd9 && b <= 0xdb)) {
        n = b <= 0xbf ? 0 : 1u << (b - 0xd9);
        u = b <= 0xbf ? (b & 0x1fu) : 0;
        for (unsigned i = 0; i < n; i++)
            u = u << 8 | p[1 + i];
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)u;
        o->via.str.ptr = (const char *)p + 1 + n;
    } else if (b == 0xc0) {
        o->type = MSGPACK_OBJECT_NIL;
    } else if (b == 0xc2 || b == 0xc3) {
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = b == 0xc3;
    } else if (b >= 0xcc && b <= 0xcf) {
        n = 1u << (b - 0xcc);
        for (unsigned i = 0; i < n; i++)
            u = u << 8 | p[1 + i];
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = u;
    } else if (b >= 0xd0 && b <= 0xd3) {
        n = 1u << (b - 0xd0);
        for (unsigned i = 0; i < n; i++)
            u = u << 8 | p[1 + i];
        int64_t v = n == 8   ? (int64_t)u
                    : n == 4 ? (int32_t)(uint32_t)u
                    : n == 2 ? (int16_t)(uint16_t)u
                             : (int8_t)(uint8_t)u;
        if (v < 0) {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = v;
        } else {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = (uint64_t)v;
        }
    } else if (b == 0xca || b == 0xcb) {
        n = b == 0xca ? 4 : 8;
        for (unsigned i = 0; i < n; i++)
            u = u << 8 | p[1 + i];
        if (n == 4) {
            uint32_t w = (uint32_t)u;
            float f;
            memcpy(&f, &w, 4);
            o->type = MSGPACK_OBJECT_FLOAT32;
            o->via.f64 = f;
        } else {
            double d;
            memcpy(&d, &u, 8);
            o->type = MSGPACK_OBJECT_FLOAT64;
            o->via.f64 = d;
        }
    } else if (b == 0xdc || b == 0xdd) {
        n = b == 0xdc ? 2 : 4;
        for (unsigned i = 0; i < n; i++)
            u = u << 8 | p[1 + i];
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)u;
    } else if (b == 0xde || b == 0xdf) {
        o->type = MSGPACK_OBJECT_MAP;
    } else {
        o->type = MSGPACK_OBJECT_BIN; /* bin or ext: never a head's field */
    }
    return 0;
}

int records_state_head(const void *buf, size_t len, struct records_state *h,
                       const char **err)
{
    const uint8_t *p = buf;
    const msgpack_object *users;
    msgpack_object root;
    msgpack_object_kv kv[RECORDS_HEAD_KEYS];
    const char *dummy;
    uint64_t n = 0;
    size_t off = 1, used;

    if (err == NULL)
        err = &dummy;
    memset(h, 0, sizeof(*h));
    if (len == 0) {
        *err = "empty input";
        return -EBADMSG;
    }
    if (p[0] >= 0x80 && p[0] <= 0x8f) {
        n = p[0] & 0x0f;
    } else if ((p[0] == 0xde && len >= 3) || (p[0] == 0xdf && len >= 5)) {
        unsigned w = p[0] == 0xde ? 2 : 4;
        for (unsigned i = 0; i < w; i++)
            n = n << 8 | p[1 + i];
        off += w;
    } else {
        /* Not a map: whatever it is, the full reader's words. */
        return records_state_read(buf, len, h, NULL, NULL, err);
    }
    if (n > RECORDS_HEAD_KEYS)
        return records_state_read(buf, len, h, NULL, NULL, err);
    for (uint64_t i = 0; i < 2 * n; i++) {
        msgpack_object *o = i % 2 ? &kv[i / 2].val : &kv[i / 2].key;
        if (off >= len ||
            mp_shallow(p + off, len - off, RECORDS_READ_DEPTH - 1, o, &used)) {
            *err = "not msgpack, or truncated";
            return -EBADMSG;
        }
        off += used;
    }
    if (off != len) {
        *err = "not one msgpack map of version 1";
        return -EBADMSG;
    }
    root.type = MSGPACK_OBJECT_MAP;
    root.via.map.size = (uint32_t)n;
    root.via.map.ptr = kv;
    return state_head(&root, h, &users, err);
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
