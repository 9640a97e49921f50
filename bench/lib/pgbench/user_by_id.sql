-- user_by_id.sql: the statement behind GET /users/{id} on a cache miss.
\set id random(1, 10000)
SELECT id, name, email, created_at FROM users WHERE id = :id;
