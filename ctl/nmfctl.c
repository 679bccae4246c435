/* nmfctl.c -- the companion tool of nmfd: a standalone broker, a CSV
 * producer, a record dumper, a planted-stream generator, and the offline
 * fit and evaluation that run the daemon's own model code with no Kafka.
 * This file only dispatches; each subcommand lives in its own ctl_*.c. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "nmfd_build.h"

static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *usage;
} commands[] = {
    {"broker", ctl_broker_main,
     "[--partitions N] [--topics a,b] [--bootstrap-file F] [--brokers N] "
     "[--port PORT] [--control FIFO]"},
    {"produce", ctl_produce_main,
     "--brokers B --topic T [--format msgpack|json] [--rate EV/S] "
     "[--batch N] [-X key=value]... FILE.csv|-"},
    {"gen", ctl_gen_main,
     "--users N --items M --k K --events E [--seed S] [--drift [AT]] "
     "[--drift-fraction F] [--noise F] [--truth FILE] > events.csv"},
    {"dump", ctl_dump_main,
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
            return commands[i].main(argc - 1, argv + 1);
    fprintf(stderr, "nmfctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
