/* test_kafka.c -- io/broker, io/kafka_in and io/kafka_out against an in-process mock
 * cluster, on a real libuv loop.
 *
 * Suite kafka_ucmd needs no group join (fault command parsing, error
 * translation, producer paths); suite kafka_io joins consumer groups,
 * which the mock makes take ~3 s each, and is registered as an
 * integration test. Every test that runs a loop ends with every handle
 * closed and uv_loop_close() == 0. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "broker.h"
#include "kafka_raw.h"
#include "kafka_read.h"
#include "run_until.h"

/* ---- helpers --------------------------------------------------------------
 */

static uv_loop_t loop;
static struct broker *mock;

static bool run_until(volatile bool *flag, int ms)
{
    return run_until_on(&loop, flag, ms);
}

static void walk_report(uv_handle_t *h, void *arg)
{
    fprintf(stderr, "open handle type %d active %d\n", (int)h->type,
            uv_is_active(h));
}

/* Runs the loop dry and closes it; a test's last word. */
static void loop_finish(void)
{
    for (int i = 0; i < 500 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_ONCE);
    if (uv_loop_alive(&loop))
        uv_walk(&loop, walk_report, NULL);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static void setup_loop(void)
{
    cr_assert_eq(uv_loop_init(&loop), 0);
}

static void setup_broker(void)
{
    char err[256];

    setup_loop();
    mock = broker_new(1, "t1,t4", 1, err, sizeof(err));
    cr_assert_not_null(mock, "%s", err);
    cr_assert_eq(broker_topic_create(mock, "p4", 4), 0);
}

static void teardown_broker(void)
{
    broker_destroy(&mock);
}

/* Producer confs (group NULL) carry no topic property on purpose: that is
 * the case where librdkafka reports the partitioner as unknown, and keys
 * must still land where Java puts them. */
static struct kafka_conf *conf_new(const char *group)
{
    struct kafka_conf *conf = kafka_conf_new();
    char errstr[256];
    const char *kv[][2] = {
        {"bootstrap.servers", broker_bootstraps(mock)},
        {"log_level", "3"},
        {"session.timeout.ms", "6000"},
        {"fetch.wait.max.ms", "10"},
        {"fetch.error.backoff.ms", "10"},
        {"auto.offset.reset", "earliest"},
    };

    for (size_t i = 0; i < (group ? sizeof(kv) / sizeof(kv[0]) : 2); i++)
        cr_assert_eq(
            kafka_conf_set(conf, kv[i][0], kv[i][1], errstr, sizeof(errstr)),
            0, "%s", errstr);
    if (group)
        cr_assert_eq(
            kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)), 0);
    return conf;
}

static void conf_put(struct kafka_conf *conf, const char *k, const char *v)
{
    char errstr[256];

    cr_assert_eq(kafka_conf_set(conf, k, v, errstr, sizeof(errstr)), 0, "%s",
                 errstr);
}

/* ---- producer side ---------------------------------------------------- */

struct prod {
    struct kafka_out *out;
    bool ready, transactional, closed, done;
    int done_status;
    int errors;
    int last_err;
    char last_reason[512];
    /* Delivery failures, whatever transport errors came around them. */
    int undelivered;
    char undelivered_reason[512];
};

static void p_ready(void *ctx, bool txn)
{
    struct prod *p = ctx;
    p->ready = true;
    p->transactional = txn;
}

static void p_error(void *ctx, int err, bool fatal, const char *reason)
{
    struct prod *p = ctx;
    p->errors++;
    p->last_err = err;
    snprintf(p->last_reason, sizeof(p->last_reason), "%s", reason);
    if (err == -ETIMEDOUT && !p->undelivered++)
        snprintf(p->undelivered_reason, sizeof(p->undelivered_reason), "%s",
                 reason);
}

static void p_closed(void *ctx)
{
    ((struct prod *)ctx)->closed = true;
}

static void p_done(void *ctx, int status)
{
    struct prod *p = ctx;
    p->done = true;
    p->done_status = status;
}

static const struct kafka_out_cbs prod_cbs = {
    .on_ready = p_ready,
    .on_error = p_error,
    .on_closed = p_closed,
};

static void prod_open(struct prod *p, struct kafka_conf *conf, const char *txn)
{
    char err[256];

    memset(p, 0, sizeof(*p));
    p->out = kafka_out_new(&loop, conf, txn, &prod_cbs, p, err, sizeof(err));
    cr_assert_not_null(p->out, "%s", err);
    cr_assert(run_until(&p->ready, 20000), "producer never ready");
}

static void prod_close(struct prod *p)
{
    kafka_out_close(p->out, 5000);
    cr_assert(run_until(&p->closed, 20000), "producer never closed");
}

/* Produces n records "k<i>" -> "v<i>" to topic and commits. */
static void produce_n(struct prod *p, const char *topic, int n, int32_t part)
{
    char key[32], val[32];

    if (p->transactional)
        cr_assert_eq(kafka_out_begin(p->out), 0);
    for (int i = 0; i < n; i++) {
        int kl = snprintf(key, sizeof(key), "k%d", i);
        int vl = snprintf(val, sizeof(val), "v%d", i);
        cr_assert_eq(kafka_out_produce(p->out, topic, part, key, (size_t)kl,
                                       val, (size_t)vl, NULL, 0),
                     0);
    }
    p->done = false;
    cr_assert_eq(kafka_out_commit(p->out, p_done, p), 0);
    cr_assert(run_until(&p->done, 30000), "commit never completed");
    cr_assert_eq(p->done_status, 0, "commit: %d %s", p->done_status,
                 p->last_reason);
}

/* ---- consumer side ---------------------------------------------------- */

#define MAXMSG 4096

struct cons {
    struct kafka_in *in;
    int n;
    int want;
    bool got_all, assigned, revoked, closed, stats;
    int assigns, revokes;
    int errors;
    /* received, in order */
    char keys[MAXMSG][16];
    int32_t parts[MAXMSG];
    int64_t offsets[MAXMSG];
    /* headers of the last message */
    char reason[64], source[128];
    /* on_assign: seek these partitions (-1: leave) */
    int64_t seek[8];
    /* pause after this many messages (0: never) */
    int pause_at;
    bool paused_once;
    int64_t lastoff[8];
    bool order_ok;
    int behind; /* messages handed over while kafka_in_behind said so */
    /* on_pass_end: how many, the most messages one pass handed over, and
     * how many had been handed over at the last one */
    int passes, in_pass, max_pass, at_pass_end;
    int short_behind; /* passes short of batch that ended behind */
    int batch;        /* the batch set, for short_behind */
};

