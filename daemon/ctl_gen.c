/* ctl_gen.c -- placeholder, being written. */
#include <stdio.h>
#include "ctl.h"
int ctl_gen_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl gen: not built yet\n");
    return 2;
}
