/* ctl_rank.c -- nmfctl rank: held-out validation of the rank k.
 *
 * NMF's classic pitfall is choosing k without validation. rank reads the
 * CSV once into memory, then for every k asked and every fold validates
 * k by bi-cross-validation (Owen & Perry, "Bi-cross-validation of the
 * SVD and the nonnegative matrix factorization", Ann. Appl. Stat. 2009):
 * a hash salted by the fold holds out a share F of the users whole; the
 * model is fitted the way nmfctl fit does (model_fold per event, W
 * refreshed by work, the idle refinement to convergence) on the other
 * users' events only; then each held-out user's h is solved on one half
 * of the items and its error measured on the other half, zeros included,
 * and the other way round (model_bcv_score, online/holdout.c). Held-out
 * pairs (model.holdout) would not do here: the fold sees a missing pair
 * as a zero to fit, and a larger k fits those zeros better, so their
 * error grows with k past the true rank on skewed streams.
 *
 * It prints a table of k, training loss, held-out error (mean over
 * folds), its standard error, the standard error of its difference from
 * the best k paired by fold, and time; last the choice: the smallest k
 * whose held-out error is within one (paired) standard error of the best
 * (the one-standard-error rule; Hastie, Tibshirani & Friedman, The
 * Elements of Statistical Learning, section 7.10), so that a larger k
 * must earn its place. --plot draws both curves as SVG.
 *
 * It owns its copy of the events and one model at a time; it never
 * touches Kafka and writes no file but the plot.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "csv.h"
#include "ctl.h"
#include "model.h"
#include "progress.h"

#define RANK_KS_MAX        MODEL_K_MAX
#define RANK_FOLDS_MAX     20
#define RANK_REJECTS_SHOWN 20

static const char rank_usage[] =
    "usage: nmfctl rank --events FILE.csv --k LIST|FROM:TO[:STEP]\n"
    "                   [--holdout F] [--folds N] [--set model.key=value]...\n"
    "                   [--refine-rounds N] [--plot FILE.svg]\n"
    "\n"
    "Bi-cross-validation of the rank. Reads the events once, then for\n"
    "each k and each of N folds (default 5) holds out a share F (default\n"
    "0.2) of the users, chosen by a hash salted by the fold, fits the\n"
    "model on the other users as nmfctl fit does, solves each held-out\n"
    "user on one half of the items and scores it on the other half,\n"
    "zeros included, and the other way round: ||V_T - W_T H||^2 /\n"
    "||V_T||^2 over the held-out users. Prints a table (k, training\n"
    "loss, held-out error as the mean over folds, its standard error,\n"
    "the standard error of its difference from the best k paired by\n"
    "fold, seconds per k) and, last, k=N: the smallest k whose held-out\n"
    "error is within one paired standard error of the best.\n"
    "On a terminal, stderr shows the progress.\n"
    "\n"
    "  --events FILE.csv   events (read once; '-' for stdin)\n"
    "  --k LIST            ranks to try: 2,4,8 or FROM:TO or FROM:TO:STEP\n"
    "  --holdout F         share of users held out, 0 < F < 1 (default "
    "0.2)\n"
    "  --folds N           folds, 1..20 (default 5; 1 gives no spread)\n"
    "  --set model.K=V     a model key as in nmfd.conf (not k, holdout)\n"
    "  --refine-rounds N   refinement bound per fit (default 500)\n"
    "  --plot FILE.svg     both curves, the choice marked\n"
    "\n";

static int rank_bad(const char *msg, const char *arg)
{
    fprintf(stderr, "nmfctl rank: %s%s%s\nTry 'nmfctl rank --help'.\n", msg,
            arg ? ": " : "", arg ? arg : "");
    return 2;
}

/* A whole number in lo..hi with nothing after it, or -1. */
static long rank_num(const char *s, const char **end, long lo, long hi)
{
    char *e;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || v < lo || v > hi)
        return -1;
    *end = e;
    return v;
}

/* --k: "2,4,8", "2:32" or "2:32:2" into ks (sorted, unique). 0 or a
 * static message. */
