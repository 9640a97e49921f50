// main.go: the seed's Go reference server, the peer tenk is measured against in scripts/bench.
//
// Deliberately plain, as the seed describes it: net/http with 10 s read and write
// timeouts and a 60 s idle timeout; GET /health -> {"status":"ok"}; GET /users ->
// the first 10 users through database/sql + lib/pq (25 open, 25 idle, 5 min
// lifetime), encoded with encoding/json. Built with Debian's packages only:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o goref main.go
package main

import (
	"database/sql"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strings"
	"time"

	_ "github.com/lib/pq"
)

type user struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

// withSSLDisabled adds sslmode=disable unless the connection string says otherwise:
// lib/pq defaults to sslmode=require, libpq (tenk, pgbench) to prefer.
func withSSLDisabled(dsn string) string {
	if dsn == "" || strings.Contains(dsn, "sslmode") {
		return dsn
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if strings.Contains(dsn, "?") {
			return dsn + "&sslmode=disable"
		}
		return dsn + "?sslmode=disable"
	}
	return dsn + " sslmode=disable"
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "address to listen on")
	dsn := flag.String("db", "", "PostgreSQL connection string (libpq style); empty: /users answers 503")
	flag.Parse()

	var db *sql.DB
	if *dsn != "" {
		var err error
		db, err = sql.Open("postgres", withSSLDisabled(*dsn))
		if err != nil {
			log.Fatalf("sql.Open: %v", err)
		}
		db.SetMaxOpenConns(25)
		db.SetMaxIdleConns(25)
		db.SetConnMaxLifetime(5 * time.Minute)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/users", func(w http.ResponseWriter, r *http.Request) {
		if db == nil {
			http.Error(w, `{"error":"no database"}`, http.StatusServiceUnavailable)
			return
		}
		rows, err := db.QueryContext(r.Context(), "SELECT id, name, email FROM users LIMIT 10")
		if err != nil {
			http.Error(w, `{"error":"database"}`, http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		users := make([]user, 0, 10)
		for rows.Next() {
			var u user
			if err := rows.Scan(&u.ID, &u.Name, &u.Email); err != nil {
				http.Error(w, `{"error":"database"}`, http.StatusInternalServerError)
				return
			}
			users = append(users, u)
		}
		if err := rows.Err(); err != nil {
			http.Error(w, `{"error":"database"}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(users)
	})

	srv := &http.Server{
		Addr:         *listen,
		Handler:      mux,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		IdleTimeout:  60 * time.Second,
	}
	log.Printf("goref listening on %s", *listen)
	log.Fatal(srv.ListenAndServe())
}