static void c_message(void *ctx, const struct kafka_msg *m)
{
    struct cons *c = ctx;
    const void *v;
    size_t vlen;

    if (kafka_in_behind(c->in))
        c->behind++;
    c->in_pass++;
    if (c->n < MAXMSG) {
        snprintf(c->keys[c->n], sizeof(c->keys[c->n]), "%.*s", (int)m->key_len,
                 (const char *)m->key);
        c->parts[c->n] = m->partition;
        c->offsets[c->n] = m->offset;
    }
    if (m->partition >= 0 && m->partition < 8) {
        if (c->lastoff[m->partition] >= 0 &&
            m->offset != c->lastoff[m->partition] + 1)
            c->order_ok = false;
        c->lastoff[m->partition] = m->offset;
    }
    if (kafka_msg_header(m, "nmfd.reason", &v, &vlen) == 0)
        snprintf(c->reason, sizeof(c->reason), "%.*s", (int)vlen,
                 (const char *)v);
    if (kafka_msg_header(m, "nmfd.source", &v, &vlen) == 0)
        snprintf(c->source, sizeof(c->source), "%.*s", (int)vlen,
                 (const char *)v);
    c->n++;
    if (c->n >= c->want)
        c->got_all = true;
    if (c->pause_at && c->n == c->pause_at && !c->paused_once) {
        c->paused_once = true;
        cr_assert_eq(kafka_in_pause(c->in), 0);
        cr_assert(kafka_in_paused(c->in));
    }
}

static void c_assign(void *ctx, struct kafka_part *parts, size_t n)
{
    struct cons *c = ctx;

    c->assigns++;
    c->assigned = true;
    for (size_t i = 0; i < n; i++) {
        int32_t p = parts[i].partition;
        if (p >= 0 && p < 8 && c->seek[p] >= 0)
            parts[i].offset = c->seek[p];
    }
}

static void c_revoke(void *ctx, const struct kafka_part *parts, size_t n,
                     bool lost)
{
    struct cons *c = ctx;
    c->revokes++;
    c->revoked = true;
}

static void c_error(void *ctx, int err, bool fatal, const char *reason)
{
    struct cons *c = ctx;
    c->errors++;
    cr_assert_lt(err, 0);
    cr_assert(!fatal, "fatal consumer error: %s", reason);
}

static void c_stats(void *ctx)
{
    ((struct cons *)ctx)->stats = true;
}

static void c_closed(void *ctx)
{
    ((struct cons *)ctx)->closed = true;
}

static void c_pass_end(void *ctx)
{
    struct cons *c = ctx;
    cr_assert_gt(c->in_pass, 0, "a pass end without a message");
    c->passes++;
    if (c->batch && c->in_pass < c->batch && kafka_in_behind(c->in))
        c->short_behind++;
    if (c->in_pass > c->max_pass)
        c->max_pass = c->in_pass;
    c->in_pass = 0;
    c->at_pass_end = c->n;
}

static const struct kafka_in_cbs cons_cbs = {
    .on_message = c_message,
    .on_assign = c_assign,
    .on_revoke = c_revoke,
    .on_error = c_error,
    .on_stats = c_stats,
    .on_closed = c_closed,
    .on_pass_end = c_pass_end,
};

static struct cons *cons_new(int want)
{
    struct cons *c = calloc(1, sizeof(*c));

    cr_assert_not_null(c);
    c->want = want;
    c->order_ok = true;
    for (int i = 0; i < 8; i++) {
        c->seek[i] = -1;
        c->lastoff[i] = -1;
    }
    return c;
}

static void cons_open(struct cons *c, struct kafka_conf *conf)
{
    char err[256];

    c->in = kafka_in_new(&loop, conf, &cons_cbs, c, err, sizeof(err));
    cr_assert_not_null(c->in, "%s", err);
}

static void cons_close(struct cons *c)
{
    kafka_in_close(c->in);
    cr_assert(run_until(&c->closed, 20000), "consumer never closed");
}

/* ---- kafka_ucmd: broker and fault commands ---------------------------- */

TestSuite(kafka_ucmd);

Test(kafka_ucmd, broker_bad_arguments)
{
    char err[256];
    struct broker *ok;

    cr_assert_null(broker_new(0, "a", 1, err, sizeof(err)));
    cr_assert(strstr(err, "brokers"), "%s", err);
    cr_assert_null(broker_new(17, "a", 1, err, sizeof(err)));
    cr_assert_null(broker_new(1, "a", 0, err, sizeof(err)));
    cr_assert(strstr(err, "partitions"), "%s", err);
    cr_assert_null(broker_new(1, "a", 10001, err, sizeof(err)));
    cr_assert_null(broker_new(1, "bad name", 1, err, sizeof(err)));
    cr_assert(strstr(err, "bad topic name"), "%s", err);
    cr_assert_null(broker_new(1, "a,,b", 1, err, sizeof(err)));
    cr_assert_null(broker_new(1, "a,", 1, err, sizeof(err)));
    cr_assert(strstr(err, "empty topic"), "%s", err);
    cr_assert_null(broker_new(1, "..", 1, err, sizeof(err)));
    cr_assert_null(broker_new(1, "a, b ,a", 1, err, sizeof(err)));
    cr_assert(strstr(err, "'a' listed twice"), "%s", err);
    ok = broker_new(1, "ab, a,b, c", 1, err, sizeof(err));
    cr_assert_not_null(ok, "a prefix is not a duplicate: %s", err);
    broker_free(ok);
}

