/* kafka_read.c -- partitions of one topic read from their oldest kept
 * message to their end, blocking, together: how a member of a group of
 * nmfd processes restores the state of the partitions it has just been
 * assigned (docs/design.md section 8).
 *
 * The restore must finish before the partitions' input is folded, so it
 * runs on the caller's thread with a deadline. The reader is one client
 * made once (struct kafka_reader), a consumer that joins no group and
 * commits nothing: each read asks every partition's watermarks, assigns
 * them all at once at their low ones and takes messages from the one
 * consumer queue until each partition reaches the high watermark it had
 * when the read began, so a read stops exactly at the end as it was then,
 * even while others keep producing; then it unassigns them. A client per
 * partition cost a handle, a metadata request and fetch waits each time;
 * the fetch settings here make the broker answer with what it has at
 * once. Nothing is left behind between reads but the open connections.
 *
 * This file owns the reader's librdkafka handle and its consumer queue.
 */
#include "kafka_read.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errf.h"
#include "kafka_util.h"

#define KAFKA_READ_BATCH 256

struct kafka_reader {
    rd_kafka_t *rk;
    rd_kafka_queue_t *q; /* the consumer queue */
    char *topic;
    void (*on_log)(void *ctx, int level, const char *fac, const char *msg);
    void *log_ctx;
    char why[512]; /* librdkafka's last error during a read */
    bool fatal;
};

/* A partition's progress in a read. */
struct read_pos {
    int64_t next; /* the next offset expected */
    bool done;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reader_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                          const char *buf)
{
    struct kafka_reader *r = rd_kafka_opaque(rk);
    if (r && r->on_log)
        r->on_log(r->log_ctx, level, fac, buf);
}

/* Errors come through the main queue, served during a read: librdkafka
 * retries transport errors itself, so they only give a timeout its words;
 * a fatal one ends the read. */
