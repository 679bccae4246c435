/* daemon/http_auth.c -- the credentials of the HTTP data routes.
 *
 * Two kinds, either or both: a bearer token read from http.token_file, and
 * user:hash lines read from http.password_file for HTTP Basic (the hashes
 * are crypt(3) strings, checked with libxcrypt's crypt_rn: yescrypt,
 * bcrypt, scrypt or sha512crypt, as mkpasswd or htpasswd -B write them).
 * This file owns the loaded secrets, parses the Authorization header and
 * compares in constant time (nettle's memeql_sec on HMAC-SHA256 values
 * under a per-process random key, so neither the token's length nor its
 * bytes leak through timing). It never logs and never prints a secret:
 * messages name the file and the line, never their content.
 *
 * A password costs one key derivation, tens of milliseconds on the loop
 * thread, so derivations are budgeted (HTTP_AUTH_KDF_PER_S, a token
 * bucket) and a password once verified is remembered as its keyed hash:
 * a scraper that authenticated once costs nothing afterwards, and a
 * stream of wrong passwords cannot take more than a bounded share of the
 * loop. The same idea as the Prometheus exporter toolkit's cache of
 * bcrypt results.
 */
#include "http_auth.h"

#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <nettle/base64.h>
#include <nettle/hmac.h>
#include <nettle/memops.h>

#define AUTH_FILE_MAX   (1 << 20) /* bytes of a token or password file */
#define AUTH_HEADER_MAX 1024      /* bytes of an Authorization value */
#define AUTH_USERS_MAX  1000

struct auth_user {
    char *name;
    char *hash;
    bool ok_valid; /* ok_mac holds the last verified user:password */
    uint8_t ok_mac[SHA256_DIGEST_SIZE];
};

struct http_auth {
    uint8_t key[32]; /* HMAC key, random per process */
    bool has_token;
    uint8_t token_mac[SHA256_DIGEST_SIZE];
    struct auth_user *users;
    size_t nusers;
    struct crypt_data *cd;
    double kdf_tokens; /* token bucket of key derivations */
    uint64_t kdf_ms;
};

static void mac(const struct http_auth *a, const char *s1, size_t n1,
                const char *s2, size_t n2, uint8_t out[SHA256_DIGEST_SIZE])
{
    struct hmac_sha256_ctx ctx;

    hmac_sha256_set_key(&ctx, sizeof(a->key), a->key);
    hmac_sha256_update(&ctx, n1, (const uint8_t *)s1);
    if (s2) {
        hmac_sha256_update(&ctx, 1, (const uint8_t *)":");
        hmac_sha256_update(&ctx, n2, (const uint8_t *)s2);
    }
    hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

/* The whole file, NUL-terminated; NULL with errno set. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t n = 0;

    if (!f)
        return NULL;
    buf = malloc(AUTH_FILE_MAX + 1);
    if (buf)
        n = fread(buf, 1, AUTH_FILE_MAX + 1, f);
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
        errno = EIO;
    } else if (buf && n > AUTH_FILE_MAX) {
        free(buf);
        buf = NULL;
        errno = EFBIG;
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The token: the file's content without trailing blanks and newlines.
 * NULL or a static message. */
static const char *token_parse(char *buf, size_t *len)
{
    size_t n = *len;

    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    buf[n] = '\0';
    if (n == 0)
        return "the token file is empty";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] <= 0x20 || (unsigned char)buf[i] >= 0x7f)
            return "the token has a blank, control or non-ascii character";
    if (n < HTTP_AUTH_TOKEN_MIN)
        return "the token is shorter than 16 characters";
    *len = n;
    return NULL;
}

/* Hashes worth the name: a memory-hard or deliberately slow KDF. */
static bool hash_supported(const char *hash)
{
    static const char *const prefixes[] = {"$y$",  "$gy$", "$7$", "$2b$",
                                           "$2y$", "$2a$", "$6$"};

    if (crypt_checksalt(hash) != CRYPT_SALT_OK)
        return false;
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (!strncmp(hash, prefixes[i], strlen(prefixes[i])))
            return true;
    return false;
}

/* Parses "user:hash" lines ('#' comments and blank lines skipped) in
 * place. users may be NULL (validation only). NULL or a static message,
 * with the 1-based line in *line. */
