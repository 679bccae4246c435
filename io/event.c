/* io/event.c -- placeholder, being written. */
typedef int event_placeholder;
