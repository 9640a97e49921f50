/* admin.h: process-level lifecycle of the admin endpoints (registration is in handlers.h). */
#ifndef TK_ADMIN_H
#define TK_ADMIN_H

/* tk_handlers_register_admin() (handlers.h) also starts, in each worker, the
 * listener through which the other workers ask for its green threads
 * (/debug/threads). tk_admin_fini() stops it and unmaps the segment: call it
 * in the worker's teardown, before the event base is freed. Safe to call when
 * nothing was started. */
void tk_admin_fini(void);

#endif