static const char *passwords_parse(char *buf, struct auth_user *users,
                                   size_t *nusers, unsigned *line)
{
    char *p = buf, *nl;
    size_t n = 0;

    *line = 0;
    for (; p && *p; p = nl) {
        char *colon, *end;

        nl = strchr(p, '\n');
        if (nl)
            *nl++ = '\0';
        ++*line;
        end = p + strlen(p);
        while (end > p && isspace((unsigned char)end[-1]))
            *--end = '\0';
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        colon = strchr(p, ':');
        if (!colon || colon == p)
            return "expected user:hash";
        *colon = '\0';
        if (!hash_supported(colon + 1))
            return "unsupported hash: use yescrypt, bcrypt, scrypt or "
                   "sha512crypt (mkpasswd -m yescrypt, htpasswd -nB)";
        for (size_t i = 0; i < n; i++)
            if (users && !strcmp(users[i].name, p))
                return "user listed twice";
        if (n == AUTH_USERS_MAX)
            return "too many users (at most 1000)";
        if (users) {
            users[n].name = p;
            users[n].hash = colon + 1;
        }
        n++;
    }
    *line = 0;
    if (n == 0)
        return "no user:hash line";
    *nusers = n;
    return NULL;
}

const char *http_auth_token_file_check(const char *path)
{
    size_t len;
    char *buf;
    const char *msg;

    if (!path || !*path)
        return NULL;
    buf = slurp(path, &len);
    if (!buf)
        return "cannot read the file";
    msg = token_parse(buf, &len);
    explicit_bzero(buf, len);
    free(buf);
    return msg;
}

const char *http_auth_password_file_check(const char *path)
{
    size_t len, n;
    unsigned line;
    char *buf;
    const char *msg;

    if (!path || !*path)
        return NULL;
    buf = slurp(path, &len);
    if (!buf)
        return "cannot read the file";
    msg = passwords_parse(buf, NULL, &n, &line);
    free(buf);
    return msg;
}

void http_auth_free(struct http_auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->nusers; i++) {
        free(a->users[i].name);
        free(a->users[i].hash);
    }
    free(a->users);
    if (a->cd)
        explicit_bzero(a->cd, sizeof(*a->cd));
    free(a->cd);
    explicit_bzero(a, sizeof(*a));
    free(a);
}

