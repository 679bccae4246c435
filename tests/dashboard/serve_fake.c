/* serve_fake.c -- serves the dashboard through the real http subsystem
 * with planted, slowly drifting epochs, so the page can be checked (and
 * looked at) without Kafka or a model.
 *
 *   serve_fake [--listen ADDR] [--interval-ms N] [--lifetime-s N] [--k K]
 *
 * Prints the bound port on stdout, broadcasts one "epoch" event every
 * interval, and exits 0 on SIGTERM/SIGINT or after the lifetime (so a
 * forgotten process cannot outlive its test for long).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include <jansson.h>

#include "http.h"

#define FAKE_K_MAX 8
#define FAKE_ITEMS 8

/* Item names per planted topic; the check script looks for them. */
static const char *const fake_items[FAKE_K_MAX][FAKE_ITEMS] = {
    {"Espresso beans 1kg", "Milk frother", "Ceramic cup set", "Burr grinder",
     "Pour-over kettle", "Oat milk", "Descaler", "Paper filters"},
    {"Trail running shoes", "Running socks", "Hydration vest",
     "GPS watch strap", "Energy gels", "Headlamp", "Wind jacket",
     "Foam roller"},
    {"Tomato seeds", "Raised garden bed", "Pruning shears", "Compost bin",
     "Watering can", "Garden gloves", "Seed trays", "Slug pellets"},
    {"Picture book: the moon", "Wooden puzzle", "Crayons 24", "Bath toys",
     "Bedtime stories", "Sticker album", "Kids scissors", "Play dough"},
    {"Mechanical keyboard", "Gaming mouse", "Headset", "Mouse pad XL",
     "Controller", "USB hub", "Monitor arm", "Cable ties"},
    {"Yoga mat", "Resistance bands", "Kettlebell 12kg", "Jump rope",
     "Water bottle", "Gym towel", "Chalk", "Wrist wraps"},
    {"Dog food 10kg", "Chew toy", "Leash", "Dog bed", "Poop bags", "Treats",
     "Brush", "Collar"},
    {"Olive oil", "Pasta 1kg", "Canned tomatoes", "Parmesan", "Basil", "Garlic",
     "Chili flakes", "Sea salt"},
};

struct fake {
    uv_loop_t *loop;
    uv_timer_t tick;
    uv_timer_t lifetime;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    struct http *http;
    int k;
    uint64_t epoch;
    double events;
    double users;
    int closing;
};

static int fake_metrics(void *ctx, char **text, size_t *len)
{
    struct fake *f = ctx;

    if (asprintf(text,
                 "# HELP nmfd_epoch Epoch.\n# TYPE nmfd_epoch gauge\n"
                 "nmfd_epoch %llu\n",
                 (unsigned long long)f->epoch) < 0)
        return -ENOMEM;
    *len = strlen(*text);
    return 0;
}

static int fake_health(void *ctx)
{
    return 0;
}

static int fake_ready(void *ctx, const char **why)
{
    return 0;
}

static const struct http_provider fake_provider = {
    .metrics = fake_metrics,
    .health = fake_health,
    .ready = fake_ready,
};

/* Topic j's share drifts slowly so the stacked chart has shape. */
static double fake_share(const struct fake *f, int j)
{
    double t = (double)f->epoch / 40.0;

    return 1.0 + 0.45 * sin(t + 1.7 * j) + 0.1 * j;
}

