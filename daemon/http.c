/* daemon/http.c -- the daemon's HTTP face: Prometheus metrics, health and
 * readiness probes, the dense snapshot, per-user and per-topic JSON, a
 * Server-Sent Events stream and the dashboard page that reads it.
 *
 * libmicrohttpd runs in external epoll mode on the daemon's libuv loop:
 * MHD's epoll descriptor sits on a uv_poll_t, MHD_get_timeout re-arms a
 * uv_timer_t after every MHD_run, and no thread is ever created. This file
 * owns the MHD daemon, its uv handles, the SSE clients and their bounded
 * queues; the data it serves belongs to the daemon and is reached only
 * through the http_provider callbacks. It must never block the loop, never
 * let a request stop or crash the daemon (every malformed request gets a
 * 4xx and the connection may go on), never copy the snapshot (it is served
 * from the provider's buffer and released when the response is done), and
 * never stop MHD while a connection is suspended or while the epoll
 * descriptor is still watched by libuv.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dashboard.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"

#define HTTP_URL_MAX          2048  /* longest accepted path, bytes */
#define HTTP_ID_MAX           256   /* longest user id, as in the events */
#define HTTP_CONN_MAX         128   /* MHD_OPTION_CONNECTION_LIMIT */
#define HTTP_SSE_MAX          64    /* /events clients at once */
#define HTTP_SSE_QUEUE        64    /* events queued per client */
#define HTTP_SSE_REPLAY       48    /* recent events a new client receives */
#define HTTP_TIMEOUT_S        30    /* idle or stuck connection */
#define HTTP_MEMORY_LIMIT     32768 /* per connection: request + headers */
#define HTTP_SSE_KEEPALIVE_MS 15000

/* A new client's queue holds the retry hint and the whole replay. */
_Static_assert(HTTP_SSE_REPLAY + 1 <= HTTP_SSE_QUEUE, "replay fits a queue");
#define HTTP_TIMER_MAX_MS 60000
#define HTTP_SSE_BLOCK    4096

/* One formatted SSE frame shared by every client queue that holds it. */
struct sse_msg {
    unsigned refs;
    size_t len;
    char data[];
};

struct sse_client {
    struct http *h;
    struct sse_client *prev, *next;
    struct MHD_Connection *conn;
    struct sse_msg *q[HTTP_SSE_QUEUE]; /* ring: head, n */
    size_t head, n;
    struct sse_msg *cur; /* being written, from byte off */
    size_t off;
    bool suspended;
    bool closing;
};

struct http {
    uv_loop_t *loop;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t keepalive;
    int open_handles;
    struct MHD_Daemon *d;
    struct http_provider p;
    void *ctx;
    int port;
    char marker; /* *con_cls after the first call of a request */
    bool closing;
    void (*closed)(void *arg);
    void *closed_arg;

    struct sse_client *clients;
    unsigned nclients;
    struct sse_msg *recent[HTTP_SSE_REPLAY]; /* ring, replayed on connect */
    size_t recent_head, recent_n;
    struct sse_msg *hello; /* retry hint, first frame of every stream */
    struct sse_msg *ping;  /* keep-alive comment */

    struct metrics *m;
    struct metric *m_sse_clients;
    struct metric *m_sse_dropped;

    char *err; /* MHD's messages land here during http_start */
    size_t errlen;
    struct log_ratelimit log_rl;
};

static const char http_csp[] =
    "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/* ---- listen address ---------------------------------------------------- */

/* Resolves host (empty = every interface, IPv6 with IPv4 mapped when the
 * host has IPv6) into ss. */
