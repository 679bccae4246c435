/* test_ingest.c -- daemon/ingest: consumer -> decoder -> model fold, with
 * the HTTP views reading what it folded.
 *
 * Suite ingest_u needs no broker (restore, offsets, start failures); suite
 * ingest_io runs an in-process mock cluster and joins a consumer group
 * (~3 s on the mock), so it is an integration test. The property that
 * matters most: whatever loop callback runs after the consumer handed
 * messages over (an HTTP request, a timer) sees every one of their events
 * folded, never one decoded and waiting. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "broker.h"
#include "checkpoint.h"
#include "config.h"
#include "event.h"
#include "ingest.h"
#include "kafka_out.h"
#include "metrics.h"
#include "model.h"
#include "run_until.h"
#include "views.h"

static uv_loop_t loop;

static bool run_until(volatile bool *flag, int ms)
{
    return run_until_on(&loop, flag, ms);
}

static void loop_finish(void)
{
    for (int i = 0; i < 500 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static struct event_decoder *decoder(void)
{
    struct event_decoder_conf dc = {
        .format = EVENT_FORMAT_AUTO,
        .field_user = "user",
        .field_item = "item",
        .field_weight = "weight",
        .field_type = "type",
        .field_ts = "ts",
        .max_events = 1000,
        .max_bytes = 1 << 20,
        .max_depth = 8,
    };
    struct event_decoder *d = event_decoder_new(&dc);
    cr_assert_not_null(d);
    return d;
}

static struct model *model_k4(void)
{
    struct model_params p;
    model_params_default(&p);
    p.k = 4;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    return m;
}

/* ---- ingest_u: no broker ------------------------------------------------ */

TestSuite(ingest_u, .init = NULL);

Test(ingest_u, fresh_ingest_holds_nothing)
{
    struct metrics *mt = metrics_new();
    struct ingest *ing;
    struct ingest_stats st;
    size_t n = 99;

    cr_assert_eq(uv_loop_init(&loop), 0);
    ing = ingest_new(&loop, mt);
    cr_assert_not_null(ing);
    ingest_stats(ing, &st);
    cr_assert_eq(st.consumed, 0);
    cr_assert_eq(st.rejected, 0);
    cr_assert_eq(st.folded, 0);
    cr_assert_eq(st.assigned, 0);
    cr_assert_eq(ingest_lag(ing), -1);
    cr_assert_not(ingest_behind(ing));
    cr_assert_not(ingest_running(ing));
    struct checkpoint_offset *o = ingest_offsets(ing, &n);
    cr_assert_not_null(o);
    cr_assert_eq(n, 0);
    free(o);
    /* Positions before any assignment: nothing to commit, no consumer. */
    struct ingest_positions *p = ingest_positions_take(ing);
    cr_assert_not_null(p);
    ingest_positions_commit(ing, p);
    ingest_positions_free(p);
    ingest_commit_now(ing);
    ingest_pause(ing);
    ingest_free(ing);
    metrics_free(mt);
    loop_finish();
}

