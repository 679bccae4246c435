/* atomic.c -- replace a file so that readers never see half of it.
 *
 * The new content goes to a temp file beside the target (same directory,
 * hence same file system, so rename(2) is atomic), is fsync'ed, renamed
 * over the target, and the directory is fsync'ed so the rename itself
 * survives a power cut. It owns the temp file and its descriptor until
 * commit or abort; it never leaves a temp file behind on an error path
 * and never touches the target before the new content is durable.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic.h"

/* Temp names only need to differ between concurrent writers. */
static uint64_t rand_bits(void)
{
    static _Atomic uint64_t counter;
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 24 ^
                 ++counter * UINT64_C(0x9e3779b97f4a7c15);
    x ^= x >> 31;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    return x ^ x >> 29;
}

struct atomic_file {
    int fd;
    char *path; /* target */
    char *tmp;  /* temp file beside it */
};

int atomic_file_open(struct atomic_file **out, const char *path)
{
    struct atomic_file *af;
    size_t n;

    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return -EINVAL;
    af = calloc(1, sizeof(*af));
    if (af == NULL)
        return -ENOMEM;
    n = strlen(path);
    af->path = strdup(path);
    af->tmp = malloc(n + sizeof(".tmp.XXXXXX"));
    if (af->path == NULL || af->tmp == NULL) {
        free(af->path);
        free(af->tmp);
        free(af);
        return -ENOMEM;
    }
    /* O_EXCL with mode 0644 honours the umask (mkstemp would make 0600
     * and changing the umask to undo it is not thread-safe). */
    for (unsigned attempt = 0;; attempt++) {
        static const char hex[] = "0123456789abcdef";
        uint64_t r = rand_bits();
        memcpy(af->tmp, path, n);
        memcpy(af->tmp + n, ".tmp.", 5);
        for (int i = 0; i < 6; i++)
            af->tmp[n + 5 + i] = hex[(r >> (4 * i)) & 15];
        af->tmp[n + 11] = '\0';
        af->fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (af->fd >= 0)
            break;
        if (errno != EEXIST || attempt == 100) {
            int e = errno;
            free(af->path);
            free(af->tmp);
            free(af);
            return -e;
        }
    }
    *out = af;
    return 0;
}

int atomic_file_write(void *ctx, const void *buf, size_t len)
{
    struct atomic_file *af = ctx;
    const char *p = buf;

    while (len > 0) {
        ssize_t w = write(af->fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int dir_sync(const char *path)
{
    char *copy = strdup(path);
    int fd, rc = 0;

    if (copy == NULL)
        return -ENOMEM;
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        rc = -errno;
    else {
        if (fsync(fd) < 0)
            rc = -errno;
        close(fd);
    }
    free(copy);
    return rc;
}

static void af_release(struct atomic_file *af)
{
    free(af->path);
    free(af->tmp);
    free(af);
}

int atomic_file_commit(struct atomic_file *af)
{
    int rc = 0;

    if (fsync(af->fd) < 0)
        rc = -errno;
    if (close(af->fd) < 0 && rc == 0)
        rc = -errno;
    af->fd = -1;
    if (rc == 0 && rename(af->tmp, af->path) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(af->tmp);
        af_release(af);
        return rc;
    }
    rc = dir_sync(af->path);
    af_release(af);
    return rc;
}

void atomic_file_abort(struct atomic_file *af)
{
    if (af == NULL)
        return;
    if (af->fd >= 0)
        close(af->fd);
    unlink(af->tmp);
    af_release(af);
}
