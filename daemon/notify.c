/* notify.c -- the sd_notify protocol, for Type=notify units.
 *
 * A thin layer over libsystemd's sd_notify() and sd_watchdog_enabled():
 * READY=1 once the state is loaded and the consumer subscribed, STATUS=
 * lines, RELOADING=1 around a SIGHUP reload, STOPPING=1 at a clean stop,
 * WATCHDOG=1 from the loop while it makes progress. Deciding when to send
 * is the loop's business (server.c); this file only speaks the protocol.
 *
 * It owns nothing. It never unsets NOTIFY_SOCKET (the watchdog needs it
 * for the whole life of the process) and never blocks: sd_notify sends one
 * datagram. Without NOTIFY_SOCKET (not started by systemd) every call is a
 * no-op that returns 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "notify.h"

static int notify_send(const char *msg)
{
    int r = sd_notify(0, msg);
    return r < 0 ? r : 0;
}

int notify_ready(void)
{
    return notify_send("READY=1");
}

int notify_status(const char *fmt, ...)
{
    char msg[1024] = "STATUS=";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 7, sizeof(msg) - 7, fmt, ap);
    va_end(ap);
    /* A newline would start another assignment in the datagram. */
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return notify_send(msg);
}

int notify_reloading(void)
{
    /* systemd >= 253 wants the monotonic time of the reload request with
     * RELOADING=1 (Type=notify-reload); older versions ignore it. */
    struct timespec ts;
    char msg[64];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
             (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
    return notify_send(msg);
}

int notify_stopping(void)
{
    return notify_send("STOPPING=1");
}

int notify_watchdog(void)
{
    return notify_send("WATCHDOG=1");
}

int notify_watchdog_usec(uint64_t *usec)
{
    uint64_t u = 0;
    int r = sd_watchdog_enabled(0, &u);
    if (r <= 0)
        u = 0;
    *usec = u;
    return r < 0 ? r : r > 0;
}