static int listen_resolve(const char *host, unsigned port,
                          struct sockaddr_storage *ss, socklen_t *sslen,
                          char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    int rc;

    memset(ss, 0, sizeof(*ss));
    if (!*host) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd >= 0) {
            close(fd);
            a6->sin6_family = AF_INET6;
            a6->sin6_addr = in6addr_any;
            a6->sin6_port = htons((uint16_t)port);
            *sslen = sizeof(*a6);
        } else {
            struct sockaddr_in *a4 = (struct sockaddr_in *)ss;

            a4->sin_family = AF_INET;
            a4->sin_addr.s_addr = htonl(INADDR_ANY);
            a4->sin_port = htons((uint16_t)port);
            *sslen = sizeof(*a4);
        }
        return 0;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc || !res) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host,
                 rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -EADDRNOTAVAIL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        return -EAFNOSUPPORT;
    return 0;
}

/* Binds a throwaway socket the way MHD will, so that a busy port or a
 * foreign address comes back as its own errno and a clear message rather
 * than as a NULL daemon. */
static int listen_probe(const struct sockaddr_storage *ss, socklen_t sslen)
{
    int fd, one = 1, zero = 0, rc = 0;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, (const struct sockaddr *)ss, sslen))
        rc = -errno;
    close(fd);
    return rc;
}

/* ---- the MHD <-> libuv glue -------------------------------------------- */

static void on_timer(uv_timer_t *t);

static unsigned http_connections(struct http *h)
{
    const union MHD_DaemonInfo *i =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

    return i ? i->num_connections : 0;
}

/* Runs MHD once and re-arms the timer from MHD_get_timeout: MHD may have
 * work that no descriptor will announce (buffered data, a resumed
 * connection, a timeout to enforce). One more case needs a second run:
 * at the connection limit MHD takes the listening socket out of its epoll
 * set and puts it back only at the start of a later run, so when
 * connections closed during this run, clients already waiting in the
 * backlog would wait for an unrelated event unless we run again. */
static void http_run(struct http *h)
{
    MHD_UNSIGNED_LONG_LONG ms;
    unsigned before;

    if (!h->d)
        return;
    before = http_connections(h);
    MHD_run(h->d);
    if (http_connections(h) < before)
        ms = 0;
    else if (MHD_get_timeout(h->d, &ms) != MHD_YES) {
        uv_timer_stop(&h->timer);
        return;
    }
    uv_timer_start(&h->timer, on_timer,
                   ms > HTTP_TIMER_MAX_MS ? HTTP_TIMER_MAX_MS : ms, 0);
}

/* Asks for an MHD_run on the next loop iteration rather than now: the
 * caller may be inside a provider callback, itself inside MHD_run. */
static void http_kick(struct http *h)
{
    if (h->d)
        uv_timer_start(&h->timer, on_timer, 0, 0);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct http *h = p->data;

    if (status < 0 && log_ratelimit_ok(&h->log_rl, uv_now(h->loop), NULL))
        log_warn("http: poll: %s", uv_strerror(status));
    http_run(h);
}

static void on_timer(uv_timer_t *t)
{
    http_run(t->data);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct http *h = cls;
    char line[512];
    size_t n;

    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (h->err) {
        /* Start-up: the first message is the one that explains. */
        if (!h->err[0])
            snprintf(h->err, h->errlen, "%s", line);
        return;
    }
    if (log_ratelimit_ok(&h->log_rl, uv_now(h->loop), NULL))
        log_debug("http: %s", line);
}

/* Keeps the path as sent: this file decodes it itself, strictly, so a bad
 * escape is a 400 and "%2F" inside a user id is not a path separator. */
static size_t unescape_none(void *cls, struct MHD_Connection *c, char *s)
{
    return strlen(s);
}

/* ---- responses --------------------------------------------------------- */

static void http_count(struct http *h, unsigned code)
{
    char labels[32];

    if (!h->m)
        return;
    snprintf(labels, sizeof(labels), "code=\"%u\"", code);
    metric_inc(metrics_counter(h->m, "nmfd_http_requests_total",
                               "HTTP requests answered, by status code.",
                               labels));
}

/* Queues r with the common headers and drops our reference. */
static enum MHD_Result http_queue(struct http *h, struct MHD_Connection *c,
                                  unsigned code, const char *type,
                                  struct MHD_Response *r)
{
    enum MHD_Result ret;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    http_count(h, code);
    return ret;
}

