"""The inference log: every prediction a head serves, in SQLite (default) or PostgreSQL.

records -- PredictionRecord, one logged prediction
schema  -- tables, migrations, engines
spool   -- the write-ahead spool: every prediction is on disk before its answer is sent
writer  -- InferenceLog: spool -> DB off the request path; dead letters, retention, lag metrics
sink    -- the writer's transaction on the DBAPI driver (sqlite3 / psycopg): no SQLAlchemy in a serving head
rollups -- hourly sums per (head, version): what reports read
migrate -- `python -m polyhead.inference_log.migrate`: the migrations, run by a head in a child process
report_models -- the report's wire contract (pydantic, no SQLAlchemy)
reports -- a head's report (volume, labels, confidence, abstentions, latency, feedback), aggregated in SQL
feedback -- true labels sent later, stored against the logged predictions; read back for retraining
"""
