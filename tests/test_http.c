/* test_http.c -- the HTTP endpoint on a real libuv loop on 127.0.0.1 with
 * an ephemeral port. The loop (and so every provider callback) runs on its
 * own thread; the test body is a plain-socket client on the main thread,
 * and reaches the loop's state only through on_loop(), which runs a
 * function on the loop thread and waits for it. Every test ends by closing
 * http, joining the loop and asserting uv_loop_close() == 0. */
#include <arpa/inet.h>
#include <crypt.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <jansson.h>

#include "http.h"
#include "http_auth.h"
#include "listen.h"
#include "metrics.h"

/* ---- the fixture: loop thread, fake provider ----------------------------- */

struct fx {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct call *pending;

    struct http *h;
    struct metrics *m;
    int port;
    int closed_calls;

    /* Provider state, touched only on the loop thread. */
    int healthy;
    int ready;
    unsigned char *snap;
    size_t snap_len;
    int snap_acquired;
    int snap_released;
    char last_id[512];
    int user_calls;
};

struct call {
    void (*fn)(struct fx *, void *);
    void *arg;
    bool done;
};

static int p_metrics(void *ctx, char **text, size_t *len)
{
    struct fx *fx = ctx;

    return metrics_render(fx->m, text, len);
}

static int p_health(void *ctx)
{
    return ((struct fx *)ctx)->healthy ? 0 : -EIO;
}

static int p_ready(void *ctx, const char **why)
{
    struct fx *fx = ctx;

    if (fx->ready)
        return 0;
    *why = "loading checkpoint";
    return -EAGAIN;
}

static void snap_release(void *ctx2)
{
    ((struct fx *)ctx2)->snap_released++;
}

static int p_snapshot(void *ctx, const void **buf, size_t *len,
                      void (**release)(void *), void **ctx2)
{
    struct fx *fx = ctx;

    if (!fx->snap)
        return -EAGAIN;
    fx->snap_acquired++;
    *buf = fx->snap;
    *len = fx->snap_len;
    *release = snap_release;
    *ctx2 = fx;
    return 0;
}

static int p_user(void *ctx, const char *id, char **json)
{
    struct fx *fx = ctx;
    json_t *doc;

    fx->user_calls++;
    snprintf(fx->last_id, sizeof(fx->last_id), "%s", id);
    if (!strcmp(id, "missing"))
        return -ENOENT;
    if (!strcmp(id, "boom"))
        return -EIO;
    doc = json_pack("{s:s s:i}", "user", id, "segment", 2);
    *json = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return 0;
}

static int p_topics(void *ctx, char **json)
{
    *json = strdup("{\"k\":2,\"topics\":[{\"topic\":0},{\"topic\":1}]}");
    return *json ? 0 : -ENOMEM;
}

/* The route hands over the id and the raw n; the provider's verdicts
 * on n (daemon/recommend.c) become 400s. */
static int p_recommend(void *ctx, const char *id, const char *n, char **json)
{
    struct fx *fx = ctx;

    snprintf(fx->last_id, sizeof(fx->last_id), "%s", id);
    if (!strcmp(id, "missing"))
        return -ENOENT;
    if (n && !strcmp(n, "bad"))
        return -EINVAL;
    if (n && !strcmp(n, "huge"))
        return -ERANGE;
    json_t *doc = json_pack("{s:s s:s}", "user", id, "n", n ? n : "(none)");
    *json = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return 0;
}

static const struct http_provider provider = {
    p_metrics, p_health, p_ready, p_snapshot, p_user, p_topics, p_recommend,
};

static void on_async(uv_async_t *a)
{
    struct fx *fx = a->data;
    struct call *c;

    pthread_mutex_lock(&fx->mu);
    c = fx->pending;
    fx->pending = NULL;
    pthread_mutex_unlock(&fx->mu);
    if (!c)
        return;
    c->fn(fx, c->arg);
    pthread_mutex_lock(&fx->mu);
    c->done = true;
    pthread_cond_broadcast(&fx->cv);
    pthread_mutex_unlock(&fx->mu);
}

/* Runs fn(fx, arg) on the loop thread and waits for it. */
static void on_loop(struct fx *fx, void (*fn)(struct fx *, void *), void *arg)
{
    struct call c = {fn, arg, false};

    pthread_mutex_lock(&fx->mu);
    fx->pending = &c;
    pthread_mutex_unlock(&fx->mu);
    uv_async_send(&fx->async);
    pthread_mutex_lock(&fx->mu);
    while (!c.done)
        pthread_cond_wait(&fx->cv, &fx->mu);
    pthread_mutex_unlock(&fx->mu);
}

static void *loop_main(void *arg)
{
    struct fx *fx = arg;

    uv_run(&fx->loop, UV_RUN_DEFAULT);
    return NULL;
}

static struct fx *fx_start_opts(const struct http_opts *o)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    char err[256];
    int rc;

    cr_assert_not_null(fx);
    fx->healthy = fx->ready = 1;
    pthread_mutex_init(&fx->mu, NULL);
    pthread_cond_init(&fx->cv, NULL);
    cr_assert_eq(uv_loop_init(&fx->loop), 0);
    fx->m = metrics_new();
    rc = http_start(&fx->h, &fx->loop, "127.0.0.1:0", o, &provider, fx, err,
                    sizeof(err));
    cr_assert_eq(rc, 0, "http_start: %d %s", rc, err);
    cr_assert_eq(http_metrics_register(fx->h, fx->m), 0);
    fx->port = http_port(fx->h);
    cr_assert_gt(fx->port, 0);
    cr_assert_eq(uv_async_init(&fx->loop, &fx->async, on_async), 0);
    fx->async.data = fx;
    cr_assert_eq(pthread_create(&fx->thread, NULL, loop_main, fx), 0);
    return fx;
}

static struct fx *fx_start(void)
{
    return fx_start_opts(NULL);
}

/* Defaults with room for many connections from 127.0.0.1. */
static struct http_opts opts_roomy(void)
{
    struct http_opts o;

    http_opts_default(&o);
    o.max_per_address = 1000;
    o.sse_max_per_address = 1000;
    return o;
}

static void on_http_closed(void *arg)
{
    ((struct fx *)arg)->closed_calls++;
}

static void do_close(struct fx *fx, void *arg)
{
    http_close(fx->h, on_http_closed, fx);
    fx->h = NULL;
    uv_close((uv_handle_t *)&fx->async, NULL);
}

/* Closes http from the loop, joins it, asserts a clean loop. */
static void fx_stop(struct fx *fx)
{
    /* on_loop cannot wait here: the async handle closes in the call. */
    struct call c = {do_close, NULL, false};

    pthread_mutex_lock(&fx->mu);
    fx->pending = &c;
    pthread_mutex_unlock(&fx->mu);
    uv_async_send(&fx->async);
    cr_assert_eq(pthread_join(fx->thread, NULL), 0);
    cr_assert_eq(fx->closed_calls, 1, "closed callback runs once");
    cr_assert_eq(uv_loop_close(&fx->loop), 0, "every handle closed");
}

static void fx_free(struct fx *fx)
{
    metrics_free(fx->m);
    free(fx->snap);
    pthread_mutex_destroy(&fx->mu);
    pthread_cond_destroy(&fx->cv);
    free(fx);
}

/* ---- a small HTTP/1.1 client ------------------------------------------- */

struct resp {
    int status;
    char head[8192]; /* status line and headers, lower-cased names */
    char *body;
    size_t len;
    bool chunked;
};

/* A connection from source address src (a loopback alias such as
 * "127.0.0.2"; NULL = the kernel's choice, 127.0.0.1). */
