/* cluster.c -- a group of nmfd processes sharing one W (docs/design.md
 * section 8).
 *
 * Kafka is the whole of the distributed machinery; nothing here elects,
 * pings or counts members by itself:
 *  - the input's consumer group gives each member its partitions, and a
 *    member owns the users whose key lands there (ingest rejects an event
 *    whose user belongs to another partition);
 *  - every member sends, each cluster.interval, the exact statistics of
 *    each of its partitions (online/group.c) to the stats topic: a record
 *    replaces the partition's previous one (whole, or, between whole
 *    ones, the rows of B that changed on top of the record it names), so
 *    nothing is summed twice and a partition whose owner died keeps its
 *    last exact figures until the next owner sends its own;
 *  - the leader is whichever member a second consumer group ("<group>
 *    .leader", one partition) assigns the stats topic to. It reads every
 *    partition's latest record, sums them into a model that holds no
 *    users, refreshes W there (HALS, normalisation, topic identity, as a
 *    single process does) and publishes each version to the model topic;
 *    its once-offs, the seed of the first W and the restart trial, run
 *    on libuv's pool, not on the loop (struct trial);
 *  - every member, the leader too, follows the model topic and folds
 *    against the newest W (model_w_install);
 *  - a partition's users' state goes to the state topic, to the same
 *    partition number, in chunks followed by a marker naming the input
 *    offset it is complete up to: with every checkpoint, and when the
 *    partition is revoked. A member assigned partitions reads them back
 *    (all of one assignment together, on one reader made at the start),
 *    takes each one's last complete state unless its own checkpoint is
 *    further on, and resumes the input at that offset: nothing folded
 *    twice, nothing lost, whoever died when. Markers, not transactions: the
 *    broker the tests run on does not hide aborted transactions.
 *
 * It owns the group's clients (one producer, the model follower, the
 * leader's consumer, the state topic's reader), the timer, the leader's
 * model and the partitions' statistics. It never folds: the fold is
 * ingest's.
 */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "ingest.h"
#include "kafka_in.h"
#include "kafka_out.h"
#include "kafka_read.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "records.h"

/* A full round of statistics at least this many intervals apart, even
 * when nothing changed: a new leader has every partition within it. */
#define CLUSTER_FULL_EVERY 10
/* A partition's statistics go whole at least every CLUSTER_WHOLE_EVERY
 * of its records and CLUSTER_WHOLE_INTERVALS cluster.intervals (an idle
 * member sends a record every CLUSTER_FULL_EVERY), the others carrying
 * only the rows that changed (struct sent_rows): a leader that missed
 * one has exact sums again by then. Every record after a rebalance of the
 * leader's group (a new leader, a member joining) is whole too: a new
 * leader reads the stats topic from what the broker still keeps, which
 * may begin after the partition's last whole record. */
#define CLUSTER_WHOLE_EVERY 10
#define CLUSTER_WHOLE_INTERVALS 30
/* The share of the loop's work the group's rounds may take (on_tick),
 * and how many times the wait that gives an idle loop waits on the clock
 * instead. */
#define CLUSTER_ROUND_SHARE 0.2
#define CLUSTER_ROUND_IDLE  4
/* Bytes of users per state chunk (the broker's message limit is 1 MB by
 * default). */
#define CLUSTER_CHUNK_BYTES (512 * 1024)
/* Metadata requests at start. */
#define CLUSTER_META_MS 10000
/* The loop's stall probe: a timer due this often, its lateness the
 * longest the loop went without coming back to its timers. */
#define CLUSTER_PROBE_MS 20

enum { CL_STATS, CL_MODEL, CL_STATE, CL_NREJ };
static const char *const rej_names[CL_NREJ] = {"stats", "model", "state"};

/* What a partition's last record said of B_p: its non-zero rows by item
 * slot, ascending, each with a hash of its values and one of its item's
 * id. The next record carries only the rows whose hash differs, the
 * new ones, and a row of zeros for each that went; a slot that another
 * item took (its id's hash differs) or that no item holds any longer
 * makes it whole, a delta having no way to name the item that left. A
 * 64-bit hash of the row's bits stands for the row (16 bytes a row
 * against k x 8): two different rows hashing alike would leave the
 * leader's row stale until the next whole record. */
struct sent_rows {
    uint32_t n, cap;
    uint32_t *slot;
    uint64_t *hash, *idh;
    uint64_t seq;        /* of the record they were in */
    unsigned since_whole; /* records since the last whole one */
    double whole_at;     /* mono_s() of the last whole one */
    bool valid;          /* false: the next record is whole */
};

struct cluster {
    uv_loop_t *loop;
    struct cluster_conf c;
    char owner[200]; /* this member's name in its records */
    const char *topic; /* the input topic */
    int32_t nparts;
    uint32_t k;

    struct kafka_out *out;
    struct kafka_in *win; /* the model topic */
    struct kafka_in *lin; /* the stats topic, in the leader's group */
    struct kafka_reader *reader; /* the state topic, at assignments */
    /* The reader is the loop's at an assignment and the trial's worker's
     * (read_others) while it reads: one at a time. */
    pthread_mutex_t reader_lock;
    uv_timer_t timer;
    uv_timer_t probe; /* the loop's stall (on_probe) */
    double probe_due; /* mono_s() the probe is due at */
    double stall_max; /* the longest lateness since the last round */
    double probe_cpu; /* the loop thread's cpu_s() at the last probe */
    struct records_enc *enc;
    unsigned closing;
    void (*done)(void *);
    void *done_arg;
    bool stopping;

    /* Following W. */
    uint64_t version;      /* installed */
    uint64_t seen_version; /* newest seen on the topic */
    void *w_pending;       /* the newest record of the last pass */
    size_t w_pending_len;
    void *w_last; /* the installed record (a new leader starts from it) */
    size_t w_last_len;
    int64_t w_ts; /* its statistics' time, ms */

    /* Owning partitions. */
    bool *owned;
    /* Room for a drop_parts at a revoke or the first assignment: the
     * partitions going, and their users dropped (nparts each). */
    int32_t *going;
    uint64_t *gone;
    bool assigned_once;
    uint64_t seq;
    uint64_t sent_work, sent_events;
    /* The version every user here was last solved against (the
     * installed one once none is stale), and the one last sent. */
    uint64_t solved_version, sent_solved;
    /* By partition, what its last record said of B_p (sent_rows); and
     * scratch for the round's rows (item slots, cap bcap / k). */
    struct sent_rows *sent;
    uint32_t *nslot, *drows;
    uint64_t *nhash, *nidh;
    size_t ncap;
    /* The item slots a partition's users hold (stats_touched), sorted,
     * and a stamp per slot marking them; B is zero outside them. */
    uint32_t *touch, *mark, stamp;
    unsigned since_full;
    double *A, *B;
    size_t bcap; /* doubles in B */
    /* The owned partitions' users, sorted by partition in one pass per
     * round of statistics: those of p at order[first[p]..first[p + 1]). */
    uint32_t *order, *upart; /* upart[u]: u's partition, if owned */
    size_t ocap;             /* slots of order and upart */
    size_t *first;           /* nparts + 1, then nparts of scratch */

    double round_s;    /* the last round's CPU seconds */
    double restart_s;  /* of which the seed's or a restart's, once-offs */
    double round_end, round_end_cpu; /* mono_s(), cpu_s() at its end */

    /* Leading. */
    bool leader;
    struct model *lead;
    struct records_stats **ps; /* each partition's latest, nparts */
    bool stats_new;
    uint64_t published;
    int64_t newest_stats_ts;
    bool seeded;   /* the first W was tried from the warm-up */
    uint64_t pub_events; /* the group's events at the last version */
    uint64_t restart_events; /* the group's events at the last restart */
    double restart_retry;    /* mono_s() before which no restart is tried */
    /* A W that replaced the group's wholesale (the seed, a restart):
     * no refresh until every partition's statistics are of it. */
    uint64_t barrier;
    unsigned barrier_rounds;
    unsigned idle_rounds;    /* refreshes since the events last changed */
    uint64_t round_events;   /* the group's events at the last refresh */
    double pub_loss;     /* and its relative loss */
    /* The seed or restart trial under way on libuv's pool (struct
     * trial), NULL when none; lead_gen counts the leader's models, so
     * a trial begun for one is never installed into the next. */
    struct trial *trial;
    uint64_t lead_gen;
    float *w_prev; /* the W of the last version published */
    size_t w_prev_n;

