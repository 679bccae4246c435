/* test_records.c -- placeholder, being written. */
#include <criterion/criterion.h>