static int load_token(struct http_auth *a, const char *path, char *err,
                      size_t errlen)
{
    size_t len;
    char *buf = slurp(path, &len);
    const char *msg;

    if (!buf) {
        int e = errno;

        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    msg = token_parse(buf, &len);
    if (!msg) {
        mac(a, buf, len, NULL, 0, a->token_mac);
        a->has_token = true;
    }
    explicit_bzero(buf, len);
    free(buf);
    if (msg) {
        snprintf(err, errlen, "%s: %s", path, msg);
        return -EINVAL;
    }
    return 0;
}

static int load_passwords(struct http_auth *a, const char *path, char *err,
                          size_t errlen)
{
    struct auth_user *tmp;
    size_t len, n = 0;
    unsigned line;
    const char *msg;
    char *buf = slurp(path, &len);
    int rc = 0;

    if (!buf) {
        int e = errno;

        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    tmp = calloc(AUTH_USERS_MAX, sizeof(*tmp));
    if (!tmp) {
        free(buf);
        snprintf(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    msg = passwords_parse(buf, tmp, &n, &line);
    if (msg) {
        if (line)
            snprintf(err, errlen, "%s:%u: %s", path, line, msg);
        else
            snprintf(err, errlen, "%s: %s", path, msg);
        rc = -EINVAL;
        goto out;
    }
    a->users = calloc(n, sizeof(*a->users));
    a->cd = calloc(1, sizeof(*a->cd));
    if (!a->users || !a->cd) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        a->users[i].name = strdup(tmp[i].name);
        a->users[i].hash = strdup(tmp[i].hash);
        a->nusers++;
        if (!a->users[i].name || !a->users[i].hash) {
            snprintf(err, errlen, "%s: out of memory", path);
            rc = -ENOMEM;
            goto out;
        }
    }
    a->kdf_tokens = HTTP_AUTH_KDF_PER_S;
out:
    free(tmp);
    free(buf);
    return rc;
}

int http_auth_new(struct http_auth **out, const char *token_file,
                  const char *password_file, char *err, size_t errlen)
{
    struct http_auth *a = calloc(1, sizeof(*a));
    int rc = 0;

    err[0] = '\0';
    if (!a) {
        snprintf(err, errlen, "http: out of memory");
        return -ENOMEM;
    }
    if (getrandom(a->key, sizeof(a->key), 0) != (ssize_t)sizeof(a->key)) {
        rc = -errno;
        snprintf(err, errlen, "http: getrandom: %s", strerror(errno));
        goto fail;
    }
    if (token_file && *token_file &&
        (rc = load_token(a, token_file, err, errlen)))
        goto fail;
    if (password_file && *password_file &&
        (rc = load_passwords(a, password_file, err, errlen)))
        goto fail;
    *out = a;
    return 0;
fail:
    http_auth_free(a);
    return rc;
}

bool http_auth_enabled(const struct http_auth *a)
{
    return a && (a->has_token || a->nusers);
}

bool http_auth_basic(const struct http_auth *a)
{
    return a && a->nusers;
}

/* "scheme" followed by blanks: the rest of the value, else NULL. */
static const char *scheme(const char *v, const char *name)
{
    size_t n = strlen(name);

    if (strncasecmp(v, name, n) || (v[n] != ' ' && v[n] != '\t'))
        return NULL;
    v += n;
    while (*v == ' ' || *v == '\t')
        v++;
    return v;
}

/* One key derivation, if the budget allows. */
static bool kdf_budget(struct http_auth *a, uint64_t now_ms)
{
    if (now_ms > a->kdf_ms) {
        a->kdf_tokens +=
            (double)(now_ms - a->kdf_ms) * HTTP_AUTH_KDF_PER_S / 1000.0;
        if (a->kdf_tokens > HTTP_AUTH_KDF_PER_S)
            a->kdf_tokens = HTTP_AUTH_KDF_PER_S;
    }
    a->kdf_ms = now_ms;
    if (a->kdf_tokens < 1)
        return false;
    a->kdf_tokens -= 1;
    return true;
}

static enum http_auth_verdict check_basic(struct http_auth *a, const char *b64,
                                          uint64_t now_ms)
{
    struct base64_decode_ctx ctx;
    uint8_t dec[BASE64_DECODE_LENGTH(AUTH_HEADER_MAX) + 1];
    uint8_t m[SHA256_DIGEST_SIZE];
    size_t n = sizeof(dec) - 1, blen = strlen(b64);
    struct auth_user *u = NULL;
    const char *out, *pass;
    char *colon;
    enum http_auth_verdict v = HTTP_AUTH_WRONG;

    base64_decode_init(&ctx);
    if (!base64_decode_update(&ctx, &n, dec, blen, (const char *)b64) ||
        !base64_decode_final(&ctx))
        return HTTP_AUTH_WRONG;
    dec[n] = '\0';
    colon = memchr(dec, ':', n);
    if (!colon || memchr(dec, '\0', n))
        goto out;
    *colon = '\0';
    pass = colon + 1;
    for (size_t i = 0; i < a->nusers; i++)
        if (!strcmp(a->users[i].name, (char *)dec))
            u = &a->users[i];
    mac(a, (char *)dec, strlen((char *)dec), pass, strlen(pass), m);
    if (u && u->ok_valid && memeql_sec(m, u->ok_mac, sizeof(m))) {
        v = HTTP_AUTH_OK;
        goto out;
    }
    if (!kdf_budget(a, now_ms)) {
        v = HTTP_AUTH_BUSY;
        goto out;
    }
    /* An unknown user costs the same derivation as a known one. */
    out = crypt_rn(pass, u ? u->hash : a->users[0].hash, a->cd,
                   (int)sizeof(*a->cd));
    if (u && out && strlen(out) == strlen(u->hash) &&
        memeql_sec(out, u->hash, strlen(out))) {
        memcpy(u->ok_mac, m, sizeof(m));
        u->ok_valid = true;
        v = HTTP_AUTH_OK;
    }
out:
    explicit_bzero(dec, sizeof(dec));
    return v;
}

enum http_auth_verdict
http_auth_check(struct http_auth *a, const char *authorization, uint64_t now_ms)
{
    const char *rest;

    if (!http_auth_enabled(a))
        return HTTP_AUTH_OK;
    if (!authorization)
        return HTTP_AUTH_MISSING;
    if (strlen(authorization) > AUTH_HEADER_MAX)
        return HTTP_AUTH_WRONG;
    if ((rest = scheme(authorization, "Bearer"))) {
        uint8_t m[SHA256_DIGEST_SIZE];

        if (!a->has_token)
            return HTTP_AUTH_WRONG;
        mac(a, rest, strlen(rest), NULL, 0, m);
        return memeql_sec(m, a->token_mac, sizeof(m)) ? HTTP_AUTH_OK
                                                      : HTTP_AUTH_WRONG;
    }
    if ((rest = scheme(authorization, "Basic"))) {
        if (!a->nusers)
            return HTTP_AUTH_WRONG;
        return check_basic(a, rest, now_ms);
    }
    return HTTP_AUTH_MISSING;
}
