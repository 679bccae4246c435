/* kafka_read.h -- partitions of one topic read whole, blocking, on one
 * long-lived client (a group member's restore of its partitions' state). */
#ifndef NMFD_IO_KAFKA_READ_H
#define NMFD_IO_KAFKA_READ_H

#include "kafka_in.h"

struct kafka_reader;

/* One partition of a read: the caller sets partition, the read the rest. */
struct kafka_read_part {
    int32_t partition;
    int64_t low, high;  /* the watermarks when the read began */
    uint64_t messages;  /* handed to each */
    uint64_t bytes;     /* their payloads */
};

/* A reader of topic: a consumer that joins no group and commits nothing
 * (conf's group.id, which librdkafka's assign() asks for, is never
 * joined). Takes conf over. on_log (may be NULL) gets librdkafka's log
 * lines, on librdkafka's threads. NULL with the words in err. */
struct kafka_reader *kafka_reader_new(struct kafka_conf *conf,
                                      const char *topic,
                                      void (*on_log)(void *ctx, int level,
                                                     const char *fac,
                                                     const char *msg),
                                      void *log_ctx, char *err, size_t errlen);

/* Reads parts[0..n) (distinct partitions) together, each from its oldest
 * kept message to the end it had when the read began, calling each in offset order within a
 * partition (the partitions interleave; the message is valid only during
 * the call); a non-zero return from each stops the read and is returned.
 * Blocks up to timeout_ms in all: -ETIMEDOUT (err names a partition not
 * read to its end), other -errno with the words in err. */
int kafka_reader_read(struct kafka_reader *r, struct kafka_read_part *parts,
                      size_t n, int timeout_ms,
                      int (*each)(void *ctx, const struct kafka_msg *m),
                      void *ctx, char *err, size_t errlen);

void kafka_reader_free(struct kafka_reader *r);

#endif
