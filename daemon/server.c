/* server.c -- the nmfd daemon: one libuv loop, one model, and the wiring
 * between the subsystems that work on them.
 *
 * An event travels one way: ingest.c (consumer -> decoder -> model fold,
 * at the end of each consumer pass) and, once an epoch is cut,
 * publisher.c (segment, topic and manifest records in one transaction).
 * Everything periodic hangs off timers on the same loop, like redis's
 * serverCron: epochs and checkpoints (checkpoints.c, written by a forked
 * child) from here, W refresh, refinement and TTL expiry from upkeep.c,
 * systemd status and watchdog from here. views.c serves HTTP.
 *
 * This file owns the start-up order, the timers of epochs, checkpoints,
 * status and watchdog, the signals, the Kafka configuration of both
 * clients, the output producers, and the order of shutdown (final epoch,
 * final checkpoint, offsets, consumer, producers, HTTP, handles). It owns
 * none of the pieces: it must never fold, encode records or touch the
 * model's internals itself, and never block the loop: every Kafka call
 * returns at once, commits complete in callbacks, and the only synchronous
 * disk write is the final checkpoint at stop.
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
#include "event.h"
#include "checkpoints.h"
#include "cluster.h"
#include "ingest.h"
#include "publisher.h"
#include "upkeep.h"
#include "views.h"
#include "kafka_in.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "notify.h"
#include "records.h"

#define SERVER_STATUS_MS 5000

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
    struct ingest *ing;
    struct event_decoder *dec; /* until ingest_start takes it */
    struct kafka_out *out;
    struct kafka_out *dlq;
    struct views *views;
    struct metrics *metrics;

    /* Survives restarts through the checkpoint. */
    uint64_t epoch; /* last published epoch */

    /* A mark on ingest's count of folded events, for the rate. */
    uint64_t folded_at_rate;
    uint64_t rate_ms;
    double rate;
    double loss; /* relative loss at the last published epoch */
    bool broker_down;
    uint64_t loop_ticks, watchdog_ticks;
    struct model_memory mem; /* model_memory(), at most a second old */
    uint64_t mem_ms;         /* when it was taken, 0 = never */
    struct model_stats st;   /* model_stats(), for the gauges */
    uint64_t st_tick;        /* the loop_ticks it was taken at */
    bool st_valid;

    struct publisher *pub;
    struct cluster *cluster; /* cluster.enabled: a member of a group */
    struct cluster *cluster_closed; /* closed, freed at the end */
    bool refused;            /* another process owns part of the input */
    bool assigned_once;      /* alone: the whole input was assigned once */

    struct checkpoints *ckpt;

    struct upkeep *upkeep;
    uv_timer_t t_epoch, t_ckpt, t_status, t_watchdog;
    uv_prepare_t tick;
    uv_signal_t s_term, s_int, s_hup, s_chld;
    uint64_t watchdog_usec;

    struct {
        struct metric *delivery_errors;
        struct metric *consumer_errors;
    } m;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void server_stop(struct server *s, int code);
static void server_shutdown_step(struct server *s);

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

static void server_on_stats(void *ctx, const struct kafka_in_stats *ks)
{
    struct server *s = ctx;
    /* Statistics come whether or not a broker answers: they end an outage
     * only when they show a connected broker. */
    if (ks->brokers > 0) {
        bool down = ks->brokers_up == 0;
        if (down && !s->broker_down)
            log_err("kafka: brokers unreachable: none of %d connected",
                    ks->brokers);
        else if (!down && s->broker_down)
            log_notice("kafka: brokers reachable again");
        s->broker_down = down;
    }
}

static void server_on_cluster_closed(void *ctx)
{
    struct server *s = ctx;
    s->closing--;
    server_shutdown_step(s);
}

