/* users.c: the users API: list (keyset pagination), get (cache-aside in Redis), create, replace,
 * delete. */
#include "config.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "cache/cache.h"
#include "db/db.h"
#include "handlers/db_status.h"
#include "handlers/handlers.h"
#include "http/http_json.h"
#include "http/http_response.h"
#include "runtime/scheduler.h"

#define USERS_DEFAULT_LIMIT 10
#define USERS_MAX_LIMIT     100
#define NAME_MAX_CHARS      100
#define EMAIL_MAX_BYTES     254

static int st_list, st_get, st_insert, st_update, st_delete;
/* The worker's services (tk_handlers_register_users), for the worker's life. */
static const tk_handlers_env_t *env;

#define USER_COLS                                                                                  \
    "id, name, email, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* Append s as a JSON string: quotes, backslashes and control characters
 * escaped, everything else (UTF-8 included) byte for byte. */
static void json_str(tk_http_buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, o = 0;
    /* Most strings need no escaping: find the first byte that does. */
    while (i < len && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\')
        i++;
    char *w = tk_http_buf_reserve(b, i + (len - i) * 6 + 2);
    if (w == NULL)
        return;
    w[o++] = '"';
    memcpy(w + o, s, i);
    o += i;
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            w[o++] = '\\';
            w[o++] = (char)ch;
        } else if (ch < 0x20) {
            w[o++] = '\\';
            switch (ch) {
            case '\n':
                w[o++] = 'n';
                break;
            case '\r':
                w[o++] = 'r';
                break;
            case '\t':
                w[o++] = 't';
                break;
            default:
                w[o++] = 'u';
                w[o++] = '0';
                w[o++] = '0';
                w[o++] = hex[ch >> 4];
                w[o++] = hex[ch & 15];
            }
        } else {
            w[o++] = (char)ch;
        }
    }
    w[o++] = '"';
    tk_http_buf_commit(b, o);
}

/* One row (id, name, email[, created_at]) as a JSON object. */
static void user_json(tk_http_buf_t *b, const PGresult *r, int row)
{
    tk_http_buf_append_str(b, "{\"id\":");
    tk_http_buf_append(b, PQgetvalue(r, row, 0), (size_t)PQgetlength(r, row, 0));
    tk_http_buf_append_str(b, ",\"name\":");
    json_str(b, PQgetvalue(r, row, 1), (size_t)PQgetlength(r, row, 1));
    tk_http_buf_append_str(b, ",\"email\":");
    json_str(b, PQgetvalue(r, row, 2), (size_t)PQgetlength(r, row, 2));
    if (PQnfields(r) > 3) {
        tk_http_buf_append_str(b, ",\"created_at\":");
        json_str(b, PQgetvalue(r, row, 3), (size_t)PQgetlength(r, row, 3));
    }
    tk_http_buf_append(b, "}", 1);
}

/* v >= 0 as decimal text into out (at least 21 bytes). */
static void fmt_i64(char *out, int64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0)
        *out++ = tmp[--n];
    *out = '\0';
}

