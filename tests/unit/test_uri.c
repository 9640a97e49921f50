/* test_uri.c: unit tests for percent-decoding and query-string lookup. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "http/uri.h"

static tk_str_t S(const char *c)
{
    tk_str_t s = {c, strlen(c)};
    return s;
}

static void test_decode_path(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } t[] = {
        {"/plain", TK_URI_OK, "/plain"},
        {"/a%20b", TK_URI_OK, "/a b"},
        {"/%41%42%43", TK_URI_OK, "/ABC"},
        {"/%e2%82%ac", TK_URI_OK, "/\xe2\x82\xac"},
        {"/%2F", TK_URI_OK, "//"},
        {"/a+b", TK_URI_OK, "/a+b"}, /* '+' is literal in a path */
        {"", TK_URI_OK, ""},
        {"/%", TK_URI_EINVAL, NULL},
        {"/%4", TK_URI_EINVAL, NULL},
        {"/%zz", TK_URI_EINVAL, NULL},
        {"/%4g", TK_URI_EINVAL, NULL},
        {"/%g4", TK_URI_EINVAL, NULL},
        {"/%00", TK_URI_EINVAL, NULL},
        {"/a%00b", TK_URI_EINVAL, NULL},
        {"/%%41", TK_URI_EINVAL, NULL},
        {"/%-1", TK_URI_EINVAL, NULL},
        {"/% 1", TK_URI_EINVAL, NULL},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char out[64];
        size_t n = 999;
        int rc = tk_uri_decode_path(S(t[i].in), out, sizeof(out), &n);
        if (rc != t[i].rc)
            fail_msg("decode_path('%s') = %d, want %d", t[i].in, rc, t[i].rc);
        if (rc == TK_URI_OK) {
            assert_int_equal(n, strlen(t[i].out));
            assert_string_equal(out, t[i].out);
        }
        assert_int_equal(tk_uri_validate(S(t[i].in)), rc);
    }
}

static void test_decode_query(void **state)
{
    (void)state;
    char out[32];
    size_t n;
    assert_int_equal(tk_uri_decode_query(S("a+b%2Bc"), out, sizeof(out), &n), TK_URI_OK);
    assert_string_equal(out, "a b+c");
    assert_int_equal(n, 5);
    assert_int_equal(tk_uri_decode_query(S("%7"), out, sizeof(out), &n), TK_URI_EINVAL);
    assert_int_equal(tk_uri_decode_query(S("x%00"), out, sizeof(out), &n), TK_URI_EINVAL);
    /* a raw NUL byte is refused too */
    assert_int_equal(tk_uri_decode_query((tk_str_t){"a\0b", 3}, out, sizeof(out), &n),
                     TK_URI_EINVAL);
    assert_int_equal(tk_uri_query_get((tk_str_t){"a\0=1", 4}, "a", out, sizeof(out), &n), -1);
}

static void test_decode_sizes(void **state)
{
    (void)state;
    char out[4];
    size_t n = 0;
    /* 3 bytes + NUL fits in 4; 4 bytes does not */
    assert_int_equal(tk_uri_decode_path(S("abc"), out, sizeof(out), &n), TK_URI_OK);
    assert_string_equal(out, "abc");
    assert_int_equal(tk_uri_decode_path(S("abcd"), out, sizeof(out), &n), TK_URI_ETOOLONG);
    assert_int_equal(tk_uri_decode_path(S("%61%62%63"), out, sizeof(out), &n), TK_URI_OK);
    assert_string_equal(out, "abc");
    /* an invalid escape after the buffer is full is still reported as invalid */
    assert_int_equal(tk_uri_decode_path(S("abcdef%zz"), out, sizeof(out), &n), TK_URI_EINVAL);
    assert_int_equal(tk_uri_decode_path(S("a"), out, 0, &n), TK_URI_ETOOLONG);

    /* in place */
    char buf[] = "/x%20y%21";
    assert_int_equal(tk_uri_decode_path((tk_str_t){buf, 9}, buf, sizeof(buf), &n), TK_URI_OK);
    assert_string_equal(buf, "/x y!");
    assert_int_equal(n, 5);
}

