/* online/ids.c -- interning of byte-string ids into dense indices.
 *
 * Users and items arrive as byte strings of 1..IDS_LEN_MAX bytes; the model
 * works on dense uint32 indices. This table owns the bytes, in one growing
 * arena of records (uint32 index, then the bytes), one entry per index
 * (record offset and length) for the reverse lookup, and an open-addressing
 * hash table with linear probing whose 64-bit slots hold the record offset,
 * the length and a 15-bit hash tag: a lookup costs one probe sequence and
 * one visit to the record, and deletion shifts entries back (no
 * tombstones). Indices are handed out in order of first sight, freed ones
 * reused last-freed-first, so they never depend on hash values or
 * addresses. It must never allocate except in ids_reserve and the load
 * functions, and never invalidate an index that is still live.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"

#define IDS_LEN_BITS  9
#define IDS_LEN_MASK  ((1ull << IDS_LEN_BITS) - 1)
#define IDS_TAG_BITS  15
#define IDS_TAG_MASK  ((1ull << IDS_TAG_BITS) - 1)
#define IDS_OFF_SHIFT (IDS_LEN_BITS + IDS_TAG_BITS)
#define IDS_KEY_MASK  ((1ull << IDS_OFF_SHIFT) - 1) /* length and tag */
#define IDS_OFF_MAX   (1ull << (64 - IDS_OFF_SHIFT))
#define IDS_HDR       4 /* the record's uint32 index */
#define IDS_SLOTS_MAX 0xfffffff0u

struct ids {
    uint64_t seed;
    char *arena;
    size_t arena_len, arena_cap, arena_dead;
    /* Per index: record offset << 9 | len (len >= 1) when live; when free,
     * (next free index + 1) << 9, the free list threaded through. */
    uint64_t *ent;
    uint32_t free_head; /* most recently freed index + 1, 0 if none */
    uint32_t nslots, slots_cap, nfree, live;
    uint64_t *tab; /* offset << 24 | len << 15 | tag, 0 = empty */
    size_t tab_cap;
};

static uint64_t ids_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A word-at-a-time multiplicative hash. */
static uint64_t ids_hash(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ull);
    while (n > 8) {
        uint64_t x;
        memcpy(&x, s, 8);
        h = (h ^ x) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    /* The last 1..8 bytes in at most two loads (overlapping when n < 8,
     * the length being mixed in already). */
    uint64_t x = 0;
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        x = lo | (uint64_t)hi << 32;
    } else {
        for (size_t i = 0; i < n; i++)
            x |= (uint64_t)(unsigned char)s[i] << (8 * i);
    }
    return ids_mix(h ^ x);
}

/* Byte equality of two strings of n >= 1 bytes, a word at a time. */
static inline int ids_eq(const char *a, const char *b, size_t n)
{
    if (n >= 8) {
        uint64_t x, y;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y)
                return 0;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        uint32_t x, y, z, w;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        memcpy(&z, a + n - 4, 4);
        memcpy(&w, b + n - 4, 4);
        return x == y && z == w;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

struct ids *ids_new(uint64_t seed)
{
    struct ids *t = calloc(1, sizeof(*t));
    if (t)
        t->seed = ids_mix(seed ^ 0x6e6d6664ull);
    return t;
}

void ids_free(struct ids *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->ent);
    free(t->tab);
    free(t);
}

/* The low bits of a table entry, its key: the id's length and the top
 * bits of its hash. A lookup compares bytes only where the key matches. */
static inline uint64_t ids_key(size_t len, uint64_t hash)
{
    return ((uint64_t)len << IDS_TAG_BITS) | (hash >> (64 - IDS_TAG_BITS));
}

static inline uint64_t ids_slot_of(uint64_t off, size_t len, uint64_t hash)
{
    return (off << IDS_OFF_SHIFT) | ids_key(len, hash);
}

static inline uint32_t ids_rec_idx(const struct ids *t, uint64_t off)
{
    uint32_t idx;
    memcpy(&idx, t->arena + off, 4);
    return idx;
}

