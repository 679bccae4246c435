/* main.c -- nmfd: placeholder, being written. */
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "nmfd: not built yet\n");
    return 1;
}
