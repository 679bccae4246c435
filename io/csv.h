/* csv.h -- streaming reader of event files and item-name files.
 *
 * Event files: a header line naming the columns, then one event a line.
 * Columns by name, in any order: user and item are required, weight, ts
 * and type optional; any other name is an error. Fields may be quoted
 * ("a,b", with "" for a quote) but a quoted field may not span lines.
 * CRLF line ends, a UTF-8 byte order mark and blank lines are accepted.
 *
 * weight: a finite number >= 0; empty (or no column) means 1.
 * ts: an integer >= 0. Values below 1e11 are seconds and are multiplied
 *   by 1000, larger values are milliseconds (1e11 s is the year 5138,
 *   1e11 ms is 1973), so "1,2,3" ordinal times read as seconds. An empty
 *   ts (or no column) means "the same time as the row before" (0 before
 *   any row); ts_given tells the two apart.
 *
 * Item-name files: header "item,name" (quotes allowed), one item a line.
 */
#ifndef NMFD_IO_CSV_H
#define NMFD_IO_CSV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CSV_ID_MAX           256            /* bytes of a user or item id */
#define CSV_TS_SECONDS_BELOW 100000000000LL /* 1e11 */

/* One event. The strings point into the reader's buffer, are NUL
 * terminated, and stay valid until the next csv_next or csv_close. */
struct csv_row {
    const char *user;
    size_t user_len;
    const char *item;
    size_t item_len;
    const char *type; /* "" when absent */
    size_t type_len;
    double weight;
    int64_t ts;    /* milliseconds since the Unix epoch */
    bool ts_given; /* false: ts was empty and carried over */
    uint64_t line; /* 1-based line number in the file */
};

struct csv_reader;

/* Opens path ("-" = stdin) and reads its header. NULL on failure with
 * err set ("path: message" or "path:1: message") and errno set (ENOENT,
 * EACCES, ... for the file, EINVAL for a missing or bad header). */
struct csv_reader *csv_open(const char *path, char *err, size_t errlen);

/* Next event: 1 a row, 0 end of file, or a negative errno with
 * csv_error() = "path:line: message".
 *   -EINVAL  this line is malformed (field count, empty or long id, bad
 *            weight, bad ts, bad quotes, line too long); the reader has
 *            moved past it and the next call goes on with the next line.
 *   other    (-EIO, ...) reading failed; stop. */
int csv_next(struct csv_reader *r, struct csv_row *row);

/* The message of the last error ("" if none). */
const char *csv_error(const struct csv_reader *r);
/* Progress: the bytes of the input read into rows so far, and the size of
 * the input when it is a regular file (-1 for a pipe, a terminal). */
uint64_t csv_offset(const struct csv_reader *r);
int64_t csv_size(const struct csv_reader *r);
/* The path as given ("-" for stdin). */
const char *csv_path(const struct csv_reader *r);

void csv_close(struct csv_reader *r);
void csv_destroy(struct csv_reader **r);

/* Converts a raw integer time to milliseconds by the rule above; -EINVAL
 * when negative or when seconds would overflow. */
int csv_ts_to_ms(int64_t raw, int64_t *ms);

/* Reads an item-name file, calling fn for every line in file order.
 * Returns 0, the first nonzero value fn returned, or a negative errno
 * with err set ("path:line: message"): -EINVAL for a bad header or line
 * (empty item, wrong field count), -ENOENT etc. when it cannot be read.
 * The strings are NUL terminated and valid only during the call. */
typedef int (*csv_item_name_fn)(void *ctx, const char *item, size_t ilen,
                                const char *name, size_t nlen);
int csv_item_names(const char *path, csv_item_name_fn fn, void *ctx, char *err,
                   size_t errlen);

#endif