static void server_on_in_closed(void *ctx)
{
    struct server *s = ctx;
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

/* An epoch ended (publisher.c): what follows from a published one. */
static void server_on_published(void *ctx, uint64_t epoch, int status)
{
    struct server *s = ctx;
    if (!status) {
        struct model_stats st;

        s->epoch = epoch;
        checkpoints_epoch_write(s->ckpt, epoch);
        model_stats(s->model, &st);
        s->loss = st.rel_loss;
        views_epoch(s->views, &st, s->rate);
        if (s->cfg->snapshot.file[0])
            checkpoints_snapshot_file(s->ckpt, s->model, s->epoch);
    }
    if (s->stopping)
        server_shutdown_step(s);
}

static void on_epoch_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    int rc = publisher_start(s->pub, s->epoch + 1);
    if (rc == -EAGAIN || rc == -EBUSY)
        log_debug("epoch skipped: the previous one is still in flight");
    else if (rc)
        log_warn("epoch not started: %s", strerror(-rc));
}

/* ---- checkpoints (checkpoints.c) --------------------------------------- */

static void on_ckpt_timer(uv_timer_t *t)
{
    struct server *s = t->data;
    if (s->stopping)
        return;
    checkpoints_fork(s->ckpt, s->model, s->epoch);
    if (s->cluster)
        cluster_state_write(s->cluster);
}

static void on_sigchld(uv_signal_t *h, int sig)
{
    struct server *s = h->data;
    checkpoints_reap(s->ckpt);
}

/* ---- systemd, status, reload ------------------------------------------ */

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
        (publisher_idle(s->pub) ||
         now_ms() - publisher_started_ms(s->pub) <
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

    struct ingest_stats is;
    ingest_stats(s->ing, &is);
    if (s->rate_ms && now > s->rate_ms)
        s->rate = (double)(is.folded - s->folded_at_rate) * 1000.0 /
                  (double)(now - s->rate_ms);
    s->folded_at_rate = is.folded;
    s->rate_ms = now;
    model_stats(s->model, &st);
    lag = ingest_lag(s->ing);
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
    ingest_set_reject_log(s->ing, s->cfg->input.reject_log_interval_ms,
                          s->cfg->input.reject_log_burst);
    timer_restart(&s->t_epoch, s->cfg->snapshot.interval_ms);
    timer_restart(&s->t_ckpt, s->cfg->checkpoint.interval_ms);
    if (views_reload(s->views, err, sizeof(err)))
        log_err("http: reload refused, running credentials unchanged: %s", err);
    log_notice("configuration reloaded; applied: %s",
               changed[0] ? changed : "(nothing changed)");
    if (restart[0])
        log_warn("changed keys that need a restart: %s", restart);
    notify_ready();
}

/* ---- HTTP views ---------------------------------------------------------- */

static int server_health(void *ctx)
{
    struct server *s = ctx;
    return s->stopping ? -ESHUTDOWN : 0;
}

static int server_ready(void *ctx, const char **why)
{
    struct server *s = ctx;
    struct ingest_stats is;
    if (s->stopping)
        *why = "stopping";
    else if (!s->ready)
        *why = "starting";
    else if (ingest_stats(s->ing, &is), !is.assigned)
        *why = "no partition assigned";
    else if (s->broker_down)
        *why = "brokers unreachable";
    else
        return 0;
    return -EAGAIN;
}

static void server_on_http_closed(void *arg)
{
    struct server *s = arg;
    s->closing--;
    server_shutdown_step(s);
}

/* ---- metrics ------------------------------------------------------------- */

/* The model's statistics for the gauges. model_stats makes a pass over
 * the items, and over the users that owe shares of B (every user of a
 * group's member after each W it installs), and one scrape reads ten
 * gauges of it: one reading serves the loop iteration that renders the
 * scrape. */
static const struct model_stats *server_stats(struct server *s)
{
    if (!s->st_valid || s->st_tick != s->loop_ticks) {
        model_stats(s->model, &s->st);
        s->st_tick = s->loop_ticks;
        s->st_valid = true;
    }
    return &s->st;
}

static double gauge_users(void *ctx)
{
    return (double)server_stats(ctx)->users;
}

static double gauge_items(void *ctx)
{
    return (double)server_stats(ctx)->items;
}

static double gauge_loss(void *ctx)
{
    return server_stats(ctx)->rel_loss;
}

static double gauge_evicted(void *ctx)
{
    return server_stats(ctx)->evicted_weight;
}

static double gauge_holdout(void *ctx)
{
    return server_stats(ctx)->holdout_loss;
}

/* model.robust = l21: a pass over the users per scrape. */
#define SERVER_OUTLIER_WEIGHT 0.25

