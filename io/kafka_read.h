/* kafka_read.h -- a partition read whole, blocking (a group member's
 * restore of a partition's state). */
#ifndef NMFD_IO_KAFKA_READ_H
#define NMFD_IO_KAFKA_READ_H

#include "kafka_in.h"

struct kafka_read_stats {
    int64_t low, high;  /* the watermarks when the read began */
    uint64_t messages;  /* handed to each */
    uint64_t bytes;     /* their payloads */
};

/* Reads topic/partition from its oldest kept message to the end it had
 * when the read began, calling each in offset order (the message is valid
 * only during the call); a non-zero return from each stops the read and
 * is returned. Takes conf over. Blocks up to timeout_ms in all:
 * -ETIMEDOUT, other -errno with the words in err. */
int kafka_read_partition(struct kafka_conf *conf, const char *topic,
                         int32_t partition, int timeout_ms,
                         int (*each)(void *ctx, const struct kafka_msg *m),
                         void *ctx, struct kafka_read_stats *st, char *err,
                         size_t errlen);

#endif
