/* event.c -- Kafka message value -> engagement events (docs/design.md §2).
 *
 * The decoder turns one message value, msgpack or JSON, into zero or more
 * events and tells the caller, per event, why it refused the others. It
 * owns its configuration (field names, the type weight table, limits) and
 * a msgpack zone that is reused from message to message and grows only to
 * the largest message seen, so the msgpack path allocates nothing per
 * event once warm. JSON goes through jansson, which builds a tree per
 * message; JSON is the convenience format, msgpack the fast one.
 *
 * Decisions that the contract leaves open, also in docs/snapshot-format.md:
 * - A structurally bad value (not msgpack/JSON, truncated, trailing bytes,
 *   over max_bytes, nesting over max_depth, array over max_events, JSON
 *   duplicate key) is rejected whole: one on_reject, no on_event.
 * - The fields of one event are judged in the order user, item, weight,
 *   ts, type; the first bad one names the reason. Unknown keys are
 *   ignored. A msgpack map with one of our fields twice is
 *   duplicate_field (jansson refuses any duplicate key in the message).
 * - nil/null in an optional field (weight, ts, type) counts as absent.
 * - ts may be an integral float (JavaScript producers send 1.7e12).
 * - With a type weight table, an event without a type is missing_type:
 *   the table lists the types the operator accepts.
 * - Weights above MODEL_WEIGHT_MAX (after the type weight) are
 *   weight_too_large: the model refuses them (it keeps float32 profiles);
 *   an overflow to Inf by the type weight is nonfinite_weight.
 * - Ids must be valid UTF-8 without NUL: they are published as msgpack
 *   strings and served in JSON. JSON integer ids are limited by jansson
 *   to 2^63 - 1; larger ones make jansson refuse the message
 *   (invalid_json), so such producers must send ids as strings.
 *
 * It never calls a callback after returning an error, never lets NaN,
 * Inf or a negative weight out, and never keeps a pointer into the
 * message past the callback.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <msgpack.h>

#include "event.h"
#include "model.h"
#include "mpscan.h"
#include "utf8.h"

/* What the decoder lets through, the model must take. */
_Static_assert(EVENT_ID_MAX == MODEL_ID_MAX, "id limits differ");

#define EVENT_DEFAULT_MAX_EVENTS 10000u
#define EVENT_DEFAULT_MAX_BYTES  (1u << 20)
#define EVENT_DEFAULT_MAX_DEPTH  8u
#define EVENT_ZONE_MIN           (64u << 10)
/* 9999-12-31T23:59:59.999Z in ms. */
#define EVENT_TS_MAX INT64_C(253402300799999)
_Static_assert(EVENT_TS_MAX <= MODEL_TS_MAX, "ts limits differ");

static const char *const reason_names[EVENT_REASON_COUNT] = {
    [EVENT_OK] = "ok",
    [EVENT_EMPTY] = "empty_message",
    [EVENT_INVALID_MSGPACK] = "invalid_msgpack",
    [EVENT_INVALID_JSON] = "invalid_json",
    [EVENT_TOO_LARGE] = "too_large",
    [EVENT_TOO_MANY_EVENTS] = "too_many_events",
    [EVENT_TOO_DEEP] = "too_deep",
    [EVENT_DUPLICATE_FIELD] = "duplicate_field",
    [EVENT_NOT_AN_OBJECT] = "not_an_object",
    [EVENT_MISSING_USER] = "missing_user",
    [EVENT_MISSING_ITEM] = "missing_item",
    [EVENT_BAD_USER] = "bad_user",
    [EVENT_BAD_ITEM] = "bad_item",
    [EVENT_EMPTY_ID] = "empty_id",
    [EVENT_ID_TOO_LONG] = "id_too_long",
    [EVENT_BAD_WEIGHT] = "bad_weight",
    [EVENT_NEGATIVE_WEIGHT] = "negative_weight",
    [EVENT_NONFINITE_WEIGHT] = "nonfinite_weight",
    [EVENT_BAD_TS] = "bad_ts",
    [EVENT_BAD_TYPE] = "bad_type",
    [EVENT_UNKNOWN_TYPE] = "unknown_type",
    [EVENT_MISSING_TYPE] = "missing_type",
    [EVENT_WEIGHT_TOO_LARGE] = "weight_too_large",
    [EVENT_MODEL_REFUSED] = "model_refused",
    [EVENT_WRONG_PARTITION] = "wrong_partition",
};

