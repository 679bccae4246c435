/* fuzz_event_json.c -- libFuzzer target: the event decoder on JSON values
 * (jansson, the depth walk, field checks, the fold behind them). */
#include "fuzz_event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_event_one(EVENT_FORMAT_JSON, data, size);
}
