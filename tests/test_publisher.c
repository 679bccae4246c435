/* test_publisher.c -- daemon/publisher against an in-process mock cluster:
 * what an epoch produces (full, then changed users only), the refusals of
 * an epoch that cannot start, and the one way out of an epoch that fails
 * (abandoned, counted, and the transaction aborted when there is one).
 * Producers only, no group join: a unit test. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "broker.h"
#include "config.h"
#include "ingest.h"
#include "kafka_out.h"
#include "metrics.h"
#include "model.h"
#include "publisher.h"
#include "run_until.h"

static uv_loop_t loop;
static struct broker *mock;

static bool run_until(volatile bool *flag, int ms)
{
    return run_until_on(&loop, flag, ms);
}

static void setup(void)
{
    char err[256];

    cr_assert_eq(uv_loop_init(&loop), 0);
    mock = broker_new(1, "nmf.segments,nmf.topics,nmf.snapshots", 1, err,
                      sizeof(err));
    cr_assert_not_null(mock, "%s", err);
}

static void teardown(void)
{
    for (int i = 0; i < 500 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    cr_assert_eq(uv_loop_close(&loop), 0);
    broker_destroy(&mock);
}

struct rig {
    struct config *cfg;
    struct metrics *mt;
    struct model *m;
    struct ingest *ing;
    struct kafka_out *out;
    struct publisher *pub;
    bool ready, closed, done;
    uint64_t epoch;
    int status;
    int dones;
};

static void r_ready(void *ctx, bool txn)
{
    ((struct rig *)ctx)->ready = true;
}

static void r_closed(void *ctx)
{
    ((struct rig *)ctx)->closed = true;
}

static void r_done(void *ctx, uint64_t epoch, int status)
{
    struct rig *r = ctx;
    cr_assert(publisher_idle(r->pub), "idle again when told");
    r->done = true;
    r->epoch = epoch;
    r->status = status;
    r->dones++;
}

/* A model of k=4 with users u0..u(nu-1) over items named by item(). */
static void fold_users(struct model *m, int nu, const char *item_prefix)
{
    char u[32], it[128];
    for (int i = 0; i < nu; i++)
        for (int j = 0; j < 3; j++) {
            snprintf(u, sizeof(u), "u%d", i);
            snprintf(it, sizeof(it), "%s%d", item_prefix, (i + j) % 40);
            cr_assert_eq(model_fold(m, u, strlen(u), it, strlen(it), 1.0,
                                    1000 + i),
                         0);
        }
}

static void rig_open(struct rig *r, const char *txn, const char *max_bytes)
{
    static const struct kafka_out_cbs cbs = {.on_ready = r_ready,
                                             .on_closed = r_closed};
    struct kafka_conf *conf = kafka_conf_new();
    struct model_params p;
    char err[256];

    memset(r, 0, sizeof(*r));
    r->cfg = config_new();
    r->mt = metrics_new();
    model_params_default(&p);
    p.k = 4;
    r->m = model_new(&p);
    cr_assert_not_null(r->m);
    r->ing = ingest_new(&loop, r->mt);
    cr_assert_eq(kafka_conf_set(conf, "bootstrap.servers",
                                broker_bootstraps(mock), err, sizeof(err)),
                 0, "%s", err);
    if (max_bytes)
        cr_assert_eq(kafka_conf_set(conf, "message.max.bytes", max_bytes, err,
                                    sizeof(err)),
                     0, "%s", err);
    r->out = kafka_out_new(&loop, conf, txn, &cbs, r, err, sizeof(err));
    cr_assert_not_null(r->out, "%s", err);
    struct publisher_conf pc = {.model = r->m, .out = r->out, .ing = r->ing,
                                .cfg = r->cfg, .metrics = r->mt};
    r->pub = publisher_new(&loop, &pc, r_done, r);
    cr_assert_not_null(r->pub);
}

static void rig_close(struct rig *r)
{
    cr_assert(publisher_idle(r->pub));
    publisher_close(r->pub);
    kafka_out_close(r->out, 5000);
    cr_assert(run_until(&r->closed, 20000), "producer never closed");
    ingest_free(r->ing);
    model_free(r->m);
    metrics_free(r->mt);
    config_free(r->cfg);
}

/* Publishes epoch and returns the records it produced. */
static uint64_t publish(struct rig *r, uint64_t epoch)
{
    struct kafka_out_stats before, after;

    kafka_out_stats(r->out, &before);
    r->done = false;
    cr_assert_eq(publisher_start(r->pub, epoch), 0);
    cr_assert_not(publisher_idle(r->pub));
    cr_assert_gt(publisher_started_ms(r->pub), 0);
    /* One epoch at a time. */
    cr_assert_eq(publisher_start(r->pub, epoch + 1), -EAGAIN);
    cr_assert(run_until(&r->done, 30000), "epoch %llu never ended",
              (unsigned long long)epoch);
    cr_assert_eq(r->epoch, epoch);
    cr_assert_eq(publisher_started_ms(r->pub), 0);
    kafka_out_stats(r->out, &after);
    return after.produced - before.produced;
}