static double gauge_outliers(void *ctx)
{
    struct model_robust_summary rs;
    model_robust_summary(((struct server *)ctx)->model, SERVER_OUTLIER_WEIGHT,
                         &rs);
    return (double)rs.below;
}

static double gauge_lowest_weight(void *ctx)
{
    struct model_robust_summary rs;
    model_robust_summary(((struct server *)ctx)->model, SERVER_OUTLIER_WEIGHT,
                         &rs);
    return rs.lowest;
}

static double gauge_stale(void *ctx)
{
    return (double)server_stats(ctx)->stale;
}

static double gauge_model_events(void *ctx)
{
    return (double)server_stats(ctx)->events;
}

static double gauge_epoch(void *ctx)
{
    return (double)((struct server *)ctx)->epoch;
}

static double gauge_refining(void *ctx)
{
    struct server *s = ctx;
    return upkeep_refining(s->upkeep) ? 1 : 0;
}

static double gauge_reseeded(void *ctx)
{
    return (double)server_stats(ctx)->reseeded;
}

static double gauge_moved(void *ctx)
{
    return (double)server_stats(ctx)->moved;
}

static double gauge_restarts(void *ctx)
{
    return (double)server_stats(ctx)->restarts;
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

static double gauge_lag(void *ctx)
{
    return (double)ingest_lag(((struct server *)ctx)->ing);
}

static double gauge_rate(void *ctx)
{
    return ((struct server *)ctx)->rate;
}

static double gauge_ready(void *ctx)
{
    const char *why;
    return server_ready(ctx, &why) == 0;
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
    struct metrics *m = s->metrics;

    s->m.delivery_errors =
        metrics_counter(m, "nmfd_producer_errors_total",
                        "Output producer errors reported.", NULL);
    s->m.consumer_errors = metrics_counter(m, "nmfd_consumer_errors_total",
                                           "Consumer errors reported.", NULL);
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
    metrics_gauge_fn(m, "nmfd_robust_outliers",
                     "model.robust = l21: users whose weight is under 0.25 of "
                     "the mean (0 without robust).",
                     NULL, gauge_outliers, s);
    metrics_gauge_fn(m, "nmfd_robust_lowest_weight",
                     "model.robust = l21: the lowest user weight relative to "
                     "the mean (1 without robust).",
                     NULL, gauge_lowest_weight, s);
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

/* ---- start --------------------------------------------------------------- */

/* Whether the operator set a [kafka] key (file or --set). */
static bool kafka_key_set(const struct server *s, const char *key)
{
    char name[256];
    const char *origin;
    snprintf(name, sizeof(name), "kafka.%s", key);
    origin = config_origin(s->cfg, name);
    return origin && strcmp(origin, "default");
}

static int kafka_conf_fill(struct server *s, struct kafka_conf *conf,
                           bool consumer)
{
    char err[512];
    const struct config *c = s->cfg;

    for (size_t i = 0; i < c->kafka.n; i++) {
        /* Given to the output producer alone, by kafka_out_new. */
        if (!strcmp(c->kafka.kv[i].key, "transactional.id"))
            continue;
        if (kafka_conf_set(conf, c->kafka.kv[i].key, c->kafka.kv[i].value, err,
                           sizeof(err))) {
            log_err("%s: kafka.%s: %s", c->kafka.kv[i].origin,
                    c->kafka.kv[i].key, err);
            return -EINVAL;
        }
    }
    /* librdkafka waits up to 10 s between reconnects by default; after an
     * outage that delays the resume by as much. The Java client's 1 s. */
    if (!kafka_key_set(s, "reconnect.backoff.max.ms"))
        kafka_conf_set(conf, "reconnect.backoff.max.ms", "1000", err,
                       sizeof(err));
    if (s->broker) {
        /* The embedded broker: its address, and the timings its mock group
         * coordinator needs (KAFKA-MOCK.md), unless configured. */
        kafka_conf_set(conf, "bootstrap.servers", broker_bootstraps(s->broker),
                       err, sizeof(err));
        if (consumer) {
            static const char *tuning[][2] = {
                {"session.timeout.ms", "6000"},
                {"heartbeat.interval.ms", "1000"},
                {"fetch.wait.max.ms", "10"},
                {"fetch.error.backoff.ms", "10"},
            };
            for (size_t i = 0; i < sizeof(tuning) / sizeof(tuning[0]); i++)
                if (!kafka_key_set(s, tuning[i][0]))
                    kafka_conf_set(conf, tuning[i][0], tuning[i][1], err,
                                   sizeof(err));
        }
    }
    /* librdkafka stops fetching every partition once the consumer queue
     * (all partitions together: each partition's fetch queue is
     * forwarded to it) holds queued.min.messages, and its broker thread
     * then sleeps until its next wake-up, up to a second, not until the
     * queue drains. At its default of 100 000 a process that folds 100 k
     * events a second emptied the queue before the fetcher woke: the
     * members of a group received at most about queued.min.messages and
     * one fetch per second, their queue empty with events waiting in
     * half the seconds of a run (docs/benchmarks.md section 10). Half a
     * million is three seconds of a process's fold through Kafka, for
     * about 150 MB more resident at the peak of a backlog (the messages
     * waiting in librdkafka); the embedded broker keeps its million. */
    if (consumer && !kafka_key_set(s, "queued.min.messages"))
        kafka_conf_set(conf, "queued.min.messages",
                       s->broker ? "1000000" : "500000", err, sizeof(err));
    /* A group keeps librdkafka's default (eager) assignor: every
     * rebalance hands every partition's state over and restores it, which
     * cooperative-sticky would spare, but Debian's librdkafka 2.0.2 aborts
     * in rd_kafka_sticky_assignor_state_destroy when a member closes (seen
     * in the kill test). Set partition.assignment.strategy to choose. */
    if (consumer) {
        /* A new group reads its topics from the start: events produced
         * before the first start are events too. The checkpoint's offsets
         * win over this whenever there is one. */
        if (!kafka_key_set(s, "auto.offset.reset"))
            kafka_conf_set(conf, "auto.offset.reset", "earliest", err,
                           sizeof(err));
        kafka_conf_set(conf, "statistics.interval.ms", "1000", err,
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

static const char *server_group(const struct server *s)
{
    for (size_t i = 0; i < s->cfg->kafka.n; i++)
        if (!strcmp(s->cfg->kafka.kv[i].key, "group.id"))
            return s->cfg->kafka.kv[i].value;
    return "nmfd";
}

static uint64_t server_model_version(void *ctx)
{
    const struct server *s = ctx;
    return cluster_model_version(s->cluster);
}

static char *server_group_json(void *ctx)
{
    const struct server *s = ctx;
    return s->cluster ? cluster_status_json(s->cluster) : NULL;
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

static int server_load_state(struct server *s)
{
    struct checkpoint_meta meta;
    struct model *m = NULL;
    struct checkpoint_offset *seek = NULL;
    size_t nseek = 0;
    char err[1024];
    int rc;

    if (s->opts->ignore_checkpoint) {
        log_notice("starting fresh: --ignore-checkpoint");
    } else {
        rc = checkpoint_read(s->cfg->checkpoint.dir, &meta, &seek, &nseek, &m,
                             err, sizeof(err));
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
                checkpoint_offsets_free(seek, nseek);
                return -EINVAL;
            }
            if (have->holdout != s->cfg->model.params.holdout) {
                log_err("checkpoint has model.holdout=%g but the "
                        "configuration says %g; the held-out pairs would "
                        "change: start with --ignore-checkpoint to refit",
                        have->holdout, s->cfg->model.params.holdout);
                model_free(m);
                checkpoint_offsets_free(seek, nseek);
                return -EINVAL;
            }
            if (have->robust != s->cfg->model.params.robust) {
                /* Weighted statistics do not convert: a refit. */
                log_err("checkpoint has model.robust=%s but the "
                        "configuration says %s; start with "
                        "--ignore-checkpoint to refit",
                        have->robust == MODEL_ROBUST_L21 ? "l21" : "none",
                        s->cfg->model.params.robust == MODEL_ROBUST_L21
                            ? "l21"
                            : "none");
                model_free(m);
                checkpoint_offsets_free(seek, nseek);
                return -EINVAL;
            }
            if (have->loss != s->cfg->model.params.loss) {
                /* The statistics of one loss are not those of the
                 * other: a refit. */
                log_err("checkpoint has model.loss=%s but the "
                        "configuration says %s; start with "
                        "--ignore-checkpoint to refit",
                        have->loss == MODEL_LOSS_KL ? "kl" : "frobenius",
                        s->cfg->model.params.loss == MODEL_LOSS_KL
                            ? "kl"
                            : "frobenius");
                model_free(m);
                checkpoint_offsets_free(seek, nseek);
                return -EINVAL;
            }
            s->model = m;
            s->epoch = meta.epoch;
            checkpoints_loaded(s->ckpt, (uint64_t)meta.written_ms);
            log_notice("checkpoint loaded: epoch %" PRIu64 ", %zu offsets",
                       meta.epoch, nseek);
            if (s->opts->embedded_broker && nseek) {
                /* Those offsets name positions in logs that died with the
                 * process that hosted them: the embedded broker starts
                 * empty, and seeking there would skip as many new events.
                 * The model stays; the input is read from its start. */
                log_notice("embedded broker: its logs are new, so the "
                           "checkpoint's %zu offsets do not apply; reading "
                           "from the start",
                           nseek);
                checkpoint_offsets_free(seek, nseek);
                seek = NULL;
                nseek = 0;
            }
            ingest_restore(s->ing, meta.consumed, meta.rejected, seek, nseek);
        }
    }
    if (!s->model) {
        s->model = model_new(&s->cfg->model.params);
        if (!s->model)
            return -ENOMEM;
    }
    if (checkpoints_epoch_read(s->ckpt) > s->epoch)
        s->epoch = checkpoints_epoch_read(s->ckpt);
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
    uv_timer_stop(&s->t_ckpt);
    upkeep_stop(s->upkeep);
    ingest_pause(s->ing);
    /* The final epoch, unless one is in flight (it ends the same way). */
    if (publisher_idle(s->pub) &&
        (s->exit_code || publisher_start(s->pub, s->epoch + 1)))
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
    if (!s->stopping || !publisher_idle(s->pub) || s->closing)
        return;
    if (ingest_running(s->ing)) {
        checkpoints_wait(s->ckpt);
        if (s->ready && !s->refused &&
            checkpoints_write(s->ckpt, s->model, s->epoch) == 0)
            ingest_commit_now(s->ing);
        s->closing++;
        ingest_close(s->ing);
        return;
    }
    if (s->cluster) {
        /* After the consumer: its revocation hands the partitions' state
         * over through the group's producer. */
        struct cluster *cl = s->cluster;
        s->cluster = NULL;
        s->closing++;
        cluster_close(cl, server_on_cluster_closed, s);
        s->cluster_closed = cl;
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
    if (views_open(s->views)) {
        s->closing++;
        views_close(s->views, server_on_http_closed, s);
        return;
    }
    checkpoints_wait_snapshot(s->ckpt);
    uv_handle_t *handles[] = {
        (uv_handle_t *)&s->t_epoch,  (uv_handle_t *)&s->t_ckpt,
        (uv_handle_t *)&s->t_status, (uv_handle_t *)&s->t_watchdog,
        (uv_handle_t *)&s->tick,     (uv_handle_t *)&s->s_term,
        (uv_handle_t *)&s->s_int,    (uv_handle_t *)&s->s_hup,
        (uv_handle_t *)&s->s_chld,
    };
    upkeep_close(s->upkeep);
    s->upkeep = NULL;
    publisher_close(s->pub);
    s->pub = NULL;
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], server_close_cb);
}

/* The embedded broker (--embedded-broker): the input and segment topics
 * with the partitions asked for, the topic and manifest topics with one,
 * and its address on stdout and in checkpoint.dir/bootstrap. */
static int server_start_broker(struct server *s)
{
    const struct config *c = s->cfg;
    size_t len = strlen(c->input.topics) + 256;
    char *topics = malloc(len), err[512];
    int parts =
        s->opts->embedded_partitions > 0 ? s->opts->embedded_partitions : 4;
    int rc;

    if (!topics)
        return -ENOMEM;
    snprintf(topics, len, "%s,%s", c->input.topics, c->snapshot.topic_segments);
    rc = broker_open(&s->broker, 1, topics, parts, s->opts->embedded_port, err,
                     sizeof(err));
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
    if (c->cluster.enabled) {
        broker_topic_create(s->broker, c->cluster.stats_topic, 1);
        broker_topic_create(s->broker, c->cluster.model_topic, 1);
        broker_topic_create(s->broker, c->cluster.state_topic, parts);
    }
    printf("nmfd: embedded broker at %s\n", broker_bootstraps(s->broker));
    fflush(stdout);
    log_notice("embedded broker at %s", broker_bootstraps(s->broker));
    rc = write_bootstrap_file(s);
    if (rc)
        log_warn("%s/bootstrap: %s", c->checkpoint.dir, strerror(-rc));
    return 0;
}

/* The event decoder of the [input] section, into s->dec until ingest
 * takes it. */
static int server_decoder_new(struct server *s)
{
    const struct config *c = s->cfg;
    struct event_type_weight *tw = calloc(c->input.nweights + 1, sizeof(*tw));
    struct event_decoder_conf dc = {
        .format = c->input.format == CONFIG_INPUT_MSGPACK ? EVENT_FORMAT_MSGPACK
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
    return s->dec ? 0 : -ENOMEM;
}

/* The output producer (transactional when snapshot.transactional) and,
 * with input.dead_letter_topic, the dead-letter one. */
static int server_start_output(struct server *s)
{
    static const struct kafka_out_cbs ocbs = {
        server_on_out_ready, server_on_out_error, server_on_kafka_log,
        server_on_out_closed};
    const struct config *c = s->cfg;
    struct kafka_conf *conf = kafka_conf_new();
    char err[512], txid[512];

    if (kafka_conf_fill(s, conf, false)) {
        kafka_conf_free(conf);
        return -EINVAL;
    }
    server_transactional_id(s, txid, sizeof(txid));
    s->out =
        kafka_out_new(&s->loop, conf, c->snapshot.transactional ? txid : NULL,
                      &ocbs, s, err, sizeof(err));
    if (!s->out) {
        log_err("output producer: %s", err);
        return -EINVAL;
    }
    if (c->input.dead_letter_topic[0]) {
        conf = kafka_conf_new();
        kafka_conf_fill(s, conf, false);
        s->dlq =
            kafka_out_new(&s->loop, conf, NULL, &ocbs, s, err, sizeof(err));
        if (!s->dlq) {
            log_err("dead-letter producer: %s", err);
            return -EINVAL;
        }
    }
    return 0;
}

static struct kafka_conf *server_kafka_conf(void *ctx, bool consumer)
{
    struct kafka_conf *conf = kafka_conf_new();
    if (conf && kafka_conf_fill(ctx, conf, consumer)) {
        kafka_conf_free(conf);
        return NULL;
    }
    return conf;
}

static void server_on_cluster_fatal(void *ctx, const char *why)
{
    struct server *s = ctx;
    log_err("cluster: %s; stopping rather than fold on a part of it", why);
    s->refused = true;
    server_stop(s, 1);
}

static void server_on_cluster_w(void *ctx)
{
    struct server *s = ctx;
    upkeep_kick(s->upkeep);
}

/* cluster.enabled: this process is a member of the group named by
 * kafka.group.id (cluster.c). Its checks refuse a start on topics that
 * cannot work. */
static int server_start_cluster(struct server *s)
{
    const struct config *c = s->cfg;
    const char *group = "nmfd";
    char err[1024];
    for (size_t i = 0; i < c->kafka.n; i++)
        if (!strcmp(c->kafka.kv[i].key, "group.id"))
            group = c->kafka.kv[i].value;
    struct cluster_conf cc = {.cfg = c,
                              .model = s->model,
                              .ing = s->ing,
                              .metrics = s->metrics,
                              .group_id = group,
                              .kafka_conf = server_kafka_conf,
                              .ctx = s,
                              .on_fatal = server_on_cluster_fatal,
                              .on_w = server_on_cluster_w};
    s->cluster = cluster_new(&s->loop, &cc);
    if (!s->cluster)
        return -ENOMEM;
    int rc = cluster_start(s->cluster, err, sizeof(err));
    if (rc)
        log_err("cluster: %s", err);
    return rc;
}

/* Alone (cluster.enabled = false), this process must own every input
 * partition: a second process in the group would fold half the users
 * into a second W, and segment j would mean two things. The first
 * assignment decides: a process that starts beside another refuses to
 * start; one that sees another arrive later says so loudly (the newcomer
 * refuses, and the partitions come back). */
static void server_on_assign(void *ctx, struct kafka_part *parts, size_t n)
{
    struct server *s = ctx;
    if (s->cluster) {
        cluster_on_assign(s->cluster, parts, n);
        return;
    }
    int total = 0;
    for (size_t i = 0; i < s->cfg->input.ntopics; i++) {
        int c = ingest_partition_count(s->ing, s->cfg->input.topic[i]);
        if (c < 0) {
            log_warn("input %s: partition count: %s", s->cfg->input.topic[i],
                     strerror(-c));
            return;
        }
        total += c;
    }
    struct ingest_stats is;
    ingest_stats(s->ing, &is);
    if (is.assigned >= (size_t)total) {
        s->assigned_once = true;
        return;
    }
    if (!s->assigned_once) {
        log_err("another process consumes group %s: this one was given %zu "
                "of the %d input partitions. Alone, each would build its own "
                "W. Refusing to start: set cluster.enabled = true on every "
                "process of the group (docs/operations.md, \"A group of "
                "processes\"), or give this one another kafka.group.id",
                server_group(s), is.assigned, total);
        s->refused = true;
        ingest_pause(s->ing);
        server_stop(s, 1);
        return;
    }
    log_err("another process joined group %s without cluster.enabled: it "
            "holds %d of the %d input partitions for now",
            server_group(s), total - (int)is.assigned, total);
}

static void server_on_revoke(void *ctx, const struct kafka_part *parts,
                             size_t n, bool lost)
{
    struct server *s = ctx;
    if (s->cluster)
        cluster_on_revoke(s->cluster, parts, n, lost);
}

/* The consumer: ingest takes the decoder and subscribes to the input
 * topics. */
static int server_start_input(struct server *s)
{
    static const struct ingest_cbs icbs = {
        server_on_error,     server_on_kafka_log, server_on_stats,
        server_on_in_closed, server_on_assign,    server_on_revoke};
    const struct config *c = s->cfg;
    struct kafka_conf *conf = kafka_conf_new();
    struct ingest_conf ic = {s->model, s->dec, s->dlq,
                             c->input.dead_letter_topic};
    char err[512];
    int rc;

    if (kafka_conf_fill(s, conf, true)) {
        kafka_conf_free(conf);
        return -EINVAL;
    }
    s->dec = NULL; /* ingest's now */
    rc = ingest_start(s->ing, &ic, conf, c->input.topics, &icbs, s, err,
                      sizeof(err));
    if (rc)
        log_err("%s", err);
    return rc;
}

/* The HTTP endpoint, when http.listen names one. */
static int server_start_http(struct server *s)
{
    const struct config *c = s->cfg;
    char err[512];
    int rc;

    if (!c->http.listen[0])
        return 0;
    rc = views_start(s->views, &s->loop, c->http.listen, err, sizeof(err));
    if (rc) {
        log_err("http.listen %s: %s", c->http.listen, err);
        return rc;
    }
    log_notice("http on %s (port %d)", c->http.listen, views_port(s->views));
    return 0;
}

/* Start-up in order: the checkpoint directory, the embedded broker, the
 * state, the decoder, the output (first, so the first epoch finds it
 * ready), the publisher and the views on them, the input, HTTP; then
 * READY=1. A failure stops there with its words logged. */
static int server_start(struct server *s)
{
    struct config *c = s->cfg;
    int rc;

    rc = checkpoints_prepare(c->checkpoint.dir);
    if (rc) {
        log_err("checkpoint.dir %s: %s", c->checkpoint.dir, strerror(-rc));
        return rc;
    }
    if (s->opts->embedded_broker && (rc = server_start_broker(s)))
        return rc;
    if ((rc = server_load_state(s)) || (rc = server_decoder_new(s)) ||
        (rc = server_start_output(s)))
        return rc;

    if (c->cluster.enabled && (rc = server_start_cluster(s)))
        return rc;
    struct publisher_conf pc = {
        .model = s->model,
        .out = s->out,
        .ing = s->ing,
        .cfg = c,
        .metrics = s->metrics,
        .group = s->cluster ? cluster_publish_view : NULL,
        .model_version = s->cluster ? cluster_version_of : NULL,
        .group_ctx = s->cluster};
    s->pub = publisher_new(&s->loop, &pc, server_on_published, s);
    if (!s->pub)
        return -ENOMEM;
    struct views_conf vc = {.model = s->model,
                            .ing = s->ing,
                            .metrics = s->metrics,
                            .cfg = c,
                            .epoch = &s->epoch,
                            .health = server_health,
                            .ready = server_ready,
                            .ctx = s,
                            .continuity = publisher_continuity(s->pub),
                            .group = s->cluster ? server_group(s) : NULL,
                            .model_version =
                                s->cluster ? server_model_version : NULL,
                            .group_json = s->cluster ? server_group_json : NULL};
    s->views = views_new(&vc);
    if (!s->views)
        return -ENOMEM;

    if ((rc = server_start_input(s)) || (rc = server_start_http(s)))
        return rc;

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
    log_set_level(cfg->log.level);
    if (uv_loop_init(&s->loop)) {
        free(s);
        config_free(cfg);
        return 1;
    }
    s->metrics = metrics_new();
    s->ing = ingest_new(&s->loop, s->metrics);
    if (!s->ing) {
        uv_loop_close(&s->loop);
        metrics_free(s->metrics);
        free(s);
        config_free(cfg);
        return 1;
    }
    ingest_set_reject_log(s->ing, cfg->input.reject_log_interval_ms,
                          cfg->input.reject_log_burst);
    server_metrics_init(s);
    s->ckpt = checkpoints_new(cfg, s->ing, s->metrics);
    if (!s->ckpt) {
        ingest_free(s->ing);
        uv_loop_close(&s->loop);
        metrics_free(s->metrics);
        free(s);
        config_free(cfg);
        return 1;
    }

    uv_timer_init(&s->loop, &s->t_epoch);
    uv_timer_init(&s->loop, &s->t_ckpt);
    uv_timer_init(&s->loop, &s->t_status);
    uv_timer_init(&s->loop, &s->t_watchdog);
    uv_prepare_init(&s->loop, &s->tick);
    uv_signal_init(&s->loop, &s->s_term);
    uv_signal_init(&s->loop, &s->s_int);
    uv_signal_init(&s->loop, &s->s_hup);
    uv_signal_init(&s->loop, &s->s_chld);
    s->t_epoch.data = s->t_ckpt.data = s;
    s->t_status.data = s->t_watchdog.data = s->tick.data = s;
    s->s_term.data = s->s_int.data = s->s_hup.data = s->s_chld.data = s;
    uv_signal_start(&s->s_term, on_stop_signal, SIGTERM);
    uv_signal_start(&s->s_int, on_stop_signal, SIGINT);
    uv_signal_start(&s->s_hup, on_sighup, SIGHUP);
    uv_signal_start(&s->s_chld, on_sigchld, SIGCHLD);
    uv_prepare_start(&s->tick, on_tick);

    rc = server_start(s);
    if (rc) {
        s->exit_code = 1;
        s->ready = false;
        server_stop(s, 1);
    } else {
        uint64_t wd = 0;
        uv_timer_start(&s->t_epoch, on_epoch_timer, cfg->snapshot.interval_ms,
                       cfg->snapshot.interval_ms);
        uv_timer_start(&s->t_ckpt, on_ckpt_timer, cfg->checkpoint.interval_ms,
                       cfg->checkpoint.interval_ms);
        uv_timer_start(&s->t_status, on_status_timer, SERVER_STATUS_MS,
                       SERVER_STATUS_MS);
        struct upkeep_conf uc = {s->model, s->ing, cfg, s->metrics};
        s->upkeep = upkeep_new(&s->loop, &uc);
        if (!s->upkeep)
            server_stop(s, 1);
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
    cluster_free(s->cluster ? s->cluster : s->cluster_closed);
    broker_free(s->broker);
    model_free(s->model);
    event_decoder_free(s->dec);
    views_free(s->views);
    checkpoints_free(s->ckpt);
    ingest_free(s->ing);
    metrics_free(s->metrics);
    config_free(s->cfg);
    free(s);
    if (code == 0)
        log_notice("stopped cleanly");
    return code;
}
