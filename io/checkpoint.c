/* io/checkpoint.c -- placeholder, being written. */
typedef int checkpoint_placeholder;
