/* nmfctl.c -- the companion tool of nmfd: a standalone broker, a CSV
 * producer, a record dumper, a planted-stream generator, and the offline
 * fit and evaluation that run the daemon's own model code with no Kafka.
 * This file only dispatches; each subcommand lives in its own ctl_*.c.
 *
 * The commands that speak Kafka (broker, produce, dump) are built into a
 * second program, nmfctl-kafka, which this one runs in its place (execv,
 * as git runs its git-* programs). nmfctl itself links no Kafka library:
 * loading librdkafka, with OpenSSL, SASL and zstd behind it, binds some
 * thousands of symbols and took 5 of the 9 ms an `nmfctl --version` cost,
 * which the offline commands (fit on a small file runs in 10 ms) have no
 * use for. nmfctl-kafka is looked for beside this program, then in
 * NMFD_LIBEXECDIR, where meson installs it. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "nmfd_build.h"

#define KAFKA_PROGRAM "nmfctl-kafka"

static const struct {
    const char *name;
    int (*main)(int argc, char **argv); /* NULL: one of nmfctl-kafka's */
    const char *usage;
} commands[] = {
    {"broker", NULL,
     "[--partitions N] [--topics a,b] [--bootstrap-file F] [--brokers N] "
     "[--port PORT] [--control FIFO]"},
    {"produce", NULL,
     "--brokers B --topic T [--format msgpack|json] [--rate EV/S] "
     "[--batch N] [-X key=value]... FILE.csv|-"},
    {"gen", ctl_gen_main,
     "--users N --items M --k K --events E [--seed S] [--drift [AT]] "
     "[--drift-fraction F] [--noise F] [--truth FILE] > events.csv"},
    {"dump", NULL,
     "(--brokers B --topic T [--count N] [--timeout S] | --file SNAPSHOT)"},
    {"fit", ctl_fit_main,
     "--events FILE.csv [--set model.key=value]... [--refine-rounds N] "
     "--out SNAPSHOT"},
    {"eval", ctl_eval_main, "--snapshot FILE --events FILE.csv"},
    {"inspect", ctl_inspect_main, "--checkpoint DIR [--profiles]"},
    {"rank", ctl_rank_main,
     "--events FILE.csv --k LIST|FROM:TO[:STEP] [--holdout F] [--folds N] "
     "[--set model.key=value]... [--plot FILE.svg]"},
    {"recommend", ctl_recommend_main,
     "--snapshot FILE --user ID [--n N] [--events FILE.csv]"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: nmfctl COMMAND [options]   (nmfctl COMMAND --help: "
                 "details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  nmfctl %-8s %s\n", commands[i].name, commands[i].usage);
}

/* Runs nmfctl-kafka with the same arguments; returns only if it cannot. */
static int run_kafka(char **argv)
{
    char self[PATH_MAX], path[PATH_MAX + sizeof(KAFKA_PROGRAM)];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof(path), "%s/%s", self, KAFKA_PROGRAM);
            if (access(path, X_OK) == 0) {
                argv[0] = path;
                execv(path, argv);
                fprintf(stderr, "nmfctl: %s: %s\n", path, strerror(errno));
                return 1;
            }
        }
    }
    snprintf(path, sizeof(path), "%s/%s", NMFD_LIBEXECDIR, KAFKA_PROGRAM);
    argv[0] = path;
    execv(path, argv);
    fprintf(stderr,
            "nmfctl: %s needs %s, found neither beside nmfctl nor as %s: %s\n",
            argv[1], KAFKA_PROGRAM, path, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("nmfctl %s\n", NMFD_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].main ? commands[i].main(argc - 1, argv + 1)
                                    : run_kafka(argv);
    fprintf(stderr, "nmfctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
