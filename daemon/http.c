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
 *
 * It also keeps the listener available to everyone under hostile clients
 * and the data to those allowed to read it. Every accepted connection is
 * tracked (MHD_OPTION_NOTIFY_CONNECTION) with its client address, so the
 * accept policy refuses past a per-address and a total limit, and a guard
 * timer cuts a connection that has not completed its request headers by
 * a deadline counted from accept (or from the end of its previous
 * request), which MHD's idle timeout cannot do: a slowloris that dribbles
 * a byte now and then resets an idle timer forever. /events streams are
 * capped per address and in total, and a reader a whole queue behind is
 * cut off. Each refusal is counted in nmfd_http_refused_total{reason}.
 * Routes other than the probes need the credentials of http_auth.c. The
 * listening socket is our own, handed to MHD as a duplicate, so a TLS
 * reload starts a new MHD daemon on the same socket and stops the old one
 * without ever closing the port.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
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
#include "http_auth.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"

#define HTTP_URL_MAX          2048 /* longest accepted path, bytes */
#define HTTP_ID_MAX           256  /* longest user id, as in the events */
#define HTTP_SSE_REPLAY       48   /* recent events a new client receives */
#define HTTP_SSE_QUEUE_MIN    (HTTP_SSE_REPLAY + 2) /* hint, replay, one */
#define HTTP_SSE_KEEPALIVE_MS 15000
#define HTTP_TIMER_MAX_MS     60000
#define HTTP_SSE_BLOCK        4096
#define HTTP_BACKLOG          128

/* Why a connection or a stream was refused or cut; the label values of
 * nmfd_http_refused_total, in this order. */
enum http_refusal {
    REFUSED_PER_ADDRESS,     /* at accept: this address has its share */
    REFUSED_TOTAL,           /* at accept: the listener is full */
    REFUSED_HEADER_DEADLINE, /* headers not complete in time */
    REFUSED_SSE_PER_ADDRESS, /* /events 503: this address has its share */
    REFUSED_SSE_TOTAL,       /* /events 503: all streams taken */
    REFUSED_SSE_SLOW,        /* a stream a whole queue behind, cut off */
    REFUSED_N
};
static const char *const refusal_names[REFUSED_N] = {
    "per_address",     "total",     "header_deadline",
    "sse_per_address", "sse_total", "sse_slow",
};

/* Failed credentials on a protected route: the label values of
 * nmfd_http_auth_failures_total. */
static const char *const auth_fail_names[] = {"missing", "wrong", "busy"};

/* A client address as the limits see it: IPv4 (as v4-mapped IPv6) whole,
 * IPv6 by its /64, the share one host is usually given. */
struct addr_key {
    uint8_t b[16];
};

/* One accepted connection: MHD's socket context. */
struct http_conn {
    struct http_conn *prev, *next;
    struct MHD_Connection *c;
    struct addr_key addr;
    uint64_t deadline_ms; /* headers due (loop time); 0 = in a request */
};

/* One MHD daemon on the loop: its epoll descriptor on a uv_poll_t. A TLS
 * reload replaces it; the old one's handle frees it once closed. */
struct http_mhd {
    struct http *h;
    struct MHD_Daemon *d;
    uv_poll_t poll;
    char *cert, *key; /* PEM, kept while d runs */
};

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
    struct MHD_Daemon *d; /* the daemon serving it */
    struct addr_key addr;
    struct sse_msg *cur; /* being written, from byte off */
    size_t off;
    bool suspended;
    bool closing;
    bool cut; /* fell a whole queue behind; its socket is shut */
    size_t head, n;
    struct sse_msg *q[]; /* ring of h->o.sse_queue: head, n */
};

struct http {
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_timer_t keepalive;
    uv_timer_t guard; /* header deadlines */
    int open_handles;
    struct http_mhd *mhd; /* the running daemon */
    int lfd;              /* our listening socket; MHD gets duplicates */
    struct http_provider p;
    void *ctx;
    int port;
    char marker; /* *con_cls after the first call of a request */
    bool closing;
    void (*closed)(void *arg);
    void *closed_arg;

    struct http_opts o; /* strings owned */
    struct http_auth *auth;
    struct http_conn *conns;
    unsigned nconns;

