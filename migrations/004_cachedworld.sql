-- 004_cachedworld: TechEmpower's CachedWorld table (10,000 rows, random numbers 1..10000),
-- loaded into Redis at start for GET /cached-queries. Safe to re-run.
CREATE TABLE IF NOT EXISTS cachedworld (
    id           integer NOT NULL PRIMARY KEY,
    randomnumber integer NOT NULL DEFAULT 0
);

INSERT INTO cachedworld (id, randomnumber)
SELECT g, floor(random() * 10000 + 1)::integer
FROM generate_series(1, 10000) AS g
ON CONFLICT (id) DO NOTHING;
