/* listen.c -- the one parser of a listen address ("host:port", "[v6]:port",
 * ":port"). The http.listen config key validates with it and http_start
 * splits the address with it, so a value the configuration accepts is the
 * value the HTTP endpoint binds, with the same words for every mistake.
 * It owns nothing and must never resolve names or touch a socket: that is
 * http.c's business once the address has parsed. */
#include "listen.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

const char *listen_parse(const char *listen, char *host, size_t hostlen,
                         uint16_t *port)
{
    const char *colon, *h = listen, *p;
    unsigned long v = 0;
    size_t hlen;

    if (!listen)
        return "missing :port";
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        char v6[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;

        if (!close)
            return "missing ']' after the IPv6 address";
        h = listen + 1;
        hlen = (size_t)(close - h);
        if (close[1] != ':')
            return "missing :port after ']'";
        colon = close + 1;
        if (hlen == 0 || hlen >= sizeof(v6))
            return "bad IPv6 address";
        memcpy(v6, h, hlen);
        v6[hlen] = '\0';
        if (inet_pton(AF_INET6, v6, &a6) != 1)
            return "bad IPv6 address";
    } else {
        colon = strrchr(listen, ':');
        if (!colon)
            return "missing :port";
        hlen = (size_t)(colon - listen);
        for (const char *q = listen; q < colon; q++) {
            if (*q == ':')
                return "an IPv6 address needs brackets: [addr]:port";
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' &&
                *q != '_')
                return "bad host name";
        }
    }
    p = colon + 1;
    if (!*p)
        return "port must be a number 0..65535";
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return "port must be a number 0..65535";
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return "port must be a number 0..65535";
    }
    if (hlen >= hostlen)
        return "host name too long";
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)v;
    return NULL;
}

bool listen_is_loopback(const char *listen)
{
    char host[256];
    uint16_t port;
    struct in_addr a4;
    struct in6_addr a6;

    if (listen_parse(listen, host, sizeof(host), &port))
        return false;
    if (!strcasecmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}
