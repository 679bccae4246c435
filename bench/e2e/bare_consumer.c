/* bare_consumer.c -- the transport's limit: consume and decode, nothing else.
 *
 * A librdkafka high-level consumer in a consumer group, tuned as the mock
 * broker needs (short fetch waits, a deep pre-fetch queue), that unpacks
 * every message value with msgpack_unpack_next and counts the events in
 * it (a map is one event, an array holds one per element). It stops when
 * it has seen the requested number of events (or at its timeout) and
 * prints one line of figures: events, messages, the wall time from the
 * first message to the last counted event, events/s over that window and
 * the process's CPU seconds. With --progress it also prints, every so
 * many milliseconds, the wall clock and the count so far, so that a driver
 * can compare its curve with nmfd's on the same clock.
 *
 * It owns one consumer handle and one reusable msgpack zone. It never
 * commits offsets (the group exists only to get an assignment), never
 * keeps a message past its loop iteration, and never runs past its
 * timeout.
 *
 *   bare_consumer --brokers B --topic T --events N [--group G]
 *                 [--timeout S] [--progress MS] [--api poll|batch]
 *                 [-X key=value]...
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <msgpack.h>

#define BARE_BATCH 1000

struct bare {
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    msgpack_unpacked up;
    uint64_t want, events, messages, bytes, bad;
    uint64_t first_ms, last_ms;
    int assigned;
};

static volatile sig_atomic_t bare_stop;

static void bare_on_signal(int sig)
{
    (void)sig;
    bare_stop = 1;
}

static uint64_t bare_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double bare_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void bare_usage(FILE *out)
{
    fprintf(out,
            "usage: bare_consumer --brokers B --topic T --events N "
            "[--group G]\n"
            "                     [--timeout S] [--progress MS] "
            "[--api poll|batch]\n"
            "                     [-X key=value]...\n"
            "Consumes T in group G (default bare-e2e), msgpack-decodes every "
            "message,\ncounts events, exits 0 after N events (1 at the "
            "timeout, default 600 s).\n");
}

/* Eager rebalancing; the assignment size goes to stderr once known. */
static void bare_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct bare *b = opaque;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        b->assigned = parts->cnt;
        fprintf(stderr, "bare_consumer: assigned %d partitions\n", parts->cnt);
    } else {
        rd_kafka_assign(rk, NULL);
        b->assigned = 0;
        fprintf(stderr, "bare_consumer: revoked (%s)\n", rd_kafka_err2str(err));
    }
}

/* Decodes one message value and counts its events. */
static void bare_count(struct bare *b, const rd_kafka_message_t *m)
{
    size_t off = 0;

    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            fprintf(stderr, "bare_consumer: %s\n", rd_kafka_message_errstr(m));
        return;
    }
    if (!b->first_ms)
        b->first_ms = bare_now_ms();
    b->messages++;
    b->bytes += m->len;
    if (msgpack_unpack_next(&b->up, m->payload, m->len, &off) !=
        MSGPACK_UNPACK_SUCCESS) {
        b->bad++;
        return;
    }
    if (b->up.data.type == MSGPACK_OBJECT_ARRAY) {
        const msgpack_object_array *a = &b->up.data.via.array;

        for (uint32_t i = 0; i < a->size; i++)
            if (a->ptr[i].type == MSGPACK_OBJECT_MAP)
                b->events++;
            else
                b->bad++;
    } else if (b->up.data.type == MSGPACK_OBJECT_MAP) {
        b->events++;
    } else {
        b->bad++;
    }
}

