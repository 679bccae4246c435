/* ctl_broker.c -- `nmfctl broker`: a standalone Kafka-protocol broker.
 *
 * Hosts librdkafka's mock cluster (io/broker) until SIGINT or SIGTERM,
 * optionally behind a fixed bootstrap port (io/forward), prints its
 * bootstrap address on stdout, optionally publishes it in a
 * file (written to a temporary name and renamed, so a reader never sees
 * half of it), and optionally reads fault commands from a control FIFO,
 * answering each on stderr. It owns the bootstrap file and a FIFO it
 * created, and removes both on exit; it never removes a FIFO it found. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "broker.h"
#include "ctl.h"

#define CTL_BROKER_DEFAULT_TOPICS "events,nmf.segments,nmf.topics,nmf.snapshots"
#define CTL_BROKER_LINE_MAX       512

struct ctl_broker {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_pipe_t fifo;
    bool fifo_open;
    struct broker *b;
    char line[CTL_BROKER_LINE_MAX];
    size_t linelen;
    bool overlong;
    char readbuf[4096];
};

static void ctl_broker_usage(FILE *out)
{
    fprintf(out,
            "usage: nmfctl broker [--partitions N] [--topics a,b] "
            "[--brokers N] [--cluster]\n"
            "                     [--port PORT] [--bootstrap-file F] "
            "[--control FIFO]\n"
            "\n"
            "Runs a Kafka-protocol broker (librdkafka's mock cluster) on "
            "127.0.0.1 until\nSIGINT or SIGTERM and prints its bootstrap "
            "address on stdout. Data is kept in\nmemory only (about 5 MiB "
            "per partition, oldest dropped).\n"
            "\n"
            "  --partitions N      partitions of each topic (default 4)\n"
            "  --topics a,b        topics to create (default %s)\n"
            "  --brokers N         brokers in the cluster, ids 1..N "
            "(default 1)\n"
            "  --cluster           also the topics of a group of nmfd "
            "processes: nmf.stats\n"
            "                      and nmf.model with one partition, "
            "nmf.state with N\n"
            "  --port PORT         a fixed bootstrap address, "
            "127.0.0.1:PORT, relayed to the\n"
            "                      first broker (whose own port is "
            "random)\n"
            "  --bootstrap-file F  also write the address to F "
            "(atomically; removed on exit)\n"
            "  --control FIFO      read fault commands from FIFO (created "
            "if missing), one a\n"
            "                      line, answering ok or error: ... on "
            "stderr:\n"
            "                        down <id> | up <id> | rtt <id> <ms>   "
            "(id -1: all)\n"
            "                        error <Api> <count> <Error>  e.g. "
            "error Produce 3 _TRANSPORT\n"
            "                        topic <name> <partitions>\n",
            CTL_BROKER_DEFAULT_TOPICS);
}

static void ctl_broker_on_signal(uv_signal_t *h, int signum)
{
    struct ctl_broker *c = h->data;

    fprintf(stderr, "nmfctl broker: %s, stopping\n", strsignal(signum));
    uv_stop(&c->loop);
}

static void ctl_broker_command(struct ctl_broker *c, const char *cmd)
{
    char err[256];

    /* Blank lines and comments let scripts annotate what they send. */
    while (*cmd == ' ' || *cmd == '\t')
        cmd++;
    if (!*cmd || *cmd == '#')
        return;
    if (broker_fault(c->b, cmd, err, sizeof(err)) == 0)
        fprintf(stderr, "ok\n");
    else
        fprintf(stderr, "error: %s\n", err);
}

static void ctl_broker_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct ctl_broker *c = h->data;

    buf->base = c->readbuf;
    buf->len = sizeof(c->readbuf);
}

static void ctl_broker_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct ctl_broker *c = s->data;

    if (n < 0) {
        /* The FIFO is opened read-write, so writers come and go without an
         * EOF; anything else is a real error that ends control input. */
        fprintf(stderr, "nmfctl broker: control: %s\n", uv_strerror((int)n));
        uv_read_stop(s);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char ch = buf->base[i];

        if (ch == '\n') {
            c->line[c->linelen] = '\0';
            if (c->overlong)
                fprintf(stderr, "error: command too long\n");
            else
                ctl_broker_command(c, c->line);
            c->linelen = 0;
            c->overlong = false;
        } else if (c->linelen + 1 < sizeof(c->line)) {
            c->line[c->linelen++] = ch;
        } else {
            c->overlong = true;
        }
    }
}

/* Writes text to path through a temporary file in the same directory and
 * a rename, so that a reader sees either nothing or the whole line. */
static int ctl_broker_write_file(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    FILE *f;
    int n;

    n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -ENAMETOOLONG;
    f = fopen(tmp, "w");
    if (!f)
        return -errno;
    if (fprintf(f, "%s\n", text) < 0 || fflush(f) || fsync(fileno(f))) {
        int e = errno ? -errno : -EIO;
        fclose(f);
        unlink(tmp);
        return e;
    }
    if (fclose(f)) {
        int e = -errno;
        unlink(tmp);
        return e;
    }
    if (rename(tmp, path)) {
        int e = -errno;
        unlink(tmp);
        return e;
    }
    return 0;
}

