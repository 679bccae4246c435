/* ctl_fit.c -- nmfctl fit and nmfctl eval: the daemon's model run offline
 * on a CSV file, and the exact loss of a snapshot on a CSV file.
 *
 * fit folds the events in file order through model_fold_next, told the
 * row after each (one row is read ahead) so that a run of one user's rows
 * is solved once, as the daemon's batch fold does for a run in a consumer
 * batch (model_fold_batch), with the model keys parsed by the daemon's
 * own config table (config_set), lets the model refresh W by the work
 * done (the rule above model_refresh_due in online/model.c: never by the
 * spacing of the timestamps, so a backfill of years of events runs as
 * fast as one of seconds and gives the same model), then runs the daemon's idle
 * refinement (model_refine with model.refine_users a slice) until it
 * reports convergence or a bound is hit, and writes the dense snapshot
 * atomically. The bound that usually ends it is one of work (rule above
 * fit_refine_done): a backfill is worth running only if it is quick, and
 * the last rounds of a refinement run to convergence cost more than the
 * pass for a few parts in a thousand of loss. Nothing in it reads a clock
 * that could change the result: the snapshot's ts is the last event time
 * and the refinement's bounds are counts of rounds and of the model's own
 * operations, so the same file and keys give the same bytes.
 *
 * eval reads a snapshot and a CSV and computes the relative loss exactly
 * and sparsely (formula above ctl_eval_loss), or under model.loss = kl
 * the divergence per unit of weight (ctl_eval_kl), as the snapshot's
 * model map says. It never builds a dense
 * matrix and never changes the snapshot.
 *
 * Both own their model, reader and maps; neither touches Kafka.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "csv.h"
#include "ctl.h"
#include "model.h"
#include "progress.h"
#include "records.h"

#define FIT_REJECTS_SHOWN 20 /* rejected lines printed, the rest counted */

/* The refinement's work bound (fit_refine_done): its share of the pass's
 * work, and the rounds it may always do after a pass that never
 * refreshed W. */
#define FIT_REFINE_WORK       0.25
#define FIT_REFINE_MIN_ROUNDS 6

static const char ts_rule[] =
    "The CSV has a header naming its columns: user and item are required,\n"
    "weight (default 1, a finite number >= 0), ts and type are optional.\n"
    "ts is an integer: values below 1e11 are seconds (multiplied by 1000),\n"
    "larger ones milliseconds since the Unix epoch; an empty ts repeats the\n"
    "previous row's time (0 before the first). Quoted fields (\"a,b\", \"\"\n"
    "for a quote) and CRLF are accepted. A malformed row is reported with\n"
    "its line number and skipped.\n";

static const char fit_usage[] =
    "usage: nmfctl fit --events FILE.csv [--set model.key=value]...\n"
    "                  [--refine-rounds N] [--refine-work R] --out SNAPSHOT\n"
    "\n"
    "Folds the events in file order through the daemon's model (the same\n"
    "code path, the same model.* keys and values as nmfd --set). W is\n"
    "refreshed by work done, never by event time: when the folds since the\n"
    "last refresh cost four refreshes, or after model.refresh_events\n"
    "events (model.refresh_interval, a wall-clock period of the daemon,\n"
    "plays no part); model.ttl forgets by event time at each refresh. Then\n"
    "refines while idle the way the daemon does after a stream goes\n"
    "quiet (model.refine_users users a step) until the model converges,\n"
    "N rounds (W refreshes) are done, or the refinement has done R times\n"
    "the work of the pass (the model's count of its operations, not time;\n"
    "at least 6 rounds after a pass too short to warm up), and writes the\n"
    "dense snapshot to SNAPSHOT atomically. The result depends only on\n"
    "the file and the keys: its ts is the last event time, not the clock.\n"
    "Prints one summary line: key=value pairs. On a terminal, stderr shows\n"
    "the progress (events, rate, share of the file, time left).\n"
    "\n"
    "  --events FILE.csv   events, '-' for stdin\n"
    "  --set model.K=V     a model key as in nmfd.conf (repeatable)\n"
    "  --refine-rounds N   bound on refinement rounds (default 500; 0 = "
    "none)\n"
    "  --refine-work R     bound on the refinement's work, a multiple of the\n"
    "                      pass's (default 0.25; 0 = none: refine to\n"
    "                      convergence, as nmfd does when idle)\n"
    "  --out SNAPSHOT      the snapshot file (msgpack, docs/"
    "snapshot-format.md)\n"
    "\n";