uint64_t ids_hash_id(const struct ids *t, const char *s, size_t len)
{
    return ids_hash(t->seed, s, len);
}

int64_t ids_find_hash(const struct ids *t, const char *s, size_t len,
                      uint64_t h)
{
    if (!t->tab_cap)
        return -ENOENT;
    const uint64_t want = ids_key(len, h);
    size_t mask = t->tab_cap - 1;
    for (size_t pos = h & mask;; pos = (pos + 1) & mask) {
        uint64_t e = t->tab[pos];
        if (!e)
            return -ENOENT;
        if ((e & IDS_KEY_MASK) != want)
            continue;
        uint64_t off = e >> IDS_OFF_SHIFT;
        if (ids_eq(t->arena + off + IDS_HDR, s, len))
            return ids_rec_idx(t, off);
    }
}

int64_t ids_find(const struct ids *t, const char *s, size_t len)
{
    return ids_find_hash(t, s, len, ids_hash(t->seed, s, len));
}

void ids_prefetch_slot(const struct ids *t, uint64_t h)
{
    if (t->tab_cap)
        __builtin_prefetch(&t->tab[h & (t->tab_cap - 1)]);
}

/* The record the lookup will compare: the first entry from the home slot
 * whose length and tag match, as ids_find_hash finds it, looked for only
 * among the slots of the home slot's cache line (the one that
 * ids_prefetch_slot brought in), and every line of its bytes. */
void ids_prefetch_record(const struct ids *t, uint64_t h, size_t len)
{
    if (!t->tab_cap)
        return;
    const uint64_t want = ids_key(len, h);
    const size_t mask = t->tab_cap - 1;
    const size_t per_line = 64 / sizeof(*t->tab);
    size_t pos = h & mask;
    do {
        uint64_t e = t->tab[pos];
        if (!e)
            return;
        if ((e & IDS_KEY_MASK) == want) {
            const char *r = t->arena + (e >> IDS_OFF_SHIFT);
            __builtin_prefetch(r);
            __builtin_prefetch(r + IDS_HDR + len - 1);
            return;
        }
        pos = (pos + 1) & mask;
    } while (pos % per_line);
}

/* Home slot of a table entry: the hash of its record's bytes. */
static size_t ids_home(const struct ids *t, uint64_t e, size_t mask)
{
    uint64_t off = e >> IDS_OFF_SHIFT;
    size_t len = (size_t)((e >> IDS_TAG_BITS) & IDS_LEN_MASK);
    return ids_hash(t->seed, t->arena + off + IDS_HDR, len) & mask;
}

static void ids_tab_put(uint64_t *tab, size_t mask, size_t home, uint64_t e)
{
    size_t pos = home;
    while (tab[pos])
        pos = (pos + 1) & mask;
    tab[pos] = e;
}

/* A zeroed table of cap slots (a power of two) on cache-line boundaries,
 * so that a probe run from a home slot stays in one line as long as it
 * can, and ids_prefetch_record knows which slots are cached. */
static uint64_t *ids_tab_new(size_t cap)
{
    size_t bytes = cap * sizeof(uint64_t);
    uint64_t *tab = aligned_alloc(64, bytes < 64 ? 64 : bytes);
    if (tab)
        memset(tab, 0, bytes);
    return tab;
}

static int ids_tab_grow(struct ids *t, size_t cap)
{
    uint64_t *tab = ids_tab_new(cap);
    if (!tab)
        return -ENOMEM;
    for (size_t i = 0; i < t->tab_cap; i++)
        if (t->tab[i])
            ids_tab_put(tab, cap - 1, ids_home(t, t->tab[i], cap - 1),
                        t->tab[i]);
    free(t->tab);
    t->tab = tab;
    t->tab_cap = cap;
    return 0;
}

