/* test_config.c -- the configuration table: defaults, INI files, --set,
 * every error a user can reach (with its exact "file:line: message"), the
 * cross-key checks, dumps with masked secrets, SIGHUP reload, and the
 * shipped conf/nmfd.conf, which must be exactly config_write_commented().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"
#include "kafka.h"
#include "listen.h"

static struct config *load(const char *text, int want_rc, char *err,
                           size_t errlen)
{
    struct config *c = config_new();
    cr_assert_not_null(c);
    err[0] = '\0';
    int rc = config_load_string(c, "t.conf", text, err, errlen);
    cr_assert_eq(rc, want_rc, "rc %d, want %d, err '%s'", rc, want_rc, err);
    return c;
}

/* Loads text and expects exactly the error message want. */
static void load_fails(const char *text, const char *want)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = load(text, -EINVAL, err, sizeof(err));
    cr_assert_str_eq(err, want);
    config_free(c);
}

static void set_fails(const char *assignment, const char *want)
{
    char err[CONFIG_ERR_MAX] = "";
    struct config *c = config_new();
    cr_assert_eq(config_set(c, assignment, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, want);
    config_free(c);
}

static char *dump(const struct config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    config_dump(c, f);
    fclose(f);
    return buf;
}

static char *commented(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    config_write_commented(f);
    fclose(f);
    return buf;
}

static const char *kafka_value(const struct config *c, const char *key)
{
    for (size_t i = 0; i < c->kafka.n; i++)
        if (!strcmp(c->kafka.kv[i].key, key))
            return c->kafka.kv[i].value;
    return NULL;
}

/* Asserts that a and b hold the same value for every key: their dumps are
 * equal line by line once the origin comments are cut off. */
static void assert_same(const struct config *a, const struct config *b)
{
    char *da = dump(a), *db = dump(b);
    char *sa, *sb;
    char *la = strtok_r(da, "\n", &sa), *lb = strtok_r(db, "\n", &sb);
    while (la && lb) {
        char *ca = strstr(la, " ; "), *cb = strstr(lb, " ; ");
        if (ca)
            *ca = '\0';
        if (cb)
            *cb = '\0';
        cr_assert_str_eq(la, lb);
        la = strtok_r(NULL, "\n", &sa);
        lb = strtok_r(NULL, "\n", &sb);
    }
    cr_assert(!la && !lb, "dumps differ in length");
    free(da);
    free(db);
}

Test(config, defaults_are_design_section_6)
{
    struct config *c = config_new();
    struct model_params p;
    cr_assert_not_null(c);
    model_params_default(&p);

    cr_assert_str_eq(kafka_value(c, "bootstrap.servers"), "localhost:9092");
    cr_assert_str_eq(kafka_value(c, "group.id"), "nmfd");
    cr_assert_eq(c->kafka.n, 2);

    cr_assert_str_eq(c->input.topics, "nmf.events");
    cr_assert_eq(c->input.ntopics, 1);
    cr_assert_str_eq(c->input.topic[0], "nmf.events");
    cr_assert_eq(c->input.format, CONFIG_INPUT_AUTO);
    cr_assert_str_eq(c->input.field_user, "user");
    cr_assert_str_eq(c->input.field_item, "item");
    cr_assert_str_eq(c->input.field_weight, "weight");
    cr_assert_str_eq(c->input.field_type, "type");
    cr_assert_str_eq(c->input.field_ts, "ts");
    cr_assert_eq(c->input.nweights, 0);
    cr_assert_str_eq(c->input.dead_letter_topic, "");
    cr_assert_eq(c->input.max_message_bytes, 1024 * 1024);
    cr_assert_eq(c->input.max_events_per_message, 10000);
    cr_assert_eq(c->input.reject_log_interval_ms, 10000);
    cr_assert_eq(c->input.reject_log_burst, 10);

    cr_assert_eq(c->model.params.k, 16);
    cr_assert_eq(c->model.params.half_life_ms, 0);
    cr_assert_float_eq(c->model.params.alpha_h, 0.0, 1e-300);
    cr_assert_float_eq(c->model.params.alpha_w, 0.0, 1e-300);
    cr_assert_float_eq(c->model.params.l1_ratio, 0.0, 1e-300);
    cr_assert_eq(c->model.params.profile_max, 16384);
    cr_assert_eq(c->model.refresh_interval_ms, 5000);
    cr_assert_eq(c->model.params.refresh_events, 200000);
    cr_assert_eq(c->model.params.ttl_ms, 0);
    cr_assert_eq(c->model.params.seed, 1);
    cr_assert_eq(c->model.params.warmup_events, 10000);
    /* The solver's knobs default to what the model says. */
    cr_assert_eq(c->model.params.nnls_sweeps, p.nnls_sweeps);
    cr_assert_float_eq(c->model.params.nnls_tol, p.nnls_tol, 1e-300);
    cr_assert_eq(c->model.params.hals_sweeps, p.hals_sweeps);
    cr_assert_float_eq(c->model.params.refine_tol, p.refine_tol, 1e-300);
    cr_assert_eq(c->model.refine_users, 2000);

    cr_assert_eq(c->snapshot.interval_ms, 5000);
    cr_assert_eq(c->snapshot.full_every, 60);
    cr_assert_eq(c->snapshot.top_items, 20);
    cr_assert_str_eq(c->snapshot.topic_segments, "nmf.segments");
    cr_assert_str_eq(c->snapshot.topic_topics, "nmf.topics");
    cr_assert_str_eq(c->snapshot.topic_manifest, "nmf.snapshots");
    cr_assert(c->snapshot.transactional);
    cr_assert_str_eq(c->snapshot.file, "");
    cr_assert_str_eq(c->snapshot.item_names, "");

    cr_assert_str_eq(c->checkpoint.dir, "/var/lib/nmfd");
    cr_assert_eq(c->checkpoint.interval_ms, 60000);

    cr_assert_str_eq(c->http.listen, "127.0.0.1:9464");
    char host[256];
    uint16_t port;
    cr_assert_null(listen_parse(c->http.listen, host, sizeof(host), &port));
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 9464);

    cr_assert_eq(c->log.level, LOG_INFO);
    cr_assert_str_eq(c->path, "");
    cr_assert_str_eq(config_origin(c, "model.k"), "default");
    cr_assert_str_eq(config_origin(c, "kafka.group.id"), "default");
    cr_assert_null(config_origin(c, "model.nope"));

    char err[CONFIG_ERR_MAX];
    cr_assert_eq(config_check(c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(config_load(c, NULL, NULL, 0, err, sizeof(err)), 0);
    config_destroy(&c);
    cr_assert_null(c);
}

Test(config, file_values_land_in_fields)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = load("# comment\n"
                            "[kafka]\n"
                            "group.id = segs\n"
                            "security.protocol = SASL_SSL\n"
                            "\n"
                            "[input]\n"
                            "topics = a, b ,c\n"
                            "format = json\n"
                            "field.user = uid\n"
                            "weight.click = 3\n"
                            "weight.view = 0.5\n"
                            "max_message_bytes = 64KiB\n"
                            "[model]\n"
                            "k = 32\n"
                            "half_life = 7d\n"
                            "alpha_h = 0.25\n"
                            "l1_ratio = 1\n"
                            "ttl = 2h\n"
                            "nnls_tol = 1e-6\n"
                            "[snapshot]\n"
                            "interval = 500ms\n"
                            "transactional = off\n"
                            "[http]\n"
                            "listen = [::1]:8080\n"
                            "[log]\n"
                            "level = debug ; inline comment\n",
                            0, err, sizeof(err));
    /* Defaults stay first and are replaced in place; new keys follow. */
    cr_assert_eq(c->kafka.n, 3);
    cr_assert_str_eq(c->kafka.kv[0].key, "bootstrap.servers");
    cr_assert_str_eq(c->kafka.kv[0].origin, "default");
    cr_assert_eq(c->kafka.kv[0].line, 0);
    cr_assert_str_eq(c->kafka.kv[1].key, "group.id");
    cr_assert_str_eq(c->kafka.kv[1].value, "segs");
    cr_assert_str_eq(c->kafka.kv[1].origin, "t.conf:3");
    cr_assert_eq(c->kafka.kv[1].line, 3);
    cr_assert_str_eq(c->kafka.kv[2].key, "security.protocol");
    cr_assert_str_eq(c->kafka.kv[2].value, "SASL_SSL");
    cr_assert_eq(c->kafka.kv[2].line, 4);

    cr_assert_eq(c->input.ntopics, 3);
    cr_assert_str_eq(c->input.topic[0], "a");
    cr_assert_str_eq(c->input.topic[1], "b");
    cr_assert_str_eq(c->input.topic[2], "c");
    cr_assert_eq(c->input.format, CONFIG_INPUT_JSON);
    cr_assert_str_eq(c->input.field_user, "uid");
    cr_assert_eq(c->input.nweights, 2);
    cr_assert_str_eq(c->input.weights[0].type, "click");
    cr_assert_float_eq(c->input.weights[0].weight, 3.0, 1e-12);
    cr_assert_str_eq(c->input.weights[1].type, "view");
    cr_assert_float_eq(c->input.weights[1].weight, 0.5, 1e-12);
    cr_assert_eq(c->input.max_message_bytes, 65536);

    cr_assert_eq(c->model.params.k, 32);
    cr_assert_eq(c->model.params.half_life_ms, 7LL * 86400 * 1000);
    cr_assert_float_eq(c->model.params.alpha_h, 0.25, 1e-12);
    cr_assert_float_eq(c->model.params.l1_ratio, 1.0, 1e-12);
    cr_assert_eq(c->model.params.ttl_ms, 2LL * 3600 * 1000);
    cr_assert_float_eq(c->model.params.nnls_tol, 1e-6, 1e-18);
    cr_assert_eq(c->snapshot.interval_ms, 500);
    cr_assert_not(c->snapshot.transactional);
    char host[256];
    uint16_t port;
    cr_assert_null(listen_parse(c->http.listen, host, sizeof(host), &port));
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 8080);
    cr_assert_eq(c->log.level, LOG_DEBUG);
    cr_assert_str_eq(config_origin(c, "model.k"), "t.conf:14");
    cr_assert_str_eq(config_origin(c, "log.level"), "t.conf:26");
    cr_assert_eq(config_check(c, err, sizeof(err)), 0, "%s", err);
    config_free(c);
}

