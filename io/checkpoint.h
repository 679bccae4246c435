/* checkpoint.h -- the whole model state and the consumed offsets in one
 * file, written atomically, refused whole when anything is wrong. */
#ifndef NMFD_IO_CHECKPOINT_H
#define NMFD_IO_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define CHECKPOINT_FILE "nmfd.ckpt"

/* Where the next event of one input partition starts. */
struct checkpoint_offset {
    char *topic;
    int32_t partition;
    int64_t offset;
    uint64_t events; /* events of the partition folded (format 2) */
    double weight;   /* their weights (format 2) */
};

/* Daemon counters that must survive a restart with the model. */
struct checkpoint_meta {
    uint64_t epoch;     /* last published epoch */
    uint64_t rejected;  /* events rejected since the model began */
    uint64_t consumed;  /* messages consumed since the model began */
    int64_t written_ms; /* wall clock at the time of the state */
};

/* Writes dir/nmfd.ckpt: temp file, fsync, rename, fsync dir. Uses only
 * write(2)-level I/O and no stdio, so it is safe in a forked child. */
int checkpoint_write(const char *dir, const struct checkpoint_meta *meta,
                     const struct checkpoint_offset *offs, size_t noffs,
                     const struct model *m, char *err, size_t errlen);

/* Reads dir/nmfd.ckpt. -ENOENT when there is none; any other failure
 * (truncated, corrupt, incompatible) returns a negative errno with a clear
 * message and leaves every output untouched. */
int checkpoint_read(const char *dir, struct checkpoint_meta *meta,
                    struct checkpoint_offset **offs, size_t *noffs,
                    struct model **m, char *err, size_t errlen);

/* The same from a buffer (what checkpoint_read does after reading). */
int checkpoint_parse(const void *buf, size_t len, struct checkpoint_meta *meta,
                     struct checkpoint_offset **offs, size_t *noffs,
                     struct model **m, char *err, size_t errlen);

void checkpoint_offsets_free(struct checkpoint_offset *offs, size_t n);

#endif
