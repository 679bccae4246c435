/* kafka.h -- what Kafka in (kafka_in.h: a consumer-group consumer that
 * hands every message to its owner without ever blocking the loop) and
 * Kafka out (kafka_out.h: an idempotent, optionally transactional
 * producer whose delivery reports and commits complete on the loop) share.
 *
 * Every callback runs on the loop thread. Functions returning int give 0 or
 * a negative errno; librdkafka error codes never leave io/ except through
 * kafka_errno() (kafka_raw.h). A function that fails never calls its
 * callback. Nothing here names a librdkafka type: daemon/ includes these
 * headers and never sees one. */
#ifndef NMFD_IO_KAFKA_H
#define NMFD_IO_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest topic name Kafka allows, and room for its NUL. */
#define KAFKA_TOPIC_MAX 250

/* Special offsets (librdkafka's values). */
#define KAFKA_OFFSET_BEGINNING (-2)   /* the oldest message kept */
#define KAFKA_OFFSET_END       (-1)   /* the next message produced */
#define KAFKA_OFFSET_INVALID   (-1001) /* none: committed, else reset */

/* A client's configuration: librdkafka's properties, set by name; the
 * owner never sees librdkafka's own type. kafka_in_new and kafka_out_new
 * take it over. */
struct kafka_conf;
struct kafka_conf *kafka_conf_new(void);
/* 0, or -EINVAL with librdkafka's words in err. */
int kafka_conf_set(struct kafka_conf *conf, const char *key,
                   const char *value, char *err, size_t errlen);
void kafka_conf_free(struct kafka_conf *conf);
/* Whether librdkafka accepts key = value, judged on a scratch conf: 0, or
 * -EINVAL with its words in err. */
int kafka_conf_check(const char *key, const char *value, char *err,
                     size_t errlen);

/* One partition of a topic and an offset: a position to start from, the
 * next offset to read (commits), or KAFKA_OFFSET_*. */
struct kafka_part {
    const char *topic;
    int32_t partition;
    int64_t offset;
};

/* The partition Kafka's Java client (and nmfd's producers, murmur2_random)
 * gives a non-empty key among n partitions. */
int32_t kafka_key_partition(const void *key, size_t len, int32_t n);

#endif
