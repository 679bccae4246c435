/* io/kafka.c -- placeholder, being written. */
typedef int kafka_placeholder;
