/* test_csv.c -- placeholder, being written. */
#include <criterion/criterion.h>
