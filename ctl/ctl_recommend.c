/* ctl_recommend.c -- nmfctl recommend: a user's recommendations from a
 * dense snapshot, offline.
 *
 * Reads the snapshot (docs/snapshot-format.md), finds the user's h and
 * runs the full top-N scan over W (model_top_scores in
 * online/recommend.c), whose answer GET /users/ID/recommend's pruned scan
 * gives bit for bit, printing the same JSON. One request per run, after
 * decoding all of W: the 8-bit copy the daemon prunes with would cost
 * more to build than the one scan it would save. A
 * dense snapshot holds no profiles, so what the user already has comes
 * from --events, the CSV the snapshot was fitted on: every item the user
 * has a row for there is left out, as the daemon leaves out the profile.
 * It changes no file and touches no Kafka.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "csv.h"
#include "ctl.h"
#include "model.h"
#include "records.h"
#include "recommend.h"

static const char recommend_usage[] =
    "usage: nmfctl recommend --snapshot FILE --user ID [--n N]\n"
    "                        [--events FILE.csv]\n"
    "\n"
    "The N items (default 10, at most 1000) with the highest predicted\n"
    "engagement w_i . h_u for the user in a dense snapshot (nmfctl fit\n"
    "--out, snapshot.file, GET /snapshot), strongest first, as the JSON of\n"
    "GET /users/ID/recommend: {\"user\":ID, \"items\":[[item, score], ...]}.\n"
    "A snapshot holds no profiles: with --events (the CSV it was fitted\n"
    "on) the items the user has rows for there are left out, as the daemon\n"
    "leaves out the user's profile; without it nothing is left out.\n"
    "Exit 0, 1 when the snapshot, the CSV or the user cannot be found, 2 on\n"
    "bad usage.\n"
    "\n";

static int rec_bad(const char *msg, const char *arg)
{
    fprintf(stderr,
            "nmfctl recommend: %s%s%s\nTry 'nmfctl recommend --help'.\n", msg,
            arg ? ": " : "", arg ? arg : "");
    return 2;
}

static int rec_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

struct rec_item {
    const char *id;
    size_t len;
    uint32_t idx;
};

static int rec_cmp_item(const void *a, const void *b)
{
    const struct rec_item *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->id, y->id, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The snapshot indices of the items the user has rows for in the CSV,
 * sorted and unique, into *ex; 0 or 1 (the message printed). */
static int rec_exclusions(const struct records_snapshot *s, const char *path,
                          const char *user, uint32_t **ex, uint32_t *nex)
{
    char err[512];
    struct csv_reader *r = csv_open(path, err, sizeof(err));
    struct rec_item *byid = NULL;
    uint32_t cap = 0;
    int rc = 1, n;
    size_t ulen = strlen(user);
    *ex = NULL;
    *nex = 0;
    if (!r) {
        fprintf(stderr, "nmfctl recommend: %s\n", err);
        return 1;
    }
    byid = malloc((s->nitems ? s->nitems : 1) * sizeof(*byid));
    if (!byid)
        goto nomem;
    for (uint32_t i = 0; i < s->nitems; i++)
        byid[i] = (struct rec_item){s->items[i], s->item_lens[i], i};
    qsort(byid, s->nitems, sizeof(*byid), rec_cmp_item);
    struct csv_row row;
    while ((n = csv_next(r, &row)) != 0) {
        if (n == -EINVAL)
            continue; /* a bad row was never folded either */
        if (n < 0) {
            fprintf(stderr, "nmfctl recommend: %s\n", csv_error(r));
            goto out;
        }
        if (row.user_len != ulen || memcmp(row.user, user, ulen))
            continue;
        struct rec_item key = {row.item, row.item_len, 0};
        const struct rec_item *hit =
            bsearch(&key, byid, s->nitems, sizeof(*byid), rec_cmp_item);
        if (!hit)
            continue;
        if (*nex == cap) {
            cap = cap ? 2 * cap : 64;
            uint32_t *g = realloc(*ex, cap * sizeof(**ex));
            if (!g)
                goto nomem;
            *ex = g;
        }
        (*ex)[(*nex)++] = hit->idx;
    }
    qsort(*ex, *nex, sizeof(**ex), rec_cmp_u32);
    uint32_t w = 0;
    for (uint32_t q = 0; q < *nex; q++)
        if (!w || (*ex)[w - 1] != (*ex)[q])
            (*ex)[w++] = (*ex)[q];
    *nex = w;
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "nmfctl recommend: out of memory\n");
out:
    free(byid);
    csv_close(r);
    return rc;
}

