/* io/csv.c -- streaming reader of user,item,weight,ts event files and of
 * item,name files.
 *
 * The reader owns one buffer (256 KiB) and the file descriptor; it reads
 * with read(2), finds lines with memchr, splits them in place (quotes are
 * unescaped inside the buffer, every field is NUL terminated there) and
 * hands out pointers into the buffer, so a row costs no allocation however
 * large the file. A malformed line is reported with its path and line
 * number and skipped, so callers can count rejects and go on. It never
 * interprets ids (they are opaque bytes), never allocates per row and
 * never reads a line longer than its buffer. The rules (columns, quoting,
 * the seconds/milliseconds ts rule, empty ts) are stated in csv.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "csv.h"

#define CSV_BUF_SIZE (256 * 1024)
#define CSV_MAX_COLS 16

enum csv_col {
    CSV_COL_USER,
    CSV_COL_ITEM,
    CSV_COL_WEIGHT,
    CSV_COL_TS,
    CSV_COL_TYPE,
    CSV_COL_NAME,
    CSV_NCOLS,
};

static const char *const csv_col_names[CSV_NCOLS] = {
    "user", "item", "weight", "ts", "type", "name",
};

enum csv_kind {
    CSV_KIND_EVENTS,
    CSV_KIND_ITEMS,
};

struct csv_reader {
    int fd;
    char *path;
    enum csv_kind kind;
    char *buf; /* CSV_BUF_SIZE + 1 bytes: room for a final NUL */
    size_t pos, end;
    bool eof;
    uint64_t line;
    int ncols;
    int col[CSV_NCOLS]; /* column index of each known name, or -1 */
    int64_t last_ts;
    uint64_t consumed; /* bytes moved out of the buffer (progress) */
    int64_t size;      /* of a regular file, else -1 */
    char *field[CSV_MAX_COLS];
    size_t flen[CSV_MAX_COLS];
    char err[512];
};

static void csv__err(struct csv_reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void csv__err(struct csv_reader *r, const char *fmt, ...)
{
    char msg[384];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->line == 0)
        snprintf(r->err, sizeof(r->err), "%s: %s", r->path, msg);
    else
        snprintf(r->err, sizeof(r->err), "%s:%llu: %s", r->path,
                 (unsigned long long)r->line, msg);
}

/* Fills the buffer after end. 0 on success or EOF (r->eof set), else a
 * negative errno. */
static int csv__fill(struct csv_reader *r)
{
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->end - r->pos);
        r->end -= r->pos;
        r->consumed += r->pos;
        r->pos = 0;
    }
    for (;;) {
        ssize_t n = read(r->fd, r->buf + r->end, CSV_BUF_SIZE - r->end);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            r->eof = true;
        r->end += (size_t)n;
        return 0;
    }
}

/* The next physical line, NUL terminated, without its "\n" or "\r\n".
 * 1 a line, 0 end of file, -E2BIG a line longer than the buffer (skipped
 * up to its end), other negative errno on read errors. */
static int csv__line(struct csv_reader *r, char **line, size_t *len)
{
    for (;;) {
        char *s = r->buf + r->pos;
        char *nl = memchr(s, '\n', r->end - r->pos);
        size_t n;

        if (nl || (r->eof && r->pos < r->end)) {
            n = nl ? (size_t)(nl - s) : r->end - r->pos;
            r->pos += nl ? n + 1 : n;
            r->line++;
            if (n > 0 && s[n - 1] == '\r')
                n--;
            s[n] = '\0';
            *line = s;
            *len = n;
            return 1;
        }
        if (r->eof)
            return 0;
        if (r->pos == 0 && r->end == CSV_BUF_SIZE) {
            /* No newline in a full buffer: drop bytes up to the next
             * newline and report the line once. */
            r->line++;
            for (;;) {
                r->pos = r->end = 0;
                int rc = csv__fill(r);
                if (rc < 0)
                    return rc;
                nl = memchr(r->buf, '\n', r->end);
                if (nl) {
                    r->pos = (size_t)(nl - r->buf) + 1;
                    return -E2BIG;
                }
                if (r->eof) {
                    r->pos = r->end = 0;
                    return -E2BIG;
                }
            }
        }
        int rc = csv__fill(r);
        if (rc < 0)
            return rc;
    }
}

