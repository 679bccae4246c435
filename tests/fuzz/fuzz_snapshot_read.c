/* fuzz_snapshot_read.c -- libFuzzer target: the dense snapshot reader and
 * the JSON dump (nmfctl eval and dump read files from anywhere). */
#include <stdio.h>
#include <stdlib.h>

#include "records.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *null;
    const char *err = NULL;
    struct records_snapshot *s;

    if (null == NULL && (null = fopen("/dev/null", "w")) == NULL)
        abort();
    s = records_snapshot_read(data, size, &err);
    if (s == NULL && err == NULL)
        abort();
    if (s != NULL) {
        /* What the reader accepts is consistent. */
        for (size_t i = 0; i < (size_t)s->nitems * s->k; i++)
            if (!(s->W[i] >= 0))
                abort();
        for (size_t i = 0; i < (size_t)s->nusers * s->k; i++)
            if (!(s->H[i] >= 0))
                abort();
        records_snapshot_free(s);
    }
    for (unsigned flags = 0; flags < 3; flags++) {
        int rc = records_dump_json(null, data, size, flags, &err);
        if (rc < 0 && err == NULL)
            abort();
    }
    return 0;
}
