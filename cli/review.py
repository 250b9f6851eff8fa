"""`polyhead review NAME` and `polyhead feedback --import FILE`: the review queue, in the tools labellers use.

Formats (``FORMATS``, a registry: each has an exporter and a reader of the labelled file):

- ``label-studio``: a JSON array of Label Studio tasks (text classification, a ``choices`` control named
  ``label`` on the ``text`` object): ``data`` holds the text and the ids needed to send the label back,
  ``predictions`` the head's answer (``model_version`` ``head@version``, ``score`` its probability, so
  Label Studio can sort by it). Reading takes Label Studio's JSON export: the latest annotation of each
  task that was not cancelled; tasks nobody annotated are skipped and counted.
- ``argilla``: JSON lines of Argilla records: ``fields.text``, ``metadata`` (the ids), ``suggestions``
  (question ``label``: value, score, agent ``head@version``). Reading takes a record's ``responses``
  (Argilla 1.x: ``[{"values": {"label": {"value": ...}}, "status": "submitted"}]``; 2.x:
  ``{"label": [{"value": ...}]}``), only submitted ones; records without one are skipped and counted.
- ``jsonl``: one plain JSON object per item (the API's review item, ``label`` null); reading takes
  ``label`` where it is set.

Importing validates every row first (ids, label, strategy) and names each bad row; with any bad row
nothing is stored. The rows then go through the gateway's POST /feedback (same keys, same label
checks): first as a dry run of every chunk, then stored, so a label the model refuses stops the
import before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.gateway_client import call_gateway
from polyhead.errors import PolyheadError, ValidationError
from polyhead.inference_log.review import STRATEGIES

LABEL_QUESTION = "label"  # the Label Studio control / Argilla question the label is read from
FEEDBACK_CHUNK = 1000  # the gateway's MAX_FEEDBACK_ITEMS


# -- the gateway ---------------------------------------------------------------------------------------
def _call(method: str, url: str, *, api_key: str | None, **kwargs) -> dict:
    return call_gateway(method, url, api_key=api_key, **kwargs).json()


def fetch_queue(gateway: str, name: str, *, api_key: str | None = None, **params) -> dict:
    """GET /v1/models/{name}/review (params: n, strategy, score, pool, seed, since, until)."""
    params = {k: v for k, v in params.items() if v is not None}
    return _call("GET", f"{gateway.rstrip('/')}/v1/models/{name}/review", api_key=api_key, params=params)


def send_feedback(gateway: str, name: str, items: list[dict], *, api_key: str | None = None,
                  dry_run: bool = False) -> dict:
    body: dict[str, Any] = {"items": items}
    if dry_run:
        body["dry_run"] = True
    return _call("POST", f"{gateway.rstrip('/')}/v1/models/{name}/feedback", api_key=api_key, json=body)


# -- exporters -------------------------------------------------------------------------------------------
def _agent(queue: dict, item: dict) -> str:
    return f"{queue['model']}@{item['version']}"


def _ids(queue: dict, item: dict) -> dict:
    return {"model": queue["model"], "prediction_id": item["prediction_id"], "index": item["index"],
            "strategy": item["strategy"], "version": item["version"]}


def export_label_studio(queue: dict) -> str:
    tasks = [{"data": {"text": item["text"], **_ids(queue, item), "score": item["score"]},
              "predictions": [{"model_version": _agent(queue, item), "score": item["probability"],
                               "result": [{"from_name": LABEL_QUESTION, "to_name": "text", "type": "choices",
                                           "value": {"choices": [item["predicted"]]}}]}]}
             for item in queue["items"]]
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


def export_argilla(queue: dict) -> str:
    lines = []
    for item in queue["items"]:
        lines.append({"id": f"{item['prediction_id']}:{item['index']}", "fields": {"text": item["text"]},
                      "metadata": {**_ids(queue, item), "score": item["score"]},
                      "suggestions": [{"question_name": LABEL_QUESTION, "value": item["predicted"],
                                       "score": item["probability"], "agent": _agent(queue, item)}]})
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def export_jsonl(queue: dict) -> str:
    return "".join(json.dumps({**item, "model": queue["model"], "label": None}, ensure_ascii=False, default=str) + "\n"
                   for item in queue["items"])


# -- readers: (row number, raw row) -> a feedback row, None when the row carries no label yet ---------------
@dataclass
class Row:
    number: int  # 1-based: a task of a JSON array, a line of a JSONL file
    model: str | None
    prediction_id: Any
    index: Any
    label: Any
    strategy: Any


def _label_studio_row(number: int, task: Any) -> Row | None:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("expected a Label Studio task with a `data` object")
    data = task["data"]
    answered = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not answered:
        return None
    latest = max(answered, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    choices = [r.get("value", {}).get("choices") for r in latest.get("result") or []
               if isinstance(r, dict) and r.get("type") == "choices" and r.get("from_name", LABEL_QUESTION) == LABEL_QUESTION]
    if not choices or not isinstance(choices[0], list) or len(choices[0]) != 1:
        raise ValueError(f"annotation result: expected exactly one choice of `{LABEL_QUESTION}`")
    return Row(number, data.get("model"), data.get("prediction_id"), data.get("index", 0), choices[0][0],
               data.get("strategy"))


def _argilla_label(responses: Any) -> Any:
    if isinstance(responses, list):  # Argilla 1.x: [{"values": {"label": {"value": ...}}, "status": ...}]
        submitted = [r for r in responses if isinstance(r, dict) and r.get("status", "submitted") == "submitted"]
        values = [r.get("values", {}).get(LABEL_QUESTION, {}).get("value") for r in submitted]
    elif isinstance(responses, dict):  # Argilla 2.x: {"label": [{"value": ..., "status"?: ...}]}
        values = [r.get("value") for r in responses.get(LABEL_QUESTION) or []
                  if isinstance(r, dict) and r.get("status", "submitted") == "submitted"]
    else:
        values = []
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def _argilla_row(number: int, record: Any) -> Row | None:
    if not isinstance(record, dict) or not isinstance(record.get("metadata"), dict):
        raise ValueError("expected an Argilla record with a `metadata` object")
    label = _argilla_label(record.get("responses"))
    if label is None:
        return None
    meta = record["metadata"]
    return Row(number, meta.get("model"), meta.get("prediction_id"), meta.get("index", 0), label, meta.get("strategy"))


def _jsonl_row(number: int, row: Any) -> Row | None:
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if row.get("label") is None:
        return None
    return Row(number, row.get("model"), row.get("prediction_id"), row.get("index", 0), row.get("label"),
               row.get("strategy"))


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    export: Callable[[dict], str]
    read_row: Callable[[int, Any], Row | None]
    array: bool  # a JSON array (one document) rather than JSON lines


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("label-studio", ".json", export_label_studio, _label_studio_row, array=True),
    Format("argilla", ".jsonl", export_argilla, _argilla_row, array=False),
    Format("jsonl", ".jsonl", export_jsonl, _jsonl_row, array=False),
]}


def detect_format(path: Path) -> Format:
    """A JSON array is Label Studio's; JSON lines with `suggestions`/`fields` are Argilla records; else plain."""
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("["):
        return FORMATS["label-studio"]
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        obj = json.loads(first)
    except ValueError:
        return FORMATS["jsonl"]  # the reader names the bad line
    if isinstance(obj, dict) and ("suggestions" in obj or "fields" in obj):
        return FORMATS["argilla"]
    return FORMATS["jsonl"]


