/* recommend.h -- GET /users/ID/recommend and nmfctl recommend: the n
 * items a user is predicted to engage with most, not in its profile. */
#ifndef NMFD_DAEMON_RECOMMEND_H
#define NMFD_DAEMON_RECOMMEND_H

#include <stdint.h>

struct model;

#define RECOMMEND_N_DEFAULT 10
#define RECOMMEND_N_MAX     1000

/* n from its text (NULL: the default): 0, -EINVAL (not a decimal integer
 * of at least 1) or -ERANGE (over RECOMMEND_N_MAX). */
int recommend_parse_n(const char *text, uint32_t *n);

/* {"user":ID, "items":[[item, score], ...]} (malloc'd) for the user id
 * (NUL-terminated) and n text: 0, -ENOENT (no such user), -EINVAL,
 * -ERANGE (as recommend_parse_n), -ENOMEM. */
int recommend_json(const struct model *m, const char *id, const char *n_text,
                   char **json);

#endif
