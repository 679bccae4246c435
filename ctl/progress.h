/* progress.h -- a progress line for long nmfctl runs (fit, produce, rank),
 * redrawn in place on a terminal, silent elsewhere. */
#ifndef NMFD_PROGRESS_H
#define NMFD_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Redraws at most this often (seconds), and reads the clock once every
 * PROGRESS_POLL_EVERY calls of progress_poll. */
#define PROGRESS_MIN_INTERVAL 0.25
#define PROGRESS_POLL_EVERY   1024u
#define PROGRESS_LINE_MAX     128

struct progress {
    FILE *out;         /* where the line goes (stderr) */
    bool on;           /* out is a terminal */
    const char *label; /* "fit", "produce" */
    int64_t total;     /* input bytes, -1 when unknown */
    double t0;         /* start (monotonic seconds) */
    double last;       /* last redraw, or t0 */
    uint32_t polls;
    bool drawn;        /* a line is on the terminal */
};

/* Monotonic seconds. */
double progress_now(void);

/* Starts: on only when out is a terminal. total: the input's size in
 * bytes, or -1 when unknown (stdin from a pipe). */
void progress_start(struct progress *p, FILE *out, const char *label,
                    int64_t total);

/* The line for events done (bytes of total read) after elapsed seconds,
 * without a line end: "fit: 1.20M events, 612k/s, 45.2%, 0:12 left"
 * (percent and time left when total is known, else the elapsed time).
 * Returns its length (truncated to len - 1 like snprintf). */
int progress_format(char *buf, size_t len, const char *label, uint64_t events,
                    uint64_t bytes, int64_t total, double elapsed);

/* Redraws the line if on and PROGRESS_MIN_INTERVAL has passed since the
 * last redraw at time now; returns whether it drew. */
bool progress_update(struct progress *p, uint64_t events, uint64_t bytes,
                     double now);

/* progress_update with the clock read only every PROGRESS_POLL_EVERY
 * calls, cheap enough to call per event. */
void progress_poll(struct progress *p, uint64_t events, uint64_t bytes);

/* Erases the line (the caller's own output follows on a clean line). */
void progress_end(struct progress *p);

#endif
