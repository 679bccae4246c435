/* config.c -- the configuration of nmfd, driven by one table.
 *
 * Every key the daemon understands is one row of config_table[]: section,
 * name, type, default (as text), range, whether SIGHUP may change it, the
 * field of struct config it lands in, an optional validator and a one-line
 * doc. The INI loader, --set, config_check, --dump-config, the reload logic
 * and the commented conf/nmfd.conf are all loops over that table, so a key
 * added there is parsed, range-checked, dumped, reloaded and documented at
 * once. Two families of keys are dynamic and handled beside the table:
 * [kafka] (kept verbatim, in order, for rd_kafka_conf_set in io/, each
 * judged on arrival by the judge the daemon hands over, config_judge_kafka)
 * and input.weight.<type>.
 *
 * This file owns struct config and every string in it. It never logs,
 * never exits and never touches Kafka: errors come back as one line of
 * text ("file:line: message", "--set: message") and a negative errno, and
 * the caller decides (main.c exits 2 at start, keeps running on SIGHUP).
 *
 * The INI syntax is libinih's, read through our own line reader, which
 * counts lines (Debian's inih is built without INI_HANDLER_LINENO), strips
 * leading blanks (so an indented key is a key, never an inih multi-line
 * continuation of the previous value), rejects unknown sections even when
 * they hold no key, and parses itself the rare line too long for inih's
 * fixed line buffer (a long bootstrap.servers list must not be cut).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include <ini.h>

#include "config.h"
#include "http.h"
#include "http_auth.h"
#include "listen.h"
#include "nmfd_build.h"

#define MASK "********"

#ifndef MODEL_PROFILE_MAX
#define MODEL_PROFILE_MAX 1000000
#endif

enum config_type {
    CT_BOOL,         /* bool */
    CT_U32,          /* uint32_t, imin..imax */
    CT_U64,          /* uint64_t, imin..imax */
    CT_DOUBLE,       /* double, finite, dmin..dmax */
    CT_DURATION,     /* uint64_t milliseconds, imin..imax */
    CT_DURATION_I64, /* int64_t milliseconds (struct model_params) */
    CT_SIZE,         /* uint64_t bytes, imin..imax */
    CT_STRING,       /* char *, never NULL */
    CT_ENUM,         /* int, one of enums[] */
};

struct config_enum {
    const char *name;
    int value;
};

struct config_key {
    const char *section;
    const char *name;
    enum config_type type;
    /* Default as text; NULL: the value model_params_default() put there. */
    const char *def;
    bool reloadable;
    bool nonempty; /* strings: "" is refused */
    bool secret;   /* masked in dumps */
    size_t offset;
    uint64_t imin, imax;
    double dmin, dmax;
    const struct config_enum *enums;
    /* NULL or a static message about value, before it is stored. */
    const char *(*validate)(const char *value);
    /* Recomputes derived fields after the key changed; 0 or -errno. */
    int (*apply)(struct config *c, char *msg, size_t len);
    const char *doc;
};

static const struct config_enum format_enums[] = {
    {"auto", CONFIG_INPUT_AUTO},
    {"msgpack", CONFIG_INPUT_MSGPACK},
    {"json", CONFIG_INPUT_JSON},
    {NULL, 0},
};

static const struct config_enum level_enums[] = {
    {"err", LOG_ERR},   {"warning", LOG_WARNING}, {"notice", LOG_NOTICE},
    {"info", LOG_INFO}, {"debug", LOG_DEBUG},     {NULL, 0},
};

static const struct config_enum robust_enums[] = {
    {"none", MODEL_ROBUST_NONE},
    {"l21", MODEL_ROBUST_L21},
    {NULL, 0},
};
_Static_assert(sizeof(((struct model_params *)0)->robust) == sizeof(int),
               "model.robust is stored as a config enum (int)");

static const struct config_enum loss_enums[] = {
    {"frobenius", MODEL_LOSS_FROBENIUS},
    {"kl", MODEL_LOSS_KL},
    {NULL, 0},
};
_Static_assert(sizeof(((struct model_params *)0)->loss) == sizeof(int),
               "model.loss is stored as a config enum (int)");

static const char *validate_topics(const char *value);
static const char *validate_listen(const char *value);
static const char *validate_below_one(const char *value);
static const char *validate_readable(const char *value);
static int apply_topics(struct config *c, char *msg, size_t len);

#define OFF(field) offsetof(struct config, field)
#define SEC        (UINT64_C(1000))
#undef MIN /* sys/param.h's, through uv.h */
#define MIN   (60 * SEC)
#define HOUR  (60 * MIN)
#define DAY   (24 * HOUR)
#define KIB   (UINT64_C(1024))
#define MIB   (KIB * KIB)
#define NOMAX UINT64_MAX

#define K_BOOL(s, n, d, rl, f, doc_)                                           \
    {                                                                          \
        .section = s, .name = n, .type = CT_BOOL, .def = d, .reloadable = rl,  \
        .offset = OFF(f), .doc = doc_                                          \
    }
#define K_INT(t, s, n, d, lo, hi, rl, f, doc_)                                 \
    {                                                                          \
        .section = s, .name = n, .type = t, .def = d, .reloadable = rl,        \
        .offset = OFF(f), .imin = lo, .imax = hi, .doc = doc_                  \
    }
#define K_DBL(s, n, d, lo, hi, rl, f, doc_)                                    \
    {                                                                          \
        .section = s, .name = n, .type = CT_DOUBLE, .def = d,                  \
        .reloadable = rl, .offset = OFF(f), .dmin = lo, .dmax = hi,            \
        .doc = doc_                                                            \
    }
#define K_STR(s, n, d, ne, rl, f, doc_)                                        \
    {                                                                          \
        .section = s, .name = n, .type = CT_STRING, .def = d,                  \
        .reloadable = rl, .nonempty = ne, .offset = OFF(f), .doc = doc_        \
    }
#define K_ENUM(s, n, d, e, rl, f, doc_)                                        \
    {                                                                          \
        .section = s, .name = n, .type = CT_ENUM, .def = d, .reloadable = rl,  \
        .offset = OFF(f), .enums = e, .doc = doc_                              \
    }

