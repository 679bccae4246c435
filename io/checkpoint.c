/* checkpoint.c -- the durable state of nmfd: the model and the input offsets
 * it has folded up to, in one file.
 *
 * The file is the source of truth for recovery (docs/design.md section 4): the
 * model and the offsets are captured at the same instant, so after a crash
 * the daemon reloads the model and re-reads every partition from the
 * stored offset; no event is lost and none is folded twice. Kafka's
 * committed offsets are only a copy for lag monitoring.
 *
 * Layout, all integers little-endian:
 *
 *   header (40 bytes)
 *     "NMFDCKPT"  magic
 *     u32         format version (1)
 *     u32         header length (40)
 *     u64         body length
 *     u32         CRC-32 (zlib) of the body
 *     u32, u64    reserved, zero
 *   body
 *     u64 epoch, u64 rejected, u64 consumed, i64 written_ms
 *     u32 offset count, then per offset: u32 topic length, topic bytes,
 *         i32 partition, i64 offset, and from format 2 on u64 events and
 *         f64 weight (the partition's events folded and their weights,
 *         which a group of processes sums; format 1 reads as zero)
 *     the model (model_save), up to the end of the body
 *
 * Writing goes to a temp file in the same directory, fsync, rename over
 * the old file, fsync the directory: a reader sees the old file or the new
 * one, never a mix. It uses write(2) only (no stdio, no locks), because
 * the daemon calls it in a forked child while the parent keeps ingesting.
 * Reading checks the magic, the version, the lengths and the CRC before it
 * parses anything, and refuses the whole file on any doubt.
 */
#include "checkpoint.h"
#include "errf.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define CKPT_MAGIC       "NMFDCKPT"
#define CKPT_VERSION     2u
#define CKPT_HEADER      40u
#define CKPT_TOPIC_MAX   4096u
#define CKPT_OFFSETS_MAX 1000000u

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* A buffered writer over a file descriptor that keeps the body's CRC. */
struct writer {
    int fd;
    int error; /* first negative errno */
    uint64_t body_len;
    uLong crc;
    size_t used;
    unsigned char buf[1 << 16];
};

static int writer_flush(struct writer *w)
{
    size_t off = 0;
    while (off < w->used && !w->error) {
        ssize_t n = write(w->fd, w->buf + off, w->used - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            w->error = -errno;
        } else {
            off += (size_t)n;
        }
    }
    w->used = 0;
    return w->error;
}

