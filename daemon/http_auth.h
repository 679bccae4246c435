/* http_auth.h -- who may read the HTTP data routes: a bearer token from a
 * file, and user:hash lines (crypt(3) hashes) for HTTP Basic. */
#ifndef NMFD_HTTP_AUTH_H
#define NMFD_HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct http_auth;

#define HTTP_AUTH_TOKEN_MIN 16 /* bytes; shorter tokens are refused */

enum http_auth_verdict {
    HTTP_AUTH_OK,      /* the credentials match */
    HTTP_AUTH_MISSING, /* no Authorization header, or an unknown scheme */
    HTTP_AUTH_WRONG,   /* a token or password that does not match */
    HTTP_AUTH_BUSY,    /* a password to hash, but the hashing budget is spent */
};

/* Reads token_file and password_file ("" or NULL = not used). With
 * neither, *out holds no credentials and every check is HTTP_AUTH_OK.
 * 0, or a negative errno with "path: message" in err. */
int http_auth_new(struct http_auth **out, const char *token_file,
                  const char *password_file, char *err, size_t errlen);
void http_auth_free(struct http_auth *a);

/* Whether any credential is configured. */
bool http_auth_enabled(const struct http_auth *a);
/* Whether HTTP Basic is offered (a password file is loaded). */
bool http_auth_basic(const struct http_auth *a);

/* Checks an Authorization header value (NULL when absent): "Bearer
 * TOKEN" or "Basic base64(user:password)". Token and passwords are
 * compared in constant time. A password the daemon has not verified
 * before costs one key derivation (tens of ms); at most
 * HTTP_AUTH_KDF_PER_S of them run per second, beyond which the answer
 * is HTTP_AUTH_BUSY; a verified password is remembered (as a keyed hash)
 * and costs nothing next time. now_ms is a monotonic clock. */
#define HTTP_AUTH_KDF_PER_S 4
enum http_auth_verdict http_auth_check(struct http_auth *a,
                                       const char *authorization,
                                       uint64_t now_ms);

/* Validators for the config keys: NULL if the file is usable (or path is
 * empty), else a static lowercase message. */
const char *http_auth_token_file_check(const char *path);
const char *http_auth_password_file_check(const char *path);

#endif
