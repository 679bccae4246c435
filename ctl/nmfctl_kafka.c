/* nmfctl_kafka.c -- nmfctl's commands that speak Kafka: the standalone
 * broker, the CSV producer and the record dumper. nmfctl runs this program
 * in their place (ctl/nmfctl.c says why they live apart), with its own
 * arguments: argv[1] is the command. It is not meant to be run by hand. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"

static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
} commands[] = {
    {"broker", ctl_broker_main},
    {"produce", ctl_produce_main},
    {"dump", ctl_dump_main},
};

int main(int argc, char **argv)
{
    if (argc >= 2)
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
            if (!strcmp(argv[1], commands[i].name))
                return commands[i].main(argc - 1, argv + 1);
    fprintf(stderr, "nmfctl-kafka: runs nmfctl's broker, produce and dump; "
                    "use nmfctl COMMAND\n");
    return 2;
}