    struct sse_client *clients;
    unsigned nclients;
    struct sse_msg *recent[HTTP_SSE_REPLAY]; /* ring, replayed on connect */
    size_t recent_head, recent_n;
    struct sse_msg *hello; /* retry hint, first frame of every stream */
    struct sse_msg *ping;  /* keep-alive comment */

    struct metrics *m;
    struct metric *m_sse_clients;
    struct metric *m_sse_dropped;
    struct metric *m_conns;
    struct metric *m_refused[REFUSED_N];
    struct metric *m_auth_fail[3];
    struct metric *m_tls_reload[2]; /* ok, error */

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

/* Opens the listening socket that every MHD daemon of this endpoint
 * serves (as a duplicate), so that a busy port or a foreign address comes
 * back as its own errno, and a TLS reload never closes the port. An empty
 * host listens on IPv6 and IPv4 alike. */
static int listen_open(const struct sockaddr_storage *ss, socklen_t sslen,
                       bool dual, int *out)
{
    int fd, one = 1, v6only = !dual, rc;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
    if (bind(fd, (const struct sockaddr *)ss, sslen) ||
        listen(fd, HTTP_BACKLOG)) {
        rc = -errno;
        close(fd);
        return rc;
    }
    *out = fd;
    return 0;
}

static int listen_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return -errno;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- the MHD <-> libuv glue -------------------------------------------- */

static void on_timer(uv_timer_t *t);

static unsigned http_connections(struct MHD_Daemon *d)
{
    const union MHD_DaemonInfo *i =
        MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

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
    struct MHD_Daemon *d = h->mhd ? h->mhd->d : NULL;
    unsigned before;

    if (!d)
        return;
    before = http_connections(d);
    MHD_run(d);
    if (http_connections(d) < before)
        ms = 0;
    else if (MHD_get_timeout(d, &ms) != MHD_YES) {
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
    if (h->mhd)
        uv_timer_start(&h->timer, on_timer, 0, 0);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct http *h = ((struct http_mhd *)p->data)->h;

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

/* ---- connections: limits and deadlines --------------------------------- */

static void addr_key_of(const struct sockaddr *sa, struct addr_key *k)
{
    memset(k, 0, sizeof(*k));
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        k->b[10] = k->b[11] = 0xff;
        memcpy(k->b + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 =
            &((const struct sockaddr_in6 *)sa)->sin6_addr;

        if (IN6_IS_ADDR_V4MAPPED(a6))
            memcpy(k->b, a6, 16);
        else
            memcpy(k->b, a6, 8);
    }
}

static bool addr_eq(const struct addr_key *a, const struct addr_key *b)
{
    return !memcmp(a, b, sizeof(*a));
}

static void refuse_count(struct http *h, enum http_refusal why)
{
    metric_inc(h->m_refused[why]);
}

static struct http_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return ci ? ci->socket_context : NULL;
}

/* Ends a connection from outside MHD: the shut socket reads as closed on
 * MHD's next run, which then drops it (and its response) the usual way. */
static void conn_kill(struct http *h, struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

    if (ci)
        shutdown(ci->connect_fd, SHUT_RDWR);
    http_kick(h);
}

/* MHD's accept policy: runs before a connection is taken on. The limits
 * are ours rather than MHD_OPTION_PER_IP_CONNECTION_LIMIT's and the
 * connection limit's: MHD drops those silently (or leaves the client in
 * the backlog), and every refusal here is counted. MHD's own connection
 * limit sits one above max_connections as a backstop. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *sa,
                                 socklen_t len)
{
    struct http *h = cls;
    struct addr_key k;
    unsigned same = 0;

    if (h->nconns >= h->o.max_connections) {
        refuse_count(h, REFUSED_TOTAL);
        return MHD_NO;
    }
    addr_key_of(sa, &k);
    for (struct http_conn *hc = h->conns; hc; hc = hc->next)
        if (addr_eq(&hc->addr, &k) && ++same >= h->o.max_per_address) {
            refuse_count(h, REFUSED_PER_ADDRESS);
            return MHD_NO;
        }
    return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **sctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http *h = cls;
    struct http_conn *hc = *sctx;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

        hc = calloc(1, sizeof(*hc));
        if (!hc) {
            /* Untracked, it would escape every limit: end it now. */
            conn_kill(h, c);
            return;
        }
        hc->c = c;
        addr_key_of(ci ? ci->client_addr : NULL, &hc->addr);
        hc->deadline_ms = uv_now(h->loop) + h->o.header_timeout_ms;
        hc->next = h->conns;
        if (h->conns)
            h->conns->prev = hc;
        h->conns = hc;
        h->nconns++;
        *sctx = hc;
    } else if (hc) {
        if (hc->prev)
            hc->prev->next = hc->next;
        else
            h->conns = hc->next;
        if (hc->next)
            hc->next->prev = hc->prev;
        h->nconns--;
        free(hc);
        *sctx = NULL;
    }
    metric_set(h->m_conns, h->nconns);
}

