/* views.h -- what nmfd shows over HTTP: /metrics, /healthz, /readyz,
 * /snapshot, /users/ID, /topics and the dashboard's epoch events. */
#ifndef NMFD_DAEMON_VIEWS_H
#define NMFD_DAEMON_VIEWS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct config;
struct ingest;
struct metrics;
struct model;

struct views;

struct views_conf {
    struct model *model;         /* read only */
    struct ingest *ing;          /* its counters and lag */
    struct metrics *metrics;     /* rendered at /metrics */
    const struct config *cfg;    /* snapshot.* and model.refresh_interval_ms */
    const uint64_t *epoch;       /* the last published epoch, the owner's */
    /* /healthz: 0 alive, else a negative errno (503). */
    int (*health)(void *ctx);
    /* /readyz: 0 ready, else -EAGAIN with a static reason. */
    int (*ready)(void *ctx, const char **why);
    void *ctx;
    /* Each topic's continuity in the last epoch (k values), or NULL: 1. */
    const double *continuity;
    /* In a group of processes (NULL alone): the group's name, the version
     * of W folded with, and the members as JSON (malloc'd) for the
     * dashboard. */
    const char *group;
    uint64_t (*model_version)(void *ctx);
    char *(*group_json)(void *ctx);
};

/* Creates the views and loads snapshot.item_names (on failure it warns
 * and shows ids). NULL out of memory. Serves nothing before views_start. */
struct views *views_new(const struct views_conf *c);
/* Frees v; its HTTP endpoint must be closed (or never started). */
void views_free(struct views *v);

/* Listens on listen (http.listen) with the limits, TLS and credentials
 * of the [http] section. 0, or a negative errno with the words in err. */
int views_start(struct views *v, uv_loop_t *loop, const char *listen,
                char *err, size_t errlen);
/* SIGHUP: the endpoint re-reads its credential and TLS files (http_reload);
 * 0 when not listening. 0 or a negative errno with the words in err, the
 * running credentials unchanged. */
int views_reload(struct views *v, char *err, size_t errlen);
/* The bound port, 0 when not listening. */
int views_port(const struct views *v);
/* Whether the endpoint is open (started and not yet closed). */
int views_open(const struct views *v);
/* Closes the endpoint; closed(arg) runs once it is gone. */
void views_close(struct views *v, void (*closed)(void *arg), void *arg);

struct model_stats;

/* The dashboard's event for a newly published epoch: st the model as the
 * epoch left it, rate the events folded per second in the last status
 * period. */
void views_epoch(struct views *v, const struct model_stats *st, double rate);

/* GET /users/ID: the user as JSON (*out malloc'd), -ENOENT, -ENOMEM. */
int views_user(struct views *v, const char *id, char **out);

#endif