static int ids_slots_grow(struct ids *t, uint32_t cap)
{
    uint64_t *ent = realloc(t->ent, (size_t)cap * sizeof(*ent));
    if (!ent)
        return -ENOMEM;
    t->ent = ent;
    t->slots_cap = cap;
    return 0;
}

int ids_reserve(struct ids *t, size_t len)
{
    if (len < 1 || len > IDS_LEN_MAX)
        return -EINVAL;
    size_t need = t->arena_len + IDS_HDR + len;
    if (need > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < need)
            cap *= 2;
        if (cap >= IDS_OFF_MAX)
            return -ENOMEM;
        char *a = realloc(t->arena, cap);
        if (!a)
            return -ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (!t->free_head && t->nslots == t->slots_cap) {
        if (t->nslots >= IDS_SLOTS_MAX)
            return -ENOMEM;
        uint64_t cap = t->slots_cap ? 2ull * t->slots_cap : 64;
        if (cap > IDS_SLOTS_MAX)
            cap = IDS_SLOTS_MAX;
        int rc = ids_slots_grow(t, (uint32_t)cap);
        if (rc)
            return rc;
    }
    /* The table stays at most three quarters full. */
    if (4 * ((size_t)t->live + 1) > 3 * t->tab_cap) {
        size_t cap = t->tab_cap ? 2 * t->tab_cap : 128;
        int rc = ids_tab_grow(t, cap);
        if (rc)
            return rc;
    }
    return 0;
}

static void ids_place(struct ids *t, uint32_t idx, const char *s, size_t len)
{
    uint64_t off = t->arena_len;
    memcpy(t->arena + off, &idx, 4);
    memcpy(t->arena + off + IDS_HDR, s, len);
    t->arena_len += IDS_HDR + len;
    t->ent[idx] = (off << IDS_LEN_BITS) | len;
    uint64_t h = ids_hash(t->seed, s, len);
    size_t mask = t->tab_cap - 1;
    ids_tab_put(t->tab, mask, h & mask, ids_slot_of(off, len, h));
    t->live++;
}

uint32_t ids_insert(struct ids *t, const char *s, size_t len)
{
    uint32_t idx;
    if (t->free_head) {
        idx = t->free_head - 1;
        t->free_head = (uint32_t)(t->ent[idx] >> IDS_LEN_BITS);
        t->nfree--;
    } else {
        idx = t->nslots++;
    }
    ids_place(t, idx, s, len);
    return idx;
}

/* Rewrites the arena with only the live records, in index order, and the
 * table with it, once most of the arena is dead; skipped when memory is
 * short (nothing changes then). */
static void ids_compact(struct ids *t)
{
    size_t need = t->arena_len - t->arena_dead;
    char *a = malloc(need ? need : 1);
    uint64_t *tab = ids_tab_new(t->tab_cap);
    if (!a || !tab) {
        free(a);
        free(tab);
        return;
    }
    size_t off = 0, mask = t->tab_cap - 1;
    for (uint32_t i = 0; i < t->nslots; i++) {
        uint64_t e = t->ent[i];
        if (!(e & IDS_LEN_MASK))
            continue;
        size_t len = (size_t)(e & IDS_LEN_MASK);
        const char *s = t->arena + (e >> IDS_LEN_BITS) + IDS_HDR;
        memcpy(a + off, &i, 4);
        memcpy(a + off + IDS_HDR, s, len);
        uint64_t h = ids_hash(t->seed, s, len);
        ids_tab_put(tab, mask, h & mask, ids_slot_of(off, len, h));
        t->ent[i] = ((uint64_t)off << IDS_LEN_BITS) | len;
        off += IDS_HDR + len;
    }
    free(t->arena);
    free(t->tab);
    t->arena = a;
    t->tab = tab;
    t->arena_len = off;
    t->arena_cap = need ? need : 1;
    t->arena_dead = 0;
}