/* Splits line s (length len, NUL at s[len]) into r->field, in place.
 * Returns the number of fields or -EINVAL with *msg set. */
static int csv__split(struct csv_reader *r, char *s, size_t len,
                      const char **msg)
{
    size_t i = 0;
    int n = 0;

    for (;;) {
        size_t e;

        if (n == CSV_MAX_COLS) {
            *msg = "too many fields";
            return -EINVAL;
        }
        if (i < len && s[i] == '"') {
            char *dst = s + i;
            r->field[n] = dst;
            for (i++;; i++) {
                if (i >= len) {
                    *msg = "unterminated quoted field";
                    return -EINVAL;
                }
                if (s[i] == '"') {
                    if (i + 1 < len && s[i + 1] == '"') {
                        *dst++ = '"';
                        i++;
                        continue;
                    }
                    i++;
                    break;
                }
                *dst++ = s[i];
            }
            r->flen[n] = (size_t)(dst - r->field[n]);
            *dst = '\0';
            if (i < len && s[i] != ',') {
                *msg = "text after a closing quote";
                return -EINVAL;
            }
            e = i;
        } else {
            char *c = memchr(s + i, ',', len - i);
            e = c ? (size_t)(c - s) : len;
            if (memchr(s + i, '"', e - i)) {
                *msg = "quote inside an unquoted field";
                return -EINVAL;
            }
            r->field[n] = s + i;
            r->flen[n] = e - i;
        }
        n++;
        if (e >= len)
            return n;
        s[e] = '\0';
        i = e + 1;
    }
}

static bool csv__blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t')
            return false;
    return true;
}

/* Trims spaces and tabs around a numeric field, in place. */
static char *csv__trim(char *s, size_t *len)
{
    while (*len > 0 && (s[*len - 1] == ' ' || s[*len - 1] == '\t'))
        s[--*len] = '\0';
    while (*len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        --*len;
    }
    return s;
}