/* The one table. Order is the order of dumps and of conf/nmfd.conf. */
static const struct config_key config_table[] = {
    /* [input] */
    {.section = "input",
     .name = "topics",
     .type = CT_STRING,
     .def = "nmf.events",
     .nonempty = true,
     .offset = OFF(input.topics),
     .validate = validate_topics,
     .apply = apply_topics,
     .doc = "Topics to consume, comma-separated."},
    K_ENUM("input", "format", "auto", format_enums, false, input.format,
           "Message encoding: msgpack, json, or auto (by the first byte)."),
    K_STR("input", "field.user", "user", true, false, input.field_user,
          "Event field holding the user id."),
    K_STR("input", "field.item", "item", true, false, input.field_item,
          "Event field holding the item id."),
    K_STR("input", "field.weight", "weight", true, false, input.field_weight,
          "Event field holding the weight (optional, default 1.0)."),
    K_STR("input", "field.type", "type", true, false, input.field_type,
          "Event field holding the event type (see weight.<type>)."),
    K_STR("input", "field.ts", "ts", true, false, input.field_ts,
          "Event field holding the time, ms since the epoch (optional)."),
    K_STR("input", "dead_letter_topic", "", false, false,
          input.dead_letter_topic,
          "Topic receiving rejected messages with nmfd.reason; empty = off."),
    K_INT(CT_SIZE, "input", "max_message_bytes", "1MiB", 64, 64 * MIB, false,
          input.max_message_bytes, "Larger messages are rejected."),
    K_INT(CT_U64, "input", "max_events_per_message", "10000", 1, 1000000, false,
          input.max_events_per_message, "Longer event arrays are rejected."),
    K_INT(CT_DURATION, "input", "reject_log_interval", "10s", 0, 7 * DAY, true,
          input.reject_log_interval_ms,
          "Rejections are logged at most reject_log_burst times per "
          "interval; 0 = all."),
    K_INT(CT_U32, "input", "reject_log_burst", "10", 1, 1000000, true,
          input.reject_log_burst, "See reject_log_interval."),

    /* [model] */
    K_INT(CT_U32, "model", "k", "16", 1, MODEL_K_MAX, false, model.params.k,
          "Number of topics (rank of the factorisation)."),
    K_INT(CT_DURATION_I64, "model", "half_life", "0", 0, 3650 * DAY, false,
          model.params.half_life_ms,
          "Engagement decays by half over this time; 0 = no decay."),
    K_DBL("model", "alpha_h", "0", 0, INFINITY, false, model.params.alpha_h,
          "Regularisation of the user factors H (scikit-learn alpha_H)."),
    K_DBL("model", "alpha_w", "0", 0, INFINITY, false, model.params.alpha_w,
          "Regularisation of the topic factors W (scikit-learn alpha_W)."),
    K_DBL("model", "l1_ratio", "0", 0, 1, false, model.params.l1_ratio,
          "Share of L1 in the regularisation: 0 = L2, 1 = L1."),
    K_INT(CT_U32, "model", "profile_max", "16384", 1, MODEL_PROFILE_MAX, false,
          model.params.profile_max,
          "Items kept per user profile: a safety valve against runaway ids "
          "(bots, crawlers), far above real heavy users; past it the "
          "weakest entry is evicted, counted (nmfd_evicted_weight) and kept "
          "in the loss as residual."),
    {.section = "model",
     .name = "holdout",
     .type = CT_DOUBLE,
     .def = "0",
     .offset = OFF(model.params.holdout),
     .dmin = 0,
     .dmax = 1,
     .validate = validate_below_one,
     .doc = "Share of (user, item) pairs, chosen by a hash of the two ids, "
            "kept out of the fold and scored as held-out error "
            "(holdout_loss, nmfd_holdout_loss); below 1; 0 = none."},
    K_ENUM("model", "loss", "frobenius", loss_enums, false, model.params.loss,
           "kl: the generalised Kullback-Leibler divergence D(V||WH), the "
           "Poisson likelihood of counts (clicks, views, purchases); the "
           "loss is then reported as D per unit of weight. Not with "
           "robust = l21, alpha_h, alpha_w or holdout."),
    K_ENUM("model", "robust", "none", robust_enums, false, model.params.robust,
           "l21: a user whose residual per unit of its norm is far above "
           "the typical user's (ids clicking many items at random: bots, "
           "crawlers) has its share of the topics discounted, down to "
           "1/256, so that it cannot capture topics; every other user "
           "weighs 1, as with none; /users/ID and nmfd_robust_* show the "
           "weights."),
    K_INT(CT_DURATION, "model", "refresh_interval", "5s", 0, 1 * DAY, false,
          model.refresh_interval_ms,
          "nmfd refreshes W this often on the wall clock, if anything was "
          "folded; 0 = by event count only. Never read as event time: "
          "nmfctl fit ignores it and refreshes by work done."),
    K_INT(CT_U64, "model", "refresh_events", "200000", 1, NOMAX, false,
          model.params.refresh_events,
          "W is refreshed after this many folds at most (nmfd: or by "
          "refresh_interval; nmfctl fit: or once the folds since the last "
          "refresh cost as much as a refresh)."),
    K_INT(CT_DURATION_I64, "model", "ttl", "0", 0, 3650 * DAY, false,
          model.params.ttl_ms,
          "Forget users and items unseen this long; 0 = keep forever."),
    K_INT(CT_U64, "model", "seed", "1", 0, NOMAX, false, model.params.seed,
          "Seed of the initial W; same events + same seed = same model."),
    K_INT(CT_U64, "model", "warmup_events", "10000", 0, NOMAX, false,
          model.params.warmup_events,
          "Initialise W by batch HALS on the first N events; 0 = random W."),
    K_INT(CT_U32, "model", "nnls_sweeps", NULL, 1, 100000, false,
          model.params.nnls_sweeps,
          "Maximum coordinate-descent sweeps per user solve."),
    K_DBL("model", "nnls_tol", NULL, 0, 1, false, model.params.nnls_tol,
          "A user solve stops when max |dh| <= nnls_tol * max h."),
    K_INT(CT_U32, "model", "hals_sweeps", NULL, 1, 1000, false,
          model.params.hals_sweeps, "HALS sweeps over W per refresh."),
    K_DBL("model", "refine_tol", NULL, 0, 1, false, model.params.refine_tol,
          "The idle pass stops refreshing W once a round improves the "
          "relative loss by less than this fraction."),
    K_INT(CT_U32, "model", "refine_users", "2000", 0, 100000000, true,
          model.refine_users,
          "Stale users re-solved per loop tick once the input has been quiet "
          "100 ms (1 per 4 events folded while it flows, none while a "
          "backlog waits); 0 = none."),

    /* [snapshot] */
    K_INT(CT_DURATION, "snapshot", "interval", "5s", 100, 1 * DAY, true,
          snapshot.interval_ms, "One epoch is published this often."),
    K_INT(CT_U64, "snapshot", "full_every", "60", 1, NOMAX, true,
          snapshot.full_every,
          "Every Nth epoch carries all users, not only the changed ones."),
    K_INT(CT_U32, "snapshot", "top_items", "20", 1, 1000, true,
          snapshot.top_items, "Strongest items listed per topic."),
    K_STR("snapshot", "topic.segments", "nmf.segments", true, false,
          snapshot.topic_segments, "Topic of the per-user segment records."),
    K_STR("snapshot", "topic.topics", "nmf.topics", true, false,
          snapshot.topic_topics, "Topic of the per-topic records."),
    K_STR("snapshot", "topic.manifest", "nmf.snapshots", true, false,
          snapshot.topic_manifest, "Topic of the epoch manifests."),
    K_BOOL("snapshot", "transactional", "true", false, snapshot.transactional,
           "Publish each epoch as one Kafka transaction."),
    K_STR("snapshot", "file", "", false, false, snapshot.file,
          "Full dense snapshot written atomically each epoch; empty = off."),
    K_STR("snapshot", "item_names", "", false, false, snapshot.item_names,
          "CSV file item,name shown by the dashboard; empty = off."),

    /* [checkpoint] */
    K_STR("checkpoint", "dir", "/var/lib/nmfd", true, false, checkpoint.dir,
          "Directory of the checkpoint (model state and offsets)."),
    K_INT(CT_DURATION, "checkpoint", "interval", "60s", 1 * SEC, 1 * DAY, true,
          checkpoint.interval_ms,
          "A checkpoint is written this often and at a clean stop."),

    /* [cluster] */
    K_BOOL("cluster", "enabled", "false", false, cluster.enabled,
           "Share one W with the other processes of kafka.group.id "
           "(docs/operations.md, \"A group of processes\"); needs "
           "model.half_life = 0. Off: a second process in the group "
           "refuses to start."),
    K_STR("cluster", "stats_topic", "nmf.stats", true, false,
          cluster.stats_topic,
          "Each member's partition statistics, to the leader (1 partition)."),
    K_STR("cluster", "model_topic", "nmf.model", true, false,
          cluster.model_topic,
          "Each version of the group's W, from the leader (1 partition)."),
    K_STR("cluster", "state_topic", "nmf.state", true, false,
          cluster.state_topic,
          "Users' state by input partition, for the member that takes a "
          "partition over (the input's partition count)."),
    K_INT(CT_DURATION, "cluster", "interval", "1s", 100, 1 * HOUR, false,
          cluster.interval_ms,
          "Statistics are sent, and W refreshed by the leader, this often."),
    K_INT(CT_DURATION, "cluster", "restore_timeout", "60s", 1 * SEC, 1 * HOUR,
          false, cluster.restore_timeout_ms,
          "A partition's state must be read back within this, or the "
          "member stops rather than fold on a part of it."),

    /* [http] */
    {.section = "http",
     .name = "listen",
     .type = CT_STRING,
     .def = "127.0.0.1:9464",
     .offset = OFF(http.listen),
     .validate = validate_listen,
     .doc = "host:port or [v6]:port of the HTTP endpoint; empty = off. "
            "Beyond loopback the data routes need token_file or "
            "password_file (or allow_unauthenticated)."},
    K_INT(CT_U32, "http", "max_connections", "512", 1, 65536, false,
          http.max_connections,
          "Connections open at once, all addresses; past it new ones are "
          "closed at accept."),
    K_INT(CT_U32, "http", "max_connections_per_address", "16", 1, 65536, false,
          http.max_connections_per_address,
          "Connections open at once from one client address (IPv6: one "
          "/64)."),
    K_INT(CT_DURATION, "http", "header_timeout", "5s", 100, 1 * HOUR, false,
          http.header_timeout_ms,
          "A connection must complete its request headers this long after "
          "accept, or after its keep-alive idle time; else it is cut."),
    K_INT(CT_DURATION, "http", "idle_timeout", "30s", 1 * SEC, 1 * DAY, false,
          http.idle_timeout_ms,
          "A keep-alive connection may idle, or a transfer stall, this "
          "long (whole seconds)."),
    K_INT(CT_SIZE, "http", "connection_memory", "32KiB", 4 * KIB, 16 * MIB,
          false, http.connection_memory,
          "Memory per connection for the request line, headers and "
          "buffers; a larger request gets 431 or 414."),
    K_INT(CT_U32, "http", "sse_max", "64", 0, 65536, false, http.sse_max,
          "/events streams open at once; past it 503."),
    K_INT(CT_U32, "http", "sse_max_per_address", "4", 1, 65536, false,
          http.sse_max_per_address,
          "/events streams open at once from one address; past it 503."),
    K_INT(CT_U32, "http", "sse_queue", "64", 50, 65536, false, http.sse_queue,
          "Events a stream may lag behind; a reader further behind is cut "
          "off."),
    {.section = "http",
     .name = "tls_cert_file",
     .type = CT_STRING,
     .def = "",
     .offset = OFF(http.tls_cert_file),
     .validate = validate_readable,
     .doc = "PEM certificate (chain); with tls_key_file turns on TLS. Both "
            "files are re-read on SIGHUP."},
    {.section = "http",
     .name = "tls_key_file",
     .type = CT_STRING,
     .def = "",
     .offset = OFF(http.tls_key_file),
     .validate = validate_readable,
     .doc = "PEM private key of tls_cert_file."},
    {.section = "http",
     .name = "token_file",
     .type = CT_STRING,
     .def = "",
     .offset = OFF(http.token_file),
     .validate = http_auth_token_file_check,
     .doc = "File holding the bearer token (16 characters or more) that the "
            "data routes require; re-read on SIGHUP. Empty = none."},
    {.section = "http",
     .name = "password_file",
     .type = CT_STRING,
     .def = "",
     .offset = OFF(http.password_file),
     .validate = http_auth_password_file_check,
     .doc = "File of user:hash lines (yescrypt, bcrypt, scrypt or "
            "sha512crypt, e.g. from mkpasswd -m yescrypt) for HTTP Basic on "
            "the data routes; re-read on SIGHUP. Empty = none."},
    K_BOOL("http", "auth_probes", "false", false, http.auth_probes,
           "Require the credentials on /metrics, /healthz and /readyz too."),
    K_BOOL("http", "allow_unauthenticated", "false", false,
           http.allow_unauthenticated,
           "Serve the data routes without credentials on an address beyond "
           "loopback."),

    /* [log] */
    K_ENUM("log", "level", "info", level_enums, true, log.level,
           "Least severe level logged: err, warning, notice, info, debug."),
};

