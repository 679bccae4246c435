/* server.c -- the nmfd daemon: one libuv loop, one model.
 *
 * An event travels one way: the consumer hands a message to
 * server_on_message, the decoder turns it into events, each event is
 * folded into the model, and the partition's next offset is remembered.
 * Everything periodic hangs off timers on the same loop, like redis's
 * serverCron: W refresh, epochs (segment, topic and manifest records in
 * one transaction), checkpoints (written by a forked child, so ingest
 * never waits for the disk), TTL expiry, systemd status and watchdog. When
 * the input goes quiet an idle handle spends the spare time re-solving
 * users whose h is stale against the current W.
 *
 * This file owns the wiring and the order of shutdown, not the pieces:
 * the model is online/, the codecs and Kafka are io/, HTTP and metrics
 * have their own files. It must never block the loop: every Kafka call it
 * makes returns at once, transaction commits complete in callbacks, and
 * the only synchronous disk write is the final checkpoint at stop.
 */
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zlib.h>
#include <uv.h>

#include "broker.h"
#include "checkpoint.h"
#include "config.h"
#include "csv.h"
#include "event.h"
#include "http.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "notify.h"
#include "records.h"
#include "recommend.h"

#define SERVER_PUBLISH_SLICE 20000 /* segment records per loop tick */
#define SERVER_STATUS_MS     5000
#define SERVER_EXPIRE_MS     60000
#define SERVER_SSE_TOPS      10 /* top items per topic on the dashboard */
/* Refinement while events flow: one stale user re-solved per this many
 * events folded (a quarter more solves at most); the full idle slice
 * once the input has been quiet this long. */
#define SERVER_REFINE_EVERY 4
#define SERVER_QUIET_MS     100

/* One input partition: where the model's next event starts. */
struct part {
    char topic[KAFKA_TOPIC_MAX];
    int32_t partition;
    int64_t next;      /* next offset to fold, -1: nothing folded yet */
    int64_t committed; /* last offset committed to Kafka */
    bool assigned;
    struct metric *lag;
};

/* The dense snapshot of one epoch, shared by concurrent /snapshot
 * responses and freed with the last of them. */
struct snapbuf {
    unsigned refs;
    uint64_t epoch;
    void *data;
    size_t len;
};

/* Events decoded but not folded yet. The model folds a batch faster than
 * the same events one by one (it fetches the next events' rows ahead), so
 * the consumer's messages are decoded into this buffer, ids copied, and
 * folded together; server_flush() runs before anything reads the model or
 * the offsets, so no reader ever sees the buffer non-empty. */
#define SERVER_BATCH 256
struct fold_batch {
    size_t n, used;
    struct model_event ev[SERVER_BATCH];
    int rc[SERVER_BATCH];
    char ids[SERVER_BATCH * 2 * (MODEL_ID_MAX + 1)];
};

/* A forked writer: checkpoints and snapshot files. */
struct bgjob {
    pid_t pid;
    uint64_t started_ms;
    struct part *parts; /* checkpoint: the offsets it holds */
    size_t nparts;
};

enum publish_state {
    PUB_IDLE,
    PUB_SEGMENTS,   /* producing segment records, a slice per tick */
    PUB_COMMITTING, /* topics and manifest produced, commit in flight */
};

struct server {
    uv_loop_t loop;
    const struct server_opts *opts;
    struct config *cfg;
    int exit_code;
    bool stopping;
    bool ready;
    unsigned closing; /* components still closing */

    struct broker *broker;
    struct model *model;
    struct fold_batch *batch;
    struct event_decoder *dec;
    struct kafka_in *in;
    struct kafka_out *out;
    struct kafka_out *dlq;
    struct http *http;
    struct metrics *metrics;
    struct records_enc *enc;
    json_t *item_names; /* item id -> display name, or NULL */

    struct part *parts;
    size_t nparts, capparts, lastpart;
    size_t assigned;
    struct checkpoint_offset *seek; /* offsets from the checkpoint */
    size_t nseek;

    /* Counters that survive restarts through the checkpoint. */
    uint64_t epoch; /* last published epoch */
    uint64_t rejected;
    uint64_t consumed;

    /* Since start, for rates and the refresh clock. */
    uint64_t folded_since_refresh;
    uint64_t rate_events;
    uint64_t rate_ms;
    double rate;
    double loss; /* relative loss at the last published epoch */
    bool broker_down;
    uint64_t loop_ticks, watchdog_ticks;
    uint64_t refine_owed;    /* events folded not yet matched by refinement */
    struct model_memory mem; /* model_memory(), at most a second old */
    uint64_t mem_ms;         /* when it was taken, 0 = never */
    uint64_t folded_total;   /* events folded since start */
    uint64_t folded_seen;    /* folded_total at the end of the last tick */

    enum publish_state pub;
    uint64_t pub_epoch;
    uint64_t pub_since; /* users changed in epochs >= this */
    bool pub_full;
    bool next_full;
    uint32_t pub_cursor;
    uint64_t pub_segments;
    uint32_t pub_finished; /* topic records (then the manifest) produced */
    bool pub_tracked;      /* this epoch's continuity is taken */

    /* Topic continuity (DESIGN.md section 1): W as the previous epoch's
     * topic records showed it (tprev_rows x k; before the first, the W the
     * daemon started with; 0 rows: no previous version), and each topic's
     * cosine to it in the last epoch. */
    float *tprev;
    uint32_t tprev_rows;
    double *tcont;
    uint64_t pub_started_ms;
    uint64_t epochs_since_full;

    struct bgjob ckpt, snapfile;
    uint64_t ckpt_last_ms; /* wall clock of the last good checkpoint */
    struct snapbuf *snap;

    struct log_ratelimit reject_rl;

    uv_timer_t t_epoch, t_refresh, t_ckpt, t_status, t_watchdog, t_expire;
    uv_timer_t t_quiet; /* fires when the input has been quiet a while */
    uv_idle_t refine, publish;
    uv_prepare_t tick;
    uv_check_t flusher; /* folds the batch at the end of each iteration */
    uv_signal_t s_term, s_int, s_hup, s_chld;
    uint64_t watchdog_usec;

