/* errf.h -- how io/ reports an error in words: into the caller's buffer. */
#ifndef NMFD_IO_ERRF_H
#define NMFD_IO_ERRF_H

#include <stddef.h>

/* Formats the message into err (errlen bytes, truncated; nothing when err
 * is NULL or errlen 0) and returns rc, so a failure reads
 * `return io_errf(err, errlen, -EIO, "%s: short write", path);`. */
int io_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
