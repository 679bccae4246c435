/* broker.c -- a Kafka-protocol broker hosted in this process.
 *
 * librdkafka's mock cluster needs a client handle to live on; this module
 * owns a dedicated, otherwise idle producer handle for it, so that the
 * cluster outlives any consumer or producer that talks to it and can be
 * torn down last. It creates topics explicitly (the mock has no Admin API)
 * and turns one-line fault commands into the mock's fault-injection calls.
 * It never talks to the cluster as a client and holds no message data
 * itself; the data lives in the mock and dies with broker_free(). All the
 * mock's work runs on librdkafka's own threads, so nothing here needs a
 * loop. */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "broker.h"
#include "errf.h"
#include "forward.h"

#define BROKER_MAX            16
#define BROKER_PARTITIONS_MAX 10000
#define BROKER_TOPIC_NAME_MAX 249

struct broker {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    int nbrokers;
    char *bootstraps;
    struct forward *fwd; /* the fixed port, if one was asked for */
};

/* Kafka's own rule for topic names: 1..249 of [a-zA-Z0-9._-], not "." or
 * "..". */
static int broker__topic_name_ok(const char *name, size_t len)
{
    if (len == 0 || len > BROKER_TOPIC_NAME_MAX)
        return 0;
    if ((len == 1 && name[0] == '.') ||
        (len == 2 && name[0] == '.' && name[1] == '.'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != '-')
            return 0;
    }
    return 1;
}

static int broker__topic_create(struct broker *b, const char *name, size_t len,
                                int partitions, char *err, size_t errlen)
{
    char topic[BROKER_TOPIC_NAME_MAX + 1];
    rd_kafka_resp_err_t rerr;

    if (!broker__topic_name_ok(name, len)) {
        io_errf(err, errlen, 0, "bad topic name '%.*s'",
                (int)(len > 64 ? 64 : len), name);
        return -EINVAL;
    }
    if (partitions < 1 || partitions > BROKER_PARTITIONS_MAX) {
        io_errf(err, errlen, 0, "partitions must be 1..%d, not %d",
                BROKER_PARTITIONS_MAX, partitions);
        return -EINVAL;
    }
    memcpy(topic, name, len);
    topic[len] = '\0';
    rerr = rd_kafka_mock_topic_create(b->mc, topic, partitions, 1);
    if (rerr == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        io_errf(err, errlen, 0, "topic '%s' exists", topic);
        return -EEXIST;
    }
    if (rerr) {
        io_errf(err, errlen, 0, "topic '%s': %s", topic,
                rd_kafka_err2str(rerr));
        return -EIO;
    }
    return 0;
}

/* Walks a comma-separated topic list: checks each name (and that it is
 * not listed twice), and with create, creates it. Blanks around names are
 * tolerated, empty entries are not. */
static int broker__topics_each(struct broker *b, const char *topics,
                               int partitions, bool create, char *err,
                               size_t errlen)
{
    for (const char *p = topics; p && *p;) {
        const char *comma = strchr(p, ',');
        const char *entry = p;
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int r;

        while (len && isspace((unsigned char)*p))
            p++, len--;
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (create) {
            if ((r = broker__topic_create(b, p, len, partitions, err, errlen)) <
                0)
                return r;
        } else {
            if (!broker__topic_name_ok(p, len)) {
                io_errf(err, errlen, 0, "bad topic name '%.*s'",
                        (int)(len > 64 ? 64 : len), p);
                return -EINVAL;
            }
            for (const char *q = topics; q < entry;) {
                const char *qs = q, *qe = q + strcspn(q, ",");

                while (qs < qe && isspace((unsigned char)*qs))
                    qs++;
                while (qe > qs && isspace((unsigned char)qe[-1]))
                    qe--;
                if ((size_t)(qe - qs) == len && !memcmp(qs, p, len)) {
                    io_errf(err, errlen, 0, "topic '%.*s' listed twice",
                            (int)len, p);
                    return -EEXIST;
                }
                q += strcspn(q, ",");
                if (*q == ',')
                    q++;
            }
        }
        if (!comma)
            break;
        p = comma + 1;
        if (!*p) {
            io_errf(err, errlen, 0, "empty topic name in '%s'", topics);
            return -EINVAL;
        }
    }
    return 0;
}