    struct {
        struct metric *consumed, *folded, *weight,
            *rejected[EVENT_REASON_COUNT];
        struct metric *fold_seconds, *refresh_seconds, *refreshes;
        struct metric *epochs, *epoch_failures, *records, *delivery_errors;
        struct metric *dead_letters, *dead_letter_errors, *consumer_errors;
        struct metric *ckpt_seconds, *ckpt_stall, *ckpts, *ckpt_failures;
        struct metric *refined;
        struct metric **cont, *cont_min;
    } m;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void server_stop(struct server *s, int code);
static void server_shutdown_step(struct server *s);
static void on_refine(uv_idle_t *h);
static void on_quiet_timer(uv_timer_t *t);

/* ---- partitions and offsets ------------------------------------------ */

/* The partition's record, NULL if this process has none. */
static struct part *part_find(struct server *s, const char *topic,
                              int32_t partition)
{
    if (s->lastpart < s->nparts) {
        struct part *p = &s->parts[s->lastpart];
        if (p->partition == partition && !strcmp(p->topic, topic))
            return p;
    }
    for (size_t i = 0; i < s->nparts; i++)
        if (s->parts[i].partition == partition &&
            !strcmp(s->parts[i].topic, topic)) {
            s->lastpart = i;
            return &s->parts[i];
        }
    return NULL;
}

/* The partition's record, made if needed; NULL out of memory. */
static struct part *part_get(struct server *s, const char *topic,
                             int32_t partition)
{
    struct part *found = part_find(s, topic, partition);
    if (found)
        return found;
    if (s->nparts == s->capparts) {
        size_t cap = s->capparts ? 2 * s->capparts : 16;
        struct part *np = realloc(s->parts, cap * sizeof(*np));
        if (!np)
            return NULL;
        s->parts = np;
        s->capparts = cap;
    }
    struct part *p = &s->parts[s->nparts];
    memset(p, 0, sizeof(*p));
    snprintf(p->topic, sizeof(p->topic), "%s", topic);
    p->partition = partition;
    p->next = -1;
    p->committed = -1;
    char labels[KAFKA_TOPIC_MAX + 64];
    snprintf(labels, sizeof(labels), "topic=\"%s\",partition=\"%" PRId32 "\"",
             topic, partition);
    p->lag = metrics_gauge(s->metrics, "nmfd_consumer_lag",
                           "Messages behind the partition's end.", labels);
    if (p->lag)
        metric_set(p->lag, -1);
    s->lastpart = s->nparts;
    return &s->parts[s->nparts++];
}

/* The offsets the model has folded up to, for a checkpoint: where each
 * partition has been consumed to, and for a partition not consumed since
 * the start, the offset the state was loaded with. Until the group assigns
 * it, that is exactly what the model holds of it; left out, the next start
 * would fall back to the group's committed offset, which can lag the model
 * (a kill between a checkpoint and its commit), and fold events twice. */
static struct checkpoint_offset *parts_offsets(struct server *s, size_t *n)
{
    struct checkpoint_offset *o = calloc(s->nparts + s->nseek + 1, sizeof(*o));
    size_t k = 0;
    if (!o)
        return NULL;
    for (size_t i = 0; i < s->nparts; i++) {
        if (s->parts[i].next < 0)
            continue;
        o[k].topic = s->parts[i].topic; /* borrowed */
        o[k].partition = s->parts[i].partition;
        o[k].offset = s->parts[i].next;
        k++;
    }
    for (size_t j = 0; j < s->nseek; j++) {
        const struct part *p =
            part_find(s, s->seek[j].topic, s->seek[j].partition);
        if (p && p->next >= 0)
            continue;
        o[k] = s->seek[j]; /* borrowed */
        k++;
    }
    *n = k;
    return o;
}

static void parts_commit(struct server *s, const struct part *parts, size_t n)
{
    rd_kafka_topic_partition_list_t *l;
    if (!s->in || !n)
        return;
    l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++) {
        struct part *live = part_get(s, parts[i].topic, parts[i].partition);
        /* Only partitions this member still owns: committing for a
         * partition another member took would move its position. */
        if (!live || !live->assigned || parts[i].next < 0 ||
            parts[i].next == live->committed)
            continue;
        rd_kafka_topic_partition_list_add(l, parts[i].topic, parts[i].partition)
            ->offset = parts[i].next;
        live->committed = parts[i].next;
    }
    if (l->cnt) {
        int rc = kafka_in_commit(s->in, l);
        if (rc)
            log_warn("offset commit: %s", strerror(-rc));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---- folding ----------------------------------------------------------- */

struct fold_ctx {
    struct server *s;
    enum event_reason first;
    uint64_t folded;
};

static void server_flush(struct server *s)
{
    struct fold_batch *b = s->batch;
    double t0, weight = 0;
    size_t folded = 0;

    if (!b || !b->n)
        return;
    t0 = mono_s();
    model_fold_batch(s->model, b->ev, b->n, b->rc);
    metric_observe(s->m.fold_seconds, (mono_s() - t0) / (double)b->n);
    for (size_t i = 0; i < b->n; i++) {
        if (b->rc[i]) {
            /* The decoder checks everything the model checks; a refusal
             * here is a disagreement between the two, counted, never
             * folded. */
            s->rejected++;
            metric_inc(s->m.rejected[EVENT_MODEL_REFUSED]);
            log_warn("model refused an event the decoder accepted: %s",
                     strerror(-b->rc[i]));
            continue;
        }
        weight += b->ev[i].weight;
        folded++;
    }
    metric_add(s->m.weight, weight);
    metric_add(s->m.folded, (double)folded);
    s->folded_since_refresh += folded;
    s->rate_events += folded;
    s->refine_owed += folded;
    s->folded_total += folded;
    b->n = b->used = 0;
}

static void fold_event(void *arg, const struct event *ev)
{
    struct fold_ctx *fc = arg;
    struct server *s = fc->s;
    struct fold_batch *b = s->batch;
    struct model_event *e;

    if (b->n == SERVER_BATCH ||
        b->used + ev->user_len + ev->item_len + 2 > sizeof(b->ids))
        server_flush(s);
    e = &b->ev[b->n++];
    memcpy(b->ids + b->used, ev->user, ev->user_len);
    e->user = b->ids + b->used;
    e->user_len = ev->user_len;
    b->used += ev->user_len + 1;
    memcpy(b->ids + b->used, ev->item, ev->item_len);
    e->item = b->ids + b->used;
    e->item_len = ev->item_len;
    b->used += ev->item_len + 1;
    e->weight = ev->weight;
    e->ts = ev->ts;
    fc->folded++;
}

static void fold_reject(void *arg, enum event_reason r)
{
    struct fold_ctx *fc = arg;
    struct server *s = fc->s;
    uint64_t suppressed = 0;

    s->rejected++;
    metric_inc(s->m.rejected[r]);
    if (fc->first == EVENT_OK)
        fc->first = r;
    if (log_ratelimit_ok(&s->reject_rl, uv_now(&s->loop), &suppressed)) {
        if (suppressed)
            log_warn("rejected event: %s (%" PRIu64
                     " more rejections not logged)",
                     event_reason_name(r), suppressed);
        else
            log_warn("rejected event: %s", event_reason_name(r));
    }
}

static void server_on_message(void *ctx, const rd_kafka_message_t *msg)
{
    struct server *s = ctx;
    struct fold_ctx fc = {s, EVENT_OK, 0};
    const char *topic = rd_kafka_topic_name(msg->rkt);
    struct part *p = part_get(s, topic, msg->partition);
    int64_t ts = rd_kafka_message_timestamp(msg, NULL);
    if (ts < 0)
        ts = (int64_t)now_ms();
    s->consumed++;
    metric_inc(s->m.consumed);

    /* A message below the folded offset was folded before (a seek after a
     * restart lands exactly, but a rebalance can replay): skip it. */
    if (p && p->next >= 0 && msg->offset < p->next)
        return;

    event_decode(s->dec, msg->payload, msg->len, ts, fold_event, fold_reject,
                 &fc);
    if (p)
        p->next = msg->offset + 1;
    if (fc.first != EVENT_OK && s->dlq && s->cfg->input.dead_letter_topic[0]) {
        int rc = kafka_out_produce_dead(s->dlq, s->cfg->input.dead_letter_topic,
                                        msg, event_reason_name(fc.first));
        if (rc) {
            metric_inc(s->m.dead_letter_errors);
            log_warn("dead letter for %s/%" PRId32 "/%" PRId64 ": %s", topic,
                     msg->partition, msg->offset, strerror(-rc));
        } else {
            metric_inc(s->m.dead_letters);
        }
    }
}

static void server_on_assign(void *ctx, rd_kafka_topic_partition_list_t *parts)
{
    struct server *s = ctx;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        struct part *p = part_get(s, tp->topic, tp->partition);
        if (p && !p->assigned) {
            p->assigned = true;
            s->assigned++;
        }
        /* The model's own position wins over Kafka's: it is exactly what
         * the model holds. */
        if (p && p->next >= 0)
            tp->offset = p->next;
        else
            for (size_t j = 0; j < s->nseek; j++)
                if (s->seek[j].partition == tp->partition &&
                    !strcmp(s->seek[j].topic, tp->topic)) {
                    tp->offset = s->seek[j].offset;
                    if (p)
                        p->next = s->seek[j].offset;
                }
        log_info("assigned %s/%" PRId32 " from offset %" PRId64, tp->topic,
                 tp->partition, tp->offset);
    }
}

static void server_on_revoke(void *ctx,
                             const rd_kafka_topic_partition_list_t *parts,
                             bool lost)
{
    struct server *s = ctx;
    for (int i = 0; i < parts->cnt; i++) {
        struct part *p =
            part_get(s, parts->elems[i].topic, parts->elems[i].partition);
        if (p && p->assigned) {
            p->assigned = false;
            s->assigned--;
        }
        log_info("%s %s/%" PRId32, lost ? "lost" : "revoked",
                 parts->elems[i].topic, parts->elems[i].partition);
    }
}

static void server_on_error(void *ctx, int err, bool fatal, const char *reason)
{
    struct server *s = ctx;
    metric_inc(s->m.consumer_errors);
    if (err == -EHOSTDOWN || err == -ENETDOWN || err == -ECONNREFUSED ||
        err == -EHOSTUNREACH) {
        if (!s->broker_down)
            log_err("kafka: brokers unreachable: %s", reason);
        s->broker_down = true;
    } else {
        log_warn("kafka consumer: %s", reason);
    }
    if (fatal) {
        log_err("kafka consumer failed: %s", reason);
        server_stop(s, 1);
    }
}

static void server_on_kafka_log(void *ctx, int level, const char *fac,
                                const char *msg)
{
    /* librdkafka's configuration warnings about keys meant for the other
     * client kind are expected: one [kafka] section feeds both. */
    if (!strcmp(fac, "CONFWARN"))
        level = LOG_DEBUG;
    log_msg(level > LOG_DEBUG ? LOG_DEBUG : level, "kafka: %s: %s", fac, msg);
}

static void server_on_stats(void *ctx)
{
    struct server *s = ctx;
    struct kafka_lag lag[256];
    size_t n = kafka_in_lag(s->in, lag, 256);
    struct kafka_in_stats ks;
    if (n > 256)
        n = 256;
    /* Statistics come whether or not a broker answers: they end an outage
     * only when they show a connected broker. */
    kafka_in_stats(s->in, &ks);
    if (ks.brokers > 0) {
        bool down = ks.brokers_up == 0;
        if (down && !s->broker_down)
            log_err("kafka: brokers unreachable: none of %d connected",
                    ks.brokers);
        else if (!down && s->broker_down)
            log_notice("kafka: brokers reachable again");
        s->broker_down = down;
    }
    for (size_t i = 0; i < n; i++) {
        struct part *p = part_get(s, lag[i].topic, lag[i].partition);
        if (p && p->lag)
            metric_set(p->lag, (double)lag[i].lag);
    }
}

static void server_on_in_closed(void *ctx)
{
    struct server *s = ctx;
    s->in = NULL;
    s->closing--;
    server_shutdown_step(s);
}

static void server_on_out_error(void *ctx, int err, bool fatal,
                                const char *reason)
{
    struct server *s = ctx;
    metric_inc(s->m.delivery_errors);
    log_warn("kafka producer: %s", reason);
    if (fatal) {
        log_err("kafka producer failed: %s", reason);
        server_stop(s, 1);
    }
}

static void server_on_out_ready(void *ctx, bool transactional)
{
    log_info("output producer ready (%s)",
             transactional ? "transactional" : "idempotent");
}

static void server_on_out_closed(void *ctx)
{
    struct server *s = ctx;
    s->closing--;
    server_shutdown_step(s);
}

/* ---- epochs -------------------------------------------------------------- */

static void snapbuf_release(void *arg)
{
    struct snapbuf *b = arg;
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static json_t *topics_json(struct server *s, uint32_t top_n)
{
    const struct model_params *mp = model_params(s->model);
    uint32_t k = mp->k;
    uint64_t *sizes = calloc(k, sizeof(*sizes));
    double *mass = calloc(k, sizeof(*mass));
    uint32_t *items = calloc(top_n ? top_n : 1, sizeof(*items));
    float *w = calloc(top_n ? top_n : 1, sizeof(*w));
    json_t *arr = json_array();

    if (!sizes || !mass || !items || !w || !arr)
        goto out;
    model_segment_sizes(s->model, sizes, mass);
    for (uint32_t j = 0; j < k; j++) {
        uint32_t n = model_topic_top(s->model, j, top_n, items, w);
        json_t *top = json_array();
        for (uint32_t t = 0; t < n; t++) {
            size_t len;
            const char *id = model_item_id(s->model, items[t], &len);
            json_t *name = NULL;
            if (!id)
                continue;
            if (s->item_names)
                name = json_object_getn(s->item_names, id, len);
            json_array_append_new(
                top, json_pack("[o f]",
                               name ? json_incref(name) : json_stringn(id, len),
                               (double)w[t]));
        }
        json_array_append_new(
            arr,
            json_pack("{s:i s:I s:f s:f s:o}", "topic", (json_int_t)j, "users",
                      (json_int_t)sizes[j], "mass", mass[j], "continuity",
                      s->tcont ? s->tcont[j] : 1.0, "top", top));
    }
out:
    free(sizes);
    free(mass);
    free(items);
    free(w);
    return arr;
}

static void server_sse_epoch(struct server *s)
{
    struct model_stats st;
    int64_t lag = -1;
    json_t *topics, *sizes, *doc;
    char *text;
    server_flush(s);

    model_stats(s->model, &st);
    s->loss = st.rel_loss;
    if (!s->http)
        return;
    if (s->in) {
        struct kafka_in_stats ks;
        kafka_in_stats(s->in, &ks);
        lag = ks.lag;
    }
    topics = topics_json(s, SERVER_SSE_TOPS);
    sizes = json_array();
    for (size_t j = 0; j < json_array_size(topics); j++)
        json_array_append(sizes,
                          json_object_get(json_array_get(topics, j), "users"));
    doc =
        json_pack("{s:I s:I s:i s:I s:I s:I s:I s:f s:I s:f s:o s:o}", "epoch",
                  (json_int_t)s->epoch, "ts", (json_int_t)now_ms(), "k",
                  (json_int_t)model_params(s->model)->k, "users",
                  (json_int_t)st.users, "items", (json_int_t)st.items, "events",
                  (json_int_t)st.events, "rejected", (json_int_t)s->rejected,
                  "rate", s->rate, "lag", (json_int_t)lag, "loss", s->loss,
                  "segment_sizes", sizes, "topics", topics);
    if (!doc)
        return;
    if (model_params(s->model)->holdout > 0)
        json_object_set_new(doc, "holdout_loss", json_real(st.holdout_loss));
    text = json_dumps(doc, JSON_COMPACT);
    if (text)
        http_sse_broadcast(s->http, "epoch", text);
    free(text);
    json_decref(doc);
}

static void bgjob_start_snapshot(struct server *s);

/* The last published epoch, beside the checkpoint: epochs published after
 * the last checkpoint must not be numbered again after a crash or a fresh
 * start. Written with rename, without fsync: it is cheap on the loop, and
 * a lost update only matters if the machine itself crashed. */
static void epoch_file_write(struct server *s)
{
    char path[4096], tmp[4200];
    int fd, len;
    char buf[32];

    snprintf(path, sizeof(path), "%s/epoch", s->cfg->checkpoint.dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    len = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", s->epoch);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, buf, (size_t)len) != len || close(fd) || rename(tmp, path))
        log_debug("%s: %s", path, strerror(errno));
}

static uint64_t epoch_file_read(const struct server *s)
{
    char path[4096];
    unsigned long long e = 0;
    FILE *f;
    snprintf(path, sizeof(path), "%s/epoch", s->cfg->checkpoint.dir);
    f = fopen(path, "r");
    if (!f)
        return 0;
    if (fscanf(f, "%llu", &e) != 1)
        e = 0;
    fclose(f);
    return e;
}

static void publish_done(void *ctx, int status)
{
    struct server *s = ctx;
    double took = (double)(now_ms() - s->pub_started_ms) / 1000.0;

    s->pub = PUB_IDLE;
    if (status) {
        metric_inc(s->m.epoch_failures);
        log_warn("epoch %" PRIu64 " not published: %s; the next is full",
                 s->pub_epoch, strerror(-status));
        s->next_full = true;
    } else {
        s->epoch = s->pub_epoch;
        epoch_file_write(s);
        metric_inc(s->m.epochs);
        log_debug("epoch %" PRIu64 ": %" PRIu64 " segment records%s, %.3f s",
                  s->epoch, s->pub_segments, s->pub_full ? " (full)" : "",
                  took);
        server_sse_epoch(s);
        if (s->cfg->snapshot.file[0])
            bgjob_start_snapshot(s);
    }
    if (s->stopping)
        server_shutdown_step(s);
}

/* partition -1: by key. The topic records and the manifests go to
 * partition 0 whatever the topic's partition count: a reader then sees the
 * epochs in order, and each epoch's topics before its manifest. */
static int publish_record(struct server *s, const char *topic,
                          int32_t partition, const char *key, size_t klen)
{
    size_t len;
    const void *data = records_enc_data(s->enc, &len);
    int rc = kafka_out_produce(s->out, topic, partition, key, klen, data, len,
                               NULL, 0);
    if (!rc)
        metric_inc(s->m.records);
    return rc;
}

/* The previous version of W becomes the current one (at start, and as
 * each epoch's topic records are made). Without memory there is no
 * previous version: the next continuity is 1, as at a fresh start. */
static void topics_keep(struct server *s)
{
    uint32_t k = model_params(s->model)->k, M = model_item_slots(s->model);
    size_t bytes = (size_t)M * k * sizeof(float);
    float *p = M ? realloc(s->tprev, bytes) : s->tprev;
    if (M && !p) {
        s->tprev_rows = 0;
        return;
    }
    s->tprev = p;
    if (M)
        memcpy(s->tprev, model_W(s->model), bytes);
    s->tprev_rows = M;
}

/* Each topic's continuity for this epoch's records, once per epoch: the
 * cosine to the previous epoch's version (1 when there is none: nothing
 * was shown that it could differ from), then the gauges. */
static void topics_track(struct server *s)
{
    uint32_t k = model_params(s->model)->k;
    double lo = 1;
    if (s->pub_tracked)
        return;
    if (s->tprev_rows)
        model_topic_continuity(s->model, s->tprev, s->tprev_rows, s->tcont);
    else
        for (uint32_t j = 0; j < k; j++)
            s->tcont[j] = 1;
    topics_keep(s);
    for (uint32_t j = 0; j < k; j++) {
        metric_set(s->m.cont[j], s->tcont[j]);
        lo = s->tcont[j] < lo ? s->tcont[j] : lo;
    }
    metric_set(s->m.cont_min, lo);
    s->pub_tracked = true;
}

/* Topic records and the manifest, last: a reader that sees the manifest
 * of epoch E has every record of E before it. -ENOBUFS: the producer queue
 * is full, call again on a later tick (it goes on where it stopped);
 * otherwise the epoch is committed or abandoned. */
static int publish_finish(struct server *s)
{
    const struct config *c = s->cfg;
    uint32_t k = model_params(s->model)->k;
    uint64_t *sizes = calloc(k, sizeof(*sizes));
    double *mass = calloc(k, sizeof(*mass));
    struct records_epoch ep = {s->pub_epoch, (int64_t)now_ms(),
                               (int64_t)c->model.refresh_interval_ms};
    char key[RECORDS_KEY_MAX];
    size_t klen;
    int rc = -ENOMEM;
    server_flush(s);

    if (!sizes || !mass)
        goto fail;
    model_segment_sizes(s->model, sizes, mass);
    topics_track(s);
    for (uint32_t j = s->pub_finished; j < k; j++) {
        rc = records_topic_encode(s->enc, s->model, s->pub_epoch, j,
                                  c->snapshot.top_items, sizes[j], mass[j],
                                  s->tcont[j]);
        if (!rc) {
            klen = records_topic_key(key, j);
            rc = publish_record(s, c->snapshot.topic_topics, 0, key, klen);
        }
        if (rc == -ENOBUFS)
            goto later;
        if (rc)
            goto fail;
        s->pub_finished = j + 1;
    }
    struct records_manifest mf = {&ep, s->pub_full, s->rejected,
                                  s->pub_segments, sizes};
    rc = records_manifest_encode(s->enc, s->model, &mf);
    if (!rc) {
        klen = records_manifest_key(key, s->pub_epoch);
        rc = publish_record(s, c->snapshot.topic_manifest, 0, key, klen);
    }
    if (rc == -ENOBUFS)
        goto later;
    if (rc)
        goto fail;
    free(sizes);
    free(mass);
    s->pub = PUB_COMMITTING;
    rc = kafka_out_commit(s->out, publish_done, s);
    if (rc)
        publish_done(s, rc);
    return 0;
later:
    free(sizes);
    free(mass);
    return -ENOBUFS;
fail:
    free(sizes);
    free(mass);
    log_warn("epoch %" PRIu64 ": %s", s->pub_epoch, strerror(-rc));
    if (kafka_out_transactional(s->out)) {
        s->pub = PUB_COMMITTING;
        if (kafka_out_abort(s->out, publish_done, s) == 0)
            return rc;
    }
    publish_done(s, rc);
    return rc;
}

/* One slice of segment records per loop tick, so a full epoch of a million
 * users never holds the loop for long. */
static void publish_tick(uv_idle_t *h)
{
    struct server *s = h->data;
    uint32_t slots = model_user_slots(s->model);
    uint32_t k = model_params(s->model)->k;
    unsigned budget = SERVER_PUBLISH_SLICE;
    server_flush(s);

    while (s->pub_cursor < slots && budget) {
        struct model_user_view u;
        if (model_user_get(s->model, s->pub_cursor, &u) ||
            (!s->pub_full && u.changed < s->pub_since)) {
            s->pub_cursor++;
            continue;
        }
        int rc = records_segment_encode(s->enc, s->pub_epoch, k, &u);
        if (!rc)
            rc = publish_record(s, s->cfg->snapshot.topic_segments, -1, u.id,
                                u.id_len);
        if (rc == -ENOBUFS)
            return; /* the producer queue is full: next tick */
        if (rc) {
            uv_idle_stop(h);
            log_warn("epoch %" PRIu64 ": segment record: %s", s->pub_epoch,
                     strerror(-rc));
            s->pub = PUB_COMMITTING;
            if (!kafka_out_transactional(s->out) ||
                kafka_out_abort(s->out, publish_done, s))
                publish_done(s, rc);
            return;
        }
        s->pub_segments++;
        s->pub_cursor++;
        budget--;
    }
    if (s->pub_cursor >= slots) {
        uv_idle_stop(h);
        if (publish_finish(s) == -ENOBUFS)
            uv_idle_start(h, publish_tick); /* the queue is full: later */
    }
}

static int publish_start(struct server *s)
{
    server_flush(s);
    int rc;
    if (s->pub != PUB_IDLE || !s->out || !kafka_out_ready(s->out))
        return -EAGAIN;
    rc = kafka_out_begin(s->out);
    if (rc)
        return rc;
    s->pub = PUB_SEGMENTS;
    s->pub_epoch = s->epoch + 1;
    s->pub_full =
        s->next_full || ++s->epochs_since_full >= s->cfg->snapshot.full_every;
    if (s->pub_full)
        s->epochs_since_full = 0;
    s->next_full = false;
    s->pub_since = model_epoch(s->model);
    s->pub_cursor = 0;
    s->pub_segments = 0;
    s->pub_finished = 0;
    s->pub_tracked = false;
    s->pub_started_ms = now_ms();
    /* Changes from now on belong to the next epoch. */
    model_epoch_set(s->model, s->pub_since + 1);
    uv_idle_start(&s->publish, publish_tick);
    return 0;
}

static void on_epoch_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    int rc = publish_start(s);
    if (rc == -EAGAIN || rc == -EBUSY)
        log_debug("epoch skipped: the previous one is still in flight");
    else if (rc)
        log_warn("epoch not started: %s", strerror(-rc));
}

/* ---- model upkeep ------------------------------------------------------ */

static void server_refresh(struct server *s)
{
    server_flush(s);
    double t0 = mono_s();
    model_refresh(s->model);
    metric_observe(s->m.refresh_seconds, mono_s() - t0);
    metric_inc(s->m.refreshes);
    s->folded_since_refresh = 0;
}

static void on_refresh_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    if (s->folded_since_refresh)
        server_refresh(s);
}

/*
 * Refinement re-solves users whose h is stale against the current W.
 * While events flow it is paid for by them: after each loop iteration
 * that folded, one stale user per SERVER_REFINE_EVERY events, so H never
 * goes stale for long and ingest keeps the CPU. But not while nmfd is
 * behind its input (the consumer left messages waiting): catching up makes
 * the segments of every user in the backlog current, refinement only
 * those of users who sent nothing, so the backlog goes first. What
 * refinement is owed meanwhile is kept up to one slice and paid once the
 * backlog is gone; beyond that the idle pass converges the rest, as
 * nmfctl fit does after the whole stream. Once the input has been
 * quiet for SERVER_QUIET_MS the idle handle takes over with the full
 * slice (model.refine_users) every iteration until the model converges.
 * An idle handle keeps the loop from sleeping, so it runs only then:
 * while events flow the loop still sleeps in poll between messages.
 */
static void refine_streaming(struct server *s)
{
    uv_idle_stop(&s->refine);
    uv_timer_start(&s->t_quiet, on_quiet_timer, SERVER_QUIET_MS, 0);
    size_t cap = (size_t)s->cfg->model.refine_users * SERVER_REFINE_EVERY;
    if (s->refine_owed > cap)
        s->refine_owed = cap;
    if (s->in && kafka_in_behind(s->in))
        return;
    size_t budget = s->refine_owed / SERVER_REFINE_EVERY;
    if (!budget || !s->cfg->model.refine_users)
        return;
    if (budget > s->cfg->model.refine_users)
        budget = s->cfg->model.refine_users;
    s->refine_owed -= budget * SERVER_REFINE_EVERY;
    size_t n = model_refine(s->model, budget);
    metric_add(s->m.refined, (double)n);
}

static void on_quiet_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    s->refine_owed = 0;
    if (s->cfg->model.refine_users && !s->stopping)
        uv_idle_start(&s->refine, on_refine);
}

