/* http.h -- the HTTP endpoint (libmicrohttpd driven by the libuv loop):
 * /metrics, /healthz, /readyz, /snapshot, /users/ID, /topics, /events and
 * the dashboard at /. Everything runs on the loop thread. */
#ifndef NMFD_HTTP_H
#define NMFD_HTTP_H

#include <stddef.h>
#include <uv.h>

struct http;
struct metrics;

/* Callbacks into the daemon, each called on the loop thread with the ctx
 * given to http_start. Each returns 0 or a negative errno; any other error
 * than the ones named gives 500. A NULL callback gives 404. */
struct http_provider {
    /* Prometheus text; *text is malloc'd, http frees it. */
    int (*metrics)(void *ctx, char **text, size_t *len);
    /* 0 = alive (200), else 503. */
    int (*health)(void *ctx);
    /* 0 = ready (200); else 503 with *why (static string) as the body. */
    int (*ready)(void *ctx, const char **why);
    /* The latest dense snapshot, served without a copy: http calls
     * release(ctx2) once the response is done with buf. -EAGAIN (none
     * yet) gives 503. */
    int (*snapshot)(void *ctx, const void **buf, size_t *len,
                    void (**release)(void *ctx2), void **ctx2);
    /* JSON for one user (id percent-decoded, NUL-terminated); *json is
     * malloc'd, http frees it. -ENOENT gives 404. */
    int (*user_json)(void *ctx, const char *id, char **json);
    /* JSON for all topics; *json malloc'd, http frees it. */
    int (*topics_json)(void *ctx, char **json);
};

/* Listens on listen: "127.0.0.1:9464", "[::1]:9464", ":9464" (all
 * interfaces), "localhost:9464"; port 0 picks a free port (http_port).
 * On failure returns a negative errno with a message in err, and *out is
 * untouched. p is copied; ctx must outlive h. */
int http_start(struct http **out, uv_loop_t *loop, const char *listen,
               const struct http_provider *p, void *ctx, char *err,
               size_t errlen);

/* The bound TCP port. */
int http_port(const struct http *h);

/* Registers nmfd_http_requests_total{code}, nmfd_http_sse_clients and
 * nmfd_http_sse_dropped_total in m; m must outlive h. */
int http_metrics_register(struct http *h, struct metrics *m);

/* Sends "event: <event>\ndata: <json>\n\n" to every /events client (a
 * json with newlines becomes several data lines). The last 48 events are
 * kept and replayed, oldest first, to a client on connect, so it gets the
 * latest at once and some history. A client whose queue (64 events) is
 * full loses its oldest events (nmfd_http_sse_dropped_total). */
void http_sse_broadcast(struct http *h, const char *event, const char *json);

/* Stops accepting, drops every connection, stops MHD and closes the uv
 * handles; closed(arg) runs once the last handle is closed and h is
 * freed. The loop then drains to uv_loop_close() == 0. */
void http_close(struct http *h, void (*closed)(void *arg), void *arg);

#endif
