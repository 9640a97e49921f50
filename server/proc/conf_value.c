/* conf_value.c: the configuration's value parsers (integers, durations, sizes,
 * booleans, listen addresses): pure functions of a string, fuzzed with the reader. */
#include "config.h"

#include "proc/conf.h"
#include "proc/conf_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* --- value parsers: each returns 0, or -1 with a reason in why ------------------- */

/* Unsigned decimal integer: 0, -1 if no digit, -2 on overflow; *end points
 * past the digits either way. */
int tk_conf_parse_digits(const char *s, unsigned long long *out, const char **end)
{
    unsigned long long v = 0;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return -1;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (ULLONG_MAX - d) / 10) {
            while (isdigit((unsigned char)*p))
                p++;
            *out = ULLONG_MAX;
            *end = p;
            return -2;
        }
        v = v * 10 + d;
        p++;
    }
    *out = v;
    *end = p;
    return 0;
}

int tk_conf_parse_int(const char *s, long long *out, const char **why)
{
    int neg = 0;
    unsigned long long v;
    const char *end;
    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    int r = tk_conf_parse_digits(s, &v, &end);
    if (r == -1 || *end != '\0') {
        *why = "not an integer";
        return -1;
    }
    if (r == -2 || v > (unsigned long long)LLONG_MAX) {
        *why = "number too large";
        return -1;
    }
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

/* "500ms", "10s", "5m", "1h" → unit_ms-based count; "0" needs no unit. A bare
 * number is refused: "timeout = 30" could mean seconds or milliseconds. */
int tk_conf_parse_duration(const char *s, long long unit_ms, long long *out, const char **why)
{
    unsigned long long v;
    const char *u;
    int r = tk_conf_parse_digits(s, &v, &u);
    if (r == -1) {
        *why = "not a duration (e.g. 500ms, 10s, 5m, 1h)";
        return -1;
    }
    if (r == -2 || v > (unsigned long long)LLONG_MAX / (3600000ULL)) {
        *why = "duration too large";
        return -1;
    }
    long long ms;
    if (*u == '\0') {
        if (v != 0) {
            *why = "a duration needs a unit: ms, s, m or h (e.g. 10s)";
            return -1;
        }
        ms = 0;
    } else if (strcmp(u, "ms") == 0) {
        ms = (long long)v;
    } else if (strcmp(u, "s") == 0) {
        ms = (long long)v * 1000;
    } else if (strcmp(u, "m") == 0 || strcmp(u, "min") == 0) {
        ms = (long long)v * 60000;
    } else if (strcmp(u, "h") == 0) {
        ms = (long long)v * 3600000;
    } else {
        *why = "unknown duration unit (use ms, s, m or h)";
        return -1;
    }
    if (ms % unit_ms != 0) {
        *why = "must be a whole number of seconds";
        return -1;
    }
    *out = ms / unit_ms;
    return 0;
}

/* "8192", "8k", "1m", "1g" (binary multiples, case-insensitive). */
int tk_conf_parse_size(const char *s, long long *out, const char **why)
{
    unsigned long long v;
    const char *u;
    int r = tk_conf_parse_digits(s, &v, &u);
    if (r == -1) {
        *why = "not a size (e.g. 8192, 8k, 1m)";
        return -1;
    }
    unsigned long long mul = 1;
    if (*u != '\0') {
        switch (tolower((unsigned char)*u)) {
        case 'k':
            mul = 1024ULL;
            break;
        case 'm':
            mul = 1024ULL * 1024;
            break;
        case 'g':
            mul = 1024ULL * 1024 * 1024;
            break;
        default:
            *why = "unknown size unit (use k, m or g)";
            return -1;
        }
        if (u[1] != '\0') {
            *why = "unknown size unit (use k, m or g)";
            return -1;
        }
    }
    if (r == -2 || v > (unsigned long long)LLONG_MAX / mul) {
        *why = "size too large";
        return -1;
    }
    *out = (long long)(v * mul);
    return 0;
}

int tk_conf_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"on", "yes", "true", "1"};
    static const char *const no[] = {"off", "no", "false", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

int tk_conf_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                       size_t errlen)
{
    char host[128];
    const char *colon, *port_s;

    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':') {
            snprintf(err, errlen, "'%s' is not [IPV6]:PORT", s);
            return -1;
        }
        if ((size_t)(rb - s - 1) >= sizeof(host)) {
            snprintf(err, errlen, "address too long");
            return -1;
        }
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = '\0';
        port_s = rb + 2;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            snprintf(err, errlen, "'%s' is not ADDR:PORT", s);
            return -1;
        }
        if ((size_t)(colon - s) >= sizeof(host)) {
            snprintf(err, errlen, "address too long");
            return -1;
        }
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port_s = colon + 1;
    }
    unsigned long long port;
    const char *end;
    if (tk_conf_parse_digits(port_s, &port, &end) != 0 || *end != '\0' || port < 1 ||
        port > 65535) {
        snprintf(err, errlen, "'%s': port must be 1..65535", s);
        return -1;
    }
    if (s[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) {
            snprintf(err, errlen, "'%s' is not a numeric IPv6 address", host);
            return -1;
        }
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return 0;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    if (host[0] == '\0' || strcmp(host, "*") == 0) {
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (strcmp(host, "localhost") == 0) {
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
        snprintf(err, errlen, "'%s' is not a numeric IPv4 address (IPv6 goes in brackets)", host);
        return -1;
    }
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof(*a4);
    return 0;
}
