/* notify.h: the systemd notification protocol (sd_notify), with or without
 * libsystemd. Every call is a no-op returning 0 when $NOTIFY_SOCKET is unset. */
#ifndef TK_NOTIFY_H
#define TK_NOTIFY_H

#include <stdint.h>

/* Send one message of newline-separated assignments ("READY=1\nSTATUS=x").
 * Returns 1 if sent, 0 if not under a notify socket, -1 with errno on error. */
int tk_notify_send(const char *msg);
/* printf-style, then tk_notify_send(). */
int tk_notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int tk_notify_ready(void);
/* "RELOADING=1" plus "MONOTONIC_USEC=" of now, as systemd >= 253 requires for
 * Type=notify-reload and 252 accepts. */
int tk_notify_reloading(void);
int tk_notify_stopping(void);
int tk_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int tk_notify_watchdog(void);

/* The watchdog interval in microseconds that systemd asked this process for
 * ($WATCHDOG_USEC, honouring $WATCHDOG_PID), 0 when none. */
uint64_t tk_notify_watchdog_usec(void);

#endif