/* A request is done: the connection may idle for its keep-alive time and
 * must then bring the next request's headers within the header time. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http *h = cls;
    struct http_conn *hc = conn_of(c);

    if (hc)
        hc->deadline_ms =
            uv_now(h->loop) + h->o.idle_timeout_ms + h->o.header_timeout_ms;
}

/* Cuts every connection past its header deadline. */
static void on_guard(uv_timer_t *t)
{
    struct http *h = t->data;
    uint64_t now = uv_now(h->loop);

    for (struct http_conn *hc = h->conns; hc; hc = hc->next)
        if (hc->deadline_ms && now >= hc->deadline_ms) {
            hc->deadline_ms = 0;
            refuse_count(h, REFUSED_HEADER_DEADLINE);
            conn_kill(h, hc->c);
        }
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

/* 503 with a hint to come back in a while. */
static enum MHD_Result reply_busy(struct http *h, struct MHD_Connection *c,
                                  const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);

    if (r)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "10");
    return http_queue(h, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                      "text/plain; charset=utf-8", r);
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

static void sse_queue_clear(struct sse_client *cl)
{
    size_t qn = cl->h->o.sse_queue;

    while (cl->n) {
        sse_msg_unref(cl->q[cl->head]);
        cl->head = (cl->head + 1) % qn;
        cl->n--;
    }
}

/* Appends m to the client's ring. A client with a full ring is a whole
 * queue behind: it is cut off (its queue freed, its socket shut) rather
 * than fed forever; a browser reconnects and gets the replay, which ends
 * with the newest state, all the page needs. */
static void sse_push(struct sse_client *cl, struct sse_msg *m)
{
    struct http *h = cl->h;
    size_t qn = h->o.sse_queue;

    if (cl->cut)
        return;
    if (cl->n == qn) {
        metric_inc(h->m_sse_dropped);
        refuse_count(h, REFUSED_SSE_SLOW);
        sse_queue_clear(cl);
        cl->cut = cl->closing = true;
        sse_resume(cl);
        conn_kill(h, cl->conn);
        return;
    }
    cl->q[(cl->head + cl->n) % qn] = sse_msg_ref(m);
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
            cl->head = (cl->head + 1) % cl->h->o.sse_queue;
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
    sse_queue_clear(cl);
    sse_msg_unref(cl->cur);
    free(cl);
}

