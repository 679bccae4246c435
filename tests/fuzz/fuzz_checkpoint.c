/* fuzz_checkpoint.c -- libFuzzer target: the checkpoint loader
 * (checkpoint_parse, and through it model_load), which nmfd runs on
 * whatever file it finds in its state directory at start.
 *
 * Every input is tried three ways: as it is; with a valid envelope (magic,
 * version, lengths and the CRC of the body rewritten), so that mutations
 * reach the offset table and the model; and additionally with the model
 * state's own trailing checksum rewritten, so that they reach every check
 * of model_load. A refusal must come with a message and leave the outputs
 * untouched. What is accepted must be usable: offsets in range, the model
 * saved again loads again to the same bytes, and folding, refreshing,
 * refining and expiring on it never crash. With NMFD_FUZZ_STRICT=1 they
 * must also keep every number finite: today the loader checks that the
 * numbers it reads are finite, not that they are of a size the model can
 * work with (a crafted state with valid checksums and a profile value of
 * 1e19 makes h infinite on the next fold), so that check is opt-in until
 * it holds.
 *
 * Seeds (corpus/checkpoint/) are small checkpoints written by nmfd itself
 * (k from 1 to 5, with and without decay and ttl, one to eight offsets)
 * and truncated copies of them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "checkpoint.h"
#include "model.h"
#include "model_impl.h"

#define HDR 40u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static int buf_put(void *ctx, const void *data, size_t len)
{
    struct buf *b = ctx;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrites the envelope of a checkpoint of size bytes (size >= HDR). */
static void fix_envelope(uint8_t *c, size_t size)
{
    memcpy(c, "NMFDCKPT", 8);
    wr32(c + 8, 1);
    wr32(c + 12, HDR);
    wr64(c + 16, size - HDR);
    wr32(c + 24, (uint32_t)crc32_z(crc32_z(0, Z_NULL, 0), c + HDR, size - HDR));
}

/* Rewrites the model state's trailing checksum, if the offset table can be
 * walked the way checkpoint.c walks it. Returns whether it did. */
static int fix_model_sum(uint8_t *c, size_t size)
{
    const uint8_t *p = c + HDR, *end = c + size;
    if (end - p < 36)
        return 0;
    uint32_t n = rd32(p + 32);
    p += 36;
    if (n > 1000000)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        if (end - p < 4)
            return 0;
        uint32_t tl = rd32(p);
        if (tl == 0 || tl > 4096 || (size_t)(end - p) < 4 + (size_t)tl + 12)
            return 0;
        p += 4 + tl + 12;
    }
    size_t mlen = (size_t)(end - p);
    if (mlen < 16)
        return 0;
    uint64_t sum = model__state_checksum(p, mlen - 8);
    wr64(c + size - 8, sum);
    return 1;
}

static int strict = -1;

static void check_finite_model(const struct model *m)
{
    struct model_stats st;
    uint32_t k = model_params(m)->k, M = model_item_slots(m);
    const float *W = model_W(m);

    model_stats(m, &st);
    if (!isfinite(st.loss) || !isfinite(st.norm) || !isfinite(st.rel_loss) ||
        !isfinite(st.weight_sum)) {
        fprintf(stderr,
                "non-finite model stats after use: loss %g norm %g "
                "rel_loss %g weight_sum %g\n",
                st.loss, st.norm, st.rel_loss, st.weight_sum);
        abort();
    }
    for (size_t i = 0; i < (size_t)M * k; i++)
        if (!(W[i] >= 0) || !isfinite(W[i])) {
            fprintf(stderr, "W[%zu] = %g after use\n", i, (double)W[i]);
            abort();
        }
    for (uint32_t u = 0; u < model_user_slots(m); u++) {
        struct model_user_view v;
        if (model_user_get(m, u, &v))
            continue;
        for (uint32_t j = 0; j < k; j++)
            if (!(v.h[j] >= 0) || !isfinite(v.h[j])) {
                fprintf(stderr, "h of user %u = %g after use\n", u,
                        (double)v.h[j]);
                abort();
            }
    }
}