static void reader_error_cb(rd_kafka_t *rk, int err, const char *reason,
                            void *opaque)
{
    struct kafka_reader *r = opaque;
    (void)rk;
    snprintf(r->why, sizeof(r->why), "%s", reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        r->fatal = true;
}

struct kafka_reader *kafka_reader_new(struct kafka_conf *conf,
                                      const char *topic,
                                      void (*on_log)(void *ctx, int level,
                                                     const char *fac,
                                                     const char *msg),
                                      void *log_ctx, char *err, size_t errlen)
{
    /* Whatever [kafka] says: every kept message, nothing stored or
     * committed, an end seen as such, and fetches answered with what the
     * broker has rather than held for more. */
    static const char *const tuning[][2] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
        {"statistics.interval.ms", "0"},
        {"fetch.wait.max.ms", "10"},
        {"fetch.min.bytes", "1"},
        {"fetch.max.bytes", "52428800"},
        {"max.partition.fetch.bytes", "16777216"},
        {"queued.min.messages", "1000000"},
    };
    rd_kafka_conf_t *c = kafka__conf(conf);
    struct kafka_reader *r = calloc(1, sizeof(*r));
    char why[512];

    if (!r || !(r->topic = strdup(topic))) {
        io_errf(err, errlen, -ENOMEM, "reader: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
        if (kafka__conf_set(c, tuning[i][0], tuning[i][1], why, sizeof(why))) {
            io_errf(err, errlen, -EINVAL, "reader: %s", why);
            goto fail;
        }
    r->on_log = on_log;
    r->log_ctx = log_ctx;
    rd_kafka_conf_set_opaque(c, r);
    rd_kafka_conf_set_log_cb(c, reader_log_cb);
    rd_kafka_conf_set_error_cb(c, reader_error_cb);
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, why, sizeof(why));
    if (!r->rk) {
        io_errf(err, errlen, -EINVAL, "reader: %s", why);
        goto fail;
    }
    r->q = rd_kafka_queue_get_consumer(r->rk);
    if (!r->q) {
        /* No group.id: librdkafka's assign() needs one. */
        io_errf(err, errlen, -EINVAL, "reader: group.id is required");
        kafka_reader_free(r);
        return NULL;
    }
    return r;
fail:
    rd_kafka_conf_destroy(c);
    if (r)
        free(r->topic);
    free(r);
    return NULL;
}

void kafka_reader_free(struct kafka_reader *r)
{
    if (!r)
        return;
    if (r->q)
        rd_kafka_queue_destroy(r->q);
    if (r->rk) {
        rd_kafka_assign(r->rk, NULL);
        /* No group was joined: nothing to leave. */
        rd_kafka_destroy_flags(r->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    }
    free(r->topic);
    free(r);
}

static ssize_t find_part(const struct kafka_read_part *parts, size_t n,
                         int32_t partition)
{
    for (size_t i = 0; i < n; i++)
        if (parts[i].partition == partition)
            return (ssize_t)i;
    return -1;
}

int kafka_reader_read(struct kafka_reader *r, struct kafka_read_part *parts,
                      size_t n, int timeout_ms,
                      int (*each)(void *ctx, const struct kafka_msg *m),
                      void *ctx, char *err, size_t errlen)
{
    rd_kafka_message_t *batch[KAFKA_READ_BATCH];
    rd_kafka_topic_partition_list_t *l = NULL;
    struct read_pos *pos = calloc(n ? n : 1, sizeof(*pos));
    int64_t deadline = mono_ms() + timeout_ms;
    size_t pending = 0;
    bool assigned = false;
    int rc = 0;

    if (!pos)
        return io_errf(err, errlen, -ENOMEM, "%s: out of memory", r->topic);
    /* What came before this read is not this read's. */
    rd_kafka_poll(r->rk, 0);
    r->why[0] = '\0';
    r->fatal = false;

    l = rd_kafka_topic_partition_list_new((int)(n ? n : 1));
    if (!l) {
        rc = io_errf(err, errlen, -ENOMEM, "%s: out of memory", r->topic);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        struct kafka_read_part *p = &parts[i];
        int64_t lo = 0, hi = 0, left = deadline - mono_ms();
        p->low = p->high = 0;
        p->messages = p->bytes = 0;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
            r->rk, r->topic, p->partition, &lo, &hi,
            left > 0 ? (int)left : 0);
        if (e) {
            rc = io_errf(err, errlen, kafka_errno(e), "%s/%d: watermarks: %s",
                         r->topic, (int)p->partition, rd_kafka_err2str(e));
            goto out;
        }
        p->low = lo;
        p->high = hi;
        pos[i].next = lo;
        pos[i].done = hi <= lo;
        if (!pos[i].done) {
            rd_kafka_topic_partition_list_add(l, r->topic, p->partition)
                ->offset = lo;
            pending++;
        }
    }
    if (!pending)
        goto out;
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, l);
    if (e) {
        rc = io_errf(err, errlen, kafka_errno(e), "%s: cannot start reading: %s",
                     r->topic, rd_kafka_err2str(e));
        goto out;
    }
    assigned = true;
    while (pending && rc == 0) {
        int64_t left = deadline - mono_ms();
        rd_kafka_poll(r->rk, 0);
        if (r->fatal) {
            rc = io_errf(err, errlen, -EIO, "%s: %s", r->topic, r->why);
            break;
        }
        if (left <= 0) {
            size_t i = 0;
            while (pos[i].done)
                i++;
            rc = io_errf(err, errlen, -ETIMEDOUT,
                         "%s/%d: read to %lld of %lld within %d ms (%zu of "
                         "%zu partitions not read to their end)%s%s",
                         r->topic, (int)parts[i].partition,
                         (long long)pos[i].next, (long long)parts[i].high,
                         timeout_ms, pending, n, r->why[0] ? ": " : "",
                         r->why);
            break;
        }
        ssize_t got = rd_kafka_consume_batch_queue(
            r->q, left < 100 ? (int)left : 100, batch, KAFKA_READ_BATCH);
        if (got < 0) {
            rc = io_errf(err, errlen, -EIO, "%s: %s", r->topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
            break;
        }
        for (ssize_t j = 0; j < got; j++) {
            rd_kafka_message_t *m = batch[j];
            ssize_t i = find_part(parts, n, m->partition);
            if (i < 0 || pos[i].done || rc) {
                /* Another read's, or past this partition's end. */
            } else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                /* Retention dropped messages under us, or the end moved
                 * down: nothing more to read. */
                if (m->offset >= pos[i].next) {
                    pos[i].done = true;
                    pending--;
                }
            } else if (m->err) {
                rc = io_errf(err, errlen, kafka_errno(m->err), "%s/%d: %s",
                             r->topic, (int)m->partition,
                             rd_kafka_message_errstr(m));
            } else if (m->offset >= parts[i].high) {
                pos[i].done = true;
                pending--;
            } else {
                struct kafka_msg km = {
                    .topic = r->topic,
                    .partition = m->partition,
                    .offset = m->offset,
                    .ts = rd_kafka_message_timestamp(m, NULL),
                    .key = m->key,
                    .key_len = m->key_len,
                    .payload = m->payload,
                    .len = m->len,
                    .impl = m,
                };
                parts[i].messages++;
                parts[i].bytes += m->len;
                pos[i].next = m->offset + 1;
                rc = each(ctx, &km);
                if (rc)
                    io_errf(err, errlen, rc, "%s/%d offset %lld refused",
                            r->topic, (int)m->partition, (long long)m->offset);
                else if (pos[i].next >= parts[i].high) {
                    pos[i].done = true;
                    pending--;
                }
            }
            rd_kafka_message_destroy(m);
        }
    }
out:
    if (assigned)
        rd_kafka_assign(r->rk, NULL);
    if (l)
        rd_kafka_topic_partition_list_destroy(l);
    free(pos);
    return rc;
}
