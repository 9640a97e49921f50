/* test_http_parser.c: unit tests for the strict HTTP/1.1 request parser and chunked decoder. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>

#include "http/http_parser.h"
#include "http/str.h"

/* A raw request with its exact length (some contain NUL bytes). */
#define R(s) s, sizeof(s) - 1

/* ---------------------------------------------------------------------------------
 * Malformed, ambiguous and smuggling requests, each with the status tenk must
 * answer. Written from RFC 9112 / 9110 and the classes of bugs that request
 * smuggling write-ups describe (CL.TE, TE.CL, TE.TE obfuscation, bare LF/CR,
 * obs-fold, whitespace before the colon, chunk-size tricks).
 * --------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    const char *raw;
    size_t len;
    int status;
} bad_case_t;

#define H11 "GET / HTTP/1.1\r\nHost: a\r\n"
#define P11 "POST / HTTP/1.1\r\nHost: a\r\n"

static const bad_case_t bad_cases[] = {
    /* Content-Length / Transfer-Encoding ambiguity */
    {"CL then TE", R(P11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400},
    {"TE then CL", R(P11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), 400},
    {"CL + TE identity", R(P11 "Content-Length: 1\r\nTransfer-Encoding: identity\r\n\r\n"), 400},
    {"duplicate CL equal", R(P11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), 400},
    {"duplicate CL differ", R(P11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"), 400},
    {"duplicate CL case", R(P11 "content-length: 1\r\nCONTENT-LENGTH: 1\r\n\r\n"), 400},
    {"CL list", R(P11 "Content-Length: 5, 5\r\n\r\n"), 400},
    {"CL plus sign", R(P11 "Content-Length: +5\r\n\r\n"), 400},
    {"CL negative", R(P11 "Content-Length: -1\r\n\r\n"), 400},
    {"CL inner space", R(P11 "Content-Length: 5 5\r\n\r\n"), 400},
    {"CL hex", R(P11 "Content-Length: 0x5\r\n\r\n"), 400},
    {"CL empty", R(P11 "Content-Length:\r\n\r\n"), 400},
    {"CL overflow", R(P11 "Content-Length: 99999999999999999999\r\n\r\n"), 400},
    {"CL 2^63", R(P11 "Content-Length: 9223372036854775808\r\n\r\n"), 400},
    {"CL decimal", R(P11 "Content-Length: 5.0\r\n\r\n"), 400},
    {"CL with VT", R(P11 "Content-Length: 5\x0b\r\n\r\n"), 400},
    {"TE gzip only", R(P11 "Transfer-Encoding: gzip\r\n\r\n"), 400},
    {"TE chunked not last", R(P11 "Transfer-Encoding: chunked, gzip\r\n\r\n"), 400},
    {"TE gzip then chunked", R(P11 "Transfer-Encoding: gzip, chunked\r\n\r\n"), 501},
    {"TE unknown then chunked", R(P11 "Transfer-Encoding: foo, chunked\r\n\r\n"), 501},
    {"TE chunked twice", R(P11 "Transfer-Encoding: chunked, chunked\r\n\r\n"), 400},
    {"TE chunked two fields",
     R(P11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400},
    {"TE second field gzip", R(P11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
     400},
    {"TE identity", R(P11 "Transfer-Encoding: identity\r\n\r\n"), 400},
    {"TE xchunked", R(P11 "Transfer-Encoding: xchunked\r\n\r\n"), 400},
    {"TE chunked-x", R(P11 "Transfer-Encoding: chunked-x\r\n\r\n"), 400},
    {"TE chunked params", R(P11 "Transfer-Encoding: chunked;q=1\r\n\r\n"), 400},
    {"TE empty element first", R(P11 "Transfer-Encoding: , chunked\r\n\r\n"), 400},
    {"TE empty element last", R(P11 "Transfer-Encoding: chunked,\r\n\r\n"), 400},
    {"TE empty value", R(P11 "Transfer-Encoding:\r\n\r\n"), 400},
    {"TE split token", R(P11 "Transfer-Encoding: chu nked\r\n\r\n"), 400},
    {"TE quoted", R(P11 "Transfer-Encoding: \"chunked\"\r\n\r\n"), 400},
    {"TE with VT", R(P11 "Transfer-Encoding: chunked\x0b\r\n\r\n"), 400},
    {"TE with NUL", R(P11 "Transfer-Encoding: chunked\0\r\n\r\n"), 400},
    {"TE on HTTP/1.0", R("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400},
    /* field syntax */
    {"space before colon TE", R(P11 "Transfer-Encoding : chunked\r\n\r\n"), 400},
    {"space before colon CL", R(P11 "Content-Length : 5\r\n\r\n"), 400},
    {"tab before colon", R(P11 "Transfer-Encoding\t: chunked\r\n\r\n"), 400},
    {"obs-fold space", R(H11 "X-A: b\r\n c\r\n\r\n"), 400},
    {"obs-fold tab", R(H11 "X-A: b\r\n\tc\r\n\r\n"), 400},
    {"obs-fold TE", R(P11 "Transfer-Encoding: gzip,\r\n chunked\r\n\r\n"), 400},
    {"obs-fold first field", R("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400},
    {"no colon", R(H11 "Foo\r\n\r\n"), 400},
    {"space in name", R(H11 "Foo Bar: x\r\n\r\n"), 400},
    {"empty name", R(H11 ": x\r\n\r\n"), 400},
    {"only colon", R(H11 ":\r\n\r\n"), 400},
    {"paren in name", R(H11 "Foo(bar): x\r\n\r\n"), 400},
    {"NUL in name", R(H11 "Fo\0o: x\r\n\r\n"), 400},
    {"NUL line", R(H11 "\0\r\n\r\n"), 400},
    {"non-ASCII name", R(H11 "F\xc3\xa9: x\r\n\r\n"), 400},
    {"NUL in value", R(H11 "X: a\0b\r\n\r\n"), 400},
    {"bare CR in value", R(H11 "X: a\rb\r\n\r\n"), 400},
    {"CR before CRLF", R(H11 "X: a\r\r\n\r\n"), 400},
    {"DEL in value", R(H11 "X: a\x7f\r\n\r\n"), 400},
    {"SOH in value", R(H11 "X: a\x01\r\n\r\n"), 400},
    {"ESC in value", R(H11 "X: \x1b[0m\r\n\r\n"), 400},
    /* line endings */
    {"bare LF everywhere", R("GET / HTTP/1.1\nHost: a\n\n"), 400},
    {"bare LF request line", R("GET / HTTP/1.1\nHost: a\r\n\r\n"), 400},
    {"bare LF in field", R("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"), 400},
    {"bare LF terminator", R(H11 "\n"), 400},
    {"LF LF terminator", R("GET / HTTP/1.1\r\nHost: a\n\r\n"), 400},
    {"bare CR line end", R("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400},
    {"bare CR terminator", R(H11 "\r\r\n\r\n"), 400},
    {"leading LF", R("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"too many empty lines",
     R("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n" H11 "\r\n"), 400},
    /* Host */
    {"missing Host", R("GET / HTTP/1.1\r\nX: y\r\n\r\n"), 400},
    {"missing Host abs-form", R("GET http://a/ HTTP/1.1\r\n\r\n"), 400},
    {"duplicate Host", R(H11 "Host: b\r\n\r\n"), 400},
    {"duplicate Host case", R("GET / HTTP/1.1\r\nhost: a\r\nHOST: a\r\n\r\n"), 400},
    {"Host with space", R("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400},
    {"Host with slash", R("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400},
    {"Host with userinfo", R("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400},
    {"Host with comma", R("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), 400},
    /* request line */
    {"method paren", R("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method slash", R("GET/ / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method NUL", R("G\0ET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"empty method", R(" / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"leading space", R(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"double space after method", R("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"double space before version", R("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"trailing space", R("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400},
    {"tab separator", R("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"missing version", R("GET /\r\nHost: a\r\n\r\n"), 400},
    {"missing target", R("GET HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"method only", R("GET\r\n\r\n"), 400},
    {"version junk", R("GET / HTTP/1.1x\r\nHost: a\r\n\r\n"), 400},
    {"version lowercase", R("GET / http/1.1\r\nHost: a\r\n\r\n"), 400},
    {"version no minor", R("GET / HTTP/1\r\nHost: a\r\n\r\n"), 400},
    {"version two digits", R("GET / HTTP/11.1\r\nHost: a\r\n\r\n"), 400},
    {"version minor two digits", R("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 400},
    {"version 2.0", R("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505},
    {"version 0.9", R("GET / HTTP/0.9\r\nHost: a\r\n\r\n"), 505},
    {"version 3.1", R("GET / HTTP/3.1\r\nHost: a\r\n\r\n"), 505},
    /* request target */
    {"asterisk with GET", R("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"asterisk with suffix", R("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"authority-form", R("CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"relative target", R("GET example.com/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"ftp scheme", R("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"userinfo", R("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"bad authority", R("GET http://a\"b/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"empty authority", R("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"scheme without slashes", R("GET http:a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"fragment", R("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"non-ASCII target", R("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"DEL in target", R("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    {"NUL in target", R("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"), 400},
    /* Expect */
    {"Expect other", R(P11 "Expect: foo\r\n\r\n"), 417},
    {"Expect list", R(P11 "Expect: 100-continue, foo\r\n\r\n"), 417},
    {"Expect 1.0 other", R("POST / HTTP/1.0\r\nExpect: 200-ok\r\n\r\n"), 417},
    /* limits (default: 8 KiB target, 8 KiB header section, 100 fields, 1 MiB body) */
    {"body over limit", R(P11 "Content-Length: 1048577\r\n\r\n"), 413},
};

/* ---------------------------------------------------------------------------------
 * Valid requests and the fields the parser must report.
 * --------------------------------------------------------------------------------- */
#define NOQ ((const char *)1) /* "no query string" (query.p == NULL) */

typedef struct {
    const char *name;
    const char *raw;
    size_t len;
    size_t trailing; /* bytes after the head (body, next request) */
    const char *method;
    tk_http_method_t method_id;
    const char *path;
    const char *query; /* NOQ: absent */
    int minor;
    int nheaders;
    int64_t content_length;
    int chunked, keep_alive, conn_close, expect;
    const char *host; /* NULL: absent */
    const char *accept_encoding;
    const char *content_type;
} good_case_t;

static const good_case_t good_cases[] = {
    {"simple GET", R("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/",
     NOQ, 1, 1, -1, 0, 1, 0, 0, "example.com", NULL, NULL},
    {"query", R("GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/a/b",
     "x=1&y=%20", 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"empty query", R("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/a", "", 1, 1,
     -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"POST with body", R("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), 5,
     "POST", TK_HTTP_POST, "/u", NOQ, 1, 2, 5, 0, 1, 0, 0, "a", NULL, NULL},
    {"chunked",
     R("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
     15, "POST", TK_HTTP_POST, "/", NOQ, 1, 2, -1, 1, 1, 0, 0, "a", NULL, NULL},
    {"chunked mixed case OWS",
     R("PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:   ChUnKeD  \r\n\r\n"), 0, "PUT",
     TK_HTTP_PUT, "/x", NOQ, 1, 2, -1, 1, 1, 0, 0, "a", NULL, NULL},
    {"HTTP/1.0 no Host", R("GET /x HTTP/1.0\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/x", NOQ, 0, 0, -1,
     0, 0, 0, 0, NULL, NULL, NULL},
    {"HTTP/1.0 keep-alive", R("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/", NOQ, 0, 1, -1, 0, 1, 0, 0, NULL, NULL, NULL},
    {"HTTP/1.0 keep-alive + close", R("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), 0,
     "GET", TK_HTTP_GET, "/", NOQ, 0, 1, -1, 0, 0, 1, 0, NULL, NULL, NULL},
    {"Connection close", R("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/", NOQ, 1, 2, -1, 0, 0, 1, 0, "a", NULL, NULL},
    {"Connection list close",
     R("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\nUpgrade: x\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/", NOQ, 1, 3, -1, 0, 0, 1, 0, "a", NULL, NULL},
    {"HTTP/1.2 as 1.1", R("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/", NOQ, 1,
     1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"HTTP/1.9 as 1.1", R("HEAD / HTTP/1.9\r\nHost: a\r\n\r\n"), 0, "HEAD", TK_HTTP_HEAD, "/", NOQ,
     1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"absolute-form", R("GET http://example.com:8080/p/q?z=1 HTTP/1.1\r\nHost: other\r\n\r\n"), 0,
     "GET", TK_HTTP_GET, "/p/q", "z=1", 1, 1, -1, 0, 1, 0, 0, "example.com:8080", NULL, NULL},
    {"absolute-form no path", R("GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0,
     "GET", TK_HTTP_GET, "/", NOQ, 1, 1, -1, 0, 1, 0, 0, "example.com", NULL, NULL},
    {"absolute-form query only", R("GET http://e?a=b HTTP/1.1\r\nHost: e\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/", "a=b", 1, 1, -1, 0, 1, 0, 0, "e", NULL, NULL},
    {"OPTIONS *", R("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "OPTIONS", TK_HTTP_OPTIONS, "*",
     NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"Expect 100-continue",
     R("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"), 0,
     "POST", TK_HTTP_POST, "/", NOQ, 1, 3, 3, 0, 1, 0, 1, "a", NULL, NULL},
    {"Expect 100-continue on 1.0",
     R("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), 0, "POST",
     TK_HTTP_POST, "/", NOQ, 0, 2, 3, 0, 0, 0, 0, NULL, NULL, NULL},
    {"leading CRLF", R("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/",
     NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"OWS around values", R("GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v  w \t\r\nX-B:\r\n\r\n"), 0,
     "GET", TK_HTTP_GET, "/", NOQ, 1, 3, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"obs-text in value", R("GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/", NOQ, 1, 2, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"accept-encoding content-type",
     R("POST /j HTTP/1.1\r\nhost: a\r\naccept-encoding: gzip, br\r\nACCEPT-ENCODING: x\r\n"
       "Content-Type: application/json\r\nContent-Length: 0\r\n\r\n"),
     0, "POST", TK_HTTP_POST, "/j", NOQ, 1, 5, 0, 0, 1, 0, 0, "a", "gzip, br", "application/json"},
    {"lowercase method", R("get / HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "get", TK_HTTP_OTHER, "/", NOQ,
     1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"custom method", R("PURGE /c HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "PURGE", TK_HTTP_OTHER, "/c",
     NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"DELETE", R("DELETE /users/7 HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "DELETE", TK_HTTP_DELETE,
     "/users/7", NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"PATCH", R("PATCH /p HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n"), 0, "PATCH",
     TK_HTTP_PATCH, "/p", NOQ, 1, 2, 0, 0, 1, 0, 0, "a", NULL, NULL},
    {"CL leading zeros", R("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n"), 0, "POST",
     TK_HTTP_POST, "/", NOQ, 1, 2, 7, 0, 1, 0, 0, "a", NULL, NULL},
    {"CL at body limit", R("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n"), 0,
     "POST", TK_HTTP_POST, "/", NOQ, 1, 2, 1048576, 0, 1, 0, 0, "a", NULL, NULL},
    {"empty Host", R("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/", NOQ, 1, 1, -1,
     0, 1, 0, 0, "", NULL, NULL},
    {"IPv6 Host", R("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0, "GET", TK_HTTP_GET, "/", NOQ,
     1, 1, -1, 0, 1, 0, 0, "[::1]:8080", NULL, NULL},
    {"pipelined", R("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"), 28,
     "GET", TK_HTTP_GET, "/1", NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"sub-delims target", R("GET /a;b=c/d%2Fe!$&'()*+,:@~ HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "GET",
     TK_HTTP_GET, "/a;b=c/d%2Fe!$&'()*+,:@~", NOQ, 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
    {"query with ? and /", R("GET /s?q=a/b?c HTTP/1.1\r\nHost: a\r\n\r\n"), 0, "GET", TK_HTTP_GET,
     "/s", "q=a/b?c", 1, 1, -1, 0, 1, 0, 0, "a", NULL, NULL},
};

static int parse_str(const tk_http_limits_t *lim, const char *s, size_t n, tk_http_request_t *req,
                     tk_http_error_t *err)
{
    tk_http_scan_t sc = {0};
    return tk_http_parse_head(lim, s, n, &sc, req, err);
}

static void assert_str(tk_str_t s, const char *want, const char *what, const char *name)
{
    if (want == NULL) {
        if (s.p != NULL)
            fail_msg("%s: %s should be absent, got '%.*s'", name, what, (int)s.len, s.p);
        return;
    }
    if (s.p == NULL || s.len != strlen(want) || memcmp(s.p, want, s.len) != 0)
        fail_msg("%s: %s: want '%s', got '%.*s'", name, what, want, s.p ? (int)s.len : 6,
                 s.p ? s.p : "(null)");
}

static void check_good(const good_case_t *c, int rc, const tk_http_request_t *req,
                       const tk_http_error_t *err)
{
    size_t hl = c->len - c->trailing;
    if (rc != (int)hl)
        fail_msg("%s: rc %d, want %zu (err %d %s)", c->name, rc, hl, rc < 0 ? err->status : 0,
                 rc < 0 ? err->msg : "");
    assert_str(req->method, c->method, "method", c->name);
    assert_int_equal(req->method_id, c->method_id);
    assert_str(req->path, c->path, "path", c->name);
    assert_str(req->query, c->query == NOQ ? NULL : c->query, "query", c->name);
    assert_int_equal(req->version_minor, c->minor);
    assert_int_equal(req->nheaders, c->nheaders);
    assert_int_equal(req->content_length, c->content_length);
    assert_int_equal(req->chunked, c->chunked);
    assert_int_equal(req->keep_alive, c->keep_alive);
    assert_int_equal(req->conn_close, c->conn_close);
    assert_int_equal(req->expect_continue, c->expect);
    assert_str(req->host, c->host, "host", c->name);
    assert_str(req->accept_encoding, c->accept_encoding, "accept_encoding", c->name);
    assert_str(req->content_type, c->content_type, "content_type", c->name);
}

#define NGOOD (sizeof(good_cases) / sizeof(good_cases[0]))
#define NBAD  (sizeof(bad_cases) / sizeof(bad_cases[0]))

static void test_bad_table(void **state)
{
    (void)state;
    assert_true(NBAD >= 60);
    for (size_t i = 0; i < NBAD; i++) {
        const bad_case_t *c = &bad_cases[i];
        tk_http_request_t req;
        tk_http_error_t err = {0, NULL};
        int rc = parse_str(NULL, c->raw, c->len, &req, &err);
        if (rc != -1 || err.status != c->status)
            fail_msg("bad case '%s': rc %d status %d (%s), want status %d", c->name, rc, err.status,
                     err.msg ? err.msg : "", c->status);
        assert_non_null(err.msg);
        assert_true(strlen(err.msg) > 0 && strlen(err.msg) < 64);
        /* the message goes into a JSON string unescaped */
        assert_null(strpbrk(err.msg, "\"\\"));
    }
}

static void test_good_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < NGOOD; i++) {
        const good_case_t *c = &good_cases[i];
        tk_http_request_t req;
        tk_http_error_t err = {0, NULL};
        int rc = parse_str(NULL, c->raw, c->len, &req, &err);
        check_good(c, rc, &req, &err);
    }
}

/* Feed a growing prefix, each time in a freshly allocated buffer of exactly
 * that size (so ASan sees any read past it, and so the parser cannot keep
 * pointers between calls), resuming with the same scan state. The result must
 * equal the one-piece parse: same return, same status, same fields. */
static int parse_bytewise(const tk_http_limits_t *lim, const char *raw, size_t len,
                          tk_http_request_t *req, tk_http_error_t *err, char **keep)
{
    tk_http_scan_t sc = {0};
    int rc = 0;
    for (size_t n = 1; n <= len; n++) {
        char *b = malloc(n);
        assert_non_null(b);
        memcpy(b, raw, n);
        rc = tk_http_parse_head(lim, b, n, &sc, req, err);
        if (rc != 0) {
            *keep = b;
            return rc;
        }
        free(b);
    }
    *keep = NULL;
    return rc;
}

static void test_bytewise_good(void **state)
{
    (void)state;
    for (size_t i = 0; i < NGOOD; i++) {
        const good_case_t *c = &good_cases[i];
        tk_http_request_t req;
        tk_http_error_t err = {0, NULL};
        char *keep;
        int rc = parse_bytewise(NULL, c->raw, c->len, &req, &err, &keep);
        check_good(c, rc, &req, &err);
        free(keep);
    }
}

static void test_bytewise_bad(void **state)
{
    (void)state;
    for (size_t i = 0; i < NBAD; i++) {
        const bad_case_t *c = &bad_cases[i];
        tk_http_request_t req;
        tk_http_error_t err = {0, NULL};
        char *keep;
        int rc = parse_bytewise(NULL, c->raw, c->len, &req, &err, &keep);
        if (rc != -1 || err.status != c->status)
            fail_msg("bytewise bad '%s': rc %d status %d, want %d", c->name, rc, err.status,
                     c->status);
        free(keep);
    }
}

/* Splits in two pieces at every position also agree (the resume path with a
 * scan state that stopped mid-line). */
static void test_two_piece_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < NGOOD; i++) {
        const good_case_t *c = &good_cases[i];
        for (size_t k = 1; k < c->len; k++) {
            tk_http_request_t req;
            tk_http_error_t err = {0, NULL};
            tk_http_scan_t sc = {0};
            int rc = tk_http_parse_head(NULL, c->raw, k, &sc, &req, &err);
            if (rc == 0)
                rc = tk_http_parse_head(NULL, c->raw, c->len, &sc, &req, &err);
            check_good(c, rc, &req, &err);
        }
    }
}

static void test_header_get_and_values(void **state)
{
    (void)state;
    static const char raw[] =
        "GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v  w \t\r\nX-B:\r\nx-a: 2\r\n\r\n";
    tk_http_request_t req;
    tk_http_error_t err;
    assert_int_equal(parse_str(NULL, raw, sizeof(raw) - 1, &req, &err), (int)sizeof(raw) - 1);
    assert_str(tk_http_header_get(&req, "x-a"), "v  w", "X-A", "header_get");
    assert_str(tk_http_header_get(&req, "X-B"), "", "X-B", "header_get");
    assert_null(tk_http_header_get(&req, "X-C").p);
    assert_str(req.headers[3].name, "x-a", "name", "header order");
    assert_str(req.headers[3].value, "2", "value", "header order");
    /* slices point into the buffer: zero-copy */
    assert_true(req.path.p > raw && req.path.p < raw + sizeof(raw));
}

/* Every byte value at every position of a long value (the value check works
 * eight bytes at a time): only CTLs other than HTAB, and DEL, are refused. */
static void test_value_bytes(void **state)
{
    (void)state;
    static const char pre[] = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
    char raw[128];
    for (int c = 0; c < 256; c++) {
        int ok = c == '\t' || (c >= 0x20 && c != 0x7f);
        for (size_t pos = 0; pos < 24; pos++) {
            size_t n = sizeof(pre) - 1;
            memcpy(raw, pre, n);
            for (size_t k = 0; k < 24; k++)
                raw[n + k] = k == pos ? (char)c : 'v';
            n += 24;
            memcpy(raw + n, "\r\n\r\n", 4);
            n += 4;
            tk_http_request_t req;
            tk_http_error_t err;
            int rc = parse_str(NULL, raw, n, &req, &err);
            if (c == '\n') {
                assert_int_equal(rc, -1); /* a bare LF */
                continue;
            }
            if (ok && rc != (int)n)
                fail_msg("byte 0x%02x at %zu refused: %s", c, pos, err.msg);
            if (!ok && (rc != -1 || err.status != 400))
                fail_msg("byte 0x%02x at %zu accepted", c, pos);
        }
    }
}

/* --- limits ---------------------------------------------------------------------- */

static char *make_request(size_t target_len, int nfields, size_t field_len, int terminate,
                          size_t *outlen)
{
    size_t cap = target_len + (size_t)nfields * (field_len + 16) + 128;
    char *b = malloc(cap);
    size_t n = 0;
    assert_non_null(b);
    n += (size_t)sprintf(b, "GET /");
    memset(b + n, 'a', target_len - 1);
    n += target_len - 1;
    n += (size_t)sprintf(b + n, " HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < nfields; i++) {
        n += (size_t)sprintf(b + n, "X-%d: ", i);
        memset(b + n, 'v', field_len);
        n += field_len;
        b[n++] = '\r';
        b[n++] = '\n';
    }
    if (terminate) {
        b[n++] = '\r';
        b[n++] = '\n';
    }
    *outlen = n;
    return b;
}

static void test_limits(void **state)
{
    (void)state;
    tk_http_request_t req;
    tk_http_error_t err;
    size_t n;
    char *b;

    /* target exactly 8192: fine; 8193: 414 */
    b = make_request(8192, 0, 0, 1, &n);
    assert_int_equal(parse_str(NULL, b, n, &req, &err), (int)n);
    assert_int_equal(req.path.len, 8192);
    free(b);
    b = make_request(8193, 0, 0, 1, &n);
    assert_int_equal(parse_str(NULL, b, n, &req, &err), -1);
    assert_int_equal(err.status, 414);
    free(b);

    /* 100 fields (Host + 99): fine; 101: 431 */
    b = make_request(1, 99, 4, 1, &n);
    assert_int_equal(parse_str(NULL, b, n, &req, &err), (int)n);
    assert_int_equal(req.nheaders, 100);
    free(b);
    b = make_request(1, 100, 4, 1, &n);
    assert_int_equal(parse_str(NULL, b, n, &req, &err), -1);
    assert_int_equal(err.status, 431);
    free(b);

    /* configured smaller limits */
    tk_http_limits_t lim = {
        .max_request_line = 16, .max_header_size = 64, .max_headers = 3, .max_body_size = 10};
    b = make_request(16, 0, 0, 1, &n);
    assert_int_equal(parse_str(&lim, b, n, &req, &err), (int)n);
    free(b);
    b = make_request(17, 0, 0, 1, &n);
    assert_int_equal(parse_str(&lim, b, n, &req, &err), -1);
    assert_int_equal(err.status, 414);
    free(b);
    b = make_request(1, 2, 4, 1, &n); /* 3 fields */
    assert_int_equal(parse_str(&lim, b, n, &req, &err), (int)n);
    free(b);
    b = make_request(1, 3, 4, 1, &n); /* 4 fields */
    assert_int_equal(parse_str(&lim, b, n, &req, &err), -1);
    assert_int_equal(err.status, 431);
    free(b);
    b = make_request(1, 1, 60, 1, &n); /* header section > 64 bytes */
    assert_int_equal(parse_str(&lim, b, n, &req, &err), -1);
    assert_int_equal(err.status, 431);
    free(b);
    static const char body11[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
    assert_int_equal(parse_str(&lim, body11, sizeof(body11) - 1, &req, &err), -1);
    assert_int_equal(err.status, 413);

    /* header section exactly at the limit: "Host: a\r\n" (9) + field + CRLF */
    lim.max_headers = 10;
    for (size_t fl = 40; fl < 50; fl++) {
        b = make_request(1, 1, fl, 1, &n);
        size_t section = n - (sizeof("GET / HTTP/1.1\r\n") - 1);
        int rc = parse_str(&lim, b, n, &req, &err);
        if (section <= 64)
            assert_int_equal(rc, (int)n);
        else
            assert_true(rc == -1 && err.status == 431);
        /* and the same answer byte by byte */
        char *keep;
        int rc2 = parse_bytewise(&lim, b, n, &req, &err, &keep);
        assert_int_equal(rc, rc2);
        free(keep);
        free(b);
    }
}

/* A client must not be able to send 1 MB of header without a blank line: the
 * limits fire on the incomplete head, as soon as it is too long. */
static void test_limits_incomplete(void **state)
{
    (void)state;
    tk_http_request_t req;
    tk_http_error_t err;
    tk_http_scan_t sc = {0};
    size_t n;
    char *b = make_request(1, 2000, 500, 0, &n); /* ~1 MB of fields, no blank line */
    int rc = 0;
    size_t fed;
    for (fed = 512; fed <= n; fed += 512) {
        rc = tk_http_parse_head(NULL, b, fed, &sc, &req, &err);
        if (rc != 0)
            break;
    }
    assert_int_equal(rc, -1);
    assert_int_equal(err.status, 431);
    assert_true(fed <= 8192 + 1024);
    free(b);

    /* request line without an end */
    memset(&sc, 0, sizeof(sc));
    b = malloc(20000);
    memcpy(b, "GET /", 5);
    memset(b + 5, 'a', 20000 - 5);
    for (fed = 100; fed <= 20000; fed += 100) {
        rc = tk_http_parse_head(NULL, b, fed, &sc, &req, &err);
        if (rc != 0)
            break;
    }
    assert_int_equal(rc, -1);
    assert_int_equal(err.status, 414);
    assert_true(fed <= 8192 + TK_HTTP_REQLINE_SLACK + 100);
    free(b);

    /* incomplete but within limits: 0, and the scan advanced */
    static const char part[] = "GET / HTTP/1.1\r\nHost: a\r\nX: y";
    memset(&sc, 0, sizeof(sc));
    assert_int_equal(tk_http_parse_head(NULL, part, sizeof(part) - 1, &sc, &req, &err), 0);
    assert_int_equal(sc.pos, sizeof(part) - 1);
}

/* --- chunked decoder --------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *raw;
    size_t len;
    int rc;              /* 1 or -1 (0: incomplete) */
    int status;          /* for -1 */
    const char *payload; /* for 1 */
    size_t consumed;     /* for 1: 0 = all */
} chunk_case_t;

static const chunk_case_t chunk_cases[] = {
    {"one chunk", R("5\r\nhello\r\n0\r\n\r\n"), 1, 0, "hello", 0},
    {"two chunks", R("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), 1, 0, "hello world", 0},
    {"uppercase hex", R("A\r\n0123456789\r\n0\r\n\r\n"), 1, 0, "0123456789", 0},
    {"lowercase hex", R("a\r\n0123456789\r\n0\r\n\r\n"), 1, 0, "0123456789", 0},
    {"leading zeros", R("0005\r\nhello\r\n000\r\n\r\n"), 1, 0, "hello", 0},
    {"empty body", R("0\r\n\r\n"), 1, 0, "", 0},
    {"extension", R("5;name=value\r\nhello\r\n0;x\r\n\r\n"), 1, 0, "hello", 0},
    {"extension BWS", R("5 ;a=\"q s\"\r\nhello\r\n0\r\n\r\n"), 1, 0, "hello", 0},
    {"trailers", R("5\r\nhello\r\n0\r\nX-T: 1\r\nY:\r\n\r\n"), 1, 0, "hello", 0},
    {"payload with CRLF", R("4\r\n\r\n\r\n\r\n0\r\n\r\n"), 1, 0, "\r\n\r\n", 0},
    {"next request after", R("1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 1, 0, "x", 16},
    {"incomplete", R("5\r\nhel"), 0, 0, NULL, 0},
    {"0x prefix", R("0x5\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"plus sign", R("+5\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"minus sign", R("-5\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"leading space", R(" 5\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"trailing space no ext", R("5 \r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"not hex", R("g\r\n"), -1, 400, NULL, 0},
    {"empty size", R("\r\nhello\r\n"), -1, 400, NULL, 0},
    {"overflow 2^63", R("8000000000000000\r\n"), -1, 400, NULL, 0},
    {"overflow 17 digits", R("10000000000000000\r\n"), -1, 400, NULL, 0},
    {"huge but 63 bits: 413", R("7fffffffffffffff\r\n"), -1, 413, NULL, 0},
    {"bare LF after size", R("5\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"bare CR after size", R("5\rhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"data too long", R("5\r\nhelloX\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"bare LF after data", R("5\r\nhello\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"CTL in extension", R("5;a\x01\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"bare CR in extension", R("5;a\rb\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"NUL in extension", R("5;a\0\r\nhello\r\n0\r\n\r\n"), -1, 400, NULL, 0},
    {"trailer obs-fold", R("0\r\nX: 1\r\n 2\r\n\r\n"), -1, 400, NULL, 0},
    {"trailer no colon", R("0\r\nXY\r\n\r\n"), -1, 400, NULL, 0},
    {"trailer bare LF", R("0\r\nX: 1\n\r\n"), -1, 400, NULL, 0},
    {"trailer CTL", R("0\r\nX: \x01\r\n\r\n"), -1, 400, NULL, 0},
    {"final bare LF", R("0\r\n\n"), -1, 400, NULL, 0},
    {"final CR junk", R("0\r\n\rX"), -1, 400, NULL, 0},
    {"over max_body", R("401\r\n"), -1, 413, NULL, 0},
};

#define CHUNK_MAX_BODY 1024

/* Decode raw in pieces: the cut positions in cuts[] (ascending). Simulates the
 * connection layer: payload so far at the front, new raw bytes appended right
 * after it. Returns rc; *out gets the payload, *consumed the raw bytes used. */
static int chunk_feed(const char *raw, size_t len, const size_t *cuts, int ncuts, char *out,
                      size_t *outlen, size_t *consumed_total, tk_http_error_t *err)
{
    tk_http_chunked_t d;
    char *buf = malloc(len + 1);
    size_t have = 0; /* payload bytes at the front of buf */
    size_t fed = 0;
    int rc = 0;
    assert_non_null(buf);
    tk_http_chunked_init(&d);
    for (int ci = 0; ci <= ncuts && rc == 0; ci++) {
        size_t upto = ci < ncuts ? cuts[ci] : len;
        if (upto <= fed)
            continue;
        memcpy(buf + have, raw + fed, upto - fed);
        size_t consumed, produced;
        rc = tk_http_chunked_decode(&d, buf + have, upto - fed, &consumed, &produced,
                                    CHUNK_MAX_BODY);
        assert_true(produced <= consumed);
        if (rc == 0)
            assert_int_equal(consumed, upto - fed);
        have += produced;
        fed += consumed;
    }
    memcpy(out, buf, have);
    *outlen = have;
    *consumed_total = fed;
    *err = d.err;
    free(buf);
    return rc;
}

static void check_chunk_case(const chunk_case_t *c, const size_t *cuts, int ncuts)
{
    char out[4096];
    size_t outlen, consumed;
    tk_http_error_t err;
    int rc = chunk_feed(c->raw, c->len, cuts, ncuts, out, &outlen, &consumed, &err);
    if (rc != c->rc)
        fail_msg("chunk '%s' (cuts %d, first %zu): rc %d want %d (%d %s)", c->name, ncuts,
                 ncuts ? cuts[0] : 0, rc, c->rc, err.status, err.msg ? err.msg : "");
    if (rc == -1)
        assert_int_equal(err.status, c->status);
    if (rc == 1) {
        assert_int_equal(outlen, strlen(c->payload));
        assert_memory_equal(out, c->payload, outlen);
        assert_int_equal(consumed, c->len - c->consumed);
    }
}

static void test_chunked_table(void **state)
{
    (void)state;
    size_t n = sizeof(chunk_cases) / sizeof(chunk_cases[0]);
    for (size_t i = 0; i < n; i++) {
        const chunk_case_t *c = &chunk_cases[i];
        check_chunk_case(c, NULL, 0);
        /* split in two at every byte */
        for (size_t k = 1; k < c->len; k++)
            check_chunk_case(c, &k, 1);
        /* byte by byte */
        size_t cuts[256];
        assert_true(c->len < 256);
        for (size_t k = 0; k < c->len; k++)
            cuts[k] = k + 1;
        check_chunk_case(c, cuts, (int)c->len);
    }
}

static void test_chunked_sum_limit(void **state)
{
    (void)state;
    /* 0x200 + 0x200 = 1024 is fine, one more byte is 413 */
    char raw[3000];
    size_t n = 0;
    for (int k = 0; k < 2; k++) {
        n += (size_t)sprintf(raw + n, "200\r\n");
        memset(raw + n, 'z', 0x200);
        n += 0x200;
        n += (size_t)sprintf(raw + n, "\r\n");
    }
    size_t ok_len = n + (size_t)sprintf(raw + n, "0\r\n\r\n");
    char out[2048];
    size_t outlen, consumed;
    tk_http_error_t err;
    assert_int_equal(chunk_feed(raw, ok_len, NULL, 0, out, &outlen, &consumed, &err), 1);
    assert_int_equal(outlen, 1024);
    n += (size_t)sprintf(raw + n, "1\r\nz\r\n0\r\n\r\n");
    assert_int_equal(chunk_feed(raw, n, NULL, 0, out, &outlen, &consumed, &err), -1);
    assert_int_equal(err.status, 413);

    /* limits on the size line and trailers */
    char big[10000];
    tk_http_chunked_t d;
    size_t c, p;
    memset(big, 'a', sizeof(big));
    memcpy(big, "5;", 2);
    tk_http_chunked_init(&d);
    assert_int_equal(tk_http_chunked_decode(&d, big, sizeof(big), &c, &p, 0), -1);
    assert_int_equal(d.err.status, 400);
    memcpy(big, "0\r\nX:", 5);
    tk_http_chunked_init(&d);
    assert_int_equal(tk_http_chunked_decode(&d, big, sizeof(big), &c, &p, 0), -1);
    assert_int_equal(d.err.status, 431);
}

/* --- Accept-Encoding ------------------------------------------------------------- */

static void test_accepts_gzip(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        int want;
    } t[] = {
        {"gzip", 1},
        {"GZIP", 1},
        {"x-gzip", 1},
        {"deflate, gzip, br", 1},
        {"gzip;q=0", 0},
        {"gzip; q=0.000", 0},
        {"gzip;Q=0.001", 1},
        {"gzip;q=1.0", 1},
        {"gzip;q=1.001", 0}, /* malformed: ignored */
        {"gzip;q=2", 0},
        {"gzip;q=", 0},
        {"*", 1},
        {"*;q=0", 0},
        {"*;q=0, gzip", 1},
        {"gzip;q=0, *", 0},
        {"br", 0},
        {"identity", 0},
        {"", 0},
        {"gzip;q=0.5, identity", 0},
        {"gzip;q=0.5, identity;q=0.5", 1},
        {"gzip;q=0.8, identity;q=0.2", 1},
        {"identity;q=0, gzip;q=0.1", 1},
        {" , gzip ,", 1},
        {"gzip ; q=0.7 ; foo=bar", 1},
        {"gzipx", 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int got = tk_http_accepts_gzip(tk_str_from_cstr(t[i].v));
        if (got != t[i].want)
            fail_msg("accepts_gzip('%s') = %d, want %d", t[i].v, got, t[i].want);
    }
    assert_int_equal(tk_http_accepts_gzip((tk_str_t){NULL, 0}), 0);
}

static void test_str_helpers(void **state)
{
    (void)state;
    tk_str_t s = tk_str_from_cstr("Content-Length");
    assert_true(tk_str_caseeq(s, "content-length"));
    assert_false(tk_str_caseeq(s, "content-lengt"));
    assert_false(tk_str_caseeq(s, "content-lengthx"));
    assert_true(tk_str_eq_lit(s, "Content-Length"));
    assert_false(tk_str_eq_lit(s, "content-length"));
    assert_false(tk_str_caseeq((tk_str_t){NULL, 0}, ""));
}

static void test_str_ipv4(void **state)
{
    (void)state;
    /* every octet value in every position, against the C library's */
    for (unsigned v = 0; v < 256; v++) {
        unsigned char a[4] = {(unsigned char)v, (unsigned char)(255 - v), (unsigned char)(v / 2),
                              (unsigned char)(v * 7)};
        for (int r = 0; r < 4; r++) {
            unsigned char b[4] = {a[r], a[(r + 1) % 4], a[(r + 2) % 4], a[(r + 3) % 4]};
            char want[INET_ADDRSTRLEN], got[16];
            assert_non_null(inet_ntop(AF_INET, b, want, sizeof(want)));
            memset(got, 'x', sizeof(got));
            size_t n = tk_str_ipv4(b, got);
            assert_string_equal(got, want);
            assert_int_equal(n, strlen(want));
        }
    }
    char got[16];
    assert_int_equal(tk_str_ipv4((const unsigned char[4]){255, 255, 255, 255}, got), 15);
    assert_string_equal(got, "255.255.255.255");
    assert_int_equal(tk_str_ipv4((const unsigned char[4]){0, 0, 0, 0}, got), 7);
    assert_string_equal(got, "0.0.0.0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_table),         cmocka_unit_test(test_good_table),
        cmocka_unit_test(test_bytewise_good),     cmocka_unit_test(test_bytewise_bad),
        cmocka_unit_test(test_two_piece_split),   cmocka_unit_test(test_header_get_and_values),
        cmocka_unit_test(test_value_bytes),       cmocka_unit_test(test_limits),
        cmocka_unit_test(test_limits_incomplete), cmocka_unit_test(test_chunked_table),
        cmocka_unit_test(test_chunked_sum_limit), cmocka_unit_test(test_accepts_gzip),
        cmocka_unit_test(test_str_helpers),       cmocka_unit_test(test_str_ipv4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
