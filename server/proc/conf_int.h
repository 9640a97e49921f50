/* conf_int.h: the value parsers shared by conf.c (the settings table and the INI reader) and
 * conf_value.c; private to the configuration. Each returns 0, or -1 with a reason in why. */
#ifndef TK_PROC_CONF_INT_H
#define TK_PROC_CONF_INT_H

/* Unsigned decimal integer: 0, -1 if no digit, -2 on overflow; *end points past the digits. */
int tk_conf_parse_digits(const char *s, unsigned long long *out, const char **end);
/* A signed decimal integer, the whole string. */
int tk_conf_parse_int(const char *s, long long *out, const char **why);
/* "500ms", "10s", "5m", "1h" in units of unit_ms; "0" needs no unit, a bare number is refused. */
int tk_conf_parse_duration(const char *s, long long unit_ms, long long *out, const char **why);
/* "8192", "8k", "1m", "1g" (binary multiples). */
int tk_conf_parse_size(const char *s, long long *out, const char **why);
/* on/off, yes/no, true/false, 1/0: 0, or -1. */
int tk_conf_parse_bool(const char *s, int *out);

#endif