static bool has_line(struct metrics *mt, const char *line)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(metrics_render(mt, &text, &len), 0);
    bool ok = strstr(text, line) != NULL;
    free(text);
    return ok;
}

TestSuite(publisher_u, .init = setup, .fini = teardown, .timeout = 120);

Test(publisher_u, nothing_to_publish_with)
{
    cr_assert_eq(publisher_start(NULL, 1), -EAGAIN);
    cr_assert(publisher_idle(NULL));
    cr_assert_eq(publisher_started_ms(NULL), 0);
}

Test(publisher_u, a_full_epoch_then_changed_users_only)
{
    struct rig r;

    rig_open(&r, NULL, NULL);
    fold_users(r.m, 30, "i");
    cr_assert(run_until(&r.ready, 20000), "producer never ready");

    /* The first epoch after a start is full: every user, k topic records,
     * one manifest. */
    cr_assert_eq(publish(&r, 1), 30 + 4 + 1);
    cr_assert_eq(r.status, 0);
    /* One user changed: its segment record only. */
    cr_assert_eq(model_fold(r.m, "u3", 2, "i7", 2, 2.0, 5000), 0);
    cr_assert_eq(publish(&r, 2), 1 + 4 + 1);
    cr_assert_eq(r.status, 0);
    /* Nothing changed: topics and the manifest still go out. */
    cr_assert_eq(publish(&r, 3), 0 + 4 + 1);
    cr_assert_eq(r.dones, 3);
    cr_assert(has_line(r.mt, "nmfd_epochs_published_total 3"));
    cr_assert(has_line(r.mt, "nmfd_records_produced_total 46"));
    cr_assert(has_line(r.mt, "nmfd_epoch_failures_total 0"));
    rig_close(&r);
}

/* Topic records over message.max.bytes: long item names, 40 of them
 * listed per topic. */
static void too_large_topics(struct rig *r)
{
    char err[256];
    cr_assert_eq(config_set(r->cfg, "snapshot.top_items=40", err, sizeof(err)),
                 0, "%s", err);
    fold_users(r->m, 30,
               "an-item-with-a-name-long-enough-to-fill-a-topic-record-");
    cr_assert(run_until(&r->ready, 20000), "producer never ready");
}

Test(publisher_u, a_record_that_cannot_go_abandons_the_epoch)
{
    struct rig r;

    rig_open(&r, NULL, "1000");
    too_large_topics(&r);
    r.done = false;
    cr_assert_eq(publisher_start(r.pub, 1), 0);
    cr_assert(run_until(&r.done, 30000), "epoch never ended");
    cr_assert_eq(r.status, -EMSGSIZE, "%d", r.status);
    cr_assert(publisher_idle(r.pub));
    cr_assert(has_line(r.mt, "nmfd_epoch_failures_total 1"));
    cr_assert(has_line(r.mt, "nmfd_epochs_published_total 0"));
    /* The publisher is usable again; the same epoch fails the same way. */
    r.done = false;
    cr_assert_eq(publisher_start(r.pub, 1), 0);
    cr_assert(run_until(&r.done, 30000), "epoch never ended");
    cr_assert_eq(r.status, -EMSGSIZE);
    cr_assert_eq(r.dones, 2);
    rig_close(&r);
}

Test(publisher_u, a_failed_transactional_epoch_is_aborted)
{
    struct rig r;

    rig_open(&r, "publisher-test", "1000");
    /* Transactions are being initialised off the loop: not ready yet. */
    cr_assert_eq(publisher_start(r.pub, 1), -EAGAIN);
    cr_assert(publisher_idle(r.pub));
    too_large_topics(&r);
    cr_assert(kafka_out_transactional(r.out));
    r.done = false;
    cr_assert_eq(publisher_start(r.pub, 1), 0);
    cr_assert(run_until(&r.done, 30000), "epoch never ended");
    /* The transaction was aborted: its segment records never count. */
    cr_assert_eq(r.status, -ECANCELED, "%d", r.status);
    struct kafka_out_stats st;
    kafka_out_stats(r.out, &st);
    cr_assert_eq(st.aborts, 1);
    cr_assert_eq(st.commits, 0);
    cr_assert(has_line(r.mt, "nmfd_epoch_failures_total 1"));
    rig_close(&r);
}
