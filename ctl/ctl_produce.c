/* ctl_produce.c -- `nmfctl produce`: a CSV file of events into a topic.
 *
 * Reads user,item,weight,ts rows with io/csv (the daemon's own rules for
 * weights and times), encodes each as a msgpack map or a JSON object with
 * the field names of docs/design.md section 2, and produces it keyed by the
 * user id through io/kafka's idempotent producer, so keys land where a
 * Java client would put them. With --batch N, up to N events that go to
 * the same partition travel as one array message (one user's events still
 * share a partition, in file order). An optional token bucket caps the
 * event rate. The producer runs on a libuv loop like the daemon's; this
 * file owns the reader, the encoder buffers and the loop, and never
 * blocks the loop except for the one metadata query before it starts. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <uv.h>

#include "csv.h"
#include "ctl.h"
#include "kafka_raw.h"
#include "progress.h"

#define CTL_PRODUCE_BATCH_MAX 100000
#define CTL_PRODUCE_SLICE     20000 /* rows per loop iteration, unlimited */
/* With --rate, a partial batch waits this long for more events of its
 * partition before it goes out (librdkafka's linger.ms default). */
#define CTL_PRODUCE_LINGER_MS 5
#define CTL_PRODUCE_PARTS_MAX 10000
#define CTL_PRODUCE_CLOSE_MS  30000

enum ctl_produce_format { CTL_FMT_MSGPACK, CTL_FMT_JSON };

/* Events waiting to go out as one message (one per partition, --batch). */
struct ctl_pending {
    msgpack_sbuffer buf; /* msgpack: array elements; JSON: "a,b,c" */
    uint32_t n;
    uint64_t since_ms; /* when its first event came */
    char key[CSV_ID_MAX];
    size_t klen;
};

struct ctl_produce {
    uv_loop_t loop;
    uv_idle_t idle;
    uv_timer_t timer;
    uv_signal_t sigint, sigterm;
    struct kafka_out *out;
    struct csv_reader *csv;
    const char *topic;
    enum ctl_produce_format format;
    double rate;   /* events per second, 0 = unlimited */
    double tokens; /* token bucket */
    uint64_t last_refill_ms;
    uint32_t batch;
    int32_t nparts;
    rd_kafka_topic_t *rkt; /* for the partitioner, batch mode only */

    /* One encoded row, and the row itself when it could not be produced
     * yet (queue full, rate): it goes out first on the next pass. */
    msgpack_sbuffer one;
    char held_key[CSV_ID_MAX];
    size_t held_klen;
    bool held;
    struct ctl_pending *pend; /* nparts entries, batch mode */

    bool eof, stopping, committing;
    int exit_code;
    uint64_t rows, bad_rows, events, messages;
    uint64_t t0_ms, t1_ms;
    struct kafka_out_stats st; /* at the end */
    struct progress pg;        /* the progress line on a terminal */
};

static void ctl_produce_usage(FILE *out)
{
    fprintf(out,
            "usage: nmfctl produce --brokers B --topic T "
            "[--format msgpack|json] [--rate EV/S]\n"
            "                      [--batch N] [-X key=value]... "
            "FILE.csv|-\n"
            "\n"
            "Produces every row of an event CSV (header naming user, item "
            "and optionally\nweight, ts, type, in any order) to topic T, "
            "keyed by user, partitioned like\nJava clients (murmur2). Each "
            "event is a msgpack map (default) or JSON object\n"
            "{\"user\",\"item\",\"weight\",\"ts\"} (plus \"type\" when the "
            "file has one).\n"
            "\n"
            "  weight  a finite number >= 0; empty means 1\n"
            "  ts      an integer: values below 1e11 are seconds and are "
            "multiplied by 1000,\n"
            "          larger ones are milliseconds since the Unix epoch; "
            "an empty ts repeats\n"
            "          the row before; without a ts column events carry "
            "none (the consumer\n"
            "          then uses the Kafka timestamp)\n"
            "\n"
            "  --brokers B     bootstrap servers (host:port,...)\n"
            "  --topic T       topic to produce to\n"
            "  --format F      msgpack (default) or json\n"
            "  --rate EV/S     at most this many events per second "
            "(default: unlimited)\n"
            "  --batch N       up to N events of one partition per message, "
            "as an array\n"
            "                  (default 1: one event per message)\n"
            "  -X key=value    librdkafka producer property "
            "(repeatable)\n"
            "\n"
            "Malformed rows are reported with their line number and skipped. "
            "On a terminal,\nstderr shows the progress (events, rate, share "
            "of the file, time left).\nAt the end the "
            "event count and rate go to stderr. Exit 0 when "
            "every event was delivered,\n1 on delivery or read failures, 2 "
            "on bad usage.\n");
}

