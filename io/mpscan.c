/* mpscan.c -- bounds check of untrusted msgpack, ahead of msgpack-c.
 *
 * msgpack-c's unpacker allocates the element array of a container from
 * the count in its header before it has read a single element, so the
 * five bytes "dd ff ff ff ff" ask its zone for about 100 GB. It also
 * stops at a fixed nesting of 32 with an error that reads like "out of
 * memory". This pass walks the headers once, without allocating, and
 * refuses a container that claims more elements than bytes remain (every
 * element takes at least one byte), nesting beyond the caller's limit,
 * reserved bytes and truncation. It also measures what the object tree
 * will take, so the caller can size its zone once.
 *
 * It owns nothing. It never decodes values (msgpack-c does that) and
 * never reads past len.
 */
#include <errno.h>

#include <msgpack.h>

#include "mpscan.h"

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Bytes that follow a header byte before the payload, and how the payload
 * length or element count is read from them. */
enum kind { K_FIXED, K_STR, K_EXT, K_ARRAY, K_MAP, K_BAD };

struct hdr {
    enum kind kind;
    unsigned extra; /* header bytes after the first */
    uint64_t n;     /* payload bytes (fixed/str/ext) or element count */
};

/* Decodes the header at p (avail bytes, >= 1). Returns 0 or -EBADMSG. */
static int hdr_read(const uint8_t *p, size_t avail, struct hdr *h)
{
    uint8_t b = p[0];
    unsigned lenb = 0; /* bytes of a big-endian length after b */

    h->extra = 0;
    h->n = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        h->kind = K_FIXED;
        return 0;
    }
    if (b <= 0x8f) {
        h->kind = K_MAP;
        h->n = b & 0x0f;
        return 0;
    }
    if (b <= 0x9f) {
        h->kind = K_ARRAY;
        h->n = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        h->kind = K_STR;
        h->n = b & 0x1f;
        return 0;
    }
    switch (b) {
    case 0xc4:
    case 0xd9:
        h->kind = K_STR;
        lenb = 1;
        break;
    case 0xc5:
    case 0xda:
        h->kind = K_STR;
        lenb = 2;
        break;
    case 0xc6:
    case 0xdb:
        h->kind = K_STR;
        lenb = 4;
        break;
    case 0xc7:
        h->kind = K_EXT;
        lenb = 1;
        break;
    case 0xc8:
        h->kind = K_EXT;
        lenb = 2;
        break;
    case 0xc9:
        h->kind = K_EXT;
        lenb = 4;
        break;
    case 0xca:
    case 0xce:
    case 0xd2:
        h->kind = K_FIXED;
        h->n = 4;
        break;
    case 0xcb:
    case 0xcf:
    case 0xd3:
        h->kind = K_FIXED;
        h->n = 8;
        break;
    case 0xcc:
    case 0xd0:
        h->kind = K_FIXED;
        h->n = 1;
        break;
    case 0xcd:
    case 0xd1:
        h->kind = K_FIXED;
        h->n = 2;
        break;
    case 0xd4:
        h->kind = K_FIXED;
        h->n = 2;
        break;
    case 0xd5:
        h->kind = K_FIXED;
        h->n = 3;
        break;
    case 0xd6:
        h->kind = K_FIXED;
        h->n = 5;
        break;
    case 0xd7:
        h->kind = K_FIXED;
        h->n = 9;
        break;
    case 0xd8:
        h->kind = K_FIXED;
        h->n = 17;
        break;
    case 0xdc:
        h->kind = K_ARRAY;
        lenb = 2;
        break;
    case 0xdd:
        h->kind = K_ARRAY;
        lenb = 4;
        break;
    case 0xde:
        h->kind = K_MAP;
        lenb = 2;
        break;
    case 0xdf:
        h->kind = K_MAP;
        lenb = 4;
        break;
    default:
        h->kind = K_BAD;
        return -EBADMSG; /* 0xc1, never used */
    }
    if (lenb) {
        if (avail - 1 < lenb)
            return -EBADMSG;
        h->n = be(p + 1, lenb);
        h->extra = lenb;
    }
    if (h->kind == K_EXT) {
        h->n += 1; /* the type byte */
        h->kind = K_STR;
    }
    return 0;
}

int mpscan_value(const void *buf, size_t len, uint32_t max_depth,
                 struct mpscan *s)
{
    const uint8_t *p = buf;
    /* Elements still to read in each open container. The root is a
     * pseudo-container of one element. */
    uint64_t left[MPSCAN_DEPTH_MAX + 1];
    uint32_t top = 0;
    size_t pos = 0;

    if (max_depth > MPSCAN_DEPTH_MAX)
        max_depth = MPSCAN_DEPTH_MAX;
    s->end = 0;
    s->dom_bytes = 0;
    s->depth = 0;
    if (len == 0)
        return -ENODATA;
    left[0] = 1;
    for (;;) {
        struct hdr h;

        while (top > 0 && left[top] == 0)
            top--;
        if (top == 0 && left[0] == 0)
            break;
        if (pos >= len)
            return -EBADMSG;
        if (hdr_read(p + pos, len - pos, &h) < 0)
            return -EBADMSG;
        left[top]--;
        pos += 1 + h.extra;
        if (h.kind == K_FIXED || h.kind == K_STR) {
            if (h.n > len - pos)
                return -EBADMSG;
            pos += h.n;
            continue;
        }
        /* A container: every element takes at least a byte. */
        uint64_t elems = h.kind == K_MAP ? 2 * h.n : h.n;
        if (elems > len - pos)
            return -EBADMSG;
        if (top + 1 > max_depth)
            return -ELOOP;
        if (top + 1 > s->depth)
            s->depth = top + 1;
        s->dom_bytes += (h.kind == K_MAP ? sizeof(msgpack_object_kv)
                                         : sizeof(msgpack_object)) *
                            h.n +
                        MSGPACK_ZONE_ALIGN;
        if (elems > 0)
            left[++top] = elems;
    }
    s->end = pos;
    return 0;
}