static enum MHD_Result sse_open(struct http *h, struct MHD_Connection *c,
                                bool head)
{
    struct MHD_Response *r;
    struct sse_client *cl;
    struct http_conn *hc = conn_of(c);
    struct addr_key k = {{0}};
    unsigned same = 0;

    if (head)
        return reply_static(h, c, MHD_HTTP_OK, "text/event-stream", "", 0);
    if (h->nclients >= h->o.sse_max) {
        refuse_count(h, REFUSED_SSE_TOTAL);
        return reply_busy(h, c, "too many event streams\n");
    }
    if (hc)
        k = hc->addr;
    for (cl = h->clients; cl; cl = cl->next)
        if (addr_eq(&cl->addr, &k) && ++same >= h->o.sse_max_per_address) {
            refuse_count(h, REFUSED_SSE_PER_ADDRESS);
            return reply_busy(h, c,
                              "too many event streams from this address\n");
        }
    cl = calloc(1, sizeof(*cl) + h->o.sse_queue * sizeof(cl->q[0]));
    if (!cl)
        return MHD_NO;
    cl->h = h;
    cl->conn = c;
    cl->d = h->mhd->d;
    cl->addr = k;
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
        if (!cl->n && !cl->cur && !cl->cut)
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

    size_t rl = strlen(raw);
    bool rec = rl >= 10 && !strcmp(raw + rl - 10, "/recommend");
    if (rec ? !h->p.recommend_json : !h->p.user_json)
        return reply_text(h, c, MHD_HTTP_NOT_FOUND, "not found\n");
    if (rec) {
        /* /users/ID/recommend: the id is what comes before. */
        char enc[3 * HTTP_ID_MAX + 1];
        if (rl - 10 > 3 * HTTP_ID_MAX)
            return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "user id too long\n");
        memcpy(enc, raw, rl - 10);
        enc[rl - 10] = '\0';
        rc = path_decode(enc, id, HTTP_ID_MAX);
    } else {
        rc = path_decode(raw, id, HTTP_ID_MAX);
    }
    if (rc == -ENAMETOOLONG)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "user id too long\n");
    if (rc < 0)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST,
                          "bad percent-encoding in user id\n");
    if (rc == 0)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "empty user id\n");
    if (!rec) {
        rc = h->p.user_json(h->ctx, id, &json);
        return reply_json(h, c, rc, json, "no such user\n");
    }
    rc = h->p.recommend_json(
        h->ctx, id, MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "n"),
        &json);
    if (rc == -EINVAL)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST,
                          "bad n: a whole number of at least 1\n");
    if (rc == -ERANGE)
        return reply_text(h, c, MHD_HTTP_BAD_REQUEST, "n over its bound\n");
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

/* The routes a load balancer or Prometheus reads; every other route
 * (the data: /snapshot, /users/..., /topics, /events, /) needs the
 * credentials whenever any are configured. */
static bool is_probe(const char *url)
{
    return !strcmp(url, "/metrics") || !strcmp(url, "/healthz") ||
           !strcmp(url, "/readyz");
}

/* 401 naming the schemes on offer, or 429 while password hashing is over
 * its budget. The credentials themselves are never logged. */
static enum MHD_Result reply_denied(struct http *h, struct MHD_Connection *c,
                                    enum http_auth_verdict v)
{
    static const char unauthorized[] = "unauthorized\n";
    static const char busy[] = "too many password checks, retry\n";
    struct MHD_Response *r;
    unsigned code = MHD_HTTP_UNAUTHORIZED;

    if (v == HTTP_AUTH_MISSING)
        metric_inc(h->m_auth_fail[0]);
    else if (v == HTTP_AUTH_WRONG)
        metric_inc(h->m_auth_fail[1]);
    else
        metric_inc(h->m_auth_fail[2]);
    if (v == HTTP_AUTH_BUSY) {
        code = MHD_HTTP_TOO_MANY_REQUESTS;
        r = MHD_create_response_from_buffer(strlen(busy), (void *)busy,
                                            MHD_RESPMEM_PERSISTENT);
        if (r)
            MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    } else {
        r = MHD_create_response_from_buffer(
            strlen(unauthorized), (void *)unauthorized, MHD_RESPMEM_PERSISTENT);
        if (r && http_auth_basic(h->auth))
            MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                    "Basic realm=\"nmfd\", charset=\"UTF-8\"");
        if (r && h->o.token_file[0])
            MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                    "Bearer realm=\"nmfd\"");
    }
    return http_queue(h, c, code, "text/plain; charset=utf-8", r);
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
        struct http_conn *hc = conn_of(c);

        /* The headers are in: the deadline is met. */
        if (hc)
            hc->deadline_ms = 0;
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
    if (h->o.auth_probes || !is_probe(url)) {
        enum http_auth_verdict v = http_auth_check(
            h->auth,
            MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                        MHD_HTTP_HEADER_AUTHORIZATION),
            uv_now(h->loop));

        if (v != HTTP_AUTH_OK)
            return reply_denied(h, c, v);
    }
    return route(h, c, url, head);
}

/* ---- life cycle -------------------------------------------------------- */

static void http_free(struct http *h);

static void opts_free(struct http_opts *o)
{
    free((char *)o->tls_cert_file);
    free((char *)o->tls_key_file);
    free((char *)o->token_file);
    free((char *)o->password_file);
}