/* A weight: finite and >= 0. Plain digit strings take a fast path. */
static int csv__weight(char *s, size_t len, double *w)
{
    s = csv__trim(s, &len);
    if (len == 0)
        return -EINVAL;
    if (len <= 15) {
        uint64_t v = 0;
        size_t i;
        for (i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
            v = v * 10 + (uint64_t)(s[i] - '0');
        if (i == len) {
            *w = (double)v;
            return 0;
        }
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != s + len || !isfinite(v) || v < 0 || errno == ERANGE)
        return -EINVAL;
    *w = v + 0.0; /* -0 becomes +0 */
    return 0;
}

int csv_ts_to_ms(int64_t raw, int64_t *ms)
{
    if (raw < 0)
        return -EINVAL;
    *ms = raw < CSV_TS_SECONDS_BELOW ? raw * 1000 : raw;
    return 0;
}

static int csv__ts(char *s, size_t len, int64_t *ms)
{
    int64_t v = 0;

    s = csv__trim(s, &len);
    if (len == 0 || len > 18)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    return csv_ts_to_ms(v, ms);
}

static int csv__header(struct csv_reader *r)
{
    char *line = NULL;
    size_t len = 0;
    const char *msg = NULL;
    int rc, n;

    rc = csv__line(r, &line, &len);
    if (rc == 0) {
        csv__err(r, "empty file, expected a header line (%s)",
                 r->kind == CSV_KIND_EVENTS ? "user,item,weight,ts"
                                            : "item,name");
        return -EINVAL;
    }
    if (rc == -E2BIG) {
        csv__err(r, "header line too long");
        return -EINVAL;
    }
    if (rc < 0) {
        csv__err(r, "read: %s", strerror(-rc));
        return rc;
    }
    if (len >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) {
        line += 3;
        len -= 3;
    }
    n = csv__split(r, line, len, &msg);
    if (n < 0) {
        csv__err(r, "header: %s", msg);
        return n;
    }
    for (int c = 0; c < CSV_NCOLS; c++)
        r->col[c] = -1;
    for (int f = 0; f < n; f++) {
        size_t flen = r->flen[f];
        char *name = csv__trim(r->field[f], &flen);
        int c, first, last;

        if (r->kind == CSV_KIND_EVENTS) {
            first = CSV_COL_USER;
            last = CSV_COL_TYPE;
        } else {
            first = last = CSV_COL_ITEM;
        }
        for (c = 0; c < CSV_NCOLS; c++) {
            bool allowed = (c >= first && c <= last) ||
                           (r->kind == CSV_KIND_ITEMS && c == CSV_COL_NAME);
            if (allowed && !strcasecmp(name, csv_col_names[c]))
                break;
        }
        if (c == CSV_NCOLS) {
            csv__err(r,
                     "unknown column '%.64s' in the header (expected %s); "
                     "is the header line missing?",
                     name,
                     r->kind == CSV_KIND_EVENTS
                         ? "user,item[,weight][,ts][,type]"
                         : "item,name");
            return -EINVAL;
        }
        if (r->col[c] >= 0) {
            csv__err(r, "column '%s' twice in the header", csv_col_names[c]);
            return -EINVAL;
        }
        r->col[c] = f;
    }
    static const int required[2][2] = {
        [CSV_KIND_EVENTS] = {CSV_COL_USER, CSV_COL_ITEM},
        [CSV_KIND_ITEMS] = {CSV_COL_ITEM, CSV_COL_NAME},
    };
    for (int k = 0; k < 2; k++) {
        if (r->col[required[r->kind][k]] < 0) {
            csv__err(r, "the header has no '%s' column",
                     csv_col_names[required[r->kind][k]]);
            return -EINVAL;
        }
    }
    r->ncols = n;
    return 0;
}

static struct csv_reader *csv__open(const char *path, enum csv_kind kind,
                                    char *err, size_t errlen, int *rcp)
{
    struct csv_reader *r = calloc(1, sizeof(*r));
    int rc = -ENOMEM;

    if (!r || !(r->path = strdup(path)) ||
        !(r->buf = malloc(CSV_BUF_SIZE + 1))) {
        snprintf(err, errlen, "%s: %s", path, strerror(ENOMEM));
        goto fail;
    }
    r->kind = kind;
    r->fd = -1;
    r->size = -1;
    if (!strcmp(path, "-")) {
        r->fd = STDIN_FILENO;
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto fail;
        }
    }
    struct stat sb;
    if (fstat(r->fd, &sb) == 0 && S_ISREG(sb.st_mode))
        r->size = (int64_t)sb.st_size;
    rc = csv__header(r);
    if (rc < 0) {
        snprintf(err, errlen, "%s", r->err);
        goto fail;
    }
    r->err[0] = '\0';
    *rcp = 0;
    return r;
fail:
    csv_close(r);
    *rcp = rc;
    return NULL;
}

struct csv_reader *csv_open(const char *path, char *err, size_t errlen)
{
    int rc;
    struct csv_reader *r = csv__open(path, CSV_KIND_EVENTS, err, errlen, &rc);

    if (!r)
        errno = -rc;
    return r;
}

/* The next non-blank line split into exactly r->ncols fields: 1, 0 at
 * the end, -EINVAL (a bad line, skipped) or another negative errno. */