const char *event_reason_name(enum event_reason r)
{
    if ((unsigned)r >= EVENT_REASON_COUNT)
        return "unknown";
    return reason_names[r];
}

enum field { F_USER, F_ITEM, F_WEIGHT, F_TYPE, F_TS, F_COUNT };

struct name {
    char s[EVENT_FIELD_MAX + 1];
    size_t len;
};

struct event_decoder {
    enum event_format format;
    struct name field[F_COUNT];
    struct name type[EVENT_TYPES_MAX];
    double type_weight[EVENT_TYPES_MAX];
    size_t ntypes;
    uint32_t max_events;
    size_t max_bytes;
    uint32_t max_depth;
    msgpack_zone *zone;
    size_t zone_chunk;
    /* Decimal renderings of uint ids, alive during on_event. */
    char num[2][24];
};

/* What one event's fields look like once found, format independent. */
enum vkind { V_ABSENT, V_NIL, V_STR, V_UINT, V_NEG, V_FLOAT, V_OTHER };

struct val {
    enum vkind kind;
    const char *s;
    size_t len;
    uint64_t u;
    double f;
};

static const char *const default_fields[F_COUNT] = {
    [F_USER] = "user", [F_ITEM] = "item", [F_WEIGHT] = "weight",
    [F_TYPE] = "type", [F_TS] = "ts",
};

const char *event_decoder_conf_check(const struct event_decoder_conf *c)
{
    const char *f[F_COUNT] = {c->field_user, c->field_item, c->field_weight,
                              c->field_type, c->field_ts};

    if (c->format != EVENT_FORMAT_AUTO && c->format != EVENT_FORMAT_MSGPACK &&
        c->format != EVENT_FORMAT_JSON)
        return "format must be msgpack, json or auto";
    for (int i = 0; i < F_COUNT; i++) {
        const char *a = f[i] ? f[i] : default_fields[i];
        if (a[0] == '\0')
            return "a field name is empty";
        if (strlen(a) > EVENT_FIELD_MAX)
            return "a field name is longer than 64 bytes";
        for (int j = 0; j < i; j++) {
            const char *b = f[j] ? f[j] : default_fields[j];
            if (strcmp(a, b) == 0)
                return "two fields have the same name";
        }
    }
    if (c->ntypes > EVENT_TYPES_MAX)
        return "more than 64 type weights";
    if (c->ntypes > 0 && c->types == NULL)
        return "type weights missing";
    for (size_t i = 0; i < c->ntypes; i++) {
        const char *t = c->types[i].type;
        double w = c->types[i].weight;
        if (t == NULL || t[0] == '\0')
            return "a type name is empty";
        if (strlen(t) > EVENT_FIELD_MAX)
            return "a type name is longer than 64 bytes";
        if (!(w >= 0) || !isfinite(w))
            return "a type weight is negative or not finite";
        for (size_t j = 0; j < i; j++)
            if (strcmp(t, c->types[j].type) == 0)
                return "a type weight is given twice";
    }
    if (c->max_depth > EVENT_DEPTH_LIMIT)
        return "max depth above 32";
    if (c->max_bytes > (size_t)INT32_MAX)
        return "max bytes above 2 GiB";
    if (c->max_events > (uint32_t)INT32_MAX)
        return "max events above 2^31 - 1";
    return NULL;
}

static void name_set(struct name *n, const char *s)
{
    n->len = strlen(s);
    memcpy(n->s, s, n->len + 1);
}

struct event_decoder *event_decoder_new(const struct event_decoder_conf *c)
{
    struct event_decoder *d;
    const char *f[F_COUNT] = {c->field_user, c->field_item, c->field_weight,
                              c->field_type, c->field_ts};

