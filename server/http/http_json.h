/* http_json.h: JSON request bodies for handlers: a linear depth pre-scan, then cJSON.
 *
 * cJSON parses recursively (one stack frame per level; Debian's build allows
 * 1,000 levels), and a green thread's stack is small: 2,000 '[' overflowed a
 * 64 KiB stack. Every handler that reads a JSON body goes through
 * tk_http_json_body(), which refuses deep nesting before cJSON sees it. */
#ifndef TK_HTTP_JSON_H
#define TK_HTTP_JSON_H

#include <stddef.h>

#include "http/http_response.h"

struct cJSON;

/* Deepest nesting a request body may have ([ and { count one level each).
 * Overridable only so that the fuzz target can be shown to fail without it. */
#ifndef TK_HTTP_JSON_MAX_DEPTH
#define TK_HTTP_JSON_MAX_DEPTH 32
#endif

/* Deepest nesting of '[' and '{' in p[0..len), not counting brackets inside
 * strings (escapes understood). Linear, no recursion, and stops as soon as the
 * depth exceeds limit (returning limit + 1), so it is cheap on any input. It
 * does not validate: unbalanced or invalid text is left to the parser. */
unsigned tk_http_json_depth(const char *p, size_t len, unsigned limit);

/* The request body as one JSON value (anything but whitespace after it is an
 * error). Answers by itself and returns NULL on: Content-Type not
 * application/json (415); a NUL in the text, raw or \u0000 (400: cJSON would
 * cut the string there); nesting deeper than TK_HTTP_JSON_MAX_DEPTH (400);
 * invalid JSON (400). Otherwise the document, which the caller cJSON_Delete()s.
 * Does not yield. */
struct cJSON *tk_http_json_body(tk_http_ctx_t *ctx);

#endif