static void on_refine(uv_idle_t *h)
{
    struct server *s = h->data;
    size_t n;
    server_flush(s);
    uint64_t before = model_refreshes(s->model);
    n = model_refine(s->model, s->cfg->model.refine_users);
    metric_add(s->m.refined, (double)n);
    if (n == 0 && model_refreshes(s->model) == before)
        uv_idle_stop(h); /* converged; the next quiet spell starts it again */
}

static void on_expire_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    server_flush(s);
    struct model_stats st;
    size_t n;
    if (!model_params(s->model)->ttl_ms)
        return;
    model_stats(s->model, &st);
    n = model_expire(s->model, st.now);
    if (n)
        log_info("forgot %zu users and items unseen for the ttl", n);
}

/* ---- checkpoints and snapshot files (forked writers) ------------------- */

static int ensure_dir(const char *dir)
{
    char path[4096];
    size_t len = strlen(dir);
    if (!len || len >= sizeof(path))
        return -EINVAL;
    memcpy(path, dir, len + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(path, 0700) && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0700) && errno != EEXIST)
        return -errno;
    return 0;
}

/* Temp files of checkpoint writers that died with a crashed daemon. */
static void remove_stale_temps(const char *dir)
{
    char path[4096];
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "." CHECKPOINT_FILE ".", 11) &&
            strstr(e->d_name, ".tmp")) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (!unlink(path))
                log_info("removed %s, left by an interrupted checkpoint", path);
        }
    closedir(d);
}

