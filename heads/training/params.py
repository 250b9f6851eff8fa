"""Training hyper-parameters: what a head config's `training:` section may set.

Pydantic only (no numpy): head configs are validated by serving processes too (heads.config), which
must not import the optimiser. Family names are checked against heads.training.families, a
plain-Python registry that imports no family module.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedder.feature_sets import KNOWN

_SEARCHABLE = {"hidden_units", "dropout", "input_dropout", "weight_decay", "lr", "label_smoothing", "batch_size",
               "activation", "head_type", "linear_skip"}


class TrainParams(BaseModel):
    """Hyper-parameters; the defaults are meant to be used as they are."""

    model_config = ConfigDict(extra="forbid")

    families: list[str] = Field(
        default_factory=lambda: ["mlp", "logreg", "blend"], min_length=1,
        description="head families compared on the validation data (heads.training.families), in this order; the "
                    "best validation score wins (ties: the simpler logreg). mlp: the AdamW-trained network of "
                    "head_type over search_grid; logreg: scikit-learn's LogisticRegression (L2, lbfgs) on the raw "
                    "embeddings, C from logreg_c_grid; blend: the two averaged in probability (heads.training.blend)")
    logreg_c_grid: list[float] = Field(
        default_factory=lambda: [10.0], min_length=1,
        description="inverse L2 strength C of the logreg family (scikit-learn's LogisticRegression(C) on the "
                    "raw embeddings). The middle value is the default candidate that others must clearly beat "
                    "on the validation data; with several values the family walks the grid from the middle "
                    "(e.g. [1, 3, 10, 30, 100, 300]; 5 more fits per value tried). Default: C=10 alone: the "
                    "walk was never the choice on the tuning half and cost 3-4x logreg's fits")
    logreg_first_set_only: bool = Field(
        True, description="fit the logreg family on the first of several feature sets only (the baseline's): on "
                          "all6 each fit costs ~6x and the MLP family is the one that gains from it; the blend "
                          "family still pairs it with the MLP of another set that contains the first set's vector")
    mlp_on_contained_sets: bool = Field(
        False, description="also fit the mlp family (and the blend) on a feature set that another given set holds "
                           "as a block (default, inside all6): the MLP on the larger set sees the same vector, and "
                           "the smaller set's MLP or blend was never the choice on the tuning half")
    logreg_max_iter: int = Field(1000, ge=1, description="lbfgs iterations per logreg fit (LogisticRegression max_iter)")
    logreg_tol: float = Field(1e-4, gt=0, description="LogisticRegression tol (scikit-learn's default)")
    head_type: Literal["mlp", "logreg"] = Field("mlp", description="network of the mlp family (logreg here: "
                                                                    "trained by AdamW with early stopping)")
    hidden_units: int = Field(128, ge=1, le=8192, description="per ensemble member")
    linear_skip: bool = Field(False, description="mlp: add a linear path from the input to the logits")
    activation: Literal["relu", "gelu"] = "relu"
    lr: float | None = Field(None, gt=0, description="Adam step size; None: 3e-3 for mlp, 1e-2 for logreg")
    epochs_max: int = Field(40, ge=1)
    patience: int = Field(6, ge=1, description="epochs without a better val score before stopping")
    lr_decay: float = Field(0.5, gt=0, le=1, description="multiply the learning rate by this on a val plateau")
    lr_decay_patience: int = Field(2, ge=1, description="epochs without a better val score before decaying")
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(1e-2, ge=0, description="decoupled (AdamW) weight decay on weight matrices")
    dropout: float = Field(0.5, ge=0, lt=1, description="on the hidden layer")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="on the (scaled) embedding")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighting: Literal["balanced", "none"] = Field(
        "none", description="none: every example counts once, as in the LogisticRegression baseline (best for "
                            "accuracy); balanced: n / (C * n_c) per class, for macro metrics on imbalanced data")
    new_class_max_weight: float = Field(
        5.0, ge=1, description="a class only feedback has taught (train_head's new_classes) counts each example up to "
                               "this many times, never above the other classes' mean count: labels picked by a review "
                               "queue hold few of a class that has just appeared, and at weight 1 the head rarely "
                               "predicts it (1: off)")
    prior_adjustment: float | Literal["auto"] = Field(
        "auto", description="tau: tau * log(class prior) is added to the output logits of a class-weighted model "
                            "(0 keeps the balanced decision rule, 1 restores the training prior); 'auto' picks "
                            "tau from prior_adjustment_grid on the validation predictions, moving off 0 only for "
                            "a clear gain. Ignored without class weighting.")
    prior_adjustment_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    prior_adjustment_min_gain: float = Field(
        0.0025, ge=0, description="'auto' moves tau off 0 only if that raises the validation score this much")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="held out of train when cross-validation does "
                                                              "not apply and there is no val split")
    cv_folds: int = Field(5, ge=0, le=20, description="folds for model selection (0/1: off)")
    cv_max_examples: int = Field(50_000, ge=0, description="cross-validate up to this many labelled examples "
                                                            "(train, plus val when cv_pool_val)")
    cv_pool_val: bool = Field(True, description="a given val split joins the cross-validation folds (selection "
                                                "on every labelled row, as the refit uses them all); False: "
                                                "select on the given val split alone")
    feature_sets: list[str] = Field(
        default_factory=lambda: list(KNOWN), min_length=1,
        description="the embedder feature sets a head config's `feature_set: auto` compares (the first is the "
                    "default's: the baseline candidate is logreg at the default C on it); every family's "
                    "candidates are fitted on each set and chosen by the same validation evidence")
    selection_metric: Literal["accuracy", "f1_weighted", "f1_macro"] = "accuracy"
    selection_min_gain: float = Field(
        0.0025, ge=0, description="a candidate replaces the default (logreg at the middle of logreg_c_grid, C=10) only "
                                  "if it raises the validation score this much and wins clearly example-wise")
    selection_alpha: float = Field(
        0.01, gt=0, lt=1, description="a candidate (or a prior adjustment) replaces the default only if McNemar's "
                                      "one-sided test on the validation examples (under cross-validation: every "
                                      "row's out-of-fold prediction) rejects 'no better' at this level, "
                                      "Bonferroni-corrected for the number of alternatives compared; under "
                                      "cross-validation it must also not lose on a majority of the folds")
    refit: bool = Field(True, description="retrain the chosen settings on all the data (train + val)")
    n_ensemble: int = Field(2, ge=1, le=16, description="members (different initialisations) averaged in "
                                                         "probability in the final model")
    input_scaling: Literal["center_scale", "standardize", "none"] = Field(
        "center_scale", description="inputs of the mlp family (logreg sees the raw embeddings): center_scale: "
                                    "subtract the mean, one global scale (keeps the embedding's geometry); "
                                    "standardize: per-dimension z-scores")
    blas_threads: int | None = Field(
        1, ge=1, description="BLAS and OpenMP threads while training (None leaves them alone). The matmuls are "
                             "small: more threads gain little and crawl when cores are shared")
    search_grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"hidden_units": [128]},
        description="grid (cartesian product) of overrides tried on the validation data; "
                    "epochs come from early stopping",
    )

    @field_validator("search_grid")
    @classmethod
    def _known_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        unknown = set(grid) - _SEARCHABLE
        if unknown:
            raise ValueError(f"search_grid keys {sorted(unknown)} are not searchable (one of {sorted(_SEARCHABLE)})")
        if any(len(v) == 0 for v in grid.values()):
            raise ValueError("search_grid lists must not be empty")
        return grid

    @field_validator("logreg_c_grid")
    @classmethod
    def _positive_cs(cls, grid: list[float]) -> list[float]:
        if any(not c > 0 for c in grid):
            raise ValueError("logreg_c_grid values must be > 0")
        return sorted(set(grid))

    @field_validator("feature_sets")
    @classmethod
    def _known_sets(cls, sets: list[str]) -> list[str]:
        unknown = [s for s in sets if s not in KNOWN]
        if unknown:
            raise ValueError(f"unknown feature sets {unknown} (one of {list(KNOWN)})")
        return list(dict.fromkeys(sets))

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        from heads.training.families import names  # the registry: plain Python, family modules load on use

        unknown = [f for f in families if f not in names()]
        if unknown:
            raise ValueError(f"unknown head families {unknown} (one of {names()})")
        return list(dict.fromkeys(families))

    def candidates(self) -> list[dict[str, Any]]:
        keys = sorted(self.search_grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.search_grid[k] for k in keys))]

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 3e-3 if self.head_type == "mlp" else 1e-2