/* Copies o into h->o with owned strings and sane floors. */
static int opts_copy(struct http_opts *dst, const struct http_opts *o)
{
    *dst = *o;
    dst->tls_cert_file = strdup(o->tls_cert_file ? o->tls_cert_file : "");
    dst->tls_key_file = strdup(o->tls_key_file ? o->tls_key_file : "");
    dst->token_file = strdup(o->token_file ? o->token_file : "");
    dst->password_file = strdup(o->password_file ? o->password_file : "");
    if (dst->max_connections < 1)
        dst->max_connections = 1;
    if (dst->max_per_address < 1)
        dst->max_per_address = 1;
    if (dst->sse_max_per_address < 1)
        dst->sse_max_per_address = 1;
    if (dst->sse_queue < HTTP_SSE_QUEUE_MIN)
        dst->sse_queue = HTTP_SSE_QUEUE_MIN;
    if (dst->header_timeout_ms < 1)
        dst->header_timeout_ms = 1;
    if (dst->idle_timeout_ms < 1000)
        dst->idle_timeout_ms = 1000;
    if (!dst->tls_cert_file || !dst->tls_key_file || !dst->token_file ||
        !dst->password_file)
        return -ENOMEM;
    return 0;
}

static bool http_tls(const struct http *h)
{
    return h->o.tls_cert_file[0] && h->o.tls_key_file[0];
}

/* A PEM file, NUL-terminated, for MHD_OPTION_HTTPS_MEM_*. */
static char *pem_read(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    ssize_t got;

    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    got = getdelim(&buf, &cap, '\0', f);
    n = got > 0 ? (size_t)got : 0;
    fclose(f);
    if (got < 0 || !n || memchr(buf, '\0', n)) {
        free(buf);
        snprintf(err, errlen, "%s: %s", path,
                 got < 0 ? "empty or unreadable" : "not a PEM file");
        return NULL;
    }
    return buf;
}

/* Whether the first certificate of c belongs to key k, compared by key
 * id: GnuTLS 3.7 leaks what it parsed when set_x509_key_mem finds a
 * mismatch, so that call only ever sees a matching pair. *which names
 * the file at fault. */
static int pem_pair_check(const gnutls_datum_t *c, const gnutls_datum_t *k,
                          int *which)
{
    gnutls_x509_crt_t crt = NULL;
    gnutls_x509_privkey_t pk = NULL;
    unsigned char id1[64], id2[64];
    size_t n1 = sizeof(id1), n2 = sizeof(id2);
    int rc;

    *which = 0;
    if ((rc = gnutls_x509_crt_init(&crt)) < 0 ||
        (rc = gnutls_x509_privkey_init(&pk)) < 0)
        goto out;
    if ((rc = gnutls_x509_crt_import(crt, c, GNUTLS_X509_FMT_PEM)) < 0)
        goto out;
    *which = 1;
    if ((rc = gnutls_x509_privkey_import2(pk, k, GNUTLS_X509_FMT_PEM, NULL,
                                          0)) < 0)
        goto out;
    *which = 2;
    if ((rc = gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, id1,
                                         &n1)) < 0 ||
        (rc = gnutls_x509_privkey_get_key_id(pk, GNUTLS_KEYID_USE_SHA256, id2,
                                             &n2)) < 0)
        goto out;
    if (n1 != n2 || memcmp(id1, id2, n1))
        rc = GNUTLS_E_CERTIFICATE_KEY_MISMATCH;
out:
    if (pk)
        gnutls_x509_privkey_deinit(pk);
    if (crt)
        gnutls_x509_crt_deinit(crt);
    return rc;
}

/* Loads the pair the way MHD will, so that a bad certificate or a key
 * that does not match it is told in GnuTLS's words, and never reaches
 * MHD's failing start, which leaks what it had parsed. */
