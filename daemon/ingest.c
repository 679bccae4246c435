/* ingest.c -- the input side of nmfd: consumer -> decoder -> model fold.
 *
 * An event travels one way: the consumer hands a message to
 * ingest_on_message, the decoder turns it into events, each event is
 * folded into the model, and the partition's next offset is remembered.
 * Rejected messages go to the dead-letter topic when there is one. The
 * events of a pass are folded together at its end (on_pass_end), so the
 * rest of the daemon never has to ask for a fold before it reads.
 *
 * This file owns the consumer (struct kafka_in), the decoder, the batch of
 * decoded events, and the table of input partitions with their positions,
 * gauges and commits; the counters of consumed messages and rejected
 * events are its own too. It never reads or changes anything of the model
 * but the fold, never publishes, never writes files: epochs and
 * checkpoints read its positions through ingest_offsets and friends.
 */
#include "ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "checkpoint.h"
#include "event.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"
#include "model.h"

/* One input partition: where the model's next event starts. */
struct part {
    char topic[KAFKA_TOPIC_MAX];
    int32_t partition;
    int64_t next;      /* next offset to fold, -1: nothing folded yet */
    int64_t committed; /* last offset committed to Kafka */
    uint64_t events;   /* events of the partition folded (checkpointed) */
    double weight;     /* their weights */
    bool assigned;
    struct metric *lag;
};

/* Events decoded but not folded yet. The model folds a batch faster than
 * the same events one by one (it fetches the next events' rows ahead), so
 * the consumer's messages are decoded into this buffer, ids copied, and
 * folded when it is full and at the end of the consumer's pass, before
 * the loop runs anything else: outside a pass the buffer is empty, and no
 * reader of the model or the offsets can see an event decoded but not
 * folded. */
#define INGEST_BATCH 256
struct fold_batch {
    size_t n, used;
    struct model_event ev[INGEST_BATCH];
    int rc[INGEST_BATCH];
    uint32_t part[INGEST_BATCH]; /* index in ingest's parts, or UINT32_MAX */
    char ids[INGEST_BATCH * 2 * (MODEL_ID_MAX + 1)];
};

struct ingest_positions {
    size_t n;
    struct part parts[];
};

struct ingest {
    uv_loop_t *loop;
    struct metrics *metrics;
    struct model *model;
    struct event_decoder *dec;
    struct kafka_out *dlq;
    const char *dead_letter_topic;
    struct kafka_in *in;
    struct ingest_cbs cbs;
    void *ctx;
    struct fold_batch batch;

    struct part *parts;
    size_t nparts, capparts, lastpart;
    size_t assigned;
    struct checkpoint_offset *seek; /* offsets from the checkpoint */
    size_t nseek;

    uint64_t consumed; /* survive restarts through the checkpoint */
    uint64_t rejected;
    uint64_t folded; /* since start */

    struct log_ratelimit reject_rl;
    int32_t keyed_parts; /* > 0: events must be on their user's partition */

