/* kafka_read.c -- one partition read from its oldest kept message to its
 * end, blocking: how a member of a group of nmfd processes restores the
 * state of a partition it has just been assigned (docs/design.md
 * section 8).
 *
 * The restore must finish before the partition's input is folded, so it
 * runs on the caller's thread with a deadline. It uses librdkafka's
 * simple (legacy) consumer on a client of its own: no group, no commits,
 * nothing left behind; the watermarks are asked first, so the read stops
 * exactly at the end as it was then, even while others keep producing.
 */
#include "kafka_read.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "errf.h"
#include "kafka_util.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int kafka_read_partition(struct kafka_conf *conf, const char *topic,
                         int32_t partition, int timeout_ms,
                         int (*each)(void *ctx, const struct kafka_msg *m),
                         void *ctx, struct kafka_read_stats *st, char *err,
                         size_t errlen)
{
    rd_kafka_conf_t *c = kafka__conf(conf);
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;
    rd_kafka_message_t *batch[256];
    char why[512];
    int64_t lo = 0, hi = 0, deadline = mono_ms() + timeout_ms;
    int rc = 0;
    bool started = false;

    memset(st, 0, sizeof(*st));
    kafka__conf_set(c, "enable.partition.eof", "true", why, sizeof(why));
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, why, sizeof(why));
    if (!rk) {
        rd_kafka_conf_destroy(c);
        return io_errf(err, errlen, -EINVAL, "reader: %s", why);
    }
    rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
        rk, topic, partition, &lo, &hi, timeout_ms);
    if (e) {
        rc = io_errf(err, errlen, kafka_errno(e), "%s/%d: watermarks: %s",
                     topic, (int)partition, rd_kafka_err2str(e));
        goto out;
    }
    st->low = lo;
    st->high = hi;
    if (hi <= lo)
        goto out;
    rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt || rd_kafka_consume_start(rkt, partition, lo) == -1) {
        rc = io_errf(err, errlen, -EIO, "%s/%d: cannot start reading: %s",
                     topic, (int)partition,
                     rd_kafka_err2str(rd_kafka_last_error()));
        goto out;
    }
    started = true;
    int64_t next = lo;
    while (next < hi && rc == 0) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            rc = io_errf(err, errlen, -ETIMEDOUT,
                         "%s/%d: read to %lld of %lld within %d ms", topic,
                         (int)partition, (long long)next, (long long)hi,
                         timeout_ms);
            break;
        }
        ssize_t n = rd_kafka_consume_batch(rkt, partition,
                                           left < 100 ? (int)left : 100,
                                           batch, 256);
        if (n < 0) {
            rc = io_errf(err, errlen, -EIO, "%s/%d: %s", topic, (int)partition,
                         rd_kafka_err2str(rd_kafka_last_error()));
            break;
        }
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = batch[i];
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                /* Retention dropped messages under us, or the end moved
                 * down: nothing more to read. */
                if (m->offset >= next)
                    next = hi;
            } else if (m->err) {
                if (rc == 0)
                    rc = io_errf(err, errlen, kafka_errno(m->err),
                                 "%s/%d: %s", topic, (int)partition,
                                 rd_kafka_message_errstr(m));
            } else if (m->offset < hi && rc == 0) {
                struct kafka_msg km = {
                    .topic = topic,
                    .partition = partition,
                    .offset = m->offset,
                    .ts = rd_kafka_message_timestamp(m, NULL),
                    .key = m->key,
                    .key_len = m->key_len,
                    .payload = m->payload,
                    .len = m->len,
                    .impl = m,
                };
                st->messages++;
                st->bytes += m->len;
                next = m->offset + 1;
                rc = each(ctx, &km);
                if (rc)
                    io_errf(err, errlen, rc, "%s/%d offset %lld refused",
                            topic, (int)partition, (long long)m->offset);
            } else if (m->offset >= hi) {
                next = hi;
            }
            rd_kafka_message_destroy(m);
        }
    }
out:
    if (started)
        rd_kafka_consume_stop(rkt, partition);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return rc;
}
