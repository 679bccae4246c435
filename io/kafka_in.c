/* kafka_in.c -- Kafka in on a libuv loop.
 *
 * The consumer (struct kafka_in) is a high-level consumer-group client
 * whose every callback runs on the loop thread: the main queue is
 * forwarded to the consumer queue, librdkafka writes a byte to a pipe when
 * that queue turns non-empty, a uv_poll_t on the pipe wakes the loop, and
 * the loop takes at most one batch of messages per iteration (a uv_idle_t
 * carries on with the next batch), so a flood of messages never starves
 * the loop's timers and sockets. Rebalances, errors, statistics and log
 * lines come through the same queue and run on the loop too. A pass that
 * handed messages over ends with on_pass_end, before the loop moves on,
 * so the owner can finish them as one batch. Messages that
 * were taken from librdkafka but not yet handed over (the owner paused in
 * the middle of a batch) are kept in order and handed over on resume;
 * librdkafka resumes fetching after them, so nothing is lost or repeated.
 *
 * This file owns the consumer's librdkafka handle, its queues, pipe and
 * loop handles; struct kafka_in is freed in the close callback of its last
 * loop handle. It never blocks the loop, never allocates per consumed
 * message, never keeps a message past on_message, and never lets a
 * librdkafka error code out except through kafka_errno(). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <jansson.h>

#include "errf.h"
#include "kafka_in.h"
#include "kafka_util.h"

#define KAFKA_IN_BATCH_DEFAULT 1000
/* Behind, too, while the last statistics saw more than this many batches
 * waiting in the broker past what the owner consumed: once the fold
 * outpaces the fetcher, a pass can end short of a batch with a backlog
 * still in the broker. */
#define KAFKA_IN_BACKLOG 10
#define KAFKA_IN_KEEPALIVE_MS  1000 /* serve the queue at least this often */
#define KAFKA_IN_CLOSING_MS    50

/* ---- consumer ------------------------------------------------------------ */

struct kafka_in {
    uv_loop_t *loop;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;      /* consumer queue (main forwarded to it) */
    rd_kafka_queue_t *closeq; /* while closing: the group queue's target */
    struct kafka_in_cbs cbs;
    void *ctx;
    int pipefd[2];
    uv_poll_t poll;
    uv_idle_t idle;
    uv_timer_t timer;
    uv_work_t work;
    int handles; /* loop handles still open */

    /* Messages taken from librdkafka and not yet handed over:
     * msgs[head..tail), in the order librdkafka returned them. */
    rd_kafka_message_t **msgs;
    size_t cap, head, tail;
    unsigned batch;

    bool paused;
    bool behind;  /* the last pass took a full batch */
    bool backlog; /* the last statistics: over KAFKA_IN_BACKLOG batches wait */
    bool closing; /* kafka_in_close called */
    bool close_started;
    bool finishing; /* handle being destroyed, handles closing */
    bool read_committed;

    struct kafka_lag *lag;
    size_t nlag, lagcap;
    int brokers, brokers_up;
    struct kafka_in_stats st;
};

static void kafka__in_on_idle(uv_idle_t *h);

static void kafka__in_schedule(struct kafka_in *k)
{
    if (!k->finishing && !uv_is_active((uv_handle_t *)&k->idle))
        uv_idle_start(&k->idle, kafka__in_on_idle);
}

static void kafka__in_error(struct kafka_in *k, int err, bool fatal,
                            const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void kafka__in_error(struct kafka_in *k, int err, bool fatal,
                            const char *fmt, ...)
{
    va_list ap;

    k->st.errors++;
    va_start(ap, fmt);
    kafka__report(k->cbs.on_error, k->ctx, err, fatal, fmt, ap);
    va_end(ap);
}

static bool kafka__parts_has(const rd_kafka_topic_partition_list_t *parts,
                             const char *topic, int32_t partition)
{
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].partition == partition &&
            !strcmp(parts->elems[i].topic, topic))
            return true;
    return false;
}

