/* server.h -- the nmfd daemon: one libuv loop that folds consumed events
 * into the model and publishes epochs, checkpoints and HTTP views. */
#ifndef NMFD_DAEMON_SERVER_H
#define NMFD_DAEMON_SERVER_H

#include <stdbool.h>
#include <stddef.h>

struct config;

struct server_opts {
    const char *config_path; /* re-read on SIGHUP; NULL: none */
    char *const *sets;       /* --set assignments, re-applied on SIGHUP */
    size_t nsets;
    bool embedded_broker;    /* host a Kafka-protocol broker in-process */
    int embedded_partitions; /* partitions of the input topics there */
    int embedded_port;       /* its fixed bootstrap port, 0 for none */
    bool ignore_checkpoint;  /* start fresh on purpose */
};

/* Runs until SIGTERM/SIGINT or a fatal error. Takes cfg over. Returns the
 * process exit code: 0 clean stop, 1 runtime failure. */
int server_run(const struct server_opts *o, struct config *cfg);

#endif
