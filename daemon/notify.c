/* daemon/notify.c -- placeholder, being written. */
typedef int notify_placeholder;
