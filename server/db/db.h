/* db.h: PostgreSQL through asynchronous libpq on green threads, within the
 * global connection budget kept by the broker (shm/broker.h).
 *
 * Per worker: a pool of its own connections, each holding one broker slot.
 * tk_db_acquire() reuses an idle connection of this worker, else takes a free
 * global slot and connects, else queues in the broker's FIFO and parks (state
 * TK_GT_WAIT_BROKER) until a slot or a connection is handed over, or
 * db.acquire_timeout passes. Queries park on the connection's socket (state
 * TK_GT_WAIT_DB); no libpq call here ever blocks the worker.
 *
 * Statements are registered once (tk_db_stmt()) and prepared lazily, once per
 * connection. */
#ifndef TK_DB_H
#define TK_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "shm/broker.h"
#include "shm/dbview.h"
#include "proc/conf.h"

struct event_base;

typedef struct tk_db_conn tk_db_conn_t;

typedef enum {
    TK_DB_OK = 0,
    TK_DB_UNAVAILABLE, /* no connection: acquire timeout, queue full, database down (503) */
    TK_DB_TIMEOUT,     /* db.query_timeout passed; the query was cancelled (504) */
    TK_DB_ERROR,       /* the server refused the statement: see tk_db_sqlstate() (500/409/...) */
    TK_DB_CANCELLED,   /* the calling green thread was cancelled (client gone) */
    TK_DB_DISABLED,    /* no [db] conninfo configured (503) */
} tk_db_status_t;

/* Set up the database client of this worker: b is the shared broker (from
 * tk_shm_broker()), slot this worker's index (the eventfd of
 * tk_broker_wake_create() with that index must exist: the master creates them
 * before forking). Registers the wake eventfd and a maintenance timer on
 * base. Call after tk_sched_new(). With conf->db_conninfo empty, every acquire
 * answers TK_DB_DISABLED. Returns 0 or -1 (logged). */
int tk_db_worker_init(struct event_base *base, tk_broker_sh_t *b, int slot, const tk_conf_t *conf);
/* Close every connection of this worker and give its slots back (worker exit). */
void tk_db_worker_fini(void);

/* What a statement declares about itself (tk_db_stmt() flags). Nothing is
 * guessed from the SQL text: a statement without TK_DB_READ runs alone on a
 * connection of its own and is never re-run. */
enum {
    /* Only reads, with no side effect (no FOR UPDATE/SHARE/KEY SHARE locks,
     * no volatile function that writes or sets session state): it may share
     * a pipelined connection with other green threads' queries (one implicit
     * transaction per batch) and may be re-run when its batch or its
     * connection failed before it ran. */
    TK_DB_READ = 1u << 0,
    /* With TK_DB_READ: identical queries not yet sent may be joined into one
     * execution (each caller gets a copy of the result). Not for statements
     * whose executions are counted (TechEmpower's verifier counts them). */
    TK_DB_JOINABLE = 1u << 1,
};

/* Register a statement (SQL with $1..$n) with its TK_DB_* flags; returns its
 * id (>= 0), or -1 when the table is full or TK_DB_JOINABLE comes without
 * TK_DB_READ. Call at start-up (handler registration), before any query. */
int tk_db_stmt(const char *sql, int nparams, unsigned flags);

/* Get a connection for the calling green thread. May yield. NULL with *st set
 * (UNAVAILABLE, CANCELLED, DISABLED) on failure. */
tk_db_conn_t *tk_db_acquire(tk_db_status_t *st);
/* Give it back. A connection with an error, an open transaction or a query
 * still running is cleaned (drained, rolled back) in the background or closed:
 * the next user always gets a clean one. Never yields. */
void tk_db_release(tk_db_conn_t *c);

/* Run registered statement stmt with text parameters (values[i] NULL = SQL
 * NULL; lengths NULL = NUL-terminated). On TK_DB_OK *res holds the result
 * (PGRES_TUPLES_OK or PGRES_COMMAND_OK): PQclear() it. May yield. */
tk_db_status_t tk_db_exec(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                          const int *lengths, PGresult **res);
/* Run SQL without parameters (BEGIN, COMMIT, ...). May yield. */
tk_db_status_t tk_db_exec_sql(tk_db_conn_t *c, const char *sql, PGresult **res);
/* SQLSTATE of the last TK_DB_ERROR on c ("23505" = unique violation), "" if none. */
const char *tk_db_sqlstate(const tk_db_conn_t *c);
/* The server's message for the last error on c (for logs), "" if none. */
const char *tk_db_errmsg(const tk_db_conn_t *c);