static uint64_t ctl_now_ms(uv_loop_t *loop)
{
    uv_update_time(loop);
    return uv_now(loop);
}

/* Shortest decimal that reads back to the same double. */
static int ctl_fmt_double(char *buf, size_t len, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        int n = snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v || prec == 17)
            return n;
    }
    return 0;
}

static void ctl_json_string(msgpack_sbuffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";

    msgpack_sbuffer_write(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            msgpack_sbuffer_write(b, e, 2);
        } else if (c < 0x20) {
            msgpack_sbuffer_write(b, esc, 6);
        } else {
            msgpack_sbuffer_write(b, (const char *)&s[i], 1);
        }
    }
    msgpack_sbuffer_write(b, "\"", 1);
}

static void ctl_msgpack_str(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

/* Appends one event to b in the chosen format. */
static void ctl_encode(struct ctl_produce *c, msgpack_sbuffer *b,
                       const struct csv_row *row)
{
    bool has_ts = row->ts_given || row->ts > 0;
    bool has_type = row->type_len > 0;

    if (c->format == CTL_FMT_MSGPACK) {
        msgpack_packer pk;

        msgpack_packer_init(&pk, b, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 3 + has_ts + has_type);
        ctl_msgpack_str(&pk, "user", 4);
        ctl_msgpack_str(&pk, row->user, row->user_len);
        ctl_msgpack_str(&pk, "item", 4);
        ctl_msgpack_str(&pk, row->item, row->item_len);
        ctl_msgpack_str(&pk, "weight", 6);
        msgpack_pack_double(&pk, row->weight);
        if (has_ts) {
            ctl_msgpack_str(&pk, "ts", 2);
            msgpack_pack_int64(&pk, row->ts);
        }
        if (has_type) {
            ctl_msgpack_str(&pk, "type", 4);
            ctl_msgpack_str(&pk, row->type, row->type_len);
        }
    } else {
        char num[40];
        int n;

        msgpack_sbuffer_write(b, "{\"user\":", 8);
        ctl_json_string(b, row->user, row->user_len);
        msgpack_sbuffer_write(b, ",\"item\":", 8);
        ctl_json_string(b, row->item, row->item_len);
        msgpack_sbuffer_write(b, ",\"weight\":", 10);
        n = ctl_fmt_double(num, sizeof(num), row->weight);
        msgpack_sbuffer_write(b, num, (size_t)n);
        if (has_ts) {
            n = snprintf(num, sizeof(num), ",\"ts\":%" PRId64, row->ts);
            msgpack_sbuffer_write(b, num, (size_t)n);
        }
        if (has_type) {
            msgpack_sbuffer_write(b, ",\"type\":", 8);
            ctl_json_string(b, row->type, row->type_len);
        }
        msgpack_sbuffer_write(b, "}", 1);
    }
}

/* Wraps a pending batch as an array message and produces it. */
static int ctl_pending_send(struct ctl_produce *c, int32_t part)
{
    struct ctl_pending *p = &c->pend[part];
    msgpack_sbuffer *m = &c->one;
    int r;

    if (p->n == 0)
        return 0;
    msgpack_sbuffer_clear(m);
    if (c->format == CTL_FMT_MSGPACK) {
        msgpack_packer pk;

        msgpack_packer_init(&pk, m, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, p->n);
        msgpack_sbuffer_write(m, p->buf.data, p->buf.size);
    } else {
        msgpack_sbuffer_write(m, "[", 1);
        msgpack_sbuffer_write(m, p->buf.data, p->buf.size);
        msgpack_sbuffer_write(m, "]", 1);
    }
    r = kafka_out_produce(c->out, c->topic, part, p->key, p->klen, m->data,
                          m->size, NULL, 0);
    if (r == 0) {
        c->messages++;
        c->events += p->n;
        p->n = 0;
        msgpack_sbuffer_clear(&p->buf);
    }
    return r;
}

static void ctl_produce_finish(struct ctl_produce *c);
static void ctl_produce_pump(struct ctl_produce *c);

static void ctl_on_idle(uv_idle_t *h)
{
    ctl_produce_pump(h->data);
}

static void ctl_on_timer(uv_timer_t *h)
{
    struct ctl_produce *c = h->data;

    uv_idle_start(&c->idle, ctl_on_idle);
}

/* Waits ms before pumping again (queue full or out of tokens). */
static void ctl_produce_wait(struct ctl_produce *c, uint64_t ms)
{
    uv_idle_stop(&c->idle);
    uv_timer_start(&c->timer, ctl_on_timer, ms ? ms : 1, 0);
}

/* Produces the row in c->one (single mode). */
static int ctl_send_one(struct ctl_produce *c)
{
    int r = kafka_out_produce(c->out, c->topic, -1, c->held_key, c->held_klen,
                              c->one.data, c->one.size, NULL, 0);
    if (r == 0) {
        c->held = false;
        c->messages++;
        c->events++;
    }
    return r;
}

static void ctl_produce_pump(struct ctl_produce *c)
{
    struct csv_row row;
    uint32_t slice = 0;
    int r;

    if (c->stopping || c->committing)
        return;
    if (c->rate > 0) {
        uint64_t now = ctl_now_ms(&c->loop);
        double burst = c->rate / 20 > c->batch ? c->rate / 20 : c->batch;

        c->tokens += (double)(now - c->last_refill_ms) * c->rate / 1000.0;
        if (c->tokens > burst)
            c->tokens = burst;
        c->last_refill_ms = now;
    }
    for (;;) {
        if (c->rate > 0 && c->tokens < 1) {
            /* Partial batches older than the linger go out while we wait:
             * a slow partition must not sit on its events, and a fast one
             * must not go out an event or two at a time. */
            uint64_t wait = (uint64_t)ceil((1 - c->tokens) * 1000 / c->rate);
            uint64_t now = ctl_now_ms(&c->loop);
            for (int32_t p = 0; c->pend && p < c->nparts; p++) {
                const struct ctl_pending *q = &c->pend[p];
                if (!q->n)
                    continue;
                if (now - q->since_ms < CTL_PRODUCE_LINGER_MS) {
                    uint64_t left = q->since_ms + CTL_PRODUCE_LINGER_MS - now;
                    wait = left < wait ? left : wait;
                } else if (ctl_pending_send(c, p) == -ENOBUFS) {
                    wait = 1;
                    break;
                }
            }
            ctl_produce_wait(c, wait);
            return;
        }
        if (c->rate == 0 && slice++ >= CTL_PRODUCE_SLICE)
            return; /* the idle handle calls again after the loop turned */
        if (c->held) {
            r = ctl_send_one(c);
            if (r == -ENOBUFS) {
                ctl_produce_wait(c, 1);
                return;
            }
            if (r < 0)
                goto fatal;
            c->tokens -= 1;
            continue;
        }
        if (c->eof)
            break;
        r = csv_next(c->csv, &row);
        if (r == 0) {
            c->eof = true;
            continue;
        }
        if (r == -EINVAL) {
            c->bad_rows++;
            progress_end(&c->pg);
            fprintf(stderr, "nmfctl produce: %s (skipped)\n",
                    csv_error(c->csv));
            continue;
        }
        if (r < 0) {
            progress_end(&c->pg);
            fprintf(stderr, "nmfctl produce: %s\n", csv_error(c->csv));
            c->exit_code = 1;
            c->eof = true;
            continue;
        }
        c->rows++;
        progress_poll(&c->pg, c->rows, csv_offset(c->csv));
        if (c->batch > 1) {
            int32_t part = rd_kafka_msg_partitioner_murmur2_random(
                c->rkt, row.user, row.user_len, c->nparts, NULL, NULL);
            struct ctl_pending *p = &c->pend[part];

            if (c->format == CTL_FMT_JSON && p->n > 0)
                msgpack_sbuffer_write(&p->buf, ",", 1);
            if (p->n == 0) {
                memcpy(p->key, row.user, row.user_len);
                p->klen = row.user_len;
                p->since_ms = ctl_now_ms(&c->loop);
            }
            ctl_encode(c, &p->buf, &row);
            p->n++;
            c->tokens -= 1;
            if (p->n >= c->batch) {
                r = ctl_pending_send(c, part);
                /* A full queue keeps the batch (it only grows by one row
                 * per retry, bounded by the pause it causes). */
                if (r == -ENOBUFS) {
                    ctl_produce_wait(c, 1);
                    return;
                }
                if (r < 0)
                    goto fatal;
            }
            continue;
        }
        msgpack_sbuffer_clear(&c->one);
        ctl_encode(c, &c->one, &row);
        memcpy(c->held_key, row.user, row.user_len);
        c->held_klen = row.user_len;
        c->held = true;
    }

    /* End of file: the partial batches, then wait for every delivery. */
    for (int32_t p = 0; c->pend && p < c->nparts; p++) {
        r = ctl_pending_send(c, p);
        if (r == -ENOBUFS) {
            ctl_produce_wait(c, 1);
            return;
        }
        if (r < 0)
            goto fatal;
    }
    ctl_produce_finish(c);
    return;

fatal:
    progress_end(&c->pg);
    fprintf(stderr, "nmfctl produce: produce to %s: %s\n", c->topic,
            strerror(-r));
    c->exit_code = 1;
    ctl_produce_finish(c);
}

static void ctl_on_closed(void *ctx)
{
    struct ctl_produce *c = ctx;

    c->out = NULL;
    uv_close((uv_handle_t *)&c->idle, NULL);
    uv_close((uv_handle_t *)&c->timer, NULL);
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigterm, NULL);
}