/* Drops the undelivered messages of the given partitions (all when parts
 * is NULL), keeping the order of the others. */
static void kafka__in_drop(struct kafka_in *k,
                           const rd_kafka_topic_partition_list_t *parts)
{
    size_t w = k->head;

    for (size_t r = k->head; r < k->tail; r++) {
        rd_kafka_message_t *m = k->msgs[r];

        if (!parts ||
            kafka__parts_has(parts, rd_kafka_topic_name(m->rkt), m->partition))
            rd_kafka_message_destroy(m);
        else
            k->msgs[w++] = m;
    }
    k->tail = w;
    if (k->head == k->tail)
        k->head = k->tail = 0;
}

/* The owner sees partitions as kafka_part arrays; the offsets it sets on
 * assignment go back into librdkafka's list. */
static void kafka__in_tell_assign(struct kafka_in *k,
                                  rd_kafka_topic_partition_list_t *parts)
{
    struct kafka_part *p = kafka__parts_array(parts);

    if (!p) {
        kafka__in_error(k, -ENOMEM, false, "assignment: out of memory");
        return;
    }
    k->cbs.on_assign(k->ctx, p, (size_t)parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        parts->elems[i].offset = p[i].offset;
    free(p);
}

static void kafka__in_tell_revoke(struct kafka_in *k,
                                  const rd_kafka_topic_partition_list_t *parts,
                                  bool lost)
{
    struct kafka_part *p = kafka__parts_array(parts);

    if (!p) {
        kafka__in_error(k, -ENOMEM, false, "revocation: out of memory");
        return;
    }
    k->cbs.on_revoke(k->ctx, p, (size_t)parts->cnt, lost);
    free(p);
}

static void kafka__in_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *parts,
                                void *opaque)
{
    struct kafka_in *k = opaque;
    bool coop = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t rerr = RD_KAFKA_RESP_ERR_NO_ERROR;

    k->st.rebalances++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (k->cbs.on_assign && !k->closing)
            kafka__in_tell_assign(k, parts);
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            rerr = rd_kafka_assign(rk, parts);
        if (k->paused && !error && !rerr)
            rd_kafka_pause_partitions(rk, parts);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        bool lost = rd_kafka_assignment_lost(rk);

        kafka__in_drop(k, parts);
        if (k->cbs.on_revoke)
            kafka__in_tell_revoke(k, parts, lost);
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            rerr = rd_kafka_assign(rk, NULL);
    } else {
        kafka__in_error(k, kafka_errno(err), false, "rebalance failed: %s",
                        rd_kafka_err2str(err));
        kafka__in_drop(k, NULL);
        rerr = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        kafka__in_error(k, kafka_errno(rd_kafka_error_code(error)), false,
                        "%s: %s", rd_kafka_err2name(err),
                        rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (rerr) {
        kafka__in_error(k, kafka_errno(rerr), false, "%s: %s",
                        rd_kafka_err2name(err), rd_kafka_err2str(rerr));
    }
}

static void kafka__in_error_cb(rd_kafka_t *rk, int err, const char *reason,
                               void *opaque)
{
    struct kafka_in *k = opaque;

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(rk, buf, sizeof(buf));
        kafka__in_error(k, kafka_errno(RD_KAFKA_RESP_ERR__FATAL), true,
                        "fatal: %s: %s", rd_kafka_err2name(ferr), buf);
        return;
    }
    kafka__in_error(k, kafka_errno(err), false, "%s: %s",
                    rd_kafka_err2name(err), reason);
}

static void kafka__in_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *offsets,
                                void *opaque)
{
    struct kafka_in *k = opaque;

    /* Nothing to commit is not a failure. */
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR ||
        err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return;
    kafka__in_error(k, kafka_errno(err), false, "offset commit failed: %s",
                    rd_kafka_err2str(err));
}

static void kafka__log_cb(const rd_kafka_t *rk, int level, const char *fac,
                          const char *buf)
{
    struct kafka_in *k = rd_kafka_opaque(rk);

    if (k->cbs.on_log)
        k->cbs.on_log(k->ctx, level, fac, buf);
}