    bool rej_logged[CL_NREJ];
    struct {
        struct metric *leader, *version, *version_lag, *w_age, *owned,
            *restore_seconds, *restored_users, *restored_bytes,
            *rejected[CL_NREJ], *stats_sent, *w_published, *w_refused,
            *members, *state_written, *handovers, *round_seconds,
            *stall, *stall_max, *busy_max, *stats_bytes, *stats_gaps,
            *rows_sent, *rows_kept;
    } m;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* This thread's CPU seconds: what a round costs, whatever else the host
 * runs. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int32_t part_of(void *ctx, const char *id, size_t len)
{
    const struct cluster *cl = ctx;
    return kafka_key_partition(id, len, cl->nparts);
}

/* A record from elsewhere that must not be used: counted, logged once per
 * kind (a misconfigured neighbour would otherwise flood the log). */
static void reject(struct cluster *cl, int what, const char *why)
{
    metric_inc(cl->m.rejected[what]);
    if (!cl->rej_logged[what]) {
        cl->rej_logged[what] = true;
        log_warn("cluster: %s record refused: %s (counted in "
                 "nmfd_cluster_rejected_total; logged once)",
                 rej_names[what], why ? why : "malformed");
    }
}

/* ---- following W ------------------------------------------------------ */

static int install_w(struct cluster *cl, struct model *into, const void *buf,
                     size_t len, uint64_t *version, int64_t *ts)
{
    const char *why = NULL;
    struct records_snapshot *s = records_snapshot_read(buf, len, &why);
    int rc = -EBADMSG;

    if (!s) {
        reject(cl, CL_MODEL, why);
        return -EBADMSG;
    }
    if (strcmp(s->cluster, cl->c.group_id) || !s->model_version) {
        reject(cl, CL_MODEL, "another group's W, or no model_version");
        goto out;
    }
    if (s->k != cl->k) {
        reject(cl, CL_MODEL, "a W of another k");
        goto out;
    }
    rc = model_w_install(into, s->nitems, (const char *const *)s->items,
                         s->item_lens, s->W);
    if (rc) {
        reject(cl, CL_MODEL, strerror(-rc));
        goto out;
    }
    *version = s->model_version;
    *ts = s->ts;
out:
    records_snapshot_free(s);
    return rc;
}

static void win_message(void *ctx, const struct kafka_msg *msg)
{
    struct cluster *cl = ctx;
    void *copy = malloc(msg->len ? msg->len : 1);
    if (!copy) {
        log_warn("cluster: W record: %s", strerror(ENOMEM));
        return;
    }
    memcpy(copy, msg->payload, msg->len);
    free(cl->w_pending);
    cl->w_pending = copy;
    cl->w_pending_len = msg->len;
}

/* Only the newest version of a pass is installed: a member catching up
 * re-solves its users once, not once per version. */
static void win_pass_end(void *ctx)
{
    struct cluster *cl = ctx;
    uint64_t v = 0;
    int64_t ts = 0;
    if (!cl->w_pending)
        return;
    if (install_w(cl, cl->c.model, cl->w_pending, cl->w_pending_len, &v,
                  &ts) == 0) {
        if (v > cl->seen_version)
            cl->seen_version = v;
        cl->version = v;
        cl->w_ts = ts;
        free(cl->w_last);
        cl->w_last = cl->w_pending;
        cl->w_last_len = cl->w_pending_len;
        cl->w_pending = NULL;
        metric_set(cl->m.version, (double)v);
        metric_set(cl->m.w_age, (double)(wall_ms() - ts) / 1000.0);
        log_debug("cluster: W version %" PRIu64 " installed", v);
        if (cl->c.on_w)
            cl->c.on_w(cl->c.ctx);
    } else {
        metric_inc(cl->m.w_refused);
        free(cl->w_pending);
        cl->w_pending = NULL;
    }
}

/* ---- leading ----------------------------------------------------------- */

static void trial_cancel(struct cluster *cl);

static void lead_drop(struct cluster *cl)
{
    trial_cancel(cl);
    cl->lead_gen++;
    model_free(cl->lead);
    cl->lead = NULL;
    free(cl->w_prev);
    cl->w_prev = NULL;
    cl->w_prev_n = 0;
    for (int32_t p = 0; cl->ps && p < cl->nparts; p++) {
        records_stats_free(cl->ps[p]);
        cl->ps[p] = NULL;
    }
    cl->stats_new = false;
}

/* Every partition's next record whole (struct sent_rows). */
static void stats_whole_all(struct cluster *cl)
{
    for (int32_t p = 0; cl->sent && p < cl->nparts; p++)
        cl->sent[p].valid = false;
}

static void lin_assign(void *ctx, struct kafka_part *parts, size_t n)
{
    struct cluster *cl = ctx;
    /* A rebalance of the leader's group, on every member: perhaps a new
     * leader, which needs whole records. */
    stats_whole_all(cl);
    if (!n)
        return;
    lead_drop(cl);
    struct model_params p = cl->c.cfg->model.params;
    cl->lead = model_new(&p);
    if (!cl->lead) {
        log_err("cluster: leader: %s", strerror(ENOMEM));
        return;
    }
    /* The group's W goes on from the newest version this member has. */
    uint64_t v;
    int64_t ts;
    if (cl->w_last)
        install_w(cl, cl->lead, cl->w_last, cl->w_last_len, &v, &ts);
    cl->published = cl->seen_version;
    cl->seeded = false;
    cl->pub_events = 0;
    cl->pub_loss = 1;
    cl->restart_events = 0;
    cl->restart_retry = 0;
    cl->barrier = 0;
    /* Every partition's latest statistics are somewhere in what the topic
     * keeps: read it all (each record replaces the one before). */
    for (size_t i = 0; i < n; i++)
        parts[i].offset = KAFKA_OFFSET_BEGINNING;
    cl->leader = true;
    metric_set(cl->m.leader, 1);
    log_notice("cluster: this member leads group %s (W from version %" PRIu64
               ")",
               cl->c.group_id, cl->published);
}

static void lin_revoke(void *ctx, const struct kafka_part *parts, size_t n,
                       bool lost)
{
    struct cluster *cl = ctx;
    (void)parts;
    (void)lost;
    stats_whole_all(cl);
    if (!n || !cl->leader)
        return;
    lead_drop(cl);
    cl->leader = false;
    metric_set(cl->m.leader, 0);
    log_notice("cluster: this member no longer leads");
}

static int slot_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* s's rows by the leader's item slot (model_item_ensure), ascending, in
 * s->slot and s->B (its ids are not kept); with o, the record s updates
 * (a delta), o's rows that s does not carry are added, and the rows of
 * zeros s carries (items that left) dropped. 0 or -ENOMEM (s unchanged
 * in what matters: the caller drops it). */
static int stats_rows_take(struct cluster *cl, const struct records_stats *o,
                           struct records_stats *s)
{
    const uint32_t k = cl->k, n = s->nitems;
    const size_t row = (size_t)k * sizeof(double);
    uint64_t *key = malloc(((size_t)n + 1) * sizeof(*key));
    uint32_t cap = n + (o ? o->nitems : 0), m = 0;
    uint32_t *slot = malloc(((size_t)cap + 1) * sizeof(*slot));
    double *B = malloc(((size_t)cap + 1) * row);
    int rc = -ENOMEM;

    if (!key || !slot || !B)
        goto out;
    /* slot << 32 | index: sorted by slot, ids being distinct. */
    for (uint32_t i = 0; i < n; i++) {
        int64_t r = model_item_ensure(cl->lead, s->items[i], s->item_lens[i]);
        if (r < 0)
            goto out;
        key[i] = (uint64_t)r << 32 | i;
    }
    qsort(key, n, sizeof(*key), slot_cmp);
    uint32_t a = 0, b = 0, na = o ? o->nitems : 0;
    while (a < na || b < n) {
        uint32_t sa = a < na ? o->slot[a] : UINT32_MAX;
        uint32_t sb = b < n ? (uint32_t)(key[b] >> 32) : UINT32_MAX;
        if (sa < sb) {
            slot[m] = sa;
            memcpy(B + (size_t)m++ * k, o->B + (size_t)a++ * k, row);
            continue;
        }
        const double *r = s->B + (size_t)(key[b] & 0xffffffffu) * k;
        bool zero = true;
        for (uint32_t j = 0; j < k && zero; j++)
            zero = r[j] == 0;
        if (!zero) {
            slot[m] = sb;
            memcpy(B + (size_t)m++ * k, r, row);
        }
        b++;
        if (sa == sb)
            a++;
    }
    free(s->items);
    free(s->item_lens);
    s->items = NULL;
    s->item_lens = NULL;
    free(s->B);
    s->B = B;
    free(s->slot);
    s->slot = slot;
    s->nitems = m;
    B = NULL;
    slot = NULL;
    rc = 0;
out:
    free(key);
    free(slot);
    free(B);
    return rc;
}

static void lin_message(void *ctx, const struct kafka_msg *msg)
{
    struct cluster *cl = ctx;
    const char *why = NULL;
    if (!cl->leader)
        return;
    struct records_stats *s = records_stats_read(msg->payload, msg->len, &why);
    if (!s) {
        reject(cl, CL_STATS, why);
        return;
    }
    if (strcmp(s->cluster, cl->c.group_id)) {
        reject(cl, CL_STATS, "statistics of another group");
    } else if (s->k != cl->k) {
        reject(cl, CL_STATS, "statistics of another k");
    } else if (s->part >= cl->nparts) {
        reject(cl, CL_STATS, "a partition the input does not have");
    } else if (!cl->lead) {
        /* Out of memory at the assignment: nothing to hold them in. */
    } else if (s->base && (!cl->ps[s->part] ||
                           strcmp(cl->ps[s->part]->owner, s->owner) ||
                           cl->ps[s->part]->seq != s->base)) {
        /* Rows changed since a record this leader does not hold (it
         * missed one, or began after it): the partition's figures stay
         * as they are until its next whole record. */
        metric_inc(cl->m.stats_gaps);
    } else if (stats_rows_take(cl, s->base ? cl->ps[s->part] : NULL, s)) {
        log_warn("cluster: leader: %s", strerror(ENOMEM));
    } else {
        records_stats_free(cl->ps[s->part]);
        cl->ps[s->part] = s;
        cl->stats_new = true;
        if (s->ts > cl->newest_stats_ts)
            cl->newest_stats_ts = s->ts;
        return;
    }
    records_stats_free(s);
}

/* The leader's W out as the next version, with the group's totals. */
static int lead_publish(struct cluster *cl, int64_t ts, uint64_t events,
                        double weight, double loss)
{
    struct model *lm = cl->lead;
    const uint32_t k = cl->k;
    struct records_epoch ep = {
        .epoch = cl->published + 1,
        .ts = ts,
        .model_version = cl->published + 1,
        .cluster = cl->c.group_id,
        .group_totals = true,
        .events = events,
        .weight_sum = weight,
        .loss = loss,
    };
    int rc = records_snapshot_encode(cl->enc, lm, &ep);
    size_t len;
    const void *data = records_enc_data(cl->enc, &len);
    if (!rc)
        rc = kafka_out_produce(cl->out, cl->c.cfg->cluster.model_topic, 0, "w",
                               1, data, len, NULL, 0);
    if (rc) {
        log_warn("cluster: W version %" PRIu64 " not published: %s",
                 ep.model_version, strerror(-rc));
        return rc;
    }
    cl->published = ep.model_version;
    if (cl->published > cl->seen_version)
        cl->seen_version = cl->published;
    metric_inc(cl->m.w_published);
    size_t wn = (size_t)model_item_slots(lm) * k;
    float *keep = realloc(cl->w_prev, (wn ? wn : 1) * sizeof(float));
    if (keep) {
        memcpy(keep, model_W(lm), wn * sizeof(float));
        cl->w_prev = keep;
        cl->w_prev_n = wn;
    }
    return 0;
}

/* A model of its own holding copies of this member's users (the
 * leader's sample of the group). NULL out of memory; *n users. */
static struct model *sample_model(struct cluster *cl, uint32_t *nusers)
{
    const struct model *m = cl->c.model;
    struct model_params p = cl->c.cfg->model.params;
    struct model *t = model_new(&p);
    uint32_t U = model_user_slots(m), n = 0;
    int rc = 0;

