/* broker.h -- a Kafka-protocol broker in this process: librdkafka's mock
 * cluster hosted on a dedicated handle, plus the fault-control commands
 * that tests and `nmfctl broker --control` use. Data lives in memory and
 * dies with broker_free(). Functions returning int give 0 or a negative
 * errno. */
#ifndef NMFD_IO_BROKER_H
#define NMFD_IO_BROKER_H

#include <stddef.h>

struct broker;

/* Starts a cluster of nbrokers (1..16) brokers with ids 1..nbrokers and
 * creates every topic of the comma-separated list (NULL or "" for none)
 * with `partitions` partitions (1..10000), replication factor 1.
 * Returns NULL and a message in err on failure. */
struct broker *broker_new(int nbrokers, const char *topics, int partitions,
                          char *err, size_t errlen);
/* broker_new, with a fixed bootstrap address when port (1..65535) is not
 * 0: 127.0.0.1:port is bound before the cluster starts, so none of the
 * brokers' own random ports can take it, and relays every connection to
 * the first broker (io/forward); broker_bootstraps() then gives
 * "127.0.0.1:port". Clients bootstrap there and reach the brokers at the
 * addresses the metadata names. 0 and the broker in *out, or a negative
 * errno with a message in err: -EINVAL or -EEXIST for a bad count or topic
 * list, the listener's errno for the port (-EADDRINUSE when it is taken),
 * -EIO when the cluster cannot start, -ENOMEM. */
int broker_open(struct broker **out, int nbrokers, const char *topics,
                int partitions, int port, char *err, size_t errlen);
void broker_free(struct broker *b);
void broker_destroy(struct broker **b);

/* "127.0.0.1:PORT[,127.0.0.1:PORT...]", valid until broker_free(). */
const char *broker_bootstraps(const struct broker *b);

int broker_count(const struct broker *b);

/* Creates a topic. -EINVAL bad name or partition count, -EEXIST the topic
 * exists already, -EIO the mock refused. */
int broker_topic_create(struct broker *b, const char *name, int partitions);

/* Applies one fault command (one line, surrounding blanks and a trailing
 * newline ignored):
 *   down <broker_id>            disconnect, refuse connections (-1: all)
 *   up <broker_id>              accept connections again (-1: all)
 *   rtt <broker_id> <ms>        delay every response by ms (-1: all)
 *   error <Api> <count> <Err>   fail the next count requests of Api
 *                               (name like Produce or Fetch, or ApiKey
 *                               number) with Err (name like
 *                               NOT_LEADER_FOR_PARTITION, _TRANSPORT, or
 *                               a numeric code)
 *   topic <name> <partitions>   create a topic
 * Returns 0, or -EINVAL (bad command), -ENOENT (unknown broker), -EEXIST,
 * -EIO with a lowercase message in err. */
int broker_fault(struct broker *b, const char *cmd, char *err, size_t errlen);

#endif