static int server_checkpoint_now(struct server *s)
{
    struct checkpoint_meta meta = {s->epoch, s->rejected, s->consumed,
                                   (int64_t)now_ms()};
    size_t n;
    char err[512];
    struct checkpoint_offset *o = parts_offsets(s, &n);
    double t0 = mono_s();
    int rc;
    server_flush(s);

    if (!o)
        return -ENOMEM;
    rc = checkpoint_write(s->cfg->checkpoint.dir, &meta, o, n, s->model, err,
                          sizeof(err));
    free(o);
    if (rc) {
        metric_inc(s->m.ckpt_failures);
        log_err("checkpoint: %s", err);
        return rc;
    }
    metric_inc(s->m.ckpts);
    metric_set(s->m.ckpt_seconds, mono_s() - t0);
    s->ckpt_last_ms = now_ms();
    return 0;
}

static void on_ckpt_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    struct checkpoint_meta meta = {s->epoch, s->rejected, s->consumed,
                                   (int64_t)now_ms()};
    struct checkpoint_offset *o;
    size_t n;
    double t0;
    pid_t pid;
    server_flush(s);

    if (s->ckpt.pid > 0 || s->stopping)
        return;
    o = parts_offsets(s, &n);
    s->ckpt.parts = calloc(s->nparts + 1, sizeof(struct part));
    if (!o || !s->ckpt.parts) {
        free(o);
        free(s->ckpt.parts);
        s->ckpt.parts = NULL;
        return;
    }
    if (s->nparts) /* none before the first assignment: parts is NULL */
        memcpy(s->ckpt.parts, s->parts, s->nparts * sizeof(struct part));
    s->ckpt.nparts = s->nparts;
    t0 = mono_s();
    pid = fork();
    if (pid == 0) {
        /* The child holds the loop's memory as it was at fork(): the model
         * and the offsets agree exactly. It touches nothing but them, and
         * dies with its parent rather than outlive it. */
        char err[512];
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int rc = checkpoint_write(s->cfg->checkpoint.dir, &meta, o, n, s->model,
                                  err, sizeof(err));
        if (rc) {
            char line[600];
            int len = snprintf(line, sizeof(line), "<3>checkpoint: %s\n", err);
            if (write(2, line, (size_t)len) < 0)
                _exit(2);
        }
        _exit(rc ? 1 : 0);
    }
    metric_set(s->m.ckpt_stall, mono_s() - t0);
    free(o);
    if (pid < 0) {
        log_err("checkpoint: fork: %s", strerror(errno));
        metric_inc(s->m.ckpt_failures);
        free(s->ckpt.parts);
        s->ckpt.parts = NULL;
        return;
    }
    s->ckpt.pid = pid;
    s->ckpt.started_ms = now_ms();
}

static void bgjob_start_snapshot(struct server *s)
{
    server_flush(s);
    struct records_epoch ep = {s->epoch, (int64_t)now_ms(),
                               (int64_t)s->cfg->model.refresh_interval_ms};
    pid_t pid;
    if (s->snapfile.pid > 0)
        return; /* the previous file is still being written: skip */
    pid = fork();
    if (pid == 0) {
        int rc = records_snapshot_save(s->model, &ep, s->cfg->snapshot.file);
        _exit(rc ? 1 : 0);
    }
    if (pid < 0) {
        log_warn("snapshot file: fork: %s", strerror(errno));
        return;
    }
    s->snapfile.pid = pid;
    s->snapfile.started_ms = now_ms();
}

static void on_sigchld(uv_signal_t *h, int sig)
{
    struct server *s = h->data;
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (pid == s->ckpt.pid) {
            s->ckpt.pid = 0;
            if (ok) {
                metric_inc(s->m.ckpts);
                metric_set(s->m.ckpt_seconds,
                           (double)(now_ms() - s->ckpt.started_ms) / 1000.0);
                s->ckpt_last_ms = s->ckpt.started_ms;
                /* Kafka's copy of the offsets, for lag monitoring. */
                parts_commit(s, s->ckpt.parts, s->ckpt.nparts);
            } else {
                metric_inc(s->m.ckpt_failures);
                log_err("checkpoint writer failed (status %d)", status);
            }
            free(s->ckpt.parts);
            s->ckpt.parts = NULL;
        } else if (pid == s->snapfile.pid) {
            s->snapfile.pid = 0;
            if (!ok)
                log_warn("snapshot file %s not written", s->cfg->snapshot.file);
        }
    }
}

