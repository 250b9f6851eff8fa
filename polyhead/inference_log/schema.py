"""The inference DB's tables, migrations and engines (SQLite or PostgreSQL, one code path).

Schema: ``polyhead_schema_version`` plus ``MIGRATIONS`` (ordered, idempotent), applied under a
lock (``pg_advisory_xact_lock`` / SQLite ``BEGIN IMMEDIATE``) so head processes may start together.
Heads write rows through sink.py (the DBAPI driver, no SQLAlchemy) and run ``migrate`` in a child
process (migrate.py); everything else here is what readers, the gateway and the CLI use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from polyhead.inference_log.sink import PG_CONNECT_ARGS, SQLITE_TIMEOUT_S, sqlite_wal

metadata = sa.MetaData()

schema_version = sa.Table(
    "polyhead_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

class JsonDocument(sa.types.TypeDecorator):
    """JSON, stored as JSONB on PostgreSQL. The PostgreSQL dialect is imported only when the DB is
    PostgreSQL: a head logging to SQLite does not load it (~2 MiB per process, BENCHMARKS.md §5)."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


def _prediction_columns() -> list[sa.Column]:
    # The columns migration 1 shipped; later ones are added by ALTER in their own migration.
    return [
        sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex: makes inserts/replays idempotent
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),  # UTC
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("head", sa.String(128), nullable=False),
        sa.Column("head_version", sa.String(64), nullable=False),
        sa.Column("embedder_fingerprint", sa.String(128), nullable=False),
        sa.Column("text", sa.Text, nullable=True),  # NULL when redacted
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("top_k", JsonDocument(), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    ]


def _prediction_indexes() -> list[sa.Index]:
    return [sa.Index("ix_predictions_head_ts", "head", "ts"), sa.Index("ix_predictions_request_id", "request_id")]


# Migration 2's columns: NULL in rows logged before it (and by heads still running older code).
_ADDED_COLUMNS = [
    sa.Column("abstained", sa.Boolean, nullable=True),  # the head answered its abstain label
    sa.Column("text_index", sa.Integer, nullable=True),  # position of the text in its request (0 = first)
]

# The table as migration 1 created it, in its own MetaData: migrations must not change with the code.
_predictions_v1 = sa.Table("predictions", sa.MetaData(), *_prediction_columns(), *_prediction_indexes())

# The table as the code reads and writes it now (migrations 1-3 applied).
predictions = sa.Table(
    "predictions",
    metadata,
    *_prediction_columns(),
    *[c._copy() for c in _ADDED_COLUMNS],
    *_prediction_indexes(),
    # Reports read only these columns of one head over a time range: a covering index answers them
    # without touching the table (BENCHMARKS.md, "Reports").
    sa.Index("ix_predictions_report", "head", "ts", "head_version", "text_index", "label", "probability",
             "latency_ms", "abstained"),
)

# Labels that come later (POST /v1/models/{name}/feedback): one row per (head, request, text), the
# latest wins. It copies what it needs of the logged prediction it matched (id, time, version,
# predicted label: facts that never change), so reports aggregate feedback without a join.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("head", sa.String(128), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("text_index", sa.Integer, nullable=False),
    sa.Column("label", sa.String(256), nullable=False),  # the true label
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),  # when the (latest) feedback arrived, UTC
    sa.Column("prediction_id", sa.String(32), nullable=False),
    sa.Column("prediction_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("head_version", sa.String(64), nullable=False),
    sa.Column("predicted_label", sa.String(256), nullable=False),
    sa.UniqueConstraint("head", "request_id", "text_index", name="uq_feedback_request_text"),
    sa.Index("ix_feedback_head_prediction_ts", "head", "prediction_ts"),
)


# Migration 4 (the review queue, polyhead.inference_log.review): the strategy that picked the text a
# feedback labels; NULL for feedback sent directly. A fresh DB gets it from migration 3's CREATE already,
# so migration 4 adds it only where it is missing.
_FEEDBACK_REVIEW_COLUMNS = [sa.Column("review_strategy", sa.String(32), nullable=True)]
for _column in _FEEDBACK_REVIEW_COLUMNS:
    feedback.append_column(_column._copy())