static enum MHD_Result reply_static(struct http *h, struct MHD_Connection *c,
                                    unsigned code, const char *type,
                                    const void *body, size_t len)
{
    return http_queue(h, c, code, type,
                      MHD_create_response_from_buffer(len, (void *)body,
                                                      MHD_RESPMEM_PERSISTENT));
}

static enum MHD_Result reply_text(struct http *h, struct MHD_Connection *c,
                                  unsigned code, const char *text)
{
    return reply_static(h, c, code, "text/plain; charset=utf-8", text,
                        strlen(text));
}

/* Serves a malloc'd body and frees it, whatever happens. */
static enum MHD_Result reply_owned(struct http *h, struct MHD_Connection *c,
                                   unsigned code, const char *type, char *body,
                                   size_t len)
{
    struct MHD_Response *r;

    r = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    return http_queue(h, c, code, type, r);
}

static enum MHD_Result reply_json(struct http *h, struct MHD_Connection *c,
                                  int rc, char *json, const char *missing)
{
    if (rc == -ENOENT) {
        free(json);
        return reply_text(h, c, MHD_HTTP_NOT_FOUND, missing);
    }
    if (rc < 0 || !json) {
        free(json);
        return reply_text(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                          "internal error\n");
    }
    return reply_owned(h, c, MHD_HTTP_OK, "application/json", json,
                       strlen(json));
}

/* ---- Server-Sent Events ------------------------------------------------ */

static struct sse_msg *sse_msg_new(const char *text, size_t len)
{
    struct sse_msg *m = malloc(sizeof(*m) + len + 1);

    if (!m)
        return NULL;
    m->refs = 1;
    m->len = len;
    memcpy(m->data, text, len);
    m->data[len] = '\0';
    return m;
}

static struct sse_msg *sse_msg_ref(struct sse_msg *m)
{
    m->refs++;
    return m;
}

static void sse_msg_unref(struct sse_msg *m)
{
    if (m && --m->refs == 0)
        free(m);
}

/* "event: E\ndata: line\n...\n\n": a payload with newlines becomes several
 * data lines, which the client joins back with newlines. */
static struct sse_msg *sse_msg_event(const char *event, const char *data)
{
    struct sse_msg *m;
    char *buf = NULL;
    size_t n = 0;
    const char *p;
    FILE *f = open_memstream(&buf, &n);

    if (!f)
        return NULL;
    fprintf(f, "event: %s\n", event);
    for (p = data;;) {
        size_t k = strcspn(p, "\r\n");

        fputs("data: ", f);
        fwrite(p, 1, k, f);
        fputc('\n', f);
        p += k;
        if (!*p)
            break;
        p += (p[0] == '\r' && p[1] == '\n') ? 2 : 1;
    }
    fputc('\n', f);
    if (ferror(f) | fclose(f)) {
        free(buf);
        return NULL;
    }
    m = sse_msg_new(buf, n);
    free(buf);
    return m;
}

static void sse_update_gauge(struct http *h)
{
    metric_set(h->m_sse_clients, h->nclients);
}

static void sse_resume(struct sse_client *cl)
{
    if (cl->suspended) {
        cl->suspended = false;
        MHD_resume_connection(cl->conn);
    }
}

/* Appends m to the client's ring; a full ring loses its oldest frame (the
 * page only needs the newest state), counted as a drop. */
static void sse_push(struct sse_client *cl, struct sse_msg *m)
{
    struct http *h = cl->h;

    if (cl->n == HTTP_SSE_QUEUE) {
        sse_msg_unref(cl->q[cl->head]);
        cl->head = (cl->head + 1) % HTTP_SSE_QUEUE;
        cl->n--;
        metric_inc(h->m_sse_dropped);
    }
    cl->q[(cl->head + cl->n) % HTTP_SSE_QUEUE] = sse_msg_ref(m);
    cl->n++;
    sse_resume(cl);
}

