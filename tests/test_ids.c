/* test_ids.c -- the id table (online/ids.c) on its own: ids of every
 * length find their index, removed ones are gone and their index comes
 * back first, the table grows and compacts without losing an id, and the
 * memory hints change nothing, for present and absent ids alike. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "ids.h"

#define N 20000

static size_t id_of(char *buf, uint32_t i)
{
    /* Lengths from 1 to IDS_LEN_MAX bytes, so records straddle lines. */
    size_t len = 1 + (size_t)(i * 2654435761u % IDS_LEN_MAX);
    int n = snprintf(buf, IDS_LEN_MAX + 1, "%u:", i);
    for (size_t j = (size_t)n; j < len; j++)
        buf[j] = (char)('a' + (i + j) % 26);
    return len < (size_t)n ? (size_t)n : len;
}

/* The lookup an event gets in the batch pipeline: hints, then the find. */
static int64_t find_hinted(const struct ids *t, const char *s, size_t len)
{
    uint64_t h = ids_hash_id(t, s, len);
    ids_prefetch_slot(t, h);
    ids_prefetch_record(t, h, len);
    int64_t a = ids_find_hash(t, s, len, h);
    cr_assert_eq(a, ids_find(t, s, len), "the hints changed a lookup");
    return a;
}

/* Inserts ids 0..N-1, each absent before and given the next index. */
static struct ids *filled(uint64_t seed)
{
    struct ids *t = ids_new(seed);
    char buf[IDS_LEN_MAX + 1];
    cr_assert_not_null(t);
    for (uint32_t i = 0; i < N; i++) {
        size_t len = id_of(buf, i);
        cr_assert_eq(find_hinted(t, buf, len), -ENOENT, "id %u early", i);
        cr_assert_eq(ids_reserve(t, len), 0);
        cr_assert_eq(ids_insert(t, buf, len), i);
    }
    return t;
}

Test(ids, empty_table_finds_nothing_and_hints_are_safe)
{
    struct ids *t = ids_new(1);
    cr_assert_not_null(t);
    cr_assert_eq(find_hinted(t, "u1", 2), -ENOENT);
    cr_assert_eq(ids_slots(t), 0);
    ids_free(t);
}

Test(ids, every_id_finds_its_index_through_growth)
{
    struct ids *t = filled(7);
    char buf[IDS_LEN_MAX + 1];
    cr_assert_eq(ids_live(t), N);
    for (uint32_t i = 0; i < N; i++) {
        size_t len = id_of(buf, i), got;
        cr_assert_eq(find_hinted(t, buf, len), (int64_t)i);
        const char *s = ids_get(t, i, &got);
        cr_assert(got == len && memcmp(s, buf, len) == 0, "bytes of %u", i);
        /* A prefix is another id. */
        if (len > 1)
            cr_assert_eq(find_hinted(t, buf, len - 1) == (int64_t)i, 0);
    }
    ids_free(t);
}

Test(ids, removed_ids_are_gone_and_their_indices_reused_last_first)
{
    struct ids *t = filled(3);
    char buf[IDS_LEN_MAX + 1];
    /* Remove most of them: the arena compacts on the way. */
    for (uint32_t i = 0; i < N; i++)
        if (i % 10)
            ids_remove(t, i);
    cr_assert_eq(ids_live(t), N / 10);
    cr_assert_eq(ids_free_count(t), N - N / 10);
    for (uint32_t i = 0; i < N; i++) {
        size_t len = id_of(buf, i), got;
        cr_assert_eq(find_hinted(t, buf, len), i % 10 ? -ENOENT : (int64_t)i,
                     "id %u", i);
        cr_assert_eq(ids_get(t, i, &got) == NULL, i % 10 != 0);
    }
    /* The most recently freed index comes back first. */
    cr_assert_eq(ids_reserve(t, 3), 0);
    cr_assert_eq(ids_insert(t, "new", 3), N - 1);
    cr_assert_eq(find_hinted(t, "new", 3), N - 1);
    ids_free(t);
}
