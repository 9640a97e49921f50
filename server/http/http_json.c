/* http_json.c: JSON request bodies: Content-Type, NUL and depth checks, then cJSON. */
#include "config.h"

#include "http/http_json.h"

#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

unsigned tk_http_json_depth(const char *p, size_t len, unsigned limit)
{
    unsigned depth = 0, max = 0;
    int in_str = 0;

    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++; /* the escaped character, whatever it is, ends nothing */
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) {
                max = depth;
                if (max > limit)
                    return limit + 1;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return max;
}

/* Whether the JSON text holds a NUL: raw anywhere, or \u0000 in a string. */
static int has_nul(const char *s, size_t len)
{
    /* a raw NUL anywhere, even right after a backslash (which the escape
     * scan below steps over) */
    if (memchr(s, '\0', len) != NULL)
        return 1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len && s[i + 2] == '0' && s[i + 3] == '0' &&
                s[i + 4] == '0' && s[i + 5] == '0')
                return 1;
            i++; /* skip the escaped character (so \\u0000 is not a NUL) */
        }
    }
    return 0;
}

cJSON *tk_http_json_body(tk_http_ctx_t *ctx)
{
    static const char json_type[] = "application/json";
    const size_t jl = sizeof(json_type) - 1;
    tk_str_t ct = tk_http_header(ctx, "Content-Type");
    tk_str_t body = tk_http_body(ctx);

    if (ct.p == NULL || ct.len < jl || strncasecmp(ct.p, json_type, jl) != 0 ||
        (ct.len > jl && ct.p[jl] != ';' && ct.p[jl] != ' ' && ct.p[jl] != '\t')) {
        tk_http_respond_error(ctx, 415, "the body must be application/json");
        return NULL;
    }
    if (has_nul(body.p, body.len)) {
        tk_http_respond_error(ctx, 400, "strings must not contain NUL characters");
        return NULL;
    }
    /* before cJSON, whose recursion would overflow a green thread's stack */
    if (tk_http_json_depth(body.p, body.len, TK_HTTP_JSON_MAX_DEPTH) > TK_HTTP_JSON_MAX_DEPTH) {
        tk_http_respond_error(ctx, 400, "JSON nested deeper than 32 levels");
        return NULL;
    }
    /* One JSON value and nothing after it but whitespace: "{...} garbage" is
     * not a body we understand, whatever cJSON made of its start. */
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(body.p, body.len, &end, 0);
    while (doc != NULL && end < body.p + body.len &&
           (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (doc == NULL || end != body.p + body.len) {
        cJSON_Delete(doc);
        tk_http_respond_error(ctx, 400, "the body is not valid JSON");
        return NULL;
    }
    return doc;
}