static const char eval_usage[] =
    "usage: nmfctl eval --snapshot FILE --events FILE.csv\n"
    "\n"
    "Relative loss ||V - W H||^2 / ||V||^2 of a dense snapshot on the CSV's\n"
    "summed matrix: V[i,u] is the sum of the weights of user u on item i\n"
    "(no decay). Ids are matched as strings; a CSV user or item missing\n"
    "from the snapshot counts with zero factors, snapshot ids absent from\n"
    "the CSV are outside the matrix. Computed exactly and sparsely in\n"
    "double precision. When the snapshot's model map says loss = kl, the\n"
    "loss is instead the divergence D(V || W H) per unit of weight\n"
    "(D / sum V; measure=kl). Prints one line of key=value pairs.\n"
    "\n";

static double ctl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ctl_bad(const char *cmd, const char *msg, const char *arg)
{
    fprintf(stderr, "nmfctl %s: %s%s%s\nTry 'nmfctl %s --help'.\n", cmd, msg,
            arg ? ": " : "", arg ? arg : "", cmd);
    return 2;
}

/* ---- fit ---------------------------------------------------------- */

struct fit_opts {
    const char *events;
    const char *out;
    char **sets;
    size_t nsets;
    uint64_t refine_rounds;
    double refine_work;
};

/*
 * When the refinement of a backfill stops, besides convergence
 * (model_refine's refine_tol) and --refine-rounds: once it has done
 * the rounds it may always do and its work (model_work: multiply-adds of
 * re-solves, refreshes, seeds and restarts) reaches R times the work of
 * the pass that folded the file, R = --refine-work. The pass is what the
 * user asked for and already leaves the model near the loss it will end
 * at; refinement beyond a fraction of it buys little (on the data sets of
 * docs/benchmarks.md the last 0.1-1% of loss, and a restart trial that
 * rarely wins, cost 3-25 times the pass). The rounds always allowed,
 * FIT_REFINE_MIN_ROUNDS, are for a stream too short to warm up in the
 * pass (it never refreshed W, which is still its random start): its
 * refinement seeds W and needs a few batch rounds whatever the pass
 * cost (on the two smallest data sets, 4 rounds take the loss from
 * 0.5-0.6 to 0.005-0.13, 6 to 0.0005-0.07); after any other pass none
 * are. A restart under
 * way when the bound is hit is dropped unfinished; the live model, which
 * it never touched, is what is written. Counting operations, not
 * seconds, keeps the result a function of the file and the keys.
 */
static bool fit_refine_done(double r, uint64_t rounds, bool warm,
                            uint64_t pass_work, uint64_t refine_work)
{
    return r > 0 && (warm || rounds >= FIT_REFINE_MIN_ROUNDS) &&
           (double)refine_work >= r * (double)pass_work;
}

/* A rejected row: printed for the first few, counted always. */
static void fit_reject(struct progress *pg, uint64_t *rejected, const char *msg)
{
    progress_end(pg); /* the message goes on a line of its own */
    if (++*rejected <= FIT_REJECTS_SHOWN)
        fprintf(stderr, "nmfctl fit: rejected %s\n", msg);
    else if (*rejected == FIT_REJECTS_SHOWN + 1)
        fprintf(stderr, "nmfctl fit: more rejected rows, counting only\n");
}

/* A row held while the next is read: its ids copied out of the reader's
 * buffer (an id longer than the model takes is kept one byte too long,
 * enough for the model to refuse it). */
struct fit_row {
    struct csv_row r;
    char user[MODEL_ID_MAX + 1], item[MODEL_ID_MAX + 1];
};

/* The next row into fr, CSV-level rejects reported and skipped: 1 a row,
 * 0 the end, -1 a read error (reported). */