/* acquire + exec + release in one call. A statement declared TK_DB_READ does
 * not take a connection for itself: it shares one of the worker's
 * connections in libpq pipeline mode with other green threads' queries, and
 * when also TK_DB_JOINABLE an identical query not yet sent is joined (one
 * execution, each caller gets its own copy of the result); not with db.statements = unnamed
 * (PgBouncer), where every query takes a connection of its own. Same outcomes as the exclusive
 * path: TK_DB_UNAVAILABLE when it could not start within db.acquire_timeout, TK_DB_TIMEOUT after
 * db.query_timeout. May yield. */
tk_db_status_t tk_db_query(int stmt, int nparams, const char *const *values, const int *lengths,
                           PGresult **res, char sqlstate[6]);

/* Run registered statement stmt n times, with parameters values[i * nparams
 * + k] (text, NUL-terminated) for run i; res[i] gets each result (PQclear()
 * them). TK_DB_READ statements are all sent at once on the worker's shared
 * pipelined connections (n round trips' worth of queries in one); other
 * statements run one after another on one connection. All or nothing: on
 * failure every res[i] is NULL. May yield. */
tk_db_status_t tk_db_query_many(int stmt, int n, int nparams, const char *const *values,
                                PGresult **res);

/* Counters of this worker's client (tests, logs): queries sent on shared
 * pipelined connections, queries run again after their batch or their
 * connection failed, and queries joined to an identical queued one. */
typedef struct {
    uint64_t pipelined, retried, joined;
} tk_db_counts_t;
void tk_db_counts(tk_db_counts_t *out);

/* --- read replicas (db.replica) --------------------------------------------------- */

/* The brokers of every backend (0 = the primary, 1.. = the replicas, as the master set them
 * up) and the shared view the probe publishes into; call before tk_db_worker_init(). Without
 * it there is only the primary (the broker given to tk_db_worker_init()). */
void tk_db_set_backends(tk_broker_sh_t *const *brokers, unsigned n, tk_dbview_sh_t *view);

/* Routing: tk_db_query()/tk_db_query_many() of a TK_DB_READ statement go to the least loaded
 * healthy replica (reachable, within db.replica_max_lag) that has replayed the request's LSN,
 * else to the primary; everything else (other statements, tk_db_acquire()) goes to the
 * primary, and once a request has written, its later reads follow. A read that fails on a
 * replica for want of a connection runs again on the primary.
 * The request's state lives in its green thread's request words (tk_gt_req_words()). */

/* Read-your-writes: this request's reads must see at least lsn (its Tenk-LSN header). */
void tk_db_want_lsn(uint64_t lsn);
/* The primary's WAL insert position now (pg_current_wal_insert_lsn()): after a write
 * committed, a position at or past its commit record, which a reader must have replayed to see
 * it. The insert position, not pg_current_wal_lsn(): with synchronous_commit off the commit
 * record may not be written yet, and the write position would then be before it. May yield. */
tk_db_status_t tk_db_write_lsn(uint64_t *lsn);
/* This request's reads go to the primary (as after a write). */
void tk_db_read_primary(void);
/* The backend of this request's last read (0 = primary, 1.. = replica), -1 if none. */
int tk_db_last_backend(void);
/* PostgreSQL's text form of an LSN ("16/B374D848"): parse (0, or -1 if malformed) and format
 * (the length, or -1 if len is too small). */
int tk_db_lsn_parse(const char *s, size_t n, uint64_t *out);
int tk_db_lsn_format(uint64_t lsn, char *buf, size_t len);

/* 0 while this worker's last attempt to connect to the primary failed (no
 * success since), or its last three queries on the primary failed (timed out or got no
 * connection; a lost link makes the open connections hang, nothing fails
 * outright): the database is unreachable from here.
 * 1 otherwise, also before any attempt and without a database. No query, no
 * lock: for /health. */
int tk_db_primary_reachable(void);

/* A short name for a status (logs, error bodies); the HTTP status for it is
 * the handlers' (handlers/db_status.h). */
const char *tk_db_status_name(tk_db_status_t st);

#endif
