/* forward.c -- a loopback TCP forwarder on a thread of its own.
 *
 * librdkafka's mock cluster listens on random ports, so the address of an
 * embedded broker changes at every start. A Kafka client needs a fixed
 * address only to bootstrap: the metadata it gets back names each broker's
 * own address, and it talks to those directly. This module listens on
 * 127.0.0.1:PORT and relays each connection, byte for byte, to one target
 * (the first broker), so that PORT can be written once into a producer's
 * configuration and stay right across restarts. It parses nothing of what
 * it relays.
 *
 * It runs a libuv loop of its own on a thread of its own, so the relay
 * never waits on its caller and its caller needs no loop (nmfctl broker
 * runs none that could carry it; nmfd's must not carry a client's bytes).
 * Backpressure: a side stops reading while its peer has more than
 * FORWARD_QUEUE_MAX bytes waiting to be written, and reads again once
 * they are written. When one side ends, what it sent is written out to the
 * other, then both close.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "errf.h"
#include "forward.h"

#define FORWARD_BUF       (64 * 1024)
#define FORWARD_QUEUE_MAX (1024 * 1024)
#define FORWARD_BACKLOG   128

struct forward {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    int started; /* the thread runs the loop */
    struct sockaddr_in target;
    _Atomic uint64_t accepted;
};

struct forward_pair;

/* One side of a relayed connection: the client's or the target's. */
struct forward_end {
    uv_tcp_t tcp;
    struct forward_pair *pair;
    struct forward_end *peer;
    int paused;  /* reads stopped for the peer's queue */
    int reading; /* reads started (the target is connected) */
};

struct forward_pair {
    struct forward_end client, target;
    uv_connect_t connect;
    uv_shutdown_t shutdown;
    int shutting; /* one side ended; its bytes are going out to the other */
    int closing;
    int closed; /* close callbacks seen, of 2 */
};

struct forward_write {
    uv_write_t req;
    char *base;
    struct forward_end *from; /* whose bytes these are */
};

static void forward_end_closed(uv_handle_t *h)
{
    struct forward_end *e = h->data;
    struct forward_pair *p = e->pair;
    if (++p->closed == 2)
        free(p);
}

static void forward_pair_close(struct forward_pair *p)
{
    if (p->closing)
        return;
    p->closing = 1;
    uv_close((uv_handle_t *)&p->client.tcp, forward_end_closed);
    uv_close((uv_handle_t *)&p->target.tcp, forward_end_closed);
}

static void forward_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    buf->base = malloc(FORWARD_BUF);
    buf->len = buf->base ? FORWARD_BUF : 0;
}

static void forward_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void forward_written(uv_write_t *req, int status)
{
    struct forward_write *w = (struct forward_write *)req;
    struct forward_end *from = w->from;
    free(w->base);
    free(w);
    if (status < 0) {
        forward_pair_close(from->pair);
        return;
    }
    if (from->paused && !from->pair->closing &&
        from->peer->tcp.write_queue_size <= FORWARD_QUEUE_MAX) {
        from->paused = 0;
        if (uv_read_start((uv_stream_t *)&from->tcp, forward_alloc,
                          forward_read))
            forward_pair_close(from->pair);
    }
}

static void forward_shut(uv_shutdown_t *req, int status)
{
    (void)status;
    forward_pair_close(req->data);
}

static void forward_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct forward_end *e = s->data;
    struct forward_pair *p = e->pair;
    if (nread <= 0) {
        free(buf->base);
        if (nread == 0)
            return; /* nothing now (EAGAIN) */
        /* The end of this side (or an error): what it sent goes out to
         * the peer first; a shutdown completes after the queued writes. */
        uv_read_stop(s);
        if (nread == UV_EOF && !p->closing && !p->shutting) {
            p->shutting = 1;
            p->shutdown.data = p;
            if (uv_shutdown(&p->shutdown, (uv_stream_t *)&e->peer->tcp,
                            forward_shut) == 0)
                return;
        }
        forward_pair_close(p);
        return;
    }
    struct forward_write *w = malloc(sizeof(*w));
    if (!w) {
        free(buf->base);
        forward_pair_close(p);
        return;
    }
    w->base = buf->base;
    w->from = e;
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
    if (uv_write(&w->req, (uv_stream_t *)&e->peer->tcp, &out, 1,
                 forward_written)) {
        free(w->base);
        free(w);
        forward_pair_close(p);
        return;
    }
    if (e->peer->tcp.write_queue_size > FORWARD_QUEUE_MAX) {
        e->paused = 1;
        uv_read_stop(s);
    }
}

static void forward_connected(uv_connect_t *req, int status)
{
    struct forward_pair *p = req->data;
    if (status < 0 || p->closing) {
        forward_pair_close(p);
        return;
    }
    if (uv_read_start((uv_stream_t *)&p->client.tcp, forward_alloc,
                      forward_read) ||
        uv_read_start((uv_stream_t *)&p->target.tcp, forward_alloc,
                      forward_read)) {
        forward_pair_close(p);
        return;
    }
    p->client.reading = p->target.reading = 1;
}

