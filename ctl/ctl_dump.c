/* ctl_dump.c -- `nmfctl dump`: msgpack records as JSON lines.
 *
 * From Kafka: assigns every partition of a topic from the beginning (no
 * group membership, nothing committed, read_committed isolation so an
 * aborted or open epoch is not shown where the cluster hides it) and
 * writes each record's value as one line of JSON through io/records'
 * dumper, until --count records or --timeout seconds without a record.
 * From a file: the same for a dense snapshot (or any msgpack values back
 * to back). It owns its consumer and loop, and never writes anything but
 * JSON lines to stdout; diagnostics go to stderr. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "ctl.h"
#include "kafka_raw.h"
#include "records.h"

#define CTL_DUMP_TIMEOUT_DEFAULT 10 /* seconds without a record */

struct ctl_dump {
    uv_loop_t loop;
    uv_timer_t idle_timer;
    uv_signal_t sigint, sigterm;
    struct kafka_in *in;
    unsigned flags;
    bool with_key;
    uint64_t count; /* 0: no limit */
    uint64_t timeout_ms;
    uint64_t seen, bad;
    bool closing;
    int exit_code;
};

static void ctl_dump_usage(FILE *out)
{
    fprintf(out,
            "usage: nmfctl dump --brokers B --topic T [--count N] "
            "[--timeout S] [--from-beginning]\n"
            "                   [--key] [--bin-base64|--bin-length] "
            "[-X key=value]...\n"
            "       nmfctl dump --file SNAPSHOT [--bin-base64|--bin-length]\n"
            "\n"
            "Writes msgpack values as JSON, one line each: the records of "
            "every partition of\ntopic T from the beginning (read_committed, "
            "no consumer group offsets are\ncommitted), or the values in a "
            "file such as a dense snapshot.\n"
            "\n"
            "  --count N        stop after N records\n"
            "  --timeout S      stop after S seconds without a record "
            "(default %d, 0 = never)\n"
            "  --from-beginning start at the oldest record (the default)\n"
            "  --key            wrap each record as {\"key\":...,\"value\":...}"
            "\n"
            "  --bin-base64     every binary field as a base64 string\n"
            "  --bin-length     every binary field as {\"bin\": bytes}\n"
            "                   (default: the snapshot's W, H, A as float "
            "arrays, other binary\n"
            "                   fields as base64)\n"
            "  -X key=value     librdkafka consumer property (repeatable)\n"
            "\n"
            "Exit 0 when every value was valid msgpack, 1 otherwise or on "
            "errors, 2 on bad\nusage.\n",
            CTL_DUMP_TIMEOUT_DEFAULT);
}

static void ctl_dump_close(struct ctl_dump *d)
{
    if (d->closing)
        return;
    d->closing = true;
    uv_timer_stop(&d->idle_timer);
    kafka_in_close(d->in);
}