static int64_t kafka__json_int(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

/* Keeps, per partition in the assignment, the position, committed offset,
 * end offset and lag from librdkafka's statistics JSON. Runs on the loop
 * once per statistics.interval.ms; allocation here is fine. */
static int kafka__in_stats_cb(rd_kafka_t *rk, char *json, size_t len,
                              void *opaque)
{
    struct kafka_in *k = opaque;
    json_t *root, *topics, *tval, *parts, *pval;
    const char *tname, *pname;
    json_error_t jerr;
    size_t n = 0;

    root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return 0;
    topics = json_object_get(root, "topics");
    json_object_foreach(topics, tname, tval)
    {
        parts = json_object_get(tval, "partitions");
        json_object_foreach(parts, pname, pval)
        {
            int64_t p = kafka__json_int(pval, "partition");
            const char *state =
                json_string_value(json_object_get(pval, "fetch_state"));
            struct kafka_lag *l;

            /* Partition -1 is librdkafka's internal unassigned queue;
             * fetch_state "none" marks partitions we do not own. */
            if (p < 0 || !state || !strcmp(state, "none"))
                continue;
            if (n == k->lagcap) {
                size_t cap = k->lagcap ? 2 * k->lagcap : 16;
                struct kafka_lag *nl = realloc(k->lag, cap * sizeof(*nl));
                if (!nl)
                    break;
                k->lag = nl;
                k->lagcap = cap;
            }
            l = &k->lag[n++];
            snprintf(l->topic, sizeof(l->topic), "%s", tname);
            l->partition = (int32_t)p;
            l->position = kafka__json_int(pval, "app_offset");
            l->committed = kafka__json_int(pval, "committed_offset");
            l->end = kafka__json_int(pval, k->read_committed ? "ls_offset"
                                                             : "hi_offset");
            if (l->end >= 0 && l->position >= 0)
                l->lag = l->end - l->position;
            else if (l->end >= 0 && l->committed >= 0)
                l->lag = l->end - l->committed;
            else
                l->lag = -1;
            if (l->lag < -1)
                l->lag = 0;
        }
    }
    /* Connectivity: the cluster's brokers (configured or learned, not
     * librdkafka's internal and logical ones) and how many are UP. */
    k->brokers = k->brokers_up = 0;
    json_object_foreach(json_object_get(root, "brokers"), tname, tval)
    {
        const char *src = json_string_value(json_object_get(tval, "source"));
        const char *st = json_string_value(json_object_get(tval, "state"));
        if (!src || !st || !strcmp(src, "internal") || !strcmp(src, "logical"))
            continue;
        k->brokers++;
        if (!strcmp(st, "UP"))
            k->brokers_up++;
    }
    json_decref(root);
    k->nlag = n;
    int64_t waiting = 0;
    for (size_t i = 0; i < n; i++)
        if (k->lag[i].lag > 0)
            waiting += k->lag[i].lag;
    k->backlog = waiting > (int64_t)KAFKA_IN_BACKLOG * k->batch;
    if (k->cbs.on_stats)
        k->cbs.on_stats(k->ctx);
    return 0; /* librdkafka frees json */
}

size_t kafka_in_lag(const struct kafka_in *k, struct kafka_lag *out, size_t cap)
{
    for (size_t i = 0; i < k->nlag && i < cap; i++)
        out[i] = k->lag[i];
    return k->nlag;
}

void kafka_in_stats(const struct kafka_in *k, struct kafka_in_stats *st)
{
    int64_t lag = -1;

    *st = k->st;
    st->brokers = k->brokers;
    st->brokers_up = k->brokers_up;
    for (size_t i = 0; i < k->nlag; i++)
        if (k->lag[i].lag >= 0)
            lag = (lag < 0 ? 0 : lag) + k->lag[i].lag;
    st->lag = lag;
}

/* Hands undelivered messages to the owner until none is left or the owner
 * paused or closed. Returns how many. */
static size_t kafka__in_deliver(struct kafka_in *k)
{
    size_t n = 0;

    while (k->head < k->tail && !k->paused && !k->closing) {
        rd_kafka_message_t *m = k->msgs[k->head++];
        struct kafka_msg km = {
            .topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "",
            .partition = m->partition,
            .offset = m->offset,
            .ts = rd_kafka_message_timestamp(m, NULL),
            .key = m->key,
            .key_len = m->key_len,
            .payload = m->payload,
            .len = m->len,
            .impl = m,
        };

        k->st.messages++;
        k->st.bytes += m->len;
        k->cbs.on_message(k->ctx, &km);
        rd_kafka_message_destroy(m);
        n++;
    }
    if (k->head == k->tail)
        k->head = k->tail = 0;
    return n;
}

static void kafka__in_finish(struct kafka_in *k);
static void kafka__in_on_timer(uv_timer_t *h);

/* Takes one batch from the queue (events are served inside, calling the
 * rebalance, error, stats and log callbacks) and hands it over. */
static void kafka__in_pass(struct kafka_in *k)
{
    rd_kafka_queue_t *q;
    size_t room, base;
    ssize_t n;
    size_t handed;
    bool more = false;

    if (k->finishing)
        return;
    kafka__pipe_drain(k->pipefd[0]);

    if (k->closing && !k->close_started) {
        rd_kafka_error_t *error;

        k->close_started = true;
        kafka__in_drop(k, NULL);
        /* The group queue is forwarded to closeq, which must be served
         * until librdkafka says the consumer is closed; the final revoke
         * arrives there. */
        k->closeq = rd_kafka_queue_new(k->rk);
        rd_kafka_queue_io_event_enable(k->closeq, k->pipefd[1], "c", 1);
        error = rd_kafka_consumer_close_queue(k->rk, k->closeq);
        if (error) {
            rd_kafka_error_destroy(error);
            kafka__in_finish(k);
            return;
        }
        uv_timer_start(&k->timer, kafka__in_on_timer, KAFKA_IN_CLOSING_MS,
                       KAFKA_IN_CLOSING_MS);
    }

    handed = kafka__in_deliver(k);

    /* Make room: compact, and while paused grow (messages fetched just
     * before the pause took effect must be kept, and events must still be
     * served; this is rare and bounded by what was in flight). */
    if (k->head > 0) {
        memmove(k->msgs, k->msgs + k->head,
                (k->tail - k->head) * sizeof(*k->msgs));
        k->tail -= k->head;
        k->head = 0;
    }
    if (k->cap - k->tail < 16) {
        size_t cap = 2 * k->cap;
        rd_kafka_message_t **nm = realloc(k->msgs, cap * sizeof(*nm));
        if (nm) {
            k->msgs = nm;
            k->cap = cap;
        }
    }
    room = k->cap - k->tail;
    if (room > k->batch)
        room = k->batch;

    q = k->closeq ? k->closeq : k->q;
    n = rd_kafka_consume_batch_queue(q, 0, k->msgs + k->tail, room);
    if (k->finishing) {
        if (handed && k->cbs.on_pass_end)
            k->cbs.on_pass_end(k->ctx);
        return;
    }
    if (n < 0) {
        kafka__in_error(k, kafka_errno(rd_kafka_last_error()), false,
                        "consume: %s", rd_kafka_err2str(rd_kafka_last_error()));
        n = 0;
    }
    base = k->tail;
    for (ssize_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = k->msgs[base + i];

        if (m->err || k->closing) {
            if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
                !k->closing)
                kafka__in_error(k, kafka_errno(m->err), false, "%s [%d]: %s",
                                m->rkt ? rd_kafka_topic_name(m->rkt) : "-",
                                (int)m->partition, rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        k->msgs[k->tail++] = m;
    }
    more = (size_t)n == room;
    k->behind = more; /* a full batch: more may be waiting */

    handed += kafka__in_deliver(k);
    if (handed && k->cbs.on_pass_end)
        k->cbs.on_pass_end(k->ctx);

    if (k->closing) {
        if (rd_kafka_consumer_closed(k->rk)) {
            kafka__in_finish(k);
            return;
        }
    }
    if (more || (k->head < k->tail && !k->paused && !k->closing) ||
        (k->closing && !k->close_started))
        kafka__in_schedule(k);
    else
        uv_idle_stop(&k->idle);
}

static void kafka__in_on_poll(uv_poll_t *h, int status, int events)
{
    kafka__in_pass(h->data);
}

static void kafka__in_on_idle(uv_idle_t *h)
{
    kafka__in_pass(h->data);
}

static void kafka__in_on_timer(uv_timer_t *h)
{
    kafka__in_pass(h->data);
}

static void kafka__in_on_close(uv_handle_t *h)
{
    struct kafka_in *k = h->data;

    if (--k->handles > 0)
        return;
    kafka__pipe_close(k->pipefd);
    if (k->cbs.on_closed)
        k->cbs.on_closed(k->ctx);
    free(k->msgs);
    free(k->lag);
    free(k);
}

static void kafka__in_destroy_work(uv_work_t *w)
{
    struct kafka_in *k = w->data;

    rd_kafka_destroy(k->rk);
}

static void kafka__in_destroy_done(uv_work_t *w, int status)
{
    struct kafka_in *k = w->data;

    k->rk = NULL;
    uv_close((uv_handle_t *)&k->poll, kafka__in_on_close);
    uv_close((uv_handle_t *)&k->idle, kafka__in_on_close);
    uv_close((uv_handle_t *)&k->timer, kafka__in_on_close);
}

/* The group is left: release the queues, destroy the handle off the loop
 * (it joins librdkafka's threads), then close the loop handles. */
static void kafka__in_finish(struct kafka_in *k)
{
    k->finishing = true;
    kafka__in_drop(k, NULL);
    uv_poll_stop(&k->poll);
    uv_idle_stop(&k->idle);
    uv_timer_stop(&k->timer);
    if (k->closeq) {
        rd_kafka_queue_io_event_enable(k->closeq, -1, NULL, 0);
        rd_kafka_queue_destroy(k->closeq);
        k->closeq = NULL;
    }
    if (k->q) {
        rd_kafka_queue_io_event_enable(k->q, -1, NULL, 0);
        rd_kafka_queue_destroy(k->q);
        k->q = NULL;
    }
    k->work.data = k;
    if (uv_queue_work(k->loop, &k->work, kafka__in_destroy_work,
                      kafka__in_destroy_done) < 0) {
        rd_kafka_destroy(k->rk);
        kafka__in_destroy_done(&k->work, 0);
    }
}

struct kafka_in *kafka_in_new(uv_loop_t *loop, struct kafka_conf *kconf,
                              const struct kafka_in_cbs *cbs, void *ctx,
                              char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = kafka__conf(kconf);
    struct kafka_in *k = NULL;
    char errstr[512], buf[64];
    size_t len;
    long interval = 0;
    rd_kafka_resp_err_t rerr;

    if (!cbs || !cbs->on_message) {
        io_errf(err, errlen, 0, "on_message is required");
        goto fail;
    }
    len = 0;
    if (rd_kafka_conf_get(conf, "group.id", NULL, &len) != RD_KAFKA_CONF_OK ||
        len <= 1) {
        io_errf(err, errlen, 0, "group.id is required");
        goto fail;
    }
    k = calloc(1, sizeof(*k));
    if (!k) {
        io_errf(err, errlen, 0, "out of memory");
        goto fail;
    }
    k->loop = loop;
    k->cbs = *cbs;
    k->ctx = ctx;
    k->pipefd[0] = k->pipefd[1] = -1;
    k->batch = KAFKA_IN_BATCH_DEFAULT;
    k->cap = 2 * KAFKA_IN_BATCH_DEFAULT;
    k->msgs = malloc(k->cap * sizeof(*k->msgs));
    if (!k->msgs) {
        io_errf(err, errlen, 0, "out of memory");
        goto fail;
    }
    len = sizeof(buf);
    k->read_committed = rd_kafka_conf_get(conf, "isolation.level", buf, &len) ==
                            RD_KAFKA_CONF_OK &&
                        !strcmp(buf, "read_committed");

    if (kafka__conf_set(conf, "enable.auto.commit", "false", err, errlen) ||
        kafka__conf_set(conf, "enable.auto.offset.store", "false", err, errlen))
        goto fail;
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_rebalance_cb(conf, kafka__in_rebalance);
    rd_kafka_conf_set_error_cb(conf, kafka__in_error_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, kafka__in_commit_cb);
    if (kafka__conf_get_long(conf, "statistics.interval.ms", &interval) == 0 &&
        interval > 0)
        rd_kafka_conf_set_stats_cb(conf, kafka__in_stats_cb);
    if (cbs->on_log) {
        /* Log lines queue up and are served on the loop like the rest. */
        if (kafka__conf_set(conf, "log.queue", "true", err, errlen))
            goto fail;
        rd_kafka_conf_set_log_cb(conf, kafka__log_cb);
    }
    if (kafka__pipe(k->pipefd) < 0) {
        io_errf(err, errlen, 0, "pipe: %s", strerror(errno));
        goto fail;
    }

    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (!k->rk) {
        io_errf(err, errlen, 0, "%s", errstr);
        goto fail;
    }
    conf = NULL;
    if (cbs->on_log)
        rd_kafka_set_log_queue(k->rk, NULL);
    rerr = rd_kafka_poll_set_consumer(k->rk);
    if (rerr) {
        io_errf(err, errlen, 0, "%s", rd_kafka_err2str(rerr));
        goto fail;
    }
    k->q = rd_kafka_queue_get_consumer(k->rk);
    rd_kafka_queue_io_event_enable(k->q, k->pipefd[1], "m", 1);

    uv_poll_init(loop, &k->poll, k->pipefd[0]);
    uv_idle_init(loop, &k->idle);
    uv_timer_init(loop, &k->timer);
    k->poll.data = k->idle.data = k->timer.data = k;
    k->handles = 3;
    uv_poll_start(&k->poll, UV_READABLE, kafka__in_on_poll);
    /* The idle callback is set once; kafka__in_schedule restarts it. */
    uv_idle_start(&k->idle, kafka__in_on_idle);
    uv_timer_start(&k->timer, kafka__in_on_timer, KAFKA_IN_KEEPALIVE_MS,
                   KAFKA_IN_KEEPALIVE_MS);
    return k;

fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (k) {
        if (k->q)
            rd_kafka_queue_destroy(k->q);
        if (k->rk)
            rd_kafka_destroy(k->rk);
        kafka__pipe_close(k->pipefd);
        free(k->msgs);
        free(k);
    }
    return NULL;
}

bool kafka_in_behind(const struct kafka_in *k)
{
    return k->behind || k->backlog;
}

void kafka_in_set_batch(struct kafka_in *k, unsigned batch)
{
    k->batch = batch ? batch : KAFKA_IN_BATCH_DEFAULT;
    if (k->cap < 2 * (size_t)k->batch) {
        size_t cap = 2 * (size_t)k->batch;
        rd_kafka_message_t **nm = realloc(k->msgs, cap * sizeof(*nm));
        if (nm) {
            k->msgs = nm;
            k->cap = cap;
        } else {
            k->batch = (unsigned)(k->cap / 2);
        }
    }
}

int kafka_in_subscribe(struct kafka_in *k, const char *topics)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_resp_err_t rerr;
    int n = 0;

    if (k->closing || !topics)
        return -EINVAL;
    list = rd_kafka_topic_partition_list_new(4);
    for (const char *p = topics; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char name[KAFKA_TOPIC_MAX];

        while (len && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0 || len >= sizeof(name)) {
            rd_kafka_topic_partition_list_destroy(list);
            return -EINVAL;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        rd_kafka_topic_partition_list_add(list, name, RD_KAFKA_PARTITION_UA);
        n++;
        if (!comma)
            break;
        p = comma + 1;
        if (!*p) {
            rd_kafka_topic_partition_list_destroy(list);
            return -EINVAL;
        }
    }
    if (n == 0) {
        rd_kafka_topic_partition_list_destroy(list);
        return -EINVAL;
    }
    rerr = rd_kafka_subscribe(k->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    return kafka_errno(rerr);
}

int kafka_in_assign(struct kafka_in *k, const struct kafka_part *parts,
                    size_t n)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    rd_kafka_resp_err_t rerr;

    if (k->closing)
        return -EINVAL;
    if (parts)
        l = kafka__parts_list(parts, n);
    rerr = rd_kafka_assign(k->rk, l);
    if (!rerr && k->paused && l)
        rd_kafka_pause_partitions(k->rk, l);
    if (l)
        rd_kafka_topic_partition_list_destroy(l);
    kafka__in_schedule(k);
    return kafka_errno(rerr);
}

int kafka_in_commit(struct kafka_in *k, const struct kafka_part *offsets,
                    size_t n)
{
    rd_kafka_topic_partition_list_t *l;
    rd_kafka_resp_err_t rerr;

    if (k->closing || !offsets || n == 0)
        return -EINVAL;
    l = kafka__parts_list(offsets, n);
    rerr = rd_kafka_commit(k->rk, l, 1);
    rd_kafka_topic_partition_list_destroy(l);
    return kafka_errno(rerr);
}

int kafka_msg_header(const struct kafka_msg *m, const char *name,
                     const void **value, size_t *len)
{
    rd_kafka_headers_t *h = NULL;

    if (!m->impl ||
        rd_kafka_message_headers((rd_kafka_message_t *)m->impl, &h) ||
        rd_kafka_header_get_last(h, name, value, len))
        return -ENOENT;
    return 0;
}

static int kafka__in_pause_resume(struct kafka_in *k, bool pause)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t rerr;

    if (k->closing)
        return -EINVAL;
    rerr = rd_kafka_assignment(k->rk, &parts);
    if (rerr)
        return kafka_errno(rerr);
    if (parts->cnt > 0)
        rerr = pause ? rd_kafka_pause_partitions(k->rk, parts)
                     : rd_kafka_resume_partitions(k->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (rerr)
        return kafka_errno(rerr);
    k->paused = pause;
    if (!pause)
        kafka__in_schedule(k);
    return 0;
}

int kafka_in_pause(struct kafka_in *k)
{
    return kafka__in_pause_resume(k, true);
}

int kafka_in_resume(struct kafka_in *k)
{
    return kafka__in_pause_resume(k, false);
}

bool kafka_in_paused(const struct kafka_in *k)
{
    return k->paused;
}

void kafka_in_close(struct kafka_in *k)
{
    if (k->closing)
        return;
    k->closing = true;
    kafka__in_schedule(k);
}

rd_kafka_t *kafka_in_handle(struct kafka_in *k)
{
    return k->rk;
}

/* The partition count of topic from the cluster's metadata: a blocking
 * request, bounded by timeout_ms; for start-up checks and rebalances,
 * which are rare. */
int kafka_in_partition_count(struct kafka_in *k, const char *topic,
                             int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(k->rk, topic, NULL);
    rd_kafka_resp_err_t e;
    int n;

    if (!rkt)
        return -ENOMEM;
    e = rd_kafka_metadata(k->rk, 0, rkt, &md, timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (e)
        return kafka_errno(e);
    if (md->topic_cnt != 1 || md->topics[0].err)
        n = md->topic_cnt == 1 ? kafka_errno(md->topics[0].err) : -ENOENT;
    else
        n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return n;
}