static void bgjob_wait(struct bgjob *j)
{
    int status;
    if (j->pid > 0)
        waitpid(j->pid, &status, 0);
    j->pid = 0;
    free(j->parts);
    j->parts = NULL;
}

/* ---- systemd, status, reload ------------------------------------------ */

static void on_flush(uv_check_t *h)
{
    struct server *s = h->data;
    server_flush(s);
    if (s->folded_total != s->folded_seen && !s->stopping)
        refine_streaming(s);
    s->folded_seen = s->folded_total;
}

static void on_tick(uv_prepare_t *h)
{
    struct server *s = h->data;
    s->loop_ticks++;
}

static void on_watchdog_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    /* Progress: the loop went round since the last ping, and the model is
     * not wedged in a publish that never ends. */
    if (s->loop_ticks != s->watchdog_ticks &&
        (s->pub == PUB_IDLE || now_ms() - s->pub_started_ms <
                                   10 * s->cfg->snapshot.interval_ms + 60000))
        notify_watchdog();
    s->watchdog_ticks = s->loop_ticks;
}

static void on_status_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    uint64_t now = uv_now(&s->loop);
    int64_t lag = -1;
    struct model_stats st;
    server_flush(s);

    if (s->rate_ms && now > s->rate_ms)
        s->rate = (double)s->rate_events * 1000.0 / (double)(now - s->rate_ms);
    s->rate_events = 0;
    s->rate_ms = now;
    model_stats(s->model, &st);
    if (s->in) {
        struct kafka_in_stats ks;
        kafka_in_stats(s->in, &ks);
        lag = ks.lag;
    }
    notify_status("%.0f events/s, lag %" PRId64 ", epoch %" PRIu64 ", %" PRIu64
                  " users, %" PRIu64 " items, loss %.4f",
                  s->rate, lag, s->epoch, st.users, st.items, s->loss);
}

static void timer_restart(uv_timer_t *t, uint64_t ms)
{
    if (!ms)
        ms = 1;
    uv_timer_start(t, t->timer_cb, ms, ms);
}

static void on_sighup(uv_signal_t *h, int sig)
{
    struct server *s = h->data;
    struct config *fresh = config_new();
    char err[CONFIG_ERR_MAX], changed[1024], restart[1024];

    if (!fresh)
        return;
    notify_reloading();
    if (config_load(fresh, s->opts->config_path, s->opts->sets, s->opts->nsets,
                    err, sizeof(err))) {
        log_err("reload refused, running config unchanged: %s", err);
        config_free(fresh);
        notify_ready();
        return;
    }
    config_reload(s->cfg, fresh, changed, sizeof(changed), restart,
                  sizeof(restart));
    config_free(fresh);
    log_set_level(s->cfg->log.level);
    s->reject_rl.interval_ms = s->cfg->input.reject_log_interval_ms;
    s->reject_rl.burst = s->cfg->input.reject_log_burst;
    timer_restart(&s->t_epoch, s->cfg->snapshot.interval_ms);
    timer_restart(&s->t_ckpt, s->cfg->checkpoint.interval_ms);
    if (s->http && http_reload(s->http, err, sizeof(err)))
        log_err("http: reload refused, running credentials unchanged: %s", err);
    log_notice("configuration reloaded; applied: %s",
               changed[0] ? changed : "(nothing changed)");
    if (restart[0])
        log_warn("changed keys that need a restart: %s", restart);
    notify_ready();
}

/* ---- HTTP views ---------------------------------------------------------- */

static int http_metrics(void *ctx, char **text, size_t *len)
{
    struct server *s = ctx;
    server_flush(s);
    return metrics_render(s->metrics, text, len);
}

static int http_health(void *ctx)
{
    struct server *s = ctx;
    return s->stopping ? -ESHUTDOWN : 0;
}

static int http_ready(void *ctx, const char **why)
{
    struct server *s = ctx;
    if (s->stopping)
        *why = "stopping";
    else if (!s->ready)
        *why = "starting";
    else if (!s->assigned)
        *why = "no partition assigned";
    else if (s->broker_down)
        *why = "brokers unreachable";
    else
        return 0;
    return -EAGAIN;
}

static int http_snapshot(void *ctx, const void **buf, size_t *len,
                         void (**release)(void *), void **ctx2)
{
    struct server *s = ctx;
    server_flush(s);
    if (!s->snap || s->snap->epoch != s->epoch) {
        struct records_epoch ep = {s->epoch, (int64_t)now_ms(),
                                   (int64_t)s->cfg->model.refresh_interval_ms};
        struct snapbuf *b = calloc(1, sizeof(*b));
        if (!b)
            return -ENOMEM;
        if (records_snapshot_encode(s->enc, s->model, &ep)) {
            free(b);
            return -ENOMEM;
        }
        b->data = records_enc_release(s->enc, &b->len);
        b->refs = 1;
        b->epoch = s->epoch;
        snapbuf_release(s->snap);
        s->snap = b;
    }
    s->snap->refs++;
    *buf = s->snap->data;
    *len = s->snap->len;
    *release = snapbuf_release;
    *ctx2 = s->snap;
    return 0;
}

static int http_user(void *ctx, const char *id, char **out)
{
    struct server *s = ctx;
    struct model_user_view u;
    const uint32_t *items;
    const float *values;
    uint32_t n, k = model_params(s->model)->k;
    int64_t idx = model_user_find(s->model, id, strlen(id));
    json_t *h, *prof, *doc;
    server_flush(s);

    if (idx < 0 || model_user_get(s->model, (uint32_t)idx, &u))
        return -ENOENT;
    h = json_array();
    for (uint32_t j = 0; j < k; j++)
        json_array_append_new(h, json_real(u.h[j]));
    prof = json_array();
    if (!model_user_profile(s->model, (uint32_t)idx, &items, &values, &n))
        for (uint32_t i = 0; i < n; i++) {
            size_t len;
            const char *item = model_item_id(s->model, items[i], &len);
            if (item)
                json_array_append_new(
                    prof, json_pack("[s% f]", item, len, (double)values[i]));
        }
    doc = json_pack("{s:s% s:i s:f s:o s:I s:I s:o}", "user", u.id, u.id_len,
                    "segment", (json_int_t)u.segment, "share", (double)u.share,
                    "h", h, "ts", (json_int_t)u.ts, "epoch",
                    (json_int_t)u.changed, "profile", prof);
    if (!doc)
        return -ENOMEM;
    *out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return *out ? 0 : -ENOMEM;
}

static int http_topics(void *ctx, char **out)
{
    struct server *s = ctx;
    server_flush(s);
    json_t *doc = json_pack("{s:I s:i s:o}", "epoch", (json_int_t)s->epoch, "k",
                            (json_int_t)model_params(s->model)->k, "topics",
                            topics_json(s, s->cfg->snapshot.top_items));
    if (!doc)
        return -ENOMEM;
    *out = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return *out ? 0 : -ENOMEM;
}

static int http_recommend(void *ctx, const char *id, const char *n, char **out)
{
    struct server *s = ctx;
    server_flush(s);
    return recommend_json(s->model, id, n, out);
}

static const struct http_provider server_http = {
    http_metrics, http_health, http_ready,     http_snapshot,
    http_user,    http_topics, http_recommend,
};

static void server_on_http_closed(void *arg)
{
    struct server *s = arg;
    s->http = NULL;
    s->closing--;
    server_shutdown_step(s);
}

/* ---- metrics ------------------------------------------------------------- */

static double gauge_users(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.users;
}

static double gauge_items(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.items;
}

static double gauge_loss(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return st.rel_loss;
}

static double gauge_evicted(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return st.evicted_weight;
}

static double gauge_holdout(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return st.holdout_loss;
}

static double gauge_stale(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.stale;
}

static double gauge_model_events(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.events;
}

static double gauge_epoch(void *ctx)
{
    return (double)((struct server *)ctx)->epoch;
}

static double gauge_refining(void *ctx)
{
    struct server *s = ctx;
    return uv_is_active((uv_handle_t *)&s->refine) ? 1 : 0;
}

static double gauge_reseeded(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.reseeded;
}

static double gauge_moved(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.moved;
}

static double gauge_restarts(void *ctx)
{
    struct model_stats st;
    model_stats(((struct server *)ctx)->model, &st);
    return (double)st.restarts;
}

/* The model's own memory by part (model_memory), so that growth with the
 * data tells itself apart from a leak in the process's RSS. Counting the
 * profile entries walks every user, so one reading serves every gauge
 * for a second. */
static const struct model_memory *server_memory(struct server *s)
{
    uint64_t now = uv_now(&s->loop);
    if (!s->mem_ms || now - s->mem_ms >= 1000) {
        model_memory(s->model, &s->mem);
        s->mem_ms = now ? now : 1;
    }
    return &s->mem;
}

static double gauge_mem_users(void *ctx)
{
    return (double)server_memory(ctx)->users;
}

static double gauge_mem_items(void *ctx)
{
    return (double)server_memory(ctx)->items;
}

static double gauge_mem_profiles(void *ctx)
{
    return (double)server_memory(ctx)->profiles;
}

static double gauge_mem_total(void *ctx)
{
    return (double)server_memory(ctx)->total;
}

static double gauge_profile_entries(void *ctx)
{
    return (double)server_memory(ctx)->profile_entries;
}

static double gauge_ckpt_age(void *ctx)
{
    struct server *s = ctx;
    if (!s->ckpt_last_ms)
        return -1;
    return (double)(now_ms() - s->ckpt_last_ms) / 1000.0;
}