static void forward_accept(uv_stream_t *server, int status)
{
    struct forward *f = server->data;
    if (status < 0)
        return;
    struct forward_pair *p = calloc(1, sizeof(*p));
    if (!p)
        return; /* the connection waits in the backlog */
    struct forward_end *ends[2] = {&p->client, &p->target};
    for (int i = 0; i < 2; i++) {
        ends[i]->pair = p;
        ends[i]->peer = ends[1 - i];
        uv_tcp_init(&f->loop, &ends[i]->tcp);
        ends[i]->tcp.data = ends[i];
    }
    if (uv_accept(server, (uv_stream_t *)&p->client.tcp)) {
        forward_pair_close(p);
        return;
    }
    atomic_fetch_add(&f->accepted, 1);
    uv_tcp_nodelay(&p->client.tcp, 1);
    uv_tcp_nodelay(&p->target.tcp, 1);
    p->connect.data = p;
    if (uv_tcp_connect(&p->connect, &p->target.tcp,
                       (const struct sockaddr *)&f->target, forward_connected))
        forward_pair_close(p);
}

static void forward_close_all(uv_handle_t *h, void *arg)
{
    struct forward *f = arg;
    if (uv_is_closing(h))
        return;
    if (h == (uv_handle_t *)&f->listener || h == (uv_handle_t *)&f->stop)
        uv_close(h, NULL);
    else
        forward_pair_close(((struct forward_end *)h->data)->pair);
}

static void forward_on_stop(uv_async_t *a)
{
    struct forward *f = a->data;
    uv_walk(&f->loop, forward_close_all, f);
}

static void forward_run(void *arg)
{
    struct forward *f = arg;
    /* Signals are the caller's threads' business; a write to a closed
     * peer gives EPIPE here, not a SIGPIPE to the process. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* Closes the handles of a loop no thread runs, and the loop. */
static void forward_close_unstarted(struct forward *f)
{
    uv_close((uv_handle_t *)&f->listener, NULL);
    uv_close((uv_handle_t *)&f->stop, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_loop_close(&f->loop);
}

int forward_new(struct forward **out, int port, char *err, size_t errlen)
{
    int rc;
    if (port < 1 || port > 65535)
        return io_errf(err, errlen, -EINVAL, "port %d: not in 1..65535", port);
    struct forward *f = calloc(1, sizeof(*f));
    if (!f)
        return io_errf(err, errlen, -ENOMEM, "out of memory");
    if ((rc = uv_loop_init(&f->loop))) {
        free(f);
        return io_errf(err, errlen, rc, "event loop: %s", uv_strerror(rc));
    }
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(&f->loop, &f->listener);
    f->listener.data = f;
    uv_async_init(&f->loop, &f->stop, forward_on_stop);
    f->stop.data = f;
    if ((rc = uv_tcp_bind(&f->listener, (const struct sockaddr *)&addr, 0)) ||
        (rc = uv_listen((uv_stream_t *)&f->listener, FORWARD_BACKLOG,
                        forward_accept))) {
        forward_close_unstarted(f);
        free(f);
        return io_errf(err, errlen, rc, "127.0.0.1:%d: %s", port,
                       uv_strerror(rc));
    }
    *out = f;
    return 0;
}

int forward_start(struct forward *f, const char *target, char *err,
                  size_t errlen)
{
    char host[64];
    int tport = 0, rc;
    if (f->started)
        return io_errf(err, errlen, -EEXIST, "relaying already");
    const char *colon = target ? strrchr(target, ':') : NULL;
    if (!colon || (size_t)(colon - target) >= sizeof(host) ||
        sscanf(colon + 1, "%d", &tport) != 1 || tport < 1 || tport > 65535)
        return io_errf(err, errlen, -EINVAL, "target %s: not ADDRESS:PORT",
                       target ? target : "(none)");
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    if ((rc = uv_ip4_addr(host, tport, &f->target)))
        return io_errf(err, errlen, rc, "target %s: %s", target,
                       uv_strerror(rc));
    if ((rc = uv_thread_create(&f->thread, forward_run, f)))
        return io_errf(err, errlen, rc, "thread: %s", uv_strerror(rc));
    f->started = 1;
    return 0;
}

void forward_free(struct forward *f)
{
    if (!f)
        return;
    if (f->started) {
        uv_async_send(&f->stop);
        uv_thread_join(&f->thread);
        uv_loop_close(&f->loop);
    } else {
        forward_close_unstarted(f);
    }
    free(f);
}

uint64_t forward_accepted(const struct forward *f)
{
    return atomic_load(&f->accepted);
}
