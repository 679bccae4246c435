/* fuzz_event.h -- the body shared by the event decoder targets: decode
 * with and without a type table, check every accepted event against the
 * contract and fold it into a model, which must take it. */
#ifndef NMFD_FUZZ_EVENT_H
#define NMFD_FUZZ_EVENT_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "event.h"
#include "model.h"

static struct model *fuzz_model;
static struct model_params fuzz_params;
static unsigned fuzz_folds;

static void fuzz_on_event(void *ctx, const struct event *ev)
{
    int *n = ctx;

    (*n)++;
    if (ev->user_len < 1 || ev->user_len > EVENT_ID_MAX || ev->item_len < 1 ||
        ev->item_len > EVENT_ID_MAX)
        abort();
    if (memchr(ev->user, 0, ev->user_len) || memchr(ev->item, 0, ev->item_len))
        abort();
    /* jansson as the oracle for UTF-8. */
    json_t *a = json_stringn(ev->user, ev->user_len);
    json_t *b = json_stringn(ev->item, ev->item_len);
    if (a == NULL || b == NULL)
        abort();
    json_decref(a);
    json_decref(b);
    if (!isfinite(ev->weight) || ev->weight < 0 || signbit(ev->weight))
        abort();
    if (ev->ts < 0)
        abort();
    /* The daemon folds what the decoder accepts: the model must agree. */
    if (model_fold(fuzz_model, ev->user, ev->user_len, ev->item, ev->item_len,
                   ev->weight, ev->ts) != 0)
        abort();
    fuzz_folds++;
}

static void fuzz_on_reject(void *ctx, enum event_reason r)
{
    int *n = ctx;

    (*n)++;
    if (r <= EVENT_OK || r >= EVENT_REASON_COUNT)
        abort();
}

static int fuzz_event_one(enum event_format fmt, const uint8_t *data,
                          size_t size)
{
    static struct event_decoder *plain, *typed;
    static const struct event_type_weight tw[] = {
        {"view", 0.5}, {"buy", 1e11}, {"x", 0}};

    if (plain == NULL) {
        struct event_decoder_conf c = {.format = fmt, .max_depth = 6};
        plain = event_decoder_new(&c);
        c.types = tw;
        c.ntypes = 3;
        c.max_events = 50;
        c.field_ts = "t";
        typed = event_decoder_new(&c);
        model_params_default(&fuzz_params);
        fuzz_params.k = 2;
        fuzz_params.warmup_events = 0;
        fuzz_params.refresh_events = 64;
        if (!plain || !typed)
            abort();
    }
    /* A fresh model now and then, so that ids do not pile up. */
    if (fuzz_model == NULL || fuzz_folds > 20000) {
        model_free(fuzz_model);
        fuzz_model = model_new(&fuzz_params);
        fuzz_folds = 0;
        if (fuzz_model == NULL)
            abort();
    }
    /* Every call reports each element exactly once. */
    for (int i = 0; i < 2; i++) {
        int calls = 0;
        int n = event_decode(i ? typed : plain, data, size, 1700000000000,
                             fuzz_on_event, fuzz_on_reject, &calls);
        if (n < 0 || n > calls || (size == 0 && calls != 1))
            abort();
    }
    return 0;
}

#endif