Test(ingest_u, restore_reports_the_checkpoint)
{
    struct metrics *mt = metrics_new();
    struct ingest *ing;
    struct ingest_stats st;
    struct checkpoint_offset *seek = calloc(2, sizeof(*seek));
    size_t n;

    cr_assert_eq(uv_loop_init(&loop), 0);
    ing = ingest_new(&loop, mt);
    seek[0].topic = strdup("ev");
    seek[0].partition = 0;
    seek[0].offset = 17;
    seek[1].topic = strdup("ev");
    seek[1].partition = 3;
    seek[1].offset = 4;
    ingest_restore(ing, 120, 7, seek, 2);
    ingest_stats(ing, &st);
    cr_assert_eq(st.consumed, 120);
    cr_assert_eq(st.rejected, 7);
    cr_assert_eq(st.folded, 0);
    /* Partitions not consumed since the start keep the loaded offsets. */
    struct checkpoint_offset *o = ingest_offsets(ing, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(o[0].topic, "ev");
    cr_assert_eq(o[0].partition, 0);
    cr_assert_eq(o[0].offset, 17);
    cr_assert_eq(o[1].partition, 3);
    cr_assert_eq(o[1].offset, 4);
    free(o);
    ingest_free(ing);
    metrics_free(mt);
    loop_finish();
}

Test(ingest_u, start_without_group_fails_and_frees)
{
    struct metrics *mt = metrics_new();
    struct model *m = model_k4();
    struct ingest *ing;
    struct kafka_conf *conf = kafka_conf_new();
    struct ingest_cbs cbs = {0};
    char err[256];

    cr_assert_eq(uv_loop_init(&loop), 0);
    ing = ingest_new(&loop, mt);
    cr_assert_eq(kafka_conf_set(conf, "bootstrap.servers", "127.0.0.1:1", err,
                                sizeof(err)),
                 0);
    struct ingest_conf ic = {m, decoder(), NULL, NULL};
    /* The decoder is ingest's from here on, also on failure. */
    cr_assert_eq(ingest_start(ing, &ic, conf, "ev", &cbs, NULL, err,
                              sizeof(err)),
                 -EINVAL);
    cr_assert_str_eq(err, "consumer: group.id is required");
    cr_assert_not(ingest_running(ing));
    ingest_free(ing);
    model_free(m);
    metrics_free(mt);
    loop_finish();
}

/* ---- ingest_io: a consumer on an in-process mock cluster ---------------- */

static struct broker *mock;

static void setup_broker(void)
{
    char err[256];

    cr_assert_eq(uv_loop_init(&loop), 0);
    mock = broker_new(1, "ev", 1, err, sizeof(err));
    cr_assert_not_null(mock, "%s", err);
}

static void teardown_broker(void)
{
    broker_destroy(&mock);
}

static struct kafka_conf *conf_new(const char *group)
{
    struct kafka_conf *conf = kafka_conf_new();
    char err[256];
    const char *kv[][2] = {
        {"bootstrap.servers", broker_bootstraps(mock)},
        {"log_level", "3"},
        {"session.timeout.ms", "6000"},
        {"fetch.wait.max.ms", "10"},
        {"fetch.error.backoff.ms", "10"},
        {"auto.offset.reset", "earliest"},
        {"group.id", group},
    };
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        if (!kv[i][1])
            continue;
        cr_assert_eq(kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)),
                     0, "%s", err);
    }
    return conf;
}

struct prod {
    struct kafka_out *out;
    bool ready, done, closed;
    int status;
};

static void p_ready(void *ctx, bool txn)
{
    ((struct prod *)ctx)->ready = true;
}

static void p_done(void *ctx, int status)
{
    struct prod *p = ctx;
    p->done = true;
    p->status = status;
}

static void p_closed(void *ctx)
{
    ((struct prod *)ctx)->closed = true;
}

/* Produces each value as one message to ev/0, all delivered on return. */
static void produce(const char *const *values, size_t n)
{
    static const struct kafka_out_cbs cbs = {.on_ready = p_ready,
                                             .on_closed = p_closed};
    struct prod p = {0};
    char err[256];

    p.out = kafka_out_new(&loop, conf_new(NULL), NULL, &cbs, &p, err,
                          sizeof(err));
    cr_assert_not_null(p.out, "%s", err);
    cr_assert(run_until(&p.ready, 20000), "producer never ready");
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(kafka_out_produce(p.out, "ev", 0, NULL, 0, values[i],
                                       strlen(values[i]), NULL, 0),
                     0);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), 0);
    cr_assert(run_until(&p.done, 20000), "records never delivered");
    cr_assert_eq(p.status, 0);
    kafka_out_close(p.out, 5000);
    cr_assert(run_until(&p.closed, 20000), "producer never closed");
}

/* The daemon's pieces in a test: the model, ingest and the views. */
struct rig {
    struct metrics *mt;
    struct config *cfg;
    struct model *m;
    struct ingest *ing;
    struct views *v;
    uint64_t epoch;
    bool closed;
};

static int rig_health(void *ctx)
{
    return 0;
}

static int rig_ready(void *ctx, const char **why)
{
    return 0;
}

static void rig_closed(void *ctx)
{
    ((struct rig *)ctx)->closed = true;
}

static void rig_open(struct rig *r, const char *group)
{
    static const struct ingest_cbs cbs = {.on_closed = rig_closed};
    char err[256];

    memset(r, 0, sizeof(*r));
    r->mt = metrics_new();
    r->cfg = config_new();
    r->m = model_k4();
    r->ing = ingest_new(&loop, r->mt);
    cr_assert_not_null(r->ing);
    struct views_conf vc = {.model = r->m,
                            .ing = r->ing,
                            .metrics = r->mt,
                            .cfg = r->cfg,
                            .epoch = &r->epoch,
                            .health = rig_health,
                            .ready = rig_ready,
                            .ctx = r};
    r->v = views_new(&vc);
    cr_assert_not_null(r->v);
    struct ingest_conf ic = {r->m, decoder(), NULL, NULL};
    cr_assert_eq(ingest_start(r->ing, &ic, conf_new(group), "ev", &cbs, r,
                              err, sizeof(err)),
                 0, "%s", err);
}

static void rig_close(struct rig *r)
{
    ingest_close(r->ing);
    cr_assert(run_until(&r->closed, 20000), "consumer never closed");
    views_free(r->v);
    ingest_free(r->ing);
    model_free(r->m);
    config_free(r->cfg);
    metrics_free(r->mt);
}

