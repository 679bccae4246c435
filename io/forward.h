/* forward.h -- a loopback TCP forwarder on a thread of its own: listens on
 * 127.0.0.1:port and relays every connection, byte for byte, to one target
 * address. It gives the embedded broker, whose ports are random, a fixed
 * bootstrap address. */
#ifndef NMFD_IO_FORWARD_H
#define NMFD_IO_FORWARD_H

#include <stddef.h>
#include <stdint.h>

struct forward;

/* Listens on 127.0.0.1:port (1..65535); the forwarder goes to *out. The
 * socket is bound and listening when this returns, so a port in use is
 * reported here, and nothing else in the process can take the port from
 * then on; connections wait in the backlog until forward_start(). 0, or
 * a negative errno (-EADDRINUSE, -EINVAL, -ENOMEM, ...) with a message in
 * err. */
int forward_new(struct forward **out, int port, char *err, size_t errlen);
/* Relays every connection, from now on and waiting, to target, an IPv4
 * "ADDRESS:PORT", on the forwarder's own thread. 0, or a negative errno
 * with a message in err (the forwarder is then still only listening). */
int forward_start(struct forward *f, const char *target, char *err,
                  size_t errlen);
/* Stops listening, closes every relayed connection, joins the thread. */
void forward_free(struct forward *f);

/* Connections accepted since the start. */
uint64_t forward_accepted(const struct forward *f);

#endif