static int pem_check(const char *cert_file, const char *key_file,
                     const char *cert, const char *key, char *err,
                     size_t errlen)
{
    gnutls_certificate_credentials_t cr;
    gnutls_datum_t c = {(unsigned char *)cert, (unsigned)strlen(cert)};
    gnutls_datum_t k = {(unsigned char *)key, (unsigned)strlen(key)};
    int rc, which;

    rc = pem_pair_check(&c, &k, &which);
    if (rc < 0) {
        if (which == 2)
            snprintf(err, errlen, "%s, %s: %s", cert_file, key_file,
                     gnutls_strerror(rc));
        else
            snprintf(err, errlen, "%s: %s", which ? key_file : cert_file,
                     gnutls_strerror(rc));
        return -EINVAL;
    }
    rc = gnutls_certificate_allocate_credentials(&cr);
    if (rc < 0) {
        snprintf(err, errlen, "http: gnutls: %s", gnutls_strerror(rc));
        return -ENOMEM;
    }
    rc = gnutls_certificate_set_x509_key_mem(cr, &c, &k, GNUTLS_X509_FMT_PEM);
    gnutls_certificate_free_credentials(cr);
    if (rc < 0) {
        snprintf(err, errlen, "%s, %s: %s", cert_file, key_file,
                 gnutls_strerror(rc));
        return -EINVAL;
    }
    return 0;
}

int http_tls_check(const char *cert_file, const char *key_file, char *err,
                   size_t errlen)
{
    char *cert = NULL, *key = NULL;
    int rc = -EINVAL;

    if (!cert_file || !key_file || !*cert_file || !*key_file)
        return 0;
    cert = pem_read(cert_file, err, errlen);
    key = cert ? pem_read(key_file, err, errlen) : NULL;
    if (key)
        rc = pem_check(cert_file, key_file, cert, key, err, errlen);
    if (key)
        explicit_bzero(key, strlen(key));
    free(key);
    free(cert);
    return rc;
}

static void mhd_free(struct http_mhd *x)
{
    if (!x)
        return;
    if (x->key) {
        explicit_bzero(x->key, strlen(x->key));
        free(x->key);
    }
    free(x->cert);
    free(x);
}

static void on_mhd_poll_closed(uv_handle_t *hd);

/* Starts one MHD daemon on a duplicate of the listening socket, with the
 * certificate read now when TLS is on, and watches its epoll descriptor. */
static int mhd_start(struct http *h, struct http_mhd **out, char *err,
                     size_t errlen)
{
    struct http_mhd *x = calloc(1, sizeof(*x));
    const union MHD_DaemonInfo *info;
    struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}};
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    unsigned timeout_s = (unsigned)((h->o.idle_timeout_ms + 999) / 1000);
    int fd = -1, epfd, rc;

    if (!x) {
        snprintf(err, errlen, "http: out of memory");
        return -ENOMEM;
    }
    x->h = h;
    if (http_tls(h)) {
        if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
            snprintf(err, errlen, "http: libmicrohttpd was built without TLS");
            rc = -ENOTSUP;
            goto fail;
        }
        x->cert = pem_read(h->o.tls_cert_file, err, errlen);
        x->key = x->cert ? pem_read(h->o.tls_key_file, err, errlen) : NULL;
        if (!x->key || pem_check(h->o.tls_cert_file, h->o.tls_key_file, x->cert,
                                 x->key, err, errlen)) {
            rc = -EINVAL;
            goto fail;
        }
        flags |= MHD_USE_TLS;
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, x->cert};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, x->key};
    }
    fd = fcntl(h->lfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "http: dup: %s", strerror(errno));
        goto fail;
    }
    err[0] = '\0';
    h->err = err;
    h->errlen = errlen;
    /* MHD's own limit sits one above ours so that on_accept, which counts
     * what it refuses, is the one to refuse. */
    x->d = MHD_start_daemon(
        flags, 0, on_accept, h, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, h, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_LIMIT, h->o.max_connections + 1,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, h->o.connection_memory,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, NULL, MHD_OPTION_ARRAY,
        tls, MHD_OPTION_END);
    h->err = NULL;
    if (!x->d) {
        char why[256];

        /* MHD closed fd itself (it owns a listening socket it is given,
         * even on failure): closing it again could close another's. */
        snprintf(why, sizeof(why), "%s", err[0] ? err : "cannot start");
        snprintf(err, errlen, "http: %s", why);
        rc = -EIO;
        goto fail;
    }
    info = MHD_get_daemon_info(x->d, MHD_DAEMON_INFO_EPOLL_FD);
    epfd = info ? info->epoll_fd : -1;
    if (epfd < 0) {
        snprintf(err, errlen, "http: no epoll descriptor");
        rc = -EIO;
        goto fail;
    }
    rc = uv_poll_init(h->loop, &x->poll, epfd);
    if (rc < 0) {
        snprintf(err, errlen, "http: uv_poll_init: %s", uv_strerror(rc));
        goto fail;
    }
    x->poll.data = x;
    h->open_handles++;
    uv_poll_start(&x->poll, UV_READABLE, on_poll);
    *out = x;
    return 0;
