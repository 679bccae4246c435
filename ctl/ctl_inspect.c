/* ctl_inspect.c -- `nmfctl inspect`: what a checkpoint holds, read with the
 * daemon's own loader (so a file it prints is a file nmfd would accept):
 * the epoch, the counters, the input offsets, the model's size, and with
 * --profiles every user's profile as JSON lines (the engagement matrix V
 * the model holds). Operators use it before restoring or replaying; the
 * crash tests use it to compare V with an uninterrupted run. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "checkpoint.h"
#include "ctl.h"
#include "model.h"

static int inspect_usage(void)
{
    fprintf(stderr, "usage: nmfctl inspect --checkpoint DIR [--profiles]\n");
    return 2;
}

static void print_profiles(const struct model *m)
{
    uint32_t slots = model_user_slots(m);
    for (uint32_t u = 0; u < slots; u++) {
        struct model_user_view v;
        const uint32_t *items;
        const float *values;
        uint32_t n;
        if (model_user_get(m, u, &v) ||
            model_user_profile(m, u, &items, &values, &n))
            continue;
        json_t *p = json_object();
        for (uint32_t i = 0; i < n; i++) {
            size_t len;
            const char *id = model_item_id(m, items[i], &len);
            if (id)
                json_object_setn_new(p, id, len, json_real(values[i]));
        }
        json_t *doc = json_pack("{s:s% s:I s:o}", "user", v.id, v.id_len, "ts",
                                (json_int_t)v.ts, "profile", p);
        char *text =
            doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (text)
            puts(text);
        free(text);
        json_decref(doc);
    }
}

int ctl_inspect_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"checkpoint", required_argument, NULL, 'c'},
        {"profiles", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    bool profiles = false;
    struct checkpoint_meta meta;
    struct checkpoint_offset *offs = NULL;
    struct model_stats st;
    struct model *m = NULL;
    char err[1024];
    size_t n = 0;
    int opt;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:ph", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            dir = optarg;
            break;
        case 'p':
            profiles = true;
            break;
        case 'h':
            fprintf(stdout,
                    "usage: nmfctl inspect --checkpoint DIR [--profiles]\n");
            return 0;
        default:
            return inspect_usage();
        }
    }
    if (!dir || optind < argc)
        return inspect_usage();
    if (checkpoint_read(dir, &meta, &offs, &n, &m, err, sizeof(err))) {
        fprintf(stderr, "nmfctl inspect: %s\n", err);
        return 1;
    }
    model_stats(m, &st);
    if (profiles) {
        print_profiles(m);
    } else {
        const struct model_params *p = model_params(m);
        printf("epoch %" PRIu64 "\nwritten_ms %" PRId64 "\nk %u\n"
               "events %" PRIu64 "\nweight_sum %.17g\nrejected %" PRIu64
               "\nconsumed %" PRIu64 "\nusers %" PRIu64 "\nitems %" PRIu64
               "\nloss %.6f\nevicted_weight %.9g\n",
               meta.epoch, meta.written_ms, p->k, st.events, st.weight_sum,
               meta.rejected, meta.consumed, st.users, st.items, st.rel_loss,
               st.evicted_weight);
        for (size_t i = 0; i < n; i++)
            printf("offset %s/%" PRId32 " %" PRId64 "\n", offs[i].topic,
                   offs[i].partition, offs[i].offset);
    }
    checkpoint_offsets_free(offs, n);
    model_free(m);
    return 0;
}
