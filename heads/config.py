"""Head configs (configs/heads/<name>.yaml): the one place a head is declared.

A config names its data and, optionally, training and serving options; everything else has a
default. Paths are relative to the config file. A bad config fails with the file, the field and
what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from embedder.feature_sets import AUTO
from heads.training.params import TrainParams

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


class HeadConfigError(ValueError):
    pass


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: Path
    val: Path | None = None
    test: Path | None = None
    text_field: str = "text"
    label_field: str = "label"

    @field_validator("train", "val", "test")
    @classmethod
    def _known_format(cls, path: Path | None) -> Path | None:
        if path is not None and path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"expected a .jsonl or .csv file, got {path.name!r}")
        return path


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field("latest", description="artifact version to serve, or 'latest'")
    top_k: int = Field(3, ge=1, le=100)
    abstain_threshold: float = Field(0.0, ge=0.0, le=1.0, description="below this top probability, answer abstain_label")
    abstain_label: str = "abstain"
    max_texts_per_request: int = Field(64, ge=1, le=4096)
    max_text_chars: int = Field(10_000, ge=1)
    max_explain_words: int = Field(64, ge=1, le=1000, description="words in a text sent to /explain: each costs "
                                   "one more text to embed")
    redact_text: bool = Field(False, description="log only a hash of the input text")
    address: str | None = Field(None, description="head URL for the gateway; default from the gateway's template")
    timeout_s: float | None = Field(None, gt=0, description="gateway -> head timeout for this model; default the gateway's")


class DriftConfig(BaseModel):
    """Drift thresholds of a head (heads.drift): crossing one logs a warning and flags the head."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="keep a drift window (needs an artifact trained with drift stats)")
    window: int = Field(1000, ge=10, le=1_000_000, description="texts in the rolling window")
    min_window: int = Field(200, ge=1, description="texts needed before the head can be flagged")
    label_shift_js: float = Field(0.3, gt=0, le=1, description="flag above this Jensen-Shannon distance (base 2) "
                                                               "between predicted labels and the training prior")
    confidence_shift: float = Field(0.15, gt=0, le=1, description="flag when the mean top probability moves "
                                                                  "further than this from the held-out mean")
    ood_rate: float = Field(0.25, gt=0, le=1, description="flag above this share of texts far from every "
                                                          "training centroid")
    ood_percentile: float = Field(1.0, ge=0, le=100, description="a text is out of distribution below this "
                                                                 "percentile of the training texts' similarity "
                                                                 "to their nearest centroid")


