/* test_nnls.c -- placeholder, being written. */
#include <criterion/criterion.h>
