/* publisher.c -- the epoch publisher (DESIGN.md §3).
 *
 * An epoch is one transaction on the output producer: a segment record
 * per user changed since the last epoch (every user in a full epoch),
 * then one topic record per column of W, then the manifest, last, so a
 * reader that sees the manifest of epoch E has every record of E. The
 * segment records go out a slice per loop iteration (an idle handle), so
 * a full epoch of a million users never holds the loop for long; a full
 * producer queue (-ENOBUFS) just waits for the next iteration.
 *
 * The state machine: IDLE -> SEGMENTS (slices) -> COMMITTING -> IDLE.
 * Every way out of an epoch, committed or abandoned, goes through
 * publish_end and then publish_done once, which reports to the owner.
 *
 * Each topic record carries its continuity: the cosine of the topic to its
 * version in the previous epoch's records (DESIGN.md section 1), taken
 * once per epoch as the topic records are made.
 *
 * This file owns the state of the epoch in flight, its encoder, its idle
 * handle, and W as the previous epoch's topic records showed it. It reads
 * the model (and moves its epoch counter on at the start of an epoch) but
 * never changes anything else in it, never touches the input, and never
 * writes files: the owner keeps the last published epoch and what follows
 * from it.
 */
#include "publisher.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "ingest.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "records.h"

#define PUBLISHER_SLICE 20000 /* segment records per loop iteration */

enum publish_state {
    PUB_IDLE,
    PUB_SEGMENTS,   /* producing segment records, a slice per tick */
    PUB_COMMITTING, /* topics and manifest produced, commit in flight */
};

struct publisher {
    struct publisher_conf c;
    publisher_done_cb done;
    void *ctx;
    uv_idle_t idle;
    struct records_enc *enc;

    enum publish_state state;
    uint64_t epoch;
    uint64_t since; /* users changed in epochs >= this */
    bool full;
    bool next_full;
    uint32_t cursor;
    uint64_t segments;
    uint32_t finished; /* topic records (then the manifest) produced */
    uint64_t started_ms;
    uint64_t since_full; /* epochs since the last full one */
    bool tracked;        /* this epoch's continuity is taken */

    /* Topic continuity (DESIGN.md section 1): W as the previous epoch's
     * topic records showed it (tprev_rows x k; before the first, the W the
     * daemon started with; 0 rows: no previous version), and each topic's
     * cosine to it in the last epoch. */
    float *tprev;
    uint32_t tprev_rows;
    double *tcont;

    struct metric *epochs, *failures, *records;
    struct metric **cont, *cont_min;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void publish_done(void *ctx, int status)
{
    struct publisher *p = ctx;
    double took = (double)(now_ms() - p->started_ms) / 1000.0;

