/* daemon/config.c -- placeholder, being written. */
typedef int config_placeholder;
