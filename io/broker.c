/* io/broker.c -- placeholder, being written. */
typedef int broker_placeholder;
