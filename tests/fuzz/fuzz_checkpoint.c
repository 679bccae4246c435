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
 * refining and expiring on it keep every number finite (the loader
 * refuses magnitudes the model cannot work with, not only NaN and Inf).
 *
 * Every input also drives a fourth case that does not depend on the seeds
 * being of the current format: its first bytes choose model parameters,
 * the next are events folded through the model API, the model is saved
 * into a checkpoint of this build's format (which must load), and the last
 * bytes flip bits of the saved state before its checksum and envelope are
 * made valid again.
 *
 * Seeds (corpus/checkpoint/) are small checkpoints written by nmfd itself
 * (k from 1 to 5, with and without decay, ttl, warm-up and regularisation,
 * zero to eight offsets, an empty model, forgotten users and items) and
 * truncated copies of them.
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
    check_finite_model(m);
}

static char last_err[512];

static int parse(const uint8_t *data, size_t size)
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
        memcpy(last_err, err, sizeof(last_err));
        return rc;
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
    return 0;
}

/* The fourth case (see the top): a checkpoint built from the input. */
static void built(const uint8_t *d, size_t n)
{
    struct model_params p;
    struct buf b = {0};
    uint8_t hdr[HDR + 36 + 3 * (4 + 10 + 12)];
    size_t h = HDR, nflip, nev, noffs;
    int64_t t0 = INT64_C(1700000000000);

    if (n < 4)
        return;
    model_params_default(&p);
    p.k = 1 + d[0] % 6;
    p.warmup_events = d[1] % 40;
    p.refresh_events = 8 + d[1] % 16;
    p.half_life_ms = d[2] & 1 ? 3600000 : 0;
    p.ttl_ms = d[2] & 2 ? 600000 : 0;
    p.profile_max = d[2] & 4 ? 3 : p.profile_max;
    p.alpha_h = d[2] & 8 ? 0.1 : 0;
    p.alpha_w = d[2] & 16 ? 0.01 : 0;
    p.l1_ratio = d[2] & 32 ? 0.5 : 0;
    noffs = d[3] % 4;
    nflip = (d[3] >> 2) % 8;
    if (n < 4 + 3 * nflip)
        nflip = 0;
    nev = (n - 4 - 3 * nflip) / 3;
    if (nev > 64)
        nev = 64;

    struct model *m = model_new(&p);
    if (!m)
        return;
    for (size_t e = 0; e < nev; e++) {
        const uint8_t *q = d + 4 + 3 * e;
        char user[8], item[8];
        int ul = snprintf(user, sizeof(user), "u%u", q[0] % 16u);
        int il = snprintf(item, sizeof(item), "i%u", q[1] % 32u);
        model_fold(m, user, (size_t)ul, item, (size_t)il, (q[2] % 8) * 0.5,
                   t0 + (int64_t)e * 60000 - (q[2] >> 7) * 3600000);
    }
    if (p.ttl_ms)
        model_expire(m, t0 + (int64_t)nev * 60000);
    /* The envelope and the daemon's part, then the model. */
    memset(hdr, 0, sizeof(hdr));
    hdr[h] = (uint8_t)nev; /* epoch */
    h += 32;
    wr32(hdr + h, (uint32_t)noffs);
    h += 4;
    for (size_t i = 0; i < noffs; i++) {
        wr32(hdr + h, 10);
        memcpy(hdr + h + 4, "nmf.events", 10);
        wr32(hdr + h + 14, (uint32_t)i);
        wr64(hdr + h + 18, 7 * i);
        h += 4 + 10 + 12;
    }
    if (buf_put(&b, hdr, h) || model_save(m, buf_put, &b)) {
        free(b.p);
        model_free(m);
        return;
    }
    model_free(m);
    fix_envelope(b.p, b.n);
    if (parse(b.p, b.n)) {
        fprintf(stderr,
                "a checkpoint of a model built here does not load: %s\n",
                last_err);
        abort();
    }
    if (nflip) {
        size_t mlen = b.n - h;
        const uint8_t *f = d + n - 3 * nflip;
        for (size_t i = 0; i < nflip; i++, f += 3)
            b.p[h + (f[0] | (size_t)f[1] << 8) % mlen] ^= f[2];
        if (fix_model_sum(b.p, b.n)) {
            fix_envelope(b.p, b.n);
            parse(b.p, b.n);
        }
    }
    free(b.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    built(data, size);
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