def _add_missing_columns(conn: sa.Connection, table: str, columns: list[sa.Column]) -> None:
    existing = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    for column in columns:
        if column.name not in existing:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}")


def _m1_predictions(conn: sa.Connection) -> None:
    # Migration 1 creates the table as it was first shipped; later migrations ALTER it explicitly.
    _predictions_v1.create(conn, checkfirst=True)


def _m2_abstained_text_index(conn: sa.Connection) -> None:
    existing = {c["name"] for c in sa.inspect(conn).get_columns("predictions")}
    for column in _ADDED_COLUMNS:
        if column.name not in existing:  # idempotent even if a crashed run got half way
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN {column.name} {kind}")


def _m3_feedback_and_report_index(conn: sa.Connection) -> None:
    feedback.create(conn, checkfirst=True)
    index = next(ix for ix in predictions.indexes if ix.name == "ix_predictions_report")
    index.create(conn, checkfirst=True)


def _m4_feedback_review_strategy(conn: sa.Connection) -> None:
    _add_missing_columns(conn, "feedback", _FEEDBACK_REVIEW_COLUMNS)


# Ordered and append-only: (version, description, apply). Each runs once per database.
MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "create predictions", _m1_predictions),
    (2, "predictions: abstained, text_index", _m2_abstained_text_index),
    (3, "feedback table; covering report index", _m3_feedback_and_report_index),
    (4, "feedback: review_strategy", _m4_feedback_review_strategy),
]

_PG_MIGRATION_LOCK = 0x706F6C79  # "poly": pg_advisory_xact_lock key serialising migrations


def dialect_insert(engine: sa.Engine, table: sa.Table):
    """INSERT with the engine's ON CONFLICT clauses (SQLite or PostgreSQL); only that dialect is imported."""
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


def make_engine(url: str) -> sa.Engine:
    """An engine tuned to notice an outage quickly: pre-ping, 2 s connect timeout, TCP keepalives."""
    u = sa.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        timeout_s = float(u.query.get("timeout", SQLITE_TIMEOUT_S))  # busy timeout; URL ?timeout= wins
        args = {} if "timeout" in u.query else {"timeout": SQLITE_TIMEOUT_S}
        engine = sa.create_engine(u, pool_pre_ping=True, connect_args=args)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Let SQLAlchemy emit BEGIN itself (below): pysqlite would otherwise autocommit DDL.
            dbapi_conn.isolation_level = None
            sqlite_wal(dbapi_conn, timeout_s)

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            immediate = conn.get_execution_options().get("polyhead_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if backend == "postgresql":
        return sa.create_engine(u, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=dict(PG_CONNECT_ARGS))
    raise ValueError(f"inference DB must be sqlite or postgresql, not {backend!r}")


def migrate(engine: sa.Engine) -> list[int]:
    """Apply the missing MIGRATIONS under a DB-wide lock; returns the versions applied now."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    applied: list[int] = []
    with engine.connect() as conn:
        conn.execution_options(polyhead_immediate=True)  # SQLite: take the write lock up front
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            schema_version.create(conn, checkfirst=True)
            done = set(conn.execute(sa.select(schema_version.c.version)).scalars())
            for version, description, apply in MIGRATIONS:
                if version not in done:
                    apply(conn)
                    conn.execute(schema_version.insert().values(
                        version=version, description=description, applied_at=datetime.now(timezone.utc)))
                    applied.append(version)
    return applied


def count_rows(url: str, *, heads: Iterable[str] | None = None) -> int:
    """Rows in ``predictions`` (only those of ``heads`` when given)."""
    engine = make_engine(url)
    try:
        query = sa.select(sa.func.count()).select_from(predictions)
        if heads is not None:
            query = query.where(predictions.c.head.in_(list(heads)))
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()
