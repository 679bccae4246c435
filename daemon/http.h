/* http.h -- the HTTP endpoint (libmicrohttpd driven by the libuv loop):
 * /metrics, /healthz, /readyz, /snapshot, /users/ID, /topics, /events and
 * the dashboard at /. Everything runs on the loop thread. */
#ifndef NMFD_HTTP_H
#define NMFD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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
    /* Recommendations for one user (id as for user_json; n the query's
     * raw n, NULL if absent); *json malloc'd. -ENOENT gives 404, -EINVAL
     * (a bad n) and -ERANGE (n over its bound) 400. */
    int (*recommend_json)(void *ctx, const char *id, const char *n,
                          char **json);
};

/* Limits and access. http_opts_default fills the defaults of the [http]
 * config keys (conf/nmfd.conf); the strings are borrowed by http_start,
 * which copies them. It is inline so that the config table (config.c),
 * which nmfctl links, does not pull the HTTP server and TLS into it. */
struct http_opts {
    unsigned max_connections;     /* accepted at once, all addresses */
    unsigned max_per_address;     /* accepted at once from one address */
    uint64_t header_timeout_ms;   /* accept (or keep-alive idle) to headers */
    uint64_t idle_timeout_ms;     /* keep-alive idle, stalled transfer */
    size_t connection_memory;     /* request line + headers + buffers */
    unsigned sse_max;             /* /events streams, all addresses */
    unsigned sse_max_per_address; /* /events streams from one address */
    unsigned sse_queue;           /* events a stream may lag before cut */
    const char *tls_cert_file;    /* PEM; both or neither: TLS */
    const char *tls_key_file;
    const char *token_file;    /* bearer token on the data routes */
    const char *password_file; /* user:crypt-hash lines, HTTP Basic */
    bool auth_probes;          /* credentials on /metrics, /healthz, /readyz */
};
static inline void http_opts_default(struct http_opts *o)
{
    *o = (struct http_opts){
        .max_connections = 512,
        .max_per_address = 16,
        .header_timeout_ms = 5000,
        .idle_timeout_ms = 30000,
        .connection_memory = 32768,
        .sse_max = 64,
        .sse_max_per_address = 4,
        .sse_queue = 64,
        .tls_cert_file = "",
        .tls_key_file = "",
        .token_file = "",
        .password_file = "",
        .auth_probes = false,
    };
}

/* Listens on listen: "127.0.0.1:9464", "[::1]:9464", ":9464" (all
 * interfaces), "localhost:9464"; port 0 picks a free port (http_port).
 * o NULL means http_opts_default. On failure returns a negative errno
 * with a message in err, and *out is untouched. p is copied; ctx must
 * outlive h. */
int http_start(struct http **out, uv_loop_t *loop, const char *listen,
               const struct http_opts *o, const struct http_provider *p,
               void *ctx, char *err, size_t errlen);

/* Whether the PEM certificate (chain) and key files load and belong
 * together (either empty: 0). 0, or -EINVAL with "file: reason" in err.
 * main checks this before the start, so that a bad pair is a config
 * error (exit 2) rather than a failed start. */
int http_tls_check(const char *cert_file, const char *key_file, char *err,
                   size_t errlen);

/* SIGHUP: re-reads the token, password, certificate and key files. With
 * TLS the MHD daemon is restarted on the same listening socket with the
 * new certificate (open connections are dropped, the port stays); on any
 * error the running credentials stay. 0 or a negative errno with err. */
int http_reload(struct http *h, char *err, size_t errlen);

/* The bound TCP port. */
int http_port(const struct http *h);

/* Registers nmfd_http_requests_total{code}, nmfd_http_connections,
 * nmfd_http_refused_total{reason}, nmfd_http_sse_clients,
 * nmfd_http_sse_dropped_total and nmfd_http_tls_reloads_total{result}
 * in m; m must outlive h. */
int http_metrics_register(struct http *h, struct metrics *m);

/* Sends "event: <event>\ndata: <json>\n\n" to every /events client (a
 * json with newlines becomes several data lines). The last 48 events are
 * kept and replayed, oldest first, to a client on connect, so it gets the
 * latest at once and some history. A client whose queue (sse_queue
 * events) is full is cut off: the event is counted in
 * nmfd_http_sse_dropped_total, the client in
 * nmfd_http_refused_total{reason="sse_slow"}; a browser reconnects and
 * gets the replay. */
void http_sse_broadcast(struct http *h, const char *event, const char *json);

/* Stops accepting, drops every connection, stops MHD and closes the uv
 * handles; closed(arg) runs once the last handle is closed and h is
 * freed. The loop then drains to uv_loop_close() == 0. */
void http_close(struct http *h, void (*closed)(void *arg), void *arg);

#endif
