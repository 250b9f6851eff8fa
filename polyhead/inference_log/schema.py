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

from polyhead.inference_log import rollups
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

# Migration 4's columns (NULL in older rows): feedback names a prediction by the server-issued id
# and may come only from the key that asked for it (or a labeller key).
_ISSUED_COLUMNS = [
    sa.Column("issued_id", sa.String(64), nullable=True),  # the predict answer's prediction_id
    sa.Column("caller", sa.String(128), nullable=True),  # API key name that asked; NULL: no keys configured
]

# Migration 6's column: TRUE on a challenger's shadow prediction (heads/roles.py): the same request_id
# and text_index as the champion's row, which the caller got; NULL (or FALSE) on every row a caller
# got. Readers of what callers saw (reports, feedback matching) keep to `served_only()`.
_SHADOW_COLUMNS = [sa.Column("shadow", sa.Boolean, nullable=True)]

# The table as migration 1 created it, in its own MetaData: migrations must not change with the code.
_predictions_v1 = sa.Table("predictions", sa.MetaData(), *_prediction_columns(), *_prediction_indexes())

# Migration 4's: TRUE when the text holds NUL, stored escaped (sink.escape_text); NULL otherwise.
_ESCAPE_COLUMN = sa.Column("text_escaped", sa.Boolean, nullable=True)

# The table as the code reads and writes it now (migrations 1-6 applied).
predictions = sa.Table(
    "predictions",
    metadata,
    *_prediction_columns(),
    *[c._copy() for c in _ADDED_COLUMNS],
    _ESCAPE_COLUMN._copy(),
    *[c._copy() for c in _ISSUED_COLUMNS],
    *[c._copy() for c in _SHADOW_COLUMNS],
    *_prediction_indexes(),
    sa.Index("ix_predictions_head_issued_id", "head", "issued_id"),  # feedback's lookup
    # A challenger's shadow rows, per version (GET /v1/models/{name}/challengers).
    sa.Index("ix_predictions_shadow", "head", "shadow", "head_version", "ts"),
    # Reports read only these columns of one head over a time range: a covering index answers them
    # without touching the table (BENCHMARKS.md, "Reports").
    sa.Index("ix_predictions_report", "head", "ts", "head_version", "text_index", "label", "probability",
             "latency_ms", "abstained"),
)

def _feedback_columns() -> list:
    # The table as migration 3 shipped it; migration 5 adds given_by by ALTER.
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("head", sa.String(128), nullable=False),
        # the id feedback named: a client's request id before migration 5, the server-issued prediction_id since
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
    ]


# Who gave the label (API key name, never the secret; NULL: no keys configured, or before migration 5).
_FEEDBACK_GIVEN_BY = sa.Column("given_by", sa.String(128), nullable=True)
# Migration 7's (the review queue, polyhead.inference_log.review): the strategy that picked the text a
# feedback labels; NULL for feedback sent directly (and before migration 7).
_FEEDBACK_REVIEW_STRATEGY = sa.Column("review_strategy", sa.String(32), nullable=True)

_feedback_v3 = sa.Table("feedback", sa.MetaData(), *_feedback_columns())

# Labels that come later (POST /v1/models/{name}/feedback): one row per (head, request, text), the
# latest wins. It copies what it needs of the logged prediction it matched (id, time, version,
# predicted label: facts that never change), so reports aggregate feedback without a join.
feedback = sa.Table(
    "feedback",
    metadata,
    *_feedback_columns(),
    _FEEDBACK_GIVEN_BY._copy(),
    _FEEDBACK_REVIEW_STRATEGY._copy(),
    sa.Index("ix_feedback_prediction_id", "prediction_id"),  # retention: does this raw row have feedback?
)


# Hourly rollups (rollups.py): what reports read. Kept by the writer in the transaction of the raw
# rows; kept when retention prunes those. `hour` is the UTC start of the hour.
def _rollup_key() -> list[sa.Column]:
    return [sa.Column("head", sa.String(128), primary_key=True),
            sa.Column("head_version", sa.String(64), primary_key=True),
            sa.Column("hour", sa.DateTime(timezone=True), primary_key=True)]


_LATENCY_BINS = sa.Column("latency_bins", sa.LargeBinary, nullable=True)