static void test_query_get(void **state)
{
    (void)state;
    char out[16];
    size_t n;
    tk_str_t q = S("a=1&b=hello+world&c=%41%42&empty=&flag&a=2&sp%20ace=x&plus+key=y");

    assert_int_equal(tk_uri_query_get(q, "a", out, sizeof(out), &n), 1);
    assert_string_equal(out, "1"); /* first occurrence wins */
    assert_int_equal(tk_uri_query_get(q, "b", out, sizeof(out), &n), 1);
    assert_string_equal(out, "hello world");
    assert_int_equal(n, 11);
    assert_int_equal(tk_uri_query_get(q, "c", out, sizeof(out), &n), 1);
    assert_string_equal(out, "AB");
    assert_int_equal(tk_uri_query_get(q, "empty", out, sizeof(out), &n), 1);
    assert_string_equal(out, "");
    assert_int_equal(n, 0);
    assert_int_equal(tk_uri_query_get(q, "flag", out, sizeof(out), &n), 1);
    assert_string_equal(out, "");
    assert_int_equal(tk_uri_query_get(q, "sp ace", out, sizeof(out), &n), 1);
    assert_string_equal(out, "x");
    assert_int_equal(tk_uri_query_get(q, "plus key", out, sizeof(out), &n), 1);
    assert_string_equal(out, "y");
    assert_int_equal(tk_uri_query_get(q, "missing", out, sizeof(out), &n), 0);
    assert_int_equal(tk_uri_query_get(q, "", out, sizeof(out), &n), 0);
    assert_int_equal(tk_uri_query_get(q, "fla", out, sizeof(out), &n), 0);
    assert_int_equal(tk_uri_query_get(q, "flagx", out, sizeof(out), &n), 0);

    /* invalid escapes */
    assert_int_equal(tk_uri_query_get(S("a=%zz"), "a", out, sizeof(out), &n), -1);
    assert_int_equal(tk_uri_query_get(S("a=%4"), "a", out, sizeof(out), &n), -1);
    assert_int_equal(tk_uri_query_get(S("a=%00"), "a", out, sizeof(out), &n), -1);
    assert_int_equal(tk_uri_query_get(S("x%zz=1&a=2"), "a", out, sizeof(out), &n), -1);
    assert_int_equal(tk_uri_query_get(S("%zz=1&a=2"), "a", out, sizeof(out), &n), -1);
    /* an invalid value after the match is not looked at */
    assert_int_equal(tk_uri_query_get(S("a=2&b=%zz"), "a", out, sizeof(out), &n), 1);
    assert_int_equal(tk_uri_validate(S("a=2&b=%zz")), TK_URI_EINVAL);

    /* too long */
    assert_int_equal(tk_uri_query_get(S("a=0123456789abcdef"), "a", out, sizeof(out), &n), -2);
    /* absent and empty query strings */
    assert_int_equal(tk_uri_query_get((tk_str_t){NULL, 0}, "a", out, sizeof(out), &n), 0);
    assert_int_equal(tk_uri_query_get(S(""), "a", out, sizeof(out), &n), 0);
    /* encoded key */
    assert_int_equal(tk_uri_query_get(S("%71ueries=5"), "queries", out, sizeof(out), &n), 1);
    assert_string_equal(out, "5");
}

static void test_query_next(void **state)
{
    (void)state;
    tk_str_t rest = S("&&a=1&&b&=x&c=d=e&"), k, v;
    const char *want[][2] = {{"a", "1"}, {"b", ""}, {"", "x"}, {"c", "d=e"}};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(tk_uri_query_next(&rest, &k, &v), 1);
        assert_int_equal(k.len, strlen(want[i][0]));
        assert_memory_equal(k.p, want[i][0], k.len);
        assert_int_equal(v.len, strlen(want[i][1]));
        assert_memory_equal(v.p, want[i][1], v.len);
    }
    assert_int_equal(tk_uri_query_next(&rest, &k, &v), 0);
    assert_int_equal(tk_uri_query_next(&rest, &k, &v), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_path),  cmocka_unit_test(test_decode_query),
        cmocka_unit_test(test_decode_sizes), cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_query_next),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