Test(config, indented_keys_are_keys_not_continuations)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = load("[model]\n"
                            "    k = 8\n"
                            "    seed = 7\n"
                            "\t[log]\n"
                            "\tlevel = notice\n",
                            0, err, sizeof(err));
    cr_assert_eq(c->model.params.k, 8);
    cr_assert_eq(c->model.params.seed, 7);
    cr_assert_eq(c->log.level, LOG_NOTICE);
    config_free(c);
}

Test(config, long_lines_are_read_whole)
{
    /* Longer than libinih's 200-byte line buffer. */
    char text[4096], servers[1024] = "";
    for (int i = 0; i < 20; i++) {
        char b[64];
        snprintf(b, sizeof(b), "%sbroker-%02d.example.internal:9092",
                 i ? "," : "", i);
        strcat(servers, b);
    }
    snprintf(text, sizeof(text),
             "[kafka]\nbootstrap.servers = %s ; twenty brokers\n"
             "[model]\nk = 9\n",
             servers);
    char err[CONFIG_ERR_MAX];
    struct config *c = load(text, 0, err, sizeof(err));
    cr_assert_gt(strlen(servers), 600);
    cr_assert_str_eq(kafka_value(c, "bootstrap.servers"), servers);
    cr_assert_eq(c->kafka.kv[0].line, 2);
    cr_assert_eq(c->model.params.k, 9);
    cr_assert_str_eq(config_origin(c, "model.k"), "t.conf:4");
    config_free(c);

    /* A long value that is wrong is still reported at its line. */
    snprintf(text, sizeof(text), "\n[model]\nseed = %s\n", servers);
    c = load(text, -EINVAL, err, sizeof(err));
    cr_assert_eq(strncmp(err, "t.conf:3: model.seed = broker-00", 32), 0, "%s",
                 err);
    config_free(c);
}