int broker_open(struct broker **out, int nbrokers, const char *topics,
                int partitions, int port, char *err, size_t errlen)
{
    char errstr[512];
    rd_kafka_conf_t *conf = NULL;
    struct broker *b;
    int rc;

    if (nbrokers < 1 || nbrokers > BROKER_MAX)
        return io_errf(err, errlen, -EINVAL, "brokers must be 1..%d, not %d",
                       BROKER_MAX, nbrokers);
    if (partitions < 1 || partitions > BROKER_PARTITIONS_MAX)
        return io_errf(err, errlen, -EINVAL, "partitions must be 1..%d, not %d",
                       BROKER_PARTITIONS_MAX, partitions);
    /* Every name is checked before the cluster starts (stopping one takes
     * librdkafka about a second). */
    if ((rc = broker__topics_each(NULL, topics, partitions, false, err,
                                  errlen)) < 0)
        return rc;
    b = calloc(1, sizeof(*b));
    if (!b)
        return io_errf(err, errlen, -ENOMEM, "out of memory");
    b->nbrokers = nbrokers;
    /* The fixed port first: the cluster's brokers listen on random ports,
     * and one of them could otherwise take it. */
    if (port && (rc = forward_new(&b->fwd, port, err, errlen)))
        goto fail;

    /* The host handle never connects anywhere: no bootstrap servers, and
     * its log kept to errors so an idle handle stays quiet. */
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "client.id", "nmfd-broker", errstr,
                          sizeof(errstr))) {
        rc = io_errf(err, errlen, -EINVAL, "%s", errstr);
        goto fail;
    }
    b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!b->rk) {
        rc = io_errf(err, errlen, -EIO, "%s", errstr);
        goto fail;
    }
    conf = NULL;
    b->mc = rd_kafka_mock_cluster_new(b->rk, nbrokers);
    if (!b->mc) {
        rc = io_errf(err, errlen, -EIO, "mock cluster could not start");
        goto fail;
    }
    const char *bs = rd_kafka_mock_cluster_bootstraps(b->mc);
    if (b->fwd) {
        /* Relayed to the first broker; the others are reached by the
         * address the metadata gives. */
        char first[64], fixed[32];
        size_t n = strcspn(bs, ",");
        if (n >= sizeof(first)) {
            rc = io_errf(err, errlen, -EINVAL, "bootstrap %s: too long", bs);
            goto fail;
        }
        memcpy(first, bs, n);
        first[n] = '\0';
        if ((rc = forward_start(b->fwd, first, err, errlen)))
            goto fail;
        snprintf(fixed, sizeof(fixed), "127.0.0.1:%d", port);
        b->bootstraps = strdup(fixed);
    } else {
        b->bootstraps = strdup(bs);
    }
    if (!b->bootstraps) {
        rc = io_errf(err, errlen, -ENOMEM, "out of memory");
        goto fail;
    }

    if ((rc = broker__topics_each(b, topics, partitions, true, err, errlen)) <
        0)
        goto fail;
    *out = b;
    return 0;

fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    broker_free(b);
    return rc;
}

struct broker *broker_new(int nbrokers, const char *topics, int partitions,
                          char *err, size_t errlen)
{
    struct broker *b;
    return broker_open(&b, nbrokers, topics, partitions, 0, err, errlen) ? NULL
                                                                         : b;
}

void broker_free(struct broker *b)
{
    if (!b)
        return;
    forward_free(b->fwd); /* no new client reaches a dying cluster */
    if (b->mc)
        rd_kafka_mock_cluster_destroy(b->mc);
    if (b->rk)
        rd_kafka_destroy(b->rk);
    free(b->bootstraps);
    free(b);
}