static int writer_put(void *ctx, const void *data, size_t len)
{
    struct writer *w = ctx;
    const unsigned char *p = data;

    if (w->error)
        return w->error;
    w->crc = crc32_z(w->crc, p, len);
    w->body_len += len;
    while (len) {
        size_t room = sizeof(w->buf) - w->used;
        size_t n = len < room ? len : room;
        memcpy(w->buf + w->used, p, n);
        w->used += n;
        p += n;
        len -= n;
        if (w->used == sizeof(w->buf) && writer_flush(w))
            return w->error;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

int checkpoint_write(const char *dir, const struct checkpoint_meta *meta,
                     const struct checkpoint_offset *offs, size_t noffs,
                     const struct model *m, char *err, size_t errlen)
{
    char path[4096], tmp[4096];
    unsigned char hdr[CKPT_HEADER], rec[32];
    struct writer *w = NULL;
    int rc = 0;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, CHECKPOINT_FILE) >=
            sizeof(path) ||
        (size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.tmp", dir,
                         CHECKPOINT_FILE, (long)getpid()) >= sizeof(tmp))
        return io_errf(err, errlen, -ENAMETOOLONG,
                       "checkpoint directory name too long");
    if (noffs > CKPT_OFFSETS_MAX)
        return io_errf(err, errlen, -E2BIG, "too many offsets (%zu)", noffs);

    w = calloc(1, sizeof(*w));
    if (!w)
        return io_errf(err, errlen, -ENOMEM, "out of memory");
    w->crc = crc32_z(0, Z_NULL, 0);
    w->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        rc = io_errf(err, errlen, -errno, "%s: %s", tmp, strerror(errno));
        free(w);
        return rc;
    }

    /* The header is rewritten once the body's length and CRC are known. */
    memset(hdr, 0, sizeof(hdr));
    if (write(w->fd, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr)) {
        rc = io_errf(err, errlen, -EIO, "%s: short write", tmp);
        goto out;
    }

    put_u64(rec, meta->epoch);
    put_u64(rec + 8, meta->rejected);
    put_u64(rec + 16, meta->consumed);
    put_u64(rec + 24, (uint64_t)meta->written_ms);
    writer_put(w, rec, 32);
    put_u32(rec, (uint32_t)noffs);
    writer_put(w, rec, 4);
    for (size_t i = 0; i < noffs; i++) {
        size_t tl = strlen(offs[i].topic);
        if (tl > CKPT_TOPIC_MAX) {
            rc = io_errf(err, errlen, -ENAMETOOLONG, "topic name too long");
            goto out;
        }
        put_u32(rec, (uint32_t)tl);
        writer_put(w, rec, 4);
        writer_put(w, offs[i].topic, tl);
        uint64_t wbits;
        memcpy(&wbits, &offs[i].weight, 8);
        put_u32(rec, (uint32_t)offs[i].partition);
        put_u64(rec + 4, (uint64_t)offs[i].offset);
        put_u64(rec + 12, offs[i].events);
        put_u64(rec + 20, wbits);
        writer_put(w, rec, 28);
    }
    rc = model_save(m, writer_put, w);
    if (!rc)
        rc = writer_flush(w);
    if (rc) {
        rc = io_errf(err, errlen, rc, "%s: %s", tmp, strerror(-rc));
        goto out;
    }

    memcpy(hdr, CKPT_MAGIC, 8);
    put_u32(hdr + 8, CKPT_VERSION);
    put_u32(hdr + 12, CKPT_HEADER);
    put_u64(hdr + 16, w->body_len);
    put_u32(hdr + 24, (uint32_t)w->crc);
    if (pwrite(w->fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) {
        rc = io_errf(err, errlen, -EIO, "%s: short header write", tmp);
        goto out;
    }
    if (fsync(w->fd)) {
        rc = io_errf(err, errlen, -errno, "fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(w->fd)) {
        w->fd = -1;
        rc = io_errf(err, errlen, -errno, "close %s: %s", tmp, strerror(errno));
        goto out;
    }
    w->fd = -1;
    if (rename(tmp, path)) {
        rc = io_errf(err, errlen, -errno, "rename %s: %s", path,
                     strerror(errno));
        goto out;
    }
    rc = fsync_dir(dir);
    if (rc)
        io_errf(err, errlen, rc, "fsync %s: %s", dir, strerror(-rc));
out:
    if (w->fd >= 0)
        close(w->fd);
    if (rc)
        unlink(tmp);
    free(w);
    return rc;
}

void checkpoint_offsets_free(struct checkpoint_offset *offs, size_t n)
{
    if (!offs)
        return;
    for (size_t i = 0; i < n; i++)
        free(offs[i].topic);
    free(offs);
}

int checkpoint_parse(const void *buf, size_t len, struct checkpoint_meta *meta,
                     struct checkpoint_offset **offs_out, size_t *noffs_out,
                     struct model **m_out, char *err, size_t errlen)
{
    const unsigned char *p = buf, *body, *end;
    struct checkpoint_offset *offs = NULL;
    struct checkpoint_meta mt;
    struct model *m = NULL;
    const char *why = NULL;
    uint64_t body_len;
    size_t n = 0, i = 0;
    uint32_t version;
    size_t rec;
    int rc = -EBADMSG;

    if (len < CKPT_HEADER || memcmp(p, CKPT_MAGIC, 8))
        return io_errf(err, errlen, -EBADMSG,
                       "not an nmfd checkpoint (bad magic)");
    version = get_u32(p + 8);
    if (version < 1 || version > CKPT_VERSION)
        return io_errf(err, errlen, -EPROTO,
                       "checkpoint format version %u, this nmfd reads 1 to %u",
                       version, CKPT_VERSION);
    rec = version >= 2 ? 28 : 12;
    if (get_u32(p + 12) != CKPT_HEADER)
        return io_errf(err, errlen, -EBADMSG, "bad checkpoint header length");
    body_len = get_u64(p + 16);
    if (body_len != len - CKPT_HEADER)
        return io_errf(err, errlen, -EBADMSG,
                       "checkpoint truncated or padded: body %llu bytes, "
                       "file has %zu",
                       (unsigned long long)body_len, len - CKPT_HEADER);
    body = p + CKPT_HEADER;
    end = body + body_len;
    if ((uint32_t)crc32_z(crc32_z(0, Z_NULL, 0), body, (size_t)body_len) !=
        get_u32(p + 24))
        return io_errf(err, errlen, -EBADMSG,
                       "checkpoint CRC mismatch (corrupt file)");

    p = body;
    if (end - p < 36) {
        why = "checkpoint body too short";
        goto bad;
    }
    mt.epoch = get_u64(p);
    mt.rejected = get_u64(p + 8);
    mt.consumed = get_u64(p + 16);
    mt.written_ms = (int64_t)get_u64(p + 24);
    n = get_u32(p + 32);
    p += 36;
    if (n > CKPT_OFFSETS_MAX) {
        why = "checkpoint offset count out of range";
        goto bad;
    }
    offs = calloc(n ? n : 1, sizeof(*offs));
    if (!offs) {
        rc = -ENOMEM;
        why = "out of memory";
        goto bad;
    }
    for (i = 0; i < n; i++) {
        uint32_t tl;
        if (end - p < 4 || (tl = get_u32(p)) == 0 || tl > CKPT_TOPIC_MAX ||
            (size_t)(end - p) < 4 + (size_t)tl + rec) {
            why = "checkpoint offset record out of bounds";
            goto bad;
        }
        offs[i].topic = strndup((const char *)p + 4, tl);
        if (!offs[i].topic) {
            rc = -ENOMEM;
            why = "out of memory";
            goto bad;
        }
        if (strlen(offs[i].topic) != tl) {
            free(offs[i].topic);
            offs[i].topic = NULL;
            why = "checkpoint topic name holds a NUL byte";
            goto bad;
        }
        p += 4 + tl;
        offs[i].partition = (int32_t)get_u32(p);
        offs[i].offset = (int64_t)get_u64(p + 4);
        if (rec == 28) {
            uint64_t wbits = get_u64(p + 20);
            offs[i].events = get_u64(p + 12);
            memcpy(&offs[i].weight, &wbits, 8);
        }
        p += rec;
        if (offs[i].partition < 0 || offs[i].offset < 0 ||
            !(offs[i].weight >= 0) || !isfinite(offs[i].weight)) {
            free(offs[i].topic);
            offs[i].topic = NULL;
            why = "checkpoint offset out of range";
            goto bad;
        }
    }
    m = model_load(p, (size_t)(end - p), &why);
    if (!m)
        goto bad;

    *meta = mt;
    *offs_out = offs;
    *noffs_out = n;
    *m_out = m;
    return 0;
bad:
    checkpoint_offsets_free(offs, i);
    return io_errf(err, errlen, rc, "refusing checkpoint: %s",
                   why ? why : "inconsistent");
}

int checkpoint_read(const char *dir, struct checkpoint_meta *meta,
                    struct checkpoint_offset **offs, size_t *noffs,
                    struct model **m, char *err, size_t errlen)
{
    char path[4096];
    unsigned char *buf = NULL;
    struct stat st;
    size_t got = 0;
    int fd, rc;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, CHECKPOINT_FILE) >=
        sizeof(path))
        return io_errf(err, errlen, -ENAMETOOLONG,
                       "checkpoint directory name too long");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return io_errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st)) {
        rc = io_errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
        goto out;
    }
    buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        rc = io_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = io_errf(err, errlen, r < 0 ? -errno : -EIO, "%s: read: %s",
                         path, r < 0 ? strerror(errno) : "short read");
            goto out;
        }
        got += (size_t)r;
    }
    rc = checkpoint_parse(buf, got, meta, offs, noffs, m, err, errlen);
    if (rc && err && errlen) {
        char tmp[sizeof(path) + 1024];
        snprintf(tmp, sizeof(tmp), "%s: %s", path, err);
        snprintf(err, errlen, "%s", tmp);
    }
out:
    free(buf);
    close(fd);
    return rc;
}
