/* records.h -- the msgpack records nmfd publishes (docs/design.md §3).
 *
 * Encoders for the segment, topic and manifest records and for the full
 * dense snapshot; a reader for dense snapshots; a msgpack -> JSON-lines
 * dumper. No Kafka here: the publisher produces what these encode. The
 * byte layout is documented field by field in docs/snapshot-format.md.
 */
#ifndef NMFD_IO_RECORDS_H
#define NMFD_IO_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define RECORDS_VERSION 1  /* the "v" of every record */
#define RECORDS_KEY_MAX 32 /* bytes for a topic or manifest key + NUL */
#define RECORDS_CLUSTER_MAX 256 /* bytes of a group name + NUL */

/* Keys: "topic-J" and the epoch in decimal, NUL-terminated. Return the
 * length without the NUL. (A segment record's key is the user id.) */
size_t records_topic_key(char out[RECORDS_KEY_MAX], uint32_t topic);
size_t records_manifest_key(char out[RECORDS_KEY_MAX], uint64_t epoch);

/* What an epoch adds to the model's own state. */
struct records_epoch {
    uint64_t epoch;
    int64_t ts;                  /* ms since the Unix epoch, epoch cut */
    int64_t refresh_interval_ms; /* model.refresh_interval; added to the
                                    "model" map when > 0 */
    /* In a group (docs/design.md section 8), model_version > 0: the
     * snapshot adds "model_version" and "cluster"; with group_totals
     * (the model topic's W) its events, weight_sum and loss are these,
     * the group's, not the model's. */
    uint64_t model_version;
    const char *cluster;
    bool group_totals;
    uint64_t events;
    double weight_sum;
    double loss;
};

/* A reusable encode buffer (plus scratch for the topic encoder). Every
 * encode replaces the previous value. */
struct records_enc;

struct records_enc *records_enc_new(void);
void records_enc_free(struct records_enc *e);
void records_enc_destroy(struct records_enc **e);

/* In a group (docs/design.md section 8): the segment and topic records
 * encoded from now on carry "model_version" = v (0: none, alone). */
void records_enc_set_model_version(struct records_enc *e, uint64_t v);

/* The last encoded value; valid until the next encode, release or free. */
const void *records_enc_data(const struct records_enc *e, size_t *len);
/* Hands the last value's malloc'd buffer over (free() it, or produce it
 * with RD_KAFKA_MSG_F_FREE); NULL when there is none. */
void *records_enc_release(struct records_enc *e, size_t *len);

/* {"v":1,"epoch","user","h":[k float32],"segment","share","ts"} where ts
 * is the user's latest event time. k is the model's rank. */
int records_segment_encode(struct records_enc *e, uint64_t epoch, uint32_t k,
                           const struct model_user_view *u);

/* {"v":1,"epoch","topic","k","top":[[item,weight float32],...],"users",
 * "mass","continuity"}: the top_n strongest items of topic j
 * (model_topic_top); users and mass come from model_segment_sizes,
 * computed once per epoch; continuity is the cosine of topic j to its
 * previous version (model_topic_continuity). -EINVAL when topic >= k or
 * continuity is not in [0, 1]. */
int records_topic_encode(struct records_enc *e, const struct model *m,
                         uint64_t epoch, uint32_t topic, uint32_t top_n,
                         uint64_t users, double mass, double continuity);

/* A group's totals for its manifest (the leader's): they replace the
 * model's users, items, events, weight_sum and loss, and add
 * "model_version", "cluster" and "partitions". */
struct records_group {
    const char *cluster;
    uint64_t model_version;
    uint64_t users, items, events;
    double weight_sum, loss;
    uint32_t partitions; /* input partitions whose statistics it sums */
};

struct records_manifest {
    const struct records_epoch *ep;
    bool full;
    uint64_t rejected;             /* events rejected since the start */
    uint64_t segments;             /* segment records in this epoch */
    const uint64_t *segment_sizes; /* k counts; NULL: computed from m */
    const struct records_group *group; /* a group's leader; NULL alone */
};

/* {"v":1,"epoch","ts","k","full","users","items","events","weight_sum",
 *  "rejected","loss","evicted_weight","segments","segment_sizes":[k],
 *  "model":{...}}; loss is model_loss's, exact for the current W and H. */
int records_manifest_encode(struct records_enc *e, const struct model *m,
                            const struct records_manifest *mf);

