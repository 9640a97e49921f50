/* str.h: the borrowed byte slice every part of the HTTP engine passes around,
 * and the one hex-digit decoder (chunk sizes, percent escapes). */
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

#endif