    if (!t)
        return NULL;
    for (uint32_t u = 0; u < U; u++) {
        struct model_user_view v;
        const uint32_t *it;
        const float *va;
        uint32_t np;
        if (model_user_get(m, u, &v) || model_user_profile(m, u, &it, &va, &np))
            continue;
        const char **iid = malloc((np + 1) * sizeof(*iid));
        size_t *il = malloc((np + 1) * sizeof(*il));
        if (!iid || !il) {
            free(iid);
            free(il);
            goto out;
        }
        for (uint32_t q = 0; q < np; q++)
            iid[q] = model_item_id(m, it[q], &il[q]);
        struct model_user_state st = {.id = v.id, .id_len = v.id_len,
                                      .t = v.ts, .h = v.h, .n = np,
                                      .items = iid, .item_lens = il,
                                      .values = va};
        model_user_sums(m, u, &st.loss, &st.vnorm, &st.evicted);
        rc = model_user_put(t, &st);
        free(iid);
        free(il);
        if (rc)
            goto out;
        n++;
    }
    *nusers = n;
    return t;
out:
    model_free(t);
    return NULL;
}

/* Installs from's W into to, row by item id (model_w_install). */
static int copy_w(struct model *to, const struct model *from, uint32_t k)
{
    uint32_t M = model_item_slots(from), n = 0;
    const char **ids = malloc((M + 1) * sizeof(*ids));
    size_t *lens = malloc((M + 1) * sizeof(*lens));
    float *W = malloc(((size_t)M * k + 1) * sizeof(float));
    int rc = -ENOMEM;
    if (!ids || !lens || !W)
        goto out;
    for (uint32_t i = 0; i < M; i++) {
        ids[n] = model_item_id(from, i, &lens[n]);
        if (!ids[n])
            continue;
        memcpy(W + (size_t)n * k, model_W(from) + (size_t)i * k,
               k * sizeof(float));
        n++;
    }
    rc = model_w_install(to, n, ids, lens, W);
out:
    free(ids);
    free(lens);
    free(W);
    return rc;
}


/* ---- reading the state topic ------------------------------------------ */

/* What a partition's state topic holds: the records of the generation
 * being read, and the last complete one. */
struct scan_buf {
    uint64_t gen;
    uint32_t n, cap;
    void **rec;
    size_t *len;
};

struct scan {
    struct cluster *cl;
    int32_t p;
    struct scan_buf cur, best;
    struct records_state marker;
    bool have;
    /* Off the loop (a trial's read): refusals counted here, reported
     * by the loop, not through reject(). */
    bool quiet;
    unsigned refused;
};

static void scan_buf_free(struct scan_buf *b)
{
    for (uint32_t i = 0; i < b->n; i++)
        free(b->rec[i]);
    free(b->rec);
    free(b->len);
    memset(b, 0, sizeof(*b));
}

static int scan_message(void *ctx, const struct kafka_msg *msg)
{
    struct scan *sc = ctx;
    struct cluster *cl = sc->cl;
    struct records_state h;
    const char *why = NULL;

    if (records_state_head(msg->payload, msg->len, &h, &why)) {
        if (sc->quiet)
            sc->refused++;
        else
            reject(cl, CL_STATE, why);
        return 0;
    }
    if (strcmp(h.cluster, cl->c.group_id) || h.k != cl->k || h.part != sc->p) {
        if (sc->quiet)
            sc->refused++;
        else
            reject(cl, CL_STATE,
                   "state of another group, another k or another partition");
        return 0;
    }
    if (h.marker) {
        if (h.gen == sc->cur.gen && h.chunk == sc->cur.n && h.chunk) {
            scan_buf_free(&sc->best);
            sc->best = sc->cur;
            memset(&sc->cur, 0, sizeof(sc->cur));
            sc->marker = h;
            sc->have = true;
        }
        return 0;
    }
    if (h.gen != sc->cur.gen || h.chunk != sc->cur.n) {
        /* A new generation (or one whose chunks came out of order, which
         * one writer never does): start it afresh. */
        scan_buf_free(&sc->cur);
        if (h.chunk != 0)
            return 0;
        sc->cur.gen = h.gen;
    }
    if (sc->cur.n == sc->cur.cap) {
        uint32_t cap = sc->cur.cap ? 2 * sc->cur.cap : 8;
        void **r = realloc(sc->cur.rec, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        sc->cur.rec = r;
        size_t *l = realloc(sc->cur.len, cap * sizeof(*l));
        if (!l)
            return -ENOMEM;
        sc->cur.len = l;
        sc->cur.cap = cap;
    }
    void *copy = malloc(msg->len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, msg->payload, msg->len);
    sc->cur.rec[sc->cur.n] = copy;
    sc->cur.len[sc->cur.n++] = msg->len;
    return 0;
}

/* A user of the partition being restored (sc->p), never another's. */
static int import_user(void *ctx, const struct model_user_state *st)
{
    struct scan *sc = ctx;
    if (part_of(sc->cl, st->id, st->id_len) != sc->p)
        return -EINVAL;
    return model_user_put(sc->cl->c.model, st);
}

/* The partitions of one read, each message to its own scan. */
struct scans {
    struct scan *sc;
    int32_t *at; /* by partition: its scan, or -1 */
};

static int scan_any(void *ctx, const struct kafka_msg *msg)
{
    struct scans *s = ctx;
    int32_t p = msg->partition;
    if (p < 0 || p >= s->sc[0].cl->nparts || s->at[p] < 0)
        return 0;
    return scan_message(&s->sc[s->at[p]], msg);
}

/* A user of the partition sc->p, from its state on the state topic, into
 * the leader's restart model (the scan's ctx), never another's. */
struct others {
    struct cluster *cl;
    struct model *t;
    int32_t p;
};

static int import_other(void *ctx, const struct model_user_state *st)
{
    struct others *o = ctx;
    if (part_of(o->cl, st->id, st->id_len) != o->p)
        return -EINVAL;
    return model_user_put(o->t, st);
}

#define CLUSTER_RESTART_USERS 200000
#define CLUSTER_IDLE_ROUNDS 5
#define CLUSTER_LOSS_RES 1e-9
/* Refreshes a wholesale W waits at most for statistics of it (a member
 * re-solves its users in a few rounds; one on an older build never). */
#define CLUSTER_BARRIER_ROUNDS 100
enum { RS_KEPT, RS_TOOK, RS_LATER, RS_BEGUN };
/* Into t, the users of every partition p with want[p] != UINT64_MAX
 * (those this member does not own, and that have users), from their last
 * complete state on the state topic (read as a restore reads it, on the
 * member's reader, under its lock). Only when each one's state holds
 * exactly want[p] events, the events the group's statistics of it count:
 * a state older than the statistics would make the restart's trial on
 * another data set than the group's. Runs on libuv's pool (the trial's
 * worker): it touches nothing of cl but what never changes after the
 * start (nparts, k, the group's name, the configuration) and the reader.
 * 1: every such partition in t (*users of them); 0: some partition's
 * state is missing or behind (t is then partly filled and must be
 * dropped); -errno on a read or import failure. */
static int read_others(struct cluster *cl, const uint64_t *want,
                       struct model *t, uint64_t *users, unsigned *refused,
                       char *err, size_t errlen)
{
    struct kafka_read_part *rp = calloc((size_t)cl->nparts, sizeof(*rp));
    struct scan *sc = calloc((size_t)cl->nparts, sizeof(*sc));
    int32_t *at = malloc((size_t)cl->nparts * sizeof(*at));
    struct scans s = {.sc = sc, .at = at};
    size_t m = 0;
    int rc = 1;

    *users = 0;
    if (!rp || !sc || !at) {
        rc = -ENOMEM;
        goto out;
    }
    for (int32_t p = 0; p < cl->nparts; p++) {
        at[p] = -1;
        if (want[p] == UINT64_MAX)
            continue;
        at[p] = (int32_t)m;
        sc[m].cl = cl;
        sc[m].p = p;
        sc[m].quiet = true;
        rp[m++].partition = p;
    }
    if (!m)
        goto out;
    if (!cl->reader) {
        rc = -EINVAL;
        goto out;
    }
    pthread_mutex_lock(&cl->reader_lock);
    int r = kafka_reader_read(cl->reader, rp, m,
                              (int)cl->c.cfg->cluster.restore_timeout_ms,
                              scan_any, &s, err, errlen);
    pthread_mutex_unlock(&cl->reader_lock);
    if (r) {
        rc = -EIO;
        goto out;
    }
    for (size_t j = 0; j < m && rc == 1; j++)
        if (!sc[j].have || sc[j].marker.events != want[sc[j].p])
            rc = 0;
    for (size_t j = 0; j < m && rc == 1; j++) {
        struct others o = {.cl = cl, .t = t, .p = sc[j].p};
        for (uint32_t i = 0; i < sc[j].best.n && rc == 1; i++) {
            struct records_state h;
            const char *why = NULL;
            int r2 = records_state_read(sc[j].best.rec[i], sc[j].best.len[i],
                                        &h, import_other, &o, &why);
            if (r2) {
                snprintf(err, errlen, "partition %" PRId32 " state chunk %u: %s",
                         sc[j].p, i, why ? why : strerror(-r2));
                rc = r2;
            }
            *users += h.users;
        }
    }
out:
    for (size_t j = 0; j < m; j++) {
        *refused += sc[j].refused;
        scan_buf_free(&sc[j].cur);
        scan_buf_free(&sc[j].best);
    }
    free(rp);
    free(sc);
    free(at);
    return rc;
}

/* The leader's once-offs, the seed of the group's first W and the
 * restart trial (lead_restart), run on libuv's pool, not on the loop:
 * the trial reads every other partition's state and refines to
 * convergence on every user of the group, seconds during which the loop
 * would neither fold nor send statistics nor follow W. The loop makes
 * the trial's model (copies of this member's users, the group's W) and
 * the list of what to read; the worker touches only that, the reader
 * (under its lock) and what never changes in cl; the loop installs the
 * result (trial_done) only if it still applies: the same leader's
 * model, and, for a restart, the group's events unchanged since it
 * began, as a single process abandons its restart on any fold. While
 * it runs the leader publishes nothing new (lead_refresh): the W the
 * trial is measured against stays the group's. */
enum { TR_SEED, TR_RESTART };
struct trial {
    uv_work_t req;
    struct cluster *cl;
    int kind;
    struct model *t;
    uint32_t n;        /* this member's users in t */
    uint64_t *want;    /* read_others' list; NULL: t is all */
    uint64_t gen;      /* cl->lead_gen at the start */
    uint64_t events;   /* the group's events at the start */
    double weight;
    atomic_bool cancel; /* the loop gave up on it: stop early */
    /* Out: */
    int rs;            /* RS_* (restart), or 0 / -errno (seed) */
    uint64_t others;   /* users read from the state topic */
    unsigned refused;  /* state records refused in the read */
    double secs, cpu;  /* the worker's wall and CPU seconds */
    char err[256];
};

static void trial_free(struct trial *tr)
{
    model_free(tr->t);
    free(tr->want);
    free(tr);
}

static void trial_work(uv_work_t *req)
{
    struct trial *tr = req->data;
    struct cluster *cl = tr->cl;
    struct model *t = tr->t;
    struct model_stats st;
    double t0 = mono_s(), c0 = cpu_s();

    tr->rs = RS_KEPT;
    if (tr->kind == TR_SEED) {
        model_warm(t);
        tr->rs = 0;
        goto out;
    }
    if (tr->want) {
        int rc = read_others(cl, tr->want, t, &tr->others, &tr->refused,
                             tr->err, sizeof(tr->err));
        if (rc <= 0) {
            if (rc < 0 && !tr->err[0])
                snprintf(tr->err, sizeof(tr->err), "%s", strerror(-rc));
            tr->rs = rc == 0 ? RS_LATER : RS_KEPT;
            goto out;
        }
    }
    if ((uint64_t)tr->n + tr->others < cl->k)
        goto out;
    /* The users solved against the group's W (the group's rounds
     * converged it: their loss is the group's), then the restart's
     * trial against that loss: a seed and its batch rounds, whose W
     * replaces t's only if clearly lower. The group's rounds, not t's,
     * carry it on from there. */
    while (!atomic_load(&tr->cancel) && model_stale_users(t) &&
           model_refine(t, 1u << 30))
        ;
    if (!atomic_load(&tr->cancel) && model_restart_try(t) == 0)
        for (int round = 0; round < 100000 && !atomic_load(&tr->cancel);
             round++) {
            model_refine(t, 1u << 30);
            model_stats(t, &st);
            if (st.restarts > 0 || !model_stale_users(t))
                break; /* taken, or dropped */
        }
    model_stats(t, &st);
    if (st.restarts > 0 && !atomic_load(&tr->cancel))
        tr->rs = RS_TOOK;
out:
    tr->secs = mono_s() - t0;
    tr->cpu = cpu_s() - c0;
}


static void trial_done(uv_work_t *req, int status);
static void closed_one(struct cluster *cl);

/* Queues tr on libuv's pool; it is cl's trial until trial_done. */
static int trial_start(struct cluster *cl, struct trial *tr)
{
    tr->req.data = tr;
    atomic_init(&tr->cancel, false);
    int rc = uv_queue_work(cl->loop, &tr->req, trial_work, trial_done);
    if (rc) {
        trial_free(tr);
        return rc;
    }
    cl->trial = tr;
    return 0;
}

/* Gives up on the trial under way, if any: it stops early, and its
 * result is not installed. */
static void trial_cancel(struct cluster *cl)
{
    if (cl->trial)
        atomic_store(&cl->trial->cancel, true);
}

static void trial_done(uv_work_t *req, int status)
{
    struct trial *tr = req->data;
    struct cluster *cl = tr->cl;
    bool valid = !status && !cl->stopping && cl->leader && cl->lead &&
                 tr->gen == cl->lead_gen && !atomic_load(&tr->cancel);

    cl->trial = NULL;
    if (cl->stopping) {
        trial_free(tr);
        closed_one(cl);
        return;
    }
    for (unsigned i = 0; i < tr->refused; i++)
        reject(cl, CL_STATE, "state of another group, another k or another "
                             "partition, or malformed (read for a restart)");
    if (tr->kind == TR_SEED) {
        if (!valid) {
            log_info("cluster: the seed of W given up: this member no longer "
                     "leads, or leads anew");
        } else if (copy_w(cl->lead, tr->t, cl->k) == 0) {
            cl->stats_new = false;
            if (lead_publish(cl, wall_ms(), tr->events, tr->weight, 1) == 0) {
                cl->pub_events = tr->events;
                cl->pub_loss = 1;
                cl->barrier = cl->published;
                cl->barrier_rounds = 0;
            }
            log_notice("cluster: the group's first W seeded from %s's %" PRIu32
                       " users in %.2f s (%.2f CPU s, off the loop)",
                       cl->owner, tr->n, tr->secs, tr->cpu);
        } else {
            log_warn("cluster: seeding W: %s", strerror(ENOMEM));
        }
        trial_free(tr);
        return;
    }
    if (!valid) {
        /* Tried again once the group is quiet or converged again
         * (restart_events unchanged). */
        log_info("cluster: restart trial given up after %.2f s: the group's "
                 "events changed, or the leader did",
                 tr->secs);
        trial_free(tr);
        return;
    }
    if (tr->rs == RS_LATER) {
        cl->restart_retry =
            mono_s() + cl->c.cfg->checkpoint.interval_ms / 1000.0;
        log_info("cluster: restart: the other partitions' states are "
                 "behind their statistics; trying again in %.1f s",
                 cl->c.cfg->checkpoint.interval_ms / 1000.0);
        trial_free(tr);
        return;
    }
    cl->restart_events = tr->events;
    if (tr->err[0])
        log_warn("cluster: restart: the other partitions' users: %s", tr->err);
    else
        log_info("cluster: restart trial on %" PRIu64 " users (%" PRIu32
                 " of this member, %" PRIu64 " from the state topic) in "
                 "%.2f s (%.2f CPU s, off the loop): %s",
                 (uint64_t)tr->n + tr->others, tr->n, tr->others, tr->secs,
                 tr->cpu, tr->rs == RS_TOOK ? "a better W" : "W kept");
    if (tr->rs == RS_TOOK && copy_w(cl->lead, tr->t, cl->k) == 0) {
        log_notice("cluster: a restart on the group's users found a "
                   "better W; the group goes on from it");
        if (lead_publish(cl, cl->newest_stats_ts, tr->events, tr->weight, 1) ==
            0) {
            cl->pub_events = tr->events;
            cl->pub_loss = 1;
            cl->barrier = cl->published;
            cl->barrier_rounds = 0;
        }
    }
    trial_free(tr);
}

/* The group's first W, as a single process's warm-up makes it: NNDSVDa
 * of the profiles, then batch alternating NNLS, on the users of the
 * leader's own partitions (a sample of all users, the partitions being
 * by a hash of the user). From there the group's rounds (members
 * re-solve, the leader refreshes) go on as a single process's do; a
 * random start would leave them in a poorer local minimum. Begun here,
 * on the pool (trial_work); -EAGAIN when the leader has too few users
 * of its own (HALS from the start then). */
static int lead_seed(struct cluster *cl, uint64_t events, double weight)
{
    uint32_t n = 0;
    double c0 = cpu_s();
    struct trial *tr = calloc(1, sizeof(*tr));
    if (!tr)
        return -ENOMEM;
    tr->t = sample_model(cl, &n);
    cl->restart_s += cpu_s() - c0;
    if (!tr->t) {
        free(tr);
        return -ENOMEM;
    }
    if (n < cl->k) {
        trial_free(tr);
        return -EAGAIN; /* too few users of its own: HALS from the start */
    }
    tr->cl = cl;
    tr->kind = TR_SEED;
    tr->n = n;
    tr->gen = cl->lead_gen;
    tr->events = events;
    tr->weight = weight;
    log_info("cluster: seeding the group's first W from this member's %" PRIu32
             " users, off the loop (%.3f CPU s to copy them)",
             n, cl->restart_s);
    return trial_start(cl, tr);
}

/* At the group's convergence, the escape a single process tries at its
 * own (model_refine's restart), on every user of the group: the leader's
 * own users and, from the state topic, every other partition's (each
 * state complete up to the events the group's statistics count). From
 * the group's W, the single-process refinement runs to convergence on
 * them, restart trial included (an NNDSVDa seed of all of them, kept only
 * if it beats the current W there by 0.1%); if the restart replaced W,
 * that W becomes the group's next version, and the group's rounds go on
 * from it. A trial on the leader's own users alone misleads where they
 * lack much of the data (a seed from a quarter of the users leaves the
 * items only the others hold to chance: 1.02-1.17 x the loss of the seed
 * from all of them, docs/benchmarks.md section 10), so the leader waits
 * for every other partition's state to catch up with its statistics
 * (members write it every checkpoint.interval). Beyond
 * CLUSTER_RESTART_USERS users in the group, the trial runs on the
 * leader's own users alone, if they are few enough, as before: a large
 * sample's seed is close to the whole data's. The trial itself runs on
 * the pool (trial_work), its result installed by trial_done.
 * RS_BEGUN: under way; RS_KEPT: not tried; RS_LATER: not tried, some
 * other partition has no statistics yet (try again later). */
static int lead_restart(struct cluster *cl, uint64_t group_users,
                        uint64_t events, double weight)
{
    uint32_t n = 0;
    bool all = group_users <= CLUSTER_RESTART_USERS;
    struct trial *tr;

    if (!all && model_user_slots(cl->c.model) > CLUSTER_RESTART_USERS)
        return RS_KEPT;
    double c0 = cpu_s();
    if (!(tr = calloc(1, sizeof(*tr))))
        return RS_KEPT;
    if (all) {
        if (!(tr->want = malloc((size_t)cl->nparts * sizeof(*tr->want)))) {
            free(tr);
            return RS_KEPT;
        }
        for (int32_t p = 0; p < cl->nparts; p++) {
            tr->want[p] = UINT64_MAX;
            if (cl->owned[p])
                continue;
            if (!cl->ps[p]) {
                trial_free(tr); /* no statistics of it: nothing to compare */
                return RS_LATER;
            }
            if (cl->ps[p]->users) /* no user: no state is written */
                tr->want[p] = cl->ps[p]->events;
        }
    }
    tr->t = sample_model(cl, &n);
    if (!tr->t || copy_w(tr->t, cl->lead, cl->k)) {
        trial_free(tr);
        cl->restart_s += cpu_s() - c0;
        return RS_KEPT;
    }
    tr->cl = cl;
    tr->kind = TR_RESTART;
    tr->n = n;
    tr->gen = cl->lead_gen;
    tr->events = events;
    tr->weight = weight;
    cl->restart_s += cpu_s() - c0;
    log_debug("cluster: restart trial begun, %" PRIu32 " users copied on the "
              "loop in %.3f CPU s",
              n, cpu_s() - c0);
    return trial_start(cl, tr) ? RS_KEPT : RS_BEGUN;
}


/* The group's statistics into the leader's model, W refreshed, the new
 * version out. */
static void lead_refresh(struct cluster *cl)
{
    const uint32_t k = cl->k;
    struct model *lm = cl->lead;
    double A[MODEL_K_MAX * MODEL_K_MAX], norm = 0, weight = 0;
    uint64_t users = 0, events = 0;
    uint32_t parts = 0;

    if (!lm || !cl->stats_new)
        return;
    if (cl->trial && cl->trial->kind == TR_SEED)
        return; /* no W until the seed's (trial_done) */
    memset(A, 0, sizeof(double) * k * k);
    /* Every row's item has its slot in lm since its record came
     * (stats_rows_take). */
    size_t need = (size_t)model_item_slots(lm) * k;
    double *B = calloc(need ? need : 1, sizeof(double));
    if (!B) {
        log_warn("cluster: leader: %s", strerror(ENOMEM));
        return;
    }
    for (int32_t p = 0; p < cl->nparts; p++) {
        const struct records_stats *s = cl->ps[p];
        if (!s)
            continue;
        for (size_t q = 0; q < (size_t)k * k; q++)
            A[q] += s->A[q];
        for (uint32_t i = 0; i < s->nitems; i++) {
            size_t r = s->slot[i];
            for (uint32_t j = 0; j < k; j++)
                B[r * k + j] += s->B[(size_t)i * k + j];
        }
        norm += s->norm;
        weight += s->weight_sum;
        users += s->users;
        events += s->events;
        parts++;
    }
    if (!users) {
        free(B);
        return; /* nothing to fit yet */
    }
    if (cl->trial) {
        /* A restart trial under way is measured against the W it began
         * from: no new version meanwhile, unless the group's events
         * changed, which gives it up (a single process abandons its
         * restart on any fold) and the rounds go on. */
        if (events == cl->trial->events) {
            free(B);
            return;
        }
        trial_cancel(cl);
        log_info("cluster: restart trial given up: the group folded %" PRIu64
                 " more events",
                 events - cl->trial->events);
    }
    if (cl->barrier) {
        /* A W that replaced the group's wholesale (the seed, a restart)
         * is refreshed only from statistics of it: those of the W before
         * (h solved against other columns) would pull it back towards
         * the minimum it left. Each member's say which W all its users
         * were solved against. */
        bool behind = false;
        for (int32_t p = 0; p < cl->nparts; p++)
            behind |= cl->ps[p] && cl->ps[p]->users &&
                      cl->ps[p]->model_version < cl->barrier;
        if (behind && ++cl->barrier_rounds < CLUSTER_BARRIER_ROUNDS) {
            free(B);
            cl->stats_new = false;
            return;
        }
        if (behind)
            log_warn("cluster: statistics still of a W before version %" PRIu64
                     " after %u rounds: refreshing from them",
                     cl->barrier, cl->barrier_rounds);
        cl->barrier = 0;
    }
    if (!cl->published && !cl->seeded) {
        /* No W yet: the warm-up's, once the group has folded as many
         * events as a single process's warm-up waits for, or the stream
         * went quiet before. */
        uint64_t wu = cl->c.cfg->model.params.warmup_events;
        if (events < wu && cl->idle_rounds < CLUSTER_IDLE_ROUNDS) {
            free(B);
            return;
        }
        int rc = lead_seed(cl, events, weight);
        cl->seeded = true;
        if (rc == 0) {
            free(B);
            return; /* published by trial_done */
        }
        if (rc != -EAGAIN)
            log_warn("cluster: seeding W: %s", strerror(-rc));
    }
    model_stats_set(lm, A, B);
    free(B);
    model_refresh(lm);
    cl->stats_new = false;
    /* A new version when the data changed (new events, new items), or
     * when it lowers the group's loss by more than model.refine_tol of
     * it: the rule of a single process's idle refinement, so an idle
     * group converges and then stays quiet. And by more than
     * CLUSTER_LOSS_RES of ||V||^2: where V has an exact fit the loss
     * falls geometrically towards 0 and the relative rule never stops
     * (bayesm_margarine, 10 items and k = 16: a new version every round
     * at a relative loss of 5e-11), and each version costs every member
     * a pass over its users, which a single process's rounds, at
     * microseconds each, do not. */
    double rel = norm > 0 ? model_stats_loss(lm, norm) / norm : 0;
    size_t wn = (size_t)model_item_slots(lm) * k;
    double gain = cl->pub_loss - rel;
    bool converged =
        events == cl->pub_events && wn == cl->w_prev_n &&
        !(gain > cl->c.cfg->model.params.refine_tol * cl->pub_loss &&
          gain > CLUSTER_LOSS_RES);
    /* Once the stream is quiet (a few rounds without an event) or the
     * rounds converged, and the data has doubled since the last try: the
     * restart of a single process, on every user of the group
     * (lead_restart). A group's round takes a cluster.interval, not
     * microseconds, so it does not wait for the rounds to creep to
     * refine_tol first. While the other partitions' states are behind
     * their statistics, the try waits a checkpoint.interval, by which
     * every member has written its partitions' state again. */
    if ((converged || cl->idle_rounds >= CLUSTER_IDLE_ROUNDS) && events &&
        events >= 2 * cl->restart_events && mono_s() >= cl->restart_retry &&
        !cl->trial) {
        int rs = lead_restart(cl, users, events, weight);
        if (rs == RS_LATER) {
            cl->restart_retry =
                mono_s() + cl->c.cfg->checkpoint.interval_ms / 1000.0;
            log_info("cluster: restart: some partition has no statistics "
                     "yet; trying again in %.1f s",
                     cl->c.cfg->checkpoint.interval_ms / 1000.0);
        } else if (rs == RS_KEPT) {
            cl->restart_events = events;
        }
    }
    if (converged)
        return;
    if (lead_publish(cl, cl->newest_stats_ts, events, weight, rel) == 0) {
        cl->pub_events = events;
        cl->pub_loss = rel;
    }
    (void)parts;
}

bool cluster_publish_view(void *arg, struct records_group *g, uint64_t *sizes,
                          double *mass)
{
    struct cluster *cl = arg;
    const uint32_t k = cl->k;
    if (!cl->leader || !cl->lead)
        return false;
    memset(g, 0, sizeof(*g));
    g->cluster = cl->c.group_id;
    g->model_version = cl->version;
    double norm = 0;
    for (uint32_t j = 0; j < k; j++) {
        sizes[j] = 0;
        mass[j] = 0;
    }
    for (int32_t p = 0; p < cl->nparts; p++) {
        const struct records_stats *s = cl->ps[p];
        if (!s)
            continue;
        g->users += s->users;
        g->events += s->events;
        g->weight_sum += s->weight_sum;
        norm += s->norm;
        g->partitions++;
        for (uint32_t j = 0; j < k; j++) {
            sizes[j] += s->sizes[j];
            mass[j] += s->mass[j];
        }
    }
    struct model_stats st;
    model_stats(cl->lead, &st);
    g->items = st.items;
    g->loss = norm > 0 ? model_stats_loss(cl->lead, norm) / norm : 0;
    return true;
}

/* ---- owning partitions ------------------------------------------------- */

static int stats_scratch(struct cluster *cl)
{
    size_t need = (size_t)model_item_slots(cl->c.model) * cl->k + 1;
    if (!cl->A && !(cl->A = malloc(sizeof(double) * cl->k * cl->k)))
        return -ENOMEM;
    if (need > cl->bcap) {
        double *b = realloc(cl->B, need * sizeof(double));
        if (!b)
            return -ENOMEM;
        /* Zero, as the rows before it are between partitions. */
        memset(b + cl->bcap, 0, (need - cl->bcap) * sizeof(double));
        cl->B = b;
        cl->bcap = need;
    }
    size_t rows = model_item_slots(cl->c.model) + 1;
    if (rows > cl->ncap) {
        uint32_t *t = realloc(cl->touch, rows * sizeof(*t));
        if (!t)
            return -ENOMEM;
        cl->touch = t;
        uint32_t *mk = realloc(cl->mark, rows * sizeof(*mk));
        if (!mk)
            return -ENOMEM;
        memset(mk + cl->ncap, 0, (rows - cl->ncap) * sizeof(*mk));
        cl->mark = mk;
        uint32_t *a = realloc(cl->nslot, rows * sizeof(*a));
        if (!a)
            return -ENOMEM;
        cl->nslot = a;
        uint32_t *d = realloc(cl->drows, rows * sizeof(*d));
        if (!d)
            return -ENOMEM;
        cl->drows = d;
        uint64_t *h = realloc(cl->nhash, rows * sizeof(*h));
        if (!h)
            return -ENOMEM;
        cl->nhash = h;
        uint64_t *i = realloc(cl->nidh, rows * sizeof(*i));
        if (!i)
            return -ENOMEM;
        cl->nidh = i;
        cl->ncap = rows;
    }
    return 0;
}

/* Sorts the users of the owned partitions by partition (a counting
 * sort): one hash of each user's id per round, where asking the model for
 * each partition's statistics in turn hashed every id once a partition. */
static int stats_users(struct cluster *cl)
{
    const struct model *m = cl->c.model;
    const uint32_t U = model_user_slots(m);
    const size_t P = (size_t)cl->nparts;
    if (U > cl->ocap) {
        uint32_t *o = realloc(cl->order, (size_t)U * sizeof(*o));
        if (!o)
            return -ENOMEM;
        cl->order = o;
        uint32_t *q = realloc(cl->upart, (size_t)U * sizeof(*q));
        if (!q)
            return -ENOMEM;
        cl->upart = q;
        cl->ocap = U;
    }
    if (!cl->first && !(cl->first = calloc(2 * P + 1, sizeof(*cl->first))))
        return -ENOMEM;
    size_t *first = cl->first, *next = cl->first + P + 1;
    memset(first, 0, (P + 1) * sizeof(*first));
    for (uint32_t u = 0; u < U; u++) {
        struct model_user_view v;
        int32_t p = -1;
        if (!model_user_get(m, u, &v))
            p = part_of(cl, v.id, v.id_len);
        if (p >= 0 && p < cl->nparts && cl->owned[p]) {
            cl->upart[u] = (uint32_t)p;
            first[p + 1]++;
        } else {
            cl->upart[u] = UINT32_MAX;
        }
    }
    for (size_t p = 0; p < P; p++)
        first[p + 1] += first[p];
    memcpy(next, first, P * sizeof(*next));
    for (uint32_t u = 0; u < U; u++)
        if (cl->upart[u] != UINT32_MAX)
            cl->order[next[cl->upart[u]]++] = u;
    return 0;
}

/* Bits of a row of B_p, and an item's id (FNV-1a). */
static uint64_t row_hash(const double *r, uint32_t k)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (uint32_t j = 0; j < k; j++) {
        uint64_t u;
        memcpy(&u, &r[j], 8);
        h = (h ^ u) * 0xff51afd7ed558ccdull;
        h ^= h >> 33;
    }
    return h;
}

static uint64_t id_hash(const char *id, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)id[i]) * 0x100000001b3ull;
    return h;
}