    struct {
        struct metric *consumed, *folded, *weight,
            *rejected[EVENT_REASON_COUNT];
        struct metric *fold_seconds;
        struct metric *dead_letters, *dead_letter_errors;
    } m;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- partitions and offsets ------------------------------------------ */

/* The partition's record, NULL if this process has none. */
static struct part *part_find(struct ingest *s, const char *topic,
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
static struct part *part_get(struct ingest *s, const char *topic,
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
struct checkpoint_offset *ingest_offsets(struct ingest *s, size_t *n)
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
        o[k].events = s->parts[i].events;
        o[k].weight = s->parts[i].weight;
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

static void parts_commit(struct ingest *s, const struct part *parts, size_t n)
{
    struct kafka_part *l;
    size_t cnt = 0;
    if (!s->in || !n)
        return;
    l = malloc(n * sizeof(*l));
    if (!l) {
        log_warn("offset commit: %s", strerror(ENOMEM));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct part *live = part_get(s, parts[i].topic, parts[i].partition);
        /* Only partitions this member still owns: committing for a
         * partition another member took would move its position. */
        if (!live || !live->assigned || parts[i].next < 0 ||
            parts[i].next == live->committed)
            continue;
        l[cnt++] = (struct kafka_part){parts[i].topic, parts[i].partition,
                                       parts[i].next};
        live->committed = parts[i].next;
    }
    if (cnt) {
        int rc = kafka_in_commit(s->in, l, cnt);
        if (rc)
            log_warn("offset commit: %s", strerror(-rc));
    }
    free(l);
}

struct ingest_positions *ingest_positions_take(struct ingest *s)
{
    struct ingest_positions *p =
        malloc(sizeof(*p) + (s->nparts + 1) * sizeof(struct part));
    if (!p)
        return NULL;
    p->n = s->nparts;
    if (s->nparts) /* none before the first assignment: parts is NULL */
        memcpy(p->parts, s->parts, s->nparts * sizeof(struct part));
    return p;
}

void ingest_positions_commit(struct ingest *s, const struct ingest_positions *p)
{
    if (p)
        parts_commit(s, p->parts, p->n);
}

void ingest_positions_free(struct ingest_positions *p)
{
    free(p);
}

void ingest_commit_now(struct ingest *s)
{
    parts_commit(s, s->parts, s->nparts);
}

/* ---- folding ----------------------------------------------------------- */

struct fold_ctx {
    struct ingest *s;
    enum event_reason first;
    uint64_t folded;
    uint32_t part;     /* index of the message's partition, or UINT32_MAX */
    int32_t partition; /* the message's partition */
};

static void fold_reject(void *arg, enum event_reason r);

static void fold_batch(struct ingest *s)
{
    struct fold_batch *b = &s->batch;
    double t0, weight = 0;
    size_t folded = 0;

    if (!b->n)
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
        if (b->part[i] != UINT32_MAX) {
            s->parts[b->part[i]].events++;
            s->parts[b->part[i]].weight += b->ev[i].weight;
        }
    }
    metric_add(s->m.weight, weight);
    metric_add(s->m.folded, (double)folded);
    s->folded += folded;
    b->n = b->used = 0;
}

static void fold_event(void *arg, const struct event *ev)
{
    struct fold_ctx *fc = arg;
    struct ingest *s = fc->s;
    struct fold_batch *b = &s->batch;
    struct model_event *e;

    if (s->keyed_parts > 0 &&
        kafka_key_partition(ev->user, ev->user_len, s->keyed_parts) !=
            fc->partition) {
        fold_reject(arg, EVENT_WRONG_PARTITION);
        return;
    }
    if (b->n == INGEST_BATCH ||
        b->used + ev->user_len + ev->item_len + 2 > sizeof(b->ids))
        fold_batch(s);
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
    b->part[b->n - 1] = fc->part;
    fc->folded++;
}

static void fold_reject(void *arg, enum event_reason r)
{
    struct fold_ctx *fc = arg;
    struct ingest *s = fc->s;
    uint64_t suppressed = 0;

    s->rejected++;
    metric_inc(s->m.rejected[r]);
    if (fc->first == EVENT_OK)
        fc->first = r;
    if (log_ratelimit_ok(&s->reject_rl, uv_now(s->loop), &suppressed)) {
        if (suppressed)
            log_warn("rejected event: %s (%" PRIu64
                     " more rejections not logged)",
                     event_reason_name(r), suppressed);
        else
            log_warn("rejected event: %s", event_reason_name(r));
    }
}

/* ---- the consumer's callbacks ------------------------------------------ */

static void ingest_on_message(void *ctx, const struct kafka_msg *msg)
{
    struct ingest *s = ctx;
    const char *topic = msg->topic;
    struct part *p = part_get(s, topic, msg->partition);
    struct fold_ctx fc = {s, EVENT_OK, 0,
                          p ? (uint32_t)(p - s->parts) : UINT32_MAX,
                          msg->partition};
    int64_t ts = msg->ts;
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
    if (fc.first != EVENT_OK && s->dlq && s->dead_letter_topic &&
        s->dead_letter_topic[0]) {
        int rc = kafka_out_produce_dead(s->dlq, s->dead_letter_topic, msg,
                                        event_reason_name(fc.first));
        if (rc) {
            metric_inc(s->m.dead_letter_errors);
            log_warn("dead letter for %s/%" PRId32 "/%" PRId64 ": %s", topic,
                     msg->partition, msg->offset, strerror(-rc));
        } else {
            metric_inc(s->m.dead_letters);
        }
    }
}

/* The consumer's pass is over: what it decoded is folded now, before the
 * loop runs any other callback. */
static void ingest_on_pass_end(void *ctx)
{
    fold_batch(ctx);
}

static void ingest_on_assign(void *ctx, struct kafka_part *parts, size_t n)
{
    struct ingest *s = ctx;
    for (size_t i = 0; i < n; i++) {
        struct kafka_part *tp = &parts[i];
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
                    if (p) {
                        p->next = s->seek[j].offset;
                        p->events = s->seek[j].events;
                        p->weight = s->seek[j].weight;
                    }
                }
    }
    /* The owner may restore partitions from elsewhere and move the
     * offsets (a group's state topic). */
    if (s->cbs.on_assign)
        s->cbs.on_assign(s->ctx, parts, n);
    for (size_t i = 0; i < n; i++)
        log_info("assigned %s/%" PRId32 " from offset %" PRId64,
                 parts[i].topic, parts[i].partition, parts[i].offset);
}

static void ingest_on_revoke(void *ctx, const struct kafka_part *parts,
                             size_t n, bool lost)
{
    struct ingest *s = ctx;
    /* What was decoded is folded first: the owner may hand the
     * partitions' state over now. */
    fold_batch(s);
    if (s->cbs.on_revoke)
        s->cbs.on_revoke(s->ctx, parts, n, lost);
    for (size_t i = 0; i < n; i++) {
        struct part *p = part_get(s, parts[i].topic, parts[i].partition);
        if (p && p->assigned) {
            p->assigned = false;
            s->assigned--;
        }
        log_info("%s %s/%" PRId32, lost ? "lost" : "revoked", parts[i].topic,
                 parts[i].partition);
    }
}

static void ingest_on_error(void *ctx, int err, bool fatal, const char *reason)
{
    struct ingest *s = ctx;
    if (s->cbs.on_error)
        s->cbs.on_error(s->ctx, err, fatal, reason);
}

static void ingest_on_log(void *ctx, int level, const char *fac,
                          const char *msg)
{
    struct ingest *s = ctx;
    if (s->cbs.on_log)
        s->cbs.on_log(s->ctx, level, fac, msg);
}

static void ingest_on_stats(void *ctx)
{
    struct ingest *s = ctx;
    struct kafka_lag lag[256];
    size_t n = kafka_in_lag(s->in, lag, 256);
    struct kafka_in_stats ks;
    if (n > 256)
        n = 256;
    kafka_in_stats(s->in, &ks);
    if (s->cbs.on_stats)
        s->cbs.on_stats(s->ctx, &ks);
    for (size_t i = 0; i < n; i++) {
        struct part *p = part_get(s, lag[i].topic, lag[i].partition);
        if (p && p->lag)
            metric_set(p->lag, (double)lag[i].lag);
    }
}

static void ingest_on_closed(void *ctx)
{
    struct ingest *s = ctx;
    s->in = NULL;
    if (s->cbs.on_closed)
        s->cbs.on_closed(s->ctx);
}

/* ---- life -------------------------------------------------------------- */

struct ingest *ingest_new(uv_loop_t *loop, struct metrics *m)
{
    static const double lat[] = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5,
                                 5e-5, 1e-4, 1e-3, 1e-2, 0.1};
    struct ingest *s = calloc(1, sizeof(*s));
    char labels[64];