Test(config, later_values_win_and_kafka_keys_keep_order)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = load("[kafka]\n"
                            "client.id = 1\n"
                            "linger.ms = 2\n"
                            "client.id = 3\n"
                            "[model]\nk = 4\nk = 5\n",
                            0, err, sizeof(err));
    cr_assert_eq(c->kafka.n, 4);
    cr_assert_str_eq(c->kafka.kv[2].key, "client.id");
    cr_assert_str_eq(c->kafka.kv[2].value, "3");
    cr_assert_eq(c->kafka.kv[2].line, 4);
    cr_assert_str_eq(c->kafka.kv[3].key, "linger.ms");
    cr_assert_eq(c->model.params.k, 5);
    config_free(c);
}

/* nmfctl hands no judge over: its commands take model.* keys only, and
 * config.c must not pull librdkafka into it. The keys are then kept as
 * given; nmfd judges them (the test below). */
Test(config, kafka_keys_are_kept_unjudged_without_a_judge)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = config_new();
    cr_assert_eq(config_set(c, "kafka.no.such.property=1", err, sizeof(err)),
                 0, "%s", err);
    cr_assert_str_eq(kafka_value(c, "no.such.property"), "1");
    config_free(c);
}

Test(config, kafka_keys_are_judged_by_librdkafka)
{
    char err[CONFIG_ERR_MAX];
    config_judge_kafka(kafka_conf_check); /* as nmfd's main does */
    struct config *c = config_new();
    cr_assert_eq(config_load_string(c, "k.conf",
                                    "[kafka]\nno.such.property = 1\n", err,
                                    sizeof(err)),
                 -EINVAL);
    cr_assert(strstr(err, "k.conf:2: kafka.no.such.property = 1: ") == err,
              "%s", err);
    cr_assert_eq(config_load_string(c, "k.conf",
                                    "[kafka]\nsession.timeout.ms = soon\n", err,
                                    sizeof(err)),
                 -EINVAL);
    cr_assert_not_null(strstr(err, "k.conf:2: kafka.session.timeout.ms"));
    cr_assert_eq(config_set(c, "kafka.bogus=1", err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "--set: kafka.bogus = 1"), "%s", err);
    cr_assert_eq(c->kafka.n, 2); /* the defaults, nothing else */
    config_free(c);
}

Test(config, units)
{
    uint64_t v;
    bool b;
    cr_assert_eq(config_parse_duration("0", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(config_parse_duration("500ms", &v), 0);
    cr_assert_eq(v, 500);
    cr_assert_eq(config_parse_duration("10s", &v), 0);
    cr_assert_eq(v, 10000);
    cr_assert_eq(config_parse_duration("5m", &v), 0);
    cr_assert_eq(v, 300000);
    cr_assert_eq(config_parse_duration("2h", &v), 0);
    cr_assert_eq(v, 7200000);
    cr_assert_eq(config_parse_duration("7d", &v), 0);
    cr_assert_eq(v, 604800000);
    cr_assert_eq(config_parse_duration("10", &v), -EINVAL);
    cr_assert_eq(config_parse_duration("-1s", &v), -EINVAL);
    cr_assert_eq(config_parse_duration("1.5s", &v), -EINVAL);
    cr_assert_eq(config_parse_duration("s", &v), -EINVAL);
    cr_assert_eq(config_parse_duration("", &v), -EINVAL);
    cr_assert_eq(config_parse_duration("99999999999999999999d", &v), -ERANGE);
    cr_assert_eq(config_parse_duration("999999999999999d", &v), -ERANGE);

    cr_assert_eq(config_parse_size("512", &v), 0);
    cr_assert_eq(v, 512);
    cr_assert_eq(config_parse_size("64k", &v), 0);
    cr_assert_eq(v, 65536);
    cr_assert_eq(config_parse_size("64KiB", &v), 0);
    cr_assert_eq(v, 65536);
    cr_assert_eq(config_parse_size("1M", &v), 0);
    cr_assert_eq(v, 1048576);
    cr_assert_eq(config_parse_size("1MiB", &v), 0);
    cr_assert_eq(v, 1048576);
    cr_assert_eq(config_parse_size("1G", &v), 0);
    cr_assert_eq(v, 1073741824);
    cr_assert_eq(config_parse_size("1T", &v), -EINVAL);
    cr_assert_eq(config_parse_size("k", &v), -EINVAL);

    const char *yes[] = {"true", "yes", "on", "1", "TRUE"};
    const char *no[] = {"false", "no", "off", "0", "Off"};
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(config_parse_bool(yes[i], &b), 0);
        cr_assert(b);
        cr_assert_eq(config_parse_bool(no[i], &b), 0);
        cr_assert_not(b);
    }
    cr_assert_eq(config_parse_bool("maybe", &b), -EINVAL);
}

Test(config, listen_forms)
{
    char host[256];
    uint16_t port;
    cr_assert_null(
        listen_parse("127.0.0.1:9464", host, sizeof(host), &port));
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 9464);
    cr_assert_null(listen_parse("[::]:80", host, sizeof(host), &port));
    cr_assert_str_eq(host, "::");
    cr_assert_eq(port, 80);
    cr_assert_null(listen_parse(":0", host, sizeof(host), &port));
    cr_assert_str_eq(host, "");
    cr_assert_eq(port, 0);
    cr_assert_null(listen_parse("localhost:1", host, sizeof(host), &port));
    cr_assert_str_eq(host, "localhost");

    char err[CONFIG_ERR_MAX];
    struct config *c = load("[http]\nlisten =\n", 0, err, sizeof(err));
    cr_assert_str_eq(c->http.listen, "");
    config_free(c);
}

