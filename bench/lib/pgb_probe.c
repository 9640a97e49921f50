/* pgb_probe.c: what libpq's pipeline mode and named prepared statements do through a
 * connection pooler (PgBouncer in transaction mode), measured: several client processes
 * each send rounds of queries whose answers they can check (SELECT $1::int, with a value
 * unique to the process and round) and count the right, wrong, failed and missing answers.
 *
 *   cc -O2 -o pgb_probe bench/lib/pgb_probe.c -I$(pg_config --includedir) -lpq
 *   pgb_probe CONNINFO MODE CLIENTS ROUNDS [PER_BATCH [BATCHES]]
 *
 * MODE: batch   pipeline mode, PER_BATCH unnamed queries then one Sync, read, repeat
 *       multi   pipeline mode, BATCHES batches of PER_BATCH queries, each with its Sync,
 *               all sent before the first result is read (several Syncs in flight:
 *               what tenk's shared connections do in `prepared` mode)
 *       stagger as multi, but each batch written alone 2 ms after the one before, so it
 *               reaches the pooler while the batch before is still running on the server
 *       rolling BATCHES batches in flight all the time: each answered one is followed by a
 *               new one at once (what tenk's shared connections do under load)
 *       jitter  up to BATCHES batches in flight, each written at a random moment while the
 *               answers to the ones before are read as they come (non-blocking)
 *       named   no pipeline: PQprepare once, then PQexecPrepared each round
 *       options connect with options=-c plan_cache_mode=force_generic_plan, one query
 * PGB_PROBE_SQL replaces the query (e.g. SELECT $1::int FROM pg_sleep(0.002): slower
 * batches, so that the server's answers to successive Syncs arrive apart).
 * Prints one line: mode=... ok=N wrong=N errors=N missing=N first_error="..." and exits 0.
 * A process whose connection hangs is stopped by an alarm after 10 s (counted missing). */
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* The query (PGB_PROBE_SQL): one int parameter, it returns one row holding it. */
static const char *probe_sql = "SELECT $1::int";

typedef struct {
    long ok, wrong, errors;
    char first_error[200];
} tally_t;

static void note_error(tally_t *t, const char *msg)
{
    t->errors++;
    if (t->first_error[0] == '\0') {
        snprintf(t->first_error, sizeof(t->first_error), "%s", msg ? msg : "?");
        for (char *p = t->first_error; *p; p++)
            if (*p == '\n' || *p == '"')
                *p = ' ';
    }
}

/* Read one query's results (up to its NULL); want = the value it must return. */
static void read_one(PGconn *pg, tally_t *t, long want)
{
    PGresult *r = PQgetResult(pg);
    if (r == NULL)
        return; /* counted as missing */
    ExecStatusType es = PQresultStatus(r);
    if (es == PGRES_TUPLES_OK && PQntuples(r) == 1)
        (*(atol(PQgetvalue(r, 0, 0)) == want ? &t->ok : &t->wrong))++;
    else if (es == PGRES_PIPELINE_ABORTED)
        note_error(t, "pipeline aborted");
    else
        note_error(t, PQresultErrorMessage(r));
    PQclear(r);
    while ((r = PQgetResult(pg)) != NULL) /* the NULL that ends this query */
        PQclear(r);
}

static void read_sync(PGconn *pg, tally_t *t)
{
    PGresult *r = PQgetResult(pg);
    if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC)
        note_error(t, r ? PQresultErrorMessage(r) : "no Sync result");
    PQclear(r);
}