static int conn_open_from(int port, const char *src)
{
    struct sockaddr_in a = {0};
    struct timeval tv = {10, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert_geq(fd, 0);
    if (src) {
        struct sockaddr_in b = {0};

        b.sin_family = AF_INET;
        cr_assert_eq(inet_pton(AF_INET, src, &b.sin_addr), 1);
        cr_assert_eq(bind(fd, (struct sockaddr *)&b, sizeof(b)), 0,
                     "bind %s: %s", src, strerror(errno));
    }
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0,
                 "connect: %s", strerror(errno));
    return fd;
}

static int conn_open(int port)
{
    return conn_open_from(port, NULL);
}

static void send_all(int fd, const char *s, size_t n)
{
    if (n == 0)
        n = strlen(s);
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);

        cr_assert_gt(k, 0, "send: %s", strerror(errno));
        s += k;
        n -= (size_t)k;
    }
}

/* Buffered reads of one connection. */
struct rd {
    int fd;
    char buf[65536];
    size_t off, len;
    bool eof;
};

static int rd_fill(struct rd *r)
{
    ssize_t k;

    if (r->off == r->len)
        r->off = r->len = 0;
    if (r->len == sizeof(r->buf)) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    k = recv(r->fd, r->buf + r->len, sizeof(r->buf) - r->len, 0);
    if (k <= 0) {
        r->eof = true;
        return -1;
    }
    r->len += (size_t)k;
    return 0;
}

/* One line without its CRLF; -1 at EOF. */
static int rd_line(struct rd *r, char *out, size_t size)
{
    size_t n = 0;

    for (;;) {
        while (r->off < r->len) {
            char c = r->buf[r->off++];

            if (c == '\n') {
                if (n && out[n - 1] == '\r')
                    n--;
                out[n] = '\0';
                return (int)n;
            }
            if (n + 1 < size)
                out[n++] = c;
        }
        if (rd_fill(r))
            return -1;
    }
}

static int rd_bytes(struct rd *r, char *out, size_t n)
{
    while (n) {
        size_t k;

        if (r->off == r->len && rd_fill(r))
            return -1;
        k = r->len - r->off < n ? r->len - r->off : n;
        memcpy(out, r->buf + r->off, k);
        r->off += k;
        out += k;
        n -= k;
    }
    return 0;
}

static const char *header(const struct resp *p, const char *name)
{
    static char val[1024];
    char key[128];
    const char *s;

    snprintf(key, sizeof(key), "\n%s:", name);
    s = strcasestr(p->head, key);
    if (!s)
        return NULL;
    s += strlen(key);
    while (*s == ' ')
        s++;
    snprintf(val, sizeof(val), "%.*s", (int)strcspn(s, "\r\n"), s);
    return val;
}

/* Reads status line and headers; the body too unless stream (SSE) or
 * no_body (HEAD). Returns 0, or -1 if the server closed first. */
static int read_resp(struct rd *r, struct resp *p, bool no_body, bool stream)
{
    char line[8192];
    const char *cl, *te;
    size_t hn = 0;
    int n;

    free(p->body);
    memset(p, 0, sizeof(*p));
    if (rd_line(r, line, sizeof(line)) < 0)
        return -1;
    cr_assert_eq(sscanf(line, "HTTP/1.%*d %d", &p->status), 1, "status: %s",
                 line);
    hn = (size_t)snprintf(p->head, sizeof(p->head), "%s\n", line);
    while ((n = rd_line(r, line, sizeof(line))) > 0)
        hn +=
            (size_t)snprintf(p->head + hn, sizeof(p->head) - hn, "%s\n", line);
    cr_assert_eq(n, 0, "headers end with an empty line");
    te = header(p, "transfer-encoding");
    p->chunked = te && strstr(te, "chunked");
    if (no_body || stream)
        return 0;
    cl = header(p, "content-length");
    if (cl) {
        p->len = strtoul(cl, NULL, 10);
        p->body = malloc(p->len + 1);
        cr_assert_eq(rd_bytes(r, p->body, p->len), 0, "body");
    } else if (p->chunked) {
        for (;;) {
            size_t k;

            cr_assert_geq(rd_line(r, line, sizeof(line)), 0);
            k = strtoul(line, NULL, 16);
            if (k == 0) {
                rd_line(r, line, sizeof(line));
                break;
            }
            p->body = realloc(p->body, p->len + k + 1);
            cr_assert_eq(rd_bytes(r, p->body + p->len, k), 0);
            p->len += k;
            rd_line(r, line, sizeof(line));
        }
    } else {
        while (!rd_fill(r))
            ;
        p->len = r->len - r->off;
        p->body = malloc(p->len + 1);
        memcpy(p->body, r->buf + r->off, p->len);
        r->off = r->len;
    }
    if (!p->body)
        p->body = malloc(1);
    p->body[p->len] = '\0';
    return 0;
}

static int request(struct rd *r, const char *method, const char *path,
                   const char *extra, struct resp *p)
{
    char req[16384];
    int n;

    n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n",
                 method, path, extra ? extra : "");
    cr_assert_lt((size_t)n, sizeof(req));
    send_all(r->fd, req, (size_t)n);
    return read_resp(r, p, !strcmp(method, "HEAD"), false);
}

/* One request on a fresh connection. */
static void get1(struct fx *fx, const char *path, struct resp *p)
{
    struct rd r = {.fd = conn_open(fx->port)};

    cr_assert_eq(request(&r, "GET", path, NULL, p), 0, "GET %s", path);
    close(r.fd);
}

/* True when the server has closed the connection (EOF within 5 s). */
static bool peer_closed(struct rd *r)
{
    struct pollfd pfd = {r->fd, POLLIN, 0};
    char c;

    if (r->off < r->len)
        return false;
    if (poll(&pfd, 1, 5000) <= 0)
        return false;
    return recv(r->fd, &c, 1, MSG_PEEK) == 0;
}

/* ---- loop-side helpers -------------------------------------------------- */

static void set_ready(struct fx *fx, void *arg)
{
    fx->ready = *(int *)arg;
}

static void set_healthy(struct fx *fx, void *arg)
{
    fx->healthy = *(int *)arg;
}

static void set_snapshot(struct fx *fx, void *arg)
{
    size_t n = *(size_t *)arg;

    fx->snap = malloc(n);
    for (size_t i = 0; i < n; i++)
        fx->snap[i] = (unsigned char)((i * 2654435761u) >> 13);
    fx->snap_len = n;
}

struct counts {
    int acquired, released;
};

static void get_counts(struct fx *fx, void *arg)
{
    struct counts *c = arg;

    c->acquired = fx->snap_acquired;
    c->released = fx->snap_released;
}

static void get_last_id(struct fx *fx, void *arg)
{
    snprintf(arg, 512, "%s", fx->last_id);
}

struct bcast {
    const char *event, *json;
};

static void do_broadcast(struct fx *fx, void *arg)
{
    struct bcast *b = arg;

    http_sse_broadcast(fx->h, b->event, b->json);
}

static void broadcast(struct fx *fx, const char *event, const char *json)
{
    struct bcast b = {event, json};

    on_loop(fx, do_broadcast, &b);
}

static void get_metric(struct fx *fx, void *arg)
{
    double *v = arg;

    *v = metric_value(
        metrics_counter(fx->m, "nmfd_http_sse_dropped_total", "", NULL));
}

struct named {
    const char *name, *labels;
    double v;
};

static void get_named(struct fx *fx, void *arg)
{
    struct named *n = arg;

    n->v = metric_value(metrics_counter(fx->m, n->name, "", n->labels));
}

/* The value of counter name{labels}, read on the loop. */
static double counter(struct fx *fx, const char *name, const char *labels)
{
    struct named n = {name, labels, 0};

    on_loop(fx, get_named, &n);
    return n.v;
}

static double refused(struct fx *fx, const char *reason)
{
    char labels[64];

    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    return counter(fx, "nmfd_http_refused_total", labels);
}