/* What a reader finds between two loop callbacks: every user whose
 * message was consumed, asked the way GET /users/ID asks. */
struct watch {
    struct rig *r;
    const char *const *users; /* users[i]: the new user of message i */
    size_t n;
    size_t checks;   /* reads with at least one message consumed */
    size_t missing;  /* consumed users the view did not find */
    char first_missing[64];
    bool all_consumed;
};

static void watch_read(uv_prepare_t *h)
{
    struct watch *w = h->data;
    struct ingest_stats st;

    ingest_stats(w->r->ing, &st);
    if (!st.consumed)
        return;
    w->checks++;
    for (size_t i = 0; i < st.consumed && i < w->n; i++) {
        char *json = NULL;
        int rc = views_user(w->r->v, w->users[i], &json);
        if (rc) {
            if (!w->missing++)
                snprintf(w->first_missing, sizeof(w->first_missing),
                         "%s (%d)", w->users[i], rc);
        } else {
            cr_assert(strstr(json, w->users[i]), "%s", json);
        }
        free(json);
    }
    if (st.consumed >= w->n)
        w->all_consumed = true;
}

Test(ingest_io, a_reader_never_sees_a_decoded_event_unfolded,
     .init = setup_broker, .fini = teardown_broker, .timeout = 120)
{
    static const char *const values[] = {
        "{\"user\":\"fresh-1\",\"item\":\"a\",\"weight\":1}",
        "{\"user\":\"fresh-2\",\"item\":\"b\",\"weight\":2}",
        "{\"user\":\"fresh-3\",\"item\":\"a\",\"weight\":1}",
    };
    static const char *const users[] = {"fresh-1", "fresh-2", "fresh-3"};
    struct rig r;
    struct watch w = {&r, users, 3, 0, 0, "", false};
    uv_prepare_t reader;

    produce(values, 3);
    rig_open(&r, "g-reader");
    uv_prepare_init(&loop, &reader);
    reader.data = &w;
    uv_prepare_start(&reader, watch_read);
    cr_assert(run_until(&w.all_consumed, 30000), "consumed %zu", w.checks);
    uv_close((uv_handle_t *)&reader, NULL);
    cr_assert_gt(w.checks, 0);
    cr_assert_eq(w.missing, 0,
                 "%zu consumed users not found, first %s: decoded but not "
                 "folded when the loop moved on",
                 w.missing, w.first_missing);
    rig_close(&r);
    loop_finish();
}

Test(ingest_io, folds_every_event_and_keeps_positions, .init = setup_broker,
     .fini = teardown_broker, .timeout = 120)
{
    /* 300 single events (more than one fold batch), one message with two
     * events, one message nothing can read. */
    enum { N = 300 };
    static char bufs[N + 2][96];
    const char *values[N + 2];
    struct rig r;
    struct ingest_stats st;
    struct model_stats ms;
    size_t n;

    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof(bufs[i]),
                 "{\"user\":\"u%d\",\"item\":\"i%d\",\"weight\":1}", i % 50,
                 i % 7);
        values[i] = bufs[i];
    }
    values[N] = "[{\"user\":\"pair\",\"item\":\"i1\"},"
                "{\"user\":\"pair\",\"item\":\"i2\",\"weight\":3}]";
    values[N + 1] = "not an event";
    produce(values, N + 2);
    rig_open(&r, "g-fold");
    for (int tries = 0; tries < 3000; tries++) {
        bool never = false;
        run_until(&never, 10);
        ingest_stats(r.ing, &st);
        if (st.consumed == N + 2)
            break;
    }
    ingest_stats(r.ing, &st);
    cr_assert_eq(st.consumed, N + 2);
    cr_assert_eq(st.folded, N + 2);
    cr_assert_eq(st.rejected, 1);
    cr_assert_eq(st.assigned, 1);
    model_stats(r.m, &ms);
    cr_assert_eq(ms.users, 51);
    cr_assert_eq(ms.items, 7);
    /* The position is the next offset to read, for the checkpoint. */
    struct checkpoint_offset *o = ingest_offsets(r.ing, &n);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(o[0].topic, "ev");
    cr_assert_eq(o[0].partition, 0);
    cr_assert_eq(o[0].offset, N + 2);
    free(o);
    char *json = NULL;
    cr_assert_eq(views_user(r.v, "pair", &json), 0);
    cr_assert(strstr(json, "\"profile\""), "%s", json);
    free(json);
    cr_assert_eq(views_user(r.v, "nobody", &json), -ENOENT);
    rig_close(&r);
    loop_finish();
}