/* A non-negative decimal int64 from text; -1 if not one. */
static int parse_id(const char *s, size_t len, int64_t *out)
{
    int64_t v = 0;
    if (len == 0 || len > 18)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* GET /users?limit=1..100&after_id=N: id order, keyset pagination (the next
 * page starts after the last id returned). */
static void h_list(tk_http_ctx_t *ctx)
{
    char buf[32], lim[24], after[24];
    int64_t limit = USERS_DEFAULT_LIMIT, after_id = 0;
    int n;

    if ((n = tk_http_query(ctx, "limit", buf, sizeof(buf))) != -1) {
        if (n < 0 || parse_id(buf, (size_t)n, &limit) != 0 || limit < 1 ||
            limit > USERS_MAX_LIMIT) {
            tk_http_respond_error(ctx, 400, "limit must be an integer from 1 to 100");
            return;
        }
    }
    if ((n = tk_http_query(ctx, "after_id", buf, sizeof(buf))) != -1) {
        if (n < 0 || parse_id(buf, (size_t)n, &after_id) != 0) {
            tk_http_respond_error(ctx, 400, "after_id must be a non-negative integer");
            return;
        }
    }
    if (tk_handlers_db_lsn_in(ctx) < 0)
        return;
    fmt_i64(lim, limit);
    fmt_i64(after, after_id);
    const char *v[2] = {after, lim};
    PGresult *r;
    tk_db_status_t st = tk_db_query(st_list, 2, v, NULL, &r, NULL);
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    tk_handlers_db_backend_out(ctx);
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    int rows = PQntuples(r);
    tk_http_buf_append(b, "[", 1);
    for (int i = 0; i < rows; i++) {
        if (i)
            tk_http_buf_append(b, ",", 1);
        user_json(b, r, i);
    }
    tk_http_buf_append(b, "]", 1);
    if (rows == limit && PQgetlength(r, rows - 1, 0) < 24) {
        /* </users?limit=N&after_id=ID>; rel="next" (no printf: hot path) */
        char link[80], *e = link;
        e = stpcpy(e, "</users?limit=");
        e = stpcpy(e, lim);
        e = stpcpy(e, "&after_id=");
        e = stpcpy(e, PQgetvalue(r, rows - 1, 0));
        stpcpy(e, ">; rel=\"next\"");
        tk_http_add_header(ctx, "Link", link);
    }
    PQclear(r);
    tk_http_respond_buf(ctx, 200, "application/json");
}

/* The {id} path parameter; answers 400 itself when malformed. */
static int path_id(tk_http_ctx_t *ctx, char out[24])
{
    tk_str_t p = tk_http_param(ctx, "id");
    int64_t id;
    if (p.p == NULL || parse_id(p.p, p.len, &id) != 0 || id < 1) {
        tk_http_respond_error(ctx, 400, "id must be a positive integer");
        return -1;
    }
    snprintf(out, 24, "%lld", (long long)id);
    return 0;
}

/* The cache key of a user: "user:{id}". Returns its length. */
static size_t user_key(char key[32], const char *id)
{
    return (size_t)snprintf(key, 32, "user:%s", id);
}

/* Drop the cached copy of a user after a committed change (a negative entry
 * too: a created id may have been looked up before it existed). Runs before
 * the response is built, so a client that sees the response and reads again,
 * on any connection, misses the old value. Redis being unwell is no error
 * here: the TTL bounds the staleness. */
static void user_invalidate(const char *id, size_t idlen)
{
    char key[32], idz[24];
    if (idlen >= sizeof(idz))
        return;
    memcpy(idz, id, idlen);
    idz[idlen] = '\0';
    size_t kl = user_key(key, idz);
    tk_cache_invalidate(env->cache, env->flight, key, kl);
}

/* Run a statement that returns one user row and answer with it; with
 * invalidate, the row's cache entry is dropped before answering. */
static void answer_row(tk_http_ctx_t *ctx, int stmt, int nparams, const char *const *v, int created,
                       int invalidate)
{
    PGresult *r;
    char sqlstate[6];
    tk_db_status_t st = tk_db_query(stmt, nparams, v, NULL, &r, sqlstate);
    if (st == TK_DB_ERROR && strcmp(sqlstate, "23505") == 0) {
        tk_http_respond_error(ctx, 409, "a user with this email already exists");
        return;
    }
    if (st == TK_DB_ERROR && (strncmp(sqlstate, "22", 2) == 0)) {
        tk_http_respond_error(ctx, 400, "invalid field value"); /* e.g. invalid UTF-8 */
        return;
    }
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    if (PQntuples(r) != 1) {
        PQclear(r);
        tk_http_respond_error(ctx, 404, "no such user");
        return;
    }
    if (invalidate)
        user_invalidate(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0));
    /* a write: where a reader must have replayed to to see it (read-your-writes) */
    tk_handlers_db_lsn_out(ctx);
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    user_json(b, r, 0);
    if (created)
        tk_http_add_headerf(ctx, "Location", "/users/%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    tk_http_respond_buf(ctx, created ? 201 : 200, "application/json");
}

/* The database side of GET /users/{id} for tk_cache_fetch(). */
typedef struct {
    const char *id;
    tk_db_status_t st; /* why the load failed (only the leader's own call sets it) */
    int cached;        /* the load fills the cache */
} user_load_t;

/* Loader: the user's JSON (exactly the response body), 1 when there is no
 * such id (cached as "not found"), -1 when the database failed. */
static int user_load(void *arg, const char *key, size_t keylen, char **val, size_t *vallen)
{
    user_load_t *l = arg;
    const char *v[1] = {l->id};
    PGresult *r;
    (void)key;
    (void)keylen;
    /* A fill of the cache reads the primary: the cache's promise (a write drops the entry
     * before it answers) would not hold if a replica behind that write could put the old
     * row back for the whole TTL. Without a cache, a replica serves it. */
    if (l->cached)
        tk_db_read_primary();
    l->st = tk_db_query(st_get, 1, v, NULL, &r, NULL);
    if (l->st != TK_DB_OK)
        return -1;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return 1;
    }
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    user_json(&b, r, 0);
    PQclear(r);
    if (b.data == NULL || b.len == 0) {
        tk_http_buf_free(&b);
        l->st = TK_DB_ERROR;
        return -1;
    }
    *val = b.data; /* malloc'd by the buffer: the caller frees it */
    *vallen = b.len;
    return 0;
}

