/* io/records.c -- placeholder, being written. */
typedef int records_placeholder;