#define NKEYS (sizeof(config_table) / sizeof(config_table[0]))

static const char *const sections[] = {
    "kafka", "input", "model", "snapshot", "checkpoint", "cluster", "http", "log",
};
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

static const char *const kafka_defaults[][2] = {
    {"bootstrap.servers", "localhost:9092"},
    {"group.id", "nmfd"},
};

/* ---------------------------------------------------------------------- */
/* Small helpers. */

static void *field(void *base, const struct config_key *k)
{
    return (char *)base + k->offset;
}

static const void *cfield(const void *base, const struct config_key *k)
{
    return (const char *)base + k->offset;
}

static size_t type_size(const struct config_key *k)
{
    switch (k->type) {
    case CT_BOOL:
        return sizeof(bool);
    case CT_U32:
        return sizeof(uint32_t);
    case CT_U64:
    case CT_DURATION:
    case CT_SIZE:
        return sizeof(uint64_t);
    case CT_DURATION_I64:
        return sizeof(int64_t);
    case CT_DOUBLE:
        return sizeof(double);
    case CT_STRING:
        return sizeof(char *);
    case CT_ENUM:
        return sizeof(int);
    }
    return 0;
}

static const struct config_key *key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(config_table[i].section, section) &&
            !strcmp(config_table[i].name, name))
            return &config_table[i];
    return NULL;
}

static bool section_known(const char *section)
{
    for (size_t i = 0; i < NSECTIONS; i++)
        if (!strcmp(sections[i], section))
            return true;
    return false;
}

/* Edit distance, for "did you mean". Names are short (< 64 bytes). */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const char *key_suggest(const char *section, const char *name)
{
    const char *best = NULL;
    size_t bestd = 3; /* only close matches are worth suggesting */
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(config_table[i].section, section))
            continue;
        size_t d = distance(name, config_table[i].name);
        if (d < bestd) {
            bestd = d;
            best = config_table[i].name;
        }
    }
    return best;
}

static bool name_is_secret(const char *name)
{
    return strcasestr(name, "password") || strcasestr(name, "secret") ||
           !strcmp(name, "ssl.key.pem") ||
           !strcmp(name, "sasl.oauthbearer.config");
}

/* ---------------------------------------------------------------------- */
/* Values: parse and format. */

static int parse_uint(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end)
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = v;
    return 0;
}

/* An unsigned integer and the rest of the string (the unit). */
static int parse_number_unit(const char *s, uint64_t *n, const char **unit)
{
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    *n = v;
    *unit = end;
    return 0;
}

static int mul_check(uint64_t n, uint64_t m, uint64_t *out)
{
    if (m && n > UINT64_MAX / m)
        return -ERANGE;
    *out = n * m;
    return 0;
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        {"ms", 1}, {"s", SEC}, {"m", MIN}, {"h", HOUR}, {"d", DAY},
    };
    uint64_t n;
    const char *unit;
    int rc = parse_number_unit(s, &n, &unit);
    if (rc)
        return rc;
    if (!*unit)
        return n == 0 ? (*ms = 0, 0) : -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (!strcmp(unit, units[i].unit))
            return mul_check(n, units[i].ms, ms);
    return -EINVAL;
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},      {"k", KIB},       {"kib", KIB},       {"m", MIB},
        {"mib", MIB}, {"g", MIB * KIB}, {"gib", MIB * KIB},
    };
    uint64_t n;
    const char *unit;
    int rc = parse_number_unit(s, &n, &unit);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (!strcasecmp(unit, units[i].unit))
            return mul_check(n, units[i].mult, bytes);
    return -EINVAL;
}