rollup_hour = sa.Table(
    "rollup_hour", metadata, *_rollup_key(),
    *[sa.Column(c, sa.BigInteger, nullable=False) for c in ("requests", "texts", "abstained", "abstain_known")],
    sa.Column("confidence_sum", sa.Float, nullable=False),
    sa.Column("first_ts", sa.DateTime(timezone=True), nullable=False),
    *[sa.Column(f"h{i}", sa.BigInteger, nullable=False) for i in range(rollups.CONFIDENCE_BINS)],
    # requests per latency bucket as schema 7 stored them, {"<bucket>": n}: '{}' since migration 8, except
    # in rows an older writer still adds to during a rolling upgrade (readers add both columns)
    sa.Column("latency", sa.Text, nullable=False),
    # Migration 8's: the same histogram as a dense int64 run (rollups.encode_bins); NULL: none yet
    _LATENCY_BINS._copy(),
    # Reports read one head's hours of a range whatever its versions (the key leads with the version)
    sa.Index("ix_rollup_hour_head_hour", "head", "hour"),
)
rollup_label = sa.Table("rollup_label", metadata, *_rollup_key(), sa.Column("label", sa.String(256), primary_key=True),
                        sa.Column("n", sa.BigInteger, nullable=False),
                        # covering: a report sums one head's labels over a range from the index alone
                        sa.Index("ix_rollup_label_head_hour", "head", "hour", "head_version", "label", "n"))
# Feedback per (true label, predicted label), by the hour of the prediction it labels; kept by
# feedback.store_feedback in the transaction of the feedback rows (a replaced feedback moves its count).
rollup_feedback = sa.Table("rollup_feedback", metadata, *_rollup_key(),
                           sa.Column("label", sa.String(256), primary_key=True),
                           sa.Column("predicted_label", sa.String(256), primary_key=True),
                           sa.Column("n", sa.BigInteger, nullable=False),
                           sa.Index("ix_rollup_feedback_head_hour", "head", "hour", "head_version", "label",
                                    "predicted_label", "n"))
ROLLUP_TABLES = (rollup_hour, rollup_label, rollup_feedback)
_ROLLUP_RANGE_INDEXES = ("ix_rollup_hour_head_hour", "ix_rollup_label_head_hour", "ix_rollup_feedback_head_hour")

# Migration 8's: per head, the newest feedback (feedback.ts) a training run has read, all of it, into a
# version it wrote (heads/training/run.py). Retention prunes a raw row with feedback only once its
# feedback is at or below this mark (sink.prune); rows without feedback as before.
training_feedback = sa.Table(
    "training_feedback", metadata,
    sa.Column("head", sa.String(128), primary_key=True),
    sa.Column("feedback_through", sa.DateTime(timezone=True), nullable=False),
    sa.Column("head_version", sa.String(64), nullable=False),  # the version that run wrote
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


def _m1_predictions(conn: sa.Connection) -> None:
    # Migration 1 creates the table as it was first shipped; later migrations ALTER it explicitly.
    _predictions_v1.create(conn, checkfirst=True)


def _add_columns(conn: sa.Connection, table: str, columns: list[sa.Column]) -> None:
    existing = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    for column in columns:
        if column.name not in existing:  # idempotent even if a crashed run got half way
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}")


def _m2_abstained_text_index(conn: sa.Connection) -> None:
    _add_columns(conn, "predictions", _ADDED_COLUMNS)


def _m3_feedback_and_report_index(conn: sa.Connection) -> None:
    _feedback_v3.create(conn, checkfirst=True)
    index = next(ix for ix in predictions.indexes if ix.name == "ix_predictions_report")
    index.create(conn, checkfirst=True)


def _m4_escape_flag_and_rollups(conn: sa.Connection) -> None:
    existing = {c["name"] for c in sa.inspect(conn).get_columns("predictions")}
    if _ESCAPE_COLUMN.name not in existing:
        kind = _ESCAPE_COLUMN.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN {_ESCAPE_COLUMN.name} {kind}")
    for table in ROLLUP_TABLES:
        table.create(conn, checkfirst=True)
    build_rollups(conn)


def build_rollups(conn: sa.Connection, *, chunk: int = 50_000) -> int:
    """Rollups of every raw row (old logs), replacing any there: read in primary-key order, summed
    in Python by the writer's own code (rollups.aggregate), so both agree to the row. Returns rows read."""
    for table in ROLLUP_TABLES:
        conn.execute(table.delete())
    p = predictions
    cols = (p.c.head, p.c.head_version, p.c.ts, p.c.text_index, p.c.label, p.c.probability, p.c.latency_ms,
            p.c.abstained)
    sums: dict = {}
    read, last = 0, ""
    shadow_known = "shadow" in {c["name"] for c in sa.inspect(conn).get_columns("predictions")}  # migration 6
    while True:  # keyset pages: bounded memory on the driver side whatever the log's size
        page = sa.select(p.c.id, *cols).where(p.c.id > last)
        if shadow_known:  # rollups count what callers got, never a challenger's shadow rows
            page = page.where(served_only())
        rows = conn.execute(page.order_by(p.c.id).limit(chunk)).all()
        if not rows:
            break
        last, read = rows[-1][0], read + len(rows)
        for key, s in rollups.aggregate((r[1], r[2], _utc(r[3]), *r[4:]) for r in rows).items():
            _add_sums(sums, key, s)
    hours, labels, _ = rollups.upsert_rows(sums, lambda v: v, with_latency=True)
    for table, params, keys in ((rollup_hour, hours, rollups.HOUR_COLUMNS),
                                (rollup_label, labels, ["head", "head_version", "hour", "label", "n"]),
                                (rollup_feedback, _feedback_sums(conn), FEEDBACK_ROLLUP_KEYS)):
        for start in range(0, len(params), 5000):
            conn.execute(table.insert(), [dict(zip(keys, row)) for row in params[start:start + 5000]])
    return read


