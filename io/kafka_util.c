/* kafka_util.c -- what the consumer (kafka_in.c) and the producer
 * (kafka_out.c) share: librdkafka's error codes as errno values, setting
 * and reading conf keys with the error in words, the wake-up pipes, and
 * the one way either reports an error to its owner. It owns no handle and
 * no state, and must never call into a handle's queues: each side serves
 * its own. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errf.h"
#include "kafka.h"
#include "kafka_util.h"

_Static_assert(KAFKA_OFFSET_BEGINNING == RD_KAFKA_OFFSET_BEGINNING &&
                   KAFKA_OFFSET_END == RD_KAFKA_OFFSET_END &&
                   KAFKA_OFFSET_INVALID == RD_KAFKA_OFFSET_INVALID,
               "kafka.h offsets are librdkafka's");

int kafka_errno(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return 0;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return -ENOBUFS;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return -EMSGSIZE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__NOENT:
        return -ENOENT;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return -ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        return -ECONNRESET;
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
        return -EHOSTDOWN;
    case RD_KAFKA_RESP_ERR__RESOLVE:
        return -EHOSTUNREACH;
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__FENCED:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
        return -ENOTRECOVERABLE;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__INVALID_TYPE:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR_INVALID_CONFIG:
    case RD_KAFKA_RESP_ERR_INVALID_REQUEST:
        return -EINVAL;
    case RD_KAFKA_RESP_ERR__NOT_IMPLEMENTED:
    case RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
        return -EOPNOTSUPP;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return -EACCES;
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__BAD_COMPRESSION:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
        return -EPROTO;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        return -ECANCELED;
    case RD_KAFKA_RESP_ERR__DESTROY:
        return -ESHUTDOWN;
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
    case RD_KAFKA_RESP_ERR__NO_OFFSET:
        return -ENODATA;
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
        return -ERANGE;
    case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
    case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
    case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST:
    case RD_KAFKA_RESP_ERR__OUTDATED:
        return -ESTALE;
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR__IN_PROGRESS:
        return -EAGAIN;
    default:
        return -EIO;
    }
}

int kafka__conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
                    char *err, size_t errlen)
{
    char errstr[512];

    if (rd_kafka_conf_set(conf, key, val, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        io_errf(err, errlen, 0, "%s", errstr);
        return -EINVAL;
    }
    return 0;
}

int kafka__conf_get_long(rd_kafka_conf_t *conf, const char *key, long *out)
{
    char buf[64];
    size_t len = sizeof(buf);

    if (rd_kafka_conf_get(conf, key, buf, &len) != RD_KAFKA_CONF_OK)
        return -ENOENT;
    *out = strtol(buf, NULL, 10);
    return 0;
}

int kafka__pipe(int fds[2])
{
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    return 0;
}

void kafka__pipe_drain(int fd)
{
    char buf[256];

    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

void kafka__pipe_close(int fds[2])
{
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

void kafka__report(void (*on_error)(void *ctx, int err, bool fatal,
                                    const char *reason),
                   void *ctx, int err, bool fatal, const char *fmt, va_list ap)
{
    char reason[512];

    vsnprintf(reason, sizeof(reason), fmt, ap);
    if (on_error)
        on_error(ctx, err, fatal, reason);
}

/* struct kafka_conf is librdkafka's conf under another name: the owner
 * holds it opaque, io/ converts back with kafka__conf. */
struct kafka_conf *kafka_conf_new(void)
{
    return (struct kafka_conf *)rd_kafka_conf_new();
}

int kafka_conf_set(struct kafka_conf *conf, const char *key,
                   const char *value, char *err, size_t errlen)
{
    return kafka__conf_set(kafka__conf(conf), key, value, err, errlen);
}

void kafka_conf_free(struct kafka_conf *conf)
{
    if (conf)
        rd_kafka_conf_destroy(kafka__conf(conf));
}

int kafka_conf_check(const char *key, const char *value, char *err,
                     size_t errlen)
{
    rd_kafka_conf_t *probe = rd_kafka_conf_new();
    int rc = kafka__conf_set(probe, key, value, err, errlen);

    rd_kafka_conf_destroy(probe);
    return rc;
}

rd_kafka_topic_partition_list_t *kafka__parts_list(const struct kafka_part *p,
                                                   size_t n)
{
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)n);

    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, p[i].topic, p[i].partition)
            ->offset = p[i].offset;
    return l;
}

struct kafka_part *kafka__parts_array(const rd_kafka_topic_partition_list_t *l)
{
    struct kafka_part *p = malloc((l->cnt ? (size_t)l->cnt : 1) * sizeof(*p));

    if (!p)
        return NULL;
    for (int i = 0; i < l->cnt; i++) {
        p[i].topic = l->elems[i].topic;
        p[i].partition = l->elems[i].partition;
        p[i].offset = l->elems[i].offset;
    }
    return p;
}

int32_t kafka_key_partition(const void *key, size_t len, int32_t n)
{
    /* librdkafka's own murmur2 partitioner; it reads neither the topic
     * nor the opaques. */
    return rd_kafka_msg_partitioner_murmur2(NULL, key, len, n, NULL, NULL);
}
