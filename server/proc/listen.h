/* listen.h: the set of listen sockets the master holds for the workers of
 * every live generation (server.listen addresses and admin.listen). */
#ifndef TK_LISTEN_H
#define TK_LISTEN_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "proc/conf.h"

#define TK_LISTEN_MAX (2 * (TK_CONF_MAX_LISTEN + 1))
/* TCP_DEFER_ACCEPT on TCP listeners: a silent connection reaches accept()
 * after about this long (see listen.c). */
#define TK_LISTEN_DEFER_ACCEPT_S 1

typedef struct {
    struct sockaddr_storage ss;
    socklen_t sl;
    char addr[128];
    int fd;
} tk_listen_t;

typedef struct {
    tk_listen_t lst[TK_LISTEN_MAX];
    int n;
} tk_listen_set_t;

/* The open socket bound to addr, or NULL. */
tk_listen_t *tk_listen_find(tk_listen_set_t *s, const char *addr);
/* Open every socket c needs that is not open yet. 0, or -1 (logged). */
int tk_listen_open(tk_listen_set_t *s, const tk_conf_t *c);
/* Close the sockets neither a nor b uses (either may be NULL). */
void tk_listen_close_unused(tk_listen_set_t *s, const tk_conf_t *a, const tk_conf_t *b);
void tk_listen_close_all(tk_listen_set_t *s);
/* In a new worker: close every socket but fds[0..nfds) and admin_fd (the
 * sockets of other generations' addresses are not its to hold open). Leaves
 * s as it is: the worker only reads the fds it was handed. */
void tk_listen_close_others(tk_listen_set_t *s, const int *fds, int nfds, int admin_fd);

#endif
