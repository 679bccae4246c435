/* online/model.c -- placeholder, being written. */
typedef int model_placeholder;