static void ctl_broker_walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int ctl_broker_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"partitions", required_argument, NULL, 'p'},
        {"topics", required_argument, NULL, 't'},
        {"brokers", required_argument, NULL, 'b'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"control", required_argument, NULL, 'c'},
        {"port", required_argument, NULL, 'P'},
        {"cluster", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ctl_broker c;
    const char *topics = CTL_BROKER_DEFAULT_TOPICS;
    const char *bootfile = NULL, *control = NULL;
    long partitions = 4, nbrokers = 1, port = 0;
    bool fifo_made = false, boot_written = false, loop_ok = false;
    bool cluster = false;
    char err[256], *end;
    int opt, rc = 1, r, fd = -1;

    memset(&c, 0, sizeof(c));
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'p':
        case 'b': {
            long v;

            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 1 || v > 10000) {
                fprintf(stderr, "nmfctl broker: bad --%s '%s'\n",
                        opt == 'p' ? "partitions" : "brokers", optarg);
                return 2;
            }
            if (opt == 'p')
                partitions = v;
            else
                nbrokers = v;
            break;
        }
        case 'P':
            errno = 0;
            port = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || port < 1 || port > 65535) {
                fprintf(stderr, "nmfctl broker: bad --port '%s' (1..65535)\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            topics = optarg;
            break;
        case 'C':
            cluster = true;
            break;
        case 'f':
            bootfile = optarg;
            break;
        case 'c':
            control = optarg;
            break;
        case 'h':
            ctl_broker_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "nmfctl broker: bad option '%s'\n",
                    argv[optind - 1]);
            ctl_broker_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nmfctl broker: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }

    r = broker_open(&c.b, (int)nbrokers, topics, (int)partitions, (int)port,
                    err, sizeof(err));
    if (r) {
        /* Bad topic names and counts are usage errors; a port in use, or
         * a cluster that cannot start, is not. */
        fprintf(stderr, "nmfctl broker: %s\n", err);
        return r == -EINVAL || r == -EEXIST ? 2 : 1;
    }

    if (cluster &&
        ((r = broker_topic_create(c.b, "nmf.stats", 1)) ||
         (r = broker_topic_create(c.b, "nmf.model", 1)) ||
         (r = broker_topic_create(c.b, "nmf.state", (int)partitions)))) {
        fprintf(stderr, "nmfctl broker: cluster topics: %s\n", strerror(-r));
        goto out;
    }
    if ((r = uv_loop_init(&c.loop)) < 0) {
        fprintf(stderr, "nmfctl broker: %s\n", uv_strerror(r));
        goto out;
    }
    loop_ok = true;
    c.sigint.data = c.sigterm.data = &c;
    uv_signal_init(&c.loop, &c.sigint);
    uv_signal_init(&c.loop, &c.sigterm);
    uv_signal_start(&c.sigint, ctl_broker_on_signal, SIGINT);
    uv_signal_start(&c.sigterm, ctl_broker_on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);

    if (control) {
        struct stat st;

        if (stat(control, &st) == 0) {
            if (!S_ISFIFO(st.st_mode)) {
                fprintf(stderr, "nmfctl broker: %s: not a FIFO\n", control);
                rc = 2;
                goto out;
            }
        } else if (errno == ENOENT && mkfifo(control, 0600) == 0) {
            fifo_made = true;
        } else {
            fprintf(stderr, "nmfctl broker: %s: %s\n", control,
                    strerror(errno));
            goto out;
        }
        /* Read-write: the FIFO never reports EOF when a writer leaves. */
        fd = open(control, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "nmfctl broker: %s: %s\n", control,
                    strerror(errno));
            goto out;
        }
        uv_pipe_init(&c.loop, &c.fifo, 0);
        c.fifo.data = &c;
        if ((r = uv_pipe_open(&c.fifo, fd)) < 0) {
            fprintf(stderr, "nmfctl broker: %s: %s\n", control, uv_strerror(r));
            close(fd);
            goto out;
        }
        c.fifo_open = true;
        uv_read_start((uv_stream_t *)&c.fifo, ctl_broker_alloc,
                      ctl_broker_on_read);
    }

    if (bootfile) {
        if ((r = ctl_broker_write_file(bootfile, broker_bootstraps(c.b))) < 0) {
            fprintf(stderr, "nmfctl broker: %s: %s\n", bootfile, strerror(-r));
            goto out;
        }
        boot_written = true;
    }
    printf("%s\n", broker_bootstraps(c.b));
    fflush(stdout);

    uv_run(&c.loop, UV_RUN_DEFAULT);
    rc = 0;

out:
    if (loop_ok) {
        uv_walk(&c.loop, ctl_broker_walk_close, NULL);
        uv_run(&c.loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&c.loop) != 0)
            fprintf(stderr, "nmfctl broker: loop did not close cleanly\n");
    }
    if (boot_written)
        unlink(bootfile);
    if (fifo_made)
        unlink(control);
    broker_free(c.b);
    return rc;
}