class PromotionConfig(BaseModel):
    """How a challenger becomes the champion, and when a promotion is undone (heads/roles.py,
    heads/promotion.py). Evidence is paired: both versions on the same live texts (shadow)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["manual", "auto"] = Field("manual", description="manual: only `polyhead promote` / POST .../promote; "
                                            "auto: the gate promotes a challenger once every threshold below is met")
    min_shadowed: int = Field(500, ge=0, description="auto: texts the challenger has answered in shadow")
    min_paired_feedback: int = Field(100, ge=1, description="auto: of those, texts with feedback (true labels), direct or the review queue's random slice")
    mcnemar_alpha: float = Field(0.05, gt=0, le=1, description="auto: the challenger must be right on more of the "
                                 "texts where the two disagree, at this level (McNemar's exact paired test)")
    max_class_recall_drop: float = Field(0.05, ge=0, le=1, description="auto: largest allowed drop of any class's "
                                         "recall on the paired feedback (classes with >= min_class_feedback texts)")
    min_class_feedback: int = Field(10, ge=1, description="a class's recall counts once it has this many feedback texts")
    max_offline_drop: float = Field(0.01, ge=0, le=1, description="auto: the challenger's offline test accuracy "
                                    "(artifact metrics) may trail the champion's by at most this")
    max_challengers: int = Field(3, ge=0, le=20, description="challengers shadowed at once; training one more retires "
                                 "the oldest (its artifact stays on disk)")
    guard_s: float = Field(7 * 86400, ge=0, description="after a promotion, how long the guard may roll it back; 0 = no guard")
    guard_min_feedback: int = Field(50, ge=1, description="guard: paired feedback texts since the promotion before it judges")
    guard_margin: float = Field(0.02, ge=0, le=1, description="guard: roll back when the new champion's live accuracy "
                                "is below the previous champion's, on the same texts, by more than this")
    guard_mcnemar_alpha: float | None = Field(0.1, gt=0, le=1, description="guard: the feedback check rolls back "
                                              "only when the previous champion is also right on more of the texts "
                                              "where the two disagree at this level (McNemar's exact paired test; "
                                              "looser than the gate's mcnemar_alpha: the guard errs toward safety); "
                                              "null = the margin alone")
    guard_confidence_margin: float | None = Field(0.1, ge=0, le=1, description="guard: roll back when the new "
                                                  "champion's confidence shift (how far its live mean top probability "
                                                  "is from its own training reference's held-out mean) exceeds the "
                                                  "previous champion's, on the same texts, by more than this; "
                                                  "null = the guard watches feedback only")
    guard_min_shadowed: int = Field(200, ge=1, description="guard: texts both versions answered since the promotion "
                                    "before the confidence-shift check judges")


class RetrainingConfig(BaseModel):
    """When `polyhead retrain` retrains this head (into a challenger); no trigger set = never."""

    model_config = ConfigDict(extra="forbid")

    min_new_feedback: int | None = Field(None, ge=1, description="feedback labels stored since the champion was trained")
    on_drift: bool = Field(False, description="retrain when the head is flagged for drift")
    max_age_days: float | None = Field(None, gt=0, description="retrain when the champion is older than this")
    with_feedback: bool = Field(True, description="add the stored feedback to the training data")


NewLabel = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"\S")]


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    dataset: DatasetConfig
    training: TrainParams = Field(default_factory=TrainParams)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    retraining: RetrainingConfig = Field(default_factory=RetrainingConfig)
    seed: int = 0
    # The embedder output the head is trained on (embedder/feature_sets.py KNOWN), or "auto": the trainer
    # compares training.feature_sets on the same validation evidence as the families. The artifact records
    # the set trained on and serving asks for the artifact's, not the config's. all6 costs 6x the vector in
    # cache and on the wire.
    feature_set: Literal["auto", "default", "all6"] = Field(
        AUTO, description="embedder feature set to train on: auto (the trainer chooses among "
                          "training.feature_sets on validation evidence), default (the 384-d sentence vector) or "
                          "all6 (every layer, 2,304-d)")
    kind: Literal["demo", "shared"] = Field("demo", description="shared = data in ../shared/datasets, not shipped")
    # Labels the head was not trained on, given as feedback: refused (closed), any (open), or these only. Such
    # feedback is stored and reported as pending; `train --with-feedback` adds a class once it has
    # min_new_label_examples texts.
    labels: Literal["closed", "open"] | list[NewLabel] = Field(
        "closed", description="feedback labels beyond the trained ones: closed (refused), open (any), or a list of "
                              "expected new labels")
    min_new_label_examples: int = Field(8, ge=1, le=1_000_000, description="feedback texts a new label needs before "
                                        "`train --with-feedback` adds it as a class")

    source: Path | None = Field(None, exclude=True)

    def resolve(self, path: Path | None) -> Path | None:
        """Dataset paths are relative to the config file's folder."""
        if path is None or path.is_absolute() or self.source is None:
            return path
        return (self.source.parent / path).resolve()

    def allows_new_label(self, label: str) -> bool:
        """May feedback name ``label`` although the served version was not trained on it?"""
        return self.labels == "open" or (isinstance(self.labels, list) and label in self.labels)

    def data_available(self) -> bool:
        return bool(self.resolve(self.dataset.train) and self.resolve(self.dataset.train).exists())


def _describe(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid head config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {field}: {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" else ""))
    return "\n".join(lines)


def load_head_config(path: Path | str) -> HeadConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise HeadConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise HeadConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        config = HeadConfig.model_validate(raw)
    except ValidationError as err:
        raise HeadConfigError(_describe(err, path)) from None
    if config.name != path.stem:
        raise HeadConfigError(f"{path}: name: expected the file's name {path.stem!r}, got {config.name!r}")
    config.source = path.resolve()
    return config


def load_head_configs(folder: Path | str) -> dict[str, HeadConfig]:
    configs = [load_head_config(p) for p in sorted(Path(folder).glob("*.yaml"))]
    return {c.name: c for c in configs}
