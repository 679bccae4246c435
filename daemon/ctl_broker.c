/* ctl_broker.c -- placeholder, being written. */
#include <stdio.h>
#include "ctl.h"
int ctl_broker_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl broker: not built yet\n");
    return 2;
}
