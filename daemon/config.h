/* config.h -- nmfd configuration: one table of keys drives the INI parser,
 * --set, --dump-config, SIGHUP reload and the commented conf/nmfd.conf.
 *
 * Every string field is non-NULL ("" means unset/off). Durations are
 * milliseconds, sizes bytes. Functions returning int give 0 or a negative
 * errno; on error they fill err with one line ("file:line: message" or
 * "--set: message") and leave the config as it was before the failing key.
 */
#ifndef NMFD_DAEMON_CONFIG_H
#define NMFD_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define CONFIG_ERR_MAX 512 /* a comfortable size for err buffers */

enum config_input_format {
    CONFIG_INPUT_AUTO = 0, /* look at the first byte */
    CONFIG_INPUT_MSGPACK,
    CONFIG_INPUT_JSON,
};

/* One [kafka] key, verbatim, in file order. origin is "file:line",
 * "--set" or "default"; line is 0 unless it came from a file. */
struct config_kv {
    char *key;
    char *value;
    char *origin;
    unsigned line;
};

/* One input.weight.<type> key. */
struct config_weight {
    char *type;
    double weight; /* finite, >= 0 */
};

struct config {
    struct {
        struct config_kv *kv; /* handed to librdkafka (io/) in order */
        size_t n;
    } kafka;

    struct {
        char *topics; /* the raw comma list, as configured */
        char **topic; /* split and trimmed, ntopics >= 1 */
        size_t ntopics;
        enum config_input_format format;
        char *field_user, *field_item, *field_weight, *field_type, *field_ts;
        struct config_weight *weights; /* input.weight.<type>, file order */
        size_t nweights;
        char *dead_letter_topic;         /* "" = off */
        uint64_t max_message_bytes;      /* 64 .. 64 MiB */
        uint64_t max_events_per_message; /* 1 .. 1e6 */
        uint64_t reject_log_interval_ms; /* reloadable */
        uint32_t reject_log_burst;       /* reloadable */
    } input;

    struct {
        struct model_params params;   /* handed to model_new as is */
        uint64_t refresh_interval_ms; /* W refresh by the clock */
        uint32_t refine_users; /* users re-solved per idle pass; reloadable */
    } model;

    struct {
        uint64_t interval_ms; /* reloadable */
        uint64_t full_every;  /* reloadable */
        uint32_t top_items;   /* reloadable */
        char *topic_segments, *topic_topics, *topic_manifest;
        bool transactional;
        char *file;       /* "" = off */
        char *item_names; /* CSV item,name for the dashboard; "" = off */
    } snapshot;

    struct {
        char *dir;
        uint64_t interval_ms; /* reloadable */
    } checkpoint;

    /* A group of processes sharing one W (docs/design.md section 8). */
    struct {
        bool enabled;
        char *stats_topic, *model_topic, *state_topic;
        uint64_t interval_ms; /* statistics out, W in, this often */
        uint64_t restore_timeout_ms; /* a partition's state, at most */
    } cluster;

    struct {
        char *listen;          /* "" = HTTP off */
        uint32_t max_connections;             /* all addresses */
        uint32_t max_connections_per_address; /* one address (IPv6: /64) */
        uint64_t header_timeout_ms; /* accept or keep-alive idle to headers */
        uint64_t idle_timeout_ms;   /* keep-alive idle, stalled transfer */
        uint64_t connection_memory; /* bytes per connection */
        uint32_t sse_max, sse_max_per_address, sse_queue;
        char *tls_cert_file, *tls_key_file; /* both or neither */
        char *token_file;                   /* bearer token; "" = none */
        char *password_file;        /* user:crypt-hash lines; "" = none */
        bool auth_probes;           /* credentials on the probes too */
        bool allow_unauthenticated; /* data beyond loopback, no credentials */
    } http;

    struct {
        int level; /* syslog level, LOG_ERR .. LOG_DEBUG; reloadable */
    } log;

    char *path;     /* the file last loaded, "" if none */
    char **origins; /* internal: provenance per table row */
};

/* SYSCONFDIR/nmfd/nmfd.conf, the file read when --config is not given. */
const char *config_default_path(void);

/* Who judges a [kafka] key and its value (librdkafka, through io/): 0 if
 * accepted, else -1 with its words in err. nmfd hands kafka_conf_check over
 * before it loads a file, so that a key librdkafka refuses stops the start
 * at its line. Without a judge (nmfctl, whose commands take model.* keys
 * only) the keys are kept unjudged, and config.c links no Kafka library:
 * nmfctl fit starts without loading librdkafka and OpenSSL. */
typedef int (*config_kafka_judge)(const char *key, const char *value, char *err,
                                  size_t len);
void config_judge_kafka(config_kafka_judge judge);

/* A config holding the defaults of docs/design.md section 6; NULL on ENOMEM. */
struct config *config_new(void);
void config_free(struct config *c);
void config_destroy(struct config **c);

/* Reads an INI file over c. Errors: -ENOENT/-EACCES/... (err "path:
 * message"), -EINVAL (err "path:line: message" naming key, value and the
 * allowed range), -ENOMEM. */
int config_load_file(struct config *c, const char *path, char *err,
                     size_t errlen);
/* Same for INI text in memory; name is used in messages. */
int config_load_string(struct config *c, const char *name, const char *text,
                       char *err, size_t errlen);
/* Applies one "section.key=value" (--set); err starts with "--set: ". */
int config_set(struct config *c, const char *assignment, char *err,
               size_t errlen);
/* Cross-key checks (e.g. model params as a whole); -EINVAL and err. */
int config_check(const struct config *c, char *err, size_t errlen);

/* The whole start-up sequence: path (NULL = defaults only, no file), then
 * every --set in order, then config_check. Used at start and on SIGHUP. */
int config_load(struct config *c, const char *path, char *const *sets,
                size_t nsets, char *err, size_t errlen);

/* Every key with its value, INI, secrets masked ("********"), each line
 * followed by its origin as a comment. */
void config_dump(const struct config *c, FILE *out);
/* The fully commented default file; conf/nmfd.conf is exactly this. */
void config_write_commented(FILE *out);

/* Applies the reloadable keys of fresh to running. changed receives the
 * names ("section.key", space separated) that were applied, needs_restart
 * those that differ but are not reloadable (both "" when nothing). Returns
 * 0, or -ENOSPC if a list was truncated (the keys are applied anyway). */
int config_reload(struct config *running, const struct config *fresh,
                  char *changed, size_t changed_len, char *needs_restart,
                  size_t needs_restart_len);

/* Where key "section.key" got its value: "file:line", "--set" or
 * "default"; NULL for an unknown key. */
const char *config_origin(const struct config *c, const char *name);

/* The [http] keys as http_start wants them; the strings stay c's. */
struct http_opts;
void config_http_opts(const struct config *c, struct http_opts *o);

/* Values as text: durations ("500ms", "10s", "5m", "2h", "7d", "0"),
 * sizes ("512", "64k", "64KiB", "1M", "1MiB", "1G"), bools. 0 or -EINVAL. */
int config_parse_duration(const char *s, uint64_t *ms);
int config_parse_size(const char *s, uint64_t *bytes);
int config_parse_bool(const char *s, bool *b);

#endif
