"""`polyhead report NAME --db-url`: the report read straight from an inference DB (SQLite in tmp)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

from typer.testing import CliRunner

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.schema import build_rollups, make_engine, migrate, predictions
from cli.commands import app
from tests.conftest import ROOT


def _log(url: str, rows: list[tuple[str, int, str]]) -> None:
    engine = make_engine(url)
    try:
        migrate(engine)
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:
            conn.execute(predictions.insert(), [
                {**dataclasses.asdict(PredictionRecord.create(
                    request_id=rid, head="support-routing", head_version="20260101T000000Z", embedder_fingerprint="fp",
                    text="t", label=label, probability=0.8, top_k=[(label, 0.8)], latency_ms=12.0, abstained=False,
                    text_index=index, issued_id=rid)), "ts": now - timedelta(minutes=5)} for rid, index, label in rows])
            build_rollups(conn)  # what reports read; the writer keeps them as it inserts (test_rollups.py)
    finally:
        engine.dispose()


def test_report_from_the_db_as_json_and_as_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'inference.db'}"
    _log(url, [("a", 0, "billing"), ("a", 1, "billing"), ("b", 0, "technical")])
    runner = CliRunner()
    out = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    assert (body["summary"]["requests"], body["summary"]["texts"]) == (2, 3)
    assert body["summary"]["label_distribution"] == {"billing": 2, "technical": 1} and body["drift"] is None

    out = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--bucket", "day"],
                        env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    assert "20260101T000000Z" in out.output and "billing" in out.output and "12.0/12.0/12.0" in out.output


def test_unknown_head_and_bad_options_are_clear_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'inference.db'}"
    runner = CliRunner()
    out = runner.invoke(app, ["report", "no-such-head", "--db-url", url, "--heads-dir", str(ROOT / "configs" / "heads")])
    assert out.exit_code == 2 and "unknown model 'no-such-head'" in out.output and "support-routing" in out.output
    out = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--bucket", "week"])
    assert out.exit_code == 2 and "hour or day" in out.output
    out = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--since", "yesterday"])
    assert out.exit_code == 2 and "--since" in out.output and "ISO 8601" in out.output
    empty = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--json"])
    assert empty.exit_code == 0 and json.loads(empty.output)["summary"]["texts"] == 0


def test_report_shows_feedback_by_strategy_live_accuracy_and_pending_labels(tmp_path):
    from polyhead.inference_log.feedback import find_predictions, store_feedback

    url = f"sqlite:///{tmp_path / 'inference.db'}"
    _log(url, [(f"r{i}", 0, "billing") for i in range(5)])
    engine = make_engine(url)
    try:
        found = find_predictions(engine, "support-routing", [(f"r{i}", 0) for i in range(5)])
        store_feedback(engine, "support-routing", [(found[("r0", 0)], "billing"), (found[("r1", 0)], "technical"),
                                                    (found[("r2", 0)], "billing"), (found[("r3", 0)], "sarcasm")],
                       strategies=["random", "random", "uncertain", None])
    finally:
        engine.dispose()
    runner = CliRunner()
    out = runner.invoke(app, ["report", "support-routing", "--db-url", url, "--json"])
    assert out.exit_code == 0, out.output
    review = json.loads(out.output)["review"]
    assert review["live_accuracy"]["count"] == 2 and review["live_accuracy"]["accuracy"] == 0.5
    assert {k: v["count"] for k, v in review["by_strategy"].items()} == {"random": 2, "uncertain": 1, "direct": 1}
    # no head to ask: the labels it predicted stand in for its labels
    assert review["pending_labels"] == {"technical": 1, "sarcasm": 1}
    out = runner.invoke(app, ["report", "support-routing", "--db-url", url], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    assert "live accuracy: 0.500 from 2 randomly picked texts" in out.output and "sarcasm 1" in out.output