@dataclass
class ImportPlan:
    model: str
    items: list[dict]
    unanswered: int
    rows: int
    format: str


def read_labelled(path: Path, fmt: Format, model: str | None = None) -> ImportPlan:
    """Every row validated; a ValidationError naming each bad row (by number) when any is bad."""
    text = path.read_text(encoding="utf-8")
    raw: list[tuple[int, Any]] = []
    errors: list[str] = []
    if fmt.array:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"{path}: not a JSON document ({exc})") from None
        if not isinstance(doc, list):
            raise ValidationError(f"{path}: expected a JSON array of tasks")
        raw = list(enumerate(doc, 1))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append((number, json.loads(line)))
                except ValueError as exc:
                    errors.append(f"line {number}: not JSON ({exc.msg})")
    where = "task" if fmt.array else "line"
    items, unanswered, models = [], 0, set()
    for number, obj in raw:
        try:
            row = fmt.read_row(number, obj)
        except (ValueError, AttributeError, TypeError) as exc:
            errors.append(f"{where} {number}: {exc}")
            continue
        if row is None:
            unanswered += 1
            continue
        problems = _check(row)
        if model is None and row.model is not None:
            models.add(row.model)
        if model is not None and row.model is not None and row.model != model:
            problems.append(f"model {row.model!r} is not --model {model!r}")
        if problems:
            errors.append(f"{where} {number}: {'; '.join(problems)}")
            continue
        item = {"prediction_id": row.prediction_id, "index": int(row.index), "label": row.label}
        if row.strategy is not None:
            item["strategy"] = row.strategy
        items.append(item)
    if model is None:
        if len(models) > 1:
            errors.append(f"rows name several models ({', '.join(sorted(models))}): import one model at a time")
        elif not models:
            errors.append("no row names its model: pass --model")
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        raise ValidationError(f"{path}: {len(errors)} bad row(s), nothing stored:\n  " + "\n  ".join(shown))
    return ImportPlan(model or next(iter(models)), items, unanswered, len(raw), fmt.name)