static void ctl_on_delivered(void *ctx, int status)
{
    struct ctl_produce *c = ctx;

    c->committing = false;
    c->t1_ms = ctl_now_ms(&c->loop);
    kafka_out_stats(c->out, &c->st);
    if (c->st.failed) {
        fprintf(stderr,
                "nmfctl produce: %" PRIu64 " of %" PRIu64
                " messages not delivered\n",
                c->st.failed, c->st.produced);
        c->exit_code = 1;
    }
    if (c->rkt) {
        rd_kafka_topic_destroy(c->rkt);
        c->rkt = NULL;
    }
    kafka_out_close(c->out, CTL_PRODUCE_CLOSE_MS);
}

/* Stops reading, waits for every delivery report, then closes. */
static void ctl_produce_finish(struct ctl_produce *c)
{
    int r;

    uv_idle_stop(&c->idle);
    uv_timer_stop(&c->timer);
    progress_end(&c->pg);
    if (c->stopping)
        return;
    c->stopping = true;
    c->committing = true;
    r = kafka_out_commit(c->out, ctl_on_delivered, c);
    if (r < 0) {
        c->committing = false;
        if (c->rkt) {
            rd_kafka_topic_destroy(c->rkt);
            c->rkt = NULL;
        }
        kafka_out_close(c->out, CTL_PRODUCE_CLOSE_MS);
    }
}

