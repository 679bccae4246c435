/* kafka.c -- Kafka in and out on a libuv loop.
 *
 * The consumer (struct kafka_in) is a high-level consumer-group client
 * whose every callback runs on the loop thread: the main queue is
 * forwarded to the consumer queue, librdkafka writes a byte to a pipe when
 * that queue turns non-empty, a uv_poll_t on the pipe wakes the loop, and
 * the loop takes at most one batch of messages per iteration (a uv_idle_t
 * carries on with the next batch), so a flood of messages never starves
 * the loop's timers and sockets. Rebalances, errors, statistics and log
 * lines come through the same queue and run on the loop too. Messages that
 * were taken from librdkafka but not yet handed over (the owner paused in
 * the middle of a batch) are kept in order and handed over on resume;
 * librdkafka resumes fetching after them, so nothing is lost or repeated.
 *
 * The producer (struct kafka_out) is idempotent, and transactional when
 * asked and the cluster allows it. Delivery reports and errors are events
 * on its main queue, served on the loop through the same pipe-and-poll
 * scheme. The calls that block in librdkafka (init, commit and abort of a
 * transaction, the final flush, and destroying either handle) run on
 * libuv's thread pool, one at a time per handle, and report back on the
 * loop. Serving delivery reports as events (not callbacks) is what lets a
 * commit block in a worker while the loop keeps draining the reports that
 * commit waits for.
 *
 * This module owns both librdkafka handles, their queues, pipes and loop
 * handles; each struct is freed in the close callback of its last loop
 * handle. It never blocks the loop, never allocates per consumed message,
 * never keeps a message past on_message, and never lets a librdkafka error
 * code out except through kafka_errno(). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <jansson.h>

#include "errf.h"
#include "kafka.h"

#define KAFKA_IN_BATCH_DEFAULT 1000
#define KAFKA_IN_KEEPALIVE_MS  1000 /* serve the queue at least this often */
#define KAFKA_IN_CLOSING_MS    50
#define KAFKA_OUT_EVENT_BUDGET 256 /* events served per loop iteration */
#define KAFKA_OUT_TXN_RETRIES  5

int kafka_errno(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return -ENOBUFS;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return -EMSGSIZE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__NOENT:
        return -ENOENT;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return -ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        return -ECONNRESET;
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
        return -EHOSTDOWN;
    case RD_KAFKA_RESP_ERR__RESOLVE:
        return -EHOSTUNREACH;
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__FENCED:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
        return -ENOTRECOVERABLE;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__INVALID_TYPE:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR_INVALID_CONFIG:
    case RD_KAFKA_RESP_ERR_INVALID_REQUEST:
        return -EINVAL;
    case RD_KAFKA_RESP_ERR__NOT_IMPLEMENTED:
    case RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
        return -EOPNOTSUPP;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return -EACCES;
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__BAD_COMPRESSION:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
        return -EPROTO;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        return -ECANCELED;
    case RD_KAFKA_RESP_ERR__DESTROY:
        return -ESHUTDOWN;
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
    case RD_KAFKA_RESP_ERR__NO_OFFSET:
        return -ENODATA;
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
        return -ERANGE;
    case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
    case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
    case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST:
    case RD_KAFKA_RESP_ERR__OUTDATED:
        return -ESTALE;
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR__IN_PROGRESS:
        return -EAGAIN;
    default:
        return -EIO;
    }
}