Test(kafka_ucmd, broker_bootstraps_and_topics)
{
    char err[256];
    struct broker *b = broker_new(3, " x , y ", 2, err, sizeof(err));
    const char *bs;
    int commas = 0;

    cr_assert_not_null(b, "%s", err);
    cr_assert_eq(broker_count(b), 3);
    bs = broker_bootstraps(b);
    cr_assert(!strncmp(bs, "127.0.0.1:", 10), "%s", bs);
    for (const char *p = bs; *p; p++)
        commas += *p == ',';
    cr_assert_eq(commas, 2, "%s", bs);
    cr_assert_eq(broker_topic_create(b, "x", 2), -EEXIST);
    cr_assert_eq(broker_topic_create(b, "z", 0), -EINVAL);
    cr_assert_eq(broker_topic_create(b, "z/z", 1), -EINVAL);
    cr_assert_eq(broker_topic_create(b, NULL, 1), -EINVAL);
    cr_assert_eq(broker_topic_create(b, "z", 5), 0);
    broker_free(b);
    broker_free(NULL);
}

Test(kafka_ucmd, fault_commands)
{
    char err[256];
    struct broker *b = broker_new(2, "f", 1, err, sizeof(err));
    static const char *good[] = {
        "down 1",
        "up 1",
        "down -1",
        "up -1\n",
        "  rtt 2 100  ",
        "rtt -1 0",
        "error Produce 3 _TRANSPORT",
        "error produce 1 NOT_LEADER_FOR_PARTITION",
        "error ProduceRequest 1 RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION",
        "error 1 2 6",
        "error Fetch 1 -195",
        "error JoinGroup 1 COORDINATOR_NOT_AVAILABLE",
        "topic newtopic 3",
    };
    static const struct {
        const char *cmd;
        int err;
        const char *msg;
    } bad[] = {
        {"", -EINVAL, "empty"},
        {"   \n", -EINVAL, "empty"},
        {"sleep 1", -EINVAL, "unknown command"},
        {"down", -EINVAL, "usage"},
        {"down 1 2", -EINVAL, "usage"},
        {"down x", -EINVAL, "bad broker id"},
        {"down 1x", -EINVAL, "bad broker id"},
        {"down 3", -ENOENT, "no broker"},
        {"up 0", -ENOENT, "no broker"},
        {"down -2", -EINVAL, "bad broker id"},
        {"rtt 1", -EINVAL, "usage"},
        {"rtt 1 -5", -EINVAL, "bad rtt"},
        {"rtt 1 fast", -EINVAL, "bad rtt"},
        {"rtt 1 3600001", -EINVAL, "bad rtt"},
        {"error Produce 3", -EINVAL, "usage"},
        {"error Nope 1 _TRANSPORT", -EINVAL, "unknown api"},
        {"error 99 1 _TRANSPORT", -EINVAL, "unknown api"},
        {"error Produce 0 _TRANSPORT", -EINVAL, "bad count"},
        {"error Produce many _TRANSPORT", -EINVAL, "bad count"},
        {"error Produce 1 NO_SUCH_ERROR", -EINVAL, "unknown error"},
        {"error Produce 1 NO_ERROR", -EINVAL, "unknown error"},
        {"error Produce 1 0", -EINVAL, "unknown error"},
        {"error Produce 1 12345", -EINVAL, "unknown error"},
        {"topic", -EINVAL, "usage"},
        {"topic x", -EINVAL, "usage"},
        {"topic f 2", -EEXIST, "exists"},
        {"topic bad/name 2", -EINVAL, "bad topic name"},
        {"topic ok 0", -EINVAL, "bad partition count"},
        {"topic ok 10001", -EINVAL, "bad partition count"},
        {"a b c d e f", -EINVAL, "too many"},
    };
    char longcmd[600];

    cr_assert_not_null(b, "%s", err);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(broker_fault(b, good[i], err, sizeof(err)), 0, "'%s': %s",
                     good[i], err);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(broker_fault(b, bad[i].cmd, err, sizeof(err)), bad[i].err,
                     "'%s' gave '%s'", bad[i].cmd, err);
        cr_assert(strstr(err, bad[i].msg), "'%s' gave '%s', want '%s'",
                  bad[i].cmd, err, bad[i].msg);
    }
    cr_assert_eq(broker_fault(b, NULL, err, sizeof(err)), -EINVAL);
    memset(longcmd, 'x', sizeof(longcmd) - 1);
    longcmd[sizeof(longcmd) - 1] = '\0';
    cr_assert_eq(broker_fault(b, longcmd, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "too long"), "%s", err);
    /* Without an err buffer the return value still says it. */
    cr_assert_eq(broker_fault(b, "nope", NULL, 0), -EINVAL);
    broker_free(b);
}

Test(kafka_ucmd, errno_translation)
{
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR_NO_ERROR), 0);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__QUEUE_FULL), -ENOBUFS);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE), -EMSGSIZE);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC), -ENOENT);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT), -ETIMEDOUT);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__TRANSPORT), -ECONNRESET);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__FATAL), -ENOTRECOVERABLE);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__STATE), -EINVAL);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR_NOT_COORDINATOR), -EAGAIN);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR__PURGE_QUEUE), -ECANCELED);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID), -ESTALE);
    cr_assert_eq(kafka_errno(RD_KAFKA_RESP_ERR_POLICY_VIOLATION), -EIO);
}

/* ---- kafka_ucmd: producer -------------------------------------------- */

TestSuite(kafka_uprod, .init = setup_broker, .fini = teardown_broker);

Test(kafka_uprod, consumer_needs_group_and_on_message)
{
    char err[256];
    struct kafka_in_cbs none = {0};

    cr_assert_null(
        kafka_in_new(&loop, conf_new(NULL), &cons_cbs, NULL, err, sizeof(err)));
    cr_assert(strstr(err, "group.id"), "%s", err);
    cr_assert_null(
        kafka_in_new(&loop, conf_new("g"), &none, NULL, err, sizeof(err)));
    cr_assert(strstr(err, "on_message"), "%s", err);
    loop_finish();
}

Test(kafka_uprod, bad_conf_is_reported)
{
    char err[256];
    struct prod p;
    struct kafka_conf *conf = conf_new(NULL);

    /* acks=1 contradicts enable.idempotence: librdkafka refuses. */
    conf_put(conf, "acks", "1");
    cr_assert_null(
        kafka_out_new(&loop, conf, NULL, &prod_cbs, &p, err, sizeof(err)));
    cr_assert(strstr(err, "acks") || strstr(err, "idempotence"), "%s", err);
    loop_finish();
}

