/* utf8.h -- the one strict UTF-8 check of io/: no overlong forms, no
 * surrogates, nothing above U+10FFFF (Unicode 15, table 3-7). The event
 * decoder rejects ids that fail it; the JSON dump replaces what fails it
 * with U+FFFD. Inline because the decoder runs it on every id. */
#ifndef NMFD_UTF8_H
#define NMFD_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the valid UTF-8 sequence at p (NUL allowed), 0 if invalid.
 * avail >= 1 bytes are readable at p. */
static inline size_t utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned c = p[0], lo = 0x80, hi = 0xbf;
    size_t k;

    if (c <= 0x7f)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        k = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        k = 2;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 3;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0; /* continuation, 0xc0/0xc1, 0xf5.. */
    if (avail <= k || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i <= k; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return k + 1;
}

/* True if s[0..n) is valid UTF-8 without NUL. */
static inline bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < n;) {
        size_t k;

        if (p[i] == 0 || !(k = utf8_seq(p + i, n - i)))
            return false;
        i += k;
    }
    return true;
}

#endif
