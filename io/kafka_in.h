/* kafka_in.h -- the consumer: Kafka in on a libuv loop (kafka.h has the
 * rules every callback and return follows). */
#ifndef NMFD_IO_KAFKA_IN_H
#define NMFD_IO_KAFKA_IN_H

#include <uv.h>

#include "kafka.h"

struct kafka_in;

/* A consumed message, valid only during on_message (and everything it
 * points to). */
struct kafka_msg {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t ts; /* the message's timestamp, ms; -1 when it has none */
    const void *key;
    size_t key_len;
    const void *payload;
    size_t len;
    const void *impl; /* io/'s own */
};

/* The last value of header name: 0, or -ENOENT. */
int kafka_msg_header(const struct kafka_msg *m, const char *name,
                     const void **value, size_t *len);

struct kafka_in_cbs {
    /* Every message in partition order; never an error or a partition EOF.
     * msg and its payload are valid only during the call. Required. */
    void (*on_message)(void *ctx, const struct kafka_msg *msg);
    /* Partitions being added to the assignment. The owner may set
     * parts[i].offset (e.g. from its checkpoint) before returning;
     * KAFKA_OFFSET_INVALID keeps the committed offset, else
     * auto.offset.reset. May be NULL. */
    void (*on_assign)(void *ctx, struct kafka_part *parts, size_t n);
    /* Partitions being removed; lost: they went without a clean handover
     * (another member may already own them, do not commit for them).
     * Messages of these partitions not yet delivered are dropped. */
    void (*on_revoke)(void *ctx, const struct kafka_part *parts, size_t n,
                      bool lost);
    /* err: negative errno. fatal: the consumer is unusable, close it. */
    void (*on_error)(void *ctx, int err, bool fatal, const char *reason);
    /* librdkafka's log lines (syslog level), served on the loop. NULL:
     * librdkafka prints them on stderr itself. */
    void (*on_log)(void *ctx, int level, const char *fac, const char *msg);
    /* New statistics were parsed (statistics.interval.ms); read them with
     * kafka_in_lag(). May be NULL. */
    void (*on_stats)(void *ctx);
    /* After kafka_in_close(): the group was left, every handle closed; the
     * kafka_in is freed right after this returns. May be NULL. */
    void (*on_closed)(void *ctx);
    /* The end of a pass that handed over at least one message, before the
     * loop runs anything else: the owner finishes what on_message began
     * (nmfd folds its batch here), so no other loop callback ever sees a
     * message half-handled. May be NULL. */
    void (*on_pass_end)(void *ctx);
};

/* Creates a consumer on conf, which it always takes over (also on
 * failure). Sets on top of the caller's keys: enable.auto.commit=false,
 * enable.auto.offset.store=false, the rebalance, error and stats
 * callbacks; statistics are parsed only if statistics.interval.ms > 0.
 * group.id is required, also for kafka_in_assign() (librdkafka has no
 * assignment without a group handle; nothing is committed unless asked).
 * Returns NULL with a message in err on failure. */
struct kafka_in *kafka_in_new(uv_loop_t *loop, struct kafka_conf *conf,
                              const struct kafka_in_cbs *cbs, void *ctx,
                              char *err, size_t errlen);

/* Messages handed over per loop iteration (default 1000); the rest waits
 * for the next iteration so the loop stays responsive. */
void kafka_in_set_batch(struct kafka_in *k, unsigned batch);

/* Whether the owner is behind its input: the last iteration took a full
 * batch, so that more messages were waiting, or the last statistics
 * (statistics.interval.ms) counted more than ten batches in the broker
 * past what the owner consumed. Work that can wait (nmfd's refinement)
 * yields while it is. */
bool kafka_in_behind(const struct kafka_in *k);

/* Joins the group for the comma-separated topics. -EINVAL an empty list
 * or entry, or after kafka_in_close; -errno from librdkafka. */
int kafka_in_subscribe(struct kafka_in *k, const char *topics);

/* Manual assignment, no group: each element's offset is where to start
 * (KAFKA_OFFSET_BEGINNING, _END, or an offset). */
int kafka_in_assign(struct kafka_in *k,
                    const struct kafka_part *parts, size_t n);

/* Asynchronous commit; offsets are the next offsets to read (last
 * processed + 1), as Kafka stores them. A failure comes to on_error. */
int kafka_in_commit(struct kafka_in *k,
                    const struct kafka_part *offsets, size_t n);

/* Backpressure: pause stops fetching on every assigned partition (and on
 * partitions assigned while paused) and stops delivery at once, keeping
 * undelivered messages for resume, so nothing is lost or reordered. */
int kafka_in_pause(struct kafka_in *k);
int kafka_in_resume(struct kafka_in *k);
bool kafka_in_paused(const struct kafka_in *k);

/* Leaves the group (on_revoke is called for the assignment), closes the
 * loop handles and frees k in their close callback (on_closed first).
 * Does not block the loop. k must not be used afterwards. */
void kafka_in_close(struct kafka_in *k);


/* Per-partition position and lag from the last statistics. */
struct kafka_lag {
    char topic[KAFKA_TOPIC_MAX];
    int32_t partition;
    int64_t position;  /* next offset to hand over, -1 unknown */
    int64_t committed; /* committed offset, -1 unknown */
    int64_t end;       /* high watermark (last stable offset when
                          isolation.level=read_committed), -1 unknown */
    int64_t lag;       /* end - position (or end - committed), -1 unknown */
};

/* Copies up to cap entries of the assigned partitions' lag; returns how
 * many there are (may exceed cap). 0 before the first statistics. */
size_t kafka_in_lag(const struct kafka_in *k, struct kafka_lag *out,
                    size_t cap);

struct kafka_in_stats {
    uint64_t messages;   /* handed to on_message */
    uint64_t bytes;      /* their payload bytes */
    uint64_t errors;     /* reported to on_error */
    uint64_t rebalances; /* assign + revoke events */
    int64_t lag;         /* sum of known partition lags, -1 unknown */
    int brokers;         /* brokers in the last statistics, 0 unknown */
    int brokers_up;      /* of them, connected (state UP) */
};
void kafka_in_stats(const struct kafka_in *k, struct kafka_in_stats *st);

/* The partition count of topic (0 or more), from a metadata request that
 * blocks up to timeout_ms: -ETIMEDOUT, -ENOENT an unknown topic, other
 * -errno. For checks at start and on a rebalance, not per message. */
int kafka_in_partition_count(struct kafka_in *k, const char *topic,
                             int timeout_ms);

#endif