int config_parse_bool(const char *s, bool *b)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i]))
            return *b = true, 0;
        if (!strcasecmp(s, no[i]))
            return *b = false, 0;
    }
    return -EINVAL;
}

static void format_duration(uint64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"d", DAY}, {"h", HOUR}, {"m", MIN}, {"s", SEC}};
    if (ms == 0) {
        snprintf(buf, len, "0");
        return;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (ms % units[i].ms == 0) {
            snprintf(buf, len, "%" PRIu64 "%s", ms / units[i].ms,
                     units[i].unit);
            return;
        }
    snprintf(buf, len, "%" PRIu64 "ms", ms);
}

static void format_size(uint64_t b, char *buf, size_t len)
{
    if (b && b % (MIB * KIB) == 0)
        snprintf(buf, len, "%" PRIu64 "GiB", b / (MIB * KIB));
    else if (b && b % MIB == 0)
        snprintf(buf, len, "%" PRIu64 "MiB", b / MIB);
    else if (b && b % KIB == 0)
        snprintf(buf, len, "%" PRIu64 "KiB", b / KIB);
    else
        snprintf(buf, len, "%" PRIu64, b);
}

/* The shortest text that reads back as the same double. */
static void format_double(double d, char *buf, size_t len)
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static void format_range(const struct config_key *k, char *buf, size_t len)
{
    char lo[32], hi[32];
    switch (k->type) {
    case CT_DOUBLE:
        format_double(k->dmin, lo, sizeof(lo));
        format_double(k->dmax, hi, sizeof(hi));
        if (isinf(k->dmax))
            snprintf(buf, len, ">= %s", lo);
        else
            snprintf(buf, len, "%s..%s", lo, hi);
        return;
    case CT_DURATION:
    case CT_DURATION_I64:
        format_duration(k->imin, lo, sizeof(lo));
        format_duration(k->imax, hi, sizeof(hi));
        break;
    case CT_SIZE:
        format_size(k->imin, lo, sizeof(lo));
        format_size(k->imax, hi, sizeof(hi));
        break;
    default:
        snprintf(lo, sizeof(lo), "%" PRIu64, k->imin);
        snprintf(hi, sizeof(hi), "%" PRIu64, k->imax);
        break;
    }
    if (k->imax == NOMAX)
        snprintf(buf, len, ">= %s", lo);
    else
        snprintf(buf, len, "%s..%s", lo, hi);
}

static void format_enum_names(const struct config_enum *e, char *buf,
                              size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (; e->name && off < len; e++)
        off += snprintf(buf + off, len - off, "%s%s", off ? ", " : "", e->name);
}

/* The value of key k in c as config text. */
static void format_value(const struct config *c, const struct config_key *k,
                         char *buf, size_t len)
{
    const void *p = cfield(c, k);
    switch (k->type) {
    case CT_BOOL:
        snprintf(buf, len, "%s", *(const bool *)p ? "true" : "false");
        break;
    case CT_U32:
        snprintf(buf, len, "%" PRIu32, *(const uint32_t *)p);
        break;
    case CT_U64:
        snprintf(buf, len, "%" PRIu64, *(const uint64_t *)p);
        break;
    case CT_DOUBLE:
        format_double(*(const double *)p, buf, len);
        break;
    case CT_DURATION:
        format_duration(*(const uint64_t *)p, buf, len);
        break;
    case CT_DURATION_I64:
        format_duration((uint64_t) * (const int64_t *)p, buf, len);
        break;
    case CT_SIZE:
        format_size(*(const uint64_t *)p, buf, len);
        break;
    case CT_STRING:
        snprintf(buf, len, "%s", *(char *const *)p);
        break;
    case CT_ENUM:
        snprintf(buf, len, "?");
        for (const struct config_enum *e = k->enums; e->name; e++)
            if (e->value == *(const int *)p) {
                snprintf(buf, len, "%s", e->name);
                break;
            }
        break;
    }
}

/* ---------------------------------------------------------------------- */
/* Validators and derived fields. */

static const char *validate_topics(const char *value)
{
    const char *p = value;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        bool blank = true;
        for (const char *q = p; q < end; q++)
            if (!isspace((unsigned char)*q))
                blank = false;
        if (blank)
            return "empty topic name in the list";
        if (!comma)
            return NULL;
        p = comma + 1;
    }
}

static void topics_clear(struct config *c)
{
    for (size_t i = 0; i < c->input.ntopics; i++)
        free(c->input.topic[i]);
    free(c->input.topic);
    c->input.topic = NULL;
    c->input.ntopics = 0;
}

static int apply_topics(struct config *c, char *msg, size_t len)
{
    size_t n = 1;
    for (const char *p = c->input.topics; *p; p++)
        n += *p == ',';
    char **v = calloc(n, sizeof(*v));
    if (!v)
        goto nomem;
    const char *p = c->input.topics;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        v[i] = strndup(a, (size_t)(b - a));
        if (!v[i]) {
            for (size_t j = 0; j < i; j++)
                free(v[j]);
            free(v);
            goto nomem;
        }
        p = end + (*end == ',');
    }
    topics_clear(c);
    c->input.topic = v;
    c->input.ntopics = n;
    return 0;
nomem:
    snprintf(msg, len, "out of memory");
    return -ENOMEM;
}

static const char *validate_below_one(const char *value)
{
    return strtod(value, NULL) < 1 ? NULL : "must be below 1";
}

static const char *validate_readable(const char *value)
{
    FILE *f;

    if (!*value)
        return NULL;
    f = fopen(value, "re");
    if (!f)
        return "cannot read the file";
    fclose(f);
    return NULL;
}

void config_http_opts(const struct config *c, struct http_opts *o)
{
    http_opts_default(o);
    o->max_connections = c->http.max_connections;
    o->max_per_address = c->http.max_connections_per_address;
    o->header_timeout_ms = c->http.header_timeout_ms;
    o->idle_timeout_ms = c->http.idle_timeout_ms;
    o->connection_memory = (size_t)c->http.connection_memory;
    o->sse_max = c->http.sse_max;
    o->sse_max_per_address = c->http.sse_max_per_address;
    o->sse_queue = c->http.sse_queue;
    o->tls_cert_file = c->http.tls_cert_file;
    o->tls_key_file = c->http.tls_key_file;
    o->token_file = c->http.token_file;
    o->password_file = c->http.password_file;
    o->auth_probes = c->http.auth_probes;
}

static const char *validate_listen(const char *value)
{
    char host[256];
    uint16_t port;
    return *value ? listen_parse(value, host, sizeof(host), &port) : NULL;
}

/* ---------------------------------------------------------------------- */
/* Assigning one key. msg receives the message without location. */

static int origin_set(struct config *c, const struct config_key *k,
                      const char *origin)
{
    char *o = NULL;
    if (origin && !(o = strdup(origin)))
        return -ENOMEM;
    size_t i = (size_t)(k - config_table);
    free(c->origins[i]);
    c->origins[i] = o;
    return 0;
}

static config_kafka_judge kafka_judge;

void config_judge_kafka(config_kafka_judge judge)
{
    kafka_judge = judge;
}