/* Partition p's rows in cl->B (model_users_stats) against what its last
 * record said (cl->sent[p]): the round's non-zero rows into cl->nslot,
 * nhash, nidh (*n of them), and into cl->drows (*nd) those a delta must
 * carry. false when the record must be whole (no last record, or a slot
 * whose item left or changed). */
static bool stats_delta(struct cluster *cl, int32_t p, uint32_t nt,
                        uint32_t *n, uint32_t *nd)
{
    const struct model *m = cl->c.model;
    const uint32_t k = cl->k;
    const struct sent_rows *sp = &cl->sent[p];
    bool delta = sp->valid && sp->since_whole + 1 < CLUSTER_WHOLE_EVERY &&
                 mono_s() - sp->whole_at < CLUSTER_WHOLE_INTERVALS *
                                               cl->c.cfg->cluster.interval_ms /
                                               1000.0;
    uint32_t q = 0;

    *n = *nd = 0;
    /* Only the slots its users hold now (B is zero elsewhere) and those
     * the last record had, both sorted. */
    for (uint32_t a = 0; a < nt || q < sp->n;) {
        uint32_t ta = a < nt ? cl->touch[a] : UINT32_MAX;
        uint32_t i = q < sp->n && sp->slot[q] < ta ? sp->slot[q] : ta;
        a += ta == i;
        size_t len = 0;
        const char *id = model_item_id(m, i, &len);
        const double *r = cl->B + (size_t)i * k;
        bool live = false;
        for (uint32_t j = 0; id && j < k && !live; j++)
            live = r[j] != 0;
        bool was = q < sp->n && sp->slot[q] == i;
        uint64_t ih = id ? id_hash(id, len) : 0;
        if (was && (!id || sp->idh[q] != ih))
            delta = false; /* the item that left cannot be named */
        if (live) {
            uint64_t h = row_hash(r, k);
            cl->nslot[*n] = i;
            cl->nhash[*n] = h;
            cl->nidh[(*n)++] = ih;
            if (!was || sp->hash[q] != h)
                cl->drows[(*nd)++] = i;
        } else if (was) {
            cl->drows[(*nd)++] = i; /* a row of zeros: gone */
        }
        q += was;
    }
    return delta;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The item slots the users of partition p hold, into cl->touch,
 * sorted: the only rows of B its statistics can make non-zero. */
static uint32_t stats_touched(struct cluster *cl, int32_t p)
{
    const struct model *m = cl->c.model;
    uint32_t nt = 0;
    if (++cl->stamp == 0) { /* wrapped: no slot may look marked */
        memset(cl->mark, 0, cl->ncap * sizeof(*cl->mark));
        cl->stamp = 1;
    }
    for (size_t x = cl->first[p]; x < cl->first[p + 1]; x++) {
        const uint32_t *it;
        const float *va;
        uint32_t np;
        if (model_user_profile(m, cl->order[x], &it, &va, &np))
            continue;
        for (uint32_t q = 0; q < np; q++)
            if (cl->mark[it[q]] != cl->stamp) {
                cl->mark[it[q]] = cl->stamp;
                cl->touch[nt++] = it[q];
            }
    }
    qsort(cl->touch, nt, sizeof(*cl->touch), u32_cmp);
    return nt;
}

/* B back to zero after partition p's record (its touched rows). */
static void stats_clear(struct cluster *cl, uint32_t nt)
{
    for (uint32_t a = 0; a < nt; a++)
        memset(cl->B + (size_t)cl->touch[a] * cl->k, 0,
               cl->k * sizeof(double));
}

/* The rows of partition p's record just sent (stats_delta's), for the
 * next to be measured against; seq the record's. */
static int stats_sent_keep(struct cluster *cl, int32_t p, uint32_t n,
                           uint64_t seq, bool delta)
{
    struct sent_rows *sp = &cl->sent[p];
    if (n > sp->cap) {
        uint32_t *s = realloc(sp->slot, (size_t)n * sizeof(*s));
        if (s)
            sp->slot = s;
        uint64_t *h = realloc(sp->hash, (size_t)n * sizeof(*h));
        if (h)
            sp->hash = h;
        uint64_t *d = realloc(sp->idh, (size_t)n * sizeof(*d));
        if (d)
            sp->idh = d;
        if (!s || !h || !d) {
            sp->valid = false;
            return -ENOMEM;
        }
        sp->cap = n;
    }
    if (n) {
        memcpy(sp->slot, cl->nslot, (size_t)n * sizeof(*sp->slot));
        memcpy(sp->hash, cl->nhash, (size_t)n * sizeof(*sp->hash));
        memcpy(sp->idh, cl->nidh, (size_t)n * sizeof(*sp->idh));
    }
    sp->n = n;
    sp->seq = seq;
    sp->since_whole = delta ? sp->since_whole + 1 : 0;
    if (!delta)
        sp->whole_at = mono_s();
    sp->valid = true;
    return 0;
}

static void stats_send(struct cluster *cl)
{
    uint64_t work = model_work(cl->c.model), events = 0;
    int32_t owned = 0;

    for (int32_t p = 0; p < cl->nparts; p++) {
        int64_t next;
        uint64_t ev;
        double w;
        if (cl->owned[p] &&
            !ingest_part_get(cl->c.ing, cl->topic, p, &next, &ev, &w))
            events += ev;
        owned += cl->owned[p];
    }
    metric_set(cl->m.owned, owned);
    if (!owned)
        return;
    if (!model_stale_users(cl->c.model))
        cl->solved_version = cl->version;
    if (work == cl->sent_work && events == cl->sent_events &&
        cl->solved_version == cl->sent_solved &&
        ++cl->since_full < CLUSTER_FULL_EVERY)
        return;
    if (stats_scratch(cl) || stats_users(cl)) {
        log_warn("cluster: statistics: %s", strerror(ENOMEM));
        return;
    }
    for (int32_t p = 0; p < cl->nparts; p++) {
        if (!cl->owned[p])
            continue;
        struct model_part_sums sums;
        struct records_stats h;
        int64_t next = -1;
        memset(&h, 0, sizeof(h));
        uint32_t nt = stats_touched(cl, p);
        if (model_users_stats_add(cl->c.model, cl->order + cl->first[p],
                                  cl->first[p + 1] - cl->first[p], cl->A,
                                  cl->B, &sums)) {
            stats_clear(cl, nt);
            return;
        }
        ingest_part_get(cl->c.ing, cl->topic, p, &next, &h.events,
                        &h.weight_sum);
        snprintf(h.cluster, sizeof(h.cluster), "%s", cl->c.group_id);
        snprintf(h.owner, sizeof(h.owner), "%s", cl->owner);
        h.part = p;
        h.seq = ++cl->seq;
        uint32_t nrow = 0, nd = 0;
        bool delta = stats_delta(cl, p, nt, &nrow, &nd);
        h.base = delta ? cl->sent[p].seq : 0;
        h.ts = wall_ms();
        h.offset = next;
        h.norm = sums.norm;
        h.users = sums.users;
        h.model_version = cl->solved_version;
        memcpy(h.sizes, sums.sizes, sizeof(h.sizes));
        memcpy(h.mass, sums.mass, sizeof(h.mass));
        int rc = records_stats_encode(cl->enc, &h, cl->c.model, cl->A, cl->B,
                                      delta ? cl->drows : cl->nslot,
                                      delta ? nd : nrow);
        stats_clear(cl, nt);
        size_t len;
        const void *data = records_enc_data(cl->enc, &len);
        char key[16];
        int kl = snprintf(key, sizeof(key), "%" PRId32, p);
        if (!rc)
            rc = kafka_out_produce(cl->out, cl->c.cfg->cluster.stats_topic, 0,
                                   key, (size_t)kl, data, len, NULL, 0);
        if (rc) {
            log_warn("cluster: statistics of partition %" PRId32 ": %s", p,
                     strerror(-rc));
            cl->sent[p].valid = false;
            return; /* all again on the next tick */
        }
        stats_sent_keep(cl, p, nrow, h.seq, delta);
        metric_inc(cl->m.stats_sent);
        metric_add(cl->m.rows_sent, delta ? nd : nrow);
        if (delta)
            metric_add(cl->m.rows_kept, (double)nrow - nd);
        metric_add(cl->m.stats_bytes, (double)len);
    }
    cl->sent_work = work;
    cl->sent_events = events;
    cl->since_full = 0;
}

/* Forgets the users of every partition p with slot[p] >= 0 (another
 * member has them now), adding each one's count to n[slot[p]]: one pass
 * over the users however many partitions go. */
static void drop_parts(struct cluster *cl, const int32_t *slot, uint64_t *n)
{
    struct model *m = cl->c.model;
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        int32_t p = part_of(cl, v.id, v.id_len);
        if (p >= 0 && p < cl->nparts && slot[p] >= 0 &&
            model_user_forget(m, u) == 0)
            n[slot[p]]++;
    }
}

