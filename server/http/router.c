/* router.c: a segment trie from method + path pattern to handler. */
#include "config.h"

#include "http/router.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One handler registered on a node (a complete pattern). */
typedef struct {
    char method[16];
    size_t method_len;
    tk_http_handler_fn fn;
    int route_id;
} tk_route_handler_t;

/* One path segment. Literal children are tried before the parameter child,
 * so "/users/me" wins over "/users/{id}" whatever the registration order. */
typedef struct tk_rnode {
    char *seg; /* literal text, or the parameter name */
    size_t seg_len;
    struct tk_rnode **lits;
    int nlits;
    struct tk_rnode *param;
    char *pattern; /* the full pattern, set when handlers exist */
    tk_route_handler_t *handlers;
    int nhandlers;
} tk_rnode_t;

/* Route ids: one per "METHOD pattern" label, numbered in registration
 * order, shared by the routers made with tk_router_new_shared() (the same
 * label on two listeners is one route for the metrics). */
typedef struct {
    int refs;
    int n;
    char *labels[TK_ROUTER_MAX_ROUTES];
} tk_route_ids_t;

struct tk_router {
    tk_rnode_t root; /* matches nothing itself; children are first segments */
    int nroutes;
    tk_route_ids_t *ids;
    char error[128]; /* the first failed registration, "" if none */
};

typedef struct {
    const char *method;
    const char *pattern;
    int route_id;
} tk_route_ref_t;

static void node_free(tk_rnode_t *n)
{
    for (int i = 0; i < n->nlits; i++) {
        node_free(n->lits[i]);
        free(n->lits[i]);
    }
    free(n->lits);
    if (n->param) {
        node_free(n->param);
        free(n->param);
    }
    free(n->seg);
    free(n->pattern);
    free(n->handlers);
}

tk_router_t *tk_router_new_shared(tk_router_t *ids_from)
{
    tk_router_t *r = calloc(1, sizeof(tk_router_t));
    if (!r)
        return NULL;
    r->ids = ids_from ? ids_from->ids : calloc(1, sizeof(tk_route_ids_t));
    if (!r->ids) {
        free(r);
        return NULL;
    }
    r->ids->refs++;
    return r;
}

tk_router_t *tk_router_new(void)
{
    return tk_router_new_shared(NULL);
}

void tk_router_free(tk_router_t *r)
{
    if (!r)
        return;
    node_free(&r->root);
    if (--r->ids->refs == 0) {
        for (int i = 0; i < r->ids->n; i++)
            free(r->ids->labels[i]);
        free(r->ids);
    }
    free(r);
}

const char *tk_router_error(const tk_router_t *r)
{
    return r->error;
}

const char *tk_router_label(const tk_router_t *r, int route_id)
{
    return route_id >= 0 && route_id < r->ids->n ? r->ids->labels[route_id] : NULL;
}

/* The id of label "method pattern": the one it already has (registered on
 * a router sharing the ids), else the next one. -1 when all are taken. */
static int route_id_get(tk_route_ids_t *ids, const char *method, const char *pattern, char *err,
                        size_t errlen)
{
    size_t mlen = strlen(method), plen = strlen(pattern);
    for (int i = 0; i < ids->n; i++)
        if (strncmp(ids->labels[i], method, mlen) == 0 && ids->labels[i][mlen] == ' ' &&
            strcmp(ids->labels[i] + mlen + 1, pattern) == 0)
            return i;
    if (ids->n >= TK_ROUTER_MAX_ROUTES) {
        snprintf(err, errlen, "%s %s: more than %d routes (TK_ROUTER_MAX_ROUTES)", method, pattern,
                 TK_ROUTER_MAX_ROUTES);
        return -1;
    }
    char *l = malloc(mlen + plen + 2);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(l, method, mlen);
    l[mlen] = ' ';
    memcpy(l + mlen + 1, pattern, plen + 1);
    ids->labels[ids->n] = l;
    return ids->n++;
}