/* The full dense snapshot, only live users and items, in slot order:
 * {"v":1,"epoch","ts","k","events","weight_sum","loss","users":[U],
 *  "items":[M],"W":bin M*K f32 LE,"H":bin U*K,"A":bin K*K,"model":{}}.
 * In memory: */
int records_snapshot_encode(struct records_enc *e, const struct model *m,
                            const struct records_epoch *ep);

/* Streaming, for big models: the same bytes, handed to write in chunks of
 * at most 64 KiB. write returns 0 or a negative errno, which stops the
 * stream and is returned. Same signature as model_write_fn and
 * atomic_file_write. */
typedef int (*records_write_fn)(void *ctx, const void *buf, size_t len);
int records_snapshot_write(const struct model *m,
                           const struct records_epoch *ep,
                           records_write_fn write, void *ctx);

/* Streams the snapshot to path atomically (temp file in the same
 * directory, fsync, rename, fsync of the directory). Either the old file
 * or the complete new one exists, never half of one. */
int records_snapshot_save(const struct model *m, const struct records_epoch *ep,
                          const char *path);

/* A dense snapshot read back (nmfctl eval, tests). Ids are NUL-terminated
 * copies; W is nitems x k, H nusers x k, A k x k, row-major. */
struct records_snapshot {
    uint64_t epoch;
    int64_t ts;
    uint32_t k;
    uint64_t events;
    double weight_sum;
    double loss;
    uint32_t nusers;
    uint32_t nitems;
    char **users;
    size_t *user_lens;
    char **items;
    size_t *item_lens;
    float *W;
    float *H;
    float *A;
    /* From the "model" map; defaults for absent keys. */
    struct model_params params;
    /* A group's W: its version and the group's name; 0 and "" if absent. */
    uint64_t model_version;
    char cluster[RECORDS_CLUSTER_MAX];
};

/* NULL and *err set to a static message on anything inconsistent (wrong
 * version, missing field, a bin whose length is not count * k * 4, ...)
 * or on -ENOMEM ("out of memory"). */
struct records_snapshot *records_snapshot_read(const void *buf, size_t len,
                                               const char **err);
/* The same from a file; *err is also set for I/O errors. */
struct records_snapshot *records_snapshot_load(const char *path,
                                               const char **err);
void records_snapshot_free(struct records_snapshot *s);
void records_snapshot_destroy(struct records_snapshot **s);

/* Dump flags. Default: the top-level "W", "H", "A" bins are written as
 * arrays of float32 numbers, every other bin as a base64 string. */
#define RECORDS_DUMP_BIN_BASE64 0x1u /* every bin as a base64 string */
#define RECORDS_DUMP_BIN_LENGTH 0x2u /* every bin as {"bin": nbytes} */

/* Writes each msgpack value in buf (one or several, back to back) as one
 * line of JSON. Floats: shortest text that reads back to the same float32
 * or float64; NaN and Inf as null. Non-UTF-8 strings get U+FFFD for the
 * bad bytes. A map key that is not a string becomes its text ("7") or,
 * for a container or bin, "<map>", "<array>", "<bin>". Returns 0, -EBADMSG with
 * *err set (not msgpack, truncated, too deep), -EIO (write to out failed) or
 * -ENOMEM. Values before the bad one are written. */
int records_dump_json(FILE *out, const void *buf, size_t len, unsigned flags,
                      const char **err);

/* One partition's statistics on the group's stats topic (docs/design.md
 * section 8, docs/snapshot-format.md): the exact A_p, B_p (the rows of
 * the items its users hold) and sums of the users of input partition
 * `part`, complete up to input offset `offset`.
 * {"v":3,"cluster","owner","k","partition","seq","base","ts","offset",
 *  "events","weight_sum","norm","users","model_version","sizes":[k],
 *  "mass":bin k f64 LE,"A":bin k*k f64 LE,"items":[n],"B":bin n*k f64 LE}
 * "v" is RECORDS_STATS_VERSION: 3 since "base". A record of base 0 is
 * whole: its rows are every non-zero row of B_p. One of base b > 0
 * carries only the rows that changed since the owner's record of seq b
 * for the same partition (a row of zeros: the item left B_p); the rest
 * of the record (A, the sums) is whole in both. A reader applies it only
 * on top of exactly that record. Version 2 (every row each time, no
 * base) and 1 (no "model_version") are refused. */
