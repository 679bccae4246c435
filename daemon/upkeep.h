/* upkeep.h -- the model's background work on the loop: W refresh on its
 * clock, refinement of stale users, TTL expiry. */
#ifndef NMFD_DAEMON_UPKEEP_H
#define NMFD_DAEMON_UPKEEP_H

#include <stdbool.h>

#include <uv.h>

struct config;
struct ingest;
struct metrics;
struct model;

struct upkeep;

struct upkeep_conf {
    struct model *model;      /* refreshed, refined, expired */
    struct ingest *ing;       /* its folded count and backlog */
    const struct config *cfg; /* model.refresh_interval_ms, refine_users */
    struct metrics *metrics;
};

/* Starts the timers and handles on loop. NULL out of memory. */
struct upkeep *upkeep_new(uv_loop_t *loop, const struct upkeep_conf *c);
/* No more background work (shutdown): timers and refinement stop. */
void upkeep_stop(struct upkeep *u);
/* Closes the handles; u is freed in the last close callback. */
void upkeep_close(struct upkeep *u);
/* Whether idle time goes to refinement now. */
bool upkeep_refining(const struct upkeep *u);

/* W changed under the users from outside (a group's new version): the
 * idle refinement starts now, not at the next quiet spell. */
void upkeep_kick(struct upkeep *u);

#endif
