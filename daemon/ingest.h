/* ingest.h -- the input side of nmfd: the consumer, the decoder, the fold
 * into the model, and each partition's position. */
#ifndef NMFD_DAEMON_INGEST_H
#define NMFD_DAEMON_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "kafka_in.h"

struct checkpoint_offset;
struct event_decoder;
struct kafka_out;
struct metrics;
struct model;

struct ingest;

/* What ingest tells its owner about the consumer; ctx is the owner's. */
struct ingest_cbs {
    /* A consumer error (negative errno); fatal: the input is lost. */
    void (*on_error)(void *ctx, int err, bool fatal, const char *reason);
    /* librdkafka's log lines, served on the loop. */
    void (*on_log)(void *ctx, int level, const char *fac, const char *msg);
    /* New consumer statistics (broker counts among them). */
    void (*on_stats)(void *ctx, const struct kafka_in_stats *st);
    /* After ingest_close(): the consumer is gone. */
    void (*on_closed)(void *ctx);
    /* Partitions assigned, after ingest set each offset from its own
     * position: the owner may move it (ingest_part_set too). May be NULL. */
    void (*on_assign)(void *ctx, struct kafka_part *parts, size_t n);
    /* Partitions going (lost: without a clean handover), after the events
     * decoded so far are folded. May be NULL. */
    void (*on_revoke)(void *ctx, const struct kafka_part *parts, size_t n,
                      bool lost);
};

struct ingest_conf {
    struct model *model;        /* folded into; borrowed */
    struct event_decoder *dec;  /* taken over */
    struct kafka_out *dlq;      /* dead letters, or NULL; borrowed */
    const char *dead_letter_topic; /* "" or NULL: none; borrowed */
};

/* Creates ingest on loop and registers its metrics. NULL out of memory. */
struct ingest *ingest_new(uv_loop_t *loop, struct metrics *metrics);
/* Frees what is left once the consumer is closed (or never started). */
void ingest_free(struct ingest *ing);

/* Before ingest_start: what a checkpoint held. seek (the offsets to
 * resume at) is taken over. */
void ingest_restore(struct ingest *ing, uint64_t consumed, uint64_t rejected,
                    struct checkpoint_offset *seek, size_t nseek);
/* Rejections logged at most burst per interval_ms (reloadable). */
void ingest_set_reject_log(struct ingest *ing, uint64_t interval_ms,
                           unsigned burst);

/* Creates the consumer on conf (always taken over) and subscribes to the
 * comma-separated topics. 0, or a negative errno with the words in err. */
int ingest_start(struct ingest *ing, const struct ingest_conf *c,
                 struct kafka_conf *conf, const char *topics,
                 const struct ingest_cbs *cbs, void *ctx, char *err,
                 size_t errlen);

/* In a group (docs/design.md section 8): with nparts > 0, an event whose
 * user's key would go to another partition of nparts than its message's
 * is rejected (wrong_partition), never folded. */
void ingest_set_keyed(struct ingest *ing, int32_t nparts);
/* The partition count of an input topic (a blocking metadata request of
 * at most 5 s): >= 0 or -errno. */
int ingest_partition_count(struct ingest *ing, const char *topic);
/* A partition's position (next offset to fold, -1 none), events folded
 * and their weight: 0, or -ENOENT if never seen. */
int ingest_part_get(struct ingest *ing, const char *topic, int32_t partition,
                    int64_t *next, uint64_t *events, double *weight);
/* Sets them (a restore, or a partition handed over: -1, 0, 0); the
 * checkpoint's offset for it is dropped. 0 or -ENOMEM. */
int ingest_part_set(struct ingest *ing, const char *topic, int32_t partition,
                    int64_t next, uint64_t events, double weight);

struct ingest_stats {
    uint64_t consumed; /* messages, checkpointed */
    uint64_t rejected; /* events, checkpointed */
    uint64_t folded;   /* events folded since start */
    size_t assigned;   /* partitions assigned now */
};
void ingest_stats(const struct ingest *ing, struct ingest_stats *st);

/* Whether the consumer left messages waiting on its last pass. */
bool ingest_behind(const struct ingest *ing);
/* Messages behind the ends of all partitions, -1 unknown or no consumer. */
int64_t ingest_lag(const struct ingest *ing);
/* Whether the consumer runs (not yet closed). */
bool ingest_running(const struct ingest *ing);
/* Stops taking messages (shutdown). */
void ingest_pause(struct ingest *ing);
/* Closes the consumer; on_closed follows. */
void ingest_close(struct ingest *ing);

/* The offsets folded up to, for a checkpoint (topics borrowed until the
 * next call into ingest); free() the array. NULL out of memory. */
struct checkpoint_offset *ingest_offsets(struct ingest *ing, size_t *n);

/* The positions now, kept until a checkpoint holding them is durable;
 * then committed to Kafka's copy (for lag monitoring). */
struct ingest_positions;
struct ingest_positions *ingest_positions_take(struct ingest *ing);
void ingest_positions_commit(struct ingest *ing,
                             const struct ingest_positions *p);
void ingest_positions_free(struct ingest_positions *p);
/* Commits the positions now (the final checkpoint at stop). */
void ingest_commit_now(struct ingest *ing);

#endif
