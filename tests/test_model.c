/* test_model.c -- placeholder, being written. */
#include <criterion/criterion.h>
