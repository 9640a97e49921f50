/* admin_config.c: GET /debug/config, the configuration in effect with its secrets masked. */
#include "config.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "handlers/admin_int.h"
#include "http/http_response.h"
#include "proc/conf.h"

#define MASK "********"

/* conninfo with every password replaced: key=value form ("password=x",
 * "password = 'a b'") and URI form ("postgresql://user:x@host",
 * "?password=x"). */
static void mask_conninfo(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    const char *p = in;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < outlen)                                                                        \
            out[o++] = (c);                                                                        \
    } while (0)
    int uri = strncmp(in, "postgresql://", 13) == 0 || strncmp(in, "postgres://", 11) == 0;
    if (uri) {
        const char *auth = strstr(in, "://") + 3;
        const char *end = auth + strcspn(auth, "/?");
        const char *at = NULL;
        for (const char *q = auth; q < end; q++)
            if (*q == '@')
                at = q;
        const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        while (*p) {
            if (colon && p == colon + 1) {
                for (const char *m = MASK; *m; m++)
                    PUT(*m);
                p = at;
                continue;
            }
            if ((*p == '?' || *p == '&') && strncasecmp(p + 1, "password=", 9) == 0) {
                PUT(*p);
                for (const char *m = "password=" MASK; *m; m++)
                    PUT(*m);
                p += 10;
                p += strcspn(p, "&");
                continue;
            }
            PUT(*p);
            p++;
        }
        out[o] = '\0';
        return;
    }
    while (*p) {
        /* at the start of a keyword? */
        if ((p == in || p[-1] == ' ' || p[-1] == '\t') && strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '=') {
                q++;
                while (*q == ' ' || *q == '\t')
                    q++;
                for (const char *m = "password=" MASK; *m; m++)
                    PUT(*m);
                if (*q == '\'') { /* quoted, with \' and \\ escapes */
                    q++;
                    while (*q && *q != '\'') {
                        if (*q == '\\' && q[1])
                            q++;
                        q++;
                    }
                    if (*q)
                        q++;
                } else {
                    while (*q && *q != ' ' && *q != '\t')
                        q++;
                }
                p = q;
                continue;
            }
        }
        PUT(*p);
        p++;
    }
    out[o] = '\0';
#undef PUT
}