void broker_destroy(struct broker **b)
{
    broker_free(*b);
    *b = NULL;
}

const char *broker_bootstraps(const struct broker *b)
{
    return b->bootstraps;
}

int broker_count(const struct broker *b)
{
    return b->nbrokers;
}

int broker_topic_create(struct broker *b, const char *name, int partitions)
{
    if (!name)
        return -EINVAL;
    return broker__topic_create(b, name, strlen(name), partitions, NULL, 0);
}

/* Kafka protocol request names, indexed by ApiKey (KIP-4 numbering). */
static const char *const broker_api_names[] = {
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "LeaderAndIsr",
    "StopReplica",
    "UpdateMetadata",
    "ControlledShutdown",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "DescribeGroups",
    "ListGroups",
    "SaslHandshake",
    "ApiVersions",
    "CreateTopics",
    "DeleteTopics",
    "DeleteRecords",
    "InitProducerId",
    "OffsetForLeaderEpoch",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "EndTxn",
    "WriteTxnMarkers",
    "TxnOffsetCommit",
    "DescribeAcls",
    "CreateAcls",
    "DeleteAcls",
    "DescribeConfigs",
    "AlterConfigs",
    "AlterReplicaLogDirs",
    "DescribeLogDirs",
    "SaslAuthenticate",
    "CreatePartitions",
};
#define BROKER_API_COUNT                                                       \
    (int)(sizeof(broker_api_names) / sizeof(broker_api_names[0]))

/* Parses a decimal integer that must fill the whole token. */
static int broker__parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (!*s)
        return -EINVAL;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