static int state_produce(struct cluster *cl, int32_t p, const char *key)
{
    size_t len;
    const void *data = records_enc_data(cl->enc, &len);
    return kafka_out_produce(cl->out, cl->c.cfg->cluster.state_topic, p, key,
                             1, data, len, NULL, 0);
}

/* The state of partition p, now: its users in chunks, then the marker. */
static int state_write(struct cluster *cl, int32_t p)
{
    struct records_state h;
    int64_t next = -1;
    uint64_t events = 0;
    double weight = 0;
    uint32_t cursor = 0, n = 0;
    int rc;

    if (ingest_part_get(cl->c.ing, cl->topic, p, &next, &events, &weight) ||
        next < 0)
        return 0; /* nothing folded: nothing to hand over */
    memset(&h, 0, sizeof(h));
    snprintf(h.cluster, sizeof(h.cluster), "%s", cl->c.group_id);
    h.part = p;
    h.gen = (uint64_t)wall_ms() << 16 | ((uint64_t)getpid() & 0xffff);
    do {
        rc = records_state_users_encode(cl->enc, &h, cl->c.model, part_of, cl,
                                        &cursor, CLUSTER_CHUNK_BYTES, &n);
        if (!rc)
            rc = state_produce(cl, p, "u");
        if (rc)
            goto fail;
        h.users += n;
        h.chunk++;
    } while (cursor < model_user_slots(cl->c.model));
    h.marker = true;
    h.offset = next;
    h.events = events;
    h.weight_sum = weight;
    h.ts = wall_ms();
    rc = records_state_marker_encode(cl->enc, &h, cl->k);
    if (!rc)
        rc = state_produce(cl, p, "m");
    if (rc)
        goto fail;
    metric_inc(cl->m.state_written);
    return 0;
fail:
    log_warn("cluster: state of partition %" PRId32 " not written: %s", p,
             strerror(-rc));
    return rc;
}

