/* test_notify.c -- the sd_notify wrapper against a stand-in for systemd: a
 * unix datagram socket named by NOTIFY_SOCKET. Checks each message's text
 * and their order, the no-op without NOTIFY_SOCKET, and the watchdog
 * interval parsing (including the malformed values the loop must treat as
 * an error). Criterion runs each test in its own process, so the
 * environment changes stay local.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

static char dir[40];
static char path[64];
static int sock = -1;

static void socket_open(void)
{
    snprintf(dir, sizeof(dir), "/tmp/nmfd-notify-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/notify", dir);
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(sock, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    cr_assert_eq(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s",
                 strerror(errno));
    setenv("NOTIFY_SOCKET", path, 1);
}

static void socket_close(void)
{
    if (sock >= 0)
        close(sock);
    unlink(path);
    rmdir(dir);
}

/* The next datagram, waiting at most one second. */
static void expect(const char *want)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    char buf[1024];
    cr_assert_eq(poll(&p, 1, 1000), 1, "no message, expected '%s'", want);
    ssize_t n = recv(sock, buf, sizeof(buf) - 1, 0);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert_str_eq(buf, want);
}

static void expect_prefix(const char *want)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    char buf[1024];
    cr_assert_eq(poll(&p, 1, 1000), 1, "no message, expected '%s'", want);
    ssize_t n = recv(sock, buf, sizeof(buf) - 1, 0);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert_eq(strncmp(buf, want, strlen(want)), 0, "got '%s'", buf);
}

static void expect_nothing(void)
{
    struct pollfd p = {.fd = sock, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0);
}

Test(notify, noop_without_socket)
{
    uint64_t usec = 123;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    cr_assert_eq(notify_ready(), 0);
    cr_assert_eq(notify_status("x %d", 1), 0);
    cr_assert_eq(notify_reloading(), 0);
    cr_assert_eq(notify_watchdog(), 0);
    cr_assert_eq(notify_stopping(), 0);
    cr_assert_eq(notify_watchdog_usec(&usec), 0);
    cr_assert_eq(usec, 0);
}

Test(notify, messages_in_order, .init = socket_open, .fini = socket_close)
{
    cr_assert_eq(notify_status("loading checkpoint"), 0);
    cr_assert_eq(notify_ready(), 0);
    cr_assert_eq(notify_status("%d events/s, lag %d", 1500, 42), 0);
    cr_assert_eq(notify_watchdog(), 0);
    cr_assert_eq(notify_reloading(), 0);
    cr_assert_eq(notify_ready(), 0);
    cr_assert_eq(notify_stopping(), 0);

    expect("STATUS=loading checkpoint");
    expect("READY=1");
    expect("STATUS=1500 events/s, lag 42");
    expect("WATCHDOG=1");
    expect_prefix("RELOADING=1\nMONOTONIC_USEC=");
    expect("READY=1");
    expect("STOPPING=1");
    expect_nothing();
    /* The socket stays named for the watchdog's whole life. */
    cr_assert_str_eq(getenv("NOTIFY_SOCKET"), path);
}

Test(notify, status_is_one_line, .init = socket_open, .fini = socket_close)
{
    cr_assert_eq(notify_status("two\nlines"), 0);
    expect("STATUS=two lines");
}

Test(notify, abstract_socket)
{
    char name[64];
    snprintf(name, sizeof(name), "nmfd-test-%d", (int)getpid());
    sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(sock, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path + 1, name, strlen(name));
    cr_assert_eq(bind(sock, (struct sockaddr *)&sa,
                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                                  strlen(name))),
                 0);
    char env[80];
    snprintf(env, sizeof(env), "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    cr_assert_eq(notify_ready(), 0);
    expect("READY=1");
    close(sock);
}

Test(notify, unreachable_socket_is_an_error)
{
    setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
    cr_assert_lt(notify_ready(), 0);
    cr_assert_lt(notify_watchdog(), 0);
}

Test(notify, watchdog_interval)
{
    char pid[32];
    uint64_t usec = 1;
    snprintf(pid, sizeof(pid), "%d", (int)getpid());

    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    cr_assert_eq(notify_watchdog_usec(&usec), 0);
    cr_assert_eq(usec, 0);

    setenv("WATCHDOG_USEC", "30000000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    cr_assert_eq(notify_watchdog_usec(&usec), 1);
    cr_assert_eq(usec, 30000000);

    /* Meant for another process (e.g. our parent): disabled for us. */
    setenv("WATCHDOG_PID", "1", 1);
    cr_assert_eq(notify_watchdog_usec(&usec), 0);
    cr_assert_eq(usec, 0);

    /* Malformed values are errors, not "disabled". */
    setenv("WATCHDOG_PID", pid, 1);
    setenv("WATCHDOG_USEC", "soon", 1);
    cr_assert_lt(notify_watchdog_usec(&usec), 0);
    cr_assert_eq(usec, 0);
    setenv("WATCHDOG_USEC", "0", 1);
    cr_assert_lt(notify_watchdog_usec(&usec), 0);
    setenv("WATCHDOG_USEC", "1000", 1);
    setenv("WATCHDOG_PID", "not-a-pid", 1);
    cr_assert_lt(notify_watchdog_usec(&usec), 0);
}