fail:
    if (x->d)
        MHD_stop_daemon(x->d);
    mhd_free(x);
    return rc;
}

/* Stops one daemon: libuv lets go of its epoll descriptor first (uv_close
 * stops the poll at once), its suspended streams are resumed and told to
 * end (MHD refuses to stop with a suspended connection), then MHD drops
 * every connection it holds; the struct goes with the handle. */
static void mhd_stop(struct http *h, struct http_mhd *x)
{
    uv_close((uv_handle_t *)&x->poll, on_mhd_poll_closed);
    for (struct sse_client *cl = h->clients; cl; cl = cl->next)
        if (cl->d == x->d) {
            cl->closing = true;
            sse_resume(cl);
        }
    MHD_stop_daemon(x->d);
    x->d = NULL;
}

int http_start(struct http **out, uv_loop_t *loop, const char *listen,
               const struct http_opts *o, const struct http_provider *p,
               void *ctx, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    char host[256], dummy[1];
    struct http_opts defaults;
    const char *msg;
    uint16_t port;
    struct http *h = NULL;
    int rc;

    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (!out || !loop || !p) {
        snprintf(err, errlen, "http: bad arguments");
        return -EINVAL;
    }
    if (!o) {
        http_opts_default(&defaults);
        o = &defaults;
    }
    msg = listen_parse(listen, host, sizeof(host), &port);
    if (msg) {
        snprintf(err, errlen, "http.listen '%s': %s", listen ? listen : "",
                 msg);
        return -EINVAL;
    }
    if (!o->tls_cert_file != !o->tls_key_file ||
        (o->tls_cert_file && !*o->tls_cert_file != !*o->tls_key_file)) {
        snprintf(err, errlen,
                 "http: tls_cert_file and tls_key_file go "
                 "together");
        return -EINVAL;
    }
    rc = listen_resolve(host, port, &ss, &sslen, err, errlen);
    if (rc < 0)
        return rc;

    h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "http: out of memory");
        return -ENOMEM;
    }
    h->lfd = -1;
    h->loop = loop;
    h->p = *p;
    h->ctx = ctx;
    h->log_rl.interval_ms = 10000;
    h->log_rl.burst = 10;
    h->hello = sse_msg_new("retry: 2000\n\n", 13);
    h->ping = sse_msg_new(": keep-alive\n\n", 14);
    if (opts_copy(&h->o, o) || !h->hello || !h->ping) {
        snprintf(err, errlen, "http: out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    rc = http_auth_new(&h->auth, h->o.token_file, h->o.password_file, err,
                       errlen);
    if (rc < 0)
        goto fail;
    rc = listen_open(&ss, sslen, !host[0], &h->lfd);
    if (rc < 0) {
        snprintf(err, errlen, "http.listen '%s': %s", listen, strerror(-rc));
        goto fail;
    }
    h->port = listen_port(h->lfd);
    /* The daemon first: it is the last step that can fail, and a failed
     * one leaves no handle behind. */
    rc = mhd_start(h, &h->mhd, err, errlen);
    if (rc < 0) {
        char why[256];

        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, errlen, "http.listen '%s': %s", listen, why);
        goto fail;
    }
    uv_timer_init(loop, &h->timer);
    uv_timer_init(loop, &h->keepalive);
    uv_timer_init(loop, &h->guard);
    h->timer.data = h->keepalive.data = h->guard.data = h;
    h->open_handles += 3;
    uv_timer_start(&h->keepalive, on_keepalive, HTTP_SSE_KEEPALIVE_MS,
                   HTTP_SSE_KEEPALIVE_MS);
    {
        uint64_t every = h->o.header_timeout_ms / 4;

        every = every < 50 ? 50 : every > 1000 ? 1000 : every;
        uv_timer_start(&h->guard, on_guard, every, every);
    }
    http_kick(h);
    *out = h;
    return 0;

fail:
    http_free(h);
    return rc;
}

