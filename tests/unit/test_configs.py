"""Every head config loads; the demo data shipped in configs/datasets is sound; the shared configs
point at ../shared/datasets (checked there when that folder exists). Fast: no model, no training."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from heads.config import HeadConfig, HeadConfigError, load_head_config
from tests.conftest import ROOT

CONFIGS = ROOT / "configs"
DEMO_FILES = sorted((CONFIGS / "heads").glob("*.yaml"))
SHARED_FILES = sorted((CONFIGS / "shared-heads").glob("*.yaml"))
MIN_TRAIN_PER_LABEL = 20
MAX_FILE_BYTES = 200 * 1024


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _rows(path: Path, config: HeadConfig) -> list[tuple[str, str]]:
    """(text, label) per row; fails on a row without either field."""
    text_field, label_field = config.dataset.text_field, config.dataset.label_field
    rows = []
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            records = list(enumerate(csv.DictReader(f), start=2))
    else:
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            assert line.strip(), f"{path}:{i}: empty line"
            records.append((i, json.loads(line)))
    for i, rec in records:
        assert isinstance(rec, dict), f"{path}:{i}: expected an object"
        text, label = rec.get(text_field), rec.get(label_field)
        assert isinstance(text, str) and text.strip(), f"{path}:{i}: missing or empty {text_field!r}"
        assert isinstance(label, str) and label.strip(), f"{path}:{i}: missing or empty {label_field!r}"
        rows.append((text, label))
    return rows


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def test_enough_demo_heads():
    assert len(DEMO_FILES) >= 18, [p.name for p in DEMO_FILES]


def test_config_names_are_unique_across_folders():
    names = [p.stem for p in DEMO_FILES + SHARED_FILES]
    assert len(names) == len(set(names)), [n for n, c in collections.Counter(names).items() if c > 1]


@pytest.mark.parametrize("path", DEMO_FILES, ids=_ids(DEMO_FILES))
def test_demo_config(path: Path):
    config = load_head_config(path)
    assert config.kind == "demo"
    assert config.description.strip(), "a demo head should say what it decides"
    train, test = config.resolve(config.dataset.train), config.resolve(config.dataset.test)
    assert test is not None, "demo heads ship a test split"
    for split in (train, test, config.resolve(config.dataset.val)):
        if split is not None:
            assert _inside(split, ROOT), f"{split} is outside the repository"
            assert split.is_file(), f"{split} is missing"

    train_rows, test_rows = _rows(train, config), _rows(test, config)
    counts = collections.Counter(label for _, label in train_rows)
    assert len(counts) >= 2, f"only labels {sorted(counts)}"
    few = {label: n for label, n in counts.items() if n < MIN_TRAIN_PER_LABEL}
    assert not few, f"labels with fewer than {MIN_TRAIN_PER_LABEL} train examples: {few}"
    unknown = {label for _, label in test_rows} - set(counts)
    assert not unknown, f"test labels not in train: {sorted(unknown)}"
    train_texts = {text.strip().lower() for text, _ in train_rows}
    leaked = [text for text, _ in test_rows if text.strip().lower() in train_texts]
    assert not leaked, f"test texts also in train: {leaked[:5]}"


@pytest.mark.parametrize("path", SHARED_FILES, ids=_ids(SHARED_FILES))
def test_shared_config(path: Path):
    config = load_head_config(path)
    assert config.kind == "shared"
    for split in (config.dataset.train, config.dataset.val, config.dataset.test):
        if split is not None:
            resolved = config.resolve(split)
            assert not _inside(resolved, ROOT), f"{split}: shared data must stay outside the repository"
            assert "shared/datasets/" in resolved.as_posix(), f"{split}: expected a path into ../shared/datasets"
    assert config.dataset.test is not None


@pytest.mark.needs_shared_datasets
@pytest.mark.parametrize("path", SHARED_FILES, ids=_ids(SHARED_FILES))
def test_shared_config_data_exists(path: Path, shared_datasets: Path):
    config = load_head_config(path)
    for split in (config.dataset.train, config.dataset.val, config.dataset.test):
        if split is not None:
            resolved = config.resolve(split)
            assert _inside(resolved, shared_datasets), f"{resolved} is not under {shared_datasets}"
            assert resolved.is_file(), f"{resolved} is missing"
    assert config.data_available()
    # a val split wherever the dataset has one
    val_file = config.resolve(config.dataset.train).with_name("val.jsonl")
    assert (config.dataset.val is not None) == val_file.exists()


def test_bad_field_names_file_and_field(tmp_path: Path):
    bad = tmp_path / "bad-head.yaml"
    bad.write_text(
        "name: bad-head\ndataset:\n  train: data/train.jsonl\nserving:\n  top_k: 0\n", encoding="utf-8"
    )
    with pytest.raises(HeadConfigError) as err:
        load_head_config(bad)
    assert str(bad) in str(err.value)
    assert "serving.top_k" in str(err.value)


def test_unknown_field_names_file_and_field(tmp_path: Path):
    bad = tmp_path / "typo-head.yaml"
    bad.write_text("name: typo-head\ndataset:\n  train: t.jsonl\ntrainig:\n  lr: 0.1\n", encoding="utf-8")
    with pytest.raises(HeadConfigError) as err:
        load_head_config(bad)
    assert str(bad) in str(err.value) and "trainig" in str(err.value)


def test_name_must_match_file(tmp_path: Path):
    bad = tmp_path / "one-name.yaml"
    bad.write_text("name: other-name\ndataset:\n  train: t.jsonl\n", encoding="utf-8")
    with pytest.raises(HeadConfigError, match="name"):
        load_head_config(bad)


def test_no_large_files_under_configs():
    large = {str(p.relative_to(ROOT)): p.stat().st_size for p in CONFIGS.rglob("*")
             if p.is_file() and p.stat().st_size > MAX_FILE_BYTES}
    assert not large, f"files over {MAX_FILE_BYTES} bytes under configs/: {large}"


def test_readme_documents_every_field():
    """configs/README.md lists every config field; a field added to the schema needs a line there."""
    from heads.config import DatasetConfig, DriftConfig, PromotionConfig, RetrainingConfig, ServingConfig
    from heads.training.params import TrainParams

    readme = (CONFIGS / "README.md").read_text(encoding="utf-8")
    sections = (("dataset", DatasetConfig), ("training", TrainParams), ("serving", ServingConfig),
                ("drift", DriftConfig), ("promotion", PromotionConfig), ("retraining", RetrainingConfig))
    fields = [f for f in HeadConfig.model_fields if f not in {"source", *(name for name, _ in sections)}]
    fields += [f"{prefix}.{f}" for prefix, model in sections for f in model.model_fields]
    missing = [f for f in fields if f"`{f}`" not in readme]
    assert not missing, f"configs/README.md does not document {missing}"
