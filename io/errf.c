/* io/errf.c -- the one helper every io/ subsystem uses to describe an
 * error to its caller: a printf into a buffer the caller owns, so the
 * daemon and nmfctl decide where the words go (log, stderr, HTTP). */
#include <stdarg.h>
#include <stdio.h>

#include "errf.h"

int io_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}
