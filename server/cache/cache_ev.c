/* cache_ev.c: hiredis' event hooks on the worker's loop, with writes batched per loop pass.
 *
 * hiredis' own libevent adapter arms a write event for every command: the
 * epoll set is modified (EPOLLOUT on), the loop polls once more to learn what
 * it knew (the socket is writable), writes, and modifies the set back. Here a
 * command only activates a "flush" event: libevent runs it in the same loop
 * pass, after the green threads that woke in that pass have queued their
 * commands too, so all of them go out in one write(2) and the epoll set is
 * not touched. The write event is armed only when the kernel's buffer is full
 * (a partial write) or while connect(2) is still in progress. The read event
 * stays armed (EV_PERSIST) for the connection's life, again without
 * epoll_ctl(2) per reply. */
#include "config.h"

#include <stdlib.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache_int.h"

typedef struct cache_ev {
    redisAsyncContext *ac;
    struct event *rev, *wev, *fev;
    int reading;     /* rev is added */
    int flush_armed; /* fev is active */
    int in_flush;    /* inside on_flush's redisAsyncHandleWrite() */
    int dead;        /* hiredis cleaned up during on_flush: free on the way out */
} cache_ev_t;

static void ev_free(cache_ev_t *e)
{
    if (e->rev)
        event_free(e->rev);
    if (e->wev)
        event_free(e->wev);
    if (e->fev)
        event_free(e->fev);
    free(e);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    cache_ev_t *e = arg;
    (void)fd;
    (void)what;
    redisAsyncHandleRead(e->ac);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    cache_ev_t *e = arg;
    (void)fd;
    (void)what;
    redisAsyncHandleWrite(e->ac);
}

/* The batched write: everything queued in this loop pass goes out at once. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    cache_ev_t *e = arg;
    (void)fd;
    (void)what;
    e->flush_armed = 0;
    e->in_flush = 1;
    redisAsyncHandleWrite(e->ac); /* may free the context, and call ev_cleanup */
    e->in_flush = 0;
    if (e->dead)
        ev_free(e);
}

static void ev_add_read(void *p)
{
    cache_ev_t *e = p;
    if (!e->reading) {
        e->reading = 1;
        event_add(e->rev, NULL);
    }
}

static void ev_del_read(void *p)
{
    cache_ev_t *e = p;
    if (e->reading) {
        e->reading = 0;
        event_del(e->rev);
    }
}

static void ev_add_write(void *p)
{
    cache_ev_t *e = p;
    /* connect(2) in progress, or a write that did not all fit: wait for room */
    if (!(e->ac->c.flags & REDIS_CONNECTED) || e->in_flush) {
        event_add(e->wev, NULL);
        return;
    }
    if (!e->flush_armed) {
        e->flush_armed = 1;
        event_active(e->fev, EV_WRITE, 1);
    }
}

static void ev_del_write(void *p)
{
    cache_ev_t *e = p;
    event_del(e->wev);
}

static void ev_cleanup(void *p)
{
    cache_ev_t *e = p;
    if (e->in_flush) {
        /* on_flush is on the stack and reads e after hiredis returns */
        event_del(e->rev);
        event_del(e->wev);
        event_del(e->fev);
        e->dead = 1;
        return;
    }
    ev_free(e);
}

int tk_cache_ev_attach(redisAsyncContext *ac, struct event_base *base)
{
    if (ac->ev.data != NULL)
        return REDIS_ERR;
    cache_ev_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return REDIS_ERR;
    e->ac = ac;
    e->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, on_read, e);
    e->wev = event_new(base, ac->c.fd, EV_WRITE, on_write, e);
    e->fev = event_new(base, -1, 0, on_flush, e);
    if (e->rev == NULL || e->wev == NULL || e->fev == NULL) {
        ev_free(e);
        return REDIS_ERR;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = e;
    /* as hiredis expects of an adapter: reads armed, and a write event for connect(2) */
    ev_add_read(e);
    event_add(e->wev, NULL);
    return REDIS_OK;
}