/* Every error a user can reach in a file, with its exact message. */

Test(config_errors, unknown_section)
{
    load_fails("[model]\nk = 4\n[modle]\n",
               "t.conf:3: unknown section [modle]");
    load_fails("[nope]\nx = 1\n", "t.conf:1: unknown section [nope]");
}

Test(config_errors, unknown_key)
{
    load_fails("[model]\nkk = 4\n",
               "t.conf:2: unknown key model.kk (did you mean model.k?)");
    load_fails("[input]\nzzzzzzzz = 4\n",
               "t.conf:2: unknown key input.zzzzzzzz");
}

Test(config_errors, key_outside_section)
{
    load_fails("k = 4\n", "t.conf:1: k: key outside a section");
}

Test(config_errors, syntax)
{
    load_fails("[model]\nk 4\n",
               "t.conf:2: syntax error, expected [section] or key = value");
    load_fails("[model\nk = 4\n", "t.conf:1: syntax error, missing ']'");
}

Test(config_errors, bad_int)
{
    load_fails("[model]\nk = abc\n",
               "t.conf:2: model.k = abc: not an integer, allowed 1..256");
    load_fails("[model]\nk = -3\n",
               "t.conf:2: model.k = -3: not an integer, allowed 1..256");
    load_fails("[model]\nk = 4.5\n",
               "t.conf:2: model.k = 4.5: not an integer, allowed 1..256");
    load_fails("[model]\nseed = 99999999999999999999999\n",
               "t.conf:2: model.seed = 99999999999999999999999: out of "
               "range, allowed >= 0");
}

Test(config_errors, out_of_range)
{
    load_fails("[model]\nk = 300\n",
               "t.conf:2: model.k = 300: out of range, allowed 1..256");
    load_fails("[model]\nk = 0\n",
               "t.conf:2: model.k = 0: out of range, allowed 1..256");
    load_fails("[snapshot]\ntop_items = 1001\n",
               "t.conf:2: snapshot.top_items = 1001: out of range, allowed "
               "1..1000");
    load_fails("[model]\nl1_ratio = 1.5\n",
               "t.conf:2: model.l1_ratio = 1.5: out of range, allowed 0..1");
    load_fails("[model]\nholdout = 1\n",
               "t.conf:2: model.holdout = 1: must be below 1");
    load_fails("[model]\nholdout = -0.1\n",
               "t.conf:2: model.holdout = -0.1: out of range, allowed 0..1");
    load_fails("[model]\nholdout = 2\n",
               "t.conf:2: model.holdout = 2: out of range, allowed 0..1");
    load_fails("[model]\nalpha_h = -0.1\n",
               "t.conf:2: model.alpha_h = -0.1: out of range, allowed >= 0");
    load_fails("[input]\nmax_message_bytes = 128M\n",
               "t.conf:2: input.max_message_bytes = 128M: out of range, "
               "allowed 64..64MiB");
    load_fails("[snapshot]\ninterval = 10ms\n",
               "t.conf:2: snapshot.interval = 10ms: out of range, allowed "
               "100ms..1d");
}

Test(config_errors, bad_double)
{
    load_fails("[model]\nalpha_w = nan\n",
               "t.conf:2: model.alpha_w = nan: not a finite number, allowed "
               ">= 0");
    load_fails("[model]\nalpha_w = 1x\n",
               "t.conf:2: model.alpha_w = 1x: not a finite number, allowed "
               ">= 0");
    load_fails("[model]\nalpha_w = inf\n",
               "t.conf:2: model.alpha_w = inf: not a finite number, allowed "
               ">= 0");
}

Test(config_errors, bad_duration)
{
    load_fails("[model]\nhalf_life = 5x\n",
               "t.conf:2: model.half_life = 5x: bad duration, use e.g. "
               "500ms, 10s, 5m, 2h, 7d, allowed 0..3650d");
    load_fails("[checkpoint]\ninterval = 60\n",
               "t.conf:2: checkpoint.interval = 60: bad duration, use e.g. "
               "500ms, 10s, 5m, 2h, 7d, allowed 1s..1d");
}

