"""Labelling-tool formats: a review queue exported, labelled the way each tool writes its export, read back."""

from __future__ import annotations

import json

import pytest

from cli.review import FORMATS, detect_format, read_labelled
from polyhead.errors import ValidationError

QUEUE = {"model": "tickets", "strategy": "uncertain", "score": "margin", "pool": 9, "labels": ["a", "b"],
         "new_labels": "closed",
         "items": [{"prediction_id": f"req-{i}", "index": i % 2, "text": f"text {i} \u00e9", "predicted": "a",
                    "probability": 0.5 + i / 100, "top_k": [{"label": "a", "probability": 0.5 + i / 100},
                                                            {"label": "b", "probability": 0.5 - i / 100}],
                    "version": "20260301T100000Z", "ts": "2026-03-01T10:00:00+00:00",
                    "strategy": "random" if i == 2 else "uncertain", "score": i / 50, "score_name": "margin"}
                   for i in range(3)]}
TRUE = ["b", "a", "b"]


def label_studio_annotate(text: str) -> str:
    """What Label Studio's JSON export holds after a labeller answered tasks 0 and 2 (task 1 was skipped),
    and relabelled task 2 later."""
    tasks = json.loads(text)
    for i, task in enumerate(tasks):
        task["id"] = 100 + i
        if i == 1:
            task["annotations"] = [{"id": 9, "was_cancelled": True, "result": []}]
            continue
        first = {"id": 1, "completed_by": 1, "was_cancelled": False, "created_at": "2026-03-01T11:00:00Z",
                 "updated_at": "2026-03-01T11:00:00Z",
                 "result": [{"id": "x", "from_name": "label", "to_name": "text", "type": "choices", "origin": "manual",
                             "value": {"choices": ["a" if i == 2 else TRUE[i]]}}]}
        later = {**first, "id": 2, "updated_at": "2026-03-01T12:00:00Z",
                 "result": [{**first["result"][0], "value": {"choices": [TRUE[i]]}}]}
        task["annotations"] = [first, later] if i == 2 else [first]
    return json.dumps(tasks)


def argilla_annotate(text: str) -> str:
    records = [json.loads(line) for line in text.splitlines()]
    records[0]["responses"] = [{"values": {"label": {"value": TRUE[0]}}, "status": "submitted", "user_id": "u1"}]
    records[1]["responses"] = [{"values": {"label": {"value": "a"}}, "status": "draft"}]  # not submitted: skipped
    records[2]["responses"] = {"label": [{"value": TRUE[2], "user_id": "u2"}]}  # Argilla 2.x shape
    return "".join(json.dumps(r) + "\n" for r in records)


def jsonl_annotate(text: str) -> str:
    rows = [json.loads(line) for line in text.splitlines()]
    rows[0]["label"], rows[2]["label"] = TRUE[0], TRUE[2]
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize("name, annotate", [("label-studio", label_studio_annotate), ("argilla", argilla_annotate),
                                            ("jsonl", jsonl_annotate)])
def test_round_trip(tmp_path, name, annotate):
    fmt = FORMATS[name]
    exported = fmt.export(QUEUE)
    path = tmp_path / f"labelled{fmt.suffix}"
    path.write_text(annotate(exported), encoding="utf-8")
    assert detect_format(path).name == name
    plan = read_labelled(path, fmt)
    assert plan.model == "tickets" and plan.rows == 3 and plan.unanswered == 1
    assert plan.items == [{"prediction_id": "req-0", "index": 0, "label": "b", "strategy": "uncertain"},
                          {"prediction_id": "req-2", "index": 0, "label": "b", "strategy": "random"}]


def test_exports_carry_what_each_tool_sorts_and_shows_by():
    task = json.loads(FORMATS["label-studio"].export(QUEUE))[1]
    assert task["data"]["text"] == "text 1 \u00e9"
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "tickets@20260301T100000Z" and prediction["score"] == 0.51
    assert prediction["result"][0]["value"]["choices"] == ["a"]
    record = json.loads(FORMATS["argilla"].export(QUEUE).splitlines()[1])
    assert record["fields"] == {"text": "text 1 \u00e9"}
    assert record["suggestions"] == [{"question_name": "label", "value": "a", "score": 0.51,
                                      "agent": "tickets@20260301T100000Z"}]
    assert record["metadata"]["prediction_id"] == "req-1" and record["metadata"]["index"] == 1


def test_every_bad_row_is_named_and_nothing_is_planned(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"model": "tickets", "prediction_id": "ok", "label": "a"},
            {"model": "tickets", "prediction_id": "", "label": "a"},
            {"model": "tickets", "prediction_id": "r", "label": 3},
            {"model": "tickets", "prediction_id": "r", "label": "a", "index": -1},
            {"model": "tickets", "prediction_id": "r", "label": "a", "strategy": "hunch"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    with pytest.raises(ValidationError) as err:
        read_labelled(path, FORMATS["jsonl"])
    message = err.value.message
    assert "5 bad row(s), nothing stored" in message
    for needle in ("line 2: prediction_id", "line 3: label", "line 4: index", "line 5: strategy", "line 6: not JSON"):
        assert needle in message
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"model": "a", "prediction_id": "r", "label": "x"}) + "\n" +
                     json.dumps({"model": "b", "prediction_id": "s", "label": "x"}) + "\n")
    with pytest.raises(ValidationError, match="several models"):
        read_labelled(mixed, FORMATS["jsonl"])
    with pytest.raises(ValidationError, match="is not --model"):
        read_labelled(mixed, FORMATS["jsonl"], model="a")
