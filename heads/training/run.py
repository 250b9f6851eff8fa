"""The training pipeline behind `polyhead train CONFIG`: data -> embeddings -> head -> artifact.

Embeddings come from the embedder over gRPC (a streamed bulk call), so re-training a head, or
training another head on overlapping texts, is served from the embedder's cache. With
`feature_set: auto` (the default) every set of `training.feature_sets` the embedder serves is
embedded and the trainer chooses among them; the artifact records the chosen set and its fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from embedder.client import feature_sets as served_sets
from embedder.feature_sets import AUTO, DEFAULT
from heads.artifacts import write_artifact
from heads.config import HeadConfig
from heads.roles import read_state, register_trained, update_state
from heads.training.drift_reference import build_reference
from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.pseudo_labels import reliability
from polyhead import __version__
from polyhead.errors import UnavailableError, ValidationError

EMBED_CHUNK = 64
EMBED_RESUMES = 3  # streams ended (UNAVAILABLE) in a row with no chunk answered before embed_all gives up


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class TrainReport:
    name: str
    version: str
    path: Path
    metrics: dict
    train_time_s: float
    embed_time_s: float
    feedback: dict | None = None  # with_feedback: what merge_feedback added and skipped
    role: str = "champion"  # heads/roles.py: "champion" (served) or "challenger" (shadow only)


def read_feedback(db_url: str, head: str, given_by: list[str] | None = None) -> list:
    """The head's stored feedback with its logged text (None where redacted), oldest first; only the
    feedback given by these API keys (names; "anonymous": with keys off) when `given_by` is set."""
    from polyhead.inference_log.feedback import feedback_examples
    from polyhead.inference_log.schema import make_engine, migrate

    engine = make_engine(db_url)
    try:
        migrate(engine)  # a DB no head has written to yet simply has no feedback
        return feedback_examples(engine, head, given_by=given_by)
    finally:
        engine.dispose()


def mark_feedback_used(db_url: str, head: str, examples: list, version: str, labels: set[str]) -> None:
    """Record that `version` was trained on the head's feedback up to the newest of `examples`, so
    retention may prune the raw rows they label (polyhead.inference_log.feedback.record_training_feedback).
    The mark stops short of the oldest feedback whose label the version lacks (a pending new label
    still gathering texts): retention keeps it, and everything after it, for a later run."""
    from polyhead.inference_log.feedback import record_training_feedback
    from polyhead.inference_log.schema import make_engine

    stamps = [ex.ts for ex in examples if ex.ts is not None]
    waiting = [ex.ts for ex in examples if ex.ts is not None and ex.text is not None and ex.label not in labels]
    if not stamps:
        return
    through = min(waiting) - timedelta(microseconds=1) if waiting else max(stamps)
    engine = make_engine(db_url)
    try:
        record_training_feedback(engine, head, through, version)
    finally:
        engine.dispose()


def merge_feedback(train: Split, examples: list, exclude: set[str], *,
                   allows_new_label: Callable[[str], bool] = lambda label: False,
                   min_new_label_examples: int = 8) -> tuple[Split, dict]:
    """Add feedback (text, true label) rows to the training split.

    Skipped and counted: redacted rows (the log kept only a hash of the text), texts already in the
    data (``exclude``: every split, so a test text never leaks into training), texts given feedback
    more than once (the latest label wins), and labels the training data does not have, unless the
    head's config allows them (``allows_new_label``): such a label becomes a new class once it has
    ``min_new_label_examples`` texts (``new_classes``); below that it stays pending and is skipped."""
    known_labels = set(train.labels)
    seen = {t.strip() for t in exclude}
    rows: list[tuple[str, str]] = []  # newest first
    counts = {"feedback_rows": len(examples), "added": 0, "duplicates_skipped": 0, "redacted_skipped": 0,
              "unknown_label_skipped": 0}
    for ex in reversed(examples):  # newest first: the latest label of a text wins
        if ex.text is None:
            counts["redacted_skipped"] += 1
        elif ex.text.strip() in seen or not ex.text.strip():
            counts["duplicates_skipped"] += 1
        elif ex.label not in known_labels and not allows_new_label(ex.label):
            counts["unknown_label_skipped"] += 1
        else:
            seen.add(ex.text.strip())
            rows.append((ex.text, ex.label))
    per_new: dict[str, int] = {}
    for _, label in rows:
        if label not in known_labels:
            per_new[label] = per_new.get(label, 0) + 1
    new_classes = sorted(label for label, n in per_new.items() if n >= min_new_label_examples)
    pending = {label: n for label, n in sorted(per_new.items()) if n < min_new_label_examples}
    rows = [(text, label) for text, label in rows if label not in pending]
    if per_new:
        counts.update({"new_classes": new_classes, "pending_labels": pending,
                       "pending_skipped": sum(pending.values()), "min_new_label_examples": min_new_label_examples})
    added_texts = [text for text, _ in rows][::-1]
    added_labels = [label for _, label in rows][::-1]
    counts["added"] = len(added_texts)
    added = [list(pair) for pair in zip(added_texts, added_labels)]
    counts["sha256"] = "sha256:" + hashlib.sha256(json.dumps(added, ensure_ascii=False).encode()).hexdigest()
    return Split(train.texts + added_texts, train.labels + added_labels), counts


def _champion_and_val(config: HeadConfig, models_dir: Path, splits: dict) -> tuple:
    """The served version (the champion) and splits with a val split: split off train here when the config
    has none, so that pseudo-labelled texts, added to train afterwards, never reach it."""
    from heads.artifacts import load_artifact
    from heads.training.data import stratified_split

    try:  # the champion (heads/roles.py; `latest` in an old layout): what callers get
        champion = load_artifact(models_dir, config.name, read_state(models_dir, config.name).champion or "latest")
    except Exception as exc:  # noqa: BLE001 - no artifact, or an unreadable one: say so
        raise ValidationError(f"--with-pseudo-labels needs a trained version of {config.name!r} in {models_dir} "
                              f"to label with ({exc})") from None
    if "val" not in splits:
        train = splits["train"]
        index = {label: i for i, label in enumerate(sorted(set(train.labels)))}
        tr, va = stratified_split(np.array([index[y] for y in train.labels]), config.training.val_fraction,
                                  config.seed)
        splits = {**splits, "train": Split([train.texts[i] for i in tr], [train.labels[i] for i in tr]),
                  "val": Split([train.texts[i] for i in va], [train.labels[i] for i in va])}
    return champion, splits


def _add_pseudo_labels(config: HeadConfig, client, champion, splits: dict, by_set: dict, options) -> tuple:
    """(train split, counts); the added texts' vectors are appended to every set's train vectors in `by_set`."""
    from heads.training.pseudo_labels import choose_threshold, confident_predictions, pick

    train = splits["train"]
    counts = {"champion": champion.version, "target_precision": options.target_precision,
              "min_support": options.min_support, "max_share": options.max_share, "threshold": None, "added": 0}
    if champion.feature_set not in by_set:
        counts["skipped"] = f"the champion embeds with {champion.feature_set!r}, not among the sets {sorted(by_set)}"
        return train, counts
    table = champion.metrics.get("held_out_confidence")
    if table is None:
        counts["skipped"] = (f"version {champion.version} has no held-out confidence table in its metrics.json "
                             "(trained before it was recorded, or without validation): retrain it once")
        return train, counts
    chosen = choose_threshold(table, target_precision=options.target_precision, min_support=options.min_support)
    if chosen is None:
        counts["skipped"] = (f"no threshold reaches precision {options.target_precision} on at least "
                             f"{options.min_support} of the champion's {table['n']} held-out answers")
        return train, counts
    threshold, precision, support = chosen
    candidates = confident_predictions(options.db_url, config.name, champion.version, threshold)
    every_text = {t.strip() for s in splits.values() for t in s.texts}
    cap = int(options.max_share * len(train.texts))
    added = pick(candidates, every_text, set(train.labels), cap)
    counts.update({"threshold": threshold, "val_precision": precision, "val_support": support,
                   "candidates": len(candidates), "cap": cap, "added": len(added),
                   "label_distribution": {k: v for k, v in sorted(
                       {label: sum(1 for _, lab, _ in added if lab == label) for _, label, _ in added}.items())}})
    if not added:
        return train, counts
    for feature_set, vectors in by_set.items():
        more, _ = embed_all(client, [t for t, _, _ in added], feature_set=feature_set)
        vectors["train"] = np.concatenate([vectors["train"], more])
    return Split(train.texts + [t for t, _, _ in added], train.labels + [lab for _, lab, _ in added]), counts


def read_split(path: Path, text_field: str, label_field: str) -> Split:
    """JSONL or CSV; a bad row fails with the file, the line and the missing field."""
    texts, labels = [], []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]
    else:
        with path.open(encoding="utf-8") as f:
            rows = [(i + 1, json.loads(line)) for i, line in enumerate(f) if line.strip()]
    for line_no, row in rows:
        text, label = row.get(text_field), row.get(label_field)
        if not isinstance(text, str) or not text.strip():
            raise ValidationError(f"{path}:{line_no}: field {text_field!r} must be a non-empty string", field=text_field)
        if label is None or str(label) == "":
            raise ValidationError(f"{path}:{line_no}: field {label_field!r} is missing", field=label_field)
        texts.append(text)
        labels.append(str(label))
    if not texts:
        raise ValidationError(f"{path}: no rows")
    return Split(texts, labels)


def data_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def new_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def embed_all(client, texts: list[str], on_progress: Callable[[int], None] | None = None,
              feature_set: str = DEFAULT) -> tuple[np.ndarray, str]:
    """Embed through a gRPC stream in chunks; returns vectors and the feature set's fingerprint.

    The embedder ends every connection at its max age (embedder ``max_connection_age_s``, 300 s, so that
    clients rebalance) and when it restarts; a large training set on a busy embedder outlives that. An
    ended stream (UNAVAILABLE) goes on, on a new one, from the first chunk not answered, at most
    ``EMBED_RESUMES`` times in a row without progress."""
    chunks = [texts[i:i + EMBED_CHUNK] for i in range(0, len(texts), EMBED_CHUNK)]
    vectors, fingerprint = [], ""
    stalled = 0
    while len(vectors) < len(chunks):
        rest = chunks[len(vectors):]
        answered = len(vectors)
        try:
            for out in client.embed_stream(rest, timeout_s=max(60.0, sum(map(len, rest)) / 20),
                                           feature_set=feature_set):
                vectors.append(out.vectors)
                if fingerprint and out.fingerprint != fingerprint:
                    raise RuntimeError("the embedder's fingerprint changed during training; retrain")
                fingerprint = out.fingerprint
                if on_progress:
                    on_progress(len(out.vectors))
        except UnavailableError:
            stalled = 0 if len(vectors) > answered else stalled + 1
            if stalled >= EMBED_RESUMES:
                raise
    return np.concatenate(vectors), fingerprint


def candidate_sets(config: HeadConfig, client) -> list[str]:
    """The feature sets to embed: the config's own, or (auto) those of training.feature_sets that the
    embedder serves (an export older than feature sets serves only the default)."""
    if config.feature_set != AUTO:
        return [config.feature_set]
    served = served_sets(client.info())
    sets = [s for s in config.training.feature_sets if s in served]
    if not sets:
        raise ValidationError(f"{config.source}: training.feature_sets {config.training.feature_sets}: the "
                              f"embedder serves none of them (it serves {', '.join(served)})",
                              field="training.feature_sets")
    return sets


def train_from_config(config: HeadConfig, models_dir: Path, client, *, console=None, version: str | None = None,
                      feedback_db_url: str | None = None, feedback_from: list[str] | None = None,
                      promote: bool = False, pseudo_labels=None) -> TrainReport:
    """Train and write a new version. With ``feedback_db_url``, the feedback stored for this head in
    that inference DB joins the training data (merge_feedback; counts go to manifest and metrics);
    ``feedback_from``: only the feedback given by these API keys (names) is trusted.
    The new version is a challenger (shadowed, not served) unless it is the head's first or
    ``promote`` (heads/roles.py)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    ds = config.dataset
    paths = {k: config.resolve(getattr(ds, k)) for k in ("train", "val", "test") if getattr(ds, k) is not None}
    for split, path in paths.items():
        if not path.exists():
            raise ValidationError(f"{config.source}: dataset.{split}: file {path} does not exist", field=f"dataset.{split}")
    splits = {k: read_split(p, ds.text_field, ds.label_field) for k, p in paths.items()}
    feedback_counts, examples = None, []
    if feedback_db_url is not None:
        examples = read_feedback(feedback_db_url, config.name, feedback_from)
        every_text = {t for s in splits.values() for t in s.texts}
        splits["train"], feedback_counts = merge_feedback(
            splits["train"], examples, every_text, allows_new_label=config.allows_new_label,
            min_new_label_examples=config.min_new_label_examples)
        if feedback_from is not None:
            feedback_counts["trusted_keys"] = sorted(feedback_from)  # the manifest says whose labels these are
    champion = None
    if pseudo_labels is not None:
        champion, splits = _champion_and_val(config, models_dir, splits)
    sets = candidate_sets(config, client)
    total = sum(len(s.texts) for s in splits.values()) * len(sets)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=console is False) as progress:
        task = progress.add_task(f"[{config.name}] embedding", total=total)
        started = datetime.now(timezone.utc)
        by_set: dict[str, dict[str, np.ndarray]] = {}  # feature set -> split -> vectors
        fingerprints: dict[str, str] = {}
        for feature_set in sets:
            by_set[feature_set] = {}
            for k, s in splits.items():
                by_set[feature_set][k], fingerprints[feature_set] = embed_all(
                    client, s.texts, lambda n: progress.advance(task, n), feature_set)
        embed_time = (datetime.now(timezone.utc) - started).total_seconds()
        pseudo_counts = None
        if champion is not None:
            splits["train"], pseudo_counts = _add_pseudo_labels(
                config, client, champion, splits, by_set, pseudo_labels)

        fit_task = progress.add_task(f"[{config.name}] training", total=None)
        val = splits.get("val")
        result = train_head({f: v["train"] for f, v in by_set.items()}, splits["train"].labels,
                            {f: v["val"] for f, v in by_set.items()} if val else None, val.labels if val else None,
                            params=config.training, seed=config.seed,
                            new_classes=(feedback_counts or {}).get("new_classes", ()),
                            progress=lambda info: progress.update(fit_task, description=f"[{config.name}] training {info.get('stage', '')}"))
        progress.update(fit_task, total=1, completed=1)
    chosen_set = result.feature_set or DEFAULT
    embedded, fingerprint = by_set[chosen_set], fingerprints[chosen_set]

    metrics = {"val": {"metric": result.val_metric, "score": result.val_score, "source": result.val_source},
               "chosen": result.chosen, "selection": result.selection, "feature_set": chosen_set,
               "train_time_s": round(result.train_time_s, 3),
               "n_train": len(splits["train"].texts)}
    if feedback_counts is not None:
        metrics["feedback"] = feedback_counts
        # Classes that only feedback taught (the test split, if any, cannot score them yet).
        metrics["new_classes"] = feedback_counts.get("new_classes", [])
    if pseudo_counts is not None:
        metrics["pseudo_labels"] = pseudo_counts
    if result.val_proba is not None and result.val_truth is not None:
        # what self-training picks its threshold from (heads.training.pseudo_labels): answers on held-out texts
        metrics["held_out_confidence"] = {"source": result.val_source, **reliability(result.val_proba, result.val_truth)}
    if "test" in splits:
        metrics["test"] = evaluate(result.model, embedded["test"], splits["test"].labels)
    version = version or new_version()
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(),
        "embedder_fingerprint": fingerprint,  # the feature set's: serving refuses vectors of another
        "feature_set": chosen_set,  # serving requests this set (config's auto: the trainer's choice)
        "data_sha256": data_hash(list(paths.values())),
        "code_version": code_version(),
        "head_type": result.model.head_type,
        "labels": list(result.model.labels),
        "params": result.params.model_dump(),
    }
    if feedback_counts is not None:
        manifest["feedback"] = feedback_counts  # the rows added are part of the training data
    if pseudo_counts is not None:
        manifest["pseudo_labels"] = pseudo_counts
        manifest["challenger_of"] = champion.version  # the version whose answers it learnt from
    # Drift reference: the texts the final model was fitted on (train + val when given); the
    # confidence of held-out predictions only (result.val_proba: the val split, out-of-fold under
    # cross-validation, or the held-out part of train), never the test split.
    fitted_on = [embedded["train"]] + ([embedded["val"]] if val else [])
    drift = build_reference(np.concatenate(fitted_on), splits["train"].labels + (val.labels if val else []),
                            result.model.labels, result.val_proba, confidence_source=result.val_source)
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    # Roles first: an old layout's champion is `latest` before this version moves it (heads/roles.py).
    prior = read_state(models_dir, config.name)
    path = write_artifact(models_dir, config.name, version, result.model, manifest=manifest, metrics=metrics,
                          config_yaml=config_yaml, drift=drift)
    if not prior.from_file and prior.champion is not None:
        update_state(models_dir, config.name, lambda s: replace(s, champion=prior.champion))
    if feedback_db_url is not None and feedback_from is None:
        # The version is written: the feedback it read may leave the raw log (retention). Not with
        # --feedback-from: the feedback it left out was not used, so none is marked.
        mark_feedback_used(feedback_db_url, config.name, examples, version, set(result.model.labels))
    state = register_trained(models_dir, config.name, version, promote=promote,
                             max_challengers=config.promotion.max_challengers, guard_s=config.promotion.guard_s)
    role = "champion" if state.champion == version else "challenger"
    return TrainReport(config.name, version, path, metrics, result.train_time_s, embed_time, feedback_counts, role)
