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
};

/* A reusable encode buffer (plus scratch for the topic encoder). Every
 * encode replaces the previous value. */
struct records_enc;

struct records_enc *records_enc_new(void);
void records_enc_free(struct records_enc *e);
void records_enc_destroy(struct records_enc **e);

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

struct records_manifest {
    const struct records_epoch *ep;
    bool full;
    uint64_t rejected;             /* events rejected since the start */
    uint64_t segments;             /* segment records in this epoch */
    const uint64_t *segment_sizes; /* k counts; NULL: computed from m */
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

#endif
