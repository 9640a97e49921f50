/* str.h: the borrowed byte slice every part of the HTTP engine passes around,
 * the one hex-digit decoder (chunk sizes, percent escapes) and the peer
 * address formatter. */
#ifndef TK_STR_H
#define TK_STR_H

#include <stddef.h>

/* A borrowed slice of bytes; p == NULL means "absent". Not NUL-terminated. */
typedef struct {
    const char *p;
    size_t len;
} tk_str_t;

/* The value of one hex digit (either case), or -1. */
static inline int tk_str_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* An IPv4 address (4 bytes, network order) in dotted decimal, as inet_ntop()
 * writes it but without its sprintf(), which cost more than the rest of a
 * connection's accept (callgrind). out gets at most 16 bytes, NUL-terminated;
 * returns the length. */
static inline size_t tk_str_ipv4(const void *addr, char out[16])
{
    const unsigned char *b = addr;
    char *w = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100) {
            *w++ = (char)('0' + v / 100);
            v %= 100;
            *w++ = (char)('0' + v / 10);
        } else if (v >= 10) {
            *w++ = (char)('0' + v / 10);
        }
        *w++ = (char)('0' + v % 10);
        *w++ = '.';
    }
    *--w = '\0';
    return (size_t)(w - out);
}

#endif