/* GET /users/{id}: cache-aside on "user:{id}" (redis.addr empty: straight
 * to the database). Concurrent misses for one id in this worker make one
 * query; Redis failing or slow costs at most redis.timeout, never an error. */
static void h_get(tk_http_ctx_t *ctx)
{
    char id[24], key[32];
    if (path_id(ctx, id) != 0)
        return;
    tk_cache_t *c = env->cache;
    size_t kl = user_key(key, id);
    user_load_t l = {id, TK_DB_UNAVAILABLE, c != NULL};
    char *val;
    size_t len;
    int hit = 0, rc, ryw = tk_handlers_db_lsn_in(ctx);
    if (ryw < 0)
        return;
    if (ryw > 0) {
        /* Tenk-LSN: past the cache, to a backend that has replayed it */
        l.cached = 0;
        rc = user_load(&l, key, kl, &val, &len);
        c = NULL;
    } else {
        rc = tk_cache_fetch(c, env->flight, key, kl, 0, user_load, &l, &val, &len, &hit);
    }
    tk_handlers_db_backend_out(ctx);
    if (rc < 0) {
        /* a waiter of a failed single-flight load has no status of its own */
        tk_handlers_db_error(ctx, tk_gt_cancelled(tk_gt_self()) ? TK_DB_CANCELLED : l.st);
        return;
    }
    if (c != NULL)
        tk_http_add_header(ctx, "X-Cache", hit ? "hit" : "miss");
    if (rc == 1) {
        tk_http_respond_error(ctx, 404, "no such user");
        return;
    }
    tk_http_respond(ctx, 200, "application/json", val, len);
    free(val);
}

/* Count UTF-8 characters; -1 if the bytes are not valid UTF-8. */
static long utf8_chars(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    long n = 0;
    while (*p) {
        int extra;
        if (*p < 0x80)
            extra = 0;
        else if ((*p & 0xe0) == 0xc0 && *p >= 0xc2)
            extra = 1;
        else if ((*p & 0xf0) == 0xe0)
            extra = 2;
        else if ((*p & 0xf8) == 0xf0 && *p <= 0xf4)
            extra = 3;
        else
            return -1;
        p++;
        for (int i = 0; i < extra; i++, p++)
            if ((*p & 0xc0) != 0x80)
                return -1;
        n++;
    }
    return n;
}

/* A plausible address: one '@', a non-empty local part, a dotted domain, no
 * spaces or control characters, at most 254 bytes. */