static void ctl_on_signal(uv_signal_t *h, int signum)
{
    struct ctl_produce *c = h->data;

    progress_end(&c->pg);
    fprintf(stderr, "nmfctl produce: %s, delivering what was produced\n",
            strsignal(signum));
    c->exit_code = 1;
    ctl_produce_finish(c);
}

static void ctl_on_ready(void *ctx, bool transactional)
{
    struct ctl_produce *c = ctx;

    c->t0_ms = ctl_now_ms(&c->loop);
    c->last_refill_ms = c->t0_ms;
    c->tokens = c->rate > 0 ? 1 : 0;
    uv_idle_start(&c->idle, ctl_on_idle);
}

static void ctl_on_error(void *ctx, int err, bool fatal, const char *reason)
{
    struct ctl_produce *c = ctx;

    fprintf(stderr, "nmfctl produce: %s\n", reason);
    if (fatal) {
        c->exit_code = 1;
        ctl_produce_finish(c);
    }
}

static int ctl_conf_set(struct kafka_conf *conf, const char *k, const char *v)
{
    char errstr[512];

    if (kafka_conf_set(conf, k, v, errstr, sizeof(errstr))) {
        fprintf(stderr, "nmfctl produce: %s\n", errstr);
        return -1;
    }
    return 0;
}

