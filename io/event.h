/* event.h -- Kafka message value -> engagement events (docs/design.md §2).
 *
 * A decoder is configured once and reused for every message. A value is
 * one event (msgpack map or JSON object) or an array of them. A value that
 * is structurally invalid is rejected whole (one on_reject, no on_event);
 * inside a valid array every element is judged alone, in order.
 */
#ifndef NMFD_IO_EVENT_H
#define NMFD_IO_EVENT_H

#include <stddef.h>
#include <stdint.h>

#define EVENT_ID_MAX      256 /* bytes, same as MODEL_ID_MAX */
#define EVENT_TYPES_MAX   64  /* entries in the type weight table */
#define EVENT_FIELD_MAX   64  /* bytes of a configured field name */
#define EVENT_DEPTH_LIMIT 32  /* highest max_depth accepted */

enum event_format {
    EVENT_FORMAT_AUTO = 0, /* '{', '[' or JSON whitespace first: JSON */
    EVENT_FORMAT_MSGPACK,
    EVENT_FORMAT_JSON,
};

/* Why an event or a message was rejected. The names (event_reason_name)
 * are stable: metric labels and the nmfd.reason dead-letter header. */
enum event_reason {
    EVENT_OK = 0,
    /* Whole message. */
    EVENT_EMPTY,           /* empty_message: zero-length value */
    EVENT_INVALID_MSGPACK, /* invalid_msgpack: bad, truncated, trailing */
    EVENT_INVALID_JSON,    /* invalid_json: jansson refused it */
    EVENT_TOO_LARGE,       /* too_large: over max_bytes */
    EVENT_TOO_MANY_EVENTS, /* too_many_events: array over max_events */
    EVENT_TOO_DEEP,        /* too_deep: nesting over max_depth */
    /* One event (or the whole message when it is a single event). */
    EVENT_DUPLICATE_FIELD,  /* duplicate_field: a field twice in one map;
                               JSON: any key twice anywhere, and jansson
                               then refuses the whole message */
    EVENT_NOT_AN_OBJECT,    /* not_an_object: not a map/object */
    EVENT_MISSING_USER,     /* missing_user */
    EVENT_MISSING_ITEM,     /* missing_item */
    EVENT_BAD_USER,         /* bad_user: not a string/uint, or not UTF-8 */
    EVENT_BAD_ITEM,         /* bad_item: same for item */
    EVENT_EMPTY_ID,         /* empty_id: "" user or item */
    EVENT_ID_TOO_LONG,      /* id_too_long: over EVENT_ID_MAX bytes */
    EVENT_BAD_WEIGHT,       /* bad_weight: weight not a number */
    EVENT_NEGATIVE_WEIGHT,  /* negative_weight */
    EVENT_NONFINITE_WEIGHT, /* nonfinite_weight: NaN or Inf */
    EVENT_BAD_TS,           /* bad_ts: not an integral ms, < 0, > 9999 */
    EVENT_BAD_TYPE,         /* bad_type: type not a string (table set) */
    EVENT_UNKNOWN_TYPE,     /* unknown_type: type not in the table */
    EVENT_MISSING_TYPE,     /* missing_type: no type while a table is set */
    EVENT_WEIGHT_TOO_LARGE, /* weight_too_large: over MODEL_WEIGHT_MAX
                               (1e12) once multiplied by the type weight */
    EVENT_MODEL_REFUSED,    /* model_refused: decoded, but the model said
                               no (never expected: the decoder checks what
                               the model checks; the daemon counts it) */
    EVENT_WRONG_PARTITION,  /* wrong_partition: in a group of processes,
                               an event on another partition than its
                               user's key gives (the input is not keyed
                               by user; the daemon checks it) */
    EVENT_REASON_COUNT
};

/* "ok", "invalid_msgpack", ...; "unknown" outside the enum. */
const char *event_reason_name(enum event_reason r);

/* One accepted event. Ids point into the message or into the decoder's
 * scratch space (uint ids rendered in decimal): valid only during the
 * on_event call. Ids are 1..EVENT_ID_MAX bytes of UTF-8, no NUL. */
struct event {
    const char *user;
    size_t user_len;
    const char *item;
    size_t item_len;
    double weight; /* >= 0, finite, type weight applied */
    int64_t ts;    /* ms since the Unix epoch */
};

struct event_type_weight {
    const char *type; /* NUL-terminated */
    double weight;    /* >= 0, finite */
};

/* Zero/NULL members take the defaults. */
struct event_decoder_conf {
    enum event_format format;
    const char *field_user;                /* "user" */
    const char *field_item;                /* "item" */
    const char *field_weight;              /* "weight" */
    const char *field_type;                /* "type" */
    const char *field_ts;                  /* "ts" */
    const struct event_type_weight *types; /* input.weight.<type> */
    size_t ntypes;                         /* 0: the type field is ignored */
    uint32_t max_events;                   /* per message, default 10000 */
    size_t max_bytes;                      /* per message, default 1 MiB */
    uint32_t max_depth;                    /* nesting, default 8, at most
                                              EVENT_DEPTH_LIMIT; a bare event is 1 */
};

/* NULL when c is usable, else a static lowercase message. */
const char *event_decoder_conf_check(const struct event_decoder_conf *c);

struct event_decoder;

/* NULL with errno EINVAL (conf_check fails) or ENOMEM. The decoder copies
 * everything it needs from c. */
struct event_decoder *event_decoder_new(const struct event_decoder_conf *c);
void event_decoder_free(struct event_decoder *d);
void event_decoder_destroy(struct event_decoder **d);

typedef void (*event_fn)(void *ctx, const struct event *ev);
typedef void (*event_reject_fn)(void *ctx, enum event_reason r);

/* Decodes one message value. default_ts_ms is used for events without a
 * ts (the Kafka message timestamp); when it is out of range (librdkafka
 * gives -1 for "no timestamp") such events are rejected bad_ts, so pass
 * the wall clock instead when the message has none. Calls on_event for
 * every good event and on_reject for every bad one, in message order.
 * Returns the number of events accepted (>= 0), or a negative errno
 * before any callback: -EINVAL (NULL decoder or callback, NULL buf with
 * len > 0), -ENOMEM. Not thread-safe: one decoder per thread. */
int event_decode(struct event_decoder *d, const void *buf, size_t len,
                 int64_t default_ts_ms, event_fn on_event,
                 event_reject_fn on_reject, void *ctx);

#endif
