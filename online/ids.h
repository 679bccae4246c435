/* ids.h -- interning of byte-string ids into dense uint32 indices. */
#ifndef NMFD_ONLINE_IDS_H
#define NMFD_ONLINE_IDS_H

#include <stddef.h>
#include <stdint.h>

#define IDS_LEN_MAX 256

struct ids;

struct ids *ids_new(uint64_t seed);
void ids_free(struct ids *t);

/* Index of an id, or -ENOENT. */
int64_t ids_find(const struct ids *t, const char *s, size_t len);
/* The same in two steps, for callers that look ahead: the id's hash, then
 * the lookup with it. */
uint64_t ids_hash_id(const struct ids *t, const char *s, size_t len);
int64_t ids_find_hash(const struct ids *t, const char *s, size_t len,
                      uint64_t h);
/* Memory hints for an upcoming lookup of hash h: the table slot, then
 * (once that is cached) the record of len bytes it leads to. Change
 * nothing. */
void ids_prefetch_slot(const struct ids *t, uint64_t h);
void ids_prefetch_record(const struct ids *t, uint64_t h, size_t len);
/* Makes room so that the next ids_insert of an id of len bytes cannot
 * fail; 0 or -ENOMEM (nothing changed). */
int ids_reserve(struct ids *t, size_t len);
/* Inserts an id that is not present; needs a successful ids_reserve.
 * Reuses the most recently freed index first, else appends. */
uint32_t ids_insert(struct ids *t, const char *s, size_t len);
/* Forgets a live index; the index goes to the free list. */
void ids_remove(struct ids *t, uint32_t idx);
/* The bytes of a live index (not NUL-terminated), NULL for a free one. */
const char *ids_get(const struct ids *t, uint32_t idx, size_t *len);

uint32_t ids_slots(const struct ids *t); /* indices handed out so far */
uint32_t ids_live(const struct ids *t);  /* live ids */
/* The free list, from the next index to be reused (the most recently
 * freed): ids_free_next(t, -1) is the first, ids_free_next(t, i) the one
 * after i, -1 at the end. */
uint32_t ids_free_count(const struct ids *t);
int64_t ids_free_next(const struct ids *t, int64_t at);
size_t ids_bytes(const struct ids *t); /* memory held */

/* Restoring a saved table: ids_load_slots once on an empty table, then
 * ids_load_put for each live index (-EEXIST on a duplicate id, -EINVAL on
 * a bad index or length), then ids_load_free with the free list in
 * ids_free_next order (-EINVAL unless it lists every free index once). */
int ids_load_slots(struct ids *t, uint32_t nslots);
int ids_load_put(struct ids *t, uint32_t idx, const char *s, size_t len);
int ids_load_free(struct ids *t, const uint32_t *list, uint32_t n);

#endif
