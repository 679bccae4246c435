/* kafka_out.h -- the producer: Kafka out on a libuv loop (kafka.h has the
 * rules every callback and return follows). */
#ifndef NMFD_IO_KAFKA_OUT_H
#define NMFD_IO_KAFKA_OUT_H

#include <uv.h>

#include "kafka.h"

struct kafka_out;

struct kafka_header {
    const char *name;
    const void *value;
    size_t len;
};

/* Completion of kafka_out_commit/abort: 0, or -ECANCELED (the transaction
 * was aborted, its records must be produced again), -ENOTRECOVERABLE
 * (fatal: the producer is unusable), -ETIMEDOUT, other -errno. */
typedef void (*kafka_out_done_cb)(void *ctx, int status);

struct kafka_out_cbs {
    /* Transactions were initialised (transactional) or not available, in
     * which case the producer works idempotent and non-transactional and
     * on_error has said why. Produce only after this. May be NULL. */
    void (*on_ready)(void *ctx, bool transactional);
    /* Delivery failures (after librdkafka's retries) and client errors. */
    void (*on_error)(void *ctx, int err, bool fatal, const char *reason);
    void (*on_log)(void *ctx, int level, const char *fac, const char *msg);
    /* After kafka_out_close(): everything released; out is freed right
     * after this returns. May be NULL. */
    void (*on_closed)(void *ctx);
};

/* Creates a producer on conf, which it always takes over. Always
 * enable.idempotence=true and partitioner=murmur2_random (Java-compatible
 * keys) unless conf chose another partitioner. transactional_id NULL: not
 * transactional, ready at once (on_ready is still called, from the loop).
 * Otherwise transactions are initialised off the loop; if that fails the
 * producer falls back to non-transactional with a warning on on_error. */
struct kafka_out *kafka_out_new(uv_loop_t *loop, struct kafka_conf *conf,
                                const char *transactional_id,
                                const struct kafka_out_cbs *cbs, void *ctx,
                                char *err, size_t errlen);

bool kafka_out_ready(const struct kafka_out *out);
bool kafka_out_transactional(const struct kafka_out *out);

/* Opens a transaction (a no-op when not transactional). -EAGAIN not ready
 * yet, -EBUSY a transaction is open or a commit/abort is in flight,
 * -ENOTRECOVERABLE fatal. */
int kafka_out_begin(struct kafka_out *out);

/* Produces one record; key and value are copied. partition -1: by key
 * (murmur2), else that partition. hdrs may be NULL (nhdrs 0). Never
 * blocks: -ENOBUFS queue full, -EAGAIN not ready, -EBUSY a commit is in
 * flight, -EINVAL (transactional) no transaction open, -EMSGSIZE too
 * large, -ENOENT unknown topic/partition, other -errno. */
int kafka_out_produce(struct kafka_out *out, const char *topic,
                      int32_t partition, const void *key, size_t klen,
                      const void *value, size_t vlen,
                      const struct kafka_header *hdrs, size_t nhdrs);

/* Produces a copy of a consumed message (key, value, timestamp) to topic
 * with headers nmfd.reason = reason and nmfd.source =
 * "topic/partition/offset". Same returns as kafka_out_produce. */
struct kafka_msg;
int kafka_out_produce_dead(struct kafka_out *out, const char *topic,
                           const struct kafka_msg *orig, const char *reason);

/* Ends the epoch: transactional, commits off the loop (retrying a
 * retriable failure, aborting when the transaction must be aborted);
 * otherwise completes when every record produced so far is delivered or
 * failed. cb runs on the loop. -EBUSY another commit in flight, -EINVAL
 * (transactional) no transaction open, -ENOTRECOVERABLE fatal. No
 * produce for the next epoch before cb. */
int kafka_out_commit(struct kafka_out *out, kafka_out_done_cb cb, void *ctx);
/* Aborts the open transaction off the loop (transactional only). */
int kafka_out_abort(struct kafka_out *out, kafka_out_done_cb cb, void *ctx);

struct kafka_out_stats {
    uint64_t produced;   /* accepted by kafka_out_produce */
    uint64_t delivered;  /* delivery report OK */
    uint64_t failed;     /* delivery report with an error */
    uint64_t queue_full; /* -ENOBUFS returned */
    uint64_t commits;    /* transactions committed (or epochs flushed) */
    uint64_t aborts;     /* transactions aborted */
};
void kafka_out_stats(const struct kafka_out *out, struct kafka_out_stats *st);

/* Delivers what is queued (up to timeout_ms, off the loop; an open
 * transaction is aborted), then releases the handle and the loop handles;
 * out is freed after on_closed. out must not be used afterwards. */
void kafka_out_close(struct kafka_out *out, int timeout_ms);


#endif