void tk_admin_config(tk_http_ctx_t *ctx)
{
    const tk_conf_t *c = tk_http_conf(ctx);
    char buf[1024];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "conf_file", c->conf_file);
    cJSON *s = cJSON_AddObjectToObject(o, "server");
    cJSON_AddStringToObject(s, "name", c->name);
    cJSON *l = cJSON_AddArrayToObject(s, "listen");
    for (int i = 0; i < c->nlisten; i++)
        cJSON_AddItemToArray(l, cJSON_CreateString(c->listen[i]));
    cJSON_AddNumberToObject(s, "workers", c->workers);
    cJSON_AddNumberToObject(s, "workers_effective", tk_conf_workers(c));
    cJSON_AddNumberToObject(s, "backlog", c->backlog);
    cJSON_AddStringToObject(s, "user", c->user);
    tk_conf_pid_path(c, buf, sizeof(buf));
    cJSON_AddStringToObject(s, "pid_file", buf);
    cJSON_AddNumberToObject(s, "max_connections", c->max_connections);
    cJSON_AddNumberToObject(s, "shutdown_timeout_ms", c->shutdown_timeout_ms);
    cJSON *rt = cJSON_AddObjectToObject(o, "runtime");
    cJSON_AddNumberToObject(rt, "stack_size", (double)c->stack_size);
    cJSON_AddNumberToObject(rt, "max_threads", c->max_threads);
    cJSON_AddNumberToObject(rt, "long_run_ms", (double)c->long_run_ms);
    cJSON *li = cJSON_AddObjectToObject(o, "limits");
    cJSON_AddNumberToObject(li, "max_request_line", (double)c->max_request_line);
    cJSON_AddNumberToObject(li, "max_header_size", (double)c->max_header_size);
    cJSON_AddNumberToObject(li, "max_headers", c->max_headers);
    cJSON_AddNumberToObject(li, "max_body_size", (double)c->max_body_size);
    cJSON_AddNumberToObject(li, "max_requests_per_conn", c->max_requests_per_conn);
    cJSON *to = cJSON_AddObjectToObject(o, "timeouts");
    cJSON_AddNumberToObject(to, "header_ms", c->header_timeout_ms);
    cJSON_AddNumberToObject(to, "body_ms", c->body_timeout_ms);
    cJSON_AddNumberToObject(to, "write_ms", c->write_timeout_ms);
    cJSON_AddNumberToObject(to, "keepalive_ms", c->keepalive_timeout_ms);
    cJSON *h = cJSON_AddObjectToObject(o, "http");
    cJSON_AddBoolToObject(h, "gzip", c->gzip);
    cJSON_AddNumberToObject(h, "gzip_min_size", (double)c->gzip_min_size);
    cJSON_AddNumberToObject(h, "gzip_level", c->gzip_level);
    cJSON *d = cJSON_AddObjectToObject(o, "db");
    mask_conninfo(c->db_conninfo, buf, sizeof(buf));
    cJSON_AddStringToObject(d, "conninfo", buf);
    cJSON_AddNumberToObject(d, "max_open", c->db_max_open);
    cJSON_AddNumberToObject(d, "max_idle", c->db_max_idle);
    cJSON_AddNumberToObject(d, "max_lifetime_ms", c->db_max_lifetime_ms);
    cJSON_AddNumberToObject(d, "max_idle_time_ms", c->db_max_idle_time_ms);
    cJSON_AddNumberToObject(d, "acquire_timeout_ms", c->db_acquire_timeout_ms);
    cJSON_AddNumberToObject(d, "query_timeout_ms", c->db_query_timeout_ms);
    cJSON *reps = cJSON_AddArrayToObject(d, "replica");
    for (int i = 0; i < c->db_nreplicas && i < TK_CONF_MAX_REPLICAS; i++) {
        mask_conninfo(c->db_replica[i], buf, sizeof(buf));
        cJSON_AddItemToArray(reps, cJSON_CreateString(buf));
    }
    cJSON_AddNumberToObject(d, "replica_max_lag_ms", c->db_replica_max_lag_ms);
    cJSON_AddNumberToObject(d, "replica_max_open", c->db_replica_max_open);
    cJSON_AddStringToObject(d, "read_from", c->db_read_from);
    cJSON_AddStringToObject(d, "statements", c->db_statements);
    cJSON *r = cJSON_AddObjectToObject(o, "redis");
    cJSON_AddStringToObject(r, "addr", c->redis_addr);
    cJSON_AddStringToObject(r, "password", c->redis_password[0] ? MASK : "");
    cJSON_AddNumberToObject(r, "db", c->redis_db);
    cJSON_AddNumberToObject(r, "timeout_ms", c->redis_timeout_ms);
    cJSON *sa = cJSON_AddArrayToObject(r, "sentinel");
    for (int i = 0; i < c->redis_nsentinels; i++)
        cJSON_AddItemToArray(sa, cJSON_CreateString(c->redis_sentinels[i]));
    cJSON_AddStringToObject(r, "master_name", c->redis_master_name);
    cJSON_AddStringToObject(r, "read_from", c->redis_read_from);
    cJSON_AddStringToObject(r, "sentinel_password", c->redis_sentinel_password[0] ? MASK : "");
    cJSON *ca = cJSON_AddObjectToObject(o, "cache");
    cJSON_AddNumberToObject(ca, "ttl_s", c->cache_ttl_s);
    cJSON_AddNumberToObject(ca, "negative_ttl_s", c->cache_negative_ttl_s);
    cJSON *ad = cJSON_AddObjectToObject(o, "admin");
    cJSON_AddStringToObject(ad, "listen", c->admin_listen);
    cJSON_AddStringToObject(ad, "token", c->admin_token[0] ? MASK : "");
    cJSON_AddBoolToObject(ad, "debug_endpoints", c->admin_debug_endpoints);
    cJSON *lg = cJSON_AddObjectToObject(o, "log");
    cJSON_AddStringToObject(lg, "level", c->log_level);
    cJSON_AddStringToObject(lg, "error_log", c->error_log);
    cJSON_AddStringToObject(lg, "access_log", c->access_log);
    cJSON_AddStringToObject(lg, "access_log_format", c->access_log_format);
    tk_http_add_header(ctx, "Cache-Control", "no-store");
    tk_http_respond_json(ctx, 200, o);
    cJSON_Delete(o);
}
