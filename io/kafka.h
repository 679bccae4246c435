/* kafka.h -- what Kafka in (kafka_in.h: a consumer-group consumer that
 * hands every message to its owner without ever blocking the loop) and
 * Kafka out (kafka_out.h: an idempotent, optionally transactional
 * producer whose delivery reports and commits complete on the loop) share.
 *
 * Every callback runs on the loop thread. Functions returning int give 0 or
 * a negative errno; librdkafka error codes never leave io/ except through
 * kafka_errno(). A function that fails never calls its callback. */
#ifndef NMFD_IO_KAFKA_H
#define NMFD_IO_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

/* librdkafka error -> 0 or a negative errno (-EIO when nothing fits). */
int kafka_errno(rd_kafka_resp_err_t err);

/* Longest topic name Kafka allows, and room for its NUL. */
#define KAFKA_TOPIC_MAX 250

#endif