Test(config_errors, bad_size)
{
    load_fails("[input]\nmax_message_bytes = 1X\n",
               "t.conf:2: input.max_message_bytes = 1X: bad size, use e.g. "
               "512, 64k, 1M, 1G, allowed 64..64MiB");
}

Test(config_errors, bad_bool)
{
    load_fails("[snapshot]\ntransactional = maybe\n",
               "t.conf:2: snapshot.transactional = maybe: not a bool, use "
               "true/false, yes/no, on/off or 1/0");
}

Test(config_errors, bad_enum)
{
    load_fails("[input]\nformat = xml\n",
               "t.conf:2: input.format = xml: bad value, allowed auto, "
               "msgpack, json");
    load_fails("[log]\nlevel = loud\n",
               "t.conf:2: log.level = loud: bad value, allowed err, warning, "
               "notice, info, debug");
    load_fails("[model]\nrobust = huber\n",
               "t.conf:2: model.robust = huber: bad value, allowed none, l21");
}

Test(config, robust_l21_lands_in_the_model)
{
    struct config *c = config_new();
    char err[256];
    cr_assert_eq(c->model.params.robust, MODEL_ROBUST_NONE);
    cr_assert_eq(config_set(c, "model.robust=l21", err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(c->model.params.robust, MODEL_ROBUST_L21);
    config_free(c);
}

Test(config, loss_kl_lands_in_the_model)
{
    struct config *c = config_new();
    char err[CONFIG_ERR_MAX];
    cr_assert_eq(c->model.params.loss, MODEL_LOSS_FROBENIUS);
    cr_assert_eq(config_set(c, "model.loss=kl", err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(c->model.params.loss, MODEL_LOSS_KL);
    cr_assert_eq(config_check(c, err, sizeof(err)), 0, "%s", err);
    config_free(c);
    load_fails("[model]\nloss = poisson\n",
               "t.conf:2: model.loss = poisson: bad value, allowed "
               "frobenius, kl");
}

/* What loss = kl cannot do is refused at start, at the line that asked
 * for kl (or at the other key's line when kl came from elsewhere). */
Test(config_errors, loss_kl_refuses_what_it_cannot_do)
{
    char err[CONFIG_ERR_MAX];
    struct config *c =
        load("[model]\nloss = kl\nrobust = l21\n", 0, err, sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: model.loss = kl: cannot be used with "
                          "model.robust (the l21 weights are defined on the "
                          "squared residual)");
    config_free(c);

    c = load("[model]\nalpha_h = 0.1\n", 0, err, sizeof(err));
    cr_assert_eq(config_set(c, "model.loss=kl", err, sizeof(err)), 0);
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "--set: model.loss = kl: cannot be used with "
                          "model.alpha_h (the KL solve and update of W have "
                          "no penalty)");
    config_free(c);

    c = load("[model]\nalpha_w = 0.5\n", 0, err, sizeof(err));
    c->model.params.loss = MODEL_LOSS_KL; /* as if from a default */
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: model.loss = kl: cannot be used with "
                          "model.alpha_w (the KL solve and update of W have "
                          "no penalty)");
    config_free(c);

    c = load("[model]\nloss = kl\nholdout = 0.1\n", 0, err, sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: model.loss = kl: cannot be used with "
                          "model.holdout (the held-out error is a squared "
                          "error)");
    config_free(c);
}

Test(config_errors, bad_weight)
{
    load_fails("[input]\nweight.click = -1\n",
               "t.conf:2: input.weight.click = -1: must be a finite number "
               ">= 0");
    load_fails("[input]\nweight.click = nan\n",
               "t.conf:2: input.weight.click = nan: must be a finite number "
               ">= 0");
    load_fails("[input]\nweight.click = lots\n",
               "t.conf:2: input.weight.click = lots: must be a finite number "
               ">= 0");
    load_fails("[input]\nweight. = 1\n",
               "t.conf:2: input.weight.: missing the event type");
}

Test(config_errors, bad_listen)
{
    load_fails("[http]\nlisten = foo\n",
               "t.conf:2: http.listen = foo: missing :port");
    load_fails("[http]\nlisten = ::1:80\n",
               "t.conf:2: http.listen = ::1:80: an IPv6 address needs "
               "brackets: [addr]:port");
    load_fails("[http]\nlisten = [::1]\n",
               "t.conf:2: http.listen = [::1]: missing :port after ']'");
    load_fails("[http]\nlisten = [::1:80\n",
               "t.conf:2: http.listen = [::1:80: missing ']' after the IPv6 "
               "address");
    load_fails("[http]\nlisten = [nope]:80\n",
               "t.conf:2: http.listen = [nope]:80: bad IPv6 address");
    load_fails("[http]\nlisten = host:99999\n",
               "t.conf:2: http.listen = host:99999: port must be a number "
               "0..65535");
    load_fails("[http]\nlisten = host:\n",
               "t.conf:2: http.listen = host:: port must be a number "
               "0..65535");
    load_fails("[http]\nlisten = a/b:80\n",
               "t.conf:2: http.listen = a/b:80: bad host name");
}

Test(config_errors, bad_strings)
{
    load_fails("[input]\ntopics = a,,b\n",
               "t.conf:2: input.topics = a,,b: empty topic name in the list");
    load_fails("[input]\ntopics =\n",
               "t.conf:2: input.topics = : must not be empty");
    load_fails("[input]\nfield.user =\n",
               "t.conf:2: input.field.user = : must not be empty");
    load_fails("[kafka]\nsasl.username =\n",
               "t.conf:2: kafka.sasl.username: empty value");
}

Test(config_errors, stops_at_first_error)
{
    char err[CONFIG_ERR_MAX];
    struct config *c =
        load("[model]\nk = 8\nseed = x\nk = 9\n", -EINVAL, err, sizeof(err));
    cr_assert_str_eq(err, "t.conf:3: model.seed = x: not an integer, allowed "
                          ">= 0");
    cr_assert_eq(c->model.params.k, 8); /* nothing after the error applied */
    config_free(c);
}

Test(config_errors, missing_file)
{
    struct config *c = config_new();
    char err[CONFIG_ERR_MAX];
    cr_assert_eq(
        config_load_file(c, "/nonexistent/nmfd.conf", err, sizeof(err)),
        -ENOENT);
    cr_assert_str_eq(err, "/nonexistent/nmfd.conf: No such file or directory");
    cr_assert_eq(
        config_load(c, "/nonexistent/nmfd.conf", NULL, 0, err, sizeof(err)),
        -ENOENT);
    config_free(c);
}

Test(config, real_file_errors_name_the_path)
{
    char path[] = "/tmp/nmfd-test-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *text = "[model]\n\n; comment\nk = 1000\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct config *c = config_new();
    char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
    cr_assert_eq(config_load_file(c, path, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want),
             "%s:4: model.k = 1000: out of range, allowed 1..256", path);
    cr_assert_str_eq(err, want);
    cr_assert_str_eq(c->path, "");
    unlink(path);
    config_free(c);
}

Test(config_errors, set)
{
    set_fails("model.k", "--set: model.k: missing '=', use section.key=value");
    set_fails("k=3",
              "--set: k=3: missing section or key, use section.key=value");
    set_fails(".k=3",
              "--set: .k=3: missing section or key, use section.key=value");
    set_fails("model.=3",
              "--set: model.=3: missing section or key, use section.key=value");
    set_fails("model.kay=3",
              "--set: unknown key model.kay (did you mean model.k?)");
    set_fails("modle.k=3", "--set: unknown section [modle]");
    set_fails("model.k=999",
              "--set: model.k = 999: out of range, allowed 1..256");
    set_fails("snapshot.transactional=perhaps",
              "--set: snapshot.transactional = perhaps: not a bool, use "
              "true/false, yes/no, on/off or 1/0");
}

Test(config_errors, cross_key_checks)
{
    char err[CONFIG_ERR_MAX];
    struct config *c =
        load("[input]\ntopics = in, nmf.segments\n", 0, err, sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: snapshot.topic.segments = nmf.segments: "
                          "also listed in input.topics");
    config_free(c);

    c = load("[input]\ntopics = in\ndead_letter_topic = in\n", 0, err,
             sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:3: input.dead_letter_topic = in: also "
                          "listed in input.topics");
    config_free(c);

    c = load("[snapshot]\ntopic.manifest = nmf.topics\n", 0, err, sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: snapshot.topic.manifest = nmf.topics: "
                          "same topic as snapshot.topic.topics");
    config_free(c);

    c = load("[input]\nfield.item = user\n", 0, err, sizeof(err));
    cr_assert_eq(config_check(c, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "t.conf:2: input.field.item = user: same as "
                          "input.field.user");
    config_free(c);

    /* config_load runs the checks after the file and the --set list. */
    c = config_new();
    char *sets[] = {"input.field.ts=item"};
    cr_assert_eq(config_load(c, NULL, sets, 1, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err,
                     "--set: input.field.ts = item: same as input.field.item");
    config_free(c);
}

Test(config, set_overrides_file)
{
    char path[] = "/tmp/nmfd-test-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *text = "[model]\nk = 8\nseed = 3\n[kafka]\ngroup.id = a\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    struct config *c = config_new();
    char err[CONFIG_ERR_MAX];
    char *sets[] = {"model.k=12", "kafka.group.id = b", "kafka.client.id=x=y",
                    "input.weight.buy=2.5"};
    cr_assert_eq(config_load(c, path, sets, 4, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(c->model.params.k, 12);
    cr_assert_eq(c->model.params.seed, 3);
    cr_assert_str_eq(kafka_value(c, "group.id"), "b");
    cr_assert_str_eq(kafka_value(c, "client.id"), "x=y");
    cr_assert_str_eq(config_origin(c, "model.k"), "--set");
    cr_assert_str_eq(config_origin(c, "kafka.group.id"), "--set");
    char want[64];
    snprintf(want, sizeof(want), "%s:3", path);
    cr_assert_str_eq(config_origin(c, "model.seed"), want);
    cr_assert_str_eq(c->path, path);
    cr_assert_eq(c->input.nweights, 1);
    cr_assert_float_eq(c->input.weights[0].weight, 2.5, 1e-12);
    unlink(path);
    config_free(c);
}

Test(config, dump_masks_secrets_and_reads_back)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = load("[kafka]\n"
                            "sasl.username = alice\n"
                            "sasl.password = hunter2\n"
                            "ssl.key.password = pem-pass\n"
                            "ssl.key.pem = oauth-s3cret\n"
                            "ssl.keystore.password = ks-pass\n"
                            "[input]\nweight.click = 2\n"
                            "[model]\nk = 7\n",
                            0, err, sizeof(err));
    char *d = dump(c);
    cr_assert_null(strstr(d, "hunter2"));
    cr_assert_null(strstr(d, "pem-pass"));
    cr_assert_null(strstr(d, "oauth-s3cret"));
    cr_assert_null(strstr(d, "ks-pass"));
    cr_assert_not_null(strstr(d, "sasl.password = ******** ; t.conf:3\n"));
    cr_assert_not_null(strstr(d, "sasl.username = alice ; t.conf:2\n"));
    cr_assert_not_null(strstr(d, "\n[model]\nk = 7 ; t.conf:10\n"));
    cr_assert_not_null(strstr(d, "half_life = 0 ; default\n"));
    cr_assert_not_null(strstr(d, "weight.click = 2\n"));
    cr_assert_not_null(strstr(d, "dead_letter_topic = ; default\n"));
    cr_assert_not_null(strstr(d, "max_message_bytes = 1MiB ; default\n"));
    cr_assert_not_null(strstr(d, "checkpoint"));
    /* The dump is itself a config that loads to the same values. */
    struct config *again = load(d, 0, err, sizeof(err));
    cr_assert_str_eq(kafka_value(again, "sasl.password"), "********");
    cr_assert_eq(again->model.params.k, 7);
    free(d);
    config_free(again);
    config_free(c);
}

Test(config, reload_applies_reloadable_and_lists_the_rest)
{
    char err[CONFIG_ERR_MAX], changed[512], restart[512];
    struct config *running = config_new();
    struct config *fresh = load("[kafka]\ngroup.id = other\nclient.id = x\n"
                                "[input]\nweight.click = 2\n"
                                "reject_log_interval = 1m\n"
                                "[model]\nk = 32\nrefine_users = 10\n"
                                "[snapshot]\ninterval = 10s\ntop_items = 5\n"
                                "[checkpoint]\ninterval = 5m\n"
                                "[http]\nlisten = 127.0.0.1:1\n"
                                "[log]\nlevel = debug\n",
                                0, err, sizeof(err));
    cr_assert_eq(config_reload(running, fresh, changed, sizeof(changed),
                               restart, sizeof(restart)),
                 0);
    cr_assert_str_eq(changed, "input.reject_log_interval model.refine_users "
                              "snapshot.interval snapshot.top_items "
                              "checkpoint.interval log.level");
    cr_assert_str_eq(restart, "model.k http.listen kafka.group.id "
                              "kafka.client.id input.weight.click");
    cr_assert_eq(running->log.level, LOG_DEBUG);
    cr_assert_eq(running->snapshot.interval_ms, 10000);
    cr_assert_eq(running->snapshot.top_items, 5);
    cr_assert_eq(running->checkpoint.interval_ms, 300000);
    cr_assert_eq(running->input.reject_log_interval_ms, 60000);
    cr_assert_eq(running->model.refine_users, 10);
    cr_assert_str_eq(config_origin(running, "log.level"), "t.conf:18");
    /* Not reloadable: unchanged until a restart. */
    cr_assert_eq(running->model.params.k, 16);
    cr_assert_str_eq(running->http.listen, "127.0.0.1:9464");
    cr_assert_str_eq(kafka_value(running, "group.id"), "nmfd");

    /* A second reload of the same file changes nothing reloadable. */
    cr_assert_eq(config_reload(running, fresh, changed, sizeof(changed),
                               restart, sizeof(restart)),
                 0);
    cr_assert_str_eq(changed, "");

    /* Lists too small: keys still applied, -ENOSPC. */
    struct config *back = config_new();
    char tiny[8];
    cr_assert_eq(config_reload(running, back, tiny, sizeof(tiny), restart,
                               sizeof(restart)),
                 -ENOSPC);
    cr_assert_eq(running->log.level, LOG_INFO);
    cr_assert_eq(running->snapshot.top_items, 20);
    config_free(back);
    config_free(fresh);
    config_free(running);
}

Test(config, shipped_conf_is_the_commented_defaults)
{
    const char *src = getenv("NMFD_SRC");
    cr_assert_not_null(src, "NMFD_SRC is set by meson test");
    char path[4096];
    snprintf(path, sizeof(path), "%s/conf/nmfd.conf", src);
    char *want = commented();
    if (getenv("NMFD_REGEN_CONF")) {
        FILE *w = fopen(path, "w");
        cr_assert_not_null(w);
        fputs(want, w);
        fclose(w);
    }
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char *shipped = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&shipped, &cap, '\0', f);
    fclose(f);
    cr_assert_gt(n, 0);
    cr_assert_str_eq(shipped, want,
                     "conf/nmfd.conf is stale; regenerate it with "
                     "NMFD_REGEN_CONF=1 meson test unit.config");

    /* Every line fits 80 columns, and the file loads to the defaults. */
    for (char *p = want, *nl; (nl = strchr(p, '\n')); p = nl + 1)
        cr_assert_leq(nl - p, 80, "%.*s", (int)(nl - p), p);
    struct config *c = config_new(), *d = config_new();
    char err[CONFIG_ERR_MAX];
    cr_assert_eq(config_load_file(c, path, err, sizeof(err)), 0, "%s", err);
    assert_same(c, d);
    cr_assert_eq(config_check(c, err, sizeof(err)), 0);

    /* Uncommenting every key still loads to the defaults. */
    char *u = strdup(want), *o = u;
    for (char *p = want; *p; p++) {
        if (*p == '#' && (p == want || p[-1] == '\n') && p[1] != ' ' &&
            p[1] != '\n')
            continue;
        *o++ = *p;
    }
    *o = '\0';
    struct config *e = load(u, 0, err, sizeof(err));
    /* The uncommented examples set three event weights. */
    cr_assert_eq(e->input.nweights, 3);
    free(u);
    free(want);
    free(shipped);
    config_free(c);
    config_free(d);
    config_free(e);
}

/* Loads text, runs the cross-key checks and expects want (NULL = pass). */
static void check_text(const char *text, const char *want)
{
    char err[CONFIG_ERR_MAX] = "";
    struct config *c = load(text, 0, err, sizeof(err));
    int rc = config_check(c, err, sizeof(err));
    if (want) {
        cr_assert_eq(rc, -EINVAL, "%s", text);
        cr_assert_str_eq(err, want);
    } else {
        cr_assert_eq(rc, 0, "%s: %s", text, err);
    }
    config_free(c);
}

/* A file in a fresh directory; the path is static until the next call. */
static const char *temp_file(const char *content)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/test_config.XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

Test(config_errors, http_access)
{
    static const char beyond[] =
        ": beyond loopback the data routes (/snapshot, /users, /events, /) "
        "need http.token_file or http.password_file; set "
        "http.allow_unauthenticated = true to serve them to any host that "
        "reaches the port";
    char want[CONFIG_ERR_MAX], text[512];

    /* Loopback needs nothing. */
    check_text("[http]\nlisten = 127.0.0.1:9464\n", NULL);
    check_text("[http]\nlisten = 127.0.0.2:9464\n", NULL);
    check_text("[http]\nlisten = [::1]:9464\n", NULL);
    check_text("[http]\nlisten = localhost:9464\n", NULL);
    check_text("[http]\nlisten =\n", NULL);

    /* Beyond it, data routes without credentials stop the start. */
    snprintf(want, sizeof(want), "t.conf:3: http.listen = 0.0.0.0:9464%s",
             beyond);
    check_text("[http]\n\nlisten = 0.0.0.0:9464\n", want);
    snprintf(want, sizeof(want), "t.conf:2: http.listen = :9464%s", beyond);
    check_text("[http]\nlisten = :9464\n", want);
    snprintf(want, sizeof(want), "t.conf:2: http.listen = [::]:9464%s", beyond);
    check_text("[http]\nlisten = [::]:9464\n", want);
    snprintf(want, sizeof(want), "t.conf:2: http.listen = nmf.example:9464%s",
             beyond);
    check_text("[http]\nlisten = nmf.example:9464\n", want);
    check_text("[http]\nlisten = 10.0.0.5:9464\nallow_unauthenticated = yes\n",
               NULL);
    snprintf(text, sizeof(text), "[http]\nlisten = :9464\ntoken_file = %s\n",
             temp_file("0123456789abcdef\n"));
    check_text(text, NULL);
    unlink(strchr(text, '/'));

    /* The token file is read when the key is set. */
    load_fails("[http]\ntoken_file = /nonexistent/token\n",
               "t.conf:2: http.token_file = /nonexistent/token: cannot read "
               "the file");
    const char *p = temp_file("short\n");
    snprintf(text, sizeof(text), "[http]\ntoken_file = %s\n", p);
    snprintf(want, sizeof(want),
             "t.conf:2: http.token_file = %s: the token is shorter than 16 "
             "characters",
             p);
    load_fails(text, want);
    unlink(p);
    p = temp_file("alice:plain-text-password\n");
    snprintf(text, sizeof(text), "[http]\npassword_file = %s\n", p);
    snprintf(want, sizeof(want),
             "t.conf:2: http.password_file = %s: unsupported hash: use "
             "yescrypt, bcrypt, scrypt or sha512crypt (mkpasswd -m yescrypt, "
             "htpasswd -nB)",
             p);
    load_fails(text, want);
    unlink(p);
    load_fails("[http]\ntls_cert_file = /nonexistent/cert.pem\n",
               "t.conf:2: http.tls_cert_file = /nonexistent/cert.pem: cannot "
               "read the file");

    /* TLS takes both files; auth_probes takes credentials. */
    p = temp_file("pem");
    snprintf(text, sizeof(text), "[http]\n\ntls_cert_file = %s\n", p);
    check_text(text, "t.conf:3: http.tls_cert_file: needs http.tls_key_file "
                     "too");
    snprintf(text, sizeof(text), "[http]\ntls_key_file = %s\n", p);
    check_text(text, "t.conf:2: http.tls_key_file: needs http.tls_cert_file "
                     "too");
    unlink(p);
    check_text("[http]\nauth_probes = true\n",
               "t.conf:2: http.auth_probes = true: needs http.token_file or "
               "http.password_file");

    /* --set is blamed as such. */
    struct config *c = config_new();
    char err[CONFIG_ERR_MAX];
    char *sets[] = {"http.listen=0.0.0.0:9464"};
    cr_assert_eq(config_load(c, NULL, sets, 1, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "--set: http.listen = 0.0.0.0:9464%s", beyond);
    cr_assert_str_eq(err, want);
    config_free(c);
}

/* The token never reaches a dump: only the path of its file does. */
Test(config, dump_shows_no_token)
{
    char err[CONFIG_ERR_MAX], text[256];
    const char *p = temp_file("tok-0123456789-secret\n");
    snprintf(text, sizeof(text), "[http]\ntoken_file = %s\n", p);
    struct config *c = load(text, 0, err, sizeof(err));
    char *d = dump(c);
    cr_assert_null(strstr(d, "tok-0123456789-secret"));
    char want[128];
    snprintf(want, sizeof(want), "token_file = %s ; t.conf:2\n", p);
    cr_assert_not_null(strstr(d, want), "%s", d);
    unlink(p);
    free(d);
    config_free(c);
}