Test(kafka_uprod, idempotent_produce_commit_counts)
{
    struct prod p;
    struct kafka_out_stats st;
    char big[64];

    prod_open(&p, conf_new(NULL), NULL);
    cr_assert(!p.transactional);
    cr_assert(!kafka_out_transactional(p.out));
    cr_assert(kafka_out_ready(p.out));
    /* begin is a no-op without transactions; abort is not possible */
    cr_assert_eq(kafka_out_begin(p.out), 0);
    cr_assert_eq(kafka_out_abort(p.out, p_done, &p), -EINVAL);
    produce_n(&p, "t1", 500, -1);
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.produced, 500);
    cr_assert_eq(st.delivered, 500);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.commits, 1);
    /* argument errors */
    memset(big, 'x', sizeof(big));
    cr_assert_eq(kafka_out_produce(p.out, "", -1, NULL, 0, "v", 1, NULL, 0),
                 -EINVAL);
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, NULL, 0, "v", 1, NULL, 1),
                 -EINVAL);
    cr_assert_eq(kafka_out_produce(p.out, "t1", 7, NULL, 0, "v", 1, NULL, 0),
                 -ENOENT, "t1 has one partition");
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, NULL, 0, "v", 1, NULL, 0),
                 0);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), 0);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), -EBUSY);
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, NULL, 0, "v", 1, NULL, 0),
                 -EBUSY, "no produce while an epoch commits");
    p.done = false;
    cr_assert(run_until(&p.done, 30000));
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.produced, 501);
    cr_assert_eq(st.delivered, 501);
    cr_assert_eq(p.errors, 0);
    prod_close(&p);
    loop_finish();
}

Test(kafka_uprod, delivery_failure_is_counted_and_reported)
{
    struct prod p;
    struct kafka_out_stats st;
    struct kafka_conf *conf = conf_new(NULL);
    char err[128];

    conf_put(conf, "message.timeout.ms", "300");
    prod_open(&p, conf, NULL);
    cr_assert_eq(broker_fault(mock, "down -1", err, sizeof(err)), 0);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(
            kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0), 0);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), 0);
    cr_assert(run_until(&p.done, 20000));
    cr_assert_eq(p.done_status, 0, "the epoch ended; failures are counted");
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.produced, 20);
    cr_assert_eq(st.failed, 20);
    cr_assert_eq(st.delivered, 0);
    cr_assert_geq(p.errors, 1);
    /* The transport errors of the brokers being down come in any order
     * with the delivery failures; the latter must be among them. */
    cr_assert_geq(p.undelivered, 1, "last error %d %s", p.last_err,
                  p.last_reason);
    cr_assert(strstr(p.undelivered_reason, "not delivered to t1"), "%s",
              p.undelivered_reason);
    cr_assert_eq(broker_fault(mock, "up -1", err, sizeof(err)), 0);
    prod_close(&p);
    loop_finish();
}

Test(kafka_uprod, queue_full_is_enobufs)
{
    struct prod p;
    struct kafka_out_stats st;
    struct kafka_conf *conf = conf_new(NULL);
    int r = 0, i;

    conf_put(conf, "queue.buffering.max.messages", "10");
    conf_put(conf, "linger.ms", "1000");
    prod_open(&p, conf, NULL);
    for (i = 0; i < 100 && r == 0; i++)
        r = kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0);
    cr_assert_eq(r, -ENOBUFS);
    cr_assert_eq(i, 11);
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.queue_full, 1);
    cr_assert_eq(st.produced, 10);
    prod_close(&p);
    loop_finish();
}

Test(kafka_uprod, transactional_begin_commit_abort)
{
    struct prod p;
    struct kafka_out_stats st;

    prod_open(&p, conf_new(NULL), "nmfd-test-txn");
    cr_assert(p.transactional, "mock supports transactions: %s", p.last_reason);
    cr_assert(kafka_out_transactional(p.out));
    /* outside a transaction */
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0),
                 -EINVAL);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), -EINVAL);
    cr_assert_eq(kafka_out_abort(p.out, p_done, &p), -EINVAL);
    cr_assert_eq(kafka_out_begin(p.out), 0);
    cr_assert_eq(kafka_out_begin(p.out), -EBUSY);
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0),
                 0);
    p.done = false;
    cr_assert_eq(kafka_out_abort(p.out, p_done, &p), 0);
    cr_assert(run_until(&p.done, 30000));
    cr_assert_eq(p.done_status, -ECANCELED);
    produce_n(&p, "t1", 100, -1);
    produce_n(&p, "t1", 100, -1);
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.produced, 201);
    /* The aborted record was either sent (and aborted) or purged. */
    cr_assert_eq(st.delivered + st.failed, 201);
    cr_assert_geq(st.delivered, 200);
    cr_assert_eq(st.commits, 2);
    cr_assert_eq(st.aborts, 1);
    prod_close(&p);
    loop_finish();
}

Test(kafka_uprod, close_with_open_transaction_and_pending)
{
    struct prod p;

    prod_open(&p, conf_new(NULL), "nmfd-test-close");
    cr_assert_eq(kafka_out_begin(p.out), 0);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(
            kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0), 0);
    prod_close(&p);
    loop_finish();
}

Test(kafka_uprod, close_during_commit_waits_for_it)
{
    struct prod p;

    prod_open(&p, conf_new(NULL), "nmfd-test-close2");
    cr_assert_eq(kafka_out_begin(p.out), 0);
    cr_assert_eq(kafka_out_produce(p.out, "t1", -1, "k", 1, "v", 1, NULL, 0),
                 0);
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), 0);
    kafka_out_close(p.out, 5000);
    cr_assert(run_until(&p.closed, 30000));
    cr_assert(p.done, "commit callback ran before the close");
    cr_assert_eq(p.done_status, 0);
    loop_finish();
}