static const char *rank_parse_ks(const char *s, uint32_t *ks, uint32_t *nk)
{
    const char *e;
    *nk = 0;
    if (strchr(s, ':')) {
        long from = rank_num(s, &e, 1, MODEL_K_MAX), to, step = 1;
        if (from < 0 || *e != ':')
            return "--k FROM:TO[:STEP] wants ranks 1..256";
        to = rank_num(e + 1, &e, 1, MODEL_K_MAX);
        if (to < 0)
            return "--k FROM:TO[:STEP] wants ranks 1..256";
        if (*e == ':' && (step = rank_num(e + 1, &e, 1, MODEL_K_MAX)) < 0)
            return "--k: STEP must be 1..256";
        if (*e)
            return "--k FROM:TO[:STEP] wants ranks 1..256";
        if (from > to)
            return "--k: FROM is above TO";
        for (long k = from; k <= to; k += step)
            ks[(*nk)++] = (uint32_t)k;
        return NULL;
    }
    for (;;) {
        long k = rank_num(s, &e, 1, MODEL_K_MAX);
        if (k < 0 || (*e && *e != ','))
            return "--k LIST wants ranks 1..256 separated by commas";
        uint32_t at = 0;
        while (at < *nk && ks[at] < (uint32_t)k)
            at++;
        if (at < *nk && ks[at] == (uint32_t)k)
            return "--k lists a rank twice";
        memmove(ks + at + 1, ks + at, (*nk - at) * sizeof(*ks));
        ks[at] = (uint32_t)k;
        (*nk)++;
        if (!*e)
            return NULL;
        s = e + 1;
    }
}

/* The events in memory: ids in one arena, offsets until it stops
 * moving. */
struct rank_events {
    char *arena;
    size_t used, cap;
    struct model_event *ev;
    size_t n, evcap;
    uint64_t rejected;
};

