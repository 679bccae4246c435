/* cluster.h -- a group of nmfd processes sharing one W (docs/design.md
 * section 8): statistics out, W in, the leader's refresh, and users'
 * state that moves with the input partitions. */
#ifndef NMFD_DAEMON_CLUSTER_H
#define NMFD_DAEMON_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "kafka.h"

struct config;
struct ingest;
struct metrics;
struct model;
struct records_group;

struct cluster;

struct cluster_conf {
    const struct config *cfg;  /* [cluster], [input], [model] */
    struct model *model;       /* this member's users; made a follower */
    struct ingest *ing;        /* partitions' positions and counts */
    struct metrics *metrics;
    const char *group_id;      /* kafka group.id: the group's name */
    /* A new librdkafka configuration from [kafka] (consumer: with the
     * consumer keys), or NULL when [kafka] is unusable. */
    struct kafka_conf *(*kafka_conf)(void *ctx, bool consumer);
    void *ctx;
    /* A fatal condition (a partition's state that cannot be restored):
     * the owner stops with an error. */
    void (*on_fatal)(void *ctx, const char *why);
    /* A new W was installed: every user is stale against it. */
    void (*on_w)(void *ctx);
};

/* NULL out of memory. */
struct cluster *cluster_new(uv_loop_t *loop, const struct cluster_conf *c);

/* Checks the topics (one input topic; the stats and model topics with
 * one partition, the state topic with the input's count), starts the
 * producer, the follower of the model topic, the leader's consumer and
 * the timer. Before ingest subscribes. 0, or -errno with the words in
 * err (a clear refusal: the daemon does not start). */
int cluster_start(struct cluster *cl, char *err, size_t errlen);

/* Ingest's assignment and revocation (ingest_cbs): restores the state of
 * each partition gained and moves its offset; hands over the state of
 * each partition going (unless lost) and forgets its users. */
void cluster_on_assign(struct cluster *cl, struct kafka_part *parts, size_t n);
void cluster_on_revoke(struct cluster *cl, const struct kafka_part *parts,
                       size_t n, bool lost);

/* Writes the state of every owned partition to the state topic (with the
 * checkpoint, on its timer). */
void cluster_state_write(struct cluster *cl);

/* The publisher's group hook (publisher_conf.group). */
bool cluster_publish_view(void *cl, struct records_group *g, uint64_t *sizes,
                          double *mass);

bool cluster_is_leader(const struct cluster *cl);
/* The version of W this member folds with (0 before the first). */
uint64_t cluster_model_version(const struct cluster *cl);
/* The same as a hook (publisher_conf.model_version). */
uint64_t cluster_version_of(void *cl);

/* JSON for the dashboard and /status: this member and, on the leader,
 * every partition's owner. malloc'd, NULL out of memory. */
char *cluster_status_json(const struct cluster *cl);

/* Closes its clients and timer; done(arg) once all are closed. */
void cluster_close(struct cluster *cl, void (*done)(void *arg), void *arg);
void cluster_free(struct cluster *cl);

#endif
