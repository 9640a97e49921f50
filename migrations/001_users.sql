-- 001_users: the users API table with 10,000 seed rows. Safe to re-run.
CREATE TABLE IF NOT EXISTS users (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL,
    email      text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO users (name, email)
SELECT 'User ' || g, 'user' || g || '@example.com'
FROM generate_series(1, 10000) AS g
ON CONFLICT (email) DO NOTHING;