static int csv__fields(struct csv_reader *r)
{
    for (;;) {
        char *line;
        size_t len;
        const char *msg = NULL;
        int rc = csv__line(r, &line, &len);

        if (rc == -E2BIG) {
            csv__err(r, "line longer than %d bytes", CSV_BUF_SIZE);
            return -EINVAL;
        }
        if (rc < 0) {
            csv__err(r, "read: %s", strerror(-rc));
            return rc;
        }
        if (rc == 0)
            return 0;
        if (csv__blank(line, len))
            continue;
        int n = csv__split(r, line, len, &msg);
        if (n < 0) {
            csv__err(r, "%s", msg);
            return n;
        }
        if (n != r->ncols) {
            csv__err(r, "expected %d fields as in the header, got %d", r->ncols,
                     n);
            return -EINVAL;
        }
        return 1;
    }
}

static int csv__id(struct csv_reader *r, int col, const char **s, size_t *len)
{
    const char *what = csv_col_names[col];

    *s = r->field[r->col[col]];
    *len = r->flen[r->col[col]];
    if (*len == 0) {
        csv__err(r, "empty %s", what);
        return -EINVAL;
    }
    if (*len > CSV_ID_MAX) {
        csv__err(r, "%s longer than %d bytes", what, CSV_ID_MAX);
        return -EINVAL;
    }
    return 0;
}

int csv_next(struct csv_reader *r, struct csv_row *row)
{
    int rc = csv__fields(r);
    int c;

    if (rc <= 0)
        return rc;
    memset(row, 0, sizeof(*row));
    row->line = r->line;
    if (csv__id(r, CSV_COL_USER, &row->user, &row->user_len) < 0 ||
        csv__id(r, CSV_COL_ITEM, &row->item, &row->item_len) < 0)
        return -EINVAL;
    row->type = "";
    if ((c = r->col[CSV_COL_TYPE]) >= 0) {
        row->type = r->field[c];
        row->type_len = r->flen[c];
    }
    row->weight = 1.0;
    if ((c = r->col[CSV_COL_WEIGHT]) >= 0 && r->flen[c] > 0 &&
        csv__weight(r->field[c], r->flen[c], &row->weight) < 0) {
        csv__err(r, "bad weight '%.64s' (a finite number >= 0)", r->field[c]);
        return -EINVAL;
    }
    row->ts = r->last_ts;
    if ((c = r->col[CSV_COL_TS]) >= 0 && r->flen[c] > 0) {
        if (csv__ts(r->field[c], r->flen[c], &row->ts) < 0) {
            csv__err(r,
                     "bad ts '%.64s' (an integer >= 0: seconds below "
                     "1e11, else milliseconds)",
                     r->field[c]);
            return -EINVAL;
        }
        row->ts_given = true;
        r->last_ts = row->ts;
    }
    return 1;
}

const char *csv_error(const struct csv_reader *r)
{
    return r->err;
}

uint64_t csv_offset(const struct csv_reader *r)
{
    return r->consumed + r->pos;
}

int64_t csv_size(const struct csv_reader *r)
{
    return r->size;
}

const char *csv_path(const struct csv_reader *r)
{
    return r->path;
}

void csv_close(struct csv_reader *r)
{
    if (!r)
        return;
    if (r->fd > STDIN_FILENO)
        close(r->fd);
    free(r->buf);
    free(r->path);
    free(r);
}

void csv_destroy(struct csv_reader **r)
{
    csv_close(*r);
    *r = NULL;
}

int csv_item_names(const char *path, csv_item_name_fn fn, void *ctx, char *err,
                   size_t errlen)
{
    int rc;
    struct csv_reader *r = csv__open(path, CSV_KIND_ITEMS, err, errlen, &rc);

    if (!r)
        return rc;
    while ((rc = csv__fields(r)) > 0) {
        const char *item, *name;
        size_t ilen, nlen;

        if ((rc = csv__id(r, CSV_COL_ITEM, &item, &ilen)) < 0)
            break;
        name = r->field[r->col[CSV_COL_NAME]];
        nlen = r->flen[r->col[CSV_COL_NAME]];
        rc = fn(ctx, item, ilen, name, nlen);
        if (rc != 0)
            goto out;
    }
    if (rc < 0)
        snprintf(err, errlen, "%s", r->err);
out:
    csv_close(r);
    return rc;
}
