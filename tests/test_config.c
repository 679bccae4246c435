/* test_config.c -- placeholder, being written. */
#include <criterion/criterion.h>
