/* kafka_out.c -- Kafka out on a libuv loop.
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
 * This file owns the producer's librdkafka handle, its queue, pipe and
 * loop handles; struct kafka_out is freed in the close callback of its
 * last loop handle. It never blocks the loop, never keeps a payload that
 * librdkafka has taken, and never lets a librdkafka error code out except
 * through kafka_errno(). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "errf.h"
#include "kafka_in.h"
#include "kafka_out.h"
#include "kafka_util.h"

#define KAFKA_OUT_EVENT_BUDGET 256 /* events served per loop iteration */
#define KAFKA_OUT_TXN_RETRIES  5

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
    va_list ap;

    va_start(ap, fmt);
    kafka__report(out->cbs.on_error, out->ctx, err, fatal, fmt, ap);
    va_end(ap);
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

struct kafka_out *kafka_out_new(uv_loop_t *loop, struct kafka_conf *kconf,
                                const char *transactional_id,
                                const struct kafka_out_cbs *cbs, void *ctx,
                                char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = kafka__conf(kconf);
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
                           const struct kafka_msg *orig, const char *reason)
{
    rd_kafka_headers_t *h;
    char source[KAFKA_TOPIC_MAX + 48];

    if (!orig || !reason)
        return -EINVAL;
    snprintf(source, sizeof(source), "%s/%d/%lld",
             orig->topic ? orig->topic : "", (int)orig->partition,
             (long long)orig->offset);
    h = rd_kafka_headers_new(2);
    rd_kafka_header_add(h, "nmfd.reason", -1, reason, -1);
    rd_kafka_header_add(h, "nmfd.source", -1, source, -1);
    return kafka__out_produce(out, topic, RD_KAFKA_PARTITION_UA, orig->key,
                              orig->key_len, orig->payload, orig->len,
                              orig->ts > 0 ? orig->ts : 0, h);
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