/* MHD asks for more of the stream. With nothing queued the connection is
 * suspended (returning 0 without suspending would spin the loop) until a
 * broadcast or the keep-alive resumes it. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse_client *cl = cls;
    size_t n = 0, k;

    while (n < max) {
        if (!cl->cur) {
            if (!cl->n)
                break;
            cl->cur = cl->q[cl->head];
            cl->head = (cl->head + 1) % HTTP_SSE_QUEUE;
            cl->n--;
            cl->off = 0;
        }
        k = cl->cur->len - cl->off;
        if (k > max - n)
            k = max - n;
        memcpy(buf + n, cl->cur->data + cl->off, k);
        n += k;
        cl->off += k;
        if (cl->off == cl->cur->len) {
            sse_msg_unref(cl->cur);
            cl->cur = NULL;
        }
    }
    if (n)
        return (ssize_t)n;
    if (cl->closing)
        return MHD_CONTENT_READER_END_OF_STREAM;
    cl->suspended = true;
    MHD_suspend_connection(cl->conn);
    return 0;
}

/* The response is gone (client left, error, or daemon stop). */
static void sse_free(void *cls)
{
    struct sse_client *cl = cls;
    struct http *h = cl->h;

    if (cl->prev)
        cl->prev->next = cl->next;
    else
        h->clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    h->nclients--;
    sse_update_gauge(h);
    while (cl->n) {
        sse_msg_unref(cl->q[cl->head]);
        cl->head = (cl->head + 1) % HTTP_SSE_QUEUE;
        cl->n--;
    }
    sse_msg_unref(cl->cur);
    free(cl);
}

static enum MHD_Result sse_open(struct http *h, struct MHD_Connection *c,
                                bool head)
{
    struct MHD_Response *r;
    struct sse_client *cl;

    if (head)
        return reply_static(h, c, MHD_HTTP_OK, "text/event-stream", "", 0);
    if (h->nclients >= HTTP_SSE_MAX)
        return reply_text(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "too many event streams\n");
    cl = calloc(1, sizeof(*cl));
    if (!cl)
        return MHD_NO;
    cl->h = h;
    cl->conn = c;
    cl->q[cl->n++] = sse_msg_ref(h->hello);
    for (size_t i = 0; i < h->recent_n; i++)
        cl->q[cl->n++] =
            sse_msg_ref(h->recent[(h->recent_head + i) % HTTP_SSE_REPLAY]);
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_SSE_BLOCK,
                                          sse_read, cl, sse_free);
    /* Linked first: from here on sse_free (run when MHD drops r) unlinks. */
    cl->next = h->clients;
    if (h->clients)
        h->clients->prev = cl;
    h->clients = cl;
    h->nclients++;
    sse_update_gauge(h);
    if (!r) {
        sse_free(cl);
        return MHD_NO;
    }
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    return http_queue(h, c, MHD_HTTP_OK, "text/event-stream", r);
}

/* Keeps the last HTTP_SSE_REPLAY events, so that a page opened now draws
 * recent history at once instead of one point per epoch from now on. */
static void recent_push(struct http *h, struct sse_msg *m)
{
    if (h->recent_n == HTTP_SSE_REPLAY) {
        sse_msg_unref(h->recent[h->recent_head]);
        h->recent_head = (h->recent_head + 1) % HTTP_SSE_REPLAY;
        h->recent_n--;
    }
    h->recent[(h->recent_head + h->recent_n) % HTTP_SSE_REPLAY] =
        sse_msg_ref(m);
    h->recent_n++;
}

static void recent_clear(struct http *h)
{
    while (h->recent_n) {
        sse_msg_unref(h->recent[h->recent_head]);
        h->recent_head = (h->recent_head + 1) % HTTP_SSE_REPLAY;
        h->recent_n--;
    }
}

void http_sse_broadcast(struct http *h, const char *event, const char *json)
{
    struct sse_client *cl;
    struct sse_msg *m;

    if (!h || h->closing || !event || !json || !*event ||
        strpbrk(event, "\r\n"))
        return;
    m = sse_msg_event(event, json);
    if (!m)
        return;
    recent_push(h, m);
    for (cl = h->clients; cl; cl = cl->next)
        sse_push(cl, m);
    sse_msg_unref(m);
    if (h->clients)
        http_kick(h);
}

