/* daemon/metrics.c -- placeholder, being written. */
typedef int metrics_placeholder;