static int fit_read(struct csv_reader *r, struct fit_row *fr,
                    struct progress *pg, uint64_t *rejected)
{
    int n;
    while ((n = csv_next(r, &fr->r)) != 0) {
        if (n == -EINVAL) {
            fit_reject(pg, rejected, csv_error(r));
            continue;
        }
        if (n < 0) {
            progress_end(pg);
            fprintf(stderr, "nmfctl fit: %s\n", csv_error(r));
            return -1;
        }
        size_t ul = fr->r.user_len < sizeof(fr->user) ? fr->r.user_len
                                                      : sizeof(fr->user);
        size_t il = fr->r.item_len < sizeof(fr->item) ? fr->r.item_len
                                                      : sizeof(fr->item);
        memcpy(fr->user, fr->r.user, ul);
        memcpy(fr->item, fr->r.item, il);
        fr->r.user = fr->user;
        fr->r.user_len = ul;
        fr->r.item = fr->item;
        fr->r.item_len = il;
        return 1;
    }
    return 0;
}

static struct model_event fit_event(const struct fit_row *fr)
{
    return (struct model_event){.user = fr->r.user,
                                .user_len = fr->r.user_len,
                                .item = fr->r.item,
                                .item_len = fr->r.item_len,
                                .weight = fr->r.weight,
                                .ts = fr->r.ts};
}

static int fit_run(const struct fit_opts *o, struct config *cfg)
{
    /* Offline, W is refreshed by work done (online/model.c, above
     * model_refresh_due): a backfill has no clock worth following. */
    struct model_params params = cfg->model.params;
    const struct model_params *p = &params;
    struct model *m = NULL;
    struct csv_reader *r = NULL;
    struct fit_row rows[2], *cur = &rows[0], *next = &rows[1], *swap;
    struct model_stats st;
    char err[CONFIG_ERR_MAX];
    uint64_t rejected = 0, folded = 0, rounds = 0;
    uint64_t expired = 0, expired_at = 0, fold_refreshes = 0;
    struct progress pg;
    bool converged = false;
    const char *stop = "none";
    uint64_t pass_work = 0;
    double t0 = ctl_now(), t1, t2;
    int rc = 1, n;

    params.refresh_work = MODEL_REFRESH_WORK;
    m = model_new(p);
    if (!m) {
        const char *why = model_params_check(p);
        fprintf(stderr, "nmfctl fit: cannot create the model: %s\n",
                why ? why : "out of memory");
        return why ? 2 : 1;
    }
    r = csv_open(o->events, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "nmfctl fit: %s\n", err);
        goto out;
    }
    progress_start(&pg, stderr, "fit", csv_size(r));
    /* One row read ahead: the model solves a user once per run of its
     * consecutive events (model_fold_next). */
    int have = fit_read(r, cur, &pg, &rejected), more;
    for (; have > 0; swap = cur, cur = next, next = swap, have = more) {
        const struct csv_row row = cur->r;
        if ((more = fit_read(r, next, &pg, &rejected)) < 0)
            goto out;
        const struct model_event e = fit_event(cur), en = fit_event(next);
        n = model_fold_next(m, &e, more ? &en : NULL);
        if (n == -EINVAL || n == -ENAMETOOLONG || n == -ERANGE) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s:%" PRIu64 ": %s", o->events,
                     row.line,
                     n == -EINVAL         ? "the model refused the event"
                     : n == -ENAMETOOLONG ? "id too long for the model"
                                          : "ts or weight out of range");
            fit_reject(&pg, &rejected, msg);
            continue;
        }
        if (n < 0) {
            progress_end(&pg);
            fprintf(stderr, "nmfctl fit: %s:%" PRIu64 ": %s\n", o->events,
                    row.line, strerror(-n));
            goto out;
        }
        folded++;
        progress_poll(&pg, folded, csv_offset(r));
        /* The model refreshes W by itself, by work (model_fold_next). What
         * model.ttl forgets is a matter of event time, but when the sweep
         * runs is not: at each refresh, so its cost follows the work too
         * (with timestamps a day apart, a sweep per minute of event time
         * would be a sweep per event). */
        if (p->ttl_ms > 0 && model_refreshes(m) != expired_at) {
            expired += model_expire(m, row.ts);
            expired_at = model_refreshes(m);
        }
    }
    if (have < 0)
        goto out;
    progress_end(&pg);
    if (p->ttl_ms > 0 && folded > 0) {
        model_stats(m, &st);
        expired += model_expire(m, st.now);
    }
    t1 = ctl_now();
    fold_refreshes = model_refreshes(m);
    pass_work = model_work(m);

    /* Idle refinement: model_refine re-solves stale users a slice at a
     * time and refreshes W once none is stale; one round is one refresh
     * of W. It returns 0 only when nothing is stale and nothing moved. */
    converged = folded == 0; /* nothing to refine */
    if (converged)
        stop = "converged";
    if (cfg->model.refine_users > 0 && folded > 0) {
        /* A round is a call that refreshed W (a call may refresh more than
         * once: the early warm-up, a restart); the bound counts rounds.
         * model_refreshes and model_work are O(1): model_stats, O(items k)
         * for its loss, would cost as much as a slice of users. */
        stop = "rounds";
        while (rounds < o->refine_rounds) {
            uint64_t before = model_refreshes(m);
            size_t solved;
            if (fit_refine_done(o->refine_work, rounds, fold_refreshes > 0,
                                pass_work, model_work(m) - pass_work)) {
                stop = "work";
                break;
            }
            solved = model_refine(m, cfg->model.refine_users);
            if (model_refreshes(m) != before)
                rounds++;
            else if (solved == 0) {
                converged = true;
                stop = "converged";
                break;
            }
        }
    }
    t2 = ctl_now();

    model_stats(m, &st);
    struct records_epoch ep = {
        .epoch = 0, /* no epoch was published (docs/snapshot-format.md) */
        .ts = st.now,
        .refresh_interval_ms = (int64_t)cfg->model.refresh_interval_ms,
    };
    n = records_snapshot_save(m, &ep, o->out);
    if (n < 0) {
        fprintf(stderr, "nmfctl fit: writing %s: %s\n", o->out, strerror(-n));
        goto out;
    }
    printf("events=%" PRIu64 " rejected=%" PRIu64 " users=%" PRIu64
           " items=%" PRIu64 " expired=%" PRIu64
           " k=%u loss=%.9g evicted_weight=%.9g fold_refreshes=%" PRIu64
           " refine_rounds=%" PRIu64
           " converged=%s refine_stop=%s refine_work=%.3f"
           " fold_seconds=%.3f refine_seconds=%.3f seconds=%.3f",
           folded, rejected, st.users, st.items, expired, p->k, st.rel_loss,
           st.evicted_weight, fold_refreshes, rounds, converged ? "yes" : "no",
           stop,
           pass_work ? (double)(st.work - pass_work) / (double)pass_work : 0.0,
           t1 - t0, t2 - t1, ctl_now() - t0);
    if (p->holdout > 0)
        printf(" holdout_loss=%.9g holdout_events=%" PRIu64, st.holdout_loss,
               st.holdout_events);
    printf(" out=%s\n", o->out);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "nmfctl fit: stdout: %s\n", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    csv_close(r);
    model_free(m);
    return rc;
}