void ids_remove(struct ids *t, uint32_t idx)
{
    uint64_t en = t->ent[idx];
    if (!(en & IDS_LEN_MASK))
        return;
    size_t len = (size_t)(en & IDS_LEN_MASK);
    uint64_t off = en >> IDS_LEN_BITS;
    size_t mask = t->tab_cap - 1;
    size_t i = ids_hash(t->seed, t->arena + off + IDS_HDR, len) & mask;
    while ((t->tab[i] >> IDS_OFF_SHIFT) != off)
        i = (i + 1) & mask;
    /* Backward-shift deletion keeps every probe chain unbroken. */
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        uint64_t e = t->tab[j];
        if (!e)
            break;
        size_t home = ids_home(t, e, mask);
        int stays = (j > i) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->tab[i] = e;
            i = j;
        }
    }
    t->tab[i] = 0;
    t->ent[idx] = (uint64_t)t->free_head << IDS_LEN_BITS;
    t->free_head = idx + 1;
    t->nfree++;
    t->live--;
    t->arena_dead += IDS_HDR + len;
    if (t->arena_dead > 65536 && 2 * t->arena_dead > t->arena_len)
        ids_compact(t);
}

const char *ids_get(const struct ids *t, uint32_t idx, size_t *len)
{
    if (idx >= t->nslots || !(t->ent[idx] & IDS_LEN_MASK))
        return NULL;
    if (len)
        *len = (size_t)(t->ent[idx] & IDS_LEN_MASK);
    return t->arena + (t->ent[idx] >> IDS_LEN_BITS) + IDS_HDR;
}

uint32_t ids_slots(const struct ids *t)
{
    return t->nslots;
}

uint32_t ids_live(const struct ids *t)
{
    return t->live;
}

uint32_t ids_free_count(const struct ids *t)
{
    return t->nfree;
}

int64_t ids_free_next(const struct ids *t, int64_t at)
{
    uint32_t next =
        at < 0 ? t->free_head : (uint32_t)(t->ent[at] >> IDS_LEN_BITS);
    return next ? (int64_t)next - 1 : -1;
}

size_t ids_bytes(const struct ids *t)
{
    return sizeof(*t) + t->arena_cap + (size_t)t->slots_cap * sizeof(uint64_t) +
           t->tab_cap * sizeof(uint64_t);
}

int ids_load_slots(struct ids *t, uint32_t nslots)
{
    if (t->nslots || nslots > IDS_SLOTS_MAX)
        return -EINVAL;
    if (nslots > t->slots_cap) {
        int rc = ids_slots_grow(t, nslots);
        if (rc)
            return rc;
    }
    if (nslots)
        memset(t->ent, 0, (size_t)nslots * sizeof(*t->ent));
    t->nslots = nslots;
    return 0;
}

int ids_load_put(struct ids *t, uint32_t idx, const char *s, size_t len)
{
    if (idx >= t->nslots || (t->ent[idx] & IDS_LEN_MASK) || len < 1 ||
        len > IDS_LEN_MAX)
        return -EINVAL;
    if (ids_find(t, s, len) >= 0)
        return -EEXIST;
    int rc = ids_reserve(t, len);
    if (rc)
        return rc;
    ids_place(t, idx, s, len);
    return 0;
}

int ids_load_free(struct ids *t, const uint32_t *list, uint32_t n)
{
    if (n != t->nslots - t->live)
        return -EINVAL;
    /* Before this call every free index has entry 0: mark each listed one
     * with 1 to catch repeats, then thread the list. */
    for (uint32_t i = 0; i < n; i++) {
        if (list[i] >= t->nslots || t->ent[list[i]]) {
            for (uint32_t j = 0; j < i; j++)
                t->ent[list[j]] = 0;
            return -EINVAL;
        }
        t->ent[list[i]] = 1;
    }
    for (uint32_t i = 0; i < n; i++)
        t->ent[list[i]] =
            i + 1 < n ? (uint64_t)(list[i + 1] + 1) << IDS_LEN_BITS : 0;
    t->free_head = n ? list[0] + 1 : 0;
    t->nfree = n;
    return 0;
}
