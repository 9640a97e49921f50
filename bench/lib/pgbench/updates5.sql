-- updates5.sql: TechEmpower updates, 5 per request (GET /updates?queries=5): read then write each row.
\set id1 random(1, 10000)
\set rn1 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id1;
UPDATE world SET randomnumber = :rn1 WHERE id = :id1;
\set id2 random(1, 10000)
\set rn2 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id2;
UPDATE world SET randomnumber = :rn2 WHERE id = :id2;
\set id3 random(1, 10000)
\set rn3 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id3;
UPDATE world SET randomnumber = :rn3 WHERE id = :id3;
\set id4 random(1, 10000)
\set rn4 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id4;
UPDATE world SET randomnumber = :rn4 WHERE id = :id4;
\set id5 random(1, 10000)
\set rn5 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id5;
UPDATE world SET randomnumber = :rn5 WHERE id = :id5;
