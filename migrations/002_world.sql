-- 002_world: TechEmpower's World table, 10,000 rows of random numbers 1..10000. Safe to re-run.
CREATE TABLE IF NOT EXISTS world (
    id           integer NOT NULL PRIMARY KEY,
    randomnumber integer NOT NULL DEFAULT 0
);

INSERT INTO world (id, randomnumber)
SELECT g, floor(random() * 10000 + 1)::integer
FROM generate_series(1, 10000) AS g
ON CONFLICT (id) DO NOTHING;
