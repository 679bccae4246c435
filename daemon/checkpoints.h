/* checkpoints.h -- durability (DESIGN.md §4): the model and the input
 * positions in one checkpoint, written by a forked child while the loop
 * goes on; the snapshot file; the last published epoch beside them. */
#ifndef NMFD_DAEMON_CHECKPOINTS_H
#define NMFD_DAEMON_CHECKPOINTS_H

#include <stdint.h>

struct config;
struct ingest;
struct metrics;
struct model;

struct checkpoints;

/* Registers the checkpoint metrics. NULL out of memory. */
struct checkpoints *checkpoints_new(const struct config *cfg,
                                    struct ingest *ing, struct metrics *m);
/* Waits for nothing: call checkpoints_wait first at stop. */
void checkpoints_free(struct checkpoints *cp);

/* Makes checkpoint.dir (and its parents) and removes the temp files of a
 * writer that died with a crashed daemon. 0 or a negative errno. */
int checkpoints_prepare(const char *dir);
/* The checkpoint the state was loaded from was written at written_ms. */
void checkpoints_loaded(struct checkpoints *cp, uint64_t written_ms);

/* A checkpoint by a forked child (nothing if one is still being written).
 * Once it is durable, the positions it holds are committed to Kafka. */
void checkpoints_fork(struct checkpoints *cp, struct model *m, uint64_t epoch);
/* A checkpoint now, on the loop (the final one at stop). 0 or a negative
 * errno, logged and counted. */
int checkpoints_write(struct checkpoints *cp, struct model *m, uint64_t epoch);
/* The dense snapshot file (snapshot.file) by a forked child, skipped while
 * the previous one is still being written. */
void checkpoints_snapshot_file(struct checkpoints *cp, struct model *m,
                               uint64_t epoch);
/* Reaps finished children (SIGCHLD). */
void checkpoints_reap(struct checkpoints *cp);
/* Blocks until the checkpoint writer has exited (before the final one). */
void checkpoints_wait(struct checkpoints *cp);
/* Blocks until the snapshot file writer has exited (last at stop). */
void checkpoints_wait_snapshot(struct checkpoints *cp);

/* The last published epoch, beside the checkpoint (0 when none). */
void checkpoints_epoch_write(const struct checkpoints *cp, uint64_t epoch);
uint64_t checkpoints_epoch_read(const struct checkpoints *cp);

#endif