    if (event_decoder_conf_check(c) != NULL) {
        errno = EINVAL;
        return NULL;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->format = c->format;
    for (int i = 0; i < F_COUNT; i++)
        name_set(&d->field[i], f[i] ? f[i] : default_fields[i]);
    d->ntypes = c->ntypes;
    for (size_t i = 0; i < c->ntypes; i++) {
        name_set(&d->type[i], c->types[i].type);
        d->type_weight[i] = c->types[i].weight;
    }
    d->max_events = c->max_events ? c->max_events : EVENT_DEFAULT_MAX_EVENTS;
    d->max_bytes = c->max_bytes ? c->max_bytes : EVENT_DEFAULT_MAX_BYTES;
    d->max_depth = c->max_depth ? c->max_depth : EVENT_DEFAULT_MAX_DEPTH;
    d->zone_chunk = EVENT_ZONE_MIN;
    d->zone = msgpack_zone_new(d->zone_chunk);
    if (d->zone == NULL) {
        free(d);
        errno = ENOMEM;
        return NULL;
    }
    return d;
}

void event_decoder_free(struct event_decoder *d)
{
    if (d == NULL)
        return;
    msgpack_zone_free(d->zone);
    free(d);
}

void event_decoder_destroy(struct event_decoder **d)
{
    event_decoder_free(*d);
    *d = NULL;
}

static size_t u64_dec(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

/* An id: string of 1..EVENT_ID_MAX UTF-8 bytes, or an unsigned integer
 * rendered in decimal into slot. */
static enum event_reason id_take(struct event_decoder *d, const struct val *v,
                                 int slot, enum event_reason missing,
                                 enum event_reason bad, const char **id,
                                 size_t *len)
{
    switch (v->kind) {
    case V_ABSENT:
        return missing;
    case V_STR:
        if (v->len == 0)
            return EVENT_EMPTY_ID;
        if (v->len > EVENT_ID_MAX)
            return EVENT_ID_TOO_LONG;
        if (!utf8_valid(v->s, v->len))
            return bad;
        *id = v->s;
        *len = v->len;
        return EVENT_OK;
    case V_UINT:
        *len = u64_dec(d->num[slot], v->u);
        *id = d->num[slot];
        return EVENT_OK;
    default:
        return bad;
    }
}

/* Judges the fields of one event; fills ev on EVENT_OK. */
static enum event_reason event_judge(struct event_decoder *d,
                                     const struct val f[F_COUNT],
                                     int64_t default_ts, struct event *ev)
{
    enum event_reason r;
    const struct val *w = &f[F_WEIGHT], *t = &f[F_TS], *ty = &f[F_TYPE];

    r = id_take(d, &f[F_USER], 0, EVENT_MISSING_USER, EVENT_BAD_USER, &ev->user,
                &ev->user_len);
    if (r != EVENT_OK)
        return r;
    r = id_take(d, &f[F_ITEM], 1, EVENT_MISSING_ITEM, EVENT_BAD_ITEM, &ev->item,
                &ev->item_len);
    if (r != EVENT_OK)
        return r;

    switch (w->kind) {
    case V_ABSENT:
    case V_NIL:
        ev->weight = 1.0;
        break;
    case V_UINT:
        ev->weight = (double)w->u;
        break;
    case V_NEG:
        return EVENT_NEGATIVE_WEIGHT;
    case V_FLOAT:
        if (isnan(w->f) || isinf(w->f))
            return EVENT_NONFINITE_WEIGHT;
        if (w->f < 0)
            return EVENT_NEGATIVE_WEIGHT;
        ev->weight = w->f + 0.0; /* -0.0 becomes 0.0 */
        break;
    default:
        return EVENT_BAD_WEIGHT;
    }

    switch (t->kind) {
    case V_ABSENT:
    case V_NIL:
        if (default_ts < 0 || default_ts > EVENT_TS_MAX)
            return EVENT_BAD_TS;
        ev->ts = default_ts;
        break;
    case V_UINT:
        if (t->u > (uint64_t)EVENT_TS_MAX)
            return EVENT_BAD_TS;
        ev->ts = (int64_t)t->u;
        break;
    case V_FLOAT:
        if (!(t->f >= 0 && t->f <= (double)EVENT_TS_MAX) || t->f != floor(t->f))
            return EVENT_BAD_TS;
        ev->ts = (int64_t)t->f;
        break;
    default:
        return EVENT_BAD_TS;
    }

    if (d->ntypes > 0) {
        size_t i;
        if (ty->kind == V_ABSENT || ty->kind == V_NIL)
            return EVENT_MISSING_TYPE;
        if (ty->kind != V_STR)
            return EVENT_BAD_TYPE;
        for (i = 0; i < d->ntypes; i++)
            if (d->type[i].len == ty->len &&
                memcmp(d->type[i].s, ty->s, ty->len) == 0)
                break;
        if (i == d->ntypes)
            return EVENT_UNKNOWN_TYPE;
        ev->weight *= d->type_weight[i];
    }
    if (isinf(ev->weight))
        return EVENT_NONFINITE_WEIGHT;
    if (ev->weight > MODEL_WEIGHT_MAX)
        return EVENT_WEIGHT_TOO_LARGE;
    return EVENT_OK;
}

/* ---- msgpack ---- */

static void mp_val(const msgpack_object *o, struct val *v)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        v->kind = V_NIL;
        break;
    case MSGPACK_OBJECT_STR:
        v->kind = V_STR;
        v->s = o->via.str.ptr;
        v->len = o->via.str.size;
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        v->kind = V_UINT;
        v->u = o->via.u64;
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        v->kind = V_NEG;
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        v->kind = V_FLOAT;
        v->f = o->via.f64;
        break;
    default:
        v->kind = V_OTHER;
        break;
    }
}

