/* test_metrics.c -- placeholder, being written. */
#include <criterion/criterion.h>
