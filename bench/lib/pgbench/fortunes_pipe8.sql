-- fortunes_pipe8.sql: the /fortunes statement 8 times in one round trip (\startpipeline): the
-- database's pipelined limit. scripts/bench counts each transaction as 8 queries.
\startpipeline
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
SELECT id, message FROM fortune;
\endpipeline
