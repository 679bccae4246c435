/* notify.h -- the sd_notify protocol for Type=notify: READY, STATUS,
 * RELOADING, STOPPING, WATCHDOG. Every call is a no-op returning 0 when
 * NOTIFY_SOCKET is unset (not started by systemd). Functions return 0 or
 * a negative errno.
 */
#ifndef NMFD_DAEMON_NOTIFY_H
#define NMFD_DAEMON_NOTIFY_H

#include <stdint.h>

/* READY=1: state loaded, consumer subscribed (also ends a reload). */
int notify_ready(void);
/* STATUS=<printf text>. */
int notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* RELOADING=1 at the start of a SIGHUP reload; notify_ready() ends it. */
int notify_reloading(void);
/* STOPPING=1 at the start of a clean stop. */
int notify_stopping(void);
/* WATCHDOG=1; call it only when the loop made progress. */
int notify_watchdog(void);
/* The watchdog interval systemd expects pings within: 0 disabled (usec =
 * 0), 1 enabled (usec set), negative errno on a malformed WATCHDOG_USEC or
 * WATCHDOG_PID, which the caller must treat as an error. */
int notify_watchdog_usec(uint64_t *usec);

#endif