void cluster_state_write(struct cluster *cl)
{
    for (int32_t p = 0; p < cl->nparts; p++)
        if (cl->owned[p])
            state_write(cl, p);
}

/* Whether partition sc->p, its state topic read into sc, takes its users
 * from there (its last complete state is further on than next, where
 * this member holds it), or has no state anywhere: either way its local
 * users go. */
static bool restore_drops(const struct scan *sc, int64_t next)
{
    return (sc->have && sc->marker.offset > next) || next < 0;
}

/* Restores partition sc->p, its state topic read into sc, if its last
 * complete state is further on than next (where this member holds it;
 * its local users, dropped of them, went already, restore_drops said
 * so); sets *offset to where the input resumes and adds what it restored
 * to *users_all and *bytes_all. t0: when the read of the assignment's
 * partitions began. 1 when restored from the state topic, 0 when not, or
 * -errno (fatal: the partition must not be folded). */
static int restore_one(struct cluster *cl, struct scan *sc, int64_t next,
                       uint64_t dropped, double t0, int64_t *offset,
                       uint64_t *users_all, size_t *bytes_all)
{
    int32_t p = sc->p;
    int rc = 0;

    if (sc->have && sc->marker.offset > next) {
        uint64_t users = 0;
        size_t bytes = 0;
        for (uint32_t i = 0; i < sc->best.n && !rc; i++) {
            struct records_state h;
            const char *why = NULL;
            rc = records_state_read(sc->best.rec[i], sc->best.len[i], &h,
                                    import_user, sc, &why);
            if (rc)
                log_err("cluster: partition %" PRId32 ": state chunk %u: %s",
                        p, i, why ? why : strerror(-rc));
            users += h.users;
            bytes += sc->best.len[i];
        }
        if (rc)
            return rc;
        ingest_part_set(cl->c.ing, cl->topic, p, sc->marker.offset,
                        sc->marker.events, sc->marker.weight_sum);
        *offset = sc->marker.offset;
        double dt = mono_s() - t0;
        metric_set(cl->m.restore_seconds, dt);
        metric_add(cl->m.restored_users, (double)users);
        metric_add(cl->m.restored_bytes, (double)bytes);
        *users_all += users;
        *bytes_all += bytes;
        log_notice("cluster: partition %" PRId32 " restored: %" PRIu64
                   " users, %zu bytes in %.3f s, input from offset %" PRId64
                   " (%" PRIu64 " local users replaced)",
                   p, users, bytes, dt, *offset, dropped);
        return 1;
    } else if (next >= 0) {
        *offset = next;
        log_info("cluster: partition %" PRId32 " from this member's own "
                 "state, offset %" PRId64,
                 p, next);
    } else {
        /* No state anywhere: the partition's history is read again. */
        ingest_part_set(cl->c.ing, cl->topic, p, -1, 0, 0);
        *offset = KAFKA_OFFSET_BEGINNING;
        log_info("cluster: partition %" PRId32 " has no state yet: "
                 "reading its input from the start",
                 p);
    }
    return 0;
}

/* Restores the input partitions of parts[0..n) (the others are left
 * alone) from the state topic, read together on the member's reader, and
 * sets each one's offset; marks them owned. A partition's restore counts
 * from the start of the read, which it shared with the others. 0, or
 * -errno (fatal: none of them may be folded). */
static int restore(struct cluster *cl, struct kafka_part *parts, size_t n)
{
    struct kafka_read_part *rp = calloc(n ? n : 1, sizeof(*rp));
    struct scan *sc = calloc(n ? n : 1, sizeof(*sc));
    int32_t *at = malloc((size_t)cl->nparts * sizeof(*at));
    size_t *idx = calloc(n ? n : 1, sizeof(*idx));
    int64_t *next = calloc(n ? n : 1, sizeof(*next));
    uint64_t *dropped = calloc(n ? n : 1, sizeof(*dropped));
    struct scans s = {.sc = sc, .at = at};
    uint64_t users = 0;
    size_t bytes = 0, m = 0;
    char err[512];
    double t0 = mono_s(), t_read;
    int rc = 0;

    if (!rp || !sc || !at || !idx || !next || !dropped) {
        rc = -ENOMEM;
        log_err("cluster: state: out of memory");
        goto out;
    }
    for (int32_t p = 0; p < cl->nparts; p++)
        at[p] = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t p = parts[i].partition;
        if (strcmp(parts[i].topic, cl->topic) || p < 0 || p >= cl->nparts ||
            at[p] >= 0)
            continue;
        at[p] = (int32_t)m;
        sc[m].cl = cl;
        sc[m].p = p;
        rp[m].partition = p;
        idx[m++] = i;
    }
    if (!m)
        goto out;
    if (!cl->reader) {
        rc = -EINVAL;
        log_err("cluster: state: no reader");
        goto out;
    }
    /* A restart trial's read (read_others) may hold the reader: this
     * waits for it, a restore's timeout at most. */
    pthread_mutex_lock(&cl->reader_lock);
    rc = kafka_reader_read(cl->reader, rp, m,
                           (int)cl->c.cfg->cluster.restore_timeout_ms,
                           scan_any, &s, err, sizeof(err));
    pthread_mutex_unlock(&cl->reader_lock);
    if (rc) {
        log_err("cluster: state: %s", err);
        goto out;
    }
    t_read = mono_s() - t0;
    /* The local users of every partition that goes, in one pass; at[]
     * now says which. */
    for (size_t j = 0; j < m; j++) {
        uint64_t events = 0;
        double weight = 0;
        next[j] = -1;
        ingest_part_get(cl->c.ing, cl->topic, sc[j].p, &next[j], &events,
                        &weight);
        if (!restore_drops(&sc[j], next[j]))
            at[sc[j].p] = -1;
    }
    drop_parts(cl, at, dropped);
    size_t restored = 0;
    for (size_t j = 0; j < m; j++) {
        int64_t off = KAFKA_OFFSET_BEGINNING;
        if ((rc = restore_one(cl, &sc[j], next[j], dropped[j], t0, &off,
                              &users, &bytes)) < 0)
            goto out;
        restored += (size_t)rc;
        rc = 0;
        parts[idx[j]].offset = off;
        cl->owned[sc[j].p] = true;
        cl->sent[sc[j].p].valid = false; /* its next record whole */
    }
    if (restored)
        log_notice("cluster: %zu partitions restored together: %" PRIu64
                   " users, %zu bytes in %.3f s (the state topic read in "
                   "%.3f s)",
                   restored, users, bytes, mono_s() - t0, t_read);
out:
    for (size_t j = 0; j < m; j++) {
        scan_buf_free(&sc[j].cur);
        scan_buf_free(&sc[j].best);
    }
    free(rp);
    free(sc);
    free(at);
    free(idx);
    free(next);
    free(dropped);
    return rc;
}

