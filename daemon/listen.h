/* listen.h -- the listen address parser shared by the config and http. */
#ifndef NMFD_LISTEN_H
#define NMFD_LISTEN_H

#include <stddef.h>
#include <stdint.h>

/* Splits "host:port", "[v6]:port" or ":port" (host "" = every interface)
 * into host (brackets removed) and port. NULL with both filled, or a
 * static lowercase message and both untouched. */
const char *listen_parse(const char *listen, char *host, size_t hostlen,
                         uint16_t *port);

#endif
