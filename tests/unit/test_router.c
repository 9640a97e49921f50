/* test_router.c: unit tests for the router: patterns, parameters, 404/405, HEAD. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http/router.h"

static void h_a(tk_http_ctx_t *c)
{
    (void)c;
}
static void h_b(tk_http_ctx_t *c)
{
    (void)c;
}
static void h_c(tk_http_ctx_t *c)
{
    (void)c;
}
static void h_d(tk_http_ctx_t *c)
{
    (void)c;
}

static tk_router_result_t match(tk_router_t *r, const char *method, const char *path,
                                tk_router_match_t *m)
{
    return tk_router_match(r, method, strlen(method), path, strlen(path), m);
}

static int param_eq(const tk_router_match_t *m, const char *name, const char *value)
{
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].name.len == strlen(name) &&
            memcmp(m->params[i].name.p, name, strlen(name)) == 0)
            return m->params[i].value.len == strlen(value) &&
                   memcmp(m->params[i].value.p, value, strlen(value)) == 0;
    return 0;
}

static void test_literals(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    assert_true(tk_router_add(r, "GET", "/health", h_a) >= 0);
    assert_true(tk_router_add(r, "GET", "/", h_b) >= 0);
    assert_true(tk_router_add(r, "GET", "/a/b/c", h_c) >= 0);
    tk_router_match_t m;
    assert_int_equal(match(r, "GET", "/health", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_a);
    assert_int_equal(m.route_id, 0); /* the router numbers routes in registration order */
    assert_string_equal(m.pattern, "/health");
    assert_int_equal(match(r, "GET", "/", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_b);
    assert_int_equal(match(r, "GET", "/a/b/c", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_c);
    /* prefixes, trailing slashes, case and empty segments do not match */
    assert_int_equal(match(r, "GET", "/a/b", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/a", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/health/", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/Health", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/healthz", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "//health", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/a/b/c/d", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "*", &m), TK_ROUTE_NOT_FOUND);
    assert_null(m.fn);
    tk_router_free(r);
}

static void test_params(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    assert_true(tk_router_add(r, "GET", "/users/{id}", h_a) >= 0);
    assert_true(tk_router_add(r, "GET", "/users/me", h_b) >= 0);
    assert_true(tk_router_add(r, "GET", "/a/{x}/b/{y}", h_c) >= 0);
    assert_true(tk_router_add(r, "GET", "/a/{x}/c", h_d) >= 0);
    tk_router_match_t m;
    assert_int_equal(match(r, "GET", "/users/42", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_a);
    assert_int_equal(m.nparams, 1);
    assert_true(param_eq(&m, "id", "42"));
    /* a literal wins over a parameter, though registered later */
    assert_int_equal(match(r, "GET", "/users/me", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_b);
    assert_int_equal(m.nparams, 0);
    /* parameters never match an empty segment or span a slash */
    assert_int_equal(match(r, "GET", "/users/", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/users/1/2", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/a/one/b/two", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_c);
    assert_int_equal(m.nparams, 2);
    assert_true(param_eq(&m, "x", "one"));
    assert_true(param_eq(&m, "y", "two"));
    assert_int_equal(match(r, "GET", "/a/%20x/c", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_d);
    assert_int_equal(m.nparams, 1);
    assert_true(param_eq(&m, "x", "%20x"));
    assert_int_equal(match(r, "GET", "/a/one/b", &m), TK_ROUTE_NOT_FOUND);
    assert_int_equal(m.nparams, 0);
    tk_router_free(r);
}

static void test_backtracking(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    /* "/x/lit" exists as a prefix, but only the parameter route goes deeper */
    assert_true(tk_router_add(r, "GET", "/x/lit", h_a) >= 0);
    assert_true(tk_router_add(r, "GET", "/x/{p}/deep", h_b) >= 0);
    tk_router_match_t m;
    assert_int_equal(match(r, "GET", "/x/lit/deep", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_b);
    assert_int_equal(m.nparams, 1);
    assert_true(param_eq(&m, "p", "lit"));
    tk_router_free(r);
}

static void test_methods(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    assert_true(tk_router_add(r, "GET", "/users/{id}", h_a) >= 0);
    assert_true(tk_router_add(r, "PUT", "/users/{id}", h_b) >= 0);
    assert_true(tk_router_add(r, "DELETE", "/users/{id}", h_c) >= 0);
    assert_true(tk_router_add(r, "POST", "/only-post", h_d) >= 0);
    tk_router_match_t m;
    assert_int_equal(match(r, "PUT", "/users/7", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_b);
    assert_int_equal(m.route_id, 1);
    assert_true(param_eq(&m, "id", "7"));
    /* HEAD is served by GET */
    assert_int_equal(match(r, "HEAD", "/users/7", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_a);
    /* wrong method: 405 and the Allow list, HEAD included with GET */
    assert_int_equal(match(r, "POST", "/users/7", &m), TK_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(m.fn);
    assert_string_equal(m.allow, "GET, HEAD, PUT, DELETE");
    assert_string_equal(m.pattern, "/users/{id}");
    /* methods are case-sensitive (RFC 9110 9.1) */
    assert_int_equal(match(r, "get", "/users/7", &m), TK_ROUTE_METHOD_NOT_ALLOWED);
    /* HEAD without GET is not allowed */
    assert_int_equal(match(r, "HEAD", "/only-post", &m), TK_ROUTE_METHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "POST");
    assert_int_equal(match(r, "GET", "/nothing", &m), TK_ROUTE_NOT_FOUND);
    tk_router_free(r);
}

static void test_explicit_head(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    assert_true(tk_router_add(r, "GET", "/f", h_a) >= 0);
    assert_true(tk_router_add(r, "HEAD", "/f", h_b) >= 0);
    tk_router_match_t m;
    assert_int_equal(match(r, "HEAD", "/f", &m), TK_ROUTE_FOUND);
    assert_ptr_equal(m.fn, h_b);
    assert_int_equal(match(r, "POST", "/f", &m), TK_ROUTE_METHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "GET, HEAD");
    tk_router_free(r);
}

static void test_bad_patterns(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    char err[128];
    assert_int_equal(tk_router_add_err(r, "GET", "users", h_a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "start with"));
    assert_int_equal(tk_router_add(r, "GET", "/u/{", h_a), -1);
    assert_int_equal(tk_router_add(r, "GET", "/u/{}", h_a), -1);
    assert_int_equal(tk_router_add(r, "GET", "/u/{a}b", h_a), -1);
    assert_int_equal(tk_router_add(r, "GET", "/u/x{a}", h_a), -1);
    assert_int_equal(tk_router_add(r, "G ET", "/u", h_a), -1);
    assert_int_equal(tk_router_add(r, "", "/u", h_a), -1);
    assert_int_equal(tk_router_add(r, "GET", "/u", NULL), -1);
    assert_int_equal(tk_router_add(r, "GET", "/u/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", h_a), -1);
    assert_true(tk_router_add(r, "GET", "/u/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", h_a) >= 0);
    /* duplicates and conflicting parameter names */
    assert_true(tk_router_add(r, "GET", "/v/{id}", h_a) >= 0);
    assert_int_equal(tk_router_add_err(r, "GET", "/v/{id}", h_b, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "twice"));
    assert_int_equal(tk_router_add(r, "PUT", "/v/{key}", h_b), -1);
    tk_router_match_t m;
    assert_int_equal(match(r, "GET", "/u/1/2/3/4/5/6/7/8", &m), TK_ROUTE_FOUND);
    assert_int_equal(m.nparams, 8);
    assert_true(param_eq(&m, "h", "8"));
    tk_router_free(r);
}

static void count_cb(const char *method, const char *pattern, int route_id, void *arg)
{
    (void)method;
    (void)pattern;
    (void)route_id;
    (*(int *)arg)++;
}

static void test_foreach(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    assert_true(tk_router_add(r, "GET", "/a", h_a) >= 0);
    assert_true(tk_router_add(r, "POST", "/a", h_a) >= 0);
    assert_true(tk_router_add(r, "GET", "/b/{x}", h_a) >= 0);
    int n = 0;
    tk_router_foreach(r, count_cb, &n);
    assert_int_equal(n, 3);
    tk_router_free(r);
}

/* Every (method, pattern) gets its own id and label; a router sharing the
 * ids gives the same label the same id. */
static void test_ids_and_labels(void **state)
{
    (void)state;
    tk_router_t *r = tk_router_new();
    tk_router_t *a = tk_router_new_shared(r);
    assert_int_equal(tk_router_add(r, "GET", "/users", h_a), 0);
    assert_int_equal(tk_router_add(r, "POST", "/users", h_b), 1);
    assert_int_equal(tk_router_add(r, "GET", "/health", h_c), 2);
    assert_int_equal(tk_router_add(a, "GET", "/metrics", h_d), 3);
    assert_int_equal(tk_router_add(a, "GET", "/health", h_c), 2);
    assert_string_equal(tk_router_label(r, 0), "GET /users");
    assert_string_equal(tk_router_label(a, 1), "POST /users");
    assert_string_equal(tk_router_label(r, 3), "GET /metrics");
    assert_null(tk_router_label(r, 4));
    assert_null(tk_router_label(r, -1));
    tk_router_match_t m;
    assert_int_equal(match(r, "POST", "/users", &m), TK_ROUTE_FOUND);
    assert_int_equal(m.route_id, 1);
    assert_int_equal(match(r, "HEAD", "/users", &m), TK_ROUTE_FOUND);
    assert_int_equal(m.route_id, 0); /* HEAD answered by GET counts as GET */
    assert_string_equal(tk_router_error(r), "");
    tk_router_free(r); /* a still holds the ids */
    assert_string_equal(tk_router_label(a, 3), "GET /metrics");
    tk_router_free(a);
}

/* One limit: TK_ROUTER_MAX_ROUTES labels (= the metrics' route slots); the
 * next registration fails and the router keeps the error for start-up. */
static void test_route_limit(void **state)
{
    (void)state;
    assert_int_equal(TK_ROUTER_MAX_ROUTES, TK_METRICS_MAX_ROUTES);
    tk_router_t *r = tk_router_new();
    tk_router_t *a = tk_router_new_shared(r);
    char pat[32], err[128];
    for (int i = 0; i < TK_ROUTER_MAX_ROUTES; i++) {
        snprintf(pat, sizeof(pat), "/r%d", i);
        assert_int_equal(tk_router_add(i % 2 ? a : r, "GET", pat, h_a), i);
    }
    assert_string_equal(tk_router_error(r), "");
    assert_int_equal(tk_router_add_err(a, "GET", "/one-more", h_a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than"));
    assert_non_null(strstr(tk_router_error(a), "GET /one-more"));
    /* an existing label still resolves to its id */
    assert_int_equal(tk_router_add(a, "GET", "/r0", h_a), 0);
    tk_router_free(r);
    tk_router_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals),      cmocka_unit_test(test_params),
        cmocka_unit_test(test_backtracking),  cmocka_unit_test(test_methods),
        cmocka_unit_test(test_explicit_head), cmocka_unit_test(test_bad_patterns),
        cmocka_unit_test(test_foreach),       cmocka_unit_test(test_ids_and_labels),
        cmocka_unit_test(test_route_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