/* A comment line every HTTP_SSE_KEEPALIVE_MS to idle clients: proxies
 * keep the stream open, and a client that went away while suspended is
 * found out by the failed write. */
static void on_keepalive(uv_timer_t *t)
{
    struct http *h = t->data;
    struct sse_client *cl;

    for (cl = h->clients; cl; cl = cl->next)
        if (!cl->n && !cl->cur)
            sse_push(cl, h->ping);
    if (h->clients)
        http_kick(h);
}

/* ---- routes ------------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Strict percent-decoding of a path segment into out (NUL-terminated).
 * Returns the length, or -EINVAL for a bad escape or an encoded NUL, or
 * -ENAMETOOLONG past max bytes. */
static int path_decode(const char *s, char *out, size_t max)
{
    size_t n = 0;
    int hi, lo;

    for (; *s; s++) {
        int c = (unsigned char)*s;

        if (c == '%') {
            hi = hexval((unsigned char)s[1]);
            lo = hi < 0 ? -1 : hexval((unsigned char)s[2]);
            if (lo < 0)
                return -EINVAL;
            c = hi * 16 + lo;
            if (c == 0)
                return -EINVAL;
            s += 2;
        }
        if (n == max)
            return -ENAMETOOLONG;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return (int)n;
}

static enum MHD_Result route_user(struct http *h, struct MHD_Connection *c,
                                  const char *raw)
{
    char id[HTTP_ID_MAX + 1], *json = NULL;
    int rc;

    if (!h->p.user_json)
        return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
    rc = path_decode(raw, id, HTTP_ID_MAX);
    if (rc == -ENAMETOOLONG)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "user id too long\n");
    if (rc < 0)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST,
                          "bad percent-encoding in user id\n");
    if (rc == 0)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "empty user id\n");
    rc = h->p.user_json(h->ctx, id, &json);
    return reply_json(h, c, rc, json, "no such user\n");
}

static enum MHD_Result route_snapshot(struct http *h, struct MHD_Connection *c)
{
    void (*release)(void *) = NULL;
    struct MHD_Response *r;
    const void *buf = NULL;
    void *rctx = NULL;
    size_t len = 0;
    int rc;

    if (!h->p.snapshot)
        return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
    rc = h->p.snapshot(h->ctx, &buf, &len, &release, &rctx);
    if (rc == -EAGAIN || rc == -ENOENT)
        return reply_text(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "no snapshot yet\n");
    if (rc < 0 || !buf)
        return reply_text(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                          "internal error\n");
    if (release)
        r = MHD_create_response_from_buffer_with_free_callback_cls(
            len, (void *)buf, release, rctx);
    else
        r = MHD_create_response_from_buffer(len, (void *)buf,
                                            MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (release)
            release(rctx);
        return MHD_NO;
    }
    return http_queue(h, c, MHD_HTTP_OK, "application/msgpack", r);
}

