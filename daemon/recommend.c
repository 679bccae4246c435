/* daemon/recommend.c -- recommendations as JSON, for HTTP.
 *
 * GET /users/ID/recommend?n=N answers with the n items of highest
 * predicted engagement w_i . h_u that are not in the user's profile
 * (docs/design.md section 7). The scan itself is online/'s
 * model_recommend; this file owns the request's argument (n, bounded so
 * that a request costs one pass over W and O(n) memory whatever it asks)
 * and the JSON. It reads the model and never changes it.
 */
#include "recommend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model.h"

int recommend_parse_n(const char *text, uint32_t *n)
{
    if (!text) {
        *n = RECOMMEND_N_DEFAULT;
        return 0;
    }
    /* Digits only: no sign, space, exponent or empty value. */
    size_t len = strlen(text);
    if (!len || strspn(text, "0123456789") != len)
        return -EINVAL;
    while (len > 1 && *text == '0') /* 007 is 7 */
        text++, len--;
    if (len > 9)
        return -ERANGE;
    unsigned long v = strtoul(text, NULL, 10);
    if (v == 0)
        return -EINVAL;
    if (v > RECOMMEND_N_MAX)
        return -ERANGE;
    *n = (uint32_t)v;
    return 0;
}

int recommend_json(const struct model *m, const char *id, const char *n_text,
                   char **json)
{
    uint32_t n;
    int rc = recommend_parse_n(n_text, &n);
    *json = NULL;
    if (rc)
        return rc;
    int64_t u = model_user_find(m, id, strlen(id));
    if (u < 0)
        return -ENOENT;
    uint32_t items[RECOMMEND_N_MAX];
    float scores[RECOMMEND_N_MAX];
    int got = model_recommend(m, (uint32_t)u, n, items, scores);
    if (got < 0)
        return got;
    json_t *arr = json_array();
    for (int q = 0; arr && q < got; q++) {
        size_t len;
        const char *item = model_item_id(m, items[q], &len);
        if (item && json_array_append_new(arr, json_pack("[s% f]", item, len,
                                                         (double)scores[q]))) {
            json_decref(arr);
            return -ENOMEM;
        }
    }
    json_t *doc = arr ? json_pack("{s:s s:o}", "user", id, "items", arr) : NULL;
    if (!doc)
        return -ENOMEM;
    *json = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return *json ? 0 : -ENOMEM;
}
