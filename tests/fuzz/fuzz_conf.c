/* fuzz_conf.c: libFuzzer target for the configuration parser.
 *
 * Feeds the input to tk_conf_load_buffer() and checks the contract: an error
 * names the buffer and a line that exists ("fuzz.conf:N: "), a success leaves
 * every setting inside its range and every string terminated, and validation
 * never crashes. The first byte also selects a tk_conf_set() round with the
 * first line as "section.key" and the rest as the value. Any breach aborts. */
// fuzz-sources: server/proc/conf.c server/proc/conf_value.c server/http/proxy.c @runtime
// fuzz-libs: -I/usr/include/postgresql -lpq
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proc/conf.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_conf: check failed at line %d: %s\n", __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define TERMINATED(field) CHECK(memchr((field), '\0', sizeof(field)) != NULL)

static void check_ranges(const tk_conf_t *c)
{
    CHECK(c->nlisten >= 1 && c->nlisten <= TK_CONF_MAX_LISTEN);
    for (int i = 0; i < c->nlisten; i++) {
        TERMINATED(c->listen[i]);
        CHECK(c->listen[i][0] != '\0');
    }
    TERMINATED(c->name);
    CHECK(c->name[0] != '\0');
    TERMINATED(c->user);
    TERMINATED(c->pid_file);
    TERMINATED(c->db_conninfo);
    TERMINATED(c->redis_addr);
    TERMINATED(c->redis_password);
    TERMINATED(c->admin_listen);
    TERMINATED(c->admin_token);
    TERMINATED(c->log_level);
    TERMINATED(c->error_log);
    TERMINATED(c->access_log);
    TERMINATED(c->access_log_format);
    CHECK(c->workers >= 0 && c->workers <= 256);
    CHECK(c->backlog >= 1 && c->backlog <= 65535);
    CHECK(c->shutdown_timeout_ms >= 0 && c->shutdown_timeout_ms <= 3600000);
    CHECK(c->stack_size >= 16 * 1024 && c->stack_size <= 8 * 1024 * 1024);
    CHECK(c->long_run_ms >= 1 && c->long_run_ms <= 60000);
    CHECK(c->max_headers >= 1);
    CHECK(c->keepalive_timeout_ms >= 0 && c->keepalive_timeout_ms <= 3600000);
    CHECK(c->gzip == 0 || c->gzip == 1);
    CHECK(c->gzip_level >= 1 && c->gzip_level <= 9);
    CHECK(c->db_max_open >= 1 && c->db_max_open <= 256);
    CHECK(c->cache_ttl_s >= 1);
    CHECK(strcmp(c->access_log_format, "combined") == 0 ||
          strcmp(c->access_log_format, "json") == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tk_conf_t c;
    char err[512];
    tk_conf_defaults(&c);
    memset(err, 'x', sizeof(err));
    if (tk_conf_load_buffer(&c, "fuzz.conf", (const char *)data, size, err, sizeof(err)) == 0) {
        check_ranges(&c);
        if (tk_conf_validate(&c, err, sizeof(err)) != 0)
            CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    } else {
        CHECK(memchr(err, '\0', sizeof(err)) != NULL);
        unsigned line = 0;
        CHECK(sscanf(err, "fuzz.conf:%u: ", &line) == 1);
        size_t lines = 1;
        for (size_t i = 0; i < size; i++)
            lines += data[i] == '\n';
        CHECK(line >= 1 && line <= lines);
        check_ranges(&c); /* a failed load leaves valid (if partial) values */
    }

    /* tk_conf_set: "section.key\nvalue" */
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl != NULL && (size_t)(nl - data) < 64) {
        char sk[64], value[1024];
        size_t klen = (size_t)(nl - data), vlen = size - klen - 1;
        memcpy(sk, data, klen);
        sk[klen] = '\0';
        if (vlen < sizeof(value) && strlen(sk) == klen) {
            memcpy(value, nl + 1, vlen);
            value[vlen] = '\0';
            char *dot = strchr(sk, '.');
            if (dot != NULL) {
                *dot = '\0';
                tk_conf_defaults(&c);
                if (tk_conf_set(&c, sk, dot + 1, value, err, sizeof(err)) == 0)
                    check_ranges(&c);
                else
                    CHECK(memchr(err, '\0', sizeof(err)) != NULL);
            }
        }
    }
    return 0;
}