int ctl_recommend_main(int argc, char **argv)
{
    enum { O_SNAPSHOT = 1, O_USER, O_N, O_EVENTS, O_HELP };
    static const struct option longopts[] = {
        {"snapshot", required_argument, NULL, O_SNAPSHOT},
        {"user", required_argument, NULL, O_USER},
        {"n", required_argument, NULL, O_N},
        {"events", required_argument, NULL, O_EVENTS},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *snap = NULL, *user = NULL, *ntext = NULL, *events = NULL;
    struct records_snapshot *s = NULL;
    uint32_t *ex = NULL, nex = 0, n = 0;
    uint32_t items[RECOMMEND_N_MAX];
    float scores[RECOMMEND_N_MAX];
    const char *serr = NULL;
    int c, rc;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_SNAPSHOT:
            snap = optarg;
            break;
        case O_USER:
            user = optarg;
            break;
        case O_N:
            ntext = optarg;
            break;
        case O_EVENTS:
            events = optarg;
            break;
        case O_HELP:
            fputs(recommend_usage, stdout);
            return 0;
        case ':':
            return rec_bad("missing value for", argv[optind - 1]);
        default:
            return rec_bad("unknown option", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return rec_bad("unexpected argument", argv[optind]);
    if (!snap || !*snap)
        return rec_bad("--snapshot FILE is required", NULL);
    if (!user || !*user)
        return rec_bad("--user ID is required", NULL);
    if (strlen(user) > MODEL_ID_MAX)
        return rec_bad("--user: an id is at most 256 bytes", NULL);
    if (events && !*events)
        return rec_bad("--events wants a file", NULL);
    rc = recommend_parse_n(ntext, &n);
    if (rc == -EINVAL)
        return rec_bad("--n wants a whole number of at least 1", ntext);
    if (rc == -ERANGE)
        return rec_bad("--n is at most 1000", ntext);

    rc = 1;
    s = records_snapshot_load(snap, &serr);
    if (!s) {
        fprintf(stderr, "nmfctl recommend: %s: %s\n", snap, serr);
        goto out;
    }
    size_t ulen = strlen(user);
    int64_t u = -1;
    for (uint32_t x = 0; x < s->nusers && u < 0; x++)
        if (s->user_lens[x] == ulen && !memcmp(s->users[x], user, ulen))
            u = x;
    if (u < 0) {
        fprintf(stderr, "nmfctl recommend: %s: no such user '%s'\n", snap,
                user);
        goto out;
    }
    if (events && rec_exclusions(s, events, user, &ex, &nex))
        goto out;
    uint32_t got =
        model_top_scores(s->W, s->nitems, s->k, s->H + (size_t)u * s->k, ex,
                         nex, n, items, scores);
    json_t *arr = json_array();
    for (uint32_t q = 0; arr && q < got; q++)
        json_array_append_new(arr, json_pack("[s% f]", s->items[items[q]],
                                             s->item_lens[items[q]],
                                             (double)scores[q]));
    json_t *doc =
        arr ? json_pack("{s:s s:o}", "user", user, "items", arr) : NULL;
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!text) {
        fprintf(stderr, "nmfctl recommend: out of memory\n");
        goto out;
    }
    printf("%s\n", text);
    free(text);
    if (fflush(stdout) == 0)
        rc = 0;
out:
    free(ex);
    records_snapshot_free(s);
    return rc;
}