/* What the loader accepted must save, load again to the same bytes, and
 * stand being used. */
static void use_model(struct model *m)
{
    struct buf a = {0}, b = {0};
    const char *why = NULL;
    struct model_stats st;

    if (model_save(m, buf_put, &a)) {
        fprintf(stderr, "model_save failed on a loaded model\n");
        abort();
    }
    struct model *m2 = model_load(a.p, a.n, &why);
    if (!m2) {
        fprintf(stderr, "a loaded model saved does not load: %s\n", why);
        abort();
    }
    if (model_save(m2, buf_put, &b) || a.n != b.n || memcmp(a.p, b.p, a.n)) {
        fprintf(stderr, "save(load(save(m))) differs from save(m)\n");
        abort();
    }
    model_free(m2);
    free(a.p);
    free(b.p);

    model_stats(m, &st);
    int64_t t = st.now;
    if (model_user_slots(m) > 0) {
        /* An event of a known user on a known item: the ids are copied,
         * the model's own pointers die with the call that mutates it. */
        struct model_user_view v;
        char user[MODEL_ID_MAX], item[MODEL_ID_MAX] = "fuzz-item";
        size_t ulen, ilen = 9;
        if (model_user_get(m, 0, &v) == 0) {
            const char *id =
                model_item_slots(m) > 0 ? model_item_id(m, 0, &ilen) : NULL;
            if (id)
                memcpy(item, id, ilen);
            else
                ilen = 9;
            ulen = v.id_len;
            memcpy(user, v.id, ulen);
            model_fold(m, user, ulen, item, ilen, 1.5, t);
        }
    }
    model_fold(m, "fuzz-user", 9, "fuzz-item", 9, 2.0, t + 1);
    model_refresh(m);
    model_refine(m, 64);
    model_expire(m, t + 2);
    if (strict < 0) {
        const char *e = getenv("NMFD_FUZZ_STRICT");
        strict = e && !strcmp(e, "1");
    }
    if (strict)
        check_finite_model(m);
}

static void parse(const uint8_t *data, size_t size)
{
    struct checkpoint_meta meta, untouched;
    struct checkpoint_offset *offs = NULL, sentinel;
    size_t noffs = 12345;
    struct model *m = NULL;
    char err[512];

    memset(&meta, 0xa5, sizeof(meta));
    memcpy(&untouched, &meta, sizeof(meta));
    offs = &sentinel;
    err[0] = 0;
    int rc = checkpoint_parse(data, size, &meta, &offs, &noffs, &m, err,
                              sizeof(err));
    if (rc) {
        /* Refused whole: a message, and no output touched. */
        if (rc >= 0 || !err[0] || offs != &sentinel || noffs != 12345 || m ||
            memcmp(&meta, &untouched, sizeof(meta))) {
            fprintf(stderr, "refusal %d left outputs behind or no message\n",
                    rc);
            abort();
        }
        return;
    }
    if (!m || (noffs && !offs)) {
        fprintf(stderr, "accepted without a model or offsets\n");
        abort();
    }
    for (size_t i = 0; i < noffs; i++)
        if (!offs[i].topic || !offs[i].topic[0] || offs[i].partition < 0 ||
            offs[i].offset < 0) {
            fprintf(stderr, "accepted a bad offset record\n");
            abort();
        }
    use_model(m);
    model_free(m);
    checkpoint_offsets_free(offs, noffs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse(data, size);
    if (size < HDR)
        return 0;
    uint8_t *c = malloc(size);
    if (!c)
        return 0;
    memcpy(c, data, size);
    fix_envelope(c, size);
    parse(c, size);
    if (fix_model_sum(c, size)) {
        fix_envelope(c, size);
        parse(c, size);
    }
    free(c);
    return 0;
}