static int kafka_set(struct config *c, const char *key, const char *value,
                     const char *origin, unsigned line, char *msg, size_t len)
{
    if (!*value) {
        snprintf(msg, len, "kafka.%s: empty value", key);
        return -EINVAL;
    }
    /* librdkafka judges its own keys, on a scratch conf, so a key it
     * refuses stops the start here with its place, like any other. */
    char kerr[256];
    if (kafka_judge && kafka_judge(key, value, kerr, sizeof(kerr))) {
        snprintf(msg, len, "kafka.%s = %s: %s", key, value, kerr);
        return -EINVAL;
    }
    char *v = strdup(value), *o = strdup(origin ? origin : "default");
    if (!v || !o)
        goto nomem;
    for (size_t i = 0; i < c->kafka.n; i++) {
        struct config_kv *kv = &c->kafka.kv[i];
        if (!strcmp(kv->key, key)) {
            free(kv->value);
            free(kv->origin);
            kv->value = v;
            kv->origin = o;
            kv->line = line;
            return 0;
        }
    }
    char *kcopy = strdup(key);
    struct config_kv *nkv =
        kcopy ? realloc(c->kafka.kv, (c->kafka.n + 1) * sizeof(*nkv)) : NULL;
    if (!nkv) {
        free(kcopy);
        goto nomem;
    }
    c->kafka.kv = nkv;
    nkv[c->kafka.n++] =
        (struct config_kv){.key = kcopy, .value = v, .origin = o, .line = line};
    return 0;
nomem:
    free(v);
    free(o);
    snprintf(msg, len, "out of memory");
    return -ENOMEM;
}

static int weight_set(struct config *c, const char *type, const char *value,
                      char *msg, size_t len)
{
    char *end;
    double w = strtod(value, &end);
    if (!*type) {
        snprintf(msg, len, "input.weight.: missing the event type");
        return -EINVAL;
    }
    if (!*value || *end || !isfinite(w) || w < 0) {
        snprintf(msg, len, "input.weight.%s = %s: must be a finite number >= 0",
                 type, value);
        return -EINVAL;
    }
    for (size_t i = 0; i < c->input.nweights; i++)
        if (!strcmp(c->input.weights[i].type, type)) {
            c->input.weights[i].weight = w;
            return 0;
        }
    char *t = strdup(type);
    struct config_weight *nw =
        t ? realloc(c->input.weights, (c->input.nweights + 1) * sizeof(*nw))
          : NULL;
    if (!nw) {
        free(t);
        snprintf(msg, len, "out of memory");
        return -ENOMEM;
    }
    c->input.weights = nw;
    nw[c->input.nweights++] = (struct config_weight){.type = t, .weight = w};
    return 0;
}

