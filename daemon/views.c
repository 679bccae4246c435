/* views.c -- what nmfd shows over HTTP, read from the model as it is.
 *
 * The http provider's callbacks (/metrics, /healthz, /readyz, /snapshot,
 * /users/ID, /topics) and the dashboard's event for each published epoch.
 * Each runs on the loop between two of its callbacks, so it sees the model
 * exactly as the last fold and the last refresh left it.
 *
 * This file owns the HTTP endpoint (struct http), the item display names,
 * and the dense snapshot of the current epoch, encoded once and shared by
 * concurrent /snapshot responses. It must never change the model or the
 * input positions: it only reads; readiness and health are the owner's
 * word, asked through the callbacks in views_conf.
 */
#include "views.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "config.h"
#include "csv.h"
#include "http.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "recommend.h"
#include "records.h"

#define VIEWS_SSE_TOPS 10 /* top items per topic on the dashboard */

/* The dense snapshot of one epoch, shared by concurrent /snapshot
 * responses and freed with the last of them. */
struct snapbuf {
    unsigned refs;
    uint64_t epoch;
    void *data;
    size_t len;
};

struct views {
    struct views_conf c;
    struct http *http;
    struct records_enc *enc;
    json_t *item_names; /* item id -> display name, or NULL */
    struct snapbuf *snap;
    void (*closed)(void *arg); /* views_close's caller */
    void *closed_arg;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void snapbuf_release(void *arg)
{
    struct snapbuf *b = arg;
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static json_t *topics_json(struct views *s, uint32_t top_n)
{
    const struct model_params *mp = model_params(s->c.model);
    uint32_t k = mp->k;
    uint64_t *sizes = calloc(k, sizeof(*sizes));
    double *mass = calloc(k, sizeof(*mass));
    uint32_t *items = calloc(top_n ? top_n : 1, sizeof(*items));
    float *w = calloc(top_n ? top_n : 1, sizeof(*w));
    json_t *arr = json_array();

    if (!sizes || !mass || !items || !w || !arr)
        goto out;
    model_segment_sizes(s->c.model, sizes, mass);
    for (uint32_t j = 0; j < k; j++) {
        uint32_t n = model_topic_top(s->c.model, j, top_n, items, w);
        json_t *top = json_array();
        for (uint32_t t = 0; t < n; t++) {
            size_t len;
            const char *id = model_item_id(s->c.model, items[t], &len);
            json_t *name = NULL;
            if (!id)
                continue;
            if (s->item_names)
                name = json_object_getn(s->item_names, id, len);
            json_array_append_new(
                top, json_pack("[o f]",
                               name ? json_incref(name) : json_stringn(id, len),
                               (double)w[t]));
        }
        json_array_append_new(
            arr,
            json_pack("{s:i s:I s:f s:f s:o}", "topic", (json_int_t)j, "users",
                      (json_int_t)sizes[j], "mass", mass[j], "continuity",
                      s->c.continuity ? s->c.continuity[j] : 1.0, "top", top));
    }
out:
    free(sizes);
    free(mass);
    free(items);
    free(w);
    return arr;
}

void views_epoch(struct views *s, const struct model_stats *st, double rate)
{
    int64_t lag = -1;
    json_t *topics, *sizes, *doc;
    struct ingest_stats is;
    char *text;
    if (!s)
        return;

    if (!s->http)
        return;
    ingest_stats(s->c.ing, &is);
    lag = ingest_lag(s->c.ing);
    topics = topics_json(s, VIEWS_SSE_TOPS);
    sizes = json_array();
    for (size_t j = 0; j < json_array_size(topics); j++)
        json_array_append(sizes,
                          json_object_get(json_array_get(topics, j), "users"));
    doc = json_pack(
        "{s:I s:I s:i s:I s:I s:I s:I s:f s:I s:f s:o s:o}", "epoch",
        (json_int_t)*s->c.epoch, "ts", (json_int_t)now_ms(), "k",
        (json_int_t)model_params(s->c.model)->k, "users", (json_int_t)st->users,
        "items", (json_int_t)st->items, "events", (json_int_t)st->events,
        "rejected", (json_int_t)is.rejected, "rate", rate, "lag",
        (json_int_t)lag, "loss", st->rel_loss, "segment_sizes", sizes, "topics",
        topics);
    if (!doc)
        return;
    if (model_params(s->c.model)->holdout > 0)
        json_object_set_new(doc, "holdout_loss", json_real(st->holdout_loss));
    if (s->c.group_json) {
        char *g = s->c.group_json(s->c.ctx);
        json_t *gj = g ? json_loads(g, 0, NULL) : NULL;
        free(g);
        if (gj)
            json_object_set_new(doc, "group", gj);
    }
    text = json_dumps(doc, JSON_COMPACT);
    if (text)
        http_sse_broadcast(s->http, "epoch", text);
    free(text);
    json_decref(doc);
}

/* ---- the provider -------------------------------------------------------- */

static int http_metrics(void *ctx, char **text, size_t *len)
{
    struct views *s = ctx;
    return metrics_render(s->c.metrics, text, len);
}

static int http_health(void *ctx)
{
    struct views *s = ctx;
    return s->c.health(s->c.ctx);
}

static int http_ready(void *ctx, const char **why)
{
    struct views *s = ctx;
    return s->c.ready(s->c.ctx, why);
}

static int http_snapshot(void *ctx, const void **buf, size_t *len,
                         void (**release)(void *), void **ctx2)
{
    struct views *s = ctx;
    uint64_t epoch = *s->c.epoch;
    if (!s->snap || s->snap->epoch != epoch) {
        struct records_epoch ep = {
            .epoch = epoch,
            .ts = (int64_t)now_ms(),
            .refresh_interval_ms = (int64_t)s->c.cfg->model.refresh_interval_ms};
        /* A member's: the group's W and its own users' H. */
        if (s->c.model_version) {
            ep.model_version = s->c.model_version(s->c.ctx);
            ep.cluster = s->c.group;
        }
        struct snapbuf *b = calloc(1, sizeof(*b));
        if (!b)
            return -ENOMEM;
        if (records_snapshot_encode(s->enc, s->c.model, &ep)) {
            free(b);
            return -ENOMEM;
        }
        b->data = records_enc_release(s->enc, &b->len);
        b->refs = 1;
        b->epoch = epoch;
        snapbuf_release(s->snap);
        s->snap = b;
    }
    s->snap->refs++;
    *buf = s->snap->data;
    *len = s->snap->len;
    *release = snapbuf_release;
    *ctx2 = s->snap;
    return 0;
}

int views_user(struct views *s, const char *id, char **out)
{
    struct model *m = s->c.model;
    struct model_user_view u;
    const uint32_t *items;
    const float *values;
    uint32_t n, k = model_params(m)->k;
    int64_t idx = model_user_find(m, id, strlen(id));
    json_t *h, *prof, *doc;

    if (idx < 0 || model_user_get(m, (uint32_t)idx, &u))
        return -ENOENT;
    h = json_array();
    for (uint32_t j = 0; j < k; j++)
        json_array_append_new(h, json_real(u.h[j]));
    prof = json_array();
    if (!model_user_profile(m, (uint32_t)idx, &items, &values, &n))
        for (uint32_t i = 0; i < n; i++) {
            size_t len;
            const char *item = model_item_id(m, items[i], &len);
            if (item)
                json_array_append_new(
                    prof, json_pack("[s% f]", item, len, (double)values[i]));
        }
    doc = json_pack("{s:s% s:i s:f s:o s:I s:I s:o s:f s:f}", "user", u.id,
                    u.id_len, "segment", (json_int_t)u.segment, "share",
                    (double)u.share, "h", h, "ts", (json_int_t)u.ts, "epoch",
                    (json_int_t)u.changed, "profile", prof, "weight",
                    (double)u.weight, "weight_raw", (double)u.weight_raw);
    if (!doc)
        return -ENOMEM;
    *out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return *out ? 0 : -ENOMEM;
}

static int http_user(void *ctx, const char *id, char **out)
{
    return views_user(ctx, id, out);
}

static int http_topics(void *ctx, char **out)
{
    struct views *s = ctx;
    json_t *doc =
        json_pack("{s:I s:i s:o}", "epoch", (json_int_t)*s->c.epoch, "k",
                  (json_int_t)model_params(s->c.model)->k, "topics",
                  topics_json(s, s->c.cfg->snapshot.top_items));
    if (!doc)
        return -ENOMEM;
    *out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return *out ? 0 : -ENOMEM;
}

/* Folding happens at the end of each consumer pass (ingest.c), so the
 * model read here holds every event decoded. */
static int http_recommend(void *ctx, const char *id, const char *n, char **out)
{
    struct views *s = ctx;
    return recommend_json(s->c.model, id, n, out);
}

static const struct http_provider views_http = {
    http_metrics, http_health, http_ready,     http_snapshot,
    http_user,    http_topics, http_recommend,
};

/* ---- life ---------------------------------------------------------------- */

static int item_name_cb(void *ctx, const char *item, size_t ilen,
                        const char *name, size_t nlen)
{
    json_object_setn_new((json_t *)ctx, item, ilen, json_stringn(name, nlen));
    return 0;
}

struct views *views_new(const struct views_conf *c)
{
    struct views *s = calloc(1, sizeof(*s));
    const char *names = c->cfg->snapshot.item_names;
    char err[512];

    if (!s)
        return NULL;
    s->c = *c;
    s->enc = records_enc_new();
    if (!s->enc) {
        free(s);
        return NULL;
    }
    if (names[0]) {
        s->item_names = json_object();
        if (csv_item_names(names, item_name_cb, s->item_names, err,
                           sizeof(err))) {
            log_warn("snapshot.item_names: %s; showing ids", err);
            json_decref(s->item_names);
            s->item_names = NULL;
        }
    }
    return s;
}

void views_free(struct views *s)
{
    if (!s)
        return;
    records_enc_free(s->enc);
    snapbuf_release(s->snap);
    json_decref(s->item_names);
    free(s);
}

int views_start(struct views *s, uv_loop_t *loop, const char *listen, char *err,
                size_t errlen)
{
    struct http_opts ho;
    int rc;

    config_http_opts(s->c.cfg, &ho);
    rc = http_start(&s->http, loop, listen, &ho, &views_http, s, err, errlen);
    if (rc)
        return rc;
    http_metrics_register(s->http, s->c.metrics);
    return 0;
}

int views_reload(struct views *s, char *err, size_t errlen)
{
    return s && s->http ? http_reload(s->http, err, errlen) : 0;
}

int views_port(const struct views *s)
{
    return s && s->http ? http_port(s->http) : 0;
}

int views_open(const struct views *s)
{
    return s && s->http;
}

static void views_on_http_closed(void *arg)
{
    struct views *s = arg;
    s->http = NULL;
    if (s->closed)
        s->closed(s->closed_arg);
}

void views_close(struct views *s, void (*closed)(void *arg), void *arg)
{
    s->closed = closed;
    s->closed_arg = arg;
    http_close(s->http, views_on_http_closed, s);
}