static enum event_reason mp_event(struct event_decoder *d,
                                  const msgpack_object *o, int64_t default_ts,
                                  struct event *ev)
{
    struct val f[F_COUNT];
    unsigned seen = 0;

    if (o->type != MSGPACK_OBJECT_MAP)
        return EVENT_NOT_AN_OBJECT;
    for (int i = 0; i < F_COUNT; i++)
        f[i].kind = V_ABSENT;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        if (k->via.str.size == 0)
            continue;
        for (int j = 0; j < F_COUNT; j++) {
            /* Length and first byte before memcmp: most keys are short
             * and the call would cost more than the compare. */
            if (k->via.str.size != d->field[j].len ||
                k->via.str.ptr[0] != d->field[j].s[0] ||
                memcmp(k->via.str.ptr, d->field[j].s, d->field[j].len) != 0)
                continue;
            if (seen & 1u << j)
                return EVENT_DUPLICATE_FIELD;
            seen |= 1u << j;
            mp_val(&o->via.map.ptr[i].val, &f[j]);
            break;
        }
    }
    return event_judge(d, f, default_ts, ev);
}

/* Makes the zone's first chunk big enough for need bytes, so that
 * msgpack_unpack does not go back to malloc; grows only. */
static int zone_fit(struct event_decoder *d, size_t need)
{
    msgpack_zone *z;
    size_t chunk = d->zone_chunk;

    msgpack_zone_clear(d->zone);
    if (need <= chunk)
        return 0;
    while (chunk < need)
        chunk *= 2;
    z = msgpack_zone_new(chunk);
    if (z == NULL)
        return -ENOMEM;
    msgpack_zone_free(d->zone);
    d->zone = z;
    d->zone_chunk = chunk;
    return 0;
}

static int mp_decode(struct event_decoder *d, const char *buf, size_t len,
                     int64_t default_ts, event_fn on_event,
                     event_reject_fn on_reject, void *ctx)
{
    struct mpscan s;
    msgpack_object root;
    size_t off = 0;
    struct event ev;
    enum event_reason r;
    int rc, n = 0;

    rc = mpscan_value(buf, len, d->max_depth, &s);
    if (rc == -ELOOP) {
        on_reject(ctx, EVENT_TOO_DEEP);
        return 0;
    }
    if (rc < 0 || s.end != len) {
        on_reject(ctx, EVENT_INVALID_MSGPACK);
        return 0;
    }
    if (zone_fit(d, s.dom_bytes) < 0)
        return -ENOMEM;
    switch (msgpack_unpack(buf, len, &off, d->zone, &root)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        return -ENOMEM;
    default: /* mpscan let through what msgpack-c refuses */
        on_reject(ctx, EVENT_INVALID_MSGPACK);
        return 0;
    }
    if (root.type != MSGPACK_OBJECT_ARRAY) {
        r = mp_event(d, &root, default_ts, &ev);
        if (r != EVENT_OK) {
            on_reject(ctx, r);
            return 0;
        }
        on_event(ctx, &ev);
        return 1;
    }
    if (root.via.array.size > d->max_events) {
        on_reject(ctx, EVENT_TOO_MANY_EVENTS);
        return 0;
    }
    for (uint32_t i = 0; i < root.via.array.size; i++) {
        r = mp_event(d, &root.via.array.ptr[i], default_ts, &ev);
        if (r != EVENT_OK) {
            on_reject(ctx, r);
            continue;
        }
        on_event(ctx, &ev);
        n++;
    }
    return n;
}

/* ---- JSON ---- */

static void js_val(const json_t *j, struct val *v)
{
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->kind = V_NIL;
        break;
    case JSON_STRING:
        v->kind = V_STR;
        v->s = json_string_value(j);
        v->len = json_string_length(j);
        break;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(j);
        if (i >= 0) {
            v->kind = V_UINT;
            v->u = (uint64_t)i;
        } else
            v->kind = V_NEG;
        break;
    }
    case JSON_REAL:
        v->kind = V_FLOAT;
        v->f = json_real_value(j);
        break;
    default:
        v->kind = V_OTHER;
        break;
    }
}

