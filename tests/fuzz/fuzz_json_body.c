/* fuzz_json_body.c: libFuzzer target for the users API's JSON request bodies (POST/PUT /users).
 *
 * The validation (read_user: Content-Type check, NUL screening, cJSON parse, name and email
 * rules) and the JSON string writer (json_str) are static in handlers/users.c, so this file
 * includes users.c itself and stands in for the few HTTP-engine calls they make (header,
 * body, error answer, buffer reserve). Everything else users.c references (database, cache,
 * router) is never reached and left unresolved at link time.
 *
 * The body is parsed on a tk green thread with the configured stack size (gt_run.h), as in a
 * worker: a recursion that input can drive deeper than that stack is a crash here too.
 *
 * Input: one byte picks the Content-Type, the rest is the body. Checks, any failure aborts:
 * - exactly one answer on rejection, 415 iff the Content-Type is not JSON, else 400, and a
 *   body nested deeper than TK_HTTP_JSON_MAX_DEPTH is always rejected;
 * - an accepted body really is one JSON object (nothing but whitespace after it, no NUL
 *   anywhere) whose "name" is 1..100 UTF-8 characters and whose "email" has one '@', a
 *   dotted domain, no space or control byte, at most 254 bytes;
 * - json_str (how users.c writes strings into responses) round-trips through cJSON for the
 *   accepted fields and for the raw input: what goes out parses back to the same bytes. */
// fuzz-sources: server/http/uri.c server/http/http_json.c @runtime
// fuzz-libs: -I/usr/include/postgresql -I/usr/include/hiredis -lcjson -lpq
// fuzz-libs: -no-pie -Wl,--unresolved-symbols=ignore-all
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../handlers/users.c"
#include "gt_run.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_json_body: check failed at line %d: %s\n", __LINE__, #cond);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The request context as the fuzzed code sees it. */
struct tk_http_ctx {
    tk_str_t content_type;
    tk_str_t body;
    int status;
    int answers;
};

tk_str_t tk_http_header(const tk_http_ctx_t *ctx, const char *name)
{
    tk_str_t none = {NULL, 0};
    return strcasecmp(name, "Content-Type") == 0 ? ctx->content_type : none;
}

tk_str_t tk_http_body(const tk_http_ctx_t *ctx)
{
    return ctx->body;
}

int tk_http_respond_error(tk_http_ctx_t *ctx, int status, const char *message)
{
    CHECK(message != NULL && *message != '\0');
    ctx->status = status;
    ctx->answers++;
    return 0;
}

char *tk_http_buf_reserve(tk_http_buf_t *b, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->len + n;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return NULL;
        b->data = d;
        b->cap = cap;
    }
    return b->data + b->len;
}

static const char *const content_types[] = {
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/json\tx",
    "application/jsonx",
    "text/plain",
    "application/jso",
    "",
    NULL, /* absent */
};
#define NCT (sizeof(content_types) / sizeof(content_types[0]))

static int ct_is_json(const char *ct)
{
    return ct != NULL && (strncasecmp(ct, "application/json", 16) == 0) &&
           (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ' || ct[16] == '\t');
}

/* Independent re-statement of the email rule. */
static int email_plausible(const char *e)
{
    size_t len = strlen(e), ats = 0;
    const char *at = NULL;
    if (len < 3 || len > 254)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)e[i];
        if (c <= 0x20 || c == 0x7f)
            return 0;
        if (c == '@') {
            ats++;
            at = e + i;
        }
    }
    return ats == 1 && at != e && strchr(at + 1, '.') != NULL && at[1] != '.' && e[len - 1] != '.';
}

/* json_str(s) parsed back by cJSON gives s (strings without NUL). */
static void roundtrip(const char *s, size_t len)
{
    tk_http_buf_t b = {NULL, 0, 0};
    json_str(&b, s, len);
    CHECK(b.data != NULL && b.len >= len + 2);
    cJSON *v = cJSON_ParseWithLength(b.data, b.len);
    CHECK(v != NULL && cJSON_IsString(v));
    CHECK(strlen(v->valuestring) == len && memcmp(v->valuestring, s, len) == 0);
    cJSON_Delete(v);
    free(b.data);
}

/* read_user() on a green thread, as the handler calls it. */
struct read_call {
    struct tk_http_ctx *ctx;
    cJSON *doc;
    const char *name, *email;
    int rc;
};

static void read_on_gt(void *arg)
{
    struct read_call *r = arg;
    r->rc = read_user(r->ctx, &r->doc, &r->name, &r->email);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *ct = content_types[data[0] % NCT];
    struct tk_http_ctx ctx = {{ct, ct ? strlen(ct) : 0}, {(const char *)data + 1, size - 1}, 0, 0};
    /* the engine's body buffer is not NUL-terminated: give the parser an exact-size copy so
     * that ASan sees any read past the end */
    char *body = malloc(size - 1 ? size - 1 : 1);
    CHECK(body != NULL);
    memcpy(body, data + 1, size - 1);
    ctx.body.p = body;

    struct read_call rd = {&ctx, NULL, NULL, NULL, 0};
    fuzz_gt_run(read_on_gt, &rd);
    cJSON *doc = rd.doc;
    const char *name = rd.name, *email = rd.email;
    int rc = rd.rc;
    if (tk_http_json_depth(body, size - 1, TK_HTTP_JSON_MAX_DEPTH) > TK_HTTP_JSON_MAX_DEPTH)
        CHECK(rc != 0);
    if (rc != 0) {
        CHECK(ctx.answers == 1);
        CHECK(ctx.status == (ct_is_json(ct) ? 400 : 415));
    } else {
        CHECK(ctx.answers == 0 && ct_is_json(ct));
        CHECK(doc != NULL && cJSON_IsObject(doc));
        CHECK(name == cJSON_GetObjectItemCaseSensitive(doc, "name")->valuestring);
        CHECK(email == cJSON_GetObjectItemCaseSensitive(doc, "email")->valuestring);
        long nc = utf8_chars(name);
        CHECK(nc >= 1 && nc <= 100 && strlen(name) <= 400);
        CHECK(email_plausible(email));
        CHECK(memchr(body, '\0', size - 1) == NULL);
        /* the body is one JSON value: nothing but whitespace after it */
        const char *end = NULL;
        cJSON *again = cJSON_ParseWithLengthOpts(body, size - 1, &end, 0);
        CHECK(again != NULL && end != NULL);
        cJSON_Delete(again);
        for (const char *p = end; p < body + (size - 1); p++)
            CHECK(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n');
        roundtrip(name, strlen(name));
        roundtrip(email, strlen(email));
        cJSON_Delete(doc);
    }
    /* the response writer on arbitrary bytes (up to the first NUL, as text columns hold) */
    roundtrip(body, strnlen(body, size - 1));
    free(body);
    return 0;
}