/* ---- tests -------------------------------------------------------------- */

static struct resp P;

Test(http, every_route_answers, .timeout = 30)
{
    struct fx *fx = fx_start();

    get1(fx, "/", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(header(&P, "content-type"), "text/html; charset=utf-8");
    cr_assert_not_null(strcasestr(P.body, "<html"), "the dashboard");
    cr_assert_not_null(header(&P, "content-security-policy"));

    get1(fx, "/healthz", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(P.body, "ok\n");

    get1(fx, "/readyz", &P);
    cr_assert_eq(P.status, 200);

    get1(fx, "/topics", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(header(&P, "content-type"), "application/json");
    cr_assert_not_null(strstr(P.body, "\"topics\""));

    get1(fx, "/users/alice", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(P.body, "{\"user\":\"alice\",\"segment\":2}");

    get1(fx, "/metrics?ignored=1", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(header(&P, "content-type"),
                     "text/plain; version=0.0.4; charset=utf-8");
    /* The earlier requests were counted by status code. */
    cr_assert_not_null(strstr(P.body, "nmfd_http_requests_total{code=\"200\"} "
                                      "5\n"),
                       "%s", P.body);
    cr_assert_not_null(strstr(P.body, "nmfd_http_sse_clients 0\n"));

    fx_stop(fx);
    fx_free(fx);
}

Test(http, recommend_route, .timeout = 30)
{
    struct fx *fx = fx_start();

    get1(fx, "/users/alice/recommend?n=5", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(P.body, "{\"user\":\"alice\",\"n\":\"5\"}");
    get1(fx, "/users/a%20b/recommend", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(P.body, "{\"user\":\"a b\",\"n\":\"(none)\"}");
    get1(fx, "/users/missing/recommend", &P);
    cr_assert_eq(P.status, 404);
    get1(fx, "/users/alice/recommend?n=bad", &P);
    cr_assert_eq(P.status, 400);
    cr_assert_str_eq(P.body, "bad n: a whole number of at least 1\n");
    get1(fx, "/users/alice/recommend?n=huge", &P);
    cr_assert_eq(P.status, 400);
    cr_assert_str_eq(P.body, "n over its bound\n");
    get1(fx, "/users//recommend", &P);
    cr_assert_eq(P.status, 400);
    cr_assert_str_eq(P.body, "empty user id\n");
    /* A user whose id is "recommend" is still a user. */
    get1(fx, "/users/recommend", &P);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(P.body, "{\"user\":\"recommend\",\"segment\":2}");

    fx_stop(fx);
    fx_free(fx);
}

Test(http, keep_alive_reuses_one_connection, .timeout = 30)
{
    struct fx *fx = fx_start();
    struct rd r = {.fd = conn_open(fx->port)};
    static const char *paths[] = {"/healthz", "/topics",  "/users/bob",
                                  "/nope",    "/metrics", "/users/%zz",
                                  "/"};

    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
            cr_assert_eq(request(&r, "GET", paths[i], NULL, &P), 0,
                         "request %zu of round %d on the same socket", i,
                         round);
            cr_assert_null(header(&P, "connection"), "no Connection: close");
        }
        /* HEAD and an error response keep the connection too. */
        cr_assert_eq(request(&r, "HEAD", "/topics", NULL, &P), 0);
        cr_assert_eq(P.status, 200);
        cr_assert_eq(request(&r, "HEAD", "/events", NULL, &P), 0);
        cr_assert_eq(P.status, 200);
        cr_assert_str_eq(header(&P, "content-type"), "text/event-stream");
        cr_assert_eq(request(&r, "DELETE", "/topics", NULL, &P), 0);
        cr_assert_eq(P.status, 405);
    }
    /* Pipelined: two requests in one write, two answers in order. */
    send_all(r.fd,
             "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /users/carol HTTP/1.1\r\nHost: x\r\n\r\n",
             0);
    cr_assert_eq(read_resp(&r, &P, false, false), 0);
    cr_assert_str_eq(P.body, "ok\n");
    cr_assert_eq(read_resp(&r, &P, false, false), 0);
    cr_assert_str_eq(P.body, "{\"user\":\"carol\",\"segment\":2}");
    close(r.fd);
    fx_stop(fx);
    fx_free(fx);
}

Test(http, bad_requests_get_4xx_and_the_server_goes_on, .timeout = 60)
{
    struct fx *fx = fx_start();
    struct rd r = {.fd = conn_open(fx->port)};
    char path[4096], id[512];

    cr_assert_eq(request(&r, "GET", "/nope", NULL, &P), 0);
    cr_assert_eq(P.status, 404);
    cr_assert_eq(request(&r, "GET", "/topics/", NULL, &P), 0);
    cr_assert_eq(P.status, 404);
    cr_assert_eq(request(&r, "POST", "/metrics", NULL, &P), 0);
    cr_assert_eq(P.status, 405);
    cr_assert_str_eq(header(&P, "allow"), "GET, HEAD");
    cr_assert_eq(request(&r, "PUT", "/", NULL, &P), 0);
    cr_assert_eq(P.status, 405);

    /* User ids: strict percent-decoding, at most 256 bytes. */
    cr_assert_eq(request(&r, "GET", "/users/%zz", NULL, &P), 0);
    cr_assert_eq(P.status, 400);
    cr_assert_eq(request(&r, "GET", "/users/ab%4", NULL, &P), 0);
    cr_assert_eq(P.status, 400);
    cr_assert_eq(request(&r, "GET", "/users/a%00b", NULL, &P), 0);
    cr_assert_eq(P.status, 400);
    cr_assert_eq(request(&r, "GET", "/users/", NULL, &P), 0);
    cr_assert_eq(P.status, 400);
    memset(id, 'x', 257);
    id[257] = '\0';
    snprintf(path, sizeof(path), "/users/%s", id);
    cr_assert_eq(request(&r, "GET", path, NULL, &P), 0);
    cr_assert_eq(P.status, 400, "257-byte id");
    id[256] = '\0';
    snprintf(path, sizeof(path), "/users/%s", id);
    cr_assert_eq(request(&r, "GET", path, NULL, &P), 0);
    cr_assert_eq(P.status, 200, "256-byte id");
    /* 256 bytes after decoding, 768 on the wire. */
    for (int i = 0; i < 256; i++)
        memcpy(path + 7 + 3 * i, "%41", 3);
    path[7 + 768] = '\0';
    cr_assert_eq(request(&r, "GET", path, NULL, &P), 0);
    cr_assert_eq(P.status, 200, "256 encoded bytes");
    cr_assert_eq(request(&r, "GET", "/users/missing", NULL, &P), 0);
    cr_assert_eq(P.status, 404);
    cr_assert_eq(request(&r, "GET", "/users/boom", NULL, &P), 0);
    cr_assert_eq(P.status, 500);
    /* Still the same connection after all of these. */
    cr_assert_eq(request(&r, "GET", "/healthz", NULL, &P), 0);
    cr_assert_eq(P.status, 200);

    /* A path longer than the limit. */
    memset(path, 'a', 3000);
    path[0] = '/';
    path[3000] = '\0';
    cr_assert_eq(request(&r, "GET", path, NULL, &P), 0);
    cr_assert_eq(P.status, 414);
    close(r.fd);

    /* A request body is refused and that connection closed. */
    r = (struct rd){.fd = conn_open(fx->port)};
    cr_assert_eq(request(&r, "GET", "/healthz", "Content-Length: 5\r\n", &P),
                 0);
    cr_assert_eq(P.status, 413);
    close(r.fd);
    r = (struct rd){.fd = conn_open(fx->port)};
    send_all(r.fd,
             "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
             "hello",
             0);
    cr_assert_eq(read_resp(&r, &P, false, false), 0);
    cr_assert_eq(P.status, 405);
    cr_assert(peer_closed(&r), "connection with an unread body is closed");
    close(r.fd);

    /* Garbage, an oversized header block, a half request then hang-up. */
    r = (struct rd){.fd = conn_open(fx->port)};
    send_all(r.fd, "HELLO\r\n\r\n", 0);
    if (read_resp(&r, &P, false, false) == 0)
        cr_assert_geq(P.status, 400);
    close(r.fd);
    {
        size_t n = 100000;
        char *big = malloc(n + 64);

        memcpy(big, "GET / HTTP/1.1\r\nX-Big: ", 23);
        memset(big + 23, 'b', n - 23);
        memcpy(big + n, "\r\n\r\n", 4);
        r = (struct rd){.fd = conn_open(fx->port)};
        /* The server may close before reading it all. */
        (void)!send(r.fd, big, n + 4, MSG_NOSIGNAL);
        if (read_resp(&r, &P, false, false) == 0)
            cr_assert_geq(P.status, 400);
        close(r.fd);
        free(big);
    }
    r = (struct rd){.fd = conn_open(fx->port)};
    send_all(r.fd, "GET /metr", 0);
    close(r.fd);

    get1(fx, "/users/a%2Fb%20c%C3%A9+d", &P);
    cr_assert_eq(P.status, 200);
    on_loop(fx, get_last_id, id);
    cr_assert_str_eq(id, "a/b c\xc3\xa9+d", "percent-decoded id");

    get1(fx, "/metrics", &P);
    cr_assert_eq(P.status, 200, "the server went on");
    cr_assert_not_null(strstr(P.body, "code=\"400\"} 5\n"), "%s", P.body);
    fx_stop(fx);
    fx_free(fx);
}

Test(http, readyz_and_healthz_report_failures, .timeout = 30)
{
    struct fx *fx = fx_start();
    int no = 0;

    on_loop(fx, set_ready, &no);
    get1(fx, "/readyz", &P);
    cr_assert_eq(P.status, 503);
    cr_assert_str_eq(P.body, "not ready: loading checkpoint\n");
    get1(fx, "/healthz", &P);
    cr_assert_eq(P.status, 200, "alive while not ready");
    on_loop(fx, set_healthy, &no);
    get1(fx, "/healthz", &P);
    cr_assert_eq(P.status, 503);
    cr_assert_str_eq(P.body, "unhealthy\n");
    fx_stop(fx);
    fx_free(fx);
}

Test(http, snapshot_is_served_as_is_and_released, .timeout = 30)
{
    struct fx *fx = fx_start();
    struct rd r = {.fd = conn_open(fx->port)};
    size_t n = 3 * 1024 * 1024 + 17;
    struct counts c;

    cr_assert_eq(request(&r, "GET", "/snapshot", NULL, &P), 0);
    cr_assert_eq(P.status, 503, "none yet");
    on_loop(fx, set_snapshot, &n);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(request(&r, "GET", "/snapshot", NULL, &P), 0);
        cr_assert_eq(P.status, 200);
        cr_assert_str_eq(header(&P, "content-type"), "application/msgpack");
        cr_assert_eq(P.len, n);
        cr_assert_eq(memcmp(P.body, fx->snap, n), 0, "bytes identical");
    }
    cr_assert_eq(request(&r, "HEAD", "/snapshot", NULL, &P), 0);
    cr_assert_eq(P.status, 200);
    cr_assert_eq(strtoul(header(&P, "content-length"), NULL, 10), n);
    /* The response after the last one proves the last one is finished. */
    cr_assert_eq(request(&r, "GET", "/healthz", NULL, &P), 0);
    on_loop(fx, get_counts, &c);
    cr_assert_eq(c.acquired, 4);
    cr_assert_eq(c.released, 4, "release once per response");

    /* A client that leaves in the middle of the download. */
    send_all(r.fd, "GET /snapshot HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    cr_assert_eq(rd_fill(&r), 0);
    close(r.fd);
    for (int i = 0; i < 500; i++) {
        on_loop(fx, get_counts, &c);
        if (c.released == 5)
            break;
        usleep(10000);
    }
    cr_assert_eq(c.acquired, 5);
    cr_assert_eq(c.released, 5, "released when the client hangs up");
    fx_stop(fx);
    fx_free(fx);
}

Test(http, snapshot_in_flight_is_released_at_close, .timeout = 30)
{
    struct fx *fx = fx_start();
    struct rd r = {.fd = conn_open(fx->port)};
    size_t n = 16 * 1024 * 1024;
    int small = 4096;

    /* A client that asks and never reads keeps the response alive. */
    setsockopt(r.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    on_loop(fx, set_snapshot, &n);
    send_all(r.fd, "GET /snapshot HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    usleep(200000);
    fx_stop(fx);
    cr_assert_eq(fx->snap_acquired, 1);
    cr_assert_eq(fx->snap_released, 1, "released by http_close");
    close(r.fd);
    fx_free(fx);
}

/* Reads decoded SSE bytes (through the chunked framing) until needle. */
struct sse {
    struct rd r;
    char text[1 << 16];
    size_t n;
    size_t chunk_left;
};

static bool sse_wait(struct sse *s, const char *needle)
{
    char line[64];

    while (!strstr(s->text, needle)) {
        size_t k;

        if (s->chunk_left == 0) {
            if (rd_line(&s->r, line, sizeof(line)) < 0)
                return false;
            if (!line[0] && rd_line(&s->r, line, sizeof(line)) < 0)
                return false;
            s->chunk_left = strtoul(line, NULL, 16);
            if (s->chunk_left == 0)
                return false; /* end of stream */
        }
        k = s->chunk_left;
        if (k > sizeof(s->text) - 1 - s->n) {
            /* Keep the tail only. */
            memmove(s->text, s->text + s->n / 2, s->n - s->n / 2);
            s->n -= s->n / 2;
            if (k > sizeof(s->text) - 1 - s->n)
                k = sizeof(s->text) - 1 - s->n;
        }
        if (rd_bytes(&s->r, s->text + s->n, k))
            return false;
        s->n += k;
        s->chunk_left -= k;
        s->text[s->n] = '\0';
    }
    return true;
}

static struct sse *sse_connect(struct fx *fx)
{
    struct sse *s = calloc(1, sizeof(*s));

    s->r.fd = conn_open(fx->port);
    send_all(s->r.fd, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    cr_assert_eq(read_resp(&s->r, &P, false, true), 0);
    cr_assert_eq(P.status, 200);
    cr_assert_str_eq(header(&P, "content-type"), "text/event-stream");
    cr_assert(P.chunked);
    return s;
}

Test(http, sse_receives_broadcasts, .timeout = 30)
{
    struct fx *fx = fx_start();
    struct sse *a, *b;
    double v;

    a = sse_connect(fx);
    cr_assert(sse_wait(a, "retry: 2000\n\n"));
    broadcast(fx, "epoch", "{\"epoch\":1}");
    cr_assert(sse_wait(a, "event: epoch\ndata: {\"epoch\":1}\n\n"));

    /* A late client gets the latest event at once. */
    b = sse_connect(fx);
    cr_assert(sse_wait(b, "event: epoch\ndata: {\"epoch\":1}\n\n"));

    /* Several events in a row, and a payload with newlines. */
    broadcast(fx, "epoch", "{\"epoch\":2}");
    broadcast(fx, "epoch", "{\"epoch\":3,\n\"x\":1}");
    cr_assert(sse_wait(a, "data: {\"epoch\":2}\n\n"));
    cr_assert(sse_wait(a, "event: epoch\ndata: {\"epoch\":3,\ndata: "
                          "\"x\":1}\n\n"));
    cr_assert(sse_wait(b, "data: \"x\":1}\n\n"));
    /* A bad event name is ignored. */
    broadcast(fx, "ep\noch", "{}");

    /* Other requests still work while streams are open. */
    get1(fx, "/metrics", &P);
    cr_assert_not_null(strstr(P.body, "nmfd_http_sse_clients 2\n"));
    on_loop(fx, get_metric, &v);
    cr_assert_float_eq(v, 0, 1e-9);

    /* A client that leaves is forgotten on the next write. */
    close(b->r.fd);
    broadcast(fx, "epoch", "{\"epoch\":61}");
    cr_assert(sse_wait(a, "data: {\"epoch\":61}\n\n"));
    for (int i = 0; i < 100; i++) {
        get1(fx, "/metrics", &P);
        if (strstr(P.body, "nmfd_http_sse_clients 1\n"))
            break;
        broadcast(fx, "epoch", "{\"epoch\":5}");
        usleep(20000);
    }
    cr_assert_not_null(strstr(P.body, "nmfd_http_sse_clients 1\n"));

    /* Recent history is replayed, oldest first, ending with the latest. */
    for (int i = 62; i <= 120; i++) {
        char j[32];

        snprintf(j, sizeof(j), "{\"epoch\":%d}", i);
        broadcast(fx, "epoch", j);
    }
    {
        struct sse *c = sse_connect(fx);
        const char *pfirst, *plast;

        cr_assert(sse_wait(c, "data: {\"epoch\":120}\n\n"));
        cr_assert_null(strstr(c->text, "{\"epoch\":72}"), "only the last 48");
        pfirst = strstr(c->text, "data: {\"epoch\":73}\n\n");
        plast = strstr(c->text, "data: {\"epoch\":120}\n\n");
        cr_assert(pfirst && plast && pfirst < plast, "in order");
        close(c->r.fd);
        free(c);
    }
    cr_assert(sse_wait(a, "data: {\"epoch\":120}\n\n"));
    /* Closing ends the open stream cleanly. */
    fx_stop(fx);
    cr_assert_not(sse_wait(a, "never sent"), "stream ended");
    close(a->r.fd);
    free(a);
    free(b);
    fx_free(fx);
}

/* A reader a whole queue behind is cut off and counted; the others and
 * the probes go on. */
Test(http, slow_sse_client_is_cut_off, .timeout = 60)
{
    struct fx *fx = fx_start();
    struct sse *slow, *fast;
    char *big = malloc(70000);
    int small = 4096;
    double dropped = 0;

    slow = sse_connect(fx);
    setsockopt(slow->r.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    fast = sse_connect(fx);
    memset(big, 'z', 69990);
    for (int i = 0; i < 400; i++) {
        int n = snprintf(big, 32, "{\"i\":%d,\"pad\":\"", i);

        big[n] = 'z';
        strcpy(big + 69990, "\"}");
        broadcast(fx, "epoch", big);
        if (i % 50 == 49) {
            char want[32];

            snprintf(want, sizeof(want), "{\"i\":%d,", i);
            cr_assert(sse_wait(fast, want), "the fast client keeps up");
        }
    }
    on_loop(fx, get_metric, &dropped);
    cr_assert_gt(dropped, 0, "the slow client's queue overflowed");
    cr_assert_float_eq(refused(fx, "sse_slow"), 1, 1e-9, "cut once");
    /* The server let go of it (the bytes already in the kernel's buffers
     * still trickle through its 4 KiB window, so the test does not wait
     * for its end). */
    for (int i = 0; i < 250; i++) {
        get1(fx, "/metrics", &P);
        if (strstr(P.body, "nmfd_http_sse_clients 1\n"))
            break;
        usleep(20000);
    }
    cr_assert_not_null(strstr(P.body, "nmfd_http_sse_clients 1\n"), "%s",
                       P.body);
    get1(fx, "/healthz", &P);
    cr_assert_eq(P.status, 200);
    fx_stop(fx);
    close(slow->r.fd);
    close(fast->r.fd);
    free(slow);
    free(fast);
    free(big);
    fx_free(fx);
}

Test(http, sse_client_limit, .timeout = 60)
{
    struct http_opts o = opts_roomy();
    struct fx *fx = fx_start_opts(&o);
    struct sse *s[64];

    for (int i = 0; i < 64; i++)
        s[i] = sse_connect(fx);
    get1(fx, "/events", &P);
    cr_assert_eq(P.status, 503);
    cr_assert_str_eq(header(&P, "retry-after"), "10");
    cr_assert_float_eq(refused(fx, "sse_total"), 1, 1e-9);
    cr_assert_float_eq(refused(fx, "sse_per_address"), 0, 1e-9);
    get1(fx, "/healthz", &P);
    cr_assert_eq(P.status, 200);
    for (int i = 0; i < 64; i++) {
        close(s[i]->r.fd);
        free(s[i]);
    }
    fx_stop(fx);
    fx_free(fx);
}

/* Past MHD_OPTION_CONNECTION_LIMIT MHD drops its listening socket from
 * epoll; once connections close, a client already waiting in the backlog
 * must be served at once, not after some unrelated event. */
Test(http, connection_limit_then_recovery, .timeout = 60)
{
    struct http_opts o = opts_roomy();
    struct fx *fx;

    o.max_connections = 128;
    fx = fx_start_opts(&o);
    struct timespec t0, t1;
    int fds[160];

    for (int i = 0; i < 160; i++)
        fds[i] = conn_open(fx->port);
    usleep(200000);
    for (int i = 0; i < 160; i++)
        close(fds[i]);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 50; i++) {
        struct rd r = {.fd = conn_open(fx->port)};

        if (request(&r, "GET", "/healthz", NULL, &P) == 0 && P.status == 200) {
            close(r.fd);
            break;
        }
        close(r.fd);
        usleep(20000);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(P.status, 200);
    cr_assert_lt((double)(t1.tv_sec - t0.tv_sec) +
                     (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
                 3.0, "served within 3 s of the connections closing");
    cr_assert_gt(refused(fx, "total"), 0, "the ones past 128 were counted");
    fx_stop(fx);
    fx_free(fx);
}

/* ---- limits under hostile clients ---------------------------------------- */

/* One address gets its share of connections and no more; past it the
 * connection is closed at accept and counted, and another address is
 * served as before. */
Test(http, per_address_limit, .timeout = 60)
{
    struct http_opts o;
    struct fx *fx;
    int fds[4];
    struct rd r = {0};

    http_opts_default(&o);
    o.max_per_address = 4;
    fx = fx_start_opts(&o);
    for (int i = 0; i < 4; i++)
        fds[i] = conn_open_from(fx->port, "127.0.0.2");
    r.fd = conn_open_from(fx->port, "127.0.0.2");
    cr_assert(peer_closed(&r), "the fifth from 127.0.0.2 is closed");
    close(r.fd);
    cr_assert_float_eq(refused(fx, "per_address"), 1, 1e-9);

    /* Others are served, on fresh and kept-alive connections alike. */
    r = (struct rd){.fd = conn_open_from(fx->port, "127.0.0.3")};
    cr_assert_eq(request(&r, "GET", "/healthz", NULL, &P), 0);
    cr_assert_eq(P.status, 200);
    cr_assert_eq(request(&r, "GET", "/metrics", NULL, &P), 0);
    cr_assert_eq(P.status, 200);
    cr_assert_not_null(
        strstr(P.body, "nmfd_http_refused_total{reason=\"per_address\"} 1\n"),
        "%s", P.body);
    cr_assert_not_null(strstr(P.body, "nmfd_http_connections 5\n"), "%s",
                       P.body);
    close(r.fd);

    /* A slot freed is a slot again. */
    close(fds[0]);
    for (int i = 0; i < 100; i++) {
        r = (struct rd){.fd = conn_open_from(fx->port, "127.0.0.2")};
        if (request(&r, "GET", "/healthz", NULL, &P) == 0 && P.status == 200)
            break;
        close(r.fd);
        r.fd = -1;
        usleep(20000);
    }
    cr_assert_eq(P.status, 200);
    close(r.fd);
    for (int i = 1; i < 4; i++)
        close(fds[i]);
    fx_stop(fx);
    fx_free(fx);
}

static double since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) +
           (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Headers must be complete by the deadline: half a request line, or a
 * request dribbled one byte at a time (which an idle timeout never
 * catches), is cut; a client that idles between requests within its
 * keep-alive time is not. */
Test(http, header_deadline_cuts_slow_requests, .timeout = 60)
{
    struct http_opts o;
    struct fx *fx;
    struct timespec t0;
    struct rd half = {0}, drip = {0}, idle = {0};
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    bool cut = false;

    http_opts_default(&o);
    o.header_timeout_ms = 500;
    o.idle_timeout_ms = 2000;
    fx = fx_start_opts(&o);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    half.fd = conn_open(fx->port);
    send_all(half.fd, "GET /heal", 0);
    drip.fd = conn_open(fx->port);
    idle.fd = conn_open(fx->port);
    cr_assert_eq(request(&idle, "GET", "/healthz", NULL, &P), 0);
    cr_assert_eq(P.status, 200);
    for (size_t i = 0; req[i] && since(&t0) < 5; i++) {
        if (send(drip.fd, req + i, 1, MSG_NOSIGNAL) != 1) {
            cut = true;
            break;
        }
        usleep(40000);
    }
    cr_assert(cut || peer_closed(&drip), "the dribbled request was cut");
    cr_assert_lt(since(&t0), 3.0, "within a few guard periods");
    cr_assert(peer_closed(&half), "half a request line was cut");
    cr_assert_float_eq(refused(fx, "header_deadline"), 2, 1e-9);

    /* The idle keep-alive connection (1.5 s now, under 2 s + 0.5 s) still
     * serves its next request. */
    while (since(&t0) < 1.5)
        usleep(50000);
    cr_assert_eq(request(&idle, "GET", "/healthz", NULL, &P), 0);
    cr_assert_eq(P.status, 200);
    close(half.fd);
    close(drip.fd);
    close(idle.fd);
    fx_stop(fx);
    fx_free(fx);
}

/* /events per address: past the share 503, another address still gets
 * its own streams. */
Test(http, sse_per_address_limit, .timeout = 60)
{
    struct http_opts o;
    struct fx *fx;
    struct sse *s[3];
    struct rd r;

    http_opts_default(&o);
    o.sse_max_per_address = 2;
    fx = fx_start_opts(&o);
    for (int i = 0; i < 2; i++)
        s[i] = sse_connect(fx);
    get1(fx, "/events", &P);
    cr_assert_eq(P.status, 503);
    cr_assert_not_null(strstr(P.body, "from this address"));
    cr_assert_float_eq(refused(fx, "sse_per_address"), 1, 1e-9);
    r = (struct rd){.fd = conn_open_from(fx->port, "127.0.0.3")};
    send_all(r.fd, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    cr_assert_eq(read_resp(&r, &P, false, true), 0);
    cr_assert_eq(P.status, 200);
    close(r.fd);
    for (int i = 0; i < 2; i++) {
        close(s[i]->r.fd);
        free(s[i]);
    }
    (void)s[2];
    fx_stop(fx);
    fx_free(fx);
}

/* ---- credentials -----------------------------------------------------------
 */

static char tmpdir[64];

static const char *tmp_file(const char *name, const char *content)
{
    static char path[8][128];
    static int next;
    char *p = path[next++ % 8];
    FILE *f;

    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_http.XXXXXX");
        cr_assert_not_null(mkdtemp(tmpdir));
    }
    snprintf(p, 128, "%s/%s", tmpdir, name);
    f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(content, f);
    fclose(f);
    return p;
}

#define TOKEN "s3cr3t-t0ken-0123456789"

/* GET path with an Authorization value (NULL = none) on a fresh
 * connection; /events is read up to its headers only. */
static int get_auth(struct fx *fx, const char *path, const char *authz,
                    struct resp *p)
{
    struct rd r = {.fd = conn_open(fx->port)};
    char req[1024];
    int rc;

    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%s%s%s\r\n", path,
             authz ? "Authorization: " : "", authz ? authz : "",
             authz ? "\r\n" : "");
    send_all(r.fd, req, 0);
    rc = read_resp(&r, p, false, !strcmp(path, "/events"));
    close(r.fd);
    return rc;
}

Test(http, token_guards_the_data_routes, .timeout = 60)
{
    static const char *const data[] = {"/",       "/snapshot", "/users/alice",
                                       "/topics", "/events",   "/nope"};
    static const char *const probes[] = {"/metrics", "/healthz", "/readyz"};
    struct http_opts o;
    struct fx *fx;
    size_t snap = 100;

    http_opts_default(&o);
    o.token_file = tmp_file("token", TOKEN "\n");
    fx = fx_start_opts(&o);
    on_loop(fx, set_snapshot, &snap);
    for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
        cr_assert_eq(get_auth(fx, data[i], NULL, &P), 0);
        cr_assert_eq(P.status, 401, "%s without a token", data[i]);
        cr_assert_str_eq(header(&P, "www-authenticate"),
                         "Bearer realm=\"nmfd\"");
        cr_assert_eq(get_auth(fx, data[i], "Bearer wrong-token-0123456789", &P),
                     0);
        cr_assert_eq(P.status, 401, "%s with a wrong token", data[i]);
        cr_assert_eq(get_auth(fx, data[i], "Bearer " TOKEN "x", &P), 0);
        cr_assert_eq(P.status, 401, "%s with a longer token", data[i]);
        cr_assert_eq(get_auth(fx, data[i], "Bearer " TOKEN, &P), 0);
        cr_assert_eq(P.status, strcmp(data[i], "/nope") ? 200 : 404,
                     "%s with the token: %d", data[i], P.status);
    }
    /* The scheme is case-insensitive, the token is not. */
    cr_assert_eq(get_auth(fx, "/topics", "bearer " TOKEN, &P), 0);
    cr_assert_eq(P.status, 200);
    cr_assert_eq(get_auth(fx, "/topics", "Bearer S3CR3T-T0KEN-0123456789", &P),
                 0);
    cr_assert_eq(P.status, 401);
    cr_assert_eq(get_auth(fx, "/topics", "Basic dXNlcjpwYXNz", &P), 0);
    cr_assert_eq(P.status, 401, "no password file: Basic is wrong");
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(get_auth(fx, probes[i], NULL, &P), 0);
        cr_assert_eq(P.status, 200, "%s stays open", probes[i]);
    }
    cr_assert_float_eq(
        counter(fx, "nmfd_http_auth_failures_total", "reason=\"missing\""), 6,
        1e-9);
    cr_assert_float_eq(
        counter(fx, "nmfd_http_auth_failures_total", "reason=\"wrong\""), 14,
        1e-9);
    fx_stop(fx);
    fx_free(fx);
}

Test(http, auth_probes_closes_the_probes_too, .timeout = 30)
{
    struct http_opts o;
    struct fx *fx;

    http_opts_default(&o);
    o.token_file = tmp_file("token", TOKEN);
    o.auth_probes = true;
    fx = fx_start_opts(&o);
    cr_assert_eq(get_auth(fx, "/metrics", NULL, &P), 0);
    cr_assert_eq(P.status, 401);
    cr_assert_eq(get_auth(fx, "/healthz", "Bearer nope-nope-nope-nope", &P), 0);
    cr_assert_eq(P.status, 401);
    cr_assert_eq(get_auth(fx, "/readyz", "Bearer " TOKEN, &P), 0);
    cr_assert_eq(P.status, 200);
    fx_stop(fx);
    fx_free(fx);
}

/* "user:password" in base64, for an Authorization: Basic value. */
static void basic(const char *userpass, char *out, size_t size)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(userpass), o = 0;

    o += (size_t)snprintf(out, size, "Basic ");
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)userpass[i] << 16;

        if (i + 1 < n)
            v |= (unsigned char)userpass[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)userpass[i + 2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = '\0';
}

/* A crypt(3) hash of pw with the given method prefix, low cost. */
static void hash_of(const char *prefix, const char *pw, char *out, size_t size)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data cd = {0};

    cr_assert_not_null(
        crypt_gensalt_rn(prefix, 4, NULL, 0, salt, sizeof(salt)));
    cr_assert_not_null(crypt_r(pw, salt, &cd));
    snprintf(out, size, "%s", cd.output);
}

Test(http, basic_auth_against_hashed_passwords, .timeout = 60)
{
    struct http_opts o;
    struct fx *fx;
    char file[2048], h1[512], h2[512], a[256];

    hash_of("$y$", "correct horse", h1, sizeof(h1));
    hash_of("$2b$", "battery staple", h2, sizeof(h2));
    snprintf(file, sizeof(file), "# scrapers\nprom:%s\n\ngrafana:%s\n", h1, h2);
    http_opts_default(&o);
    o.password_file = tmp_file("passwords", file);
    fx = fx_start_opts(&o);

    cr_assert_eq(get_auth(fx, "/topics", NULL, &P), 0);
    cr_assert_eq(P.status, 401);
    cr_assert_str_eq(header(&P, "www-authenticate"),
                     "Basic realm=\"nmfd\", charset=\"UTF-8\"");
    basic("prom:correct horse", a, sizeof(a));
    cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
    cr_assert_eq(P.status, 200);
    /* Remembered: many more cost no key derivation, so no budget. */
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
        cr_assert_eq(P.status, 200);
    }
    basic("grafana:battery staple", a, sizeof(a));
    cr_assert_eq(get_auth(fx, "/users/alice", a, &P), 0);
    cr_assert_eq(P.status, 200);
    usleep(1100000); /* a full budget again */
    basic("grafana:correct horse", a, sizeof(a));
    cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
    cr_assert_eq(P.status, 401, "another user's password");
    basic("nobody:correct horse", a, sizeof(a));
    cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
    cr_assert_eq(P.status, 401, "an unknown user");
    cr_assert_eq(get_auth(fx, "/topics", "Basic !!!notbase64", &P), 0);
    cr_assert_eq(P.status, 401);
    basic("promcorrect horse", a, sizeof(a));
    cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
    cr_assert_eq(P.status, 401, "no colon");
    cr_assert_eq(get_auth(fx, "/topics", "Bearer " TOKEN, &P), 0);
    cr_assert_eq(P.status, 401, "no token file: Bearer is wrong");

    /* A flood of fresh wrong passwords runs out of budget: 429, and the
     * remembered password still passes. The budget refills with time, so
     * how many 429s is certain only when the flood was quick (under
     * valgrind each derivation alone may outlast a refill). */
    {
        struct timespec t0;
        int busy = 0;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 12; i++) {
            char up[64];

            snprintf(up, sizeof(up), "prom:guess%d", i);
            basic(up, a, sizeof(a));
            cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
            cr_assert(P.status == 401 || P.status == 429, "%d", P.status);
            if (P.status == 429) {
                cr_assert_str_eq(header(&P, "retry-after"), "1");
                busy++;
            }
        }
        if (since(&t0) < 1.0)
            cr_assert_geq(busy, 12 - 2 * HTTP_AUTH_KDF_PER_S,
                          "the budget ran out: %d", busy);
        basic("prom:correct horse", a, sizeof(a));
        cr_assert_eq(get_auth(fx, "/topics", a, &P), 0);
        cr_assert_eq(P.status, 200);
        cr_assert_float_eq(
            counter(fx, "nmfd_http_auth_failures_total", "reason=\"busy\""),
            busy, 1e-9);
    }
    fx_stop(fx);
    fx_free(fx);
}

static void do_reload(struct fx *fx, void *arg)
{
    char err[256];

    *(int *)arg = http_reload(fx->h, err, sizeof(err));
}

/* SIGHUP re-reads the token; a token file gone bad keeps the old one. */
Test(http, reload_swaps_the_token, .timeout = 30)
{
    struct http_opts o;
    struct fx *fx;
    const char *path;
    int rc;

    http_opts_default(&o);
    path = tmp_file("token-r", TOKEN);
    o.token_file = path;
    fx = fx_start_opts(&o);
    cr_assert_eq(get_auth(fx, "/topics", "Bearer " TOKEN, &P), 0);
    cr_assert_eq(P.status, 200);
    tmp_file("token-r", "the-next-token-9876543210\n");
    on_loop(fx, do_reload, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(get_auth(fx, "/topics", "Bearer " TOKEN, &P), 0);
    cr_assert_eq(P.status, 401, "the old token is gone");
    cr_assert_eq(
        get_auth(fx, "/topics", "Bearer the-next-token-9876543210", &P), 0);
    cr_assert_eq(P.status, 200);
    tmp_file("token-r", "short\n");
    on_loop(fx, do_reload, &rc);
    cr_assert_eq(rc, -EINVAL);
    cr_assert_eq(
        get_auth(fx, "/topics", "Bearer the-next-token-9876543210", &P), 0);
    cr_assert_eq(P.status, 200, "a bad file keeps the running token");
    fx_stop(fx);
    fx_free(fx);
}

/* The key-derivation budget on a clock the test holds. */
Test(http, password_budget)
{
    struct http_auth *a = NULL;
    char err[512], h1[512], file[1200], good[256], bad[256];

    hash_of("$2b$", "right", h1, sizeof(h1));
    snprintf(file, sizeof(file), "u:%s\n", h1);
    cr_assert_eq(
        http_auth_new(&a, NULL, tmp_file("pb", file), err, sizeof(err)), 0,
        "%s", err);
    cr_assert(http_auth_basic(a));
    basic("u:right", good, sizeof(good));
    basic("u:wrong", bad, sizeof(bad));
    cr_assert_eq(http_auth_check(a, good, 1000), HTTP_AUTH_OK);
    for (int i = 1; i < HTTP_AUTH_KDF_PER_S; i++)
        cr_assert_eq(http_auth_check(a, bad, 1000), HTTP_AUTH_WRONG);
    cr_assert_eq(http_auth_check(a, bad, 1000), HTTP_AUTH_BUSY);
    cr_assert_eq(http_auth_check(a, good, 1000), HTTP_AUTH_OK,
                 "remembered, no derivation");
    cr_assert_eq(http_auth_check(a, bad, 1000 + 1000 / HTTP_AUTH_KDF_PER_S),
                 HTTP_AUTH_WRONG, "one derivation back");
    cr_assert_eq(http_auth_check(a, bad, 1000 + 1000 / HTTP_AUTH_KDF_PER_S),
                 HTTP_AUTH_BUSY);
    cr_assert_eq(http_auth_check(a, NULL, 5000), HTTP_AUTH_MISSING);
    cr_assert_eq(http_auth_check(a, "Digest x", 5000), HTTP_AUTH_MISSING);
    http_auth_free(a);
}

Test(http, credential_files_are_checked)
{
    struct http_auth *a = NULL;
    char err[512], h1[512], file[1200];

    cr_assert_null(http_auth_token_file_check(""));
    cr_assert_null(http_auth_token_file_check(tmp_file("t1", TOKEN "\r\n")));
    cr_assert_str_eq(http_auth_token_file_check(tmpdir[0] ? "/nonexistent/t"
                                                          : "/nonexistent/t"),
                     "cannot read the file");
    cr_assert_str_eq(http_auth_token_file_check(tmp_file("t2", "\n\n")),
                     "the token file is empty");
    cr_assert_str_eq(http_auth_token_file_check(tmp_file("t3", "short")),
                     "the token is shorter than 16 characters");
    cr_assert_str_eq(
        http_auth_token_file_check(tmp_file("t4", "two words 0123456789")),
        "the token has a blank, control or non-ascii character");

    hash_of("$y$", "pw", h1, sizeof(h1));
    snprintf(file, sizeof(file), "a:%s\n", h1);
    cr_assert_null(http_auth_password_file_check(tmp_file("p1", file)));
    cr_assert_str_eq(http_auth_password_file_check(tmp_file("p2", "# none\n")),
                     "no user:hash line");
    snprintf(file, sizeof(file), "a:%s\nb:$1$abc$0123456789012345678901\n", h1);
    cr_assert_eq(
        http_auth_new(&a, NULL, tmp_file("p3", file), err, sizeof(err)),
        -EINVAL);
    cr_assert_null(a);
    cr_assert_not_null(strstr(err, "p3:2: unsupported hash"), "%s", err);
    cr_assert_null(strstr(err, "$1$"), "the hash is not echoed: %s", err);
    snprintf(file, sizeof(file), "a:%s\na:%s\n", h1, h1);
    cr_assert_eq(
        http_auth_new(&a, NULL, tmp_file("p4", file), err, sizeof(err)),
        -EINVAL);
    cr_assert_not_null(strstr(err, "p4:2: user listed twice"), "%s", err);
    cr_assert_eq(
        http_auth_new(&a, NULL, tmp_file("p5", "nocolon\n"), err, sizeof(err)),
        -EINVAL);
    cr_assert_not_null(strstr(err, "p5:1: expected user:hash"), "%s", err);
    cr_assert_eq(http_auth_new(&a, tmp_file("t5", "x"), NULL, err, sizeof(err)),
                 -EINVAL);
    cr_assert_null(strstr(err, ": x"), "the token is not echoed: %s", err);
    cr_assert_eq(http_auth_new(&a, "/nonexistent/t", NULL, err, sizeof(err)),
                 -ENOENT);
    cr_assert_eq(http_auth_new(&a, "", "", err, sizeof(err)), 0);
    cr_assert_not(http_auth_enabled(a));
    cr_assert_eq(http_auth_check(a, NULL, 0), HTTP_AUTH_OK);
    http_auth_free(a);
}

/* An http_start that cannot read its credentials fails and leaves nothing
 * on the loop. */
Test(http, start_refuses_bad_credentials)
{
    uv_loop_t loop;
    struct http *h = NULL;
    struct http_opts o;
    char err[256];

    cr_assert_eq(uv_loop_init(&loop), 0);
    http_opts_default(&o);
    o.token_file = "/nonexistent/token";
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:0", &o, &provider, NULL, err,
                            sizeof(err)),
                 -ENOENT);
    cr_assert_null(h);
    cr_assert_not_null(strstr(err, "/nonexistent/token"), "%s", err);
    http_opts_default(&o);
    o.tls_cert_file = "/nonexistent/cert.pem";
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:0", &o, &provider, NULL, err,
                            sizeof(err)),
                 -EINVAL);
    cr_assert_not_null(strstr(err, "go together"), "%s", err);
    o.tls_key_file = tmp_file("key.pem", "not a key\n");
    o.tls_cert_file = tmp_file("cert.pem", "not a cert\n");
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:0", &o, &provider, NULL, err,
                            sizeof(err)),
                 -EINVAL);
    cr_assert_null(h);
    cr_assert_not_null(strstr(err, "cert.pem: "), "the file named: %s", err);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(http, close_with_no_traffic)
{
    struct fx *fx = fx_start();

    fx_stop(fx);
    fx_free(fx);
}