static enum event_reason js_event(struct event_decoder *d, const json_t *o,
                                  int64_t default_ts, struct event *ev)
{
    struct val f[F_COUNT];

    if (!json_is_object(o))
        return EVENT_NOT_AN_OBJECT;
    for (int i = 0; i < F_COUNT; i++) {
        const json_t *v = json_object_getn(o, d->field[i].s, d->field[i].len);
        if (v == NULL)
            f[i].kind = V_ABSENT;
        else
            js_val(v, &f[i]);
    }
    return event_judge(d, f, default_ts, ev);
}

/* Containers nested in j, j itself counted; stops counting past limit. */
static uint32_t js_depth(const json_t *j, uint32_t limit)
{
    uint32_t best = 0;

    if (!json_is_object(j) && !json_is_array(j))
        return 0;
    if (limit == 0)
        return 1;
    if (json_is_array(j)) {
        size_t i;
        const json_t *v;
        json_array_foreach(j, i, v)
        {
            uint32_t dv = js_depth(v, limit - 1);
            if (dv > best)
                best = dv;
            if (best >= limit)
                break;
        }
    } else {
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            uint32_t dv = js_depth(v, limit - 1);
            if (dv > best)
                best = dv;
            if (best >= limit)
                break;
        }
    }
    return best + 1;
}

static int js_decode(struct event_decoder *d, const char *buf, size_t len,
                     int64_t default_ts, event_fn on_event,
                     event_reject_fn on_reject, void *ctx)
{
    json_error_t err;
    json_t *root;
    struct event ev;
    enum event_reason r;
    int n = 0;

    root = json_loadb(buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        switch (json_error_code(&err)) {
        case json_error_out_of_memory:
            return -ENOMEM;
        case json_error_stack_overflow:
            r = EVENT_TOO_DEEP;
            break;
        case json_error_duplicate_key:
            r = EVENT_DUPLICATE_FIELD;
            break;
        default:
            r = EVENT_INVALID_JSON;
            break;
        }
        on_reject(ctx, r);
        return 0;
    }
    if (js_depth(root, d->max_depth) > d->max_depth) {
        on_reject(ctx, EVENT_TOO_DEEP);
        goto out;
    }
    if (!json_is_array(root)) {
        r = js_event(d, root, default_ts, &ev);
        if (r != EVENT_OK)
            on_reject(ctx, r);
        else {
            on_event(ctx, &ev);
            n = 1;
        }
        goto out;
    }
    if (json_array_size(root) > d->max_events) {
        on_reject(ctx, EVENT_TOO_MANY_EVENTS);
        goto out;
    }
    for (size_t i = 0; i < json_array_size(root); i++) {
        r = js_event(d, json_array_get(root, i), default_ts, &ev);
        if (r != EVENT_OK) {
            on_reject(ctx, r);
            continue;
        }
        on_event(ctx, &ev);
        n++;
    }
out:
    json_decref(root);
    return n;
}

static bool looks_json(unsigned char c)
{
    return c == '{' || c == '[' || c == ' ' || c == '\t' || c == '\n' ||
           c == '\r';
}

int event_decode(struct event_decoder *d, const void *buf, size_t len,
                 int64_t default_ts_ms, event_fn on_event,
                 event_reject_fn on_reject, void *ctx)
{
    enum event_format fmt;

    if (d == NULL || on_event == NULL || on_reject == NULL ||
        (buf == NULL && len > 0))
        return -EINVAL;
    if (len == 0) {
        on_reject(ctx, EVENT_EMPTY);
        return 0;
    }
    if (len > d->max_bytes) {
        on_reject(ctx, EVENT_TOO_LARGE);
        return 0;
    }
    fmt = d->format;
    if (fmt == EVENT_FORMAT_AUTO)
        fmt = looks_json(*(const unsigned char *)buf) ? EVENT_FORMAT_JSON
                                                      : EVENT_FORMAT_MSGPACK;
    if (fmt == EVENT_FORMAT_JSON)
        return js_decode(d, buf, len, default_ts_ms, on_event, on_reject, ctx);
    return mp_decode(d, buf, len, default_ts_ms, on_event, on_reject, ctx);
}