static int rank_keep(struct rank_events *E, const struct csv_row *row)
{
    size_t need = row->user_len + row->item_len;
    if (E->used + need > E->cap) {
        size_t cap = E->cap ? E->cap : 1 << 20;
        while (cap < E->used + need)
            cap *= 2;
        char *a = realloc(E->arena, cap);
        if (!a)
            return -ENOMEM;
        E->arena = a;
        E->cap = cap;
    }
    if (E->n == E->evcap) {
        size_t cap = E->evcap ? 2 * E->evcap : 4096;
        struct model_event *v = realloc(E->ev, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        E->ev = v;
        E->evcap = cap;
    }
    struct model_event *x = &E->ev[E->n++];
    /* Offsets for now: the arena may still move. */
    x->user = (const char *)(uintptr_t)E->used;
    x->user_len = row->user_len;
    memcpy(E->arena + E->used, row->user, row->user_len);
    E->used += row->user_len;
    x->item = (const char *)(uintptr_t)E->used;
    x->item_len = row->item_len;
    memcpy(E->arena + E->used, row->item, row->item_len);
    E->used += row->item_len;
    x->weight = row->weight;
    x->ts = row->ts;
    return 0;
}

static int rank_read(const char *path, struct rank_events *E)
{
    char err[512];
    struct csv_reader *r = csv_open(path, err, sizeof(err));
    struct csv_row row;
    int n;
    if (!r) {
        fprintf(stderr, "nmfctl rank: %s\n", err);
        return 1;
    }
    while ((n = csv_next(r, &row)) != 0) {
        if (n == -EINVAL) {
            if (++E->rejected <= RANK_REJECTS_SHOWN)
                fprintf(stderr, "nmfctl rank: rejected %s\n", csv_error(r));
            continue;
        }
        if (n < 0) {
            fprintf(stderr, "nmfctl rank: %s\n", csv_error(r));
            csv_close(r);
            return 1;
        }
        if (rank_keep(E, &row)) {
            fprintf(stderr, "nmfctl rank: out of memory\n");
            csv_close(r);
            return 1;
        }
    }
    csv_close(r);
    for (size_t e = 0; e < E->n; e++) {
        E->ev[e].user = E->arena + (uintptr_t)E->ev[e].user;
        E->ev[e].item = E->arena + (uintptr_t)E->ev[e].item;
    }
    return 0;
}

struct rank_fit {
    double train, holdout, seconds;
    uint64_t users;
};

/* One fold as nmfctl fit runs a fit (ctl_fit.c fit_run) on the training
 * users: fold in file order, W refreshed by work, expiry at refreshes,
 * refinement to convergence; the held-out users' events go to the
 * bi-cross-validation matrix instead, scored against the final W. */
static int rank_fit_one(const struct rank_events *E, const struct config *cfg,
                        uint32_t k, double share, uint32_t fold,
                        uint64_t rounds_max, struct progress *pg,
                        uint64_t *done, struct rank_fit *out)
{
    struct model_params p = cfg->model.params;
    struct model_stats st;
    struct model_bcv_score bs;
    uint64_t expired_at = 0, rounds = 0;
    double t0 = progress_now();
    int rc = 1;
    p.k = k;
    p.holdout = 0;
    p.refresh_work = MODEL_REFRESH_WORK;
    struct model *m = model_new(&p);
    struct model_bcv *b = model_bcv_new(share, fold);
    if (!m || !b) {
        progress_end(pg);
        const char *why = model_params_check(&p);
        fprintf(stderr, "nmfctl rank: cannot create the model: %s\n",
                why ? why : "out of memory");
        rc = why ? 2 : 1;
        goto out;
    }
    for (size_t e = 0; e < E->n; e++) {
        const struct model_event *x = &E->ev[e];
        int r;
        if (model_bcv_user_held(b, x->user, x->user_len))
            r = model_bcv_add(b, x->user, x->user_len, x->item, x->item_len,
                              x->weight, x->ts, p.half_life_ms);
        else
            r = model_fold(m, x->user, x->user_len, x->item, x->item_len,
                           x->weight, x->ts);
        if (r == -ENOMEM) {
            progress_end(pg);
            fprintf(stderr, "nmfctl rank: out of memory\n");
            goto out;
        }
        if (p.ttl_ms > 0 && model_refreshes(m) != expired_at) {
            model_expire(m, x->ts);
            expired_at = model_refreshes(m);
        }
        ++*done;
        progress_poll(pg, *done, *done);
    }
    if (p.ttl_ms > 0 && E->n) {
        model_stats(m, &st);
        model_expire(m, st.now);
    }
    if (cfg->model.refine_users > 0)
        while (rounds < rounds_max) {
            uint64_t before = model_refreshes(m);
            size_t solved = model_refine(m, cfg->model.refine_users);
            if (model_refreshes(m) != before)
                rounds++;
            else if (!solved)
                break;
        }
    model_stats(m, &st);
    if (model_bcv_score(b, m, &bs)) {
        progress_end(pg);
        fprintf(stderr, "nmfctl rank: out of memory\n");
        goto out;
    }
    out->train = st.rel_loss;
    out->holdout = bs.norm > 0 ? bs.loss / bs.norm : 0;
    out->users = bs.users;
    out->seconds = progress_now() - t0;
    rc = 0;
out:
    model_bcv_free(b);
    model_free(m);
    return rc;
}

struct rank_row {
    uint32_t k;
    double train, ho, se, seconds;
    double fold[RANK_FOLDS_MAX]; /* held-out error per fold */
    double dse; /* standard error of ho - ho_best, paired by fold */
};

/* Both curves against k, with the held-out error's standard error as
 * bars and the choice marked: a plain SVG, no scripts. */
static int rank_plot(const char *path, const struct rank_row *rw, uint32_t n,
                     uint32_t choice)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "nmfctl rank: %s: %s\n", path, strerror(errno));
        return 1;
    }
    const double W = 640, H = 400, L = 60, R = 20, T = 30, B = 50;
    double ymax = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (rw[i].train > ymax)
            ymax = rw[i].train;
        if (rw[i].ho + rw[i].se > ymax)
            ymax = rw[i].ho + rw[i].se;
    }
    if (!(ymax > 0))
        ymax = 1;
    ymax *= 1.05;
    double kmin = rw[0].k, kmax = rw[n - 1].k > kmin ? rw[n - 1].k : kmin + 1;
