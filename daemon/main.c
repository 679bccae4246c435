/* main.c -- nmfd's command line: reads the configuration, answers
 * --check-config, --dump-config, --version and --help, and hands the rest
 * to the server. Bad usage or configuration exits 2 before anything runs,
 * with the message that names the file, the line and the key. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "http.h"
#include "kafka.h"
#include "log.h"
#include "nmfd_build.h"
#include "server.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: nmfd [--config FILE] [--set key=value]... "
            "[--embedded-broker]\n"
            "            [--check-config] [--dump-config] [--version] "
            "[--help]\n"
            "\n"
            "  -c, --config FILE      INI configuration (default %s;\n"
            "                         a missing default file means all "
            "defaults)\n"
            "  -s, --set KEY=VALUE    override section.key (repeatable)\n"
            "      --embedded-broker  host a Kafka-protocol broker in this "
            "process\n"
            "                         and consume from it (prints its "
            "address)\n"
            "      --embedded-partitions N\n"
            "                         partitions of its input topics "
            "(default 4)\n"
            "      --embedded-port PORT\n"
            "                         a fixed bootstrap address, "
            "127.0.0.1:PORT, relayed to\n"
            "                         the broker (whose own port is "
            "random)\n"
            "      --ignore-checkpoint\n"
            "                         start a fresh model even if "
            "checkpoint.dir holds one\n"
            "      --check-config     validate the configuration and exit\n"
            "      --dump-config      print the effective configuration "
            "(secrets masked)\n"
            "  -V, --version          print the version\n"
            "  -h, --help             this text\n"
            "\n"
            "exit codes: 0 clean stop, 1 runtime failure, 2 bad usage or "
            "config\n",
            config_default_path());
}

int main(int argc, char **argv)
{
    enum {
        OPT_EMBEDDED = 256,
        OPT_PARTS,
        OPT_PORT,
        OPT_CHECK,
        OPT_DUMP,
        OPT_IGNORE
    };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"embedded-broker", no_argument, NULL, OPT_EMBEDDED},
        {"embedded-partitions", required_argument, NULL, OPT_PARTS},
        {"embedded-port", required_argument, NULL, OPT_PORT},
        {"ignore-checkpoint", no_argument, NULL, OPT_IGNORE},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"dump-config", no_argument, NULL, OPT_DUMP},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct server_opts o = {0};
    char **sets = calloc((size_t)argc + 1, sizeof(*sets));
    const char *path = NULL;
    bool check = false, dump = false;
    char err[CONFIG_ERR_MAX];
    struct config *cfg;
    int opt, code;

    if (!sets)
        return 1;
    while ((opt = getopt_long(argc, argv, "c:s:Vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 's':
            sets[o.nsets++] = optarg;
            break;
        case OPT_EMBEDDED:
            o.embedded_broker = true;
            break;
        case OPT_PARTS:
            o.embedded_partitions = atoi(optarg);
            if (o.embedded_partitions < 1 || o.embedded_partitions > 10000) {
                fprintf(stderr, "nmfd: --embedded-partitions: 1..10000\n");
                free(sets);
                return 2;
            }
            break;
        case OPT_PORT: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 1 || v > 65535) {
                fprintf(stderr, "nmfd: --embedded-port: 1..65535\n");
                free(sets);
                return 2;
            }
            o.embedded_port = (int)v;
            break;
        }
        case OPT_IGNORE:
            o.ignore_checkpoint = true;
            break;
        case OPT_CHECK:
            check = true;
            break;
        case OPT_DUMP:
            dump = true;
            break;
        case 'V':
            printf("nmfd %s\n", NMFD_VERSION);
            free(sets);
            return 0;
        case 'h':
            usage(stdout);
            free(sets);
            return 0;
        default:
            usage(stderr);
            free(sets);
            return 2;
        }
    }
    if ((o.embedded_port || o.embedded_partitions) && !o.embedded_broker) {
        fprintf(stderr, "nmfd: --embedded-%s needs --embedded-broker\n",
                o.embedded_port ? "port" : "partitions");
        free(sets);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "nmfd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        free(sets);
        return 2;
    }

    /* The default file is optional: a fresh install runs on defaults. */
    if (!path && access(config_default_path(), F_OK) == 0)
        path = config_default_path();
    config_judge_kafka(kafka_conf_check); /* here and at every reload */
    cfg = config_new();
    if (!cfg) {
        free(sets);
        return 1;
    }
    if (config_load(cfg, path, sets, o.nsets, err, sizeof(err))) {
        fprintf(stderr, "nmfd: %s\n", err);
        config_free(cfg);
        free(sets);
        return 2;
    }
    /* The TLS pair is judged here, not in config_check: on SIGHUP a bad
     * pair is http's to refuse (and count), with the config still
     * applied. */
    if (http_tls_check(cfg->http.tls_cert_file, cfg->http.tls_key_file, err,
                       sizeof(err))) {
        fprintf(stderr, "nmfd: %s: http.tls_cert_file, http.tls_key_file: %s\n",
                config_origin(cfg, "http.tls_cert_file"), err);
        config_free(cfg);
        free(sets);
        return 2;
    }
    if (check || dump) {
        if (dump)
            config_dump(cfg, stdout);
        else
            printf("nmfd: configuration OK%s%s\n", path ? ": " : "",
                   path ? path : " (defaults)");
        config_free(cfg);
        free(sets);
        return 0;
    }
    o.config_path = path;
    o.sets = sets;
    code = server_run(&o, cfg);
    free(sets);
    return code;
}