static int email_ok(const char *e)
{
    size_t len = strlen(e);
    const char *at = strchr(e, '@');
    if (len < 3 || len > EMAIL_MAX_BYTES || at == NULL || at == e || strchr(at + 1, '@'))
        return 0;
    for (const unsigned char *p = (const unsigned char *)e; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return 0;
    const char *dot = strchr(at + 1, '.');
    return dot != NULL && dot != at + 1 && e[len - 1] != '.' && utf8_chars(e) >= 0;
}

/* Parse and validate {"name","email"}; answers 400/415 itself. */
static int read_user(tk_http_ctx_t *ctx, cJSON **doc, const char **name, const char **email)
{
    /* 415/400 answered there; nesting is bounded before cJSON's recursion */
    *doc = tk_http_json_body(ctx);
    if (*doc == NULL)
        return -1;
    if (!cJSON_IsObject(*doc)) {
        cJSON_Delete(*doc);
        tk_http_respond_error(ctx, 400, "the body must be a JSON object");
        return -1;
    }
    cJSON *n = cJSON_GetObjectItemCaseSensitive(*doc, "name");
    cJSON *e = cJSON_GetObjectItemCaseSensitive(*doc, "email");
    long nc;
    if (!cJSON_IsString(n) || (nc = utf8_chars(n->valuestring)) < 1 || nc > NAME_MAX_CHARS) {
        cJSON_Delete(*doc);
        tk_http_respond_error(ctx, 400, "name must be a string of 1 to 100 characters");
        return -1;
    }
    if (!cJSON_IsString(e) || !email_ok(e->valuestring)) {
        cJSON_Delete(*doc);
        tk_http_respond_error(ctx, 400, "email must be a valid address of at most 254 bytes");
        return -1;
    }
    *name = n->valuestring;
    *email = e->valuestring;
    return 0;
}

/* POST /users: 201 + Location, 409 on a duplicate email. */
static void h_create(tk_http_ctx_t *ctx)
{
    cJSON *doc;
    const char *name, *email;
    if (read_user(ctx, &doc, &name, &email) != 0)
        return;
    const char *v[2] = {name, email};
    answer_row(ctx, st_insert, 2, v, 1, 1);
    cJSON_Delete(doc);
}

/* PUT /users/{id}: replace name and email. */
static void h_replace(tk_http_ctx_t *ctx)
{
    char id[24];
    cJSON *doc;
    const char *name, *email;
    if (path_id(ctx, id) != 0 || read_user(ctx, &doc, &name, &email) != 0)
        return;
    const char *v[3] = {id, name, email};
    answer_row(ctx, st_update, 3, v, 0, 1);
    cJSON_Delete(doc);
}

/* DELETE /users/{id}: 204, or 404. */
static void h_delete(tk_http_ctx_t *ctx)
{
    char id[24];
    PGresult *r;
    if (path_id(ctx, id) != 0)
        return;
    const char *v[1] = {id};
    tk_db_status_t st = tk_db_query(st_delete, 1, v, NULL, &r, NULL);
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    int gone = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (gone)
        tk_handlers_db_lsn_out(ctx);
    /* even when nothing was deleted: another worker's racing load may have
     * stored a row an earlier DELETE removed */
    user_invalidate(id, strlen(id));
    if (gone)
        tk_http_respond(ctx, 204, NULL, NULL, 0);
    else
        tk_http_respond_error(ctx, 404, "no such user");
}

void tk_handlers_register_users(tk_router_t *r, const tk_handlers_env_t *e)
{
    env = e;
    const unsigned rj = TK_DB_READ | TK_DB_JOINABLE;
    st_list =
        tk_db_stmt("SELECT id, name, email FROM users WHERE id > $1 ORDER BY id LIMIT $2", 2, rj);
    st_get = tk_db_stmt("SELECT " USER_COLS " FROM users WHERE id = $1", 1, rj);
    st_insert =
        tk_db_stmt("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING " USER_COLS, 2, 0);
    st_update = tk_db_stmt(
        "UPDATE users SET name = $2, email = $3 WHERE id = $1 RETURNING " USER_COLS, 3, 0);
    st_delete = tk_db_stmt("DELETE FROM users WHERE id = $1", 1, 0);
    tk_router_add(r, "GET", "/users", h_list);
    tk_router_add(r, "POST", "/users", h_create);
    tk_router_add(r, "GET", "/users/{id}", h_get);
    tk_router_add(r, "PUT", "/users/{id}", h_replace);
    tk_router_add(r, "DELETE", "/users/{id}", h_delete);
}