int ctl_fit_main(int argc, char **argv)
{
    enum { O_EVENTS = 1, O_SET, O_ROUNDS, O_WORK, O_OUT, O_HELP };
    static const struct option longopts[] = {
        {"events", required_argument, NULL, O_EVENTS},
        {"set", required_argument, NULL, O_SET},
        {"refine-rounds", required_argument, NULL, O_ROUNDS},
        {"refine-work", required_argument, NULL, O_WORK},
        {"out", required_argument, NULL, O_OUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct fit_opts o = {.refine_rounds = 500, .refine_work = FIT_REFINE_WORK};
    struct config *cfg = NULL;
    char err[CONFIG_ERR_MAX];
    int c, rc = 2;

    o.sets = calloc((size_t)argc + 1, sizeof(*o.sets));
    if (!o.sets) {
        fprintf(stderr, "nmfctl fit: out of memory\n");
        return 1;
    }
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case O_EVENTS:
            o.events = a;
            break;
        case O_SET:
            if (strncmp(a, "model.", 6) != 0) {
                rc = ctl_bad("fit", "--set takes model.* keys only", a);
                goto out;
            }
            o.sets[o.nsets++] = optarg;
            break;
        case O_ROUNDS: {
            char *end;
            errno = 0;
            if (!*a || *a == '-' ||
                (o.refine_rounds = strtoull(a, &end, 10), *end || errno)) {
                rc = ctl_bad("fit", "--refine-rounds wants a whole number", a);
                goto out;
            }
            break;
        }
        case O_WORK: {
            char *end;
            errno = 0;
            o.refine_work = strtod(a, &end);
            if (!*a || *end || errno || !isfinite(o.refine_work) ||
                o.refine_work < 0) {
                rc = ctl_bad("fit", "--refine-work wants a number >= 0", a);
                goto out;
            }
            break;
        }
        case O_OUT:
            o.out = a;
            break;
        case O_HELP:
            fputs(fit_usage, stdout);
            fputs(ts_rule, stdout);
            rc = 0;
            goto out;
        case ':':
            rc = ctl_bad("fit", "missing value for", argv[optind - 1]);
            goto out;
        default:
            rc = ctl_bad("fit", "unknown option", argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        rc = ctl_bad("fit", "unexpected argument", argv[optind]);
        goto out;
    }
    if (!o.events || !*o.events) {
        rc = ctl_bad("fit", "--events FILE.csv is required", NULL);
        goto out;
    }
    if (!o.out || !*o.out) {
        rc = ctl_bad("fit", "--out SNAPSHOT is required", NULL);
        goto out;
    }
    if (!strcmp(o.out, "-")) {
        rc = ctl_bad(
            "fit", "--out wants a file name (it is replaced atomically)", NULL);
        goto out;
    }
    cfg = config_new();
    if (!cfg) {
        fprintf(stderr, "nmfctl fit: out of memory\n");
        rc = 1;
        goto out;
    }
    if (config_load(cfg, NULL, o.sets, o.nsets, err, sizeof(err)) < 0) {
        fprintf(stderr, "nmfctl fit: %s\n", err);
        rc = 2;
        goto out;
    }
    rc = fit_run(&o, cfg);
out:
    config_free(cfg);
    free(o.sets);
    return rc;
}

/* ---- eval --------------------------------------------------------- */

/* Interned ids: open addressing on a power-of-two table of indices into
 * an array of (pointer, length); the strings live in the snapshot or in
 * an arena of 1 MiB blocks. */
struct idmap {
    uint32_t *slot; /* index + 1, 0 = empty */
    size_t mask;
    const char **id;
    size_t *len;
    uint32_t n, cap;
    char **blocks;
    size_t nblocks, block_used;
};

#define IDMAP_BLOCK (1u << 20)

static uint64_t idmap_hash(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

static void idmap_free(struct idmap *m)
{
    for (size_t i = 0; i < m->nblocks; i++)
        free(m->blocks[i]);
    free(m->blocks);
    free(m->slot);
    free(m->id);
    free(m->len);
    memset(m, 0, sizeof(*m));
}

static int idmap_grow(struct idmap *m)
{
    size_t nsize = m->mask ? (m->mask + 1) * 2 : 1024;
    uint32_t *ns = calloc(nsize, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (uint32_t i = 0; i < m->n; i++) {
        size_t h = idmap_hash(m->id[i], m->len[i]) & (nsize - 1);
        while (ns[h])
            h = (h + 1) & (nsize - 1);
        ns[h] = i + 1;
    }
    free(m->slot);
    m->slot = ns;
    m->mask = nsize - 1;
    return 0;
}

/* Finds id; when absent and add is set, inserts it (copying it unless
 * keep is set: the caller guarantees the bytes outlive the map). Returns
 * the index, -ENOENT when absent and not added, or -ENOMEM. */
static int64_t idmap_get(struct idmap *m, const char *id, size_t len, bool add,
                         bool keep)
{
    size_t h;

    if (m->mask) {
        for (h = idmap_hash(id, len) & m->mask; m->slot[h];
             h = (h + 1) & m->mask) {
            uint32_t i = m->slot[h] - 1;
            if (m->len[i] == len && !memcmp(m->id[i], id, len))
                return i;
        }
    }
    if (!add)
        return -ENOENT;
    if (((size_t)m->n + 1) * 2 > m->mask && idmap_grow(m) < 0)
        return -ENOMEM;
    if (m->n == m->cap) {
        uint32_t ncap = m->cap ? m->cap * 2 : 1024;
        const char **nid = realloc(m->id, ncap * sizeof(*nid));
        if (!nid)
            return -ENOMEM;
        m->id = nid;
        size_t *nlen = realloc(m->len, ncap * sizeof(*nlen));
        if (!nlen)
            return -ENOMEM;
        m->len = nlen;
        m->cap = ncap;
    }
    if (!keep) {
        if (m->nblocks == 0 || m->block_used + len + 1 > IDMAP_BLOCK) {
            char **nb = realloc(m->blocks, (m->nblocks + 1) * sizeof(*nb));
            if (!nb)
                return -ENOMEM;
            m->blocks = nb;
            if (!(nb[m->nblocks] = malloc(IDMAP_BLOCK)))
                return -ENOMEM;
            m->nblocks++;
            m->block_used = 0;
        }
        char *copy = m->blocks[m->nblocks - 1] + m->block_used;
        memcpy(copy, id, len);
        copy[len] = '\0';
        m->block_used += len + 1;
        id = copy;
    }
    for (h = idmap_hash(id, len) & m->mask; m->slot[h]; h = (h + 1) & m->mask)
        ;
    m->slot[h] = m->n + 1;
    m->id[m->n] = id;
    m->len[m->n] = len;
    return m->n++;
}

struct eval_cell {
    uint32_t item, user;
    double v;
};

static int eval_cell_cmp(const void *a, const void *b)
{
    const struct eval_cell *x = a, *y = b;
    if (x->item != y->item)
        return x->item < y->item ? -1 : 1;
    if (x->user != y->user)
        return x->user < y->user ? -1 : 1;
    return 0;
}

struct eval_result {
    double norm;  /* ||V||^2 */
    double cross; /* sum V_iu (W H)_iu over the nonzeros of V */
    double trace; /* trace((W^T W)(H H^T)) over the CSV's rows */
    double loss;  /* ||V - W H||^2 */
};

/* The loss over the matrix whose rows are the CSV's items and whose
 * columns are the CSV's users, with P = W H (zero factors for ids the
 * snapshot lacks):
 *
 *   ||V - P||^2 = ||V||^2 - 2 sum_{(i,u): V_iu != 0} V_iu P_iu
 *                 + trace((W^T W)(H H^T))
 *
 * since ||P||^2 = trace(H^T W^T W H) = trace((W^T W)(H H^T)); the Gram
 * matrices take only the snapshot rows of ids present in the CSV, so the
 * cost is O(nnz k + (M + U) k^2). cells are summed, sorted and unique. */
static void ctl_eval_loss(const struct records_snapshot *s,
                          const struct eval_cell *cells, size_t ncells,
                          const uint8_t *item_in, const uint8_t *user_in,
                          struct eval_result *res)
{
    uint32_t k = s->k;
    double *gw = calloc((size_t)k * k, sizeof(double));
    double *gh = calloc((size_t)k * k, sizeof(double));

    memset(res, 0, sizeof(*res));
    for (size_t c = 0; c < ncells; c++) {
        const struct eval_cell *e = &cells[c];
        double p = 0;
        res->norm += e->v * e->v;
        if (e->item < s->nitems && e->user < s->nusers) {
            const float *w = s->W + (size_t)e->item * k;
            const float *h = s->H + (size_t)e->user * k;
            for (uint32_t j = 0; j < k; j++)
                p += (double)w[j] * h[j];
        }
        res->cross += e->v * p;
    }
    if (gw && gh) {
        for (uint32_t i = 0; i < s->nitems; i++) {
            const float *w = s->W + (size_t)i * k;
            if (!item_in[i])
                continue;
            for (uint32_t a = 0; a < k; a++)
                for (uint32_t b = 0; b < k; b++)
                    gw[a * k + b] += (double)w[a] * w[b];
        }
        for (uint32_t u = 0; u < s->nusers; u++) {
            const float *h = s->H + (size_t)u * k;
            if (!user_in[u])
                continue;
            for (uint32_t a = 0; a < k; a++)
                for (uint32_t b = 0; b < k; b++)
                    gh[a * k + b] += (double)h[a] * h[b];
        }
        for (size_t x = 0; x < (size_t)k * k; x++)
            res->trace += gw[x] * gh[x];
    }
    res->loss = res->norm - 2 * res->cross + res->trace;
    free(gw);
    free(gh);
}

/* The same matrix under model.loss = kl (the snapshot's model map says
 * so): the generalised Kullback-Leibler divergence
 *
 *   D(V || P) = sum_{(i,u): V_iu != 0} (V_iu log(V_iu / P_iu) - V_iu)
 *               + (sum_{i in rows} w_i)^T (sum_{u in columns} h_u)
 *
 * since sum_iu P_iu factors through the row sums of W and H: O(nnz k +
 * (M + U) k). norm is sum V, so loss / norm is the divergence per unit of
 * weight, the figure the daemon reports; infinite when some V_iu > 0 has
 * P_iu = 0 (an id the snapshot lacks). */
static void ctl_eval_kl(const struct records_snapshot *s,
                        const struct eval_cell *cells, size_t ncells,
                        const uint8_t *item_in, const uint8_t *user_in,
                        struct eval_result *res)
{
    uint32_t k = s->k;
    double sw[256] = {0}, sh[256] = {0};

    memset(res, 0, sizeof(*res));
    for (size_t c = 0; c < ncells; c++) {
        const struct eval_cell *e = &cells[c];
        double p = 0;
        if (e->item < s->nitems && e->user < s->nusers) {
            const float *w = s->W + (size_t)e->item * k;
            const float *h = s->H + (size_t)e->user * k;
            for (uint32_t j = 0; j < k; j++)
                p += (double)w[j] * h[j];
        }
        res->norm += e->v;
        if (e->v > 0)
            res->cross += p > 0 ? e->v * log(e->v / p) - e->v : INFINITY;
    }
    for (uint32_t i = 0; i < s->nitems; i++)
        for (uint32_t j = 0; j < k && item_in[i]; j++)
            sw[j] += s->W[(size_t)i * k + j];
    for (uint32_t u = 0; u < s->nusers; u++)
        for (uint32_t j = 0; j < k && user_in[u]; j++)
            sh[j] += s->H[(size_t)u * k + j];
    for (uint32_t j = 0; j < k; j++)
        res->trace += sw[j] * sh[j];
    res->loss = res->cross + res->trace;
}

int ctl_eval_main(int argc, char **argv)
{
    enum { O_SNAPSHOT = 1, O_EVENTS, O_HELP };
    static const struct option longopts[] = {
        {"snapshot", required_argument, NULL, O_SNAPSHOT},
        {"events", required_argument, NULL, O_EVENTS},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *snap_path = NULL, *events = NULL;
    struct records_snapshot *s = NULL;
    struct csv_reader *r = NULL;
    struct idmap users = {0}, items = {0};
    struct eval_cell *cells = NULL;
    uint8_t *user_in = NULL, *item_in = NULL;
    size_t ncells = 0, cap = 0;
    uint64_t nevents = 0, rejected = 0;
    char err[512];
    const char *serr = NULL;
    int c, rc = 2, n;
    double t0 = ctl_now();

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_SNAPSHOT:
            snap_path = optarg;
            break;
        case O_EVENTS:
            events = optarg;
            break;
        case O_HELP:
            fputs(eval_usage, stdout);
            fputs(ts_rule, stdout);
            return 0;
        case ':':
            return ctl_bad("eval", "missing value for", argv[optind - 1]);
        default:
            return ctl_bad("eval", "unknown option", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ctl_bad("eval", "unexpected argument", argv[optind]);
    if (!snap_path || !*snap_path)
        return ctl_bad("eval", "--snapshot FILE is required", NULL);
    if (!events || !*events)
        return ctl_bad("eval", "--events FILE.csv is required", NULL);

    rc = 1;
    s = records_snapshot_load(snap_path, &serr);
    if (!s) {
        fprintf(stderr, "nmfctl eval: %s: %s\n", snap_path, serr);
        goto out;
    }
    /* Snapshot ids take the first indices, so an index below nusers
     * (nitems) has factors. */
    for (uint32_t u = 0; u < s->nusers; u++) {
        int64_t x = idmap_get(&users, s->users[u], s->user_lens[u], true, true);
        if (x == -ENOMEM)
            goto nomem;
        if (x != u) {
            fprintf(stderr, "nmfctl eval: %s: user '%s' appears twice\n",
                    snap_path, s->users[u]);
            goto out;
        }
    }
    for (uint32_t i = 0; i < s->nitems; i++) {
        int64_t x = idmap_get(&items, s->items[i], s->item_lens[i], true, true);
        if (x == -ENOMEM)
            goto nomem;
        if (x != i) {
            fprintf(stderr, "nmfctl eval: %s: item '%s' appears twice\n",
                    snap_path, s->items[i]);
            goto out;
        }
    }
    r = csv_open(events, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "nmfctl eval: %s\n", err);
        goto out;
    }
    struct csv_row row;
    while ((n = csv_next(r, &row)) != 0) {
        if (n == -EINVAL) {
            if (++rejected <= FIT_REJECTS_SHOWN)
                fprintf(stderr, "nmfctl eval: rejected %s\n", csv_error(r));
            continue;
        }
        if (n < 0) {
            fprintf(stderr, "nmfctl eval: %s\n", csv_error(r));
            goto out;
        }
        int64_t u = idmap_get(&users, row.user, row.user_len, true, false);
        int64_t i = idmap_get(&items, row.item, row.item_len, true, false);
        if (u < 0 || i < 0)
            goto nomem;
        if (ncells == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            struct eval_cell *nc = realloc(cells, ncap * sizeof(*nc));
            if (!nc)
                goto nomem;
            cells = nc;
            cap = ncap;
        }
        cells[ncells++] =
            (struct eval_cell){(uint32_t)i, (uint32_t)u, row.weight};
        nevents++;
    }
    /* Sum the weights of each (item, user): sort, then merge runs. */
    if (ncells)
        qsort(cells, ncells, sizeof(*cells), eval_cell_cmp);
    size_t nnz = 0;
    for (size_t x = 0; x < ncells; x++) {
        if (nnz > 0 && cells[nnz - 1].item == cells[x].item &&
            cells[nnz - 1].user == cells[x].user)
            cells[nnz - 1].v += cells[x].v;
        else
            cells[nnz++] = cells[x];
    }
    user_in = calloc(s->nusers + 1, 1);
    item_in = calloc(s->nitems + 1, 1);
    if (!user_in || !item_in)
        goto nomem;
    for (size_t x = 0; x < nnz; x++) {
        if (cells[x].user < s->nusers)
            user_in[cells[x].user] = 1;
        if (cells[x].item < s->nitems)
            item_in[cells[x].item] = 1;
    }
    uint64_t users_missing = 0, items_missing = 0, users_matched = 0,
             items_matched = 0;
    for (uint32_t u = 0; u < s->nusers; u++)
        users_matched += user_in[u];
    for (uint32_t i = 0; i < s->nitems; i++)
        items_matched += item_in[i];
    users_missing = users.n - s->nusers;
    items_missing = items.n - s->nitems;

    struct eval_result res;
    const bool kl = s->params.loss == MODEL_LOSS_KL;
    if (kl)
        ctl_eval_kl(s, cells, nnz, item_in, user_in, &res);
    else
        ctl_eval_loss(s, cells, nnz, item_in, user_in, &res);
    double rel = res.norm > 0 ? res.loss / res.norm : 0;
    printf("events=%" PRIu64 " rejected=%" PRIu64 " users=%" PRIu64
           " items=%" PRIu64 " nnz=%zu k=%u users_missing=%" PRIu64
           " items_missing=%" PRIu64 " norm=%.17g loss_abs=%.17g "
           "loss=%.12g seconds=%.3f measure=%s\n",
           nevents, rejected, users_matched + users_missing,
           items_matched + items_missing, nnz, s->k, users_missing,
           items_missing, res.norm, res.loss, rel, ctl_now() - t0,
           kl ? "kl" : "frobenius");
    if (fflush(stdout) != 0) {
        fprintf(stderr, "nmfctl eval: stdout: %s\n", strerror(errno));
        goto out;
    }
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "nmfctl eval: out of memory\n");
    rc = 1;
out:
    csv_close(r);
    records_snapshot_free(s);
    idmap_free(&users);
    idmap_free(&items);
    free(cells);
    free(user_in);
    free(item_in);
    return rc;
}