def _check(row: Row) -> list[str]:
    problems = []
    if not isinstance(row.prediction_id, str) or not row.prediction_id.strip() or len(row.prediction_id) > 64 \
            or "\x00" in row.prediction_id:
        problems.append("prediction_id: expected a non-empty string of at most 64 characters (the predict "
                        "answer's prediction_id)")
    if isinstance(row.index, bool) or not isinstance(row.index, int) or not 0 <= row.index <= 4095:
        problems.append(f"index: expected an integer 0-4095, got {row.index!r}")
    if not isinstance(row.label, str) or not row.label.strip() or len(row.label) > 256:
        problems.append(f"label: expected a non-empty string of at most 256 characters, got {row.label!r}")
    if row.strategy is not None and row.strategy not in STRATEGIES:
        problems.append(f"strategy: {row.strategy!r} is not one of {', '.join(STRATEGIES)}")
    return problems


def import_feedback(gateway: str, plan: ImportPlan, *, api_key: str | None = None) -> dict:
    """Dry-run every chunk at the gateway, then store them: a refused row stops the import before any write."""
    chunks = [plan.items[i:i + FEEDBACK_CHUNK] for i in range(0, len(plan.items), FEEDBACK_CHUNK)]
    for start, chunk in zip(range(0, len(plan.items), FEEDBACK_CHUNK), chunks):
        try:
            send_feedback(gateway, plan.model, chunk, api_key=api_key, dry_run=True)
        except PolyheadError as err:
            err.message = f"nothing stored: {_renumber(err.message, start)}"
            raise
    stored = replaced = new_labels = 0
    by_strategy: dict[str, int] = {}
    for chunk in chunks:
        answer = send_feedback(gateway, plan.model, chunk, api_key=api_key)
        stored += answer["stored"]
        replaced += answer["replaced"]
        for item in answer["items"]:
            new_labels += bool(item.get("new_label"))
            key = item.get("strategy") or "direct"
            by_strategy[key] = by_strategy.get(key, 0) + 1
    return {"model": plan.model, "format": plan.format, "rows": plan.rows, "stored": stored, "replaced": replaced,
            "unanswered_skipped": plan.unanswered, "new_label": new_labels, "by_strategy": by_strategy}


def _renumber(message: str, offset: int) -> str:
    """items[i] in a chunk's error -> items[offset + i] of the whole import."""
    import re

    return re.sub(r"items\[(\d+)\]", lambda m: f"items[{int(m.group(1)) + offset}]", message)
