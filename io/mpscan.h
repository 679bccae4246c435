/* mpscan.h -- bounds check of untrusted msgpack before msgpack-c builds
 * its object tree: one pass, no allocation. */
#ifndef NMFD_IO_MPSCAN_H
#define NMFD_IO_MPSCAN_H

#include <stddef.h>
#include <stdint.h>

#define MPSCAN_DEPTH_MAX 32 /* msgpack-c's own stack (EMBED_STACK_SIZE) */

struct mpscan {
    size_t end;       /* bytes taken by the first value */
    size_t dom_bytes; /* zone bytes msgpack_unpack will need for it */
    uint32_t depth;   /* deepest container nesting; a bare map is 1 */
};

/* Walks the first msgpack value of buf[0..len). Returns 0, -EBADMSG
 * (malformed or truncated, or a container that claims more elements than
 * there are bytes left), -ELOOP (containers nested deeper than max_depth,
 * itself at most MPSCAN_DEPTH_MAX) or -ENODATA (len is 0). */
int mpscan_value(const void *buf, size_t len, uint32_t max_depth,
                 struct mpscan *s);

#endif