Test(kafka_uprod, transactions_unavailable_fall_back)
{
    struct prod p;
    struct kafka_out_stats st;
    struct kafka_conf *conf = conf_new(NULL);
    char err[256];

    /* No transaction coordinator to be found: init_transactions times out
     * (after transaction.timeout.ms), the idempotent fallback needs none. */
    cr_assert_eq(broker_fault(mock,
                              "error FindCoordinator 100000 "
                              "COORDINATOR_NOT_AVAILABLE",
                              err, sizeof(err)),
                 0, "%s", err);
    conf_put(conf, "transaction.timeout.ms", "1500");
    prod_open(&p, conf, "nmfd-test-fallback");
    cr_assert(!p.transactional);
    cr_assert(!kafka_out_transactional(p.out));
    cr_assert_eq(p.errors, 1);
    cr_assert_eq(p.last_err, -EOPNOTSUPP, "%d %s", p.last_err, p.last_reason);
    cr_assert(strstr(p.last_reason, "non-transactional"), "%s", p.last_reason);
    produce_n(&p, "t1", 10, -1);
    kafka_out_stats(p.out, &st);
    cr_assert_eq(st.delivered, 10);
    prod_close(&p);
    loop_finish();
}

/* ---- kafka_io: consumer groups ---------------------------------------- */

TestSuite(kafka_io, .init = setup_broker, .fini = teardown_broker,
          .timeout = 120);

/* Java's murmur2 (org.apache.kafka.common.utils.Utils.murmur2). */
static uint32_t murmur2(const char *key, size_t len)
{
    const uint32_t m = 0x5bd1e995;
    const unsigned char *d = (const unsigned char *)key;
    uint32_t h = 0x9747b28c ^ (uint32_t)len;
    size_t i;

    for (i = 0; i + 4 <= len; i += 4) {
        uint32_t k = d[i] | (uint32_t)d[i + 1] << 8 | (uint32_t)d[i + 2] << 16 |
                     (uint32_t)d[i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (len & 3) {
    case 3:
        h ^= (uint32_t)d[i + 2] << 16;
        /* fallthrough */
    case 2:
        h ^= (uint32_t)d[i + 1] << 8;
        /* fallthrough */
    case 1:
        h ^= d[i];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static void assert_each_key_once(struct cons *c, int n)
{
    char *seen = calloc((size_t)n, 1);

    cr_assert_eq(c->n, n, "got %d messages, want %d", c->n, n);
    for (int i = 0; i < c->n && i < MAXMSG; i++) {
        int k = atoi(c->keys[i] + 1);
        cr_assert(c->keys[i][0] == 'k' && k >= 0 && k < n, "key %s",
                  c->keys[i]);
        cr_assert(!seen[k], "key %s twice", c->keys[i]);
        seen[k] = 1;
    }
    free(seen);
}

Test(kafka_io, consumes_exactly_what_was_produced)
{
    struct prod p;
    struct cons *c = cons_new(2000);
    struct kafka_conf *conf = conf_new("g-exact");
    struct kafka_lag lag[8];
    struct kafka_in_stats ist;
    rd_kafka_topic_partition_list_t *offs;
    bool never = false;
    size_t nl;
    int64_t total = 0;

    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "p4", 2000, -1);
    prod_close(&p);

    conf_put(conf, "statistics.interval.ms", "100");
    cons_open(c, conf);
    kafka_in_set_batch(c->in, 64);
    cr_assert_eq(kafka_in_subscribe(c->in, "p4"), 0);
    cr_assert(run_until(&c->got_all, 30000), "got %d", c->n);
    run_until(&never, 300); /* nothing more may come */
    assert_each_key_once(c, 2000);
    cr_assert(c->order_ok, "offsets in order per partition");
    cr_assert_eq(c->assigns, 1);
    /* 2000 messages waiting, 64 a pass: behind while taking them, not
     * once the queue is empty. */
    cr_assert_gt(c->behind, 0);
    cr_assert_lt(c->behind, 2000);
    cr_assert(!kafka_in_behind(c->in));
    /* Every pass that handed messages over ended with on_pass_end, the
     * last one after the last message, and none handed over more than a
     * batch. */
    cr_assert_geq(c->passes, 2000 / 64);
    cr_assert_leq(c->max_pass, 64);
    cr_assert_eq(c->at_pass_end, 2000);
    cr_assert_eq(c->in_pass, 0);
    /* Keys landed where Java's partitioner puts them. */
    for (int i = 0; i < c->n; i++)
        cr_assert_eq(
            c->parts[i],
            (int32_t)((murmur2(c->keys[i], strlen(c->keys[i])) & 0x7fffffff) %
                      4),
            "key %s in partition %d", c->keys[i], c->parts[i]);

    /* Lag from the statistics: every partition read to its end. */
    for (int round = 0; round < 3; round++) {
        c->stats = false;
        cr_assert(run_until(&c->stats, 5000), "no statistics");
    }
    nl = kafka_in_lag(c->in, lag, 8);
    cr_assert_eq(nl, 4);
    for (size_t i = 0; i < nl; i++) {
        cr_assert_str_eq(lag[i].topic, "p4");
        cr_assert_eq(lag[i].lag, 0, "partition %d lag %lld", lag[i].partition,
                     (long long)lag[i].lag);
        cr_assert_eq(lag[i].position, lag[i].end);
        total += lag[i].end;
    }
    cr_assert_eq(total, 2000);
    kafka_in_stats(c->in, &ist);
    cr_assert_eq(ist.messages, 2000);
    cr_assert_eq(ist.lag, 0);
    cr_assert_gt(ist.bytes, 2000 * 2);

    /* Commit what was read; the group stores it. */
    struct kafka_part commit[4];
    offs = rd_kafka_topic_partition_list_new(4);
    for (int i = 0; i < 4; i++) {
        rd_kafka_topic_partition_list_add(offs, "p4", i)->offset = lag[i].end;
        commit[i] = (struct kafka_part){"p4", i, lag[i].end};
    }
    cr_assert_eq(kafka_in_commit(c->in, commit, 4), 0);
    cr_assert_eq(kafka_in_commit(c->in, NULL, 0), -EINVAL);
    for (int tries = 0; tries < 50; tries++) {
        bool ok = true;
        run_until(&never, 100);
        for (int i = 0; i < 4; i++)
            offs->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
        cr_assert_eq(rd_kafka_committed(kafka_in_handle(c->in), offs, 5000), 0);
        for (int i = 0; i < 4; i++)
            ok = ok && offs->elems[i].offset == lag[i].end;
        if (ok)
            break;
    }
    for (int i = 0; i < 4; i++)
        cr_assert_eq(offs->elems[i].offset, lag[i].end);
    rd_kafka_topic_partition_list_destroy(offs);

    cons_close(c);
    cr_assert(c->revoked, "close revokes the assignment");
    cr_assert_eq(c->errors, 0);
    free(c);
    loop_finish();
}

/* Behind while the broker holds a backlog even when a pass takes less
 * than a batch: the producer's batches of 8 and the mock's one producer
 * batch per partition per fetch make the fetcher, not the owner, the
 * limit, so most passes end short; the statistics' lag says the rest is
 * waiting. Once everything is taken and a statistics interval has gone
 * by, not behind. */
Test(kafka_io, behind_while_the_broker_holds_a_backlog)
{
    struct prod p;
    struct cons *c = cons_new(4000);
    struct kafka_conf *pc = conf_new(NULL);
    struct kafka_conf *conf = conf_new("g-backlog");
    bool never = false;

    conf_put(pc, "batch.num.messages", "8");
    prod_open(&p, pc, NULL);
    produce_n(&p, "t1", 4000, -1);
    prod_close(&p);

    conf_put(conf, "statistics.interval.ms", "20");
    cons_open(c, conf);
    kafka_in_set_batch(c->in, 64);
    c->batch = 64;
    cr_assert_eq(kafka_in_subscribe(c->in, "t1"), 0);
    cr_assert(run_until(&c->got_all, 30000), "got %d", c->n);
    cr_assert_gt(c->passes, 4000 / 64, "%d passes", c->passes);
    cr_assert_gt(c->short_behind, 0,
                 "no pass short of a batch was behind (%d passes)", c->passes);
    run_until(&never, 300);
    cr_assert(!kafka_in_behind(c->in));
    cons_close(c);
    free(c);
    loop_finish();
}

Test(kafka_io, assign_callback_sets_offsets)
{
    struct prod p;
    struct cons *c = cons_new(40);
    bool never = false;

    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "t1", 100, -1);
    prod_close(&p);

    c->seek[0] = 60; /* as if a checkpoint said so */
    cons_open(c, conf_new("g-seek"));
    cr_assert_eq(kafka_in_subscribe(c->in, "t1"), 0);
    cr_assert(run_until(&c->got_all, 30000), "got %d", c->n);
    run_until(&never, 300);
    cr_assert_eq(c->n, 40);
    cr_assert_str_eq(c->keys[0], "k60");
    cr_assert_eq(c->offsets[0], 60);
    cr_assert_str_eq(c->keys[39], "k99");
    cons_close(c);
    free(c);
    loop_finish();
}

static struct cons *resume_me;

static void resume_cb(uv_timer_t *t)
{
    cr_assert_eq(resume_me->n, resume_me->pause_at,
                 "nothing delivered while paused");
    cr_assert_eq(kafka_in_resume(resume_me->in), 0);
    cr_assert(!kafka_in_paused(resume_me->in));
    uv_close((uv_handle_t *)t, NULL);
}

Test(kafka_io, pause_resume_loses_nothing)
{
    struct prod p;
    struct cons *c = cons_new(3000);
    uv_timer_t t;
    bool never = false;

    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "p4", 3000, -1);
    prod_close(&p);

    c->pause_at = 777; /* mid-batch */
    cons_open(c, conf_new("g-pause"));
    kafka_in_set_batch(c->in, 500);
    cr_assert_eq(kafka_in_subscribe(c->in, "p4"), 0);
    cr_assert(run_until(&c->paused_once, 30000));
    cr_assert(kafka_in_paused(c->in));
    resume_me = c;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, resume_cb, 500, 0);
    cr_assert(run_until(&c->got_all, 30000), "got %d", c->n);
    run_until(&never, 300);
    assert_each_key_once(c, 3000);
    cr_assert(c->order_ok);
    cons_close(c);
    free(c);
    loop_finish();
}

