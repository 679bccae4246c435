/* online/ids.c -- interning of byte-string ids into dense indices.
 *
 * Users and items arrive as byte strings of 1..IDS_LEN_MAX bytes; the model
 * works on dense uint32 indices. This table owns the bytes (one growing
 * arena), one packed entry per index (arena offset and length) and an
 * open-addressing hash table with linear probing whose slots hold a 32-bit
 * hash tag and the index; the tag also gives the home slot, so growing the
 * table never rehashes strings and deletion shifts entries back (no
 * tombstones). Indices are handed out in order of first sight, freed ones
 * reused last-freed-first, so the indices never depend on hash values or
 * addresses. It must never allocate except in ids_reserve and the load
 * functions, and never invalidate an index that is still live.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"

#define IDS_LEN_BITS  9
#define IDS_LEN_MASK  ((1ull << IDS_LEN_BITS) - 1)
#define IDS_SLOTS_MAX 0xfffffff0u

struct ids {
    uint64_t seed;
    char *arena;
    size_t arena_len, arena_cap, arena_dead;
    uint64_t *ent; /* per index: offset << 9 | len, 0 = free */
    uint32_t *freel;
    uint32_t nslots, slots_cap, nfree, live;
    uint64_t *tab; /* tag << 32 | (index + 1), 0 = empty */
    size_t tab_cap;
};

static uint64_t ids_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A word-at-a-time multiplicative hash; only its tag is kept. */
static uint32_t ids_tag(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ull);
    while (n >= 8) {
        uint64_t x;
        memcpy(&x, s, 8);
        h = (h ^ x) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x |= (uint64_t)(unsigned char)s[i] << (8 * i);
    h = ids_mix(h ^ x);
    return (uint32_t)(h >> 32);
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
    free(t->freel);
    free(t->tab);
    free(t);
}

static inline size_t ids_len_of(uint64_t e)
{
    return (size_t)(e & IDS_LEN_MASK);
}

static inline const char *ids_bytes_of(const struct ids *t, uint64_t e)
{
    return t->arena + (e >> IDS_LEN_BITS);
}

int64_t ids_find(const struct ids *t, const char *s, size_t len)
{
    if (!t->tab_cap)
        return -ENOENT;
    uint32_t tag = ids_tag(t->seed, s, len);
    size_t mask = t->tab_cap - 1;
    for (size_t pos = tag & mask;; pos = (pos + 1) & mask) {
        uint64_t e = t->tab[pos];
        if (!e)
            return -ENOENT;
        if ((uint32_t)(e >> 32) != tag)
            continue;
        uint32_t idx = (uint32_t)e - 1;
        uint64_t en = t->ent[idx];
        if (ids_len_of(en) == len && !memcmp(ids_bytes_of(t, en), s, len))
            return idx;
    }
}

static void ids_tab_put(uint64_t *tab, size_t cap, uint64_t e)
{
    size_t mask = cap - 1;
    size_t pos = (uint32_t)(e >> 32) & mask;
    while (tab[pos])
        pos = (pos + 1) & mask;
    tab[pos] = e;
}

static int ids_tab_grow(struct ids *t, size_t cap)
{
    uint64_t *tab = calloc(cap, sizeof(*tab));
    if (!tab)
        return -ENOMEM;
    for (size_t i = 0; i < t->tab_cap; i++)
        if (t->tab[i])
            ids_tab_put(tab, cap, t->tab[i]);
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
    uint32_t *fl = realloc(t->freel, (size_t)cap * sizeof(*fl));
    if (!fl)
        return -ENOMEM;
    t->freel = fl;
    t->slots_cap = cap;
    return 0;
}

int ids_reserve(struct ids *t, size_t len)
{
    if (len < 1 || len > IDS_LEN_MAX)
        return -EINVAL;
    if (t->arena_len + len > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + len)
            cap *= 2;
        if (cap >> (64 - IDS_LEN_BITS))
            return -ENOMEM;
        char *a = realloc(t->arena, cap);
        if (!a)
            return -ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (!t->nfree && t->nslots == t->slots_cap) {
        if (t->nslots >= IDS_SLOTS_MAX)
            return -ENOMEM;
        uint64_t cap = t->slots_cap ? 2ull * t->slots_cap : 64;
        if (cap > IDS_SLOTS_MAX)
            cap = IDS_SLOTS_MAX;
        int rc = ids_slots_grow(t, (uint32_t)cap);
        if (rc)
            return rc;
    }
    /* The table stays at most half full. */
    if (2 * ((size_t)t->live + 1) > t->tab_cap) {
        size_t cap = t->tab_cap ? 2 * t->tab_cap : 128;
        int rc = ids_tab_grow(t, cap);
        if (rc)
            return rc;
    }
    return 0;
}