static enum MHD_Result route(struct http *h, struct MHD_Connection *c,
                             const char *url, bool head)
{
    char *text = NULL;
    const char *why = NULL;
    size_t len = 0;
    int rc;

    if (!strcmp(url, "/")) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            dashboard_html_len, (void *)dashboard_html, MHD_RESPMEM_PERSISTENT);

        if (r)
            MHD_add_response_header(r, "Content-Security-Policy", http_csp);
        return http_queue(h, c, MHD_HTTP_OK, "text/html; charset=utf-8", r);
    }
    if (!strcmp(url, "/metrics")) {
        if (!h->p.metrics)
            return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
        rc = h->p.metrics(h->ctx, &text, &len);
        if (rc < 0 || !text) {
            free(text);
            return reply_text(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                              "internal error\n");
        }
        return reply_owned(h, c, MHD_HTTP_OK,
                           "text/plain; version=0.0.4; charset=utf-8", text,
                           len);
    }
    if (!strcmp(url, "/healthz")) {
        if (!h->p.health)
            return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
        if (h->p.health(h->ctx) == 0)
            return reply_text(h, c, MHD_HTTP_OK, "ok\n");
        return reply_text(h, c, MHD_HTTP_SERVICE_UNAVAILABLE, "unhealthy\n");
    }
    if (!strcmp(url, "/readyz")) {
        char *body;

        if (!h->p.ready)
            return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
        if (h->p.ready(h->ctx, &why) == 0)
            return reply_text(h, c, MHD_HTTP_OK, "ready\n");
        if (asprintf(&body, "not ready: %s\n", why ? why : "starting") < 0)
            return MHD_NO;
        return reply_owned(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                           "text/plain; charset=utf-8", body, strlen(body));
    }
    if (!strcmp(url, "/snapshot"))
        return route_snapshot(h, c);
    if (!strcmp(url, "/topics")) {
        if (!h->p.topics_json)
            return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
        rc = h->p.topics_json(h->ctx, &text);
        return reply_json(h, c, rc, text, "not found\n");
    }
    if (!strncmp(url, "/users/", 7))
        return route_user(h, c, url + 7);
    if (!strcmp(url, "/events"))
        return sse_open(h, c, head);
    return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
}

static bool has_body(struct MHD_Connection *c)
{
    const char *cl, *te;

    cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    te = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return te || (cl && strspn(cl, "0") != strlen(cl));
}

/* MHD calls this at least twice per request: first with the headers (we
 * only mark the request), then once the (empty) body is in; answering on
 * the second call lets MHD keep the connection alive. A request with a
 * body is answered at once, and MHD closes that connection. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct http *h = cls;
    bool get = !strcmp(method, MHD_HTTP_METHOD_GET);
    bool head = !strcmp(method, MHD_HTTP_METHOD_HEAD);

    if (!*con_cls) {
        *con_cls = &h->marker;
        if (!has_body(c))
            return MHD_YES;
        if (!get && !head)
            return reply_text(h, c, MHD_HTTP_METHOD_NOT_ALLOWED,
                              "method not allowed\n");
        return reply_text(h, c, MHD_HTTP_CONTENT_TOO_LARGE,
                          "request body not allowed\n");
    }
    if (*upload_size) {
        /* Only reached if a body slipped past has_body; swallow it. */
        *upload_size = 0;
        return MHD_YES;
    }
    if (h->closing)
        return MHD_NO;
    if (!get && !head)
        return reply_text(h, c, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "method not allowed\n");
    if (strlen(url) > HTTP_URL_MAX)
        return reply_text(h, c, MHD_HTTP_URI_TOO_LONG, "uri too long\n");
    return route(h, c, url, head);
}

/* ---- life cycle -------------------------------------------------------- */

