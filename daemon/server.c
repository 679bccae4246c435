/* daemon/server.c -- placeholder, being written. */
typedef int server_placeholder;