static double gauge_lag(void *ctx)
{
    struct server *s = ctx;
    struct kafka_in_stats ks;
    if (!s->in)
        return -1;
    kafka_in_stats(s->in, &ks);
    return (double)ks.lag;
}

static double gauge_rate(void *ctx)
{
    return ((struct server *)ctx)->rate;
}

static double gauge_ready(void *ctx)
{
    const char *why;
    return http_ready(ctx, &why) == 0;
}

static double gauge_out_failed(void *ctx)
{
    struct server *s = ctx;
    struct kafka_out_stats st;
    if (!s->out)
        return 0;
    kafka_out_stats(s->out, &st);
    return (double)st.failed;
}

static void server_metrics_init(struct server *s)
{
    static const double lat[] = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5,
                                 5e-5, 1e-4, 1e-3, 1e-2, 0.1};
    static const double secs[] = {0.001, 0.005, 0.01, 0.025, 0.05,
                                  0.1,   0.25,  0.5,  1,     5};
    struct metrics *m = s->metrics;
    char labels[64];

    s->m.consumed = metrics_counter(m, "nmfd_messages_consumed_total",
                                    "Kafka messages consumed.", NULL);
    s->m.folded = metrics_counter(m, "nmfd_events_folded_total",
                                  "Events folded into the model.", NULL);
    s->m.weight = metrics_counter(m, "nmfd_weight_folded_total",
                                  "Sum of folded event weights.", NULL);
    for (int r = 1; r < EVENT_REASON_COUNT; r++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"",
                 event_reason_name((enum event_reason)r));
        s->m.rejected[r] =
            metrics_counter(m, "nmfd_events_rejected_total",
                            "Events rejected, by reason.", labels);
    }
    s->m.rejected[0] = s->m.rejected[EVENT_MODEL_REFUSED];
    s->m.fold_seconds = metrics_histogram(
        m, "nmfd_fold_seconds",
        "Time to fold one event (mean over a batch of folds).", NULL, lat,
        sizeof(lat) / sizeof(lat[0]));
    s->m.refresh_seconds =
        metrics_histogram(m, "nmfd_refresh_seconds", "Duration of a W refresh.",
                          NULL, secs, sizeof(secs) / sizeof(secs[0]));
    s->m.refreshes = metrics_counter(m, "nmfd_refreshes_total",
                                     "W refreshes on the clock.", NULL);
    s->m.refined = metrics_counter(m, "nmfd_users_refined_total",
                                   "Users re-solved in idle time.", NULL);
    s->m.epochs = metrics_counter(m, "nmfd_epochs_published_total",
                                  "Epochs published.", NULL);
    s->m.epoch_failures =
        metrics_counter(m, "nmfd_epoch_failures_total",
                        "Epochs aborted or not delivered.", NULL);
    s->m.records = metrics_counter(m, "nmfd_records_produced_total",
                                   "Output records produced.", NULL);
    s->m.delivery_errors =
        metrics_counter(m, "nmfd_producer_errors_total",
                        "Output producer errors reported.", NULL);
    s->m.dead_letters = metrics_counter(
        m, "nmfd_dead_letters_total",
        "Rejected messages produced to the dead-letter topic.", NULL);
    s->m.dead_letter_errors = metrics_counter(
        m, "nmfd_dead_letter_errors_total",
        "Rejected messages that could not be dead-lettered.", NULL);
    s->m.consumer_errors = metrics_counter(m, "nmfd_consumer_errors_total",
                                           "Consumer errors reported.", NULL);
    s->m.ckpt_seconds =
        metrics_gauge(m, "nmfd_checkpoint_duration_seconds",
                      "Time the last checkpoint took to write.", NULL);
    s->m.ckpt_stall = metrics_gauge(
        m, "nmfd_checkpoint_stall_seconds",
        "Time ingest stopped for the last checkpoint (fork).", NULL);
    s->m.ckpts = metrics_counter(m, "nmfd_checkpoints_total",
                                 "Checkpoints written.", NULL);
    s->m.ckpt_failures = metrics_counter(m, "nmfd_checkpoint_failures_total",
                                         "Checkpoints that failed.", NULL);
    metrics_gauge_fn(m, "nmfd_checkpoint_age_seconds",
                     "Seconds since the last good checkpoint (-1: none).", NULL,
                     gauge_ckpt_age, s);
    metrics_gauge_fn(m, "nmfd_users", "Live users in the model.", NULL,
                     gauge_users, s);
    metrics_gauge_fn(m, "nmfd_items", "Live items in the model.", NULL,
                     gauge_items, s);
    metrics_gauge_fn(m, "nmfd_relative_loss",
                     "||V - WH||^2 / ||V||^2 for the current W and H, "
                     "evicted mass included.",
                     NULL, gauge_loss, s);
    metrics_gauge_fn(m, "nmfd_evicted_weight",
                     "Profile values evicted at model.profile_max since the "
                     "model began (kept in the loss as residual).",
                     NULL, gauge_evicted, s);
    if (s->cfg->model.params.holdout > 0)
        metrics_gauge_fn(m, "nmfd_holdout_loss",
                         "||V_ho - WH||^2 / ||V_ho||^2 on the held-out pairs "
                         "(model.holdout) for the current W and H.",
                         NULL, gauge_holdout, s);
    metrics_gauge_fn(m, "nmfd_stale_users",
                     "Users not re-solved since the last W refresh.", NULL,
                     gauge_stale, s);
    metrics_gauge_fn(m, "nmfd_epoch", "Last published epoch.", NULL,
                     gauge_epoch, s);
    metrics_gauge_fn(m, "nmfd_refining",
                     "1 while idle time goes to refinement (stale users, "
                     "W refreshes, restarts), 0 once converged.",
                     NULL, gauge_refining, s);
    metrics_gauge_fn(m, "nmfd_model_restarts",
                     "Restarts from an NNDSVDa seed that replaced W.", NULL,
                     gauge_restarts, s);
    metrics_gauge_fn(m, "nmfd_topic_columns_reseeded",
                     "Columns of W re-seeded since start (a restart's or "
                     "seed's k, a resampled dead column's one).",
                     NULL, gauge_reseeded, s);
    metrics_gauge_fn(m, "nmfd_topic_columns_moved",
                     "Re-seeded columns given another topic's index to "
                     "keep the ids' meaning, since start.",
                     NULL, gauge_moved, s);
    static const char cont_help[] =
        "Cosine of topic J to its version in the previous epoch (1: "
        "unchanged; no previous version counts as 1).";
    uint32_t k = s->cfg->model.params.k;
    s->m.cont = calloc(k, sizeof(*s->m.cont));
    for (uint32_t j = 0; s->m.cont && j < k; j++) {
        char num[16];
        snprintf(num, sizeof(num), "%u", j);
        metrics_labels_format(labels, sizeof(labels), "topic", num, NULL);
        s->m.cont[j] =
            metrics_gauge(m, "nmfd_topic_continuity", cont_help, labels);
        metric_set(s->m.cont[j], 1);
    }
    s->m.cont_min = metrics_gauge(
        m, "nmfd_topic_continuity_min",
        "The lowest nmfd_topic_continuity of the last epoch: a topic that "
        "changed meaning shows here.",
        NULL);
    metric_set(s->m.cont_min, 1);
    metrics_gauge_fn(m, "nmfd_model_events",
                     "Events the model holds, since it began (restarts "
                     "included).",
                     NULL, gauge_model_events, s);
    static const char mem_help[] =
        "Bytes the model holds: users (records, h, ids), items (W, B, "
        "ids), profiles (the pools), total (with a restart's work arrays).";
    metrics_gauge_fn(m, "nmfd_model_bytes", mem_help, "part=\"users\"",
                     gauge_mem_users, s);
    metrics_gauge_fn(m, "nmfd_model_bytes", mem_help, "part=\"items\"",
                     gauge_mem_items, s);
    metrics_gauge_fn(m, "nmfd_model_bytes", mem_help, "part=\"profiles\"",
                     gauge_mem_profiles, s);
    metrics_gauge_fn(m, "nmfd_model_bytes", mem_help, "part=\"total\"",
                     gauge_mem_total, s);
    metrics_gauge_fn(m, "nmfd_model_profile_entries",
                     "Profile entries (user, item) the model holds.", NULL,
                     gauge_profile_entries, s);
    metrics_gauge_fn(m, "nmfd_consumer_lag_total",
                     "Messages behind, all partitions (-1: unknown).", NULL,
                     gauge_lag, s);
    metrics_gauge_fn(m, "nmfd_ingest_rate",
                     "Events folded per second, last status period.", NULL,
                     gauge_rate, s);
    metrics_gauge_fn(m, "nmfd_ready", "1 when /readyz answers 200.", NULL,
                     gauge_ready, s);
    metrics_gauge_fn(m, "nmfd_delivery_failures_total",
                     "Output records whose delivery failed.", NULL,
                     gauge_out_failed, s);
    metrics_process_register(m);
}

/* ---- start -----------------------------------------------------------------
 */

/* Whether the operator set a [kafka] key (file or --set). */
static bool kafka_key_set(const struct server *s, const char *key)
{
    char name[256];
    const char *origin;
    snprintf(name, sizeof(name), "kafka.%s", key);
    origin = config_origin(s->cfg, name);
    return origin && strcmp(origin, "default");
}