Test(http, start_errors)
{
    uv_loop_t loop;
    struct http *h = NULL, *h2 = NULL;
    char err[256];
    int rc;

    cr_assert_eq(uv_loop_init(&loop), 0);
    rc = http_start(&h, &loop, "127.0.0.1", NULL, &provider, NULL, err,
                    sizeof(err));
    cr_assert_eq(rc, -EINVAL);
    cr_assert_not_null(strstr(err, "missing :port"), "%s", err);
    cr_assert_null(h);
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:99999", NULL, &provider, NULL,
                            err, sizeof(err)),
                 -EINVAL);
    cr_assert_not_null(strstr(err, "0..65535"), "%s", err);
    cr_assert_eq(http_start(&h, &loop, "::1:9464", NULL, &provider, NULL, err,
                            sizeof(err)),
                 -EINVAL);
    cr_assert_eq(
        http_start(&h, &loop, "", NULL, &provider, NULL, err, sizeof(err)),
        -EINVAL);
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:80x", NULL, &provider, NULL,
                            err, sizeof(err)),
                 -EINVAL);
    rc = http_start(&h, &loop, "no-such-host.invalid:9464", NULL, &provider,
                    NULL, err, sizeof(err));
    cr_assert_lt(rc, 0);
    cr_assert_not_null(strstr(err, "no-such-host.invalid"), "%s", err);
    rc = http_start(&h, &loop, "192.0.2.1:9464", NULL, &provider, NULL, err,
                    sizeof(err));
    cr_assert_eq(rc, -EADDRNOTAVAIL, "foreign address: %d %s", rc, err);

    /* A busy port. */
    cr_assert_eq(http_start(&h, &loop, "127.0.0.1:0", NULL, &provider, NULL,
                            err, sizeof(err)),
                 0, "%s", err);
    char busy[64];

    snprintf(busy, sizeof(busy), "127.0.0.1:%d", http_port(h));
    rc = http_start(&h2, &loop, busy, NULL, &provider, NULL, err, sizeof(err));
    cr_assert_eq(rc, -EADDRINUSE, "%d %s", rc, err);
    cr_assert_not_null(strstr(err, busy), "%s", err);
    cr_assert_null(h2);
    http_close(h, NULL, NULL);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);

    char host[256];
    uint16_t port;