void cluster_on_assign(struct cluster *cl, struct kafka_part *parts, size_t n)
{
    if (restore(cl, parts, n)) {
        if (cl->c.on_fatal)
            cl->c.on_fatal(cl->c.ctx, "a partition's state could not be "
                                      "read back");
        return;
    }
    if (!cl->assigned_once) {
        /* The local checkpoint may hold users of partitions that are
         * another member's now. */
        cl->assigned_once = true;
        int32_t *slot = cl->going;
        uint64_t *d = cl->gone;
        for (int32_t p = 0; p < cl->nparts; p++) {
            slot[p] = cl->owned[p] ? -1 : p;
            d[p] = 0;
        }
        drop_parts(cl, slot, d);
        for (int32_t p = 0; p < cl->nparts; p++) {
            if (cl->owned[p])
                continue;
            /* Its position and counts go with its users, the checkpoint's
             * entry too: kept, they would say this member holds events it
             * no longer has. */
            ingest_part_set(cl->c.ing, cl->topic, p, -1, 0, 0);
            if (d[p])
                log_info("cluster: %" PRIu64 " users of partition %" PRId32
                         " are another member's",
                         d[p], p);
        }
    }
    cl->sent_work = ~0ull; /* statistics of the new partitions at once */
}

void cluster_on_revoke(struct cluster *cl, const struct kafka_part *parts,
                       size_t n, bool lost)
{
    int32_t *slot = cl->going;
    uint64_t *d = cl->gone;
    for (int32_t p = 0; p < cl->nparts; p++) {
        slot[p] = -1;
        d[p] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        int32_t p = parts[i].partition;
        if (strcmp(parts[i].topic, cl->topic) || p < 0 || p >= cl->nparts ||
            !cl->owned[p])
            continue;
        /* A clean handover: the next owner starts from this state. Lost,
         * it may own the partition already; its own restore stands. */
        if (!lost && state_write(cl, p) == 0)
            metric_inc(cl->m.handovers);
        slot[p] = p;
    }
    /* Their users go in one pass, however many partitions went. */
    drop_parts(cl, slot, d);
    for (int32_t p = 0; p < cl->nparts; p++) {
        if (slot[p] < 0)
            continue;
        ingest_part_set(cl->c.ing, cl->topic, p, -1, 0, 0);
        cl->owned[p] = false;
        cl->sent[p].valid = false;
        log_info("cluster: partition %" PRId32 " %s: %" PRIu64
                 " users handed on",
                 p, lost ? "lost" : "revoked", d[p]);
    }
}

/* ---- the timer ---------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    struct cluster *cl = t->data;
    struct kafka_lag lag[1];
    if (cl->stopping)
        return;
    /* A round (every owned partition's statistics, the leader's refresh
     * from every partition's) runs on the loop, between the fold's
     * passes, and costs with the users and items, not with the events
     * since the last: with 64 partitions of 400 k users at one a second
     * it took from a quarter to a half of each member's loop (profiles
     * in docs/benchmarks.md section 10). */
    double t0 = mono_s(), c0 = cpu_s();
    /* Due once the loop has spent (1 / share - 1) times the last round's
     * CPU on other work since it ended, so that rounds are at most that
     * share of the loop's work however much of a core the host leaves
     * it; or, the loop idle (nothing to take from), once as many times
     * the round's cost has passed on the clock. */
    double spare = cl->round_s * (1 / CLUSTER_ROUND_SHARE - 1);
    if (c0 - cl->round_end_cpu < spare &&
        t0 - cl->round_end < CLUSTER_ROUND_IDLE * spare)
        goto gauges;
    cl->restart_s = 0;
    stats_send(cl);
    if (cl->leader) {
        /* Ticks since the group's events last changed: the stream is
         * quiet after CLUSTER_IDLE_ROUNDS of them, and one more round of
         * refresh then seeds or restarts (lead_refresh). */
        uint64_t ev = 0;
        for (int32_t p = 0; p < cl->nparts; p++)
            ev += cl->ps[p] ? cl->ps[p]->events : 0;
        cl->idle_rounds = ev == cl->round_events ? cl->idle_rounds + 1 : 0;
        cl->round_events = ev;
        if (cl->idle_rounds == CLUSTER_IDLE_ROUNDS)
            cl->stats_new = true;
        lead_refresh(cl);
    }
    /* The seed and a restart are once-offs (the first W; the group's
     * events doubled), not a cost of every round: left out. */
    cl->round_s = cpu_s() - c0 - cl->restart_s;
    if (cl->round_s < 0)
        cl->round_s = 0;
    cl->round_end = mono_s();
    cl->round_end_cpu = cpu_s();
    metric_set(cl->m.round_seconds, cl->round_s);
gauges:
    metric_set(cl->m.stall, cl->stall_max);
    cl->stall_max = 0;
    if (kafka_in_lag(cl->win, lag, 1) >= 1 && lag[0].lag >= 0)
        metric_set(cl->m.version_lag, (double)lag[0].lag);
    if (cl->version)
        metric_set(cl->m.w_age, (double)(wall_ms() - cl->w_ts) / 1000.0);
    if (cl->leader) {
        /* Members: the distinct owners of the partitions' statistics. */
        uint32_t members = 0;
        for (int32_t p = 0; p < cl->nparts; p++) {
            if (!cl->ps[p])
                continue;
            bool seen = false;
            for (int32_t q = 0; q < p && !seen; q++)
                seen = cl->ps[q] && !strcmp(cl->ps[q]->owner, cl->ps[p]->owner);
            members += !seen;
        }
        metric_set(cl->m.members, members);
    }
}

/* How late the probe came, each time: the loop was busy that long
 * without coming back to its timers (a fold pass, a round, a blocking
 * call). The longest since the last gauge is kept for the gauge, the
 * longest ever in its own. */
static void on_probe(uv_timer_t *t)
{
    struct cluster *cl = t->data;
    double now = mono_s(), late = now - cl->probe_due;
    if (cl->probe_due > 0 && late > cl->stall_max)
        cl->stall_max = late;
    if (cl->probe_due > 0 && late > 0 &&
        late > metric_value(cl->m.stall_max))
        metric_set(cl->m.stall_max, late);
    /* The same in the loop thread's CPU seconds between two probes: what
     * the loop itself ran, whatever else the host runs (a lateness of
     * the clock may be the host's other processes). */
    double cpu = cpu_s();
    if (cl->probe_due > 0 && cpu - cl->probe_cpu > metric_value(cl->m.busy_max))
        metric_set(cl->m.busy_max, cpu - cl->probe_cpu);
    cl->probe_cpu = cpu;
    cl->probe_due = now + CLUSTER_PROBE_MS / 1000.0;
}

/* ---- start and stop ------------------------------------------------------ */

/* librdkafka's warnings, but not CONFWARN: the group's clients share
 * [kafka], whose consumer keys a producer ignores, and says so. */
static void noop_log(void *ctx, int level, const char *fac, const char *msg)
{
    (void)ctx;
    if (level <= 4 && strcmp(fac, "CONFWARN"))
        log_msg(level, "cluster kafka: %s: %s", fac, msg);
}

static void cl_error(void *ctx, int err, bool fatal, const char *reason)
{
    (void)ctx;
    log_msg(fatal ? LOG_ERR : LOG_WARNING, "cluster kafka: %s (%s)", reason,
            strerror(-err));
}

static void closed_one(struct cluster *cl)
{
    if (cl->closing && --cl->closing == 0 && cl->done)
        cl->done(cl->done_arg);
}

static void in_closed(void *ctx)
{
    closed_one(ctx);
}

static void out_closed(void *ctx)
{
    closed_one(ctx);
}

static void timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static struct metric *counter(struct cluster *cl, const char *name,
                              const char *help, const char *labels)
{
    return metrics_counter(cl->c.metrics, name, help, labels);
}

static struct metric *gauge(struct cluster *cl, const char *name,
                            const char *help)
{
    return metrics_gauge(cl->c.metrics, name, help, NULL);
}

struct cluster *cluster_new(uv_loop_t *loop, const struct cluster_conf *c)
{
    struct cluster *cl = calloc(1, sizeof(*cl));
    char host[256] = "localhost";
    if (!cl)
        return NULL;
    cl->loop = loop;
    cl->c = *c;
    pthread_mutex_init(&cl->reader_lock, NULL);
    cl->k = c->cfg->model.params.k;
    cl->topic = c->cfg->input.topic[0];
    cl->enc = records_enc_new();
    if (!cl->enc) {
        free(cl);
        return NULL;
    }
    gethostname(host, sizeof(host) - 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(cl->owner, sizeof(cl->owner), "%s-%ld-%06lx", host,
             (long)getpid(), (unsigned long)(ts.tv_nsec & 0xffffff));
    cl->m.leader = gauge(cl, "nmfd_cluster_leader",
                         "1 while this member refreshes the group's W.");
    cl->m.version = gauge(cl, "nmfd_cluster_model_version",
                          "The version of the group's W this member folds "
                          "with.");
    cl->m.version_lag = gauge(cl, "nmfd_cluster_version_lag",
                              "Versions of W published and not yet read.");
    cl->m.w_age = gauge(cl, "nmfd_cluster_w_age_seconds",
                        "Seconds from the newest statistics the installed W "
                        "was built from to now.");
    cl->m.owned = gauge(cl, "nmfd_cluster_partitions",
                        "Input partitions this member owns.");
    cl->m.round_seconds =
        gauge(cl, "nmfd_cluster_round_seconds",
              "CPU seconds the last round of statistics (and, on the "
              "leader, the refresh of W) took on the loop; the next waits "
              "until the loop has done four times as much other work.");
    cl->m.stall = gauge(cl, "nmfd_cluster_loop_stall_seconds",
                        "The longest the loop went without coming back to "
                        "its timers during the last cluster.interval.");
    cl->m.stall_max = gauge(cl, "nmfd_cluster_loop_stall_max_seconds",
                            "The longest the loop went without coming back "
                            "to its timers since the start.");
    cl->m.busy_max = gauge(cl, "nmfd_cluster_loop_busy_max_seconds",
                           "The most CPU seconds the loop thread ran between "
                           "two turns of its 20 ms probe timer, since the "
                           "start.");
    cl->m.stats_bytes = counter(cl, "nmfd_cluster_stats_bytes_total",
                                "Bytes of partition statistics sent.", NULL);
    cl->m.rows_sent = counter(cl, "nmfd_cluster_stats_rows_total",
                              "Rows of B sent in statistics records.", NULL);
    cl->m.rows_kept = counter(cl, "nmfd_cluster_stats_rows_unchanged_total",
                              "Rows of B left out of statistics records "
                              "as unchanged since the partition's last.",
                              NULL);
    cl->m.stats_gaps = counter(cl, "nmfd_cluster_stats_gaps_total",
                               "Statistics records carrying changed rows "
                               "that the leader could not apply (it does "
                               "not hold the record they update); the "
                               "partition waits for its next whole record.",
                               NULL);
    cl->m.members = gauge(cl, "nmfd_cluster_members",
                          "Members whose statistics the leader holds "
                          "(leader only).");
    cl->m.restore_seconds = gauge(cl, "nmfd_cluster_restore_seconds",
                                  "Seconds the last restore of a partition's "
                                  "state took, from the start of the read "
                                  "its assignment's partitions shared.");
    cl->m.restored_users = counter(cl, "nmfd_cluster_restored_users_total",
                                   "Users restored from the state topic.",
                                   NULL);
    cl->m.restored_bytes = counter(cl, "nmfd_cluster_restored_bytes_total",
                                   "Bytes of state read back.", NULL);
    cl->m.stats_sent = counter(cl, "nmfd_cluster_stats_sent_total",
                               "Partition statistics sent.", NULL);
    cl->m.w_published = counter(cl, "nmfd_cluster_w_published_total",
                                "Versions of W this member published as "
                                "leader.",
                                NULL);
    cl->m.w_refused = counter(cl, "nmfd_cluster_w_refused_total",
                              "Versions of W this member could not use (it "
                              "kept its last good W).",
                              NULL);
    cl->m.state_written = counter(cl, "nmfd_cluster_state_written_total",
                                  "Partition states written.", NULL);
    cl->m.handovers = counter(cl, "nmfd_cluster_handovers_total",
                              "Partitions handed over at a revocation.", NULL);
    for (int r = 0; r < CL_NREJ; r++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "record=\"%s\"", rej_names[r]);
        cl->m.rejected[r] =
            counter(cl, "nmfd_cluster_rejected_total",
                    "Records of the group's topics refused (another group, "
                    "another k, malformed).",
                    labels);
    }
    return cl;
}