/* Parses value for k into a scratch union, checks it, then stores it. */
static int key_set(struct config *c, const struct config_key *k,
                   const char *value, const char *origin, char *msg, size_t len)
{
    char range[96];
    union {
        bool b;
        uint32_t u32;
        uint64_t u64;
        int64_t i64;
        double d;
        char *s;
        int e;
    } v = {0};
    uint64_t n = 0;
    int rc = 0;
    const char *what = NULL;

    format_range(k, range, sizeof(range));
    switch (k->type) {
    case CT_BOOL:
        if (config_parse_bool(value, &v.b))
            what = "not a bool, use true/false, yes/no, on/off or 1/0";
        break;
    case CT_U32:
    case CT_U64:
        rc = parse_uint(value, &n);
        if (rc == -EINVAL) {
            snprintf(msg, len, "%s.%s = %s: not an integer, allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
        goto range;
    case CT_DURATION:
    case CT_DURATION_I64:
        rc = config_parse_duration(value, &n);
        if (rc == -EINVAL) {
            snprintf(msg, len,
                     "%s.%s = %s: bad duration, use e.g. 500ms, 10s, 5m, "
                     "2h, 7d, allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
        goto range;
    case CT_SIZE:
        rc = config_parse_size(value, &n);
        if (rc == -EINVAL) {
            snprintf(msg, len,
                     "%s.%s = %s: bad size, use e.g. 512, 64k, 1M, 1G, "
                     "allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
    range:
        if (rc == -ERANGE || n < k->imin || n > k->imax) {
            snprintf(msg, len, "%s.%s = %s: out of range, allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
        if (k->type == CT_U32)
            v.u32 = (uint32_t)n;
        else if (k->type == CT_DURATION_I64)
            v.i64 = (int64_t)n;
        else
            v.u64 = n;
        break;
    case CT_DOUBLE: {
        char *end;
        errno = 0;
        v.d = strtod(value, &end);
        if (!*value || *end || isspace((unsigned char)*value) ||
            !isfinite(v.d)) {
            snprintf(msg, len, "%s.%s = %s: not a finite number, allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
        if (v.d < k->dmin || v.d > k->dmax) {
            snprintf(msg, len, "%s.%s = %s: out of range, allowed %s",
                     k->section, k->name, value, range);
            return -EINVAL;
        }
        break;
    }
    case CT_STRING:
        if (k->nonempty && !*value)
            what = "must not be empty";
        break;
    case CT_ENUM: {
        const struct config_enum *e = k->enums;
        for (; e->name; e++)
            if (!strcmp(e->name, value))
                break;
        if (!e->name) {
            char names[128];
            format_enum_names(k->enums, names, sizeof(names));
            snprintf(msg, len, "%s.%s = %s: bad value, allowed %s", k->section,
                     k->name, value, names);
            return -EINVAL;
        }
        v.e = e->value;
        break;
    }
    }
    if (!what && k->validate)
        what = k->validate(value);
    if (what) {
        snprintf(msg, len, "%s.%s = %s: %s", k->section, k->name, value, what);
        return -EINVAL;
    }

    void *p = field(c, k);
    if (k->type == CT_STRING) {
        char *s = strdup(value);
        if (!s)
            goto nomem;
        char *old = *(char **)p;
        *(char **)p = s;
        if (k->apply && (rc = k->apply(c, msg, len))) {
            *(char **)p = old;
            free(s);
            return rc;
        }
        free(old);
    } else {
        memcpy(p, &v, type_size(k));
        if (k->apply && (rc = k->apply(c, msg, len)))
            return rc;
    }
    if (origin_set(c, k, origin))
        goto nomem;
    return 0;
nomem:
    snprintf(msg, len, "out of memory");
    return -ENOMEM;
}

static int assign(struct config *c, const char *section, const char *name,
                  const char *value, const char *origin, unsigned line,
                  char *msg, size_t len)
{
    if (!*section) {
        snprintf(msg, len, "%s: key outside a section", name);
        return -EINVAL;
    }
    if (!section_known(section)) {
        snprintf(msg, len, "unknown section [%s]", section);
        return -EINVAL;
    }
    if (!strcmp(section, "kafka"))
        return kafka_set(c, name, value, origin, line, msg, len);
    if (!strcmp(section, "input") && !strncmp(name, "weight.", 7))
        return weight_set(c, name + 7, value, msg, len);
    const struct config_key *k = key_find(section, name);
    if (!k) {
        const char *hint = key_suggest(section, name);
        if (hint)
            snprintf(msg, len, "unknown key %s.%s (did you mean %s.%s?)",
                     section, name, section, hint);
        else
            snprintf(msg, len, "unknown key %s.%s", section, name);
        return -EINVAL;
    }
    return key_set(c, k, value, origin, msg, len);
}

/* ---------------------------------------------------------------------- */
/* Life cycle. */

const char *config_default_path(void)
{
    return NMFD_SYSCONFDIR "/nmfd/nmfd.conf";
}

struct config *config_new(void)
{
    struct config *c = calloc(1, sizeof(*c));
    char msg[CONFIG_ERR_MAX];
    if (!c)
        return NULL;
    c->origins = calloc(NKEYS, sizeof(*c->origins));
    c->path = strdup("");
    if (!c->origins || !c->path)
        goto fail;
    model_params_default(&c->model.params);
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_table[i];
        if (k->def && key_set(c, k, k->def, NULL, msg, sizeof(msg)))
            goto fail;
    }
    for (size_t i = 0; i < sizeof(kafka_defaults) / sizeof(kafka_defaults[0]);
         i++)
        if (kafka_set(c, kafka_defaults[i][0], kafka_defaults[i][1], NULL, 0,
                      msg, sizeof(msg)))
            goto fail;
    return c;
fail:
    config_free(c);
    return NULL;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (config_table[i].type == CT_STRING)
            free(*(char **)field(c, &config_table[i]));
        if (c->origins)
            free(c->origins[i]);
    }
    free(c->origins);
    for (size_t i = 0; i < c->kafka.n; i++) {
        free(c->kafka.kv[i].key);
        free(c->kafka.kv[i].value);
        free(c->kafka.kv[i].origin);
    }
    free(c->kafka.kv);
    for (size_t i = 0; i < c->input.nweights; i++)
        free(c->input.weights[i].type);
    free(c->input.weights);
    topics_clear(c);
    free(c->path);
    free(c);
}

void config_destroy(struct config **c)
{
    config_free(*c);
    *c = NULL;
}

/* ---------------------------------------------------------------------- */
/* INI files through libinih. */

struct ini_ctx {
    struct config *c;
    const char *name; /* file name in messages */
    FILE *f;          /* or */
    const char *s;    /* the text not read yet */
    char *buf;        /* the current line, whole */
    size_t cap;
    unsigned line;
    char section[128]; /* as seen by the reader */
    int rc;
    char *err;
    size_t errlen;
};

static void ini_fail(struct ini_ctx *x, int rc, const char *msg)
{
    if (x->rc)
        return;
    x->rc = rc;
    snprintf(x->err, x->errlen, "%s:%u: %s", x->name, x->line, msg);
}

static int ini_on_key(void *user, const char *section, const char *name,
                      const char *value)
{
    struct ini_ctx *x = user;
    char origin[600], msg[CONFIG_ERR_MAX];
    if (x->rc)
        return 0;
    snprintf(origin, sizeof(origin), "%s:%u", x->name, x->line);
    int rc =
        assign(x->c, section, name, value, origin, x->line, msg, sizeof(msg));
    if (rc)
        ini_fail(x, rc, msg);
    return !rc;
}

/* Reads one whole line into x->buf; false at the end. */
static bool ini_getline(struct ini_ctx *x)
{
    if (x->f) {
        ssize_t n = getline(&x->buf, &x->cap, x->f);
        return n >= 0;
    }
    if (!*x->s)
        return false;
    const char *nl = strchr(x->s, '\n');
    size_t n = nl ? (size_t)(nl - x->s) + 1 : strlen(x->s);
    if (n + 1 > x->cap) {
        char *b = realloc(x->buf, n + 1);
        if (!b) {
            ini_fail(x, -ENOMEM, "out of memory");
            return false;
        }
        x->buf = b;
        x->cap = n + 1;
    }
    memcpy(x->buf, x->s, n);
    x->buf[n] = '\0';
    x->s += n;
    return true;
}

static char *strip(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* A line too long for inih's buffer: parse "key = value" here with inih's
 * rules (split at the first '=' or ':', " ;" starts a comment). */
static void ini_long_line(struct ini_ctx *x, char *p)
{
    char *sep = strpbrk(p, "=:");
    if (*p == '[' || !sep) {
        ini_fail(x, -EINVAL, "line too long");
        return;
    }
    *sep = '\0';
    char *value = sep + 1;
    for (char *q = value; *q; q++)
        if (*q == ';' && q > value && isspace((unsigned char)q[-1])) {
            *q = '\0';
            break;
        }
    ini_on_key(x, x->section, strip(p), strip(value));
}

/* The ini_reader: one line per call, so x->line is the line inih parses. */
static char *ini_read_line(char *str, int num, void *stream)
{
    struct ini_ctx *x = stream;
    if (x->rc || !ini_getline(x))
        return NULL;
    x->line++;
    char *p = x->buf;
    if (x->line == 1 && !strncmp(p, "\xEF\xBB\xBF", 3))
        p += 3;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '[') {
        char *close = strchr(p, ']');
        if (!close) {
            ini_fail(x, -EINVAL, "syntax error, missing ']'");
            return NULL;
        }
        size_t n = (size_t)(close - p - 1);
        if (n >= sizeof(x->section))
            n = sizeof(x->section) - 1;
        memcpy(x->section, p + 1, n);
        x->section[n] = '\0';
        if (!section_known(x->section)) {
            char msg[256];
            snprintf(msg, sizeof(msg), "unknown section [%s]", x->section);
            ini_fail(x, -EINVAL, msg);
            return NULL;
        }
    }
    /* inih needs room for the line, "\r\n" and the terminator. */
    if (strlen(p) + 3 > (size_t)num) {
        if (*p == ';' || *p == '#') {
            snprintf(str, (size_t)num, "\n");
            return str;
        }
        ini_long_line(x, p);
        snprintf(str, (size_t)num, "\n");
        return x->rc ? NULL : str;
    }
    snprintf(str, (size_t)num, "%s", p);
    return str;
}

static int ini_run(struct ini_ctx *x)
{
    int ret = ini_parse_stream(ini_read_line, x, ini_on_key, x);
    free(x->buf);
    if (x->rc)
        return x->rc;
    if (ret > 0) {
        x->line = (unsigned)ret;
        ini_fail(x, -EINVAL, "syntax error, expected [section] or key = value");
        return x->rc;
    }
    if (ret < 0) {
        snprintf(x->err, x->errlen, "%s: out of memory", x->name);
        return -ENOMEM;
    }
    return 0;
}

int config_load_file(struct config *c, const char *path, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct ini_ctx x = {
        .c = c, .name = path, .f = f, .err = err, .errlen = errlen};
    int rc = ini_run(&x);
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = -EIO;
    }
    fclose(f);
    if (!rc) {
        char *p = strdup(path);
        if (!p) {
            snprintf(err, errlen, "%s: out of memory", path);
            return -ENOMEM;
        }
        free(c->path);
        c->path = p;
    }
    return rc;
}

int config_load_string(struct config *c, const char *name, const char *text,
                       char *err, size_t errlen)
{
    struct ini_ctx x = {
        .c = c, .name = name, .s = text, .err = err, .errlen = errlen};
    return ini_run(&x);
}

int config_set(struct config *c, const char *assignment, char *err,
               size_t errlen)
{
    char msg[CONFIG_ERR_MAX];
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!eq) {
        snprintf(err, errlen, "--set: %s: missing '=', use section.key=value",
                 assignment);
        return -EINVAL;
    }
    if (!dot || dot > eq || dot == assignment || dot + 1 == eq) {
        snprintf(err, errlen,
                 "--set: %s: missing section or key, use section.key=value",
                 assignment);
        return -EINVAL;
    }
    char *section = strndup(assignment, (size_t)(dot - assignment));
    char *name = strndup(dot + 1, (size_t)(eq - dot - 1));
    char *value = strdup(eq + 1);
    int rc = -ENOMEM;
    if (section && name && value) {
        /* Blanks around the parts go, as they do in the file. */
        rc = assign(c, strip(section), strip(name), strip(value), "--set", 0,
                    msg, sizeof(msg));
    } else {
        snprintf(msg, sizeof(msg), "out of memory");
    }
    if (rc)
        snprintf(err, errlen, "--set: %s", msg);
    free(section);
    free(name);
    free(value);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Cross-key checks. */

static const char *origin_of(const struct config *c, const char *name)
{
    const char *o = config_origin(c, name);
    return o ? o : "default";
}

/* TLS takes both files; credentials are needed where they are asked for,
 * and wherever the data routes face more than this host. */
static int http_check(const struct config *c, char *err, size_t errlen)
{
    bool creds = c->http.token_file[0] || c->http.password_file[0];

    if (!c->http.tls_cert_file[0] != !c->http.tls_key_file[0]) {
        const char *set = c->http.tls_cert_file[0] ? "http.tls_cert_file"
                                                   : "http.tls_key_file";
        snprintf(err, errlen, "%s: %s: needs http.%s too", origin_of(c, set),
                 set,
                 c->http.tls_cert_file[0] ? "tls_key_file" : "tls_cert_file");
        return -EINVAL;
    }
    if (c->http.auth_probes && !creds) {
        snprintf(err, errlen,
                 "%s: http.auth_probes = true: needs http.token_file or "
                 "http.password_file",
                 origin_of(c, "http.auth_probes"));
        return -EINVAL;
    }
    if (c->http.listen[0] && !creds && !c->http.allow_unauthenticated &&
        !listen_is_loopback(c->http.listen)) {
        snprintf(err, errlen,
                 "%s: http.listen = %s: beyond loopback the data routes "
                 "(/snapshot, /users, /events, /) need http.token_file or "
                 "http.password_file; set http.allow_unauthenticated = true "
                 "to serve them to any host that reaches the port",
                 origin_of(c, "http.listen"), c->http.listen);
        return -EINVAL;
    }
    return 0;
}

static bool in_topics(const struct config *c, const char *t)
{
    for (size_t i = 0; i < c->input.ntopics; i++)
        if (!strcmp(c->input.topic[i], t))
            return true;
    return false;
}

/* model.loss = kl: what its solve and its update of W do not have. The
 * key blamed is the one set away from its default. */
static int loss_check(const struct config *c, char *err, size_t errlen)
{
    const struct model_params *p = &c->model.params;
    if (p->loss != MODEL_LOSS_KL)
        return 0;
    const char *other = p->robust != MODEL_ROBUST_NONE ? "model.robust"
                        : p->alpha_h > 0               ? "model.alpha_h"
                        : p->alpha_w > 0               ? "model.alpha_w"
                        : p->holdout > 0               ? "model.holdout"
                                                       : NULL;
    if (!other)
        return 0;
    const char *why =
        p->robust != MODEL_ROBUST_NONE
            ? "the l21 weights are defined on the squared residual"
        : p->holdout > 0 ? "the held-out error is a squared error"
                         : "the KL solve and update of W have no penalty";
    const char *o = origin_of(c, "model.loss");
    if (!strcmp(o, "default"))
        o = origin_of(c, other);
    snprintf(err, errlen, "%s: model.loss = kl: cannot be used with %s (%s)", o,
             other, why);
    return -EINVAL;
}

int config_check(const struct config *c, char *err, size_t errlen)
{
    int lrc = loss_check(c, err, errlen);
    if (lrc)
        return lrc;
    const char *msg = model_params_check(&c->model.params);
    if (msg) {
        snprintf(err, errlen, "[model]: %s", msg);
        return -EINVAL;
    }

    /* Two event fields with one name would read one value twice. */
    static const char *const fields[] = {
        "field.user", "field.item", "field.weight", "field.type", "field.ts"};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = i + 1; j < 5; j++) {
            const char *a =
                *(char *const *)cfield(c, key_find("input", fields[i]));
            const char *b =
                *(char *const *)cfield(c, key_find("input", fields[j]));
            if (!strcmp(a, b)) {
                char name[64];
                snprintf(name, sizeof(name), "input.%s", fields[j]);
                snprintf(err, errlen, "%s: input.%s = %s: same as input.%s",
                         origin_of(c, name), fields[j], b, fields[i]);
                return -EINVAL;
            }
        }

    /* Consuming what we publish would feed the model its own output. */
    static const char *const outputs[] = {
        "snapshot.topic.segments", "snapshot.topic.topics",
        "snapshot.topic.manifest", "input.dead_letter_topic"};
    const char *const outv[] = {
        c->snapshot.topic_segments, c->snapshot.topic_topics,
        c->snapshot.topic_manifest, c->input.dead_letter_topic};
    for (size_t i = 0; i < 4; i++)
        if (*outv[i] && in_topics(c, outv[i])) {
            /* Blame the key the user wrote, not the default it met. */
            const char *o = origin_of(c, outputs[i]);
            if (!strcmp(o, "default"))
                o = origin_of(c, "input.topics");
            snprintf(err, errlen, "%s: %s = %s: also listed in input.topics", o,
                     outputs[i], outv[i]);
            return -EINVAL;
        }
    for (size_t i = 0; i < 3; i++)
        for (size_t j = i + 1; j < 3; j++)
            if (!strcmp(outv[i], outv[j])) {
                snprintf(err, errlen, "%s: %s = %s: same topic as %s",
                         origin_of(c, outputs[j]), outputs[j], outv[j],
                         outputs[i]);
                return -EINVAL;
            }
    if (c->cluster.enabled) {
        if (c->model.params.loss != MODEL_LOSS_FROBENIUS ||
            c->model.params.robust != MODEL_ROBUST_NONE) {
            snprintf(err, errlen,
                     "%s: cluster.enabled = true needs model.loss = "
                     "frobenius and model.robust = none (the group sums "
                     "statistics that do not depend on W; kl's ratios and "
                     "l21's weights would need every member's users "
                     "re-taken at each W: docs/design.md, section 8)",
                     origin_of(c, c->model.params.loss != MODEL_LOSS_FROBENIUS
                                      ? "model.loss"
                                      : "model.robust"));
            return -EINVAL;
        }
        if (c->model.params.half_life_ms > 0) {
            snprintf(err, errlen,
                     "%s: cluster.enabled = true needs model.half_life = 0 "
                     "(the members' statistics are summed as they are)",
                     origin_of(c, "model.half_life"));
            return -EINVAL;
        }
        const char *ct[] = {c->cluster.stats_topic, c->cluster.model_topic,
                            c->cluster.state_topic};
        static const char *const cn[] = {"cluster.stats_topic",
                                         "cluster.model_topic",
                                         "cluster.state_topic"};
        for (size_t i = 0; i < 3; i++) {
            for (size_t j = 0; j < 4; j++)
                if (!strcmp(ct[i], outv[j]) || in_topics(c, ct[i])) {
                    snprintf(err, errlen,
                             "%s: %s = %s: also an input or output topic",
                             origin_of(c, cn[i]), cn[i], ct[i]);
                    return -EINVAL;
                }
            for (size_t j = i + 1; j < 3; j++)
                if (!strcmp(ct[i], ct[j])) {
                    snprintf(err, errlen, "%s: %s = %s: same topic as %s",
                             origin_of(c, cn[j]), cn[j], ct[j], cn[i]);
                    return -EINVAL;
                }
        }
    }
    return http_check(c, err, errlen);
}

int config_load(struct config *c, const char *path, char *const *sets,
                size_t nsets, char *err, size_t errlen)
{
    int rc;
    if (path && (rc = config_load_file(c, path, err, errlen)))
        return rc;
    for (size_t i = 0; i < nsets; i++)
        if ((rc = config_set(c, sets[i], err, errlen)))
            return rc;
    return config_check(c, err, errlen);
}

/* ---------------------------------------------------------------------- */
/* Dumps. */

const char *config_origin(const struct config *c, const char *name)
{
    const char *dot = strchr(name, '.');
    if (!dot)
        return NULL;
    size_t sl = (size_t)(dot - name);
    if (sl == 5 && !strncmp(name, "kafka", 5)) {
        for (size_t i = 0; i < c->kafka.n; i++)
            if (!strcmp(c->kafka.kv[i].key, dot + 1))
                return c->kafka.kv[i].origin;
        return NULL;
    }
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_table[i];
        if (strlen(k->section) == sl && !strncmp(k->section, name, sl) &&
            !strcmp(k->name, dot + 1))
            return c->origins[i] ? c->origins[i] : "default";
    }
    return NULL;
}

static void dump_line(FILE *out, const char *key, const char *value,
                      const char *origin)
{
    fprintf(out, "%s =%s%s", key, *value ? " " : "", value);
    if (origin)
        fprintf(out, " ; %s", origin);
    fputc('\n', out);
}

void config_dump(const struct config *c, FILE *out)
{
    char buf[4096];
    fprintf(out, "[kafka]\n");
    for (size_t i = 0; i < c->kafka.n; i++) {
        const struct config_kv *kv = &c->kafka.kv[i];
        dump_line(out, kv->key, name_is_secret(kv->key) ? MASK : kv->value,
                  kv->origin);
    }
    const char *section = "kafka";
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_table[i];
        if (strcmp(section, k->section)) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        format_value(c, k, buf, sizeof(buf));
        /* Table keys say themselves what is secret: http.password_file
         * is a path, shown so that a dump says which file is read. */
        dump_line(out, k->name, k->secret ? MASK : buf,
                  c->origins[i] ? c->origins[i] : "default");
        if (!strcmp(k->section, "input") && !strcmp(k->name, "field.ts"))
            for (size_t j = 0; j < c->input.nweights; j++) {
                char name[300];
                snprintf(name, sizeof(name), "weight.%s",
                         c->input.weights[j].type);
                format_double(c->input.weights[j].weight, buf, sizeof(buf));
                dump_line(out, name, buf, NULL);
            }
    }
}

static void write_wrapped(FILE *out, const char *text)
{
    /* Comment lines of at most 78 columns, broken at spaces. */
    const char *p = text;
    while (*p) {
        size_t n = strlen(p);
        if (n > 76) {
            n = 76;
            while (n > 0 && p[n] != ' ')
                n--;
            if (n == 0)
                n = strcspn(p, " ");
        }
        fprintf(out, "# %.*s\n", (int)n, p);
        p += n;
        while (*p == ' ')
            p++;
    }
}

void config_write_commented(FILE *out)
{
    struct config *c = config_new();
    char value[4096], range[128], doc[1024];
    if (!c)
        return;
    fputs("# nmfd.conf -- configuration of nmfd, the online NMF daemon.\n"
          "#\n"
          "# Every key is listed with its default, commented out: uncomment "
          "a line to\n"
          "# change it, or override it at start with --set section.key=value."
          "\n"
          "# Durations: 500ms, 10s, 5m, 2h, 7d (or 0). Sizes: 512, 64k, 1M, "
          "1G\n"
          "# (binary units). Booleans: true/false, yes/no, on/off, 1/0.\n"
          "# Keys marked (reloadable) take effect on SIGHUP (systemctl reload "
          "nmfd);\n"
          "# the others need a restart, and the daemon says which.\n"
          "# `nmfd --dump-config` prints the values in effect.\n"
          "\n"
          "[kafka]\n"
          "# Every key here goes verbatim to librdkafka (security.protocol, "
          "sasl.*,\n"
          "# ssl.*, ...); see librdkafka's CONFIGURATION.md. Secrets are "
          "masked in\n"
          "# --dump-config.\n",
          out);
    for (size_t i = 0; i < c->kafka.n; i++)
        fprintf(out, "#%s = %s\n", c->kafka.kv[i].key, c->kafka.kv[i].value);

    const char *section = "kafka";
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_table[i];
        if (strcmp(section, k->section)) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        format_value(c, k, value, sizeof(value));
        range[0] = '\0';
        switch (k->type) {
        case CT_U32:
        case CT_U64:
        case CT_DOUBLE:
        case CT_DURATION:
        case CT_DURATION_I64:
        case CT_SIZE:
            format_range(k, range + 1, sizeof(range) - 1);
            range[0] = '(';
            strcat(range, ")");
            break;
        default:
            break;
        }
        snprintf(doc, sizeof(doc), "%s%s%s%s", k->doc, *range ? " " : "", range,
                 k->reloadable ? " (reloadable)" : "");
        write_wrapped(out, doc);
        fprintf(out, "#%s =%s%s\n", k->name, *value ? " " : "", value);
        if (!strcmp(k->section, "input") && !strcmp(k->name, "field.ts")) {
            write_wrapped(
                out, "weight.<type>: multiplier of the weight of events of "
                     "that type, a finite number, 0 or more. Once any is "
                     "set, events of an unlisted type are rejected; "
                     "with none set, the type is ignored.");
            fputs("#weight.view = 1\n#weight.click = 3\n#weight.purchase = "
                  "10\n",
                  out);
        }
    }
    config_free(c);
}

/* ---------------------------------------------------------------------- */
/* Reload. */

static int list_add(char *buf, size_t len, const char *section,
                    const char *name)
{
    size_t used = strlen(buf);
    int n = snprintf(buf + used, len - used, "%s%s.%s", used ? " " : "",
                     section, name);
    if (n < 0 || (size_t)n >= len - used) {
        buf[used] = '\0';
        return -ENOSPC;
    }
    return 0;
}

static bool values_equal(const struct config *a, const struct config *b,
                         const struct config_key *k)
{
    if (k->type == CT_STRING)
        return !strcmp(*(char *const *)cfield(a, k),
                       *(char *const *)cfield(b, k));
    return !memcmp(cfield(a, k), cfield(b, k), type_size(k));
}

static const char *kafka_get(const struct config *c, const char *key)
{
    for (size_t i = 0; i < c->kafka.n; i++)
        if (!strcmp(c->kafka.kv[i].key, key))
            return c->kafka.kv[i].value;
    return NULL;
}

static const struct config_weight *weight_get(const struct config *c,
                                              const char *type)
{
    for (size_t i = 0; i < c->input.nweights; i++)
        if (!strcmp(c->input.weights[i].type, type))
            return &c->input.weights[i];
    return NULL;
}

int config_reload(struct config *running, const struct config *fresh,
                  char *changed, size_t changed_len, char *needs_restart,
                  size_t needs_restart_len)
{
    int rc = 0;
    char msg[CONFIG_ERR_MAX];
    changed[0] = needs_restart[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_table[i];
        if (values_equal(running, fresh, k))
            continue;
        if (!k->reloadable) {
            if (list_add(needs_restart, needs_restart_len, k->section, k->name))
                rc = -ENOSPC;
            continue;
        }
        char value[4096];
        format_value(fresh, k, value, sizeof(value));
        if (key_set(running, k, value, fresh->origins[i], msg, sizeof(msg)))
            return -ENOMEM; /* the value came from a valid config */
        if (list_add(changed, changed_len, k->section, k->name))
            rc = -ENOSPC;
    }
    /* The dynamic keys reach librdkafka and the decoder only at start. */
    for (int pass = 0; pass < 2; pass++) {
        const struct config *x = pass ? fresh : running;
        const struct config *y = pass ? running : fresh;
        for (size_t i = 0; i < x->kafka.n; i++) {
            const char *other = kafka_get(y, x->kafka.kv[i].key);
            if (other && (pass || !strcmp(other, x->kafka.kv[i].value)))
                continue;
            if (list_add(needs_restart, needs_restart_len, "kafka",
                         x->kafka.kv[i].key))
                rc = -ENOSPC;
        }
        for (size_t i = 0; i < x->input.nweights; i++) {
            const struct config_weight *w =
                weight_get(y, x->input.weights[i].type);
            if (w && (pass || w->weight == x->input.weights[i].weight))
                continue;
            char name[300];
            snprintf(name, sizeof(name), "weight.%s", x->input.weights[i].type);
            if (list_add(needs_restart, needs_restart_len, "input", name))
                rc = -ENOSPC;
        }
    }
    return rc;
}
