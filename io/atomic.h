/* atomic.h -- replace a file atomically: temp file in the same directory,
 * write, fsync, rename over the target, fsync the directory. A reader
 * sees the old file or the complete new one, never a part. */
#ifndef NMFD_IO_ATOMIC_H
#define NMFD_IO_ATOMIC_H

#include <stddef.h>

struct atomic_file;

/* Creates "<path>.tmp.XXXXXX" (mode 0644 minus umask). 0 or -errno. */
int atomic_file_open(struct atomic_file **out, const char *path);
/* Appends len bytes; ctx is the struct atomic_file. 0 or -errno. Same
 * signature as model_write_fn and records_write_fn. */
int atomic_file_write(void *ctx, const void *buf, size_t len);
/* fsync, close, rename, fsync the directory; frees af. On failure the
 * temp file is removed and the target left as it was. 0 or -errno. */
int atomic_file_commit(struct atomic_file *af);
/* Removes the temp file and frees af (NULL is fine). */
void atomic_file_abort(struct atomic_file *af);

#endif
