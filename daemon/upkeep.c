/* upkeep.c -- the model's background work, on timers and idle time of the
 * one loop, like redis's serverCron.
 *
 * W is refreshed on its clock (model.refresh_interval) when events were
 * folded since the last refresh; users and items unseen for the ttl are
 * forgotten once a minute; and refinement re-solves users whose h is
 * stale against the current W (see refine_streaming for when).
 *
 * This file owns its timers, the refinement's idle handle and the check
 * handle that pays for refinement after each loop iteration, the marks it
 * keeps on ingest's folded count, and the refresh and refinement metrics.
 * It changes the model only through model_refresh, model_refine and
 * model_expire; it never folds, publishes or writes files. It is freed
 * in the close callback of its last handle.
 */
#include "upkeep.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "config.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "model.h"

#define UPKEEP_EXPIRE_MS 60000
/* Refinement while events flow: one stale user re-solved per this many
 * events folded (a quarter more solves at most); the full idle slice
 * once the input has been quiet this long. */
#define UPKEEP_REFINE_EVERY 4
#define UPKEEP_QUIET_MS     100

struct upkeep {
    struct upkeep_conf c;
    uv_timer_t t_refresh, t_expire;
    uv_timer_t t_quiet; /* fires when the input has been quiet a while */
    uv_idle_t refine;
    uv_check_t settle; /* refinement paid for by each iteration's folds */
    int open;          /* handles not yet closed */
    bool stopped;

    uint64_t folded_at_refresh; /* ingest's folded count at the refresh */
    uint64_t folded_seen;       /* ... at the end of the last iteration */
    uint64_t refine_owed; /* events folded not yet matched by refinement */

    struct metric *refresh_seconds, *refreshes, *refined;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_refine(uv_idle_t *h);
static void on_quiet_timer(uv_timer_t *t);

static void upkeep_refresh(struct upkeep *u)
{
    struct ingest_stats is;
    double t0 = mono_s();
    model_refresh(u->c.model);
    metric_observe(u->refresh_seconds, mono_s() - t0);
    metric_inc(u->refreshes);
    ingest_stats(u->c.ing, &is);
    u->folded_at_refresh = is.folded;
}

static void on_refresh_timer(uv_timer_t *t)
{
    struct upkeep *u = t->data;
    struct ingest_stats is;
    ingest_stats(u->c.ing, &is);
    if (is.folded != u->folded_at_refresh)
        upkeep_refresh(u);
}

/*
 * Refinement re-solves users whose h is stale against the current W.
 * While events flow it is paid for by them: after each loop iteration
 * that folded, one stale user per UPKEEP_REFINE_EVERY events, so H never
 * goes stale for long and ingest keeps the CPU. But not while nmfd is
 * behind its input (the consumer left messages waiting): catching up makes
 * the segments of every user in the backlog current, refinement only
 * those of users who sent nothing, so the backlog goes first. What
 * refinement is owed meanwhile is kept up to one slice and paid once the
 * backlog is gone; beyond that the idle pass converges the rest, as
 * nmfctl fit does after the whole stream. Once the input has been
 * quiet for UPKEEP_QUIET_MS the idle handle takes over with the full
 * slice (model.refine_users) every iteration until the model converges.
 * An idle handle keeps the loop from sleeping, so it runs only then:
 * while events flow the loop still sleeps in poll between messages.
 */
static void refine_streaming(struct upkeep *u)
{
    const uint32_t slice = u->c.cfg->model.refine_users;
    uv_idle_stop(&u->refine);
    uv_timer_start(&u->t_quiet, on_quiet_timer, UPKEEP_QUIET_MS, 0);
    size_t cap = (size_t)slice * UPKEEP_REFINE_EVERY;
    if (u->refine_owed > cap)
        u->refine_owed = cap;
    if (ingest_behind(u->c.ing))
        return;
    size_t budget = u->refine_owed / UPKEEP_REFINE_EVERY;
    if (!budget || !slice)
        return;
    if (budget > slice)
        budget = slice;
    u->refine_owed -= budget * UPKEEP_REFINE_EVERY;
    size_t n = model_refine(u->c.model, budget);
    metric_add(u->refined, (double)n);
}

static void on_quiet_timer(uv_timer_t *t)
{
    struct upkeep *u = t->data;
    u->refine_owed = 0;
    if (u->c.cfg->model.refine_users && !u->stopped)
        uv_idle_start(&u->refine, on_refine);
}

static void on_refine(uv_idle_t *h)
{
    struct upkeep *u = h->data;
    size_t n;
    uint64_t before = model_refreshes(u->c.model);
    n = model_refine(u->c.model, u->c.cfg->model.refine_users);
    metric_add(u->refined, (double)n);
    if (n == 0 && model_refreshes(u->c.model) == before)
        uv_idle_stop(h); /* converged; the next quiet spell starts it again */
}

/* At the end of each loop iteration: the events it folded pay for
 * refinement. */
static void on_settle(uv_check_t *h)
{
    struct upkeep *u = h->data;
    struct ingest_stats is;
    ingest_stats(u->c.ing, &is);
    u->refine_owed += is.folded - u->folded_seen;
    if (is.folded != u->folded_seen && !u->stopped)
        refine_streaming(u);
    u->folded_seen = is.folded;
}

static void on_expire_timer(uv_timer_t *t)
{
    struct upkeep *u = t->data;
    struct model_stats st;
    size_t n;
    if (!model_params(u->c.model)->ttl_ms)
        return;
    model_stats(u->c.model, &st);
    n = model_expire(u->c.model, st.now);
    if (n)
        log_info("forgot %zu users and items unseen for the ttl", n);
}

struct upkeep *upkeep_new(uv_loop_t *loop, const struct upkeep_conf *c)
{
    struct upkeep *u = calloc(1, sizeof(*u));
    const struct config *cfg = c->cfg;
    struct metrics *m = c->metrics;
    static const double secs[] = {0.001, 0.005, 0.01, 0.025, 0.05,
                                  0.1,   0.25,  0.5,  1,     5};

