-- fortunes.sql: TechEmpower fortunes (GET /fortunes).
SELECT id, message FROM fortune;