    if (!s)
        return NULL;
    s->loop = loop;
    s->metrics = m;
    s->reject_rl.interval_ms = 10000;
    s->reject_rl.burst = 10;
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
    s->m.dead_letters = metrics_counter(
        m, "nmfd_dead_letters_total",
        "Rejected messages produced to the dead-letter topic.", NULL);
    s->m.dead_letter_errors = metrics_counter(
        m, "nmfd_dead_letter_errors_total",
        "Rejected messages that could not be dead-lettered.", NULL);
    return s;
}

void ingest_free(struct ingest *s)
{
    if (!s)
        return;
    event_decoder_free(s->dec);
    checkpoint_offsets_free(s->seek, s->nseek);
    free(s->parts);
    free(s);
}

void ingest_restore(struct ingest *s, uint64_t consumed, uint64_t rejected,
                    struct checkpoint_offset *seek, size_t nseek)
{
    s->consumed = consumed;
    s->rejected = rejected;
    checkpoint_offsets_free(s->seek, s->nseek);
    s->seek = seek;
    s->nseek = nseek;
}

void ingest_set_reject_log(struct ingest *s, uint64_t interval_ms,
                           unsigned burst)
{
    s->reject_rl.interval_ms = interval_ms;
    s->reject_rl.burst = burst;
}

