/* kafka_raw.h -- librdkafka itself, for the tools and tests that query a
 * handle (metadata, committed offsets, the partitioner) or check the error
 * mapping. daemon/ never includes it: the daemon speaks kafka_in.h and
 * kafka_out.h alone. */
#ifndef NMFD_IO_KAFKA_RAW_H
#define NMFD_IO_KAFKA_RAW_H

#include <librdkafka/rdkafka.h>

#include "kafka_in.h"
#include "kafka_out.h"

/* librdkafka error -> 0 or a negative errno (-EIO when nothing fits). */
int kafka_errno(rd_kafka_resp_err_t err);

/* The underlying handle, for queries (rd_kafka_committed, metadata). Do
 * not poll it or change its assignment. */
rd_kafka_t *kafka_in_handle(struct kafka_in *k);
/* The underlying handle, for queries only. */
rd_kafka_t *kafka_out_handle(struct kafka_out *out);

#endif