FEEDBACK_ROLLUP_KEYS = ("head", "head_version", "hour", "label", "predicted_label", "n")


def _feedback_sums(conn: sa.Connection) -> list[tuple]:
    f = feedback
    sums: dict[tuple, int] = {}
    for head, version, ts, label, predicted in conn.execute(
            sa.select(f.c.head, f.c.head_version, f.c.prediction_ts, f.c.label, f.c.predicted_label)):
        key = (head, version, rollups.hour_of(_utc(ts)), label, predicted)
        sums[key] = sums.get(key, 0) + 1
    return [(*key, n) for key, n in sorted(sums.items())]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _add_sums(into: dict, key: tuple, s: rollups.HourSums) -> None:
    t = into.get(key)
    if t is None:
        into[key] = s
        return
    for f in ("requests", "texts", "abstained", "abstain_known", "confidence_sum"):
        setattr(t, f, getattr(t, f) + getattr(s, f))
    t.first_ts = min(t.first_ts, s.first_ts)
    t.histogram = [a + b for a, b in zip(t.histogram, s.histogram)]
    for mine, theirs in ((t.labels, s.labels), (t.latency, s.latency)):
        for k, n in theirs.items():
            mine[k] = mine.get(k, 0) + n


def _m5_issued_ids_and_provenance(conn: sa.Connection) -> None:
    _add_columns(conn, "predictions", _ISSUED_COLUMNS)
    _add_columns(conn, "feedback", [_FEEDBACK_GIVEN_BY])
    index = next(ix for ix in predictions.indexes if ix.name == "ix_predictions_head_issued_id")
    index.create(conn, checkfirst=True)


def _m6_shadow(conn: sa.Connection) -> None:
    _add_columns(conn, "predictions", _SHADOW_COLUMNS)
    index = next(ix for ix in predictions.indexes if ix.name == "ix_predictions_shadow")
    index.create(conn, checkfirst=True)


def served_only(table: sa.Table | None = None) -> sa.ColumnElement:
    """Rows a caller got (not a challenger's shadow prediction); rows from before migration 6 are NULL."""
    column = (table if table is not None else predictions).c.shadow
    return sa.or_(column.is_(None), column == sa.false())


def _m7_feedback_review_strategy(conn: sa.Connection) -> None:
    _add_columns(conn, "feedback", [_FEEDBACK_REVIEW_STRATEGY])


def _m8_latency_bins_range_indexes_training_feedback(conn: sa.Connection) -> None:
    _add_columns(conn, "rollup_hour", [_LATENCY_BINS])
    for table in (*ROLLUP_TABLES, feedback):
        for index in table.indexes:
            if index.name in (*_ROLLUP_RANGE_INDEXES, "ix_feedback_prediction_id"):
                index.create(conn, checkfirst=True)
    training_feedback.create(conn, checkfirst=True)
    _move_latency_to_bins(conn)


def _move_latency_to_bins(conn: sa.Connection, chunk: int = 5000) -> None:
    """Schema 7's JSON histograms into latency_bins (added to what is there), '{}' left behind."""
    r = rollup_hour
    key = (r.c.head, r.c.head_version, r.c.hour)
    while True:
        rows = conn.execute(sa.select(*key, r.c.latency, r.c.latency_bins)
                            .where(r.c.latency != rollups.EMPTY_JSON).limit(chunk)).all()
        if not rows:
            return
        for head, version, hour, text, bins in rows:
            conn.execute(r.update().where(r.c.head == head, r.c.head_version == version, r.c.hour == hour)
                         .values(latency=rollups.EMPTY_JSON,
                                 latency_bins=rollups.merge_bins(bins, rollups.decode_latency(text))))


# Ordered and append-only: (version, description, apply). Each runs once per database.
MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "create predictions", _m1_predictions),
    (2, "predictions: abstained, text_index", _m2_abstained_text_index),
    (3, "feedback table; covering report index", _m3_feedback_and_report_index),
    (4, "predictions.text_escaped; hourly rollups, built from the rows already logged", _m4_escape_flag_and_rollups),
    (5, "predictions: issued_id, caller; feedback: given_by", _m5_issued_ids_and_provenance),
    (6, "predictions: shadow (challenger predictions)", _m6_shadow),
    (7, "feedback: review_strategy", _m7_feedback_review_strategy),
    (8, "rollup_hour.latency_bins (JSON histograms moved); rollups' (head, hour) indexes; "
        "feedback.prediction_id index; training_feedback", _m8_latency_bins_range_indexes_training_feedback),
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