    p->state = PUB_IDLE;
    if (status) {
        metric_inc(p->failures);
        log_warn("epoch %" PRIu64 " not published: %s; the next is full",
                 p->epoch, strerror(-status));
        p->next_full = true;
    } else {
        metric_inc(p->epochs);
        log_debug("epoch %" PRIu64 ": %" PRIu64 " segment records%s, %.3f s",
                  p->epoch, p->segments, p->full ? " (full)" : "", took);
    }
    p->done(p->ctx, p->epoch, status);
}

/* The one way out of an epoch: rc 0 commits it, anything else abandons it
 * (the open transaction aborted, when there is one). publish_done runs
 * once either way, now or when the producer has finished. */
static void publish_end(struct publisher *p, int rc)
{
    uv_idle_stop(&p->idle);
    p->state = PUB_COMMITTING;
    if (!rc) {
        rc = kafka_out_commit(p->c.out, publish_done, p);
        if (!rc)
            return;
    } else if (kafka_out_transactional(p->c.out) &&
               kafka_out_abort(p->c.out, publish_done, p) == 0) {
        return;
    }
    publish_done(p, rc);
}

/* partition -1: by key. The topic records and the manifests go to
 * partition 0 whatever the topic's partition count: a reader then sees the
 * epochs in order, and each epoch's topics before its manifest. */
static int publish_record(struct publisher *p, const char *topic,
                          int32_t partition, const char *key, size_t klen)
{
    size_t len;
    const void *data = records_enc_data(p->enc, &len);
    int rc = kafka_out_produce(p->c.out, topic, partition, key, klen, data, len,
                               NULL, 0);
    if (!rc)
        metric_inc(p->records);
    return rc;
}

/* The previous version of W becomes the current one (at start, and as
 * each epoch's topic records are made). Without memory there is no
 * previous version: the next continuity is 1, as at a fresh start. */
static void topics_keep(struct publisher *p)
{
    uint32_t k = model_params(p->c.model)->k;
    uint32_t M = model_item_slots(p->c.model);
    size_t bytes = (size_t)M * k * sizeof(float);
    float *w = M ? realloc(p->tprev, bytes) : p->tprev;
    if (M && !w) {
        p->tprev_rows = 0;
        return;
    }
    p->tprev = w;
    if (M)
        memcpy(p->tprev, model_W(p->c.model), bytes);
    p->tprev_rows = M;
}

/* Each topic's continuity for this epoch's records, once per epoch: the
 * cosine to the previous epoch's version (1 when there is none: nothing
 * was shown that it could differ from), then the gauges. */
static void topics_track(struct publisher *p)
{
    uint32_t k = model_params(p->c.model)->k;
    double lo = 1;
    if (p->tracked)
        return;
    if (p->tprev_rows)
        model_topic_continuity(p->c.model, p->tprev, p->tprev_rows, p->tcont);
    else
        for (uint32_t j = 0; j < k; j++)
            p->tcont[j] = 1;
    topics_keep(p);
    for (uint32_t j = 0; j < k; j++) {
        metric_set(p->cont[j], p->tcont[j]);
        lo = p->tcont[j] < lo ? p->tcont[j] : lo;
    }
    metric_set(p->cont_min, lo);
    p->tracked = true;
}

/* Topic records and the manifest, last. -ENOBUFS: the producer queue is
 * full, call again on a later tick (it goes on where it stopped); any
 * other failure: the epoch is abandoned. 0: the commit is under way. */
static int publish_finish(struct publisher *p)
{
    const struct config *c = p->c.cfg;
    uint32_t k = model_params(p->c.model)->k;
    uint64_t *sizes = calloc(k, sizeof(*sizes));
    double *mass = calloc(k, sizeof(*mass));
    struct records_epoch ep = {
        .epoch = p->epoch,
        .ts = (int64_t)now_ms(),
        .refresh_interval_ms = (int64_t)c->model.refresh_interval_ms};
    struct ingest_stats is;
    char key[RECORDS_KEY_MAX];
    size_t klen;
    int rc = -ENOMEM;

    struct records_group g;
    bool grouped = false;
    if (!sizes || !mass)
        goto out;
    if (p->c.group) {
        /* A member that is not the leader publishes its users' segments
         * only: topics and the manifest describe the whole group. */
        if (!p->c.group(p->c.group_ctx, &g, sizes, mass)) {
            rc = 0;
            goto out;
        }
        grouped = true;
    } else {
        model_segment_sizes(p->c.model, sizes, mass);
    }
    topics_track(p);
    for (uint32_t j = p->finished; j < k; j++) {
        rc = records_topic_encode(p->enc, p->c.model, p->epoch, j,
                                  c->snapshot.top_items, sizes[j], mass[j],
                                  p->tcont[j]);
        if (!rc) {
            klen = records_topic_key(key, j);
            rc = publish_record(p, c->snapshot.topic_topics, 0, key, klen);
        }
        if (rc)
            goto out;
        p->finished = j + 1;
    }
    ingest_stats(p->c.ing, &is);
    struct records_manifest mf = {&ep, p->full, is.rejected, p->segments,
                                  sizes, grouped ? &g : NULL};
    rc = records_manifest_encode(p->enc, p->c.model, &mf);
    if (!rc) {
        klen = records_manifest_key(key, p->epoch);
        rc = publish_record(p, c->snapshot.topic_manifest, 0, key, klen);
    }
out:
    free(sizes);
    free(mass);
    if (rc == -ENOBUFS)
        return rc;
    if (rc)
        log_warn("epoch %" PRIu64 ": %s", p->epoch, strerror(-rc));
    publish_end(p, rc);
    return rc;
}

/* One slice of segment records per loop iteration. */
static void publish_tick(uv_idle_t *h)
{
    struct publisher *p = h->data;
    uint32_t slots = model_user_slots(p->c.model);
    uint32_t k = model_params(p->c.model)->k;
    unsigned budget = PUBLISHER_SLICE;

    while (p->cursor < slots && budget) {
        struct model_user_view u;
        if (model_user_get(p->c.model, p->cursor, &u) ||
            (!p->full && u.changed < p->since)) {
            p->cursor++;
            continue;
        }
        int rc = records_segment_encode(p->enc, p->epoch, k, &u);
        if (!rc)
            rc = publish_record(p, p->c.cfg->snapshot.topic_segments, -1, u.id,
                                u.id_len);
        if (rc == -ENOBUFS)
            return; /* the producer queue is full: next tick */
        if (rc) {
            log_warn("epoch %" PRIu64 ": segment record: %s", p->epoch,
                     strerror(-rc));
            publish_end(p, rc);
            return;
        }
        p->segments++;
        p->cursor++;
        budget--;
    }
    if (p->cursor >= slots) {
        uv_idle_stop(h);
        if (publish_finish(p) == -ENOBUFS)
            uv_idle_start(h, publish_tick); /* the queue is full: later */
    }
}

int publisher_start(struct publisher *p, uint64_t epoch)
{
    int rc;
    if (!p || p->state != PUB_IDLE || !kafka_out_ready(p->c.out))
        return -EAGAIN;
    rc = kafka_out_begin(p->c.out);
    if (rc)
        return rc;
    p->state = PUB_SEGMENTS;
    p->epoch = epoch;
    p->full = p->next_full || ++p->since_full >= p->c.cfg->snapshot.full_every;
    if (p->full)
        p->since_full = 0;
    p->next_full = false;
    p->since = model_epoch(p->c.model);
    /* The W every record of this epoch is computed with. */
    if (p->c.model_version)
        records_enc_set_model_version(p->enc,
                                      p->c.model_version(p->c.group_ctx));
    p->cursor = 0;
    p->segments = 0;
    p->finished = 0;
    p->tracked = false;
    p->started_ms = now_ms();
    /* Changes from now on belong to the next epoch. */
    model_epoch_set(p->c.model, p->since + 1);
    uv_idle_start(&p->idle, publish_tick);
    return 0;
}

bool publisher_idle(const struct publisher *p)
{
    return !p || p->state == PUB_IDLE;
}

uint64_t publisher_started_ms(const struct publisher *p)
{
    return publisher_idle(p) ? 0 : p->started_ms;
}

static void publisher_free(struct publisher *p)
{
    records_enc_free(p->enc);
    free(p->cont);
    free(p->tprev);
    free(p->tcont);
    free(p);
}

struct publisher *publisher_new(uv_loop_t *loop, const struct publisher_conf *c,
                                publisher_done_cb done, void *ctx)
{
    struct publisher *p = calloc(1, sizeof(*p));
    struct metrics *m = c->metrics;
    uint32_t k = model_params(c->model)->k;
    static const char cont_help[] =
        "Cosine of topic J to its version in the previous epoch (1: "
        "unchanged; no previous version counts as 1).";

    if (!p)
        return NULL;
    p->enc = records_enc_new();
    p->tcont = calloc(k, sizeof(*p->tcont));
    p->cont = calloc(k, sizeof(*p->cont));
    if (!p->enc || !p->tcont || !p->cont) {
        publisher_free(p);
        return NULL;
    }
    p->c = *c;
    p->done = done;
    p->ctx = ctx;
    p->next_full = true; /* the first epoch after a start is full */
    uv_idle_init(loop, &p->idle);
    p->idle.data = p;
    p->epochs = metrics_counter(m, "nmfd_epochs_published_total",
                                "Epochs published.", NULL);
    p->failures = metrics_counter(m, "nmfd_epoch_failures_total",
                                  "Epochs aborted or not delivered.", NULL);
    p->records = metrics_counter(m, "nmfd_records_produced_total",
                                 "Output records produced.", NULL);
    for (uint32_t j = 0; j < k; j++) {
        char num[16], labels[64];
        snprintf(num, sizeof(num), "%u", j);
        metrics_labels_format(labels, sizeof(labels), "topic", num, NULL);
        p->cont[j] =
            metrics_gauge(m, "nmfd_topic_continuity", cont_help, labels);
        metric_set(p->cont[j], 1);
    }
    p->cont_min = metrics_gauge(
        m, "nmfd_topic_continuity_min",
        "The lowest nmfd_topic_continuity of the last epoch: a topic that "
        "changed meaning shows here.",
        NULL);
    metric_set(p->cont_min, 1);
    topics_keep(p);
    return p;
}

const double *publisher_continuity(const struct publisher *p)
{
    return p ? p->tcont : NULL;
}

static void publisher_on_close(uv_handle_t *h)
{
    publisher_free(h->data);
}

void publisher_close(struct publisher *p)
{
    if (p)
        uv_close((uv_handle_t *)&p->idle, publisher_on_close);
}
