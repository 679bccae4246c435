/* io/csv.c -- placeholder, being written. */
typedef int csv_placeholder;
