/* admin.h: process-level lifecycle of the admin endpoints (registration is in handlers.h). */
#ifndef TK_ADMIN_H
#define TK_ADMIN_H

/* The admin endpoints map the shared segment a second time, read-only, on
 * first use. tk_admin_fini() unmaps it: call it in the worker's teardown.
 * Safe to call when nothing was mapped. (The listener through which the
 * other workers ask for this worker's green threads is the worker's own:
 * proc/gt_dump.h.) */
void tk_admin_fini(void);

#endif