    if (!u)
        return NULL;
    u->c = *c;
    u->refresh_seconds =
        metrics_histogram(m, "nmfd_refresh_seconds", "Duration of a W refresh.",
                          NULL, secs, sizeof(secs) / sizeof(secs[0]));
    u->refreshes = metrics_counter(m, "nmfd_refreshes_total",
                                   "W refreshes on the clock.", NULL);
    u->refined = metrics_counter(m, "nmfd_users_refined_total",
                                 "Users re-solved in idle time.", NULL);
    uv_timer_init(loop, &u->t_refresh);
    uv_timer_init(loop, &u->t_expire);
    uv_timer_init(loop, &u->t_quiet);
    uv_idle_init(loop, &u->refine);
    uv_check_init(loop, &u->settle);
    u->open = 5;
    u->t_refresh.data = u->t_expire.data = u->t_quiet.data = u;
    u->refine.data = u->settle.data = u;
    uv_check_start(&u->settle, on_settle);
    if (cfg->model.refresh_interval_ms) /* 0: by event count only */
        uv_timer_start(&u->t_refresh, on_refresh_timer,
                       cfg->model.refresh_interval_ms,
                       cfg->model.refresh_interval_ms);
    uv_timer_start(&u->t_expire, on_expire_timer, UPKEEP_EXPIRE_MS,
                   UPKEEP_EXPIRE_MS);
    /* A restored model may have stale users: refine once quiet. */
    uv_timer_start(&u->t_quiet, on_quiet_timer, UPKEEP_QUIET_MS, 0);
    return u;
}

void upkeep_stop(struct upkeep *u)
{
    if (!u)
        return;
    u->stopped = true;
    uv_timer_stop(&u->t_refresh);
    uv_timer_stop(&u->t_expire);
    uv_timer_stop(&u->t_quiet);
    uv_idle_stop(&u->refine);
}

static void upkeep_on_close(uv_handle_t *h)
{
    struct upkeep *u = h->data;
    if (--u->open == 0)
        free(u);
}

void upkeep_close(struct upkeep *u)
{
    if (!u)
        return;
    uv_close((uv_handle_t *)&u->t_refresh, upkeep_on_close);
    uv_close((uv_handle_t *)&u->t_expire, upkeep_on_close);
    uv_close((uv_handle_t *)&u->t_quiet, upkeep_on_close);
    uv_close((uv_handle_t *)&u->refine, upkeep_on_close);
    uv_close((uv_handle_t *)&u->settle, upkeep_on_close);
}

void upkeep_kick(struct upkeep *u)
{
    if (u && !u->stopped && u->c.cfg->model.refine_users)
        uv_idle_start(&u->refine, on_refine);
}

bool upkeep_refining(const struct upkeep *u)
{
    return u && uv_is_active((const uv_handle_t *)&u->refine);
}
