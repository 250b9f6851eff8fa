"""The report's one typed definition (report_models.InferenceReport) says every field build_report writes."""

from __future__ import annotations

from datetime import timedelta

from polyhead.inference_log.report_models import InferenceReport
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import make_engine, migrate
from tests.unit.polyhead.inference_log.test_reports import T0, TRAFFIC, insert


def _keys(value, path="") -> set[str]:
    """Every key path of a JSON value (list items share their path)."""
    if isinstance(value, dict):
        return {f"{path}.{k}" for k in value} | {p for k, v in value.items() for p in _keys(v, f"{path}.{k}")}
    if isinstance(value, list):
        return {p for v in value for p in _keys(v, f"{path}[]")}
    return set()


def test_build_report_writes_exactly_the_fields_of_the_report_model(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'inference.db'}")
    try:
        migrate(engine)
        insert(engine, TRAFFIC)
        body = build_report(engine, "h", since=T0, until=T0 + timedelta(hours=3))
    finally:
        engine.dispose()
    assert body["versions"] and body["timeline"]  # every nested model has an instance to compare
    typed = InferenceReport.model_validate(body).model_dump(mode="json")
    # label_distribution's keys are labels (data, not fields): compare their values only
    assert _keys(typed) - {k for k in _keys(typed) if ".label_distribution." in k} == \
        _keys(body) - {k for k in _keys(body) if ".label_distribution." in k}
    assert typed["summary"] == body["summary"]
