-- users.sql: the statement behind GET /users (pgbench -M prepared).
SELECT id, name, email FROM users LIMIT 10;