static int kafka_conf_fill(struct server *s, rd_kafka_conf_t *conf,
                           bool consumer)
{
    char err[512];
    const struct config *c = s->cfg;

    for (size_t i = 0; i < c->kafka.n; i++) {
        /* Given to the output producer alone, by kafka_out_new. */
        if (!strcmp(c->kafka.kv[i].key, "transactional.id"))
            continue;
        if (rd_kafka_conf_set(conf, c->kafka.kv[i].key, c->kafka.kv[i].value,
                              err, sizeof(err)) != RD_KAFKA_CONF_OK) {
            log_err("%s: kafka.%s: %s", c->kafka.kv[i].origin,
                    c->kafka.kv[i].key, err);
            return -EINVAL;
        }
    }
    /* librdkafka waits up to 10 s between reconnects by default; after an
     * outage that delays the resume by as much. The Java client's 1 s. */
    if (!kafka_key_set(s, "reconnect.backoff.max.ms"))
        rd_kafka_conf_set(conf, "reconnect.backoff.max.ms", "1000", err,
                          sizeof(err));
    if (s->broker) {
        /* The embedded broker: its address, and the timings its mock group
         * coordinator needs (KAFKA-MOCK.md), unless configured. */
        rd_kafka_conf_set(conf, "bootstrap.servers",
                          broker_bootstraps(s->broker), err, sizeof(err));
        if (consumer) {
            static const char *tuning[][2] = {
                {"session.timeout.ms", "6000"},
                {"heartbeat.interval.ms", "1000"},
                {"fetch.wait.max.ms", "10"},
                {"fetch.error.backoff.ms", "10"},
                {"queued.min.messages", "1000000"},
            };
            for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
                if (!kafka_key_set(s, tuning[i][0]))
                    rd_kafka_conf_set(conf, tuning[i][0], tuning[i][1], err,
                                      sizeof(err));
        }
    }
    if (consumer) {
        /* A new group reads its topics from the start: events produced
         * before the first start are events too. The checkpoint's offsets
         * win over this whenever there is one. */
        if (!kafka_key_set(s, "auto.offset.reset"))
            rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err,
                              sizeof(err));
        rd_kafka_conf_set(conf, "statistics.interval.ms", "1000", err,
                          sizeof(err));
    }
    return 0;
}

/* The output producer's transactional.id: stable across restarts of one
 * instance, so a restarted nmfd fences its own zombie, and distinct between
 * the instances of a group, which must not fence each other. The group,
 * the host and the state directory name the instance, unless the operator
 * set [kafka] transactional.id. */
static void server_transactional_id(const struct server *s, char *out,
                                    size_t len)
{
    const struct config *c = s->cfg;
    const char *group = "nmfd";
    char host[256] = "localhost";

    for (size_t i = 0; i < c->kafka.n; i++) {
        if (!strcmp(c->kafka.kv[i].key, "transactional.id")) {
            snprintf(out, len, "%s", c->kafka.kv[i].value);
            return;
        }
        if (!strcmp(c->kafka.kv[i].key, "group.id"))
            group = c->kafka.kv[i].value;
    }
    gethostname(host, sizeof(host) - 1);
    snprintf(out, len, "nmfd-%s-%s-%08lx", group, host,
             (unsigned long)crc32(0, (const unsigned char *)c->checkpoint.dir,
                                  (unsigned)strlen(c->checkpoint.dir)));
}

static int write_bootstrap_file(struct server *s)
{
    char path[4096], tmp[4200];
    const char *addr = broker_bootstraps(s->broker);
    FILE *f;

    snprintf(path, sizeof(path), "%s/bootstrap", s->cfg->checkpoint.dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f)
        return -errno;
    fprintf(f, "%s\n", addr);
    if (fclose(f) || rename(tmp, path))
        return -errno;
    return 0;
}

static int item_name_cb(void *ctx, const char *item, size_t ilen,
                        const char *name, size_t nlen)
{
    json_object_setn_new((json_t *)ctx, item, ilen, json_stringn(name, nlen));
    return 0;
}

static int server_load_state(struct server *s)
{
    struct checkpoint_meta meta;
    struct model *m = NULL;
    char err[1024];
    int rc;

    if (s->opts->ignore_checkpoint) {
        log_notice("starting fresh: --ignore-checkpoint");
    } else {
        rc = checkpoint_read(s->cfg->checkpoint.dir, &meta, &s->seek, &s->nseek,
                             &m, err, sizeof(err));
        if (rc == -ENOENT) {
            log_info("no checkpoint in %s: starting fresh",
                     s->cfg->checkpoint.dir);
        } else if (rc) {
            log_err("%s", err);
            log_err("not starting on a state that cannot be trusted; move "
                    "the file away or start with --ignore-checkpoint");
            return rc;
        } else {
            const struct model_params *have = model_params(m);
            if (have->k != s->cfg->model.params.k) {
                log_err("checkpoint has model.k=%u but the configuration "
                        "says %u; start with --ignore-checkpoint to refit",
                        have->k, s->cfg->model.params.k);
                model_free(m);
                return -EINVAL;
            }
            if (have->holdout != s->cfg->model.params.holdout) {
                log_err("checkpoint has model.holdout=%g but the "
                        "configuration says %g; the held-out pairs would "
                        "change: start with --ignore-checkpoint to refit",
                        have->holdout, s->cfg->model.params.holdout);
                model_free(m);
                return -EINVAL;
            }
            s->model = m;
            s->epoch = meta.epoch;
            s->rejected = meta.rejected;
            s->consumed = meta.consumed;
            s->ckpt_last_ms = (uint64_t)meta.written_ms;
            log_notice("checkpoint loaded: epoch %" PRIu64 ", %zu offsets",
                       meta.epoch, s->nseek);
            if (s->opts->embedded_broker && s->nseek) {
                /* Those offsets name positions in logs that died with the
                 * process that hosted them: the embedded broker starts
                 * empty, and seeking there would skip as many new events.
                 * The model stays; the input is read from its start. */
                log_notice("embedded broker: its logs are new, so the "
                           "checkpoint's %zu offsets do not apply; reading "
                           "from the start",
                           s->nseek);
                checkpoint_offsets_free(s->seek, s->nseek);
                s->seek = NULL;
                s->nseek = 0;
            }
        }
    }
    if (!s->model) {
        s->model = model_new(&s->cfg->model.params);
        if (!s->model)
            return -ENOMEM;
    }
    if (epoch_file_read(s) > s->epoch)
        s->epoch = epoch_file_read(s);
    model_epoch_set(s->model, s->epoch + 1);
    return 0;
}

static void server_close_cb(uv_handle_t *h)
{
    (void)h;
}

static void server_stop(struct server *s, int code)
{
    if (code && !s->exit_code)
        s->exit_code = code;
    if (s->stopping)
        return;
    s->stopping = true;
    notify_stopping();
    log_notice("stopping");
    uv_timer_stop(&s->t_epoch);
    uv_timer_stop(&s->t_refresh);
    uv_timer_stop(&s->t_ckpt);
    uv_timer_stop(&s->t_expire);
    uv_timer_stop(&s->t_quiet);
    uv_idle_stop(&s->refine);
    if (s->in)
        kafka_in_pause(s->in);
    /* The final epoch, unless one is in flight (it ends the same way). */
    if (s->pub == PUB_IDLE && (s->exit_code || publish_start(s)))
        server_shutdown_step(s);
}

static void on_stop_signal(uv_signal_t *h, int sig)
{
    struct server *s = h->data;
    if (s->stopping) {
        log_warn("second signal: exiting without a final checkpoint");
        _exit(1);
    }
    log_notice("%s received", strsignal(sig));
    server_stop(s, 0);
}

/* Shutdown in order: final epoch (done by the time we get here), final
 * checkpoint, offsets committed, consumer closed, producer flushed, HTTP
 * closed, handles closed. Each asynchronous close calls back here. */
static void server_shutdown_step(struct server *s)
{
    if (!s->stopping || s->pub != PUB_IDLE || s->closing)
        return;
    if (s->in) {
        bgjob_wait(&s->ckpt);
        if (s->ready && server_checkpoint_now(s) == 0)
            parts_commit(s, s->parts, s->nparts);
        s->closing++;
        kafka_in_close(s->in);
        return;
    }
    if (s->out) {
        struct kafka_out *out = s->out;
        s->out = NULL;
        s->closing++;
        kafka_out_close(out, 5000);
        return;
    }
    if (s->dlq) {
        struct kafka_out *out = s->dlq;
        s->dlq = NULL;
        s->closing++;
        kafka_out_close(out, 5000);
        return;
    }
    if (s->http) {
        s->closing++;
        http_close(s->http, server_on_http_closed, s);
        return;
    }
    bgjob_wait(&s->snapfile);
    uv_handle_t *handles[] = {
        (uv_handle_t *)&s->t_epoch,    (uv_handle_t *)&s->t_refresh,
        (uv_handle_t *)&s->t_ckpt,     (uv_handle_t *)&s->t_status,
        (uv_handle_t *)&s->t_watchdog, (uv_handle_t *)&s->t_expire,
        (uv_handle_t *)&s->t_quiet,    (uv_handle_t *)&s->refine,
        (uv_handle_t *)&s->publish,    (uv_handle_t *)&s->tick,
        (uv_handle_t *)&s->flusher,    (uv_handle_t *)&s->s_term,
        (uv_handle_t *)&s->s_int,      (uv_handle_t *)&s->s_hup,
        (uv_handle_t *)&s->s_chld,
    };
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], server_close_cb);
}