static void ctl_dump_json_key(const char *s, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* A value is JSON when it starts like JSON ('{', '[' or whitespace, the
 * input decoder's auto rule) and parses as JSON; it is then written
 * compact, as is. Anything else goes through the msgpack dumper. */
static int ctl_dump_value(FILE *out, const void *buf, size_t len,
                          unsigned flags, const char **err)
{
    const unsigned char *b = buf;

    if (len && (b[0] == '{' || b[0] == '[' || b[0] == ' ' || b[0] == '\t' ||
                b[0] == '\n' || b[0] == '\r')) {
        json_error_t jerr;
        json_t *j = json_loadb(buf, len, JSON_DECODE_ANY, &jerr);

        if (j) {
            int r = json_dumpf(j, out, JSON_COMPACT | JSON_ENCODE_ANY);
            json_decref(j);
            if (r < 0 || fputc('\n', out) == EOF)
                return -EIO;
            return 0;
        }
    }
    return records_dump_json(out, buf, len, flags, err);
}

static void ctl_dump_on_message(void *ctx, const struct kafka_msg *m)
{
    struct ctl_dump *d = ctx;
    const char *err = NULL;
    int r;

    if (d->closing)
        return;
    if (d->with_key) {
        char *text = NULL;
        size_t tlen = 0, lines = 0;
        FILE *mem = open_memstream(&text, &tlen);

        if (!mem) {
            r = -ENOMEM;
        } else {
            r = ctl_dump_value(mem, m->payload, m->len, d->flags, &err);
            if (fclose(mem) != 0 && r == 0)
                r = -ENOMEM;
        }
        /* One value per line from the dumper; several values in one
         * record become an array. */
        while (tlen && text[tlen - 1] == '\n')
            text[--tlen] = '\0';
        for (size_t i = 0; i < tlen; i++)
            if (text[i] == '\n') {
                text[i] = ',';
                lines++;
            }
        fputs("{\"key\":", stdout);
        if (m->key)
            ctl_dump_json_key(m->key, m->key_len);
        else
            fputs("null", stdout);
        printf(",\"value\":%s%s%s}\n", lines ? "[" : "", tlen ? text : "null",
               lines ? "]" : "");
        free(text);
    } else {
        r = ctl_dump_value(stdout, m->payload, m->len, d->flags, &err);
    }
    if (r < 0) {
        d->bad++;
        fprintf(stderr, "nmfctl dump: %s/%d/%" PRId64 ": %s\n",
                m->topic, (int)m->partition, m->offset,
                err ? err : strerror(-r));
        if (r == -EIO) {
            d->exit_code = 1;
            ctl_dump_close(d);
            return;
        }
    }
    d->seen++;
    if (d->count && d->seen >= d->count) {
        ctl_dump_close(d);
        return;
    }
    if (d->timeout_ms)
        uv_timer_again(&d->idle_timer);
}

static void ctl_dump_on_error(void *ctx, int err, bool fatal,
                              const char *reason)
{
    struct ctl_dump *d = ctx;

    fprintf(stderr, "nmfctl dump: %s\n", reason);
    if (fatal) {
        d->exit_code = 1;
        ctl_dump_close(d);
    }
}

static void ctl_dump_on_closed(void *ctx)
{
    struct ctl_dump *d = ctx;

    d->in = NULL;
    uv_close((uv_handle_t *)&d->idle_timer, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
}

static void ctl_dump_on_idle(uv_timer_t *t)
{
    ctl_dump_close(t->data);
}

static void ctl_dump_on_signal(uv_signal_t *h, int signum)
{
    ctl_dump_close(h->data);
}

static const struct kafka_in_cbs ctl_dump_cbs = {
    .on_message = ctl_dump_on_message,
    .on_error = ctl_dump_on_error,
    .on_closed = ctl_dump_on_closed,
};

static int ctl_dump_file(const char *path, unsigned flags)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    const char *err = NULL;
    int r;

    if (!f) {
        fprintf(stderr, "nmfctl dump: %s: %s\n", path, strerror(errno));
        return 1;
    }
    for (;;) {
        size_t n;

        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 1 << 20;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                fprintf(stderr, "nmfctl dump: out of memory\n");
                free(buf);
                if (f != stdin)
                    fclose(f);
                return 1;
            }
            buf = nb;
            cap = ncap;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        fprintf(stderr, "nmfctl dump: %s: read error\n", path);
        free(buf);
        if (f != stdin)
            fclose(f);
        return 1;
    }
    if (f != stdin)
        fclose(f);
    if (len == 0) {
        fprintf(stderr, "nmfctl dump: %s: empty\n", path);
        free(buf);
        return 1;
    }
    r = records_dump_json(stdout, buf, len, flags, &err);
    free(buf);
    if (fflush(stdout) != 0)
        r = r ? r : -EIO;
    if (r < 0) {
        fprintf(stderr, "nmfctl dump: %s: %s\n", path,
                err ? err : strerror(-r));
        return 1;
    }
    return 0;
}

/* Every partition of topic from the beginning (blocking metadata query,
 * before the loop runs). */
static rd_kafka_topic_partition_list_t *ctl_dump_partitions(rd_kafka_t *rk,
                                                            const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_topic_partition_list_t *parts = NULL;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;

    if (!rkt)
        return NULL;
    for (int tries = 0; tries < 50 && !parts; tries++) {
        err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        if (err) {
            fprintf(stderr, "nmfctl dump: metadata: %s\n",
                    rd_kafka_err2str(err));
            break;
        }
        if (md->topic_cnt == 1 && !md->topics[0].err &&
            md->topics[0].partition_cnt > 0) {
            parts =
                rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
            for (int i = 0; i < md->topics[0].partition_cnt; i++)
                rd_kafka_topic_partition_list_add(
                    parts, topic, md->topics[0].partitions[i].id)
                    ->offset = RD_KAFKA_OFFSET_BEGINNING;
        } else if (tries == 49) {
            fprintf(stderr, "nmfctl dump: topic %s: %s\n", topic,
                    md->topic_cnt ? rd_kafka_err2str(md->topics[0].err)
                                  : "not found");
        }
        rd_kafka_metadata_destroy(md);
        if (!parts)
            uv_sleep(100);
    }
    rd_kafka_topic_destroy(rkt);
    return parts;
}

static int ctl_dump_assign(struct kafka_in *in,
                           const rd_kafka_topic_partition_list_t *l)
{
    struct kafka_part *p = calloc((size_t)l->cnt, sizeof(*p));
    int r;

    if (!p)
        return -ENOMEM;
    for (int i = 0; i < l->cnt; i++)
        p[i] = (struct kafka_part){l->elems[i].topic, l->elems[i].partition,
                                   l->elems[i].offset};
    r = kafka_in_assign(in, p, (size_t)l->cnt);
    free(p);
    return r;
}

int ctl_dump_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"count", required_argument, NULL, 'c'},
        {"timeout", required_argument, NULL, 'T'},
        {"from-beginning", no_argument, NULL, 'B'},
        {"key", no_argument, NULL, 'k'},
        {"file", required_argument, NULL, 'f'},
        {"bin-base64", no_argument, NULL, '6'},
        {"bin-length", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ctl_dump d;
    struct kafka_conf *conf = kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = NULL;
    const char *brokers = NULL, *topic = NULL, *file = NULL;
    char err[512], errstr[512], group[64], *end;
    int opt, rc = 2, r;
    unsigned long long v;

    memset(&d, 0, sizeof(d));
    d.timeout_ms = CTL_DUMP_TIMEOUT_DEFAULT * 1000;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'c':
        case 'T':
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' ||
                (opt == 'c' && v == 0) || (opt == 'T' && v > 86400 * 365)) {
                fprintf(stderr, "nmfctl dump: bad --%s '%s'\n",
                        opt == 'c' ? "count" : "timeout", optarg);
                goto usage;
            }
            if (opt == 'c')
                d.count = v;
            else
                d.timeout_ms = v * 1000;
            break;
        case 'B':
            break;
        case 'k':
            d.with_key = true;
            break;
        case '6':
            d.flags |= RECORDS_DUMP_BIN_BASE64;
            break;
        case 'L':
            d.flags |= RECORDS_DUMP_BIN_LENGTH;
            break;
        case 'X': {
            char *eq = strchr(optarg, '=');

            if (!eq) {
                fprintf(stderr, "nmfctl dump: -X wants key=value\n");
                goto usage;
            }
            *eq = '\0';
            if (kafka_conf_set(conf, optarg, eq + 1, errstr, sizeof(errstr))) {
                fprintf(stderr, "nmfctl dump: %s\n", errstr);
                goto usage;
            }
            *eq = '=';
            break;
        }
        case 'h':
            ctl_dump_usage(stdout);
            rc = 0;
            goto out;
        default:
            fprintf(stderr, "nmfctl dump: bad option '%s'\n", argv[optind - 1]);
            goto usage;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nmfctl dump: unexpected argument '%s'\n",
                argv[optind]);
        goto usage;
    }
    if ((d.flags & RECORDS_DUMP_BIN_BASE64) &&
        (d.flags & RECORDS_DUMP_BIN_LENGTH)) {
        fprintf(stderr, "nmfctl dump: --bin-base64 or --bin-length, not "
                        "both\n");
        goto usage;
    }
    if (file) {
        if (brokers || topic) {
            fprintf(stderr, "nmfctl dump: --file or --brokers/--topic, not "
                            "both\n");
            goto usage;
        }
        rc = ctl_dump_file(file, d.flags);
        goto out;
    }
    if (!brokers || !topic) {
        fprintf(stderr, "nmfctl dump: %s is required\n",
                !brokers ? "--brokers (or --file)" : "--topic");
        goto usage;
    }

    /* A private group id: assign() needs one, nothing is committed. */
    snprintf(group, sizeof(group), "nmfctl-dump-%ld-%lu", (long)getpid(),
             (unsigned long)uv_hrtime());
    {
        const char *kv[][2] = {
            {"bootstrap.servers", brokers},
            {"group.id", group},
            {"isolation.level", "read_committed"},
            {"enable.partition.eof", "false"},
            {"fetch.wait.max.ms", "10"},
            {"fetch.error.backoff.ms", "10"},
        };
        for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
            if (kafka_conf_set(conf, kv[i][0], kv[i][1], errstr,
                               sizeof(errstr))) {
                fprintf(stderr, "nmfctl dump: %s\n", errstr);
                goto usage;
            }
    }

    rc = 1;
    if (uv_loop_init(&d.loop) < 0)
        goto out;
    d.in = kafka_in_new(&d.loop, conf, &ctl_dump_cbs, &d, err, sizeof(err));
    conf = NULL;
    if (!d.in) {
        fprintf(stderr, "nmfctl dump: %s\n", err);
        uv_loop_close(&d.loop);
        goto out;
    }
    uv_timer_init(&d.loop, &d.idle_timer);
    uv_signal_init(&d.loop, &d.sigint);
    uv_signal_init(&d.loop, &d.sigterm);
    d.idle_timer.data = d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, ctl_dump_on_signal, SIGINT);
    uv_signal_start(&d.sigterm, ctl_dump_on_signal, SIGTERM);

    parts = ctl_dump_partitions(kafka_in_handle(d.in), topic);
    if (!parts) {
        d.exit_code = 1;
        ctl_dump_close(&d);
    } else if ((r = ctl_dump_assign(d.in, parts)) < 0) {
        fprintf(stderr, "nmfctl dump: assign: %s\n", strerror(-r));
        d.exit_code = 1;
        ctl_dump_close(&d);
    } else if (d.timeout_ms) {
        uv_timer_start(&d.idle_timer, ctl_dump_on_idle, d.timeout_ms,
                       d.timeout_ms);
    }
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);

    uv_run(&d.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&d.loop) != 0)
        fprintf(stderr, "nmfctl dump: loop did not close cleanly\n");
    if (fflush(stdout) != 0)
        d.exit_code = 1;
    fprintf(stderr, "nmfctl dump: %" PRIu64 " records", d.seen);
    if (d.bad)
        fprintf(stderr, ", %" PRIu64 " not valid msgpack", d.bad);
    fprintf(stderr, "\n");
    rc = d.exit_code ? d.exit_code : d.bad ? 1 : 0;

out:
    kafka_conf_free(conf);
    return rc;

usage:
    ctl_dump_usage(stderr);
    rc = 2;
    goto out;
}