struct dlq {
    struct prod *p;
    int produced;
};

static struct dlq dlq_ctx;

static void dlq_message(void *ctx, const struct kafka_msg *m)
{
    cr_assert_eq(kafka_out_produce_dead(dlq_ctx.p->out, "dlq", m, "bad_weight"),
                 0);
    dlq_ctx.produced++;
    c_message(ctx, m);
}

Test(kafka_io, dead_letter_headers_and_manual_assign)
{
    struct prod p;
    struct cons *src = cons_new(3), *dst = cons_new(3);
    struct kafka_in_cbs cbs = cons_cbs;
    struct kafka_part part;
    char err[256];

    cr_assert_eq(broker_topic_create(mock, "dlq", 1), 0);
    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "t1", 3, -1);
    dlq_ctx.p = &p;

    /* Manual assignment: no join wait. */
    cbs.on_message = dlq_message;
    src->in =
        kafka_in_new(&loop, conf_new("g-dlq-src"), &cbs, src, err, sizeof(err));
    cr_assert_not_null(src->in, "%s", err);
    part = (struct kafka_part){"t1", 0, KAFKA_OFFSET_BEGINNING};
    cr_assert_eq(kafka_in_assign(src->in, &part, 1), 0);
    cr_assert(run_until(&src->got_all, 20000), "got %d", src->n);
    cr_assert_eq(dlq_ctx.produced, 3);
    p.done = false;
    cr_assert_eq(kafka_out_commit(p.out, p_done, &p), 0);
    cr_assert(run_until(&p.done, 20000));

    cons_open(dst, conf_new("g-dlq-dst"));
    part = (struct kafka_part){"dlq", 0, KAFKA_OFFSET_BEGINNING};
    cr_assert_eq(kafka_in_assign(dst->in, &part, 1), 0);
    cr_assert(run_until(&dst->got_all, 20000), "got %d", dst->n);
    cr_assert_str_eq(dst->reason, "bad_weight");
    cr_assert_str_eq(dst->source, "t1/0/2");
    cr_assert_str_eq(dst->keys[2], "k2");

    cons_close(src);
    cons_close(dst);
    prod_close(&p);
    free(src);
    free(dst);
    loop_finish();
}