/* Partition count of the topic (blocking metadata query, before the loop
 * runs). The mock creates unknown topics on this request. */
static int32_t ctl_partition_count(rd_kafka_t *rk, rd_kafka_topic_t *rkt)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    int32_t n = -1;

    for (int tries = 0; tries < 20; tries++) {
        err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        if (err) {
            fprintf(stderr, "nmfctl produce: metadata: %s\n",
                    rd_kafka_err2str(err));
            return -1;
        }
        if (md->topic_cnt == 1 && !md->topics[0].err &&
            md->topics[0].partition_cnt > 0)
            n = md->topics[0].partition_cnt;
        else if (md->topic_cnt == 1 && tries == 19)
            fprintf(stderr, "nmfctl produce: topic %s: %s\n",
                    rd_kafka_topic_name(rkt),
                    rd_kafka_err2str(md->topics[0].err));
        rd_kafka_metadata_destroy(md);
        if (n > 0)
            return n;
        uv_sleep(100);
    }
    return -1;
}

static const struct kafka_out_cbs ctl_produce_cbs = {
    .on_ready = ctl_on_ready,
    .on_error = ctl_on_error,
    .on_closed = ctl_on_closed,
};

int ctl_produce_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"format", required_argument, NULL, 'f'},
        {"rate", required_argument, NULL, 'r'},
        {"batch", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ctl_produce *c;
    struct kafka_conf *conf;
    const char *brokers = NULL;
    char err[512], *end;
    int opt, rc = 2;
    double secs;

    c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, "nmfctl produce: out of memory\n");
        return 1;
    }
    c->batch = 1;
    conf = kafka_conf_new();
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            c->topic = optarg;
            break;
        case 'f':
            if (!strcmp(optarg, "msgpack"))
                c->format = CTL_FMT_MSGPACK;
            else if (!strcmp(optarg, "json"))
                c->format = CTL_FMT_JSON;
            else {
                fprintf(stderr,
                        "nmfctl produce: --format is msgpack or json, not "
                        "'%s'\n",
                        optarg);
                goto usage;
            }
            break;
        case 'r':
            errno = 0;
            c->rate = strtod(optarg, &end);
            if (errno || *end || end == optarg || !isfinite(c->rate) ||
                c->rate <= 0) {
                fprintf(stderr, "nmfctl produce: bad --rate '%s'\n", optarg);
                goto usage;
            }
            break;
        case 'n': {
            long v;

            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 1 ||
                v > CTL_PRODUCE_BATCH_MAX) {
                fprintf(stderr, "nmfctl produce: bad --batch '%s' (1..%d)\n",
                        optarg, CTL_PRODUCE_BATCH_MAX);
                goto usage;
            }
            c->batch = (uint32_t)v;
            break;
        }
        case 'X': {
            char *eq = strchr(optarg, '=');

            if (!eq) {
                fprintf(stderr, "nmfctl produce: -X wants key=value\n");
                goto usage;
            }
            *eq = '\0';
            if (ctl_conf_set(conf, optarg, eq + 1) < 0)
                goto usage;
            *eq = '=';
            break;
        }
        case 'h':
            ctl_produce_usage(stdout);
            rc = 0;
            goto out_conf;
        default:
            fprintf(stderr, "nmfctl produce: bad option '%s'\n",
                    argv[optind - 1]);
            goto usage;
        }
    }
    if (!brokers || !c->topic || optind != argc - 1) {
        fprintf(stderr, "nmfctl produce: %s\n",
                !brokers         ? "--brokers is required"
                : !c->topic      ? "--topic is required"
                : optind == argc ? "a CSV file (or -) is required"
                                 : "one CSV file only");
        goto usage;
    }
    if (ctl_conf_set(conf, "bootstrap.servers", brokers) < 0)
        goto usage;

    c->csv = csv_open(argv[optind], err, sizeof(err));
    if (!c->csv) {
        fprintf(stderr, "nmfctl produce: %s\n", err);
        rc = errno == EINVAL ? 2 : 1;
        goto out_conf;
    }
    progress_start(&c->pg, stderr, "produce", csv_size(c->csv));

    rc = 1;
    if (uv_loop_init(&c->loop) < 0)
        goto out_csv;
    msgpack_sbuffer_init(&c->one);
    uv_idle_init(&c->loop, &c->idle);
    uv_timer_init(&c->loop, &c->timer);
    uv_signal_init(&c->loop, &c->sigint);
    uv_signal_init(&c->loop, &c->sigterm);
    c->idle.data = c->timer.data = c->sigint.data = c->sigterm.data = c;
    uv_signal_start(&c->sigint, ctl_on_signal, SIGINT);
    uv_signal_start(&c->sigterm, ctl_on_signal, SIGTERM);

    c->out = kafka_out_new(&c->loop, conf, NULL, &ctl_produce_cbs, c, err,
                           sizeof(err));
    conf = NULL;
    if (!c->out) {
        fprintf(stderr, "nmfctl produce: %s\n", err);
        rc = 2;
        uv_close((uv_handle_t *)&c->idle, NULL);
        uv_close((uv_handle_t *)&c->timer, NULL);
        uv_close((uv_handle_t *)&c->sigint, NULL);
        uv_close((uv_handle_t *)&c->sigterm, NULL);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
        msgpack_sbuffer_destroy(&c->one);
        goto out_csv;
    }
    if (c->batch > 1) {
        c->rkt = rd_kafka_topic_new(kafka_out_handle(c->out), c->topic, NULL);
        c->nparts =
            c->rkt ? ctl_partition_count(kafka_out_handle(c->out), c->rkt) : -1;
        if (c->nparts <= 0 || c->nparts > CTL_PRODUCE_PARTS_MAX) {
            fprintf(stderr,
                    "nmfctl produce: cannot learn the partitions of "
                    "%s\n",
                    c->topic);
            c->exit_code = 1;
            c->stopping = true;
            if (c->rkt)
                rd_kafka_topic_destroy(c->rkt);
            c->rkt = NULL;
            kafka_out_close(c->out, 0);
        } else {
            c->pend = calloc((size_t)c->nparts, sizeof(*c->pend));
            if (!c->pend) {
                fprintf(stderr, "nmfctl produce: out of memory\n");
                c->exit_code = 1;
                c->stopping = true;
                rd_kafka_topic_destroy(c->rkt);
                c->rkt = NULL;
                kafka_out_close(c->out, 0);
            }
            for (int32_t p = 0; c->pend && p < c->nparts; p++)
                msgpack_sbuffer_init(&c->pend[p].buf);
        }
    }

    uv_run(&c->loop, UV_RUN_DEFAULT);

    if (!c->t1_ms)
        c->t1_ms = ctl_now_ms(&c->loop);
    secs = c->t0_ms ? (double)(c->t1_ms - c->t0_ms) / 1000.0 : 0;
    if (uv_loop_close(&c->loop) != 0)
        fprintf(stderr, "nmfctl produce: loop did not close cleanly\n");
    fprintf(stderr,
            "nmfctl produce: %" PRIu64 " events in %" PRIu64
            " messages to %s (%" PRIu64 " delivered, %" PRIu64
            " failed) in %.3f s, %.0f events/s",
            c->events, c->messages, c->topic, c->st.delivered, c->st.failed,
            secs, secs > 0 ? (double)c->events / secs : 0.0);
    if (c->bad_rows)
        fprintf(stderr, ", %" PRIu64 " bad rows skipped", c->bad_rows);
    fprintf(stderr, "\n");
    rc = c->exit_code;
    for (int32_t p = 0; c->pend && p < c->nparts; p++)
        msgpack_sbuffer_destroy(&c->pend[p].buf);
    free(c->pend);
    msgpack_sbuffer_destroy(&c->one);

out_csv:
    csv_close(c->csv);
out_conf:
    kafka_conf_free(conf);
    free(c);
    return rc;

usage:
    ctl_produce_usage(stderr);
    rc = 2;
    goto out_conf;
}