static void client(const char *conninfo, const char *mode, int id, int rounds, int per, int batches,
                   tally_t *t)
{
    PGconn *pg;
    char v[32];
    const char *vals[1] = {v};
    if (strcmp(mode, "options") == 0) {
        const char *kw[] = {"options", "dbname", NULL};
        const char *val[] = {"-c plan_cache_mode=force_generic_plan", conninfo, NULL};
        pg = PQconnectdbParams(kw, val, 1);
    } else {
        pg = PQconnectdb(conninfo);
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        note_error(t, PQerrorMessage(pg));
        return;
    }
    if (strcmp(mode, "options") == 0) {
        PGresult *r = PQexec(pg, "SELECT 1");
        (*(PQresultStatus(r) == PGRES_TUPLES_OK ? &t->ok : &t->errors))++;
        PQclear(r);
    } else if (strcmp(mode, "named") == 0) {
        PGresult *r = PQprepare(pg, "probe", probe_sql, 1, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            note_error(t, PQresultErrorMessage(r));
        PQclear(r);
        for (int i = 0; i < rounds; i++) {
            long want = (long)id * 100000 + i;
            snprintf(v, sizeof(v), "%ld", want);
            r = PQexecPrepared(pg, "probe", 1, vals, NULL, NULL, 0);
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
                (*(atol(PQgetvalue(r, 0, 0)) == want ? &t->ok : &t->wrong))++;
            else
                note_error(t, PQresultErrorMessage(r));
            PQclear(r);
        }
    } else if (strcmp(mode, "jitter") == 0) {
        /* up to BATCHES batches in flight, each sent at a random moment while answers of
         * the ones before arrive (a non-blocking reader, as tenk's event loop) */
        long sent = 0, done = 0, total = (long)rounds * batches;
        int qi = 0;
        unsigned seed = (unsigned)id * 7919u;
        if (PQenterPipelineMode(pg) != 1 || PQsetnonblocking(pg, 1) != 0) {
            note_error(t, "PQenterPipelineMode failed");
            PQfinish(pg);
            return;
        }
        while (done < total && PQstatus(pg) == CONNECTION_OK) {
            if (sent < total && sent - done < batches && (rand_r(&seed) & 1)) {
                for (int q = 0; q < per; q++) {
                    snprintf(v, sizeof(v), "%ld", (long)id * 100000 + sent * per + q);
                    if (!PQsendQueryParams(pg, probe_sql, 1, NULL, vals, NULL, NULL, 0))
                        note_error(t, PQerrorMessage(pg));
                }
                if (!PQpipelineSync(pg))
                    note_error(t, PQerrorMessage(pg));
                sent++;
            }
            while (PQflush(pg) == 1)
                ;
            usleep(rand_r(&seed) % 300);
            if (!PQconsumeInput(pg)) {
                note_error(t, PQerrorMessage(pg));
                break;
            }
            while (done < sent && !PQisBusy(pg)) {
                if (qi < per) {
                    read_one(pg, t, (long)id * 100000 + done * per + qi);
                    qi++;
                } else {
                    read_sync(pg, t);
                    qi = 0;
                    done++;
                }
            }
        }
    } else if (strcmp(mode, "rolling") == 0) {
        /* keep BATCHES batches in flight: each time one is answered, send the next */
        long sent = 0, read = 0, total = (long)rounds * batches;
        if (PQenterPipelineMode(pg) != 1) {
            note_error(t, "PQenterPipelineMode failed");
            PQfinish(pg);
            return;
        }
        while (read < total && PQstatus(pg) == CONNECTION_OK) {
            while (sent < total && sent - read < batches) {
                for (int q = 0; q < per; q++) {
                    snprintf(v, sizeof(v), "%ld", (long)id * 100000 + sent * per + q);
                    if (!PQsendQueryParams(pg, probe_sql, 1, NULL, vals, NULL, NULL, 0))
                        note_error(t, PQerrorMessage(pg));
                }
                if (!PQpipelineSync(pg))
                    note_error(t, PQerrorMessage(pg));
                sent++;
            }
            for (int q = 0; q < per; q++)
                read_one(pg, t, (long)id * 100000 + read * per + q);
            read_sync(pg, t);
            read++;
        }
    } else {
        int stagger = strcmp(mode, "stagger") == 0;
        int nb = strcmp(mode, "multi") == 0 || stagger ? batches : 1;
        if (PQenterPipelineMode(pg) != 1) {
            note_error(t, "PQenterPipelineMode failed");
            PQfinish(pg);
            return;
        }
        for (int i = 0; i < rounds; i++) {
            for (int b = 0; b < nb; b++) {
                for (int q = 0; q < per; q++) {
                    snprintf(v, sizeof(v), "%ld", (long)id * 100000 + (i * nb + b) * per + q);
                    if (!PQsendQueryParams(pg, probe_sql, 1, NULL, vals, NULL, NULL, 0))
                        note_error(t, PQerrorMessage(pg));
                }
                if (!PQpipelineSync(pg))
                    note_error(t, PQerrorMessage(pg));
                if (stagger) {
                    /* each batch in its own write, while the one before still runs */
                    while (PQflush(pg) == 1)
                        ;
                    usleep(2000);
                }
            }
            for (int b = 0; b < nb; b++) {
                for (int q = 0; q < per; q++)
                    read_one(pg, t, (long)id * 100000 + (i * nb + b) * per + q);
                read_sync(pg, t);
            }
            if (PQstatus(pg) != CONNECTION_OK) {
                note_error(t, PQerrorMessage(pg));
                break;
            }
        }
    }
    PQfinish(pg);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(
            stderr,
            "usage: %s CONNINFO batch|multi|stagger|rolling|jitter|named|options CLIENTS ROUNDS "
            "[PER_BATCH [BATCHES]]\n",
            argv[0]);
        return 2;
    }
    const char *conninfo = argv[1], *mode = argv[2];
    int clients = atoi(argv[3]), rounds = atoi(argv[4]);
    if (getenv("PGB_PROBE_SQL"))
        probe_sql = getenv("PGB_PROBE_SQL");
    int per = argc > 5 ? atoi(argv[5]) : 10, batches = argc > 6 ? atoi(argv[6]) : 4;
    tally_t *ts = mmap(NULL, sizeof(tally_t) * (size_t)clients, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ts == MAP_FAILED)
        return 2;
    memset(ts, 0, sizeof(tally_t) * (size_t)clients);
    for (int i = 0; i < clients; i++) {
        pid_t p = fork();
        if (p == 0) {
            alarm(10);
            client(conninfo, mode, i + 1, rounds, per, batches, &ts[i]);
            _exit(0);
        }
    }
    tally_t all = {0};
    long missing = 0;
    int batched = strcmp(mode, "multi") == 0 || strcmp(mode, "stagger") == 0 ||
                  strcmp(mode, "rolling") == 0 || strcmp(mode, "jitter") == 0;
    long expected = strcmp(mode, "options") == 0 ? 1
                    : strcmp(mode, "named") == 0 ? rounds
                    : batched                    ? (long)rounds * per * batches
                                                 : (long)rounds * per;
    for (int i = 0; i < clients; i++) {
        int status;
        wait(&status);
    }
    for (int i = 0; i < clients; i++) {
        long seen = ts[i].ok + ts[i].wrong + ts[i].errors;
        all.ok += ts[i].ok;
        all.wrong += ts[i].wrong;
        all.errors += ts[i].errors;
        missing += seen < expected ? expected - seen : 0;
        if (all.first_error[0] == '\0' && ts[i].first_error[0])
            memcpy(all.first_error, ts[i].first_error, sizeof(all.first_error));
    }
    printf("mode=%s clients=%d expected=%ld ok=%ld wrong=%ld errors=%ld missing=%ld "
           "first_error=\"%s\"\n",
           mode, clients, expected * clients, all.ok, all.wrong, all.errors, missing,
           all.first_error);
    return 0;
}