static int bare_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[512];

    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "bare_consumer: %s=%s: %s\n", k, v, err);
        return -EINVAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"events", required_argument, NULL, 'n'},
        {"group", required_argument, NULL, 'g'},
        {"timeout", required_argument, NULL, 'T'},
        {"progress", required_argument, NULL, 'p'},
        {"api", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* The tuning KAFKA-MOCK.md gives for throughput; -X overrides. */
    static const char *const tuning[][2] = {
        {"fetch.wait.max.ms", "10"},
        {"fetch.error.backoff.ms", "10"},
        {"queued.min.messages", "1000000"},
        {"queued.max.messages.kbytes", "1048576"},
        {"session.timeout.ms", "6000"},
        {"heartbeat.interval.ms", "1000"},
        {"auto.offset.reset", "earliest"},
        {"enable.auto.commit", "false"},
        {"enable.partition.eof", "false"},
    };
    struct bare b;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_message_t *batch[BARE_BATCH];
    const char *brokers = NULL, *topic = NULL, *group = "bare-e2e";
    bool api_batch = false;
    double timeout_s = 600, cpu0;
    uint64_t progress_ms = 0, next_progress = 0, deadline;
    char err[512];
    int opt, rc;

    memset(&b, 0, sizeof(b));
    for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
        bare_set(conf, tuning[i][0], tuning[i][1]);
    while ((opt = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'n':
            b.want = strtoull(optarg, NULL, 10);
            break;
        case 'g':
            group = optarg;
            break;
        case 'T':
            timeout_s = strtod(optarg, NULL);
            break;
        case 'p':
            progress_ms = strtoull(optarg, NULL, 10);
            break;
        case 'a':
            if (!strcmp(optarg, "batch"))
                api_batch = true;
            else if (strcmp(optarg, "poll")) {
                fprintf(stderr, "bare_consumer: --api is poll or batch\n");
                goto usage;
            }
            break;
        case 'X': {
            char *eq = strchr(optarg, '=');

            if (!eq) {
                fprintf(stderr, "bare_consumer: -X wants key=value\n");
                goto usage;
            }
            *eq = '\0';
            if (bare_set(conf, optarg, eq + 1))
                goto usage;
            break;
        }
        case 'h':
            bare_usage(stdout);
            rd_kafka_conf_destroy(conf);
            return 0;
        default:
            goto usage;
        }
    }
    if (!brokers || !topic || !b.want || timeout_s <= 0 || optind != argc) {
        fprintf(stderr, "bare_consumer: --brokers, --topic and --events (> 0) "
                        "are required\n");
        goto usage;
    }
    if (bare_set(conf, "bootstrap.servers", brokers) ||
        bare_set(conf, "group.id", group))
        goto usage;
    rd_kafka_conf_set_opaque(conf, &b);
    rd_kafka_conf_set_rebalance_cb(conf, bare_rebalance);

    b.rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!b.rk) {
        fprintf(stderr, "bare_consumer: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_poll_set_consumer(b.rk);
    b.q = rd_kafka_queue_get_consumer(b.rk);
    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
    rc = (int)rd_kafka_subscribe(b.rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (rc) {
        fprintf(stderr, "bare_consumer: subscribe: %s\n",
                rd_kafka_err2str((rd_kafka_resp_err_t)rc));
        rd_kafka_queue_destroy(b.q);
        rd_kafka_destroy(b.rk);
        return 1;
    }
    signal(SIGINT, bare_on_signal);
    signal(SIGTERM, bare_on_signal);
    msgpack_unpacked_init(&b.up);
    cpu0 = bare_cpu_s();
    deadline = bare_now_ms() + (uint64_t)(timeout_s * 1000);

    for (uint64_t iter = 1; b.events < b.want && !bare_stop; iter++) {
        bool idle;
        uint64_t now;

        if (api_batch) {
            ssize_t n =
                rd_kafka_consume_batch_queue(b.q, 100, batch, BARE_BATCH);

            for (ssize_t i = 0; i < n; i++) {
                bare_count(&b, batch[i]);
                rd_kafka_message_destroy(batch[i]);
            }
            idle = n <= 0;
        } else {
            /* Poll until a message or 100 ms; count one at a time. */
            rd_kafka_message_t *m = rd_kafka_consumer_poll(b.rk, 100);

            if (m) {
                bare_count(&b, m);
                rd_kafka_message_destroy(m);
            }
            idle = m == NULL;
        }
        if (b.events >= b.want)
            b.last_ms = bare_now_ms();
        /* While busy the clock is read every 1024 polls only. */
        if (!idle && !api_batch && (iter & 1023))
            continue;
        now = bare_now_ms();
        if (progress_ms && now >= next_progress) {
            fprintf(stderr, "progress %" PRIu64 " %" PRIu64 "\n", now,
                    b.events);
            next_progress = now + progress_ms;
        }
        if (now >= deadline)
            break;
    }
    if (!b.last_ms)
        b.last_ms = bare_now_ms();
    {
        double secs = b.first_ms && b.last_ms > b.first_ms
                          ? (double)(b.last_ms - b.first_ms) / 1000.0
                          : 0;
        double cpu = bare_cpu_s() - cpu0;

        if (progress_ms)
            fprintf(stderr, "progress %" PRIu64 " %" PRIu64 "\n", b.last_ms,
                    b.events);
        printf("bare_consumer: events=%" PRIu64 " messages=%" PRIu64
               " bytes=%" PRIu64 " bad=%" PRIu64 " first_ms=%" PRIu64
               " last_ms=%" PRIu64 " seconds=%.3f events_per_s=%.0f"
               " cpu_s=%.2f events_per_cpu_s=%.0f\n",
               b.events, b.messages, b.bytes, b.bad, b.first_ms, b.last_ms,
               secs, secs > 0 ? (double)b.events / secs : 0.0, cpu,
               cpu > 0 ? (double)b.events / cpu : 0.0);
        fflush(stdout);
    }
    rc = b.events >= b.want ? 0 : 1;
    msgpack_unpacked_destroy(&b.up);
    rd_kafka_queue_destroy(b.q);
    rd_kafka_consumer_close(b.rk);
    rd_kafka_destroy(b.rk);
    return rc;

usage:
    bare_usage(stderr);
    if (conf)
        rd_kafka_conf_destroy(conf);
    return 2;
}
