-- users.sql: the statement behind GET /users, as tenk runs it (keyset pagination from
-- after_id = 0, 10 rows; pgbench -M prepared, with tenk's generic plans: see scripts/bench).
\set after 0
\set lim 10
SELECT id, name, email FROM users WHERE id > :after ORDER BY id LIMIT :lim;