static struct broker *flap_broker;
static int flap_state;

static void flap_cb(uv_timer_t *t)
{
    char err[128];

    if (flap_state == 0) {
        cr_assert_eq(broker_fault(flap_broker, "down 1", err, sizeof(err)), 0);
        flap_state = 1;
        uv_timer_start(t, flap_cb, 1500, 0);
    } else {
        cr_assert_eq(broker_fault(flap_broker, "up 1", err, sizeof(err)), 0);
        uv_close((uv_handle_t *)t, NULL);
    }
}

Test(kafka_io, survives_broker_down_and_up)
{
    struct prod p;
    struct cons *c = cons_new(3000);
    struct kafka_conf *conf;
    uv_timer_t t;
    bool never = false;

    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "p4", 3000, -1);
    prod_close(&p);

    c->pause_at = 0;
    conf = conf_new("g-flap");
    /* Little prefetch, so that the outage happens mid-stream. */
    conf_put(conf, "queued.min.messages", "5");
    cons_open(c, conf);
    kafka_in_set_batch(c->in, 10);
    cr_assert_eq(kafka_in_subscribe(c->in, "p4"), 0);
    c->want = 100;
    cr_assert(run_until(&c->got_all, 30000));
    c->got_all = false;
    c->want = 3000;
    flap_broker = mock;
    flap_state = 0;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, flap_cb, 0, 0);
    cr_assert(run_until(&c->got_all, 60000), "got %d", c->n);
    run_until(&never, 300);
    assert_each_key_once(c, 3000);
    cons_close(c);
    free(c);
    loop_finish();
}

static int log_lines;

static void count_log(void *ctx, int level, const char *fac, const char *msg)
{
    log_lines++;
}

Test(kafka_uprod, log_lines_come_to_the_loop)
{
    struct prod p;
    struct kafka_out_cbs cbs = prod_cbs;
    struct kafka_conf *conf = conf_new(NULL);
    char err[256];

    conf_put(conf, "debug", "metadata");
    conf_put(conf, "log_level", "7");
    cbs.on_log = count_log;
    memset(&p, 0, sizeof(p));
    log_lines = 0;
    p.out = kafka_out_new(&loop, conf, NULL, &cbs, &p, err, sizeof(err));
    cr_assert_not_null(p.out, "%s", err);
    cr_assert(run_until(&p.ready, 20000));
    produce_n(&p, "t1", 10, -1);
    cr_assert_gt(log_lines, 0, "debug lines were served on the loop");
    prod_close(&p);
    loop_finish();
}

struct member {
    struct cons c;
    int owned;     /* partitions currently assigned */
    int min_owned; /* lowest count after the first assignment */
    bool had;
};

static void m_assign(void *ctx, struct kafka_part *parts, size_t n)
{
    struct member *m = ctx;
    m->owned += (int)n;
    if (!m->had) {
        m->had = true;
        m->min_owned = m->owned;
    }
    c_assign(ctx, parts, n);
}

static void m_revoke(void *ctx, const struct kafka_part *parts, size_t n,
                     bool lost)
{
    struct member *m = ctx;
    m->owned -= (int)n;
    if (m->had && m->owned < m->min_owned)
        m->min_owned = m->owned;
    c_revoke(ctx, parts, n, lost);
}

static bool balanced;

static void check_balanced(struct member *a, struct member *b)
{
    balanced = a->owned == 2 && b->owned == 2;
}

Test(kafka_io, cooperative_rebalance_is_incremental, .timeout = 120)
{
    struct prod p;
    struct member *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    struct kafka_in_cbs cbs = cons_cbs;
    struct kafka_conf *conf;
    char err[256];
    bool never = false;

    cbs.on_assign = m_assign;
    cbs.on_revoke = m_revoke;
    for (int i = 0; i < 8; i++)
        a->c.seek[i] = b->c.seek[i] = a->c.lastoff[i] = b->c.lastoff[i] = -1;
    a->c.want = b->c.want = 1000000;
    a->c.order_ok = b->c.order_ok = true;

    conf = conf_new("g-coop");
    conf_put(conf, "partition.assignment.strategy", "cooperative-sticky");
    a->c.in = kafka_in_new(&loop, conf, &cbs, a, err, sizeof(err));
    cr_assert_not_null(a->c.in, "%s", err);
    cr_assert_eq(kafka_in_subscribe(a->c.in, "p4"), 0);
    cr_assert(run_until(&a->c.assigned, 30000));
    cr_assert_eq(a->owned, 4);

    conf = conf_new("g-coop");
    conf_put(conf, "partition.assignment.strategy", "cooperative-sticky");
    b->c.in = kafka_in_new(&loop, conf, &cbs, b, err, sizeof(err));
    cr_assert_not_null(b->c.in, "%s", err);
    cr_assert_eq(kafka_in_subscribe(b->c.in, "p4"), 0);
    /* Poll the balance from the loop. */
    balanced = false;
    for (int i = 0; i < 300 && !balanced; i++) {
        run_until(&never, 100);
        check_balanced(a, b);
    }
    cr_assert(balanced, "a owns %d, b owns %d", a->owned, b->owned);
    /* Incremental: a gave up two partitions and kept two throughout
     * (an eager protocol would have revoked all four first). */
    cr_assert_eq(a->c.revokes, 1);
    cr_assert_eq(a->min_owned, 2);

    prod_open(&p, conf_new(NULL), NULL);
    produce_n(&p, "p4", 400, -1);
    prod_close(&p);
    for (int i = 0; i < 100 && a->c.n + b->c.n < 400; i++)
        run_until(&never, 100);
    cr_assert_eq(a->c.n + b->c.n, 400, "a %d + b %d", a->c.n, b->c.n);
    cr_assert_gt(a->c.n, 0);
    cr_assert_gt(b->c.n, 0);

    cons_close(&b->c);
    cons_close(&a->c);
    free(a);
    free(b);
    loop_finish();
}

/* ---- kafka_uread: the state reader (no group join) ------------------- */

TestSuite(kafka_uread, .init = setup_broker, .fini = teardown_broker);