int http_reload(struct http *h, char *err, size_t errlen)
{
    struct http_auth *auth = NULL;
    struct http_mhd *x = NULL, *old;
    char dummy[1];
    int rc;

    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (!h || h->closing)
        return -EINVAL;
    rc = http_auth_new(&auth, h->o.token_file, h->o.password_file, err, errlen);
    if (rc < 0)
        return rc;
    if (http_tls(h)) {
        rc = mhd_start(h, &x, err, errlen);
        metric_inc(h->m_tls_reload[rc < 0]);
        if (rc < 0) {
            http_auth_free(auth);
            return rc;
        }
        old = h->mhd;
        h->mhd = x;
        mhd_stop(h, old);
        http_kick(h);
        log_notice("http: TLS certificate reloaded from %s",
                   h->o.tls_cert_file);
    }
    http_auth_free(h->auth);
    h->auth = auth;
    return 0;
}

int http_port(const struct http *h)
{
    return h ? h->port : -EINVAL;
}

int http_metrics_register(struct http *h, struct metrics *m)
{
    char labels[64];

    if (!h || !m)
        return -EINVAL;
    h->m = m;
    h->m_sse_clients = metrics_gauge(m, "nmfd_http_sse_clients",
                                     "Clients connected to /events.", NULL);
    h->m_sse_dropped = metrics_counter(
        m, "nmfd_http_sse_dropped_total",
        "Events not delivered because a client's queue was full (the client "
        "is cut off).",
        NULL);
    h->m_conns = metrics_gauge(m, "nmfd_http_connections",
                               "HTTP connections open.", NULL);
    if (!h->m_sse_clients || !h->m_sse_dropped || !h->m_conns)
        return -ENOMEM;
    for (int i = 0; i < REFUSED_N; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", refusal_names[i]);
        h->m_refused[i] = metrics_counter(
            m, "nmfd_http_refused_total",
            "HTTP connections and event streams refused or cut by a limit, "
            "by reason.",
            labels);
        if (!h->m_refused[i])
            return -ENOMEM;
    }
    for (int i = 0; i < 3; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", auth_fail_names[i]);
        h->m_auth_fail[i] = metrics_counter(
            m, "nmfd_http_auth_failures_total",
            "Requests on protected routes refused for their credentials "
            "(missing, wrong, busy = password checks over budget).",
            labels);
        if (!h->m_auth_fail[i])
            return -ENOMEM;
    }
    for (int i = 0; i < 2; i++) {
        h->m_tls_reload[i] =
            metrics_counter(m, "nmfd_http_tls_reloads_total",
                            "TLS certificate reloads on SIGHUP, by result.",
                            i ? "result=\"error\"" : "result=\"ok\"");
        if (!h->m_tls_reload[i])
            return -ENOMEM;
    }
    sse_update_gauge(h);
    metric_set(h->m_conns, h->nconns);
    return 0;
}

static void http_free(struct http *h)
{
    if (!h)
        return;
    if (h->lfd >= 0)
        close(h->lfd);
    recent_clear(h);
    sse_msg_unref(h->hello);
    sse_msg_unref(h->ping);
    http_auth_free(h->auth);
    opts_free(&h->o);
    free(h);
}

/* One of h's handles is closed; the last one frees h. */
static void http_handle_gone(struct http *h)
{
    void (*closed)(void *);
    void *arg;

    if (--h->open_handles > 0)
        return;
    closed = h->closed;
    arg = h->closed_arg;
    http_free(h);
    if (closed)
        closed(arg);
}

static void on_handle_closed(uv_handle_t *hd)
{
    http_handle_gone(hd->data);
}

static void on_mhd_poll_closed(uv_handle_t *hd)
{
    struct http_mhd *x = hd->data;
    struct http *h = x->h;

    mhd_free(x);
    http_handle_gone(h);
}

void http_close(struct http *h, void (*closed)(void *arg), void *arg)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    h->closed = closed;
    h->closed_arg = arg;
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    uv_close((uv_handle_t *)&h->keepalive, on_handle_closed);
    uv_close((uv_handle_t *)&h->guard, on_handle_closed);
    mhd_stop(h, h->mhd);
    h->mhd = NULL;
    close(h->lfd);
    h->lfd = -1;
    recent_clear(h);
}