static int server_start(struct server *s)
{
    struct config *c = s->cfg;
    char err[512];
    rd_kafka_conf_t *conf;
    int rc;

    rc = ensure_dir(c->checkpoint.dir);
    if (rc) {
        log_err("checkpoint.dir %s: %s", c->checkpoint.dir, strerror(-rc));
        return rc;
    }
    remove_stale_temps(c->checkpoint.dir);
    if (s->opts->embedded_broker) {
        size_t len = strlen(c->input.topics) + 256;
        char *topics = malloc(len);
        int parts =
            s->opts->embedded_partitions > 0 ? s->opts->embedded_partitions : 4;
        if (!topics)
            return -ENOMEM;
        snprintf(topics, len, "%s,%s", c->input.topics,
                 c->snapshot.topic_segments);
        rc = broker_open(&s->broker, 1, topics, parts, s->opts->embedded_port,
                         err, sizeof(err));
        free(topics);
        if (rc) {
            log_err("embedded broker: %s", err);
            return rc;
        }
        /* Records of one epoch in order: one partition. */
        broker_topic_create(s->broker, c->snapshot.topic_topics, 1);
        broker_topic_create(s->broker, c->snapshot.topic_manifest, 1);
        if (c->input.dead_letter_topic[0])
            broker_topic_create(s->broker, c->input.dead_letter_topic, 1);
        printf("nmfd: embedded broker at %s\n", broker_bootstraps(s->broker));
        fflush(stdout);
        log_notice("embedded broker at %s", broker_bootstraps(s->broker));
        rc = write_bootstrap_file(s);
        if (rc)
            log_warn("%s/bootstrap: %s", c->checkpoint.dir, strerror(-rc));
    }

    rc = server_load_state(s);
    if (rc)
        return rc;
    s->tcont = calloc(model_params(s->model)->k, sizeof(*s->tcont));
    if (!s->tcont)
        return -ENOMEM;
    topics_keep(s);

    {
        struct event_type_weight *tw =
            calloc(c->input.nweights + 1, sizeof(*tw));
        struct event_decoder_conf dc = {
            .format =
                c->input.format == CONFIG_INPUT_MSGPACK ? EVENT_FORMAT_MSGPACK
                : c->input.format == CONFIG_INPUT_JSON  ? EVENT_FORMAT_JSON
                                                        : EVENT_FORMAT_AUTO,
            .field_user = c->input.field_user,
            .field_item = c->input.field_item,
            .field_weight = c->input.field_weight,
            .field_type = c->input.field_type,
            .field_ts = c->input.field_ts,
            .types = tw,
            .ntypes = c->input.nweights,
            .max_events = (uint32_t)c->input.max_events_per_message,
            .max_bytes = (size_t)c->input.max_message_bytes,
            .max_depth = 8,
        };
        const char *why;
        if (!tw)
            return -ENOMEM;
        for (size_t i = 0; i < c->input.nweights; i++) {
            tw[i].type = c->input.weights[i].type;
            tw[i].weight = c->input.weights[i].weight;
        }
        why = event_decoder_conf_check(&dc);
        if (why) {
            free(tw);
            log_err("input: %s", why);
            return -EINVAL;
        }
        s->dec = event_decoder_new(&dc);
        free(tw);
        if (!s->dec)
            return -ENOMEM;
    }

    if (c->snapshot.item_names[0]) {
        s->item_names = json_object();
        rc = csv_item_names(c->snapshot.item_names, item_name_cb, s->item_names,
                            err, sizeof(err));
        if (rc) {
            log_warn("snapshot.item_names: %s; showing ids", err);
            json_decref(s->item_names);
            s->item_names = NULL;
        }
    }

    s->enc = records_enc_new();
    if (!s->enc)
        return -ENOMEM;

    /* Output first, so the first epoch finds it ready. */
    conf = rd_kafka_conf_new();
    if (kafka_conf_fill(s, conf, false)) {
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    {
        static const struct kafka_out_cbs ocbs = {
            server_on_out_ready, server_on_out_error, server_on_kafka_log,
            server_on_out_closed};
        char txid[512];
        server_transactional_id(s, txid, sizeof(txid));
        s->out = kafka_out_new(&s->loop, conf,
                               c->snapshot.transactional ? txid : NULL, &ocbs,
                               s, err, sizeof(err));
        if (!s->out) {
            log_err("output producer: %s", err);
            return -EINVAL;
        }
        if (c->input.dead_letter_topic[0]) {
            conf = rd_kafka_conf_new();
            kafka_conf_fill(s, conf, false);
            s->dlq =
                kafka_out_new(&s->loop, conf, NULL, &ocbs, s, err, sizeof(err));
            if (!s->dlq) {
                log_err("dead-letter producer: %s", err);
                return -EINVAL;
            }
        }
    }

    conf = rd_kafka_conf_new();
    if (kafka_conf_fill(s, conf, true)) {
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    {
        static const struct kafka_in_cbs icbs = {
            server_on_message,  server_on_assign,    server_on_revoke,
            server_on_error,    server_on_kafka_log, server_on_stats,
            server_on_in_closed};
        s->in = kafka_in_new(&s->loop, conf, &icbs, s, err, sizeof(err));
        if (!s->in) {
            log_err("consumer: %s", err);
            return -EINVAL;
        }
        rc = kafka_in_subscribe(s->in, c->input.topics);
        if (rc) {
            log_err("subscribe %s: %s", c->input.topics, strerror(-rc));
            return rc;
        }
    }

    if (c->http.listen[0]) {
        struct http_opts ho;

        config_http_opts(c, &ho);
        rc = http_start(&s->http, &s->loop, c->http.listen, &ho, &server_http,
                        s, err, sizeof(err));
        if (rc) {
            log_err("http.listen %s: %s", c->http.listen, err);
            return rc;
        }
        http_metrics_register(s->http, s->metrics);
        log_notice("http on %s (port %d)", c->http.listen, http_port(s->http));
    }

    s->ready = true;
    notify_ready();
    log_notice("nmfd ready: k=%u, input %s, epoch %" PRIu64,
               model_params(s->model)->k, c->input.topics, s->epoch);
    return 0;
}

int server_run(const struct server_opts *o, struct config *cfg)
{
    struct server *s = calloc(1, sizeof(*s));
    int rc, code;

    if (!s) {
        config_free(cfg);
        return 1;
    }
    s->opts = o;
    s->cfg = cfg;
    s->batch = calloc(1, sizeof(*s->batch));
    if (!s->batch) {
        free(s);
        config_free(cfg);
        return 1;
    }
    s->next_full = true;
    s->reject_rl.interval_ms = cfg->input.reject_log_interval_ms;
    s->reject_rl.burst = cfg->input.reject_log_burst;
    log_set_level(cfg->log.level);
    if (uv_loop_init(&s->loop)) {
        free(s);
        config_free(cfg);
        return 1;
    }
    s->metrics = metrics_new();
    server_metrics_init(s);

    uv_timer_init(&s->loop, &s->t_epoch);
    uv_timer_init(&s->loop, &s->t_refresh);
    uv_timer_init(&s->loop, &s->t_ckpt);
    uv_timer_init(&s->loop, &s->t_status);
    uv_timer_init(&s->loop, &s->t_watchdog);
    uv_timer_init(&s->loop, &s->t_expire);
    uv_timer_init(&s->loop, &s->t_quiet);
    uv_idle_init(&s->loop, &s->refine);
    uv_idle_init(&s->loop, &s->publish);
    uv_prepare_init(&s->loop, &s->tick);
    uv_check_init(&s->loop, &s->flusher);
    uv_signal_init(&s->loop, &s->s_term);
    uv_signal_init(&s->loop, &s->s_int);
    uv_signal_init(&s->loop, &s->s_hup);
    uv_signal_init(&s->loop, &s->s_chld);
    s->t_epoch.data = s->t_refresh.data = s->t_ckpt.data = s;
    s->t_status.data = s->t_watchdog.data = s->t_expire.data = s;
    s->t_quiet.data = s;
    s->refine.data = s->publish.data = s->tick.data = s->flusher.data = s;
    s->s_term.data = s->s_int.data = s->s_hup.data = s->s_chld.data = s;
    uv_signal_start(&s->s_term, on_stop_signal, SIGTERM);
    uv_signal_start(&s->s_int, on_stop_signal, SIGINT);
    uv_signal_start(&s->s_hup, on_sighup, SIGHUP);
    uv_signal_start(&s->s_chld, on_sigchld, SIGCHLD);
    uv_prepare_start(&s->tick, on_tick);
    uv_check_start(&s->flusher, on_flush);

    rc = server_start(s);
    if (rc) {
        s->exit_code = 1;
        s->ready = false;
        server_stop(s, 1);
    } else {
        uint64_t wd = 0;
        uv_timer_start(&s->t_epoch, on_epoch_timer, cfg->snapshot.interval_ms,
                       cfg->snapshot.interval_ms);
        if (cfg->model.refresh_interval_ms) /* 0: by event count only */
            uv_timer_start(&s->t_refresh, on_refresh_timer,
                           cfg->model.refresh_interval_ms,
                           cfg->model.refresh_interval_ms);
        uv_timer_start(&s->t_ckpt, on_ckpt_timer, cfg->checkpoint.interval_ms,
                       cfg->checkpoint.interval_ms);
        uv_timer_start(&s->t_status, on_status_timer, SERVER_STATUS_MS,
                       SERVER_STATUS_MS);
        uv_timer_start(&s->t_expire, on_expire_timer, SERVER_EXPIRE_MS,
                       SERVER_EXPIRE_MS);
        /* A restored model may have stale users: refine once quiet. */
        uv_timer_start(&s->t_quiet, on_quiet_timer, SERVER_QUIET_MS, 0);
        if (notify_watchdog_usec(&wd) < 0) {
            /* systemd asked for a watchdog we cannot understand: running
             * without one would get us killed at its deadline anyway. */
            log_err("WATCHDOG_USEC/WATCHDOG_PID malformed; refusing to run");
            server_stop(s, 1);
        } else if (wd)
            uv_timer_start(&s->t_watchdog, on_watchdog_timer, wd / 2000,
                           wd / 2000);
    }

    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s->loop);
    if (rc)
        log_warn("loop closed with handles open: %s", uv_strerror(rc));

    code = s->exit_code;
    broker_free(s->broker);
    model_free(s->model);
    event_decoder_free(s->dec);
    records_enc_free(s->enc);
    snapbuf_release(s->snap);
    json_decref(s->item_names);
    checkpoint_offsets_free(s->seek, s->nseek);
    metrics_free(s->metrics);
    free(s->m.cont);
    free(s->tprev);
    free(s->tcont);
    free(s->parts);
    free(s->batch);
    config_free(s->cfg);
    free(s);
    if (code == 0)
        log_notice("stopped cleanly");
    return code;
}