/* n messages "P:i" (i from first) to topic's partition p, delivered. */
static void put_n(const char *topic, int32_t p, int first, int n)
{
    char errstr[256], v[32];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    cr_assert_eq(rd_kafka_conf_set(c, "bootstrap.servers",
                                   broker_bootstraps(mock), errstr,
                                   sizeof(errstr)),
                 RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof(errstr));
    cr_assert_not_null(rk, "%s", errstr);
    for (int i = first; i < first + n; i++) {
        int len = snprintf(v, sizeof(v), "%d:%d", (int)p, i);
        cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
                                       RD_KAFKA_V_PARTITION(p),
                                       RD_KAFKA_V_VALUE(v, (size_t)len),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    cr_assert_eq(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);
}

/* What a read handed over, partition by partition. */
struct got {
    int n[4];          /* messages per partition */
    int64_t next[4];   /* the offset expected next */
    int bad;           /* out of order, or not what was produced */
    int refuse_at;     /* each refuses the message of this count (0: none) */
    int total;
};

static int got_each(void *ctx, const struct kafka_msg *m)
{
    struct got *g = ctx;
    char want[32];
    int32_t p = m->partition;
    if (p < 0 || p > 3 || m->offset != g->next[p]) {
        g->bad++;
        return 0;
    }
    int len = snprintf(want, sizeof(want), "%d:%d", (int)p, (int)m->offset);
    if (m->len != (size_t)len || memcmp(m->payload, want, m->len))
        g->bad++;
    g->next[p]++;
    g->n[p]++;
    if (++g->total == g->refuse_at)
        return -EBADMSG;
    return 0;
}

static struct kafka_reader *reader_open(void)
{
    char err[256];
    struct kafka_reader *r =
        kafka_reader_new(conf_new("reader"), "p4", NULL, NULL, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    return r;
}

Test(kafka_uread, reads_partitions_together_to_their_end)
{
    char err[256];
    struct kafka_reader *r = reader_open();
    /* More than one batch of the reader on partition 2; none on 1. */
    put_n("p4", 0, 0, 5);
    put_n("p4", 2, 0, 700);
    put_n("p4", 3, 0, 3);

    struct kafka_read_part parts[3] = {{.partition = 0}, {.partition = 1},
                                       {.partition = 2}};
    struct got g = {0};
    cr_assert_eq(kafka_reader_read(r, parts, 3, 10000, got_each, &g, err,
                                   sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(g.bad, 0);
    cr_assert_eq(g.n[0], 5);
    cr_assert_eq(g.n[1], 0);
    cr_assert_eq(g.n[2], 700);
    cr_assert_eq(g.n[3], 0, "partition 3 was not asked for");
    cr_assert_eq(parts[0].high, 5);
    cr_assert_eq(parts[1].low, 0);
    cr_assert_eq(parts[1].high, 0);
    cr_assert_eq(parts[2].messages, 700);
    cr_assert_eq(parts[0].bytes, 5 * 3);

    /* The same reader again: partition 0 has grown, partition 3 joins;
     * nothing of the first read comes back. */
    put_n("p4", 0, 5, 2);
    struct kafka_read_part again[2] = {{.partition = 3}, {.partition = 0}};
    memset(&g, 0, sizeof(g));
    cr_assert_eq(kafka_reader_read(r, again, 2, 10000, got_each, &g, err,
                                   sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(g.bad, 0);
    cr_assert_eq(g.n[0], 7);
    cr_assert_eq(g.n[3], 3);
    cr_assert_eq(g.n[2], 0);
    cr_assert_eq(again[1].high, 7);
    cr_assert_eq(again[0].messages, 3);

    /* Nothing to read: no wait, no call. */
    struct kafka_read_part empty[1] = {{.partition = 1}};
    memset(&g, 0, sizeof(g));
    cr_assert_eq(kafka_reader_read(r, empty, 1, 10000, got_each, &g, err,
                                   sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(g.total, 0);
    kafka_reader_free(r);
}

Test(kafka_uread, a_refusal_stops_the_read)
{
    char err[256] = "";
    struct kafka_reader *r = reader_open();
    put_n("p4", 1, 0, 50);
    put_n("p4", 2, 0, 50);
    struct kafka_read_part parts[2] = {{.partition = 1}, {.partition = 2}};
    struct got g = {.refuse_at = 30};
    cr_assert_eq(kafka_reader_read(r, parts, 2, 10000, got_each, &g, err,
                                   sizeof(err)),
                 -EBADMSG);
    cr_assert_eq(g.total, 30, "no call after the refusal");
    cr_assert(strstr(err, "refused"), "%s", err);
    /* The reader is still good. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(kafka_reader_read(r, parts, 2, 10000, got_each, &g, err,
                                   sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(g.n[1] + g.n[2], 100);
    kafka_reader_free(r);
}

Test(kafka_uread, times_out_when_a_partition_is_not_read_to_its_end)
{
    char err[512] = "";
    struct kafka_reader *r = reader_open();
    put_n("p4", 0, 0, 10);
    put_n("p4", 3, 0, 10);
    /* Every fetch fails: the watermarks are known, the messages never
     * come. */
    cr_assert_eq(broker_fault(mock, "error Fetch 100000 NOT_LEADER_FOR_PARTITION",
                              err, sizeof(err)),
                 0, "%s", err);
    struct kafka_read_part parts[2] = {{.partition = 0}, {.partition = 3}};
    struct got g = {0};
    int64_t t0 = (int64_t)time(NULL);
    cr_assert_eq(kafka_reader_read(r, parts, 2, 1500, got_each, &g, err,
                                   sizeof(err)),
                 -ETIMEDOUT, "%s", err);
    cr_assert_leq((int64_t)time(NULL) - t0, 4, "the deadline holds");
    cr_assert(strstr(err, "p4/0: read to 0 of 10 within 1500 ms"), "%s", err);
    cr_assert(strstr(err, "2 of 2 partitions"), "%s", err);
    cr_assert_eq(g.total, 0);
    kafka_reader_free(r);
}

Test(kafka_uread, needs_a_group_id)
{
    char err[256] = "";
    cr_assert_null(
        kafka_reader_new(conf_new(NULL), "p4", NULL, NULL, err, sizeof(err)));
    cr_assert(strstr(err, "group.id"), "%s", err);
}