int ingest_start(struct ingest *s, const struct ingest_conf *c,
                 struct kafka_conf *conf, const char *topics,
                 const struct ingest_cbs *cbs, void *ctx, char *err,
                 size_t errlen)
{
    static const struct kafka_in_cbs icbs = {
        ingest_on_message, ingest_on_assign, ingest_on_revoke,
        ingest_on_error,   ingest_on_log,    ingest_on_stats,
        ingest_on_closed,  ingest_on_pass_end};
    char why[512];
    int rc;

    s->model = c->model;
    s->dec = c->dec;
    s->dlq = c->dlq;
    s->dead_letter_topic = c->dead_letter_topic;
    s->cbs = *cbs;
    s->ctx = ctx;
    s->in = kafka_in_new(s->loop, conf, &icbs, s, why, sizeof(why));
    if (!s->in) {
        snprintf(err, errlen, "consumer: %s", why);
        return -EINVAL;
    }
    rc = kafka_in_subscribe(s->in, topics);
    if (rc)
        snprintf(err, errlen, "subscribe %s: %s", topics, strerror(-rc));
    return rc;
}

int ingest_partition_count(struct ingest *s, const char *topic)
{
    if (!s->in)
        return -ENOTCONN;
    return kafka_in_partition_count(s->in, topic, 5000);
}

void ingest_set_keyed(struct ingest *s, int32_t nparts)
{
    s->keyed_parts = nparts;
}

int ingest_part_get(struct ingest *s, const char *topic, int32_t partition,
                    int64_t *next, uint64_t *events, double *weight)
{
    struct part *p = part_find(s, topic, partition);
    if (!p)
        return -ENOENT;
    *next = p->next;
    *events = p->events;
    *weight = p->weight;
    return 0;
}

int ingest_part_set(struct ingest *s, const char *topic, int32_t partition,
                    int64_t next, uint64_t events, double weight)
{
    /* Forgetting a partition never seen since the start: only its
     * checkpoint entry goes. */
    struct part *p = next < 0 && !events ? part_find(s, topic, partition)
                                         : part_get(s, topic, partition);
    if (!p && !(next < 0 && !events))
        return -ENOMEM;
    if (p) {
        p->next = next;
        p->events = events;
        p->weight = weight;
    }
    /* A checkpoint's offset for it no longer says what the model holds. */
    for (size_t j = 0; j < s->nseek; j++)
        if (s->seek[j].partition == partition &&
            !strcmp(s->seek[j].topic, topic)) {
            free(s->seek[j].topic);
            s->seek[j] = s->seek[--s->nseek];
            j--;
        }
    return 0;
}

void ingest_stats(const struct ingest *s, struct ingest_stats *st)
{
    st->consumed = s->consumed;
    st->rejected = s->rejected;
    st->folded = s->folded;
    st->assigned = s->assigned;
}

bool ingest_behind(const struct ingest *s)
{
    return s->in && kafka_in_behind(s->in);
}

int64_t ingest_lag(const struct ingest *s)
{
    struct kafka_in_stats ks;
    if (!s->in)
        return -1;
    kafka_in_stats(s->in, &ks);
    return ks.lag;
}

bool ingest_running(const struct ingest *s)
{
    return s->in != NULL;
}

void ingest_pause(struct ingest *s)
{
    if (s->in)
        kafka_in_pause(s->in);
}

void ingest_close(struct ingest *s)
{
    if (s->in)
        kafka_in_close(s->in);
}