/* A topic's partition count must be want (or, want 0, that of the
 * input). */
static int check_topic(struct cluster *cl, const char *key, const char *topic,
                       int want, char *err, size_t errlen)
{
    int n = kafka_in_partition_count(cl->win, topic, CLUSTER_META_MS);
    if (n < 0) {
        snprintf(err, errlen, "%s = %s: %s", key, topic, strerror(-n));
        return n;
    }
    if (n != want) {
        snprintf(err, errlen,
                 "%s = %s has %d partitions; the group needs %d (%s): create "
                 "it so before any member starts (docs/operations.md, \"A "
                 "group of processes\")",
                 key, topic, n, want,
                 want == 1 ? "one leader reads it in order"
                           : "as many as the input, co-partitioned");
        return -EINVAL;
    }
    return 0;
}

int cluster_start(struct cluster *cl, char *err, size_t errlen)
{
    static const struct kafka_in_cbs wcbs = {
        win_message, NULL, NULL, cl_error, noop_log, NULL, in_closed,
        win_pass_end};
    static const struct kafka_in_cbs lcbs = {
        lin_message, lin_assign, lin_revoke, cl_error, noop_log, NULL,
        in_closed, NULL};
    static const struct kafka_out_cbs ocbs = {NULL, cl_error, noop_log,
                                              out_closed};
    const struct config *cfg = cl->c.cfg;
    char why[512], gid[512];
    struct kafka_conf *conf;
    int rc;

    if (cfg->input.ntopics != 1) {
        snprintf(err, errlen,
                 "cluster.enabled needs exactly one input topic (input.topics "
                 "= %s): a user's partition must name its owner",
                 cfg->input.topics);
        return -EINVAL;
    }
    /* The model follower, first: its handle asks the metadata too. */
    conf = cl->c.kafka_conf(cl->c.ctx, true);
    snprintf(gid, sizeof(gid), "%s.model.%s", cl->c.group_id, cl->owner);
    if (!conf || kafka_conf_set(conf, "group.id", gid, why, sizeof(why))) {
        kafka_conf_free(conf);
        snprintf(err, errlen, "cluster: model follower: %s", why);
        return -EINVAL;
    }
    cl->win = kafka_in_new(cl->loop, conf, &wcbs, cl, why, sizeof(why));
    if (!cl->win) {
        snprintf(err, errlen, "cluster: model follower: %s", why);
        return -EINVAL;
    }
    cl->closing++; /* counted as open: closed_one on close */
    int n = kafka_in_partition_count(cl->win, cl->topic, CLUSTER_META_MS);
    if (n <= 0) {
        snprintf(err, errlen, "input.topics = %s: %s", cl->topic,
                 n < 0 ? strerror(-n) : "no partitions");
        return n < 0 ? n : -EINVAL;
    }
    cl->nparts = n;
    if ((rc = check_topic(cl, "cluster.stats_topic", cfg->cluster.stats_topic,
                          1, err, errlen)) ||
        (rc = check_topic(cl, "cluster.model_topic", cfg->cluster.model_topic,
                          1, err, errlen)) ||
        (rc = check_topic(cl, "cluster.state_topic", cfg->cluster.state_topic,
                          n, err, errlen)))
        return rc;
    cl->owned = calloc((size_t)n, sizeof(*cl->owned));
    cl->ps = calloc((size_t)n, sizeof(*cl->ps));
    cl->going = calloc((size_t)n, sizeof(*cl->going));
    cl->gone = calloc((size_t)n, sizeof(*cl->gone));
    cl->sent = calloc((size_t)n, sizeof(*cl->sent));
    if (!cl->owned || !cl->ps || !cl->going || !cl->gone || !cl->sent)
        return -ENOMEM;
    struct kafka_part wp = {cfg->cluster.model_topic, 0,
                            KAFKA_OFFSET_BEGINNING};
    if ((rc = kafka_in_assign(cl->win, &wp, 1))) {
        snprintf(err, errlen, "cluster: follow %s: %s",
                 cfg->cluster.model_topic, strerror(-rc));
        return rc;
    }

    /* The state topic's reader, made once: a client per restore cost
     * more than the users it read. Its group is never joined; librdkafka
     * wants one to assign partitions. */
    conf = cl->c.kafka_conf(cl->c.ctx, true);
    snprintf(gid, sizeof(gid), "%s.state.%s", cl->c.group_id, cl->owner);
    if (!conf || kafka_conf_set(conf, "group.id", gid, why, sizeof(why))) {
        kafka_conf_free(conf);
        snprintf(err, errlen, "cluster: state reader: %s", why);
        return -EINVAL;
    }
    cl->reader = kafka_reader_new(conf, cfg->cluster.state_topic, noop_log,
                                  cl, why, sizeof(why));
    if (!cl->reader) {
        snprintf(err, errlen, "cluster: state reader: %s", why);
        return -EINVAL;
    }

    conf = cl->c.kafka_conf(cl->c.ctx, false);
    if (!conf) {
        snprintf(err, errlen, "cluster: producer: bad [kafka]");
        return -EINVAL;
    }
    kafka_conf_set(conf, "message.max.bytes", "16777216", why, sizeof(why));
    kafka_conf_set(conf, "linger.ms", "5", why, sizeof(why));
    cl->out = kafka_out_new(cl->loop, conf, NULL, &ocbs, cl, why, sizeof(why));
    if (!cl->out) {
        snprintf(err, errlen, "cluster: producer: %s", why);
        return -EINVAL;
    }
    cl->closing++;

    conf = cl->c.kafka_conf(cl->c.ctx, true);
    snprintf(gid, sizeof(gid), "%s.leader", cl->c.group_id);
    if (!conf || kafka_conf_set(conf, "group.id", gid, why, sizeof(why))) {
        kafka_conf_free(conf);
        snprintf(err, errlen, "cluster: leader's consumer: %s", why);
        return -EINVAL;
    }
    cl->lin = kafka_in_new(cl->loop, conf, &lcbs, cl, why, sizeof(why));
    if (!cl->lin) {
        snprintf(err, errlen, "cluster: leader's consumer: %s", why);
        return -EINVAL;
    }
    cl->closing++;
    if ((rc = kafka_in_subscribe(cl->lin, cfg->cluster.stats_topic))) {
        snprintf(err, errlen, "cluster: subscribe %s: %s",
                 cfg->cluster.stats_topic, strerror(-rc));
        return rc;
    }

    model_follow(cl->c.model, 1);
    ingest_set_keyed(cl->c.ing, n);
    uv_timer_init(cl->loop, &cl->timer);
    cl->timer.data = cl;
    cl->closing++;
    uv_timer_start(&cl->timer, on_tick, cfg->cluster.interval_ms,
                   cfg->cluster.interval_ms);
    uv_timer_init(cl->loop, &cl->probe);
    cl->probe.data = cl;
    cl->closing++;
    uv_timer_start(&cl->probe, on_probe, CLUSTER_PROBE_MS, CLUSTER_PROBE_MS);
    log_notice("cluster: member %s of group %s, %d input partitions", cl->owner,
               cl->c.group_id, n);
    return 0;
}

bool cluster_is_leader(const struct cluster *cl)
{
    return cl && cl->leader;
}

uint64_t cluster_model_version(const struct cluster *cl)
{
    return cl ? cl->version : 0;
}

uint64_t cluster_version_of(void *cl)
{
    return cluster_model_version(cl);
}

char *cluster_status_json(const struct cluster *cl)
{
    json_t *o = json_object(), *parts = json_array(), *owned = json_array();
    if (!o || !parts || !owned) {
        json_decref(o);
        json_decref(parts);
        json_decref(owned);
        return NULL;
    }
    json_object_set_new(o, "member", json_string(cl->owner));
    json_object_set_new(o, "group", json_string(cl->c.group_id));
    json_object_set_new(o, "leader", json_boolean(cl->leader));
    json_object_set_new(o, "model_version", json_integer((json_int_t)cl->version));
    for (int32_t p = 0; p < cl->nparts; p++)
        if (cl->owned[p])
            json_array_append_new(owned, json_integer(p));
    json_object_set_new(o, "partitions_owned", owned);
    int64_t now = wall_ms();
    for (int32_t p = 0; cl->leader && p < cl->nparts; p++) {
        const struct records_stats *s = cl->ps[p];
        json_t *e = json_object();
        json_object_set_new(e, "partition", json_integer(p));
        if (s) {
            json_object_set_new(e, "owner", json_string(s->owner));
            json_object_set_new(e, "users", json_integer((json_int_t)s->users));
            json_object_set_new(e, "events",
                                json_integer((json_int_t)s->events));
            json_object_set_new(e, "age_s",
                                json_real((double)(now - s->ts) / 1000.0));
        }
        json_array_append_new(parts, e);
    }
    json_object_set_new(o, "partitions", parts);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

void cluster_close(struct cluster *cl, void (*done)(void *arg), void *arg)
{
    cl->stopping = true;
    cl->done = done;
    cl->done_arg = arg;
    if (cl->trial) {
        /* Its end (trial_done) counts as one of the handles closed. */
        trial_cancel(cl);
        cl->closing++;
    }
    unsigned open = cl->closing;
    if (!open) {
        done(arg);
        return;
    }
    if (cl->win) {
        kafka_in_close(cl->win);
        cl->win = NULL;
    }
    if (cl->lin) {
        kafka_in_close(cl->lin);
        cl->lin = NULL;
    }
    if (cl->out) {
        kafka_out_close(cl->out, 5000);
        cl->out = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&cl->timer) && cl->timer.loop)
        uv_close((uv_handle_t *)&cl->timer, timer_closed);
    if (!uv_is_closing((uv_handle_t *)&cl->probe) && cl->probe.loop)
        uv_close((uv_handle_t *)&cl->probe, timer_closed);
}

void cluster_free(struct cluster *cl)
{
    if (!cl)
        return;
    lead_drop(cl);
    kafka_reader_free(cl->reader);
    free(cl->ps);
    free(cl->owned);
    free(cl->going);
    free(cl->gone);
    free(cl->A);
    free(cl->B);
    free(cl->order);
    free(cl->upart);
    free(cl->first);
    for (int32_t p = 0; cl->sent && p < cl->nparts; p++) {
        free(cl->sent[p].slot);
        free(cl->sent[p].hash);
        free(cl->sent[p].idh);
    }
    free(cl->sent);
    free(cl->nslot);
    free(cl->drows);
    free(cl->nhash);
    free(cl->nidh);
    free(cl->touch);
    free(cl->mark);
    free(cl->w_pending);
    free(cl->w_last);
    free(cl->w_prev);
    records_enc_free(cl->enc);
    pthread_mutex_destroy(&cl->reader_lock);
    free(cl);
}
