/* uri.h: percent-decoding of request paths and query strings, query lookup.
 *
 * All functions work on borrowed slices and write into caller buffers; they
 * never allocate. Decoding is strict: a '%' not followed by two hex digits is
 * an error (the caller answers 400), and so is an escape that decodes to NUL
 * (%00), or a raw NUL byte, because decoded values end up in C strings and
 * file/SQL parameters. */
#ifndef TK_URI_H
#define TK_URI_H

#include <stddef.h>

#include "http/str.h"

#define TK_URI_OK       0
#define TK_URI_EINVAL   -1 /* invalid or truncated escape, or %00 */
#define TK_URI_ETOOLONG -2 /* out is too small */

/* Percent-decode a path (or one path segment) into out, NUL-terminated ('+'
 * stays '+'; %2F becomes '/', so route on the raw path and decode segments).
 * *outn (may be NULL) gets the decoded length. out may equal in.p (decoding
 * never grows), then outlen must leave room for the NUL: in.len + 1.
 * Returns TK_URI_OK, TK_URI_EINVAL or TK_URI_ETOOLONG (outlen <= decoded). */
int tk_uri_decode_path(tk_str_t in, char *out, size_t outlen, size_t *outn);

/* The same for a query-string key or value: also '+' -> ' '. */
int tk_uri_decode_query(tk_str_t in, char *out, size_t outlen, size_t *outn);

/* Iterate over the raw key=value pairs of a query string (without '?').
 * Empty pairs ("a=1&&b=2") are skipped; a pair without '=' has an empty
 * value. Returns 1 with *key and *val set (raw, still encoded) and *rest
 * advanced, 0 at the end. */
int tk_uri_query_next(tk_str_t *rest, tk_str_t *key, tk_str_t *val);

/* Look up key (compared after decoding) in query. The first occurrence wins.
 * Its decoded value goes NUL-terminated to out, its length to *outn (may be
 * NULL). Returns 1 found, 0 absent, -1 an invalid escape in a key scanned or
 * in the value found (answer 400), -2 the value does not fit in out. */
int tk_uri_query_get(tk_str_t query, const char *key, char *out, size_t outlen, size_t *outn);

/* Whether every escape in a query string (or path) is valid and not %00:
 * 0 if valid, TK_URI_EINVAL if not. Lets the engine answer 400 up front. */
int tk_uri_validate(tk_str_t s);

#endif
