"""The inference log: every prediction a head serves, in SQLite (default) or PostgreSQL.

records -- PredictionRecord, one logged prediction
schema  -- tables, migrations, engines
writer  -- InferenceLog: off the request path, spooled to disk while the database is down
"""
