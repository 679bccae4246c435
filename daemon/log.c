/* daemon/log.c -- placeholder, being written. */
typedef int log_placeholder;