static int kafka__conf_set(rd_kafka_conf_t *conf, const char *key,
                           const char *val, char *err, size_t errlen)
{
    char errstr[512];

    if (rd_kafka_conf_set(conf, key, val, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        io_errf(err, errlen, 0, "%s", errstr);
        return -EINVAL;
    }
    return 0;
}

static int kafka__conf_get_long(rd_kafka_conf_t *conf, const char *key,
                                long *out)
{
    char buf[64];
    size_t len = sizeof(buf);

    if (rd_kafka_conf_get(conf, key, buf, &len) != RD_KAFKA_CONF_OK)
        return -ENOENT;
    *out = strtol(buf, NULL, 10);
    return 0;
}

/* A non-blocking, close-on-exec pipe for librdkafka's queue wake-ups. */
static int kafka__pipe(int fds[2])
{
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    return 0;
}

static void kafka__pipe_drain(int fd)
{
    char buf[256];

    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

static void kafka__pipe_close(int fds[2])
{
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

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
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    k->st.errors++;
    if (k->cbs.on_error)
        k->cbs.on_error(k->ctx, err, fatal, reason);
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
            k->cbs.on_assign(k->ctx, parts);
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
            k->cbs.on_revoke(k->ctx, parts, lost);
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
 * paused or closed. */
static void kafka__in_deliver(struct kafka_in *k)
{
    while (k->head < k->tail && !k->paused && !k->closing) {
        rd_kafka_message_t *m = k->msgs[k->head++];

        k->st.messages++;
        k->st.bytes += m->len;
        k->cbs.on_message(k->ctx, m);
        rd_kafka_message_destroy(m);
    }
    if (k->head == k->tail)
        k->head = k->tail = 0;
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

    kafka__in_deliver(k);

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
    if (k->finishing)
        return;
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

    kafka__in_deliver(k);

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

struct kafka_in *kafka_in_new(uv_loop_t *loop, rd_kafka_conf_t *conf,
                              const struct kafka_in_cbs *cbs, void *ctx,
                              char *err, size_t errlen)
{
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
    return k->behind;
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

int kafka_in_assign(struct kafka_in *k,
                    const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_resp_err_t rerr;

    if (k->closing)
        return -EINVAL;
    rerr = rd_kafka_assign(k->rk, parts);
    if (!rerr && k->paused && parts)
        rd_kafka_pause_partitions(k->rk,
                                  (rd_kafka_topic_partition_list_t *)parts);
    kafka__in_schedule(k);
    return kafka_errno(rerr);
}

int kafka_in_commit(struct kafka_in *k,
                    const rd_kafka_topic_partition_list_t *offsets)
{
    rd_kafka_resp_err_t rerr;

    if (k->closing || !offsets || offsets->cnt == 0)
        return -EINVAL;
    rerr = rd_kafka_commit(k->rk, offsets, 1);
    return kafka_errno(rerr);
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

/* ---- producer ------------------------------------------------------------ */

enum kafka_out_state {
    KAFKA_OUT_INIT,    /* transactions being initialised */
    KAFKA_OUT_READY,   /* producing */
    KAFKA_OUT_CLOSING, /* flushing, then destroying */
};

enum kafka_out_job {
    KAFKA_OUT_JOB_NONE,
    KAFKA_OUT_JOB_INIT,
    KAFKA_OUT_JOB_COMMIT,
    KAFKA_OUT_JOB_ABORT,
    KAFKA_OUT_JOB_FLUSH,
    KAFKA_OUT_JOB_DESTROY,
};

struct kafka_out {
    uv_loop_t *loop;
    rd_kafka_t *rk;
    rd_kafka_conf_t *fallback; /* non-transactional conf, until ready */
    rd_kafka_queue_t *q;       /* main queue: delivery reports, errors */
    struct kafka_out_cbs cbs;
    void *ctx;
    int pipefd[2];
    uv_poll_t poll;
    uv_timer_t kick; /* continues serving, runs deferred callbacks */
    uv_work_t work;
    int handles;

    enum kafka_out_state state;
    bool transactional;
    bool txn_open;
    bool fatal;
    bool ready_pending; /* on_ready to be called from the loop */
    bool close_pending; /* kafka_out_close while a job ran */
    int close_timeout_ms;
    int txn_timeout_ms; /* transaction.timeout.ms: bounds init and commit */

    /* The job running on the thread pool, and what it left. */
    enum kafka_out_job job;
    int job_status;
    char job_err[512];

    /* A commit (or flush-as-commit) in flight and its callback. */
    bool committing;
    bool nontxn_commit; /* completes when nothing is outstanding */
    kafka_out_done_cb done_cb;
    void *done_ctx;

    struct kafka_out_stats st;
};

static void kafka__out_error(struct kafka_out *out, int err, bool fatal,
                             const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void kafka__out_error(struct kafka_out *out, int err, bool fatal,
                             const char *fmt, ...)
{
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (out->cbs.on_error)
        out->cbs.on_error(out->ctx, err, fatal, reason);
}

static uint64_t kafka__out_outstanding(const struct kafka_out *out)
{
    return out->st.produced - out->st.delivered - out->st.failed;
}

static void kafka__out_event(struct kafka_out *out, rd_kafka_event_t *ev)
{
    switch (rd_kafka_event_type(ev)) {
    case RD_KAFKA_EVENT_DR: {
        const rd_kafka_message_t *m;
        const rd_kafka_message_t *first_bad = NULL;
        uint64_t bad = 0;

        while ((m = rd_kafka_event_message_next(ev))) {
            if (m->err) {
                out->st.failed++;
                if (!first_bad)
                    first_bad = m;
                bad++;
            } else {
                out->st.delivered++;
            }
        }
        /* One report per event, not per record: a broker outage fails
         * records by the thousand. */
        if (bad)
            kafka__out_error(
                out, kafka_errno(first_bad->err), false,
                "%llu record(s) not delivered to %s: %s",
                (unsigned long long)bad,
                first_bad->rkt ? rd_kafka_topic_name(first_bad->rkt) : "-",
                rd_kafka_err2str(first_bad->err));
        break;
    }
    case RD_KAFKA_EVENT_ERROR: {
        rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
        bool fatal = rd_kafka_event_error_is_fatal(ev);

        if (fatal)
            out->fatal = true;
        kafka__out_error(out, fatal ? -ENOTRECOVERABLE : kafka_errno(err),
                         fatal, "%s%s: %s", fatal ? "fatal: " : "",
                         rd_kafka_err2name(err),
                         rd_kafka_event_error_string(ev));
        break;
    }
    case RD_KAFKA_EVENT_LOG: {
        const char *fac, *str;
        int level;

        if (rd_kafka_event_log(ev, &fac, &str, &level) == 0 && out->cbs.on_log)
            out->cbs.on_log(out->ctx, level, fac, str);
        break;
    }
    default:
        break;
    }
}

static void kafka__out_start_close(struct kafka_out *out);

static void kafka__out_commit_done(struct kafka_out *out, int status)
{
    kafka_out_done_cb cb = out->done_cb;
    void *ctx = out->done_ctx;

    out->committing = false;
    out->nontxn_commit = false;
    out->done_cb = NULL;
    out->done_ctx = NULL;
    if (status == 0)
        out->st.commits++;
    else if (status == -ECANCELED)
        out->st.aborts++;
    if (cb)
        cb(ctx, status);
    if (out->close_pending && out->job == KAFKA_OUT_JOB_NONE) {
        out->close_pending = false;
        kafka__out_start_close(out);
    }
}

static void kafka__out_pass(struct kafka_out *out);

static void kafka__out_on_kick(uv_timer_t *h)
{
    kafka__out_pass(h->data);
}

static void kafka__out_kick(struct kafka_out *out)
{
    uv_timer_start(&out->kick, kafka__out_on_kick, 0, 0);
}

/* Serves up to a budget of events; the kick timer continues if more. */
static void kafka__out_pass(struct kafka_out *out)
{
    int n = 0;

    if (out->pipefd[0] >= 0)
        kafka__pipe_drain(out->pipefd[0]);
    if (out->q) {
        rd_kafka_event_t *ev;

        while (n < KAFKA_OUT_EVENT_BUDGET &&
               (ev = rd_kafka_queue_poll(out->q, 0))) {
            kafka__out_event(out, ev);
            rd_kafka_event_destroy(ev);
            n++;
        }
    }
    if (out->ready_pending) {
        out->ready_pending = false;
        if (out->cbs.on_ready)
            out->cbs.on_ready(out->ctx, out->transactional);
    }
    if (out->committing && out->nontxn_commit &&
        kafka__out_outstanding(out) == 0)
        kafka__out_commit_done(out, 0);
    if (n == KAFKA_OUT_EVENT_BUDGET && out->state != KAFKA_OUT_INIT)
        kafka__out_kick(out);
}

static void kafka__out_on_poll(uv_poll_t *h, int status, int events)
{
    kafka__out_pass(h->data);
}

/* Attaches the loop to the handle's main queue once the handle is final. */
static void kafka__out_attach(struct kafka_out *out)
{
    out->q = rd_kafka_queue_get_main(out->rk);
    rd_kafka_queue_io_event_enable(out->q, out->pipefd[1], "p", 1);
    uv_poll_start(&out->poll, UV_READABLE, kafka__out_on_poll);
    /* Events queued before the wake-up was enabled wrote no byte. */
    kafka__out_kick(out);
}

/* Commit or abort with librdkafka's retry rules; runs on a worker. */
static int kafka__out_txn_end(struct kafka_out *out, bool commit)
{
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *error =
            commit ? rd_kafka_commit_transaction(out->rk, out->txn_timeout_ms)
                   : rd_kafka_abort_transaction(out->rk, out->txn_timeout_ms);
        int status;

        if (!error)
            return commit ? 0 : -ECANCELED;
        snprintf(out->job_err, sizeof(out->job_err), "%s",
                 rd_kafka_error_string(error));
        if (rd_kafka_error_is_fatal(error)) {
            rd_kafka_error_destroy(error);
            return -ENOTRECOVERABLE;
        }
        if (commit && rd_kafka_error_txn_requires_abort(error)) {
            rd_kafka_error_destroy(error);
            return kafka__out_txn_end(out, false);
        }
        status = kafka_errno(rd_kafka_error_code(error));
        if (rd_kafka_error_is_retriable(error) &&
            attempt + 1 < KAFKA_OUT_TXN_RETRIES) {
            rd_kafka_error_destroy(error);
            continue;
        }
        rd_kafka_error_destroy(error);
        return status < 0 ? status : -EIO;
    }
}

static void kafka__out_work(uv_work_t *w)
{
    struct kafka_out *out = w->data;

    out->job_err[0] = '\0';
    out->job_status = 0;
    switch (out->job) {
    case KAFKA_OUT_JOB_INIT: {
        rd_kafka_error_t *error = NULL;
        char errstr[256];

        /* One transaction timeout in all: a cluster that cannot find a
         * transaction coordinator by then is treated as one without. */
        error = rd_kafka_init_transactions(out->rk, out->txn_timeout_ms);
        if (!error)
            break;
        /* The cluster cannot do transactions: replace the handle by an
         * idempotent, non-transactional one. No record was produced yet. */
        snprintf(out->job_err, sizeof(out->job_err), "%s",
                 rd_kafka_error_string(error));
        out->job_status = kafka_errno(rd_kafka_error_code(error));
        if (out->job_status == 0)
            out->job_status = -EIO;
        rd_kafka_error_destroy(error);
        rd_kafka_destroy(out->rk);
        out->rk = rd_kafka_new(RD_KAFKA_PRODUCER, out->fallback, errstr,
                               sizeof(errstr));
        if (out->rk) {
            out->fallback = NULL;
        } else {
            snprintf(out->job_err, sizeof(out->job_err),
                     "transactions unavailable and no fallback: %s", errstr);
            out->job_status = -ENOTRECOVERABLE;
        }
        break;
    }
    case KAFKA_OUT_JOB_COMMIT:
        out->job_status = kafka__out_txn_end(out, true);
        break;
    case KAFKA_OUT_JOB_ABORT:
        out->job_status = kafka__out_txn_end(out, false);
        break;
    case KAFKA_OUT_JOB_FLUSH:
        if (out->transactional && out->txn_open) {
            rd_kafka_error_t *error =
                rd_kafka_abort_transaction(out->rk, out->close_timeout_ms);
            if (error)
                rd_kafka_error_destroy(error);
        }
        /* Delivery reports are events, so flush waits for the loop to
         * serve them instead of serving them on this thread. */
        if (rd_kafka_flush(out->rk, out->close_timeout_ms)) {
            rd_kafka_purge(out->rk,
                           RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            rd_kafka_flush(out->rk, 1000);
        }
        break;
    case KAFKA_OUT_JOB_DESTROY:
        rd_kafka_destroy(out->rk);
        break;
    case KAFKA_OUT_JOB_NONE:
        break;
    }
}

static int kafka__out_job(struct kafka_out *out, enum kafka_out_job job);

static void kafka__out_on_close(uv_handle_t *h)
{
    struct kafka_out *out = h->data;

    if (--out->handles > 0)
        return;
    kafka__pipe_close(out->pipefd);
    if (out->fallback)
        rd_kafka_conf_destroy(out->fallback);
    if (out->cbs.on_closed)
        out->cbs.on_closed(out->ctx);
    free(out);
}

static void kafka__out_work_done(uv_work_t *w, int status)
{
    struct kafka_out *out = w->data;
    enum kafka_out_job job = out->job;

    out->job = KAFKA_OUT_JOB_NONE;
    switch (job) {
    case KAFKA_OUT_JOB_INIT:
        if (out->job_status == -ENOTRECOVERABLE) {
            out->fatal = true;
            out->transactional = false;
            kafka__out_error(out, -ENOTRECOVERABLE, true, "%s", out->job_err);
            /* Without a handle there is nothing to attach or flush. */
            out->state = KAFKA_OUT_CLOSING;
            out->rk = NULL;
            uv_close((uv_handle_t *)&out->poll, kafka__out_on_close);
            uv_close((uv_handle_t *)&out->kick, kafka__out_on_close);
            return;
        }
        if (out->job_status < 0) {
            out->transactional = false;
            kafka__out_error(out, -EOPNOTSUPP, false,
                             "transactions unavailable (%s); producing "
                             "idempotent, non-transactional",
                             out->job_err);
        }
        if (out->fallback) {
            rd_kafka_conf_destroy(out->fallback);
            out->fallback = NULL;
        }
        out->state = KAFKA_OUT_READY;
        out->ready_pending = true;
        kafka__out_attach(out);
        break;
    case KAFKA_OUT_JOB_COMMIT:
    case KAFKA_OUT_JOB_ABORT:
        out->txn_open = false;
        if (out->job_status == -ENOTRECOVERABLE)
            out->fatal = true;
        if (out->job_status < 0 && out->job_status != -ECANCELED)
            kafka__out_error(out, out->job_status,
                             out->job_status == -ENOTRECOVERABLE, "%s: %s",
                             job == KAFKA_OUT_JOB_COMMIT ? "commit" : "abort",
                             out->job_err);
        kafka__out_commit_done(out, out->job_status);
        break;
    case KAFKA_OUT_JOB_FLUSH:
        out->txn_open = false;
        /* Serve what is left, detach, and destroy the handle. */
        kafka__out_pass(out);
        while (out->q) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(out->q, 0);
            if (!ev)
                break;
            kafka__out_event(out, ev);
            rd_kafka_event_destroy(ev);
        }
        if (out->q) {
            rd_kafka_queue_io_event_enable(out->q, -1, NULL, 0);
            rd_kafka_queue_destroy(out->q);
            out->q = NULL;
        }
        uv_poll_stop(&out->poll);
        kafka__out_job(out, KAFKA_OUT_JOB_DESTROY);
        return;
    case KAFKA_OUT_JOB_DESTROY:
        out->rk = NULL;
        uv_close((uv_handle_t *)&out->poll, kafka__out_on_close);
        uv_close((uv_handle_t *)&out->kick, kafka__out_on_close);
        return;
    case KAFKA_OUT_JOB_NONE:
        break;
    }
    if (out->close_pending) {
        out->close_pending = false;
        kafka__out_start_close(out);
    }
}

static int kafka__out_job(struct kafka_out *out, enum kafka_out_job job)
{
    int r;

    out->job = job;
    out->work.data = out;
    r = uv_queue_work(out->loop, &out->work, kafka__out_work,
                      kafka__out_work_done);
    if (r < 0)
        out->job = KAFKA_OUT_JOB_NONE;
    return r;
}

static void kafka__out_start_close(struct kafka_out *out)
{
    out->state = KAFKA_OUT_CLOSING;
    if (kafka__out_job(out, KAFKA_OUT_JOB_FLUSH) < 0) {
        /* No thread pool: nothing more can be done without blocking. */
        if (out->q) {
            rd_kafka_queue_io_event_enable(out->q, -1, NULL, 0);
            rd_kafka_queue_destroy(out->q);
            out->q = NULL;
        }
        rd_kafka_destroy(out->rk);
        out->rk = NULL;
        uv_close((uv_handle_t *)&out->poll, kafka__out_on_close);
        uv_close((uv_handle_t *)&out->kick, kafka__out_on_close);
    }
}

struct kafka_out *kafka_out_new(uv_loop_t *loop, rd_kafka_conf_t *conf,
                                const char *transactional_id,
                                const struct kafka_out_cbs *cbs, void *ctx,
                                char *err, size_t errlen)
{
    struct kafka_out *out = NULL;
    char errstr[512], buf[64];
    size_t len;
    int events = RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR;
    rd_kafka_conf_res_t cres;

    out = calloc(1, sizeof(*out));
    if (!out) {
        io_errf(err, errlen, 0, "out of memory");
        goto fail;
    }
    out->loop = loop;
    if (cbs)
        out->cbs = *cbs;
    out->ctx = ctx;
    out->pipefd[0] = out->pipefd[1] = -1;

    if (kafka__conf_set(conf, "enable.idempotence", "true", err, errlen))
        goto fail;
    /* Java-compatible key placement, unless the operator chose one. The
     * partitioner is a topic property: until some topic property was set,
     * the global conf has no topic conf and reports it unknown. */
    len = sizeof(buf);
    cres = rd_kafka_conf_get(conf, "partitioner", buf, &len);
    if ((cres == RD_KAFKA_CONF_UNKNOWN ||
         (cres == RD_KAFKA_CONF_OK && !strcmp(buf, "consistent_random"))) &&
        kafka__conf_set(conf, "partitioner", "murmur2_random", err, errlen))
        goto fail;
    if (out->cbs.on_log) {
        if (kafka__conf_set(conf, "log.queue", "true", err, errlen))
            goto fail;
        events |= RD_KAFKA_EVENT_LOG;
    }
    rd_kafka_conf_set_events(conf, events);
    rd_kafka_conf_set_opaque(conf, out);

    long tmo = 60000;
    kafka__conf_get_long(conf, "transaction.timeout.ms", &tmo);
    out->txn_timeout_ms = tmo > 0 && tmo < 3600000 ? (int)tmo : 60000;
    if (transactional_id && *transactional_id) {
        out->fallback = rd_kafka_conf_dup(conf);
        if (!out->fallback) {
            io_errf(err, errlen, 0, "out of memory");
            goto fail;
        }
        if (kafka__conf_set(conf, "transactional.id", transactional_id, err,
                            errlen))
            goto fail;
        out->transactional = true;
    }
    if (kafka__pipe(out->pipefd) < 0) {
        io_errf(err, errlen, 0, "pipe: %s", strerror(errno));
        goto fail;
    }
    out->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!out->rk) {
        io_errf(err, errlen, 0, "%s", errstr);
        goto fail;
    }
    conf = NULL;
    if (out->cbs.on_log)
        rd_kafka_set_log_queue(out->rk, NULL);

    uv_poll_init(loop, &out->poll, out->pipefd[0]);
    uv_timer_init(loop, &out->kick);
    out->poll.data = out->kick.data = out;
    out->handles = 2;

    if (out->transactional) {
        out->state = KAFKA_OUT_INIT;
        if (kafka__out_job(out, KAFKA_OUT_JOB_INIT) < 0) {
            io_errf(err, errlen, 0, "cannot queue transaction init");
            rd_kafka_destroy(out->rk);
            out->rk = NULL;
            uv_close((uv_handle_t *)&out->poll, kafka__out_on_close);
            uv_close((uv_handle_t *)&out->kick, kafka__out_on_close);
            /* freed in the close callback; on_closed must not run */
            out->cbs.on_closed = NULL;
            return NULL;
        }
    } else {
        out->state = KAFKA_OUT_READY;
        out->ready_pending = true;
        kafka__out_attach(out);
    }
    return out;

fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (out) {
        if (out->fallback)
            rd_kafka_conf_destroy(out->fallback);
        kafka__pipe_close(out->pipefd);
        free(out);
    }
    return NULL;
}

bool kafka_out_ready(const struct kafka_out *out)
{
    return out->state == KAFKA_OUT_READY && !out->fatal;
}

bool kafka_out_transactional(const struct kafka_out *out)
{
    return out->transactional;
}

static int kafka__out_usable(const struct kafka_out *out)
{
    if (out->fatal)
        return -ENOTRECOVERABLE;
    if (out->state == KAFKA_OUT_INIT)
        return -EAGAIN;
    if (out->state != KAFKA_OUT_READY)
        return -ESHUTDOWN;
    return 0;
}

int kafka_out_begin(struct kafka_out *out)
{
    rd_kafka_error_t *error;
    int r;

    if ((r = kafka__out_usable(out)) < 0)
        return r;
    if (out->committing || out->job != KAFKA_OUT_JOB_NONE || out->txn_open)
        return -EBUSY;
    if (!out->transactional)
        return 0;
    error = rd_kafka_begin_transaction(out->rk);
    if (error) {
        if (rd_kafka_error_is_fatal(error)) {
            out->fatal = true;
            r = -ENOTRECOVERABLE;
        } else {
            r = kafka_errno(rd_kafka_error_code(error));
        }
        rd_kafka_error_destroy(error);
        return r < 0 ? r : -EIO;
    }
    out->txn_open = true;
    return 0;
}

static int kafka__out_produce(struct kafka_out *out, const char *topic,
                              int32_t partition, const void *key, size_t klen,
                              const void *value, size_t vlen, int64_t ts,
                              rd_kafka_headers_t *hdrs)
{
    rd_kafka_vu_t vu[7];
    size_t n = 0;
    rd_kafka_error_t *error;
    int r;

    if ((r = kafka__out_usable(out)) < 0)
        goto fail;
    if (out->committing) {
        r = -EBUSY;
        goto fail;
    }
    if (out->transactional && !out->txn_open) {
        r = -EINVAL;
        goto fail;
    }
    if (!topic || !*topic) {
        r = -EINVAL;
        goto fail;
    }
    vu[n].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[n++].u.cstr = topic;
    vu[n].vtype = RD_KAFKA_VTYPE_PARTITION;
    vu[n++].u.i32 = partition < 0 ? RD_KAFKA_PARTITION_UA : partition;
    vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
    if (key && klen) {
        vu[n].vtype = RD_KAFKA_VTYPE_KEY;
        vu[n].u.mem.ptr = (void *)key;
        vu[n++].u.mem.size = klen;
    }
    vu[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[n].u.mem.ptr = (void *)value;
    vu[n++].u.mem.size = value ? vlen : 0;
    if (ts > 0) {
        vu[n].vtype = RD_KAFKA_VTYPE_TIMESTAMP;
        vu[n++].u.i64 = ts;
    }
    if (hdrs) {
        vu[n].vtype = RD_KAFKA_VTYPE_HEADERS;
        vu[n++].u.headers = hdrs;
    }
    error = rd_kafka_produceva(out->rk, vu, n);
    if (error) {
        rd_kafka_resp_err_t code = rd_kafka_error_code(error);

        if (rd_kafka_error_is_fatal(error))
            out->fatal = true;
        rd_kafka_error_destroy(error);
        if (code == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            out->st.queue_full++;
        r = out->fatal ? -ENOTRECOVERABLE : kafka_errno(code);
        if (r == 0)
            r = -EIO;
        goto fail;
    }
    out->st.produced++;
    return 0;

fail:
    /* On failure the headers still belong to us. */
    if (hdrs)
        rd_kafka_headers_destroy(hdrs);
    return r;
}

int kafka_out_produce(struct kafka_out *out, const char *topic,
                      int32_t partition, const void *key, size_t klen,
                      const void *value, size_t vlen,
                      const struct kafka_header *hdrs, size_t nhdrs)
{
    rd_kafka_headers_t *h = NULL;

    if (nhdrs) {
        if (!hdrs)
            return -EINVAL;
        h = rd_kafka_headers_new(nhdrs);
        for (size_t i = 0; i < nhdrs; i++)
            if (!hdrs[i].name ||
                rd_kafka_header_add(h, hdrs[i].name, -1, hdrs[i].value,
                                    (ssize_t)hdrs[i].len)) {
                rd_kafka_headers_destroy(h);
                return -EINVAL;
            }
    }
    return kafka__out_produce(out, topic, partition, key, klen, value, vlen, 0,
                              h);
}

int kafka_out_produce_dead(struct kafka_out *out, const char *topic,
                           const rd_kafka_message_t *orig, const char *reason)
{
    rd_kafka_headers_t *h;
    rd_kafka_timestamp_type_t tstype;
    char source[KAFKA_TOPIC_MAX + 48];
    int64_t ts;

    if (!orig || !reason)
        return -EINVAL;
    snprintf(source, sizeof(source), "%s/%d/%lld",
             orig->rkt ? rd_kafka_topic_name(orig->rkt) : "",
             (int)orig->partition, (long long)orig->offset);
    h = rd_kafka_headers_new(2);
    rd_kafka_header_add(h, "nmfd.reason", -1, reason, -1);
    rd_kafka_header_add(h, "nmfd.source", -1, source, -1);
    ts = rd_kafka_message_timestamp(orig, &tstype);
    return kafka__out_produce(out, topic, RD_KAFKA_PARTITION_UA, orig->key,
                              orig->key_len, orig->payload, orig->len,
                              ts > 0 ? ts : 0, h);
}

int kafka_out_commit(struct kafka_out *out, kafka_out_done_cb cb, void *ctx)
{
    int r;

    if ((r = kafka__out_usable(out)) < 0)
        return r;
    if (out->committing || out->job != KAFKA_OUT_JOB_NONE)
        return -EBUSY;
    if (out->transactional && !out->txn_open)
        return -EINVAL;
    out->committing = true;
    out->done_cb = cb;
    out->done_ctx = ctx;
    if (!out->transactional) {
        out->nontxn_commit = true;
        kafka__out_kick(out);
        return 0;
    }
    if ((r = kafka__out_job(out, KAFKA_OUT_JOB_COMMIT)) < 0) {
        out->committing = false;
        out->done_cb = NULL;
        out->done_ctx = NULL;
        return r;
    }
    return 0;
}

int kafka_out_abort(struct kafka_out *out, kafka_out_done_cb cb, void *ctx)
{
    int r;

    if ((r = kafka__out_usable(out)) < 0)
        return r;
    if (!out->transactional || !out->txn_open)
        return -EINVAL;
    if (out->committing || out->job != KAFKA_OUT_JOB_NONE)
        return -EBUSY;
    out->committing = true;
    out->done_cb = cb;
    out->done_ctx = ctx;
    if ((r = kafka__out_job(out, KAFKA_OUT_JOB_ABORT)) < 0) {
        out->committing = false;
        out->done_cb = NULL;
        out->done_ctx = NULL;
        return r;
    }
    return 0;
}

void kafka_out_stats(const struct kafka_out *out, struct kafka_out_stats *st)
{
    *st = out->st;
}

void kafka_out_close(struct kafka_out *out, int timeout_ms)
{
    if (out->state == KAFKA_OUT_CLOSING || out->close_pending)
        return;
    out->close_timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
    /* A commit still completes (its callback runs) before the close. */
    if (out->job != KAFKA_OUT_JOB_NONE || out->committing) {
        out->close_pending = true;
        return;
    }
    kafka__out_start_close(out);
}

rd_kafka_t *kafka_out_handle(struct kafka_out *out)
{
    return out->rk;
}