#define RECORDS_STATS_VERSION 3
struct records_stats {
    char cluster[RECORDS_CLUSTER_MAX];
    char owner[RECORDS_CLUSTER_MAX]; /* the member that sent it */
    uint32_t k;
    int32_t part;
    uint64_t seq;      /* the owner's count of its stats records */
    uint64_t base;     /* 0: every row; else the seq this one updates */
    int64_t ts;        /* when it was taken, ms */
    int64_t offset;    /* the partition's next input offset */
    uint64_t events;   /* events of the partition folded */
    double weight_sum; /* their weights */
    double norm;       /* sum of ||v_u||^2 */
    uint64_t users;
    /* The W version every user of it was solved against (the member's
     * installed version once none is stale; 0 before any). */
    uint64_t model_version;
    uint64_t sizes[MODEL_K_MAX]; /* users by segment */
    double mass[MODEL_K_MAX];    /* sum of h_j */
    /* Read back only: */
    uint32_t nitems;
    char **items;
    size_t *item_lens;
    double *A; /* k x k */
    double *B; /* nitems x k */
    uint32_t *slot; /* the reader's own use (NULL as read; freed) */
};
/* Encodes h's fields with A (k x k) and rows of B (the model's item
 * slots x k, from model_part_stats): with rows NULL, every non-zero row;
 * else exactly the nrows item slots rows[] (each an item of m; in a
 * record of base h->base > 0 a row of zeros says the item left B_p; of
 * base 0 they must be every non-zero row, which the caller that knows
 * them saves a scan of every slot). -EINVAL for a slot that is no
 * item. */
int records_stats_encode(struct records_enc *e, const struct records_stats *h,
                         const struct model *m, const double *A,
                         const double *B, const uint32_t *rows,
                         uint32_t nrows);
/* NULL with *err on anything malformed (a negative or non-finite B, a
 * bin of the wrong length, ...). */
struct records_stats *records_stats_read(const void *buf, size_t len,
                                         const char **err);
void records_stats_free(struct records_stats *s);


/* A partition's users on the group's state topic (docs/design.md
 * section 8): chunks of users, then a marker saying the state of input
 * partition `part` is complete up to input offset `offset` with `chunk`
 * chunks of generation `gen` before it.
 * users:  {"v":1,"cluster","k","partition","gen","kind":"users","chunk",
 *          "users":[[id,t,h bin k f32,[item ids],values bin f32,loss,
 *                    vnorm,evicted],...]}
 * marker: {"v":1,"cluster","k","partition","gen","kind":"marker","chunks",
 *          "users","offset","events","weight_sum","ts"} */
struct records_state {
    char cluster[RECORDS_CLUSTER_MAX];
    uint32_t k;
    int32_t part;
    uint64_t gen;
    bool marker;
    uint32_t chunk;   /* users: its index; marker: the chunk count */
    uint64_t users;   /* users: in the chunk; marker: in all */
    int64_t offset;   /* marker: the partition's next input offset */
    uint64_t events;  /* marker: the partition's events folded */
    double weight_sum;
    int64_t ts;
};
/* One chunk of the users u >= *cursor of partition h->part, up to about
 * max_bytes; *cursor moves past them, *nusers says how many. */
int records_state_users_encode(struct records_enc *e,
                               const struct records_state *h,
                               const struct model *m,
                               int32_t (*part_of)(void *ctx, const char *id,
                                                  size_t len),
                               void *ctx, uint32_t *cursor, size_t max_bytes,
                               uint32_t *nusers);
int records_state_marker_encode(struct records_enc *e,
                                const struct records_state *h, uint32_t k);
/* Reads the head into h; for a chunk, calls each (if not NULL) with every
 * user (valid during the call), stopping at its first non-zero return.
 * 0, or -EBADMSG/-ENOMEM/each's with *err. */
typedef int (*records_state_user_fn)(void *ctx,
                                     const struct model_user_state *st);
int records_state_read(const void *buf, size_t len, struct records_state *h,
                       records_state_user_fn each, void *ctx, const char **err);
/* The head alone, as records_state_read gives it and refusing what it
 * refuses, without building a chunk's users (a restore reads every chunk
 * of a partition and imports only those of its last complete state). */
int records_state_head(const void *buf, size_t len, struct records_state *h,
                       const char **err);

#endif