#define PX(k) (L + ((k)-kmin) / (kmax - kmin) * (W - L - R))
#define PY(y) (H - B - (y) / ymax * (H - T - B))
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
            "height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"black\"/>\n<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
            "y2=\"%.1f\" stroke=\"black\"/>\n",
            W, H, L, H - B, W - R, H - B, L, T, L, H - B);
    for (int t = 0; t <= 4; t++) {
        double y = ymax * t / 4;
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                L - 5, PY(y) + 4, y);
    }
    for (uint32_t i = 0; i < n; i++)
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%u</text>"
                "\n",
                PX(rw[i].k), H - B + 16, rw[i].k);
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">k</text>\n"
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n"
            "<text x=\"%.1f\" y=\"%.1f\">k=%u</text>\n",
            (L + W - R) / 2, H - 12, PX(choice), T, PX(choice), H - B,
            PX(choice) + 4, T + 12.0, choice);
    static const char *const colour[2] = {"#1f77b4", "#d62728"};
    static const char *const name[2] = {"training loss",
                                        "held-out error (mean, 1 se)"};
    for (int c = 0; c < 2; c++) {
        fprintf(f,
                "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                "points=\"",
                colour[c]);
        for (uint32_t i = 0; i < n; i++)
            fprintf(f, "%.1f,%.1f ", PX(rw[i].k),
                    PY(c ? rw[i].ho : rw[i].train));
        fprintf(f, "\"/>\n");
        for (uint32_t i = 0; i < n; i++) {
            double y = c ? rw[i].ho : rw[i].train;
            fprintf(f,
                    "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    PX(rw[i].k), PY(y), colour[c]);
            if (c && rw[i].se > 0)
                fprintf(f,
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
                        "y2=\"%.1f\" stroke=\"%s\"/>\n",
                        PX(rw[i].k), PY(y - rw[i].se), PX(rw[i].k),
                        PY(y + rw[i].se), colour[c]);
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n",
                W - R - 200, T + 16.0 * c, colour[c], name[c]);
    }
#undef PX
#undef PY
    fprintf(f, "</svg>\n");
    if (fclose(f)) {
        fprintf(stderr, "nmfctl rank: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

int ctl_rank_main(int argc, char **argv)
{
    enum {
        O_EVENTS = 1,
        O_K,
        O_HOLDOUT,
        O_FOLDS,
        O_SET,
        O_ROUNDS,
        O_PLOT,
        O_HELP
    };
    static const struct option longopts[] = {
        {"events", required_argument, NULL, O_EVENTS},
        {"k", required_argument, NULL, O_K},
        {"holdout", required_argument, NULL, O_HOLDOUT},
        {"folds", required_argument, NULL, O_FOLDS},
        {"set", required_argument, NULL, O_SET},
        {"refine-rounds", required_argument, NULL, O_ROUNDS},
        {"plot", required_argument, NULL, O_PLOT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *events = NULL, *plot = NULL, *kspec = NULL, *msg;
    uint32_t ks[RANK_KS_MAX], nk = 0, folds = 5;
    double share = 0.2;
    uint64_t rounds = 500;
    char **sets = calloc((size_t)argc + 1, sizeof(*sets));
    size_t nsets = 0;
    struct config *cfg = NULL;
    struct rank_events E = {0};
    struct rank_row *rw = NULL;
    char err[CONFIG_ERR_MAX];
    int c, rc = 2;

    if (!sets) {
        fprintf(stderr, "nmfctl rank: out of memory\n");
        return 1;
    }
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const char *a = optarg, *e;
        char *end;
        switch (c) {
        case O_EVENTS:
            events = a;
            break;
        case O_K:
            kspec = a;
            break;
        case O_HOLDOUT:
            errno = 0;
            share = strtod(a, &end);
            if (!*a || *end || errno || !(share > 0 && share < 1)) {
                rc = rank_bad("--holdout wants a share between 0 and 1", a);
                goto out;
            }
            break;
        case O_FOLDS: {
            long f = rank_num(a, &e, 1, RANK_FOLDS_MAX);
            if (f < 0 || *e) {
                rc = rank_bad("--folds wants a whole number 1..20", a);
                goto out;
            }
            folds = (uint32_t)f;
            break;
        }
        case O_SET:
            if (strncmp(a, "model.", 6)) {
                rc = rank_bad("--set takes model.* keys only", a);
                goto out;
            }
            if (!strncmp(a, "model.k=", 8) ||
                !strncmp(a, "model.holdout=", 14)) {
                rc = rank_bad("--k and --holdout set these", a);
                goto out;
            }
            sets[nsets++] = optarg;
            break;
        case O_ROUNDS:
            errno = 0;
            if (!*a || *a == '-' ||
                (rounds = strtoull(a, &end, 10), *end || errno)) {
                rc = rank_bad("--refine-rounds wants a whole number", a);
                goto out;
            }
            break;
        case O_PLOT:
            plot = a;
            break;
        case O_HELP:
            fputs(rank_usage, stdout);
            rc = 0;
            goto out;
        case ':':
            rc = rank_bad("missing value for", argv[optind - 1]);
            goto out;
        default:
            rc = rank_bad("unknown option", argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        rc = rank_bad("unexpected argument", argv[optind]);
        goto out;
    }
    if (!events || !*events) {
        rc = rank_bad("--events FILE.csv is required", NULL);
        goto out;
    }
    if (!kspec) {
        rc = rank_bad("--k LIST|FROM:TO[:STEP] is required", NULL);
        goto out;
    }
    if ((msg = rank_parse_ks(kspec, ks, &nk))) {
        rc = rank_bad(msg, kspec);
        goto out;
    }
    if (plot && !*plot) {
        rc = rank_bad("--plot wants a file name", NULL);
        goto out;
    }
    if (!(cfg = config_new())) {
        fprintf(stderr, "nmfctl rank: out of memory\n");
        rc = 1;
        goto out;
    }
    if (config_load(cfg, NULL, sets, nsets, err, sizeof(err)) < 0) {
        fprintf(stderr, "nmfctl rank: %s\n", err);
        goto out;
    }
    if (cfg->model.params.loss == MODEL_LOSS_KL) {
        /* The score below is a squared error and its held-out users are
         * solved by NNLS: it would rank a KL fit by what it does not
         * minimise. */
        fprintf(stderr, "nmfctl rank: model.loss = kl is not supported: the "
                        "bi-cross-validation scores squared error\n");
        goto out;
    }

    rc = 1;
    if (rank_read(events, &E))
        goto out;
    if (!E.n) {
        fprintf(stderr, "nmfctl rank: %s: no events\n", events);
        goto out;
    }
    if (!(rw = calloc(nk, sizeof(*rw)))) {
        fprintf(stderr, "nmfctl rank: out of memory\n");
        goto out;
    }
    struct progress pg;
    uint64_t done = 0;
    progress_start(&pg, stderr, "rank", (int64_t)(E.n * nk * folds));
    for (uint32_t i = 0; i < nk; i++) {
        double *ho = rw[i].fold, tr = 0, t = 0, mean = 0, var = 0;
        for (uint32_t f = 0; f < folds; f++) {
            struct rank_fit fit;
            int r = rank_fit_one(&E, cfg, ks[i], share, f, rounds, &pg, &done,
                                 &fit);
            if (r) {
                rc = r;
                goto out;
            }
            if (!fit.users) {
                progress_end(&pg);
                fprintf(stderr,
                        "nmfctl rank: %s: fold %u holds out no user; "
                        "raise --holdout or give more users\n",
                        events, f + 1);
                goto out;
            }
            ho[f] = fit.holdout;
            tr += fit.train;
            t += fit.seconds;
            mean += fit.holdout;
        }
        mean /= folds;
        for (uint32_t f = 0; f < folds; f++)
            var += (ho[f] - mean) * (ho[f] - mean);
        rw[i].k = ks[i];
        rw[i].train = tr / folds;
        rw[i].ho = mean;
        rw[i].se = folds > 1 ? sqrt(var / (folds - 1) / folds) : 0;
        rw[i].seconds = t;
    }
    progress_end(&pg);

    /* The one-standard-error rule on paired differences: every k is
     * scored on the same folds, so the fold-to-fold level (which users
     * are held out) is common to all k; the spread that matters is that
     * of ho_k - ho_best over the folds. */
    uint32_t best = 0, choice;
    for (uint32_t i = 1; i < nk; i++)
        if (rw[i].ho < rw[best].ho)
            best = i;
    for (uint32_t i = 0; i < nk; i++) {
        double d[RANK_FOLDS_MAX], dm = 0, dv = 0;
        for (uint32_t f = 0; f < folds; f++)
            dm += (d[f] = rw[i].fold[f] - rw[best].fold[f]);
        dm /= folds;
        for (uint32_t f = 0; f < folds; f++)
            dv += (d[f] - dm) * (d[f] - dm);
        rw[i].dse = folds > 1 ? sqrt(dv / (folds - 1) / folds) : 0;
    }
    for (choice = 0; choice < best; choice++)
        if (rw[choice].ho <= rw[best].ho + rw[choice].dse)
            break;
    printf("# %zu events (%" PRIu64 " rejected), held out %g of the users "
           "against half the items, %u folds\n",
           E.n, E.rejected, share, folds);
    printf("%5s %12s %12s %12s %12s %9s\n", "k", "train_loss", "holdout_loss",
           "holdout_se", "diff_se", "seconds");
    for (uint32_t i = 0; i < nk; i++)
        printf("%5u %12.6f %12.6f %12.6f %12.6f %9.2f%s\n", rw[i].k,
               rw[i].train, rw[i].ho, rw[i].se, rw[i].dse, rw[i].seconds,
               i == best ? "  best" : "");
    if (plot && rank_plot(plot, rw, nk, rw[choice].k))
        goto out;
    printf("k=%u\n", rw[choice].k);
    rc = fflush(stdout) ? 1 : 0;
out:
    free(rw);
    free(E.arena);
    free(E.ev);
    config_free(cfg);
    free(sets);
    return rc;
}
