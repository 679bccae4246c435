/* kafka_util.h -- io/'s own helpers for kafka_in.c and kafka_out.c; not
 * for use outside io/. */
#ifndef NMFD_IO_KAFKA_UTIL_H
#define NMFD_IO_KAFKA_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "kafka_raw.h"

/* The librdkafka conf behind an owner's struct kafka_conf. */
static inline rd_kafka_conf_t *kafka__conf(struct kafka_conf *conf)
{
    return (rd_kafka_conf_t *)conf;
}

/* kafka_part arrays to and from librdkafka's lists. The array borrows the
 * list's topic names; either is NULL when out of memory. */
rd_kafka_topic_partition_list_t *kafka__parts_list(const struct kafka_part *p,
                                                   size_t n);
struct kafka_part *kafka__parts_array(const rd_kafka_topic_partition_list_t *l);

/* rd_kafka_conf_set with librdkafka's words in err: 0 or -EINVAL. */
int kafka__conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
                    char *err, size_t errlen);
/* A numeric conf value: 0, or -ENOENT when the key is unknown. */
int kafka__conf_get_long(rd_kafka_conf_t *conf, const char *key, long *out);

/* A non-blocking, close-on-exec pipe for librdkafka's queue wake-ups. */
int kafka__pipe(int fds[2]);
void kafka__pipe_drain(int fd);
/* Closes both ends that are open and sets them to -1. */
void kafka__pipe_close(int fds[2]);

/* The error report of either side: the words formatted once, then handed
 * to the owner's on_error (if any). */
void kafka__report(void (*on_error)(void *ctx, int err, bool fatal,
                                    const char *reason),
                   void *ctx, int err, bool fatal, const char *fmt, va_list ap);

#endif