static void on_tick(uv_timer_t *t)
{
    struct fake *f = t->data;
    json_t *doc, *sizes, *topics;
    double share[FAKE_K_MAX], total = 0, rate;
    char *text;
    int j, i;

    f->epoch++;
    rate = 1800 + 600 * sin((double)f->epoch / 7.0) +
           150 * sin((double)f->epoch * 1.3);
    f->events += rate * 0.5;
    f->users += 37 + 20 * sin((double)f->epoch / 5.0);
    for (j = 0; j < f->k; j++)
        total += share[j] = fake_share(f, j);
    sizes = json_array();
    topics = json_array();
    for (j = 0; j < f->k; j++)
        json_array_append_new(
            sizes, json_integer((json_int_t)(f->users * share[j] / total)));
    /* The topics come in a rotating order (the page must key its cards by
     * the topic id, not by the position), each with a continuity near 1
     * but one topic's low every seventh epoch. */
    for (int r = 0; r < f->k; r++) {
        j = (int)((r + f->epoch) % (uint64_t)f->k);
        json_int_t n = (json_int_t)(f->users * share[j] / total);
        json_t *top = json_array();
        double cont = f->epoch % 7 == 0 && j == (int)(f->epoch / 7 % f->k)
                          ? 0.41
                          : 0.999 - 0.002 * j;

        for (i = 0; i < FAKE_ITEMS; i++) {
            double w = 0.62 * pow(0.72, i) *
                       (1 + 0.04 * sin((double)f->epoch / 3.0 + i));

            json_array_append_new(top, json_pack("[s f]", fake_items[j][i], w));
        }
        json_array_append_new(
            topics, json_pack("{s:i s:I s:f s:f s:o}", "topic", j, "users", n,
                              "mass", f->events * share[j] / total * 0.8,
                              "continuity", cont, "top", top));
    }
    doc =
        json_pack("{s:I s:I s:i s:I s:I s:I s:I s:f s:I s:f s:o s:o}", "epoch",
                  (json_int_t)f->epoch, "ts", (json_int_t)time(NULL) * 1000,
                  "k", f->k, "users", (json_int_t)f->users, "items",
                  (json_int_t)(f->k * 950), "events", (json_int_t)f->events,
                  "rejected", (json_int_t)(f->events / 2500), "rate", rate,
                  "lag", (json_int_t)(40 + 30 * sin((double)f->epoch / 4.0)),
                  "loss", 0.18 + 0.25 * exp(-(double)f->epoch / 30.0),
                  "segment_sizes", sizes, "topics", topics);
    text = json_dumps(doc, JSON_COMPACT);
    if (text)
        http_sse_broadcast(f->http, "epoch", text);
    free(text);
    json_decref(doc);
}

static void on_http_closed(void *arg)
{
}

static void fake_stop(struct fake *f)
{
    if (f->closing++)
        return;
    http_close(f->http, on_http_closed, f);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_close((uv_handle_t *)&f->lifetime, NULL);
    uv_close((uv_handle_t *)&f->sigterm, NULL);
    uv_close((uv_handle_t *)&f->sigint, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    fake_stop(s->data);
}

static void on_lifetime(uv_timer_t *t)
{
    fake_stop(t->data);
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:0";
    unsigned interval = 150, lifetime = 120;
    struct fake f = {.k = 5};
    char err[256];
    int i, rc;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--listen"))
            listen = argv[i + 1];
        else if (!strcmp(argv[i], "--interval-ms"))
            interval = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lifetime-s"))
            lifetime = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--k"))
            f.k = atoi(argv[i + 1]);
        else
            break;
    }
    if (i != argc || f.k < 1 || f.k > FAKE_K_MAX || interval == 0) {
        fprintf(stderr, "usage: serve_fake [--listen ADDR] [--interval-ms N] "
                        "[--lifetime-s N] [--k 1..8]\n");
        return 2;
    }
    f.loop = uv_default_loop();
    f.users = 4000;
    f.events = 250000;
    rc = http_start(&f.http, f.loop, listen, NULL, &fake_provider, &f, err,
                    sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "serve_fake: %s\n", err);
        return 1;
    }
    printf("%d\n", http_port(f.http));
    fflush(stdout);
    uv_timer_init(f.loop, &f.tick);
    uv_timer_init(f.loop, &f.lifetime);
    uv_signal_init(f.loop, &f.sigterm);
    uv_signal_init(f.loop, &f.sigint);
    f.tick.data = f.lifetime.data = f.sigterm.data = f.sigint.data = &f;
    /* A first epoch right away, so a page never waits long. */
    on_tick(&f.tick);
    uv_timer_start(&f.tick, on_tick, interval, interval);
    uv_timer_start(&f.lifetime, on_lifetime, (uint64_t)lifetime * 1000, 0);
    uv_signal_start(&f.sigterm, on_signal, SIGTERM);
    uv_signal_start(&f.sigint, on_signal, SIGINT);
    uv_run(f.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(f.loop);
    if (rc) {
        fprintf(stderr, "serve_fake: loop not drained: %s\n", uv_strerror(rc));
        return 1;
    }
    return 0;
}
