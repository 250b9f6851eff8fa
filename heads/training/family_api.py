"""What a head family is (heads.training.families holds them by name): the data a family searches
and refits on, the candidates it returns, and the served model it builds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np

    from heads.model import HeadModel
    from heads.training.params import TrainParams
    from heads.training.selection import Scored

Progress = Callable[[dict[str, Any]], None]


@dataclass
class SearchData:
    """What every family searches on. Integer labels in [0, n_classes); `X_sel` is None under
    cross-validation (`folds`: member k fits without fold k and predicts it) or without validation."""

    p: TrainParams
    seed: int
    n_classes: int
    X_fit: np.ndarray  # raw embeddings the candidates fit on
    y_fit: np.ndarray
    X_sel: np.ndarray | None  # held-out embeddings scored for selection (given val or split)
    y_sel: np.ndarray | None
    folds: np.ndarray | None
    validated: bool  # False: nothing to compare on, one candidate (the family's default) is fitted
    class_w: np.ndarray  # per-class weights of the fitting split (kept in the refit)
    score: Callable[[np.ndarray | None], Scored]  # validation probabilities [n_sel, C] -> Scored
    first_index: int = 0  # index of this family's first candidate among all candidates (progress)
    progress: Progress | None = None
    feature_set: str | None = None  # the embedder feature set X_fit / X_sel are of (None: not named)
    primary: bool = True  # the first feature set, the default candidate's (a family may search less on others)
    primary_found: list[Candidate] = field(default_factory=list)  # the candidates fitted on the first set
    primary_block: slice | None = None  # the columns of X_fit that are the first set's vectors, if any
    contained: bool = False  # another set given to the trainer holds these vectors as a block (default in all6)
    earlier: list[Candidate] = field(default_factory=list)  # candidates already fitted on these vectors


@dataclass
class Candidate:
    """One fitted candidate of a family, with its validation outcome."""

    family: str
    params: dict[str, Any]  # what identifies it in the family (overrides, C, ...)
    scored: Scored
    val_proba: np.ndarray | None  # [n_sel, C] validation probabilities (before the prior adjustment)
    fitted: Any  # the family's own search fit (the served model when there is no refit)
    time_s: float  # wall-clock seconds of its fit (and scoring)
    record: dict[str, Any] = field(default_factory=dict)  # family-specific facts: epochs, iterations
    feature_set: str | None = None  # set by the trainer: the feature set it was fitted on
    cpu_s: float = 0.0  # CPU seconds of the same (this process): comparable on a shared machine, wall is not

    def entry(self) -> dict[str, Any]:
        """Its line in the selection record (metrics.json `selection.candidates`)."""
        named = {} if self.feature_set is None else {"feature_set": self.feature_set}
        return {"family": self.family, **named, "params": self.params, "val_score": self.scored.score,
                **self.record, "prior_adjustment": self.scored.prior_adjustment, "time_s": round(self.time_s, 3),
                "cpu_s": round(self.cpu_s, 3)}


class Clock:
    """Wall and CPU seconds since it was made. CPU seconds (time.process_time: every thread of this
    process) measure a fit's cost on a busy machine, where wall time mostly measures the neighbours."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def wall_s(self) -> float:
        return time.perf_counter() - self.wall0

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu0


@dataclass
class FinalData:
    """What the chosen family builds the served model from."""

    p: TrainParams
    seed: int
    n_classes: int
    labels: list[str]
    X: np.ndarray  # every example (train + val when given)
    y: np.ndarray
    refit: bool  # retrain on (X, y); otherwise serve the search fit (under cross-validation: fold members)
    class_w: np.ndarray
    shift: np.ndarray  # [C] prior adjustment to add to the output logits
    progress: Progress | None = None


@dataclass
class Final:
    build: Callable[[dict[str, Any]], HeadModel]  # meta -> the served model
    params: TrainParams  # the settings of the final model
    meta: dict[str, Any]  # facts of the final fit for `chosen` (C and iterations, epochs, ...)


class Family(Protocol):
    name: str

    def default_params(self, p: TrainParams) -> dict[str, Any] | None: ...

    def search(self, data: SearchData) -> list[Candidate]: ...

    def final(self, chosen: Candidate, data: FinalData) -> Final: ...
