/* ctl_produce.c -- placeholder, being written. */
#include <stdio.h>
#include "ctl.h"
int ctl_produce_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl produce: not built yet\n");
    return 2;
}
