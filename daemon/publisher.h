/* publisher.h -- the epoch publisher: segment, topic and manifest records
 * of one epoch in one transaction (DESIGN.md §3). */
#ifndef NMFD_DAEMON_PUBLISHER_H
#define NMFD_DAEMON_PUBLISHER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

struct config;
struct ingest;
struct kafka_out;
struct metrics;
struct model;
struct records_group;

struct publisher;

struct publisher_conf {
    struct model *model;      /* read; its epoch counter advanced */
    struct kafka_out *out;    /* the output producer, borrowed */
    struct ingest *ing;       /* the rejected count for the manifest */
    const struct config *cfg; /* snapshot.*, model.refresh_interval_ms */
    struct metrics *metrics;  /* records, epochs and failures counted */
    /* In a group of processes (NULL alone): whether this member publishes
     * the topic records and the manifest (the leader does), and then the
     * group's totals, segment sizes and masses (k each) for them. */
    bool (*group)(void *ctx, struct records_group *g, uint64_t *sizes,
                  double *mass);
    /* The version of W the member folds with, which every record of an
     * epoch carries (model_version). */
    uint64_t (*model_version)(void *ctx);
    void *group_ctx;
};

/* An epoch ended: status 0 published (committed), else why it was not
 * (the next epoch is then a full one). The publisher is idle again when
 * this runs. */
typedef void (*publisher_done_cb)(void *ctx, uint64_t epoch, int status);

/* NULL out of memory. done and ctx are called for every epoch. */
struct publisher *publisher_new(uv_loop_t *loop, const struct publisher_conf *c,
                                publisher_done_cb done, void *ctx);
/* Closes its loop handle; p is freed in the close callback. Only while
 * idle. */
void publisher_close(struct publisher *p);

/* Starts publishing epoch (the last published + 1): a slice of segment
 * records per loop iteration, then the topic records and the manifest,
 * then the commit. -EAGAIN an epoch is in flight or the producer is not
 * ready; other negative errno from the producer. A NULL p is never ready. */
int publisher_start(struct publisher *p, uint64_t epoch);
/* Whether no epoch is in flight (true for NULL). */
bool publisher_idle(const struct publisher *p);
/* When the epoch in flight started (ms, wall clock); 0 when idle. */
uint64_t publisher_started_ms(const struct publisher *p);
/* Each topic's continuity in the last epoch's topic records (k values,
 * 0 before the first; DESIGN.md section 1). Valid until p is closed. */
const double *publisher_continuity(const struct publisher *p);

#endif
