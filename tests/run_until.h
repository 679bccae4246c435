/* run_until.h -- the loop tests' wait: runs a libuv loop until a flag the
 * callbacks set turns true or a deadline passes, with a repeating timer
 * so that uv_run(ONCE) never sleeps past it. Shared by the tests of the
 * consumer, the producer, ingest and the publisher. */
#ifndef NMF_TESTS_RUN_UNTIL_H
#define NMF_TESTS_RUN_UNTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

static inline void run_until_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs loop until *flag is true or ms pass; returns *flag. */
static inline bool run_until_on(uv_loop_t *loop, volatile bool *flag, int ms)
{
    uv_timer_t t;
    uint64_t end;

    uv_update_time(loop);
    end = uv_now(loop) + (uint64_t)ms;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, run_until_tick, 10, 10);
    while (!*flag && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag;
}

#endif
