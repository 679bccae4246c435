/* listen.h -- the listen address parser shared by the config and http. */
#ifndef NMFD_LISTEN_H
#define NMFD_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Splits "host:port", "[v6]:port" or ":port" (host "" = every interface)
 * into host (brackets removed) and port. NULL with both filled, or a
 * static lowercase message and both untouched. */
const char *listen_parse(const char *listen, char *host, size_t hostlen,
                         uint16_t *port);

/* Whether the host of listen reaches this host only (127.0.0.0/8, ::1,
 * "localhost"); an empty host (every interface), another name or an
 * address that does not parse is not. */
bool listen_is_loopback(const char *listen);

#endif