#define PARSE(s) listen_parse(s, host, sizeof(host), &port)
    cr_assert_str_eq(PARSE(""), "missing :port");
    cr_assert_null(PARSE("127.0.0.1:9464"));
    cr_assert_null(PARSE("[::1]:9464"));
    cr_assert_null(PARSE(":9464"));
    cr_assert_null(PARSE("localhost:0"));
    cr_assert_str_eq(PARSE("::1:9464"),
                     "an IPv6 address needs brackets: [addr]:port");
    cr_assert_str_eq(PARSE("[::1:9464"), "missing ']' after the IPv6 address");
    cr_assert_str_eq(PARSE("[::1]"), "missing :port after ']'");
    cr_assert_str_eq(PARSE("host:"), "port must be a number 0..65535");
    cr_assert_str_eq(PARSE("host:-1"), "port must be a number 0..65535");
    cr_assert_str_eq(PARSE("host:65536"), "port must be a number 0..65535");
    char small[4];
    cr_assert_str_eq(listen_parse("hosts:1", small, sizeof(small), &port),
                     "host name too long");
#undef PARSE
}

static void listen_and_close(const char *listen)
{
    uv_loop_t loop;
    struct http *h = NULL;
    char err[256];

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(
        http_start(&h, &loop, listen, NULL, &provider, NULL, err, sizeof(err)),
        0, "%s: %s", listen, err);
    cr_assert_gt(http_port(h), 0);
    http_close(h, NULL, NULL);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(http, listen_forms)
{
    int fd6 = socket(AF_INET6, SOCK_STREAM, 0);

    listen_and_close(":0");
    listen_and_close("localhost:0");
    if (fd6 >= 0) {
        close(fd6);
        listen_and_close("[::1]:0");
    }
}