static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Find or create the child of n for one pattern segment. */
static tk_rnode_t *child_get(tk_rnode_t *n, const char *seg, size_t len, int is_param)
{
    if (is_param) {
        if (n->param) {
            /* one parameter per position: a second name would make params
             * depend on registration order */
            if (n->param->seg_len != len || memcmp(n->param->seg, seg, len) != 0) {
                errno = EEXIST;
                return NULL;
            }
            return n->param;
        }
    } else {
        for (int i = 0; i < n->nlits; i++)
            if (n->lits[i]->seg_len == len && memcmp(n->lits[i]->seg, seg, len) == 0)
                return n->lits[i];
    }
    tk_rnode_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->seg = strndup(seg, len);
    c->seg_len = len;
    if (!c->seg) {
        free(c);
        return NULL;
    }
    if (is_param) {
        n->param = c;
    } else {
        tk_rnode_t **l = realloc(n->lits, (size_t)(n->nlits + 1) * sizeof(*l));
        if (!l) {
            free(c->seg);
            free(c);
            return NULL;
        }
        n->lits = l;
        n->lits[n->nlits++] = c;
    }
    return c;
}

static int add(tk_router_t *r, const char *method, const char *pattern, tk_http_handler_fn fn,
               char *err, size_t errlen)
{
    size_t mlen = method ? strlen(method) : 0;
    if (mlen == 0 || mlen >= sizeof(((tk_route_handler_t *)0)->method)) {
        snprintf(err, errlen, "bad method");
        return -1;
    }
    for (size_t i = 0; i < mlen; i++)
        if (!is_tchar((unsigned char)method[i])) {
            snprintf(err, errlen, "bad method \"%s\"", method);
            return -1;
        }
    if (!pattern || pattern[0] != '/') {
        snprintf(err, errlen, "pattern must start with '/'");
        return -1;
    }
    if (!fn) {
        snprintf(err, errlen, "%s %s: no handler", method, pattern);
        return -1;
    }
    if (r->nroutes >= TK_ROUTER_MAX_ROUTES) {
        snprintf(err, errlen, "%s %s: more than %d routes (TK_ROUTER_MAX_ROUTES)", method, pattern,
                 TK_ROUTER_MAX_ROUTES);
        return -1;
    }
    tk_rnode_t *n = &r->root;
    int nparams = 0;
    const char *p = pattern + 1;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int is_param = 0;
        if (len > 0 && p[0] == '{') {
            if (len < 3 || p[len - 1] != '}') {
                snprintf(err, errlen, "%s: bad parameter segment", pattern);
                return -1;
            }
            for (size_t i = 1; i + 1 < len; i++)
                if (p[i] == '{' || p[i] == '}') {
                    snprintf(err, errlen, "%s: bad parameter segment", pattern);
                    return -1;
                }
            if (++nparams > TK_ROUTER_MAX_PARAMS) {
                snprintf(err, errlen, "%s: more than %d parameters", pattern, TK_ROUTER_MAX_PARAMS);
                return -1;
            }
            is_param = 1;
            p++;
            len -= 2;
        } else {
            for (size_t i = 0; i < len; i++)
                if (p[i] == '{' || p[i] == '}' || p[i] == '?' || p[i] == '#') {
                    snprintf(err, errlen, "%s: '%c' in a literal segment", pattern, p[i]);
                    return -1;
                }
        }
        n = child_get(n, p, len, is_param);
        if (!n) {
            if (errno == EEXIST)
                snprintf(err, errlen, "%s: another parameter name at this position", pattern);
            else
                snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (!e)
            break;
        p = e + 1;
    }
    for (int i = 0; i < n->nhandlers; i++)
        if (n->handlers[i].method_len == mlen && memcmp(n->handlers[i].method, method, mlen) == 0) {
            snprintf(err, errlen, "%s %s registered twice", method, pattern);
            return -1;
        }
    if (!n->pattern && !(n->pattern = strdup(pattern))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int route_id = route_id_get(r->ids, method, pattern, err, errlen);
    if (route_id < 0)
        return -1;
    tk_route_handler_t *h = realloc(n->handlers, (size_t)(n->nhandlers + 1) * sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    n->handlers = h;
    h = &n->handlers[n->nhandlers++];
    memset(h, 0, sizeof(*h));
    memcpy(h->method, method, mlen);
    h->method_len = mlen;
    h->fn = fn;
    h->route_id = route_id;
    r->nroutes++;
    return route_id;
}

int tk_router_add_err(tk_router_t *r, const char *method, const char *pattern,
                      tk_http_handler_fn fn, char *err, size_t errlen)
{
    char buf[sizeof(r->error)];
    int id = add(r, method, pattern, fn, buf, sizeof(buf));
    if (id < 0) {
        if (!r->error[0])
            memcpy(r->error, buf, sizeof(buf));
        if (err && errlen)
            snprintf(err, errlen, "%s", buf);
    }
    return id;
}

int tk_router_add(tk_router_t *r, const char *method, const char *pattern, tk_http_handler_fn fn)
{
    return tk_router_add_err(r, method, pattern, fn, NULL, 0);
}

/* Depth-first, literals before the parameter; the first node with handlers
 * that consumes the whole path is the match. */
static const tk_rnode_t *walk(const tk_rnode_t *n, const char *p, const char *end,
                              tk_router_match_t *m)
{
    const char *e = memchr(p, '/', (size_t)(end - p));
    size_t len = e ? (size_t)(e - p) : (size_t)(end - p);
    for (int i = 0; i < n->nlits; i++) {
        const tk_rnode_t *c = n->lits[i];
        if (c->seg_len != len || memcmp(c->seg, p, len) != 0)
            continue;
        if (!e) {
            if (c->nhandlers)
                return c;
        } else {
            const tk_rnode_t *f = walk(c, e + 1, end, m);
            if (f)
                return f;
        }
    }
    if (n->param && len > 0) {
        int k = m->nparams++;
        assert(k < TK_ROUTER_MAX_PARAMS);
        m->params[k].name.p = n->param->seg;
        m->params[k].name.len = n->param->seg_len;
        m->params[k].value.p = p;
        m->params[k].value.len = len;
        if (!e) {
            if (n->param->nhandlers)
                return n->param;
        } else {
            const tk_rnode_t *f = walk(n->param, e + 1, end, m);
            if (f)
                return f;
        }
        m->nparams = k; /* backtrack */
    }
    return NULL;
}

static void allow_add(char *allow, size_t cap, const char *m, size_t mlen)
{
    size_t used = strlen(allow);
    if (used + mlen + 3 > cap)
        return;
    if (used) {
        memcpy(allow + used, ", ", 2);
        used += 2;
    }
    memcpy(allow + used, m, mlen);
    allow[used + mlen] = '\0';
}

tk_router_result_t tk_router_match(const tk_router_t *r, const char *method, size_t method_len,
                                   const char *path, size_t path_len, tk_router_match_t *m)
{
    m->fn = NULL;
    m->route_id = -1;
    m->pattern = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (path_len == 0 || path[0] != '/')
        return TK_ROUTE_NOT_FOUND;
    const tk_rnode_t *n = walk(&r->root, path + 1, path + path_len, m);
    if (!n) {
        m->nparams = 0;
        return TK_ROUTE_NOT_FOUND;
    }
    m->pattern = n->pattern;
    const tk_route_handler_t *get = NULL;
    int has_head = 0;
    for (int i = 0; i < n->nhandlers; i++) {
        const tk_route_handler_t *h = &n->handlers[i];
        if (h->method_len == method_len && memcmp(h->method, method, method_len) == 0) {
            m->fn = h->fn;
            m->route_id = h->route_id;
            return TK_ROUTE_FOUND;
        }
        if (h->method_len == 3 && memcmp(h->method, "GET", 3) == 0)
            get = h;
        if (h->method_len == 4 && memcmp(h->method, "HEAD", 4) == 0)
            has_head = 1;
    }
    if (get && method_len == 4 && memcmp(method, "HEAD", 4) == 0) {
        m->fn = get->fn;
        m->route_id = get->route_id;
        return TK_ROUTE_FOUND;
    }
    for (int i = 0; i < n->nhandlers; i++) {
        const tk_route_handler_t *h = &n->handlers[i];
        allow_add(m->allow, sizeof(m->allow), h->method, h->method_len);
        if (h == get && !has_head)
            allow_add(m->allow, sizeof(m->allow), "HEAD", 4);
    }
    m->nparams = 0;
    return TK_ROUTE_METHOD_NOT_ALLOWED;
}

static void visit(const tk_rnode_t *n, tk_router_visit_fn cb, void *arg)
{
    for (int i = 0; i < n->nhandlers; i++)
        cb(n->handlers[i].method, n->pattern, n->handlers[i].route_id, arg);
    for (int i = 0; i < n->nlits; i++)
        visit(n->lits[i], cb, arg);
    if (n->param)
        visit(n->param, cb, arg);
}

void tk_router_foreach(const tk_router_t *r, tk_router_visit_fn cb, void *arg)
{
    visit(&r->root, cb, arg);
}