static void ids_place(struct ids *t, uint32_t idx, const char *s, size_t len,
                      uint32_t tag)
{
    memcpy(t->arena + t->arena_len, s, len);
    t->ent[idx] = ((uint64_t)t->arena_len << IDS_LEN_BITS) | len;
    t->arena_len += len;
    ids_tab_put(t->tab, t->tab_cap, ((uint64_t)tag << 32) | (idx + 1ull));
    t->live++;
}

uint32_t ids_insert(struct ids *t, const char *s, size_t len)
{
    uint32_t idx = t->nfree ? t->freel[--t->nfree] : t->nslots++;
    ids_place(t, idx, s, len, ids_tag(t->seed, s, len));
    return idx;
}

/* Rewrites the arena with only the live ids, in index order, once most of
 * it is dead; skipped silently when memory is short. */
static void ids_compact(struct ids *t)
{
    size_t need = t->arena_len - t->arena_dead;
    char *a = malloc(need ? need : 1);
    if (!a)
        return;
    size_t off = 0;
    for (uint32_t i = 0; i < t->nslots; i++) {
        uint64_t e = t->ent[i];
        if (!e)
            continue;
        size_t len = ids_len_of(e);
        memcpy(a + off, ids_bytes_of(t, e), len);
        t->ent[i] = ((uint64_t)off << IDS_LEN_BITS) | len;
        off += len;
    }
    free(t->arena);
    t->arena = a;
    t->arena_len = off;
    t->arena_cap = need ? need : 1;
    t->arena_dead = 0;
}

void ids_remove(struct ids *t, uint32_t idx)
{
    uint64_t en = t->ent[idx];
    if (!en)
        return;
    size_t len = ids_len_of(en);
    uint32_t tag = ids_tag(t->seed, ids_bytes_of(t, en), len);
    size_t mask = t->tab_cap - 1;
    size_t i = tag & mask;
    while ((uint32_t)t->tab[i] != idx + 1)
        i = (i + 1) & mask;
    /* Backward-shift deletion keeps every probe chain unbroken. */
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        uint64_t e = t->tab[j];
        if (!e)
            break;
        size_t home = (uint32_t)(e >> 32) & mask;
        int stays = (j > i) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->tab[i] = e;
            i = j;
        }
    }
    t->tab[i] = 0;
    t->ent[idx] = 0;
    t->freel[t->nfree++] = idx;
    t->live--;
    t->arena_dead += len;
    if (t->arena_dead > 65536 && 2 * t->arena_dead > t->arena_len)
        ids_compact(t);
}

const char *ids_get(const struct ids *t, uint32_t idx, size_t *len)
{
    if (idx >= t->nslots || !t->ent[idx])
        return NULL;
    if (len)
        *len = ids_len_of(t->ent[idx]);
    return ids_bytes_of(t, t->ent[idx]);
}

uint32_t ids_slots(const struct ids *t)
{
    return t->nslots;
}

uint32_t ids_live(const struct ids *t)
{
    return t->live;
}

const uint32_t *ids_free_list(const struct ids *t, uint32_t *n)
{
    *n = t->nfree;
    return t->freel;
}

size_t ids_bytes(const struct ids *t)
{
    return sizeof(*t) + t->arena_cap +
           (size_t)t->slots_cap * (sizeof(uint64_t) + sizeof(uint32_t)) +
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
    if (idx >= t->nslots || t->ent[idx] || len < 1 || len > IDS_LEN_MAX)
        return -EINVAL;
    if (ids_find(t, s, len) >= 0)
        return -EEXIST;
    int rc = ids_reserve(t, len);
    if (rc)
        return rc;
    ids_place(t, idx, s, len, ids_tag(t->seed, s, len));
    return 0;
}

int ids_load_free(struct ids *t, const uint32_t *list, uint32_t n)
{
    if (n != t->nslots - t->live || n > t->slots_cap)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        /* A free index is listed once: mark it with the impossible entry
         * value 1 << 9 | 0 (length 0) while checking. */
        if (list[i] >= t->nslots || t->ent[list[i]]) {
            for (uint32_t j = 0; j < i; j++)
                t->ent[list[j]] = 0;
            return -EINVAL;
        }
        t->ent[list[i]] = 1ull << IDS_LEN_BITS;
    }
    for (uint32_t i = 0; i < n; i++) {
        t->ent[list[i]] = 0;
        t->freel[i] = list[i];
    }
    t->nfree = n;
    return 0;
}
