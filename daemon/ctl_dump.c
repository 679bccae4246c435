/* ctl_dump.c -- placeholder, being written. */
#include <stdio.h>
#include "ctl.h"
int ctl_dump_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl dump: not built yet\n");
    return 2;
}