/* "Produce", "ProduceRequest" (any case) or a number 0..BROKER_API_COUNT-1. */
static int broker__parse_api(const char *s, int16_t *key)
{
    long v;

    if (broker__parse_long(s, 0, BROKER_API_COUNT - 1, &v) == 0) {
        *key = (int16_t)v;
        return 0;
    }
    for (int i = 0; i < BROKER_API_COUNT; i++) {
        size_t n = strlen(broker_api_names[i]);
        if (!strncasecmp(s, broker_api_names[i], n) &&
            (!s[n] || !strcasecmp(s + n, "Request"))) {
            *key = (int16_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* An error name from librdkafka's table ("NOT_LEADER_FOR_PARTITION",
 * "_TRANSPORT", optionally prefixed "RD_KAFKA_RESP_ERR_", any case) or a
 * code that the table knows. */
static int broker__parse_err(const char *s, rd_kafka_resp_err_t *code)
{
    const struct rd_kafka_err_desc *descs;
    size_t n;
    long v;
    int numeric;

    if (!strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18))
        s += 18;
    numeric = broker__parse_long(s, -200, 1000, &v) == 0;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++) {
        if (!descs[i].name)
            continue;
        if (numeric ? descs[i].code == (int)v : !strcasecmp(s, descs[i].name)) {
            if (descs[i].code == RD_KAFKA_RESP_ERR_NO_ERROR)
                return -EINVAL;
            *code = descs[i].code;
            return 0;
        }
    }
    return -EINVAL;
}

#define BROKER_ARGS_MAX 5

int broker_fault(struct broker *b, const char *cmd, char *err, size_t errlen)
{
    char line[512];
    char *argv[BROKER_ARGS_MAX + 1];
    int argc = 0;
    char *save = NULL;
    long id = -1, v = 0;
    rd_kafka_resp_err_t rerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    size_t len;

    if (!cmd) {
        io_errf(err, errlen, 0, "empty command");
        return -EINVAL;
    }
    len = strlen(cmd);
    if (len >= sizeof(line)) {
        io_errf(err, errlen, 0, "command too long");
        return -EINVAL;
    }
    memcpy(line, cmd, len + 1);
    for (char *tok = strtok_r(line, " \t\r\n", &save); tok;
         tok = strtok_r(NULL, " \t\r\n", &save)) {
        if (argc == BROKER_ARGS_MAX) {
            io_errf(err, errlen, 0, "too many arguments");
            return -EINVAL;
        }
        argv[argc++] = tok;
    }
    if (argc == 0) {
        io_errf(err, errlen, 0, "empty command");
        return -EINVAL;
    }

    if (!strcmp(argv[0], "down") || !strcmp(argv[0], "up") ||
        !strcmp(argv[0], "rtt")) {
        int want = !strcmp(argv[0], "rtt") ? 3 : 2;

        if (argc != want) {
            io_errf(err, errlen, 0, "usage: %s",
                    want == 3 ? "rtt <broker_id> <ms>" : "down|up <broker_id>");
            return -EINVAL;
        }
        if (broker__parse_long(argv[1], -1, 1L << 30, &id) < 0) {
            io_errf(err, errlen, 0, "bad broker id '%s'", argv[1]);
            return -EINVAL;
        }
        if (id != -1 && (id < 1 || id > b->nbrokers)) {
            io_errf(err, errlen, 0, "no broker %ld (ids are 1..%d, -1 all)", id,
                    b->nbrokers);
            return -ENOENT;
        }
        if (want == 3 && broker__parse_long(argv[2], 0, 3600 * 1000, &v) < 0) {
            io_errf(err, errlen, 0, "bad rtt '%s' (0..3600000 ms)", argv[2]);
            return -EINVAL;
        }
        if (!strcmp(argv[0], "down"))
            rerr = rd_kafka_mock_broker_set_down(b->mc, (int32_t)id);
        else if (!strcmp(argv[0], "up"))
            rerr = rd_kafka_mock_broker_set_up(b->mc, (int32_t)id);
        else
            rerr = rd_kafka_mock_broker_set_rtt(b->mc, (int32_t)id, (int)v);
    } else if (!strcmp(argv[0], "error")) {
        int16_t api;
        rd_kafka_resp_err_t code;
        rd_kafka_resp_err_t *codes;

        if (argc != 4) {
            io_errf(err, errlen, 0, "usage: error <Api> <count> <Error>");
            return -EINVAL;
        }
        if (broker__parse_api(argv[1], &api) < 0) {
            io_errf(err, errlen, 0, "unknown api '%s'", argv[1]);
            return -EINVAL;
        }
        if (broker__parse_long(argv[2], 1, 100000, &v) < 0) {
            io_errf(err, errlen, 0, "bad count '%s' (1..100000)", argv[2]);
            return -EINVAL;
        }
        if (broker__parse_err(argv[3], &code) < 0) {
            io_errf(err, errlen, 0, "unknown error '%s'", argv[3]);
            return -EINVAL;
        }
        codes = malloc((size_t)v * sizeof(*codes));
        if (!codes) {
            io_errf(err, errlen, 0, "out of memory");
            return -ENOMEM;
        }
        for (long i = 0; i < v; i++)
            codes[i] = code;
        rd_kafka_mock_push_request_errors_array(b->mc, api, (size_t)v, codes);
        free(codes);
    } else if (!strcmp(argv[0], "topic")) {
        if (argc != 3) {
            io_errf(err, errlen, 0, "usage: topic <name> <partitions>");
            return -EINVAL;
        }
        if (broker__parse_long(argv[2], 1, BROKER_PARTITIONS_MAX, &v) < 0) {
            io_errf(err, errlen, 0, "bad partition count '%s' (1..%d)", argv[2],
                    BROKER_PARTITIONS_MAX);
            return -EINVAL;
        }
        return broker__topic_create(b, argv[1], strlen(argv[1]), (int)v, err,
                                    errlen);
    } else {
        io_errf(err, errlen, 0,
                "unknown command '%s' (down, up, rtt, error, topic)", argv[0]);
        return -EINVAL;
    }
    if (rerr) {
        io_errf(err, errlen, 0, "%s: %s", argv[0], rd_kafka_err2str(rerr));
        return -EIO;
    }
    return 0;
}
