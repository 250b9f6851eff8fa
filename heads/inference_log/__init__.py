"""The inference log: every prediction a head serves, in SQLite (default) or PostgreSQL.

records -- PredictionRecord, one logged prediction
schema  -- tables, migrations, engines
writer  -- InferenceLog: off the request path, spooled to disk while the database is down
reports -- a head's report (volume, labels, confidence, abstentions, latency, feedback), aggregated in SQL
feedback -- true labels sent later, stored against the logged predictions; read back for retraining
"""
