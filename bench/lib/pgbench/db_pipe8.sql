-- db_pipe8.sql: the /db statement, 8 lookups pipelined in one round trip (\startpipeline): the
-- database's pipelined limit. scripts/bench counts each transaction as 8 lookups.
\startpipeline
\set id1 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id1;
\set id2 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id2;
\set id3 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id3;
\set id4 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id4;
\set id5 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id5;
\set id6 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id6;
\set id7 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id7;
\set id8 random(1, 10000)
SELECT id, randomnumber FROM world WHERE id = :id8;
\endpipeline
