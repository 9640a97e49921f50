/* uri.c: percent-decoding of request paths and query strings, query lookup. */
#include "config.h"

#include "http/uri.h"

#include <string.h>

/* Decode in into out (which may alias in.p: the write index never passes the
 * read index). plus: '+' means space (query strings). out may be NULL to only
 * validate. */
static int decode(tk_str_t in, int plus, char *out, size_t outlen, size_t *outn)
{
    size_t o = 0;
    int too_long = 0;

    for (size_t i = 0; i < in.len; i++) {
        unsigned char c = (unsigned char)in.p[i];
        if (c == '%') {
            int h, l;
            if (in.len - i < 3 || (h = tk_str_hexval((unsigned char)in.p[i + 1])) < 0 ||
                (l = tk_str_hexval((unsigned char)in.p[i + 2])) < 0)
                return TK_URI_EINVAL;
            c = (unsigned char)(h << 4 | l);
            if (c == 0)
                return TK_URI_EINVAL;
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        } else if (c == 0) {
            return TK_URI_EINVAL; /* the parser never lets one through; be safe anyway */
        }
        /* keep going when out is full: an invalid escape later still wins */
        if (out != NULL && o + 1 < outlen)
            out[o] = (char)c;
        else if (out != NULL)
            too_long = 1;
        o++;
    }
    if (out != NULL) {
        if (too_long || o >= outlen)
            return TK_URI_ETOOLONG;
        out[o] = '\0';
    }
    if (outn)
        *outn = o;
    return TK_URI_OK;
}

int tk_uri_decode_path(tk_str_t in, char *out, size_t outlen, size_t *outn)
{
    if (out == NULL || outlen == 0)
        return TK_URI_ETOOLONG;
    return decode(in, 0, out, outlen, outn);
}

int tk_uri_decode_query(tk_str_t in, char *out, size_t outlen, size_t *outn)
{
    if (out == NULL || outlen == 0)
        return TK_URI_ETOOLONG;
    return decode(in, 1, out, outlen, outn);
}

int tk_uri_validate(tk_str_t s)
{
    return decode(s, 0, NULL, 0, NULL);
}

int tk_uri_query_next(tk_str_t *rest, tk_str_t *key, tk_str_t *val)
{
    while (rest->p != NULL && rest->len > 0) {
        const char *p = rest->p, *amp = memchr(p, '&', rest->len);
        size_t n = amp ? (size_t)(amp - p) : rest->len;
        if (amp) {
            rest->p = amp + 1;
            rest->len -= n + 1;
        } else {
            rest->p += n;
            rest->len = 0;
        }
        if (n == 0)
            continue;
        const char *eq = memchr(p, '=', n);
        if (eq) {
            key->p = p;
            key->len = (size_t)(eq - p);
            val->p = eq + 1;
            val->len = n - key->len - 1;
        } else {
            key->p = p;
            key->len = n;
            val->p = p + n;
            val->len = 0;
        }
        return 1;
    }
    return 0;
}

/* Whether raw (encoded) key k decodes to key; -1 on an invalid escape. */
static int key_matches(tk_str_t k, const char *key, size_t keylen)
{
    size_t j = 0;
    for (size_t i = 0; i < k.len; i++, j++) {
        unsigned char c = (unsigned char)k.p[i];
        if (c == '%') {
            int h, l;
            if (k.len - i < 3 || (h = tk_str_hexval((unsigned char)k.p[i + 1])) < 0 ||
                (l = tk_str_hexval((unsigned char)k.p[i + 2])) < 0 || (h | l) == 0)
                return -1;
            c = (unsigned char)(h << 4 | l);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        } else if (c == 0) {
            return -1;
        }
        if (j >= keylen || (unsigned char)key[j] != c) {
            /* still validate the rest of the key's escapes */
            return tk_uri_validate((tk_str_t){k.p + i + 1, k.len - i - 1}) < 0 ? -1 : 0;
        }
    }
    return j == keylen;
}

int tk_uri_query_get(tk_str_t query, const char *key, char *out, size_t outlen, size_t *outn)
{
    tk_str_t rest = query, k, v;
    size_t keylen = strlen(key);

    while (tk_uri_query_next(&rest, &k, &v)) {
        int m = key_matches(k, key, keylen);
        if (m < 0)
            return -1;
        if (m == 0)
            continue;
        int rc = tk_uri_decode_query(v, out, outlen, outn);
        if (rc == TK_URI_EINVAL)
            return -1;
        if (rc == TK_URI_ETOOLONG)
            return -2;
        return 1;
    }
    return 0;
}