int http_start(struct http **out, uv_loop_t *loop, const char *listen,
               const struct http_provider *p, void *ctx, char *err,
               size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    char host[256], dummy[1];
    const union MHD_DaemonInfo *info;
    const char *msg;
    unsigned flags;
    uint16_t port;
    struct http *h = NULL;
    int rc, epfd;

    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (!out || !loop || !p) {
        snprintf(err, errlen, "http: bad arguments");
        return -EINVAL;
    }
    msg = listen_parse(listen, host, sizeof(host), &port);
    if (msg) {
        snprintf(err, errlen, "http.listen '%s': %s", listen ? listen : "",
                 msg);
        return -EINVAL;
    }
    rc = listen_resolve(host, port, &ss, &sslen, err, errlen);
    if (rc < 0)
        return rc;
    rc = listen_probe(&ss, sslen);
    if (rc < 0) {
        snprintf(err, errlen, "http.listen '%s': %s", listen, strerror(-rc));
        return rc;
    }

    h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "http: out of memory");
        return -ENOMEM;
    }
    h->loop = loop;
    h->p = *p;
    h->ctx = ctx;
    h->log_rl.interval_ms = 10000;
    h->log_rl.burst = 10;
    h->hello = sse_msg_new("retry: 2000\n\n", 13);
    h->ping = sse_msg_new(": keep-alive\n\n", 14);
    if (!h->hello || !h->ping) {
        snprintf(err, errlen, "http: out of memory");
        rc = -ENOMEM;
        goto fail;
    }

    flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= host[0] ? MHD_USE_IPv6 : MHD_USE_DUAL_STACK;
    h->err = err;
    h->errlen = errlen;
    h->d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)HTTP_CONN_MAX, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)HTTP_MEMORY_LIMIT, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)64,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_END);
    h->err = NULL;
    if (!h->d) {
        char why[256];

        snprintf(why, sizeof(why), "%s", err[0] ? err : "cannot start");
        snprintf(err, errlen, "http.listen '%s': %s", listen, why);
        rc = -EIO;
        goto fail;
    }
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    epfd = info ? info->epoll_fd : -1;
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (int)port;
    if (epfd < 0) {
        snprintf(err, errlen, "http: no epoll descriptor");
        rc = -EIO;
        goto fail;
    }
    rc = uv_poll_init(loop, &h->poll, epfd);
    if (rc < 0) {
        snprintf(err, errlen, "http: uv_poll_init: %s", uv_strerror(rc));
        goto fail;
    }
    uv_timer_init(loop, &h->timer);
    uv_timer_init(loop, &h->keepalive);
    h->poll.data = h->timer.data = h->keepalive.data = h;
    h->open_handles = 3;
    uv_poll_start(&h->poll, UV_READABLE, on_poll);
    uv_timer_start(&h->keepalive, on_keepalive, HTTP_SSE_KEEPALIVE_MS,
                   HTTP_SSE_KEEPALIVE_MS);
    http_kick(h);
    *out = h;
    return 0;

fail:
    if (h->d)
        MHD_stop_daemon(h->d);
    sse_msg_unref(h->hello);
    sse_msg_unref(h->ping);
    free(h);
    return rc;
}

int http_port(const struct http *h)
{
    return h ? h->port : -EINVAL;
}

int http_metrics_register(struct http *h, struct metrics *m)
{
    if (!h || !m)
        return -EINVAL;
    h->m = m;
    h->m_sse_clients = metrics_gauge(m, "nmfd_http_sse_clients",
                                     "Clients connected to /events.", NULL);
    h->m_sse_dropped = metrics_counter(
        m, "nmfd_http_sse_dropped_total",
        "Events dropped because a client's queue was full.", NULL);
    if (!h->m_sse_clients || !h->m_sse_dropped)
        return -ENOMEM;
    sse_update_gauge(h);
    return 0;
}

static void on_handle_closed(uv_handle_t *hd)
{
    struct http *h = hd->data;
    void (*closed)(void *);
    void *arg;

    if (--h->open_handles > 0)
        return;
    closed = h->closed;
    arg = h->closed_arg;
    free(h);
    if (closed)
        closed(arg);
}

void http_close(struct http *h, void (*closed)(void *arg), void *arg)
{
    struct sse_client *cl;

    if (!h || h->closing)
        return;
    h->closing = true;
    h->closed = closed;
    h->closed_arg = arg;
    /* libuv must stop watching the epoll descriptor before MHD closes it;
     * uv_close stops the poll at once, the callback comes later. */
    uv_close((uv_handle_t *)&h->poll, on_handle_closed);
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    uv_close((uv_handle_t *)&h->keepalive, on_handle_closed);
    /* MHD refuses to stop with a suspended connection: resume them all,
     * told to end their stream. */
    for (cl = h->clients; cl; cl = cl->next) {
        cl->closing = true;
        sse_resume(cl);
    }
    MHD_stop_daemon(h->d);
    h->d = NULL;
    recent_clear(h);
    sse_msg_unref(h->hello);
    sse_msg_unref(h->ping);
    h->hello = h->ping = NULL;
}
