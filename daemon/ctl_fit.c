/* ctl_fit.c -- placeholder, being written. */
#include <stdio.h>
#include "ctl.h"
int ctl_fit_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl fit: not built yet\n");
    return 2;
}
int ctl_eval_main(int argc, char **argv)
{
    fprintf(stderr, "nmfctl eval: not built yet\n");
    return 2;
}
