"""The "blend" family: the MLP ensemble and logistic regression, averaged in probability.

Its one candidate pairs the best-scoring "mlp" candidate with the default "logreg" one (C at the
middle of `logreg_c_grid`) fitted on the same vectors: the trainer searches families in order, so
with the default `families` both are already fitted (`SearchData.earlier`) and the blend costs one
average of their validation probabilities; a family missing from `earlier` is searched here. On a
feature set that holds the first set's vector as a block (all6 holds the default vector), the
logreg part is the first set's candidate, read from that block: logistic regression is fitted on
the first set only (`logreg_first_set_only`), and on all6 it would cost ~6x.

The served model is an ordinary "mlp" HeadModel (no new head type, nothing changes in serving):
the `n_ensemble` MLP members plus one member whose hidden layer is zero and whose linear skip `Ws`
is the logistic regression's weights, so logistic regression weighs 1 / (n_ensemble + 1) of the
average, and the validation probabilities are blended with that weight. Each part is refitted as its
own family refits it (the MLP for the median of its folds' best epochs, logreg from a cold start).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from heads.model import HeadModel
from heads.training import families as registry
from heads.training.family_api import Candidate, Clock, Final, FinalData, SearchData
from heads.training.params import TrainParams


def logreg_weight(p: TrainParams) -> float:
    return 1.0 / (p.n_ensemble + 1)


def _part(data: SearchData, family: str, pick) -> tuple[Candidate, slice | None]:
    """The family's candidate on these vectors, or on the first set's when these hold them as a block."""
    found = [c for c in data.earlier if c.family == family]
    if found:
        return pick(found), None
    if data.primary_block is not None and not data.primary:
        found = [c for c in data.primary_found if c.family == family]
        if found:
            return pick(found), data.primary_block
    return pick(registry.get(family).search(replace(data, earlier=[], primary=True))), None


class BlendFamily:
    name = "blend"

    def default_params(self, p: TrainParams) -> dict[str, Any] | None:
        return None

    def search(self, data: SearchData) -> list[Candidate]:
        if data.validated and data.contained and not data.p.mlp_on_contained_sets:
            return []  # as the mlp family: blended on the set holding these vectors instead
        clock = Clock()
        default_c = registry.get("logreg").default_params(data.p)
        lr, block = _part(data, "logreg", lambda cs: next((c for c in cs if c.params == default_c), cs[0]))
        mlp, _ = _part(data, "mlp", lambda cs: max(cs, key=lambda c: (np.nan_to_num(c.scored.score, nan=-1.0))))
        proba = None
        if lr.val_proba is not None and mlp.val_proba is not None:
            w = logreg_weight(data.p)
            proba = (w * lr.val_proba + (1 - w) * mlp.val_proba).astype(np.float32)
        record = {"logreg_weight": round(logreg_weight(data.p), 4),
                  **({} if block is None else {"logreg_on": lr.feature_set, "logreg_columns": [block.start, block.stop]}),
                  **{k: v for k, v in mlp.record.items() if k in ("epochs", "refit_epochs", "fold_epochs")}}
        return [Candidate(self.name, {"mlp": mlp.params, "logreg": lr.params}, data.score(proba), proba,
                          (mlp, lr, block), clock.wall_s(), record, cpu_s=clock.cpu_s())]

    def final(self, chosen: Candidate, data: FinalData) -> Final:
        mlp, lr, block = chosen.fitted
        mlp_final = registry.get("mlp").final(mlp, data)
        lr_final = registry.get("logreg").final(lr, data if block is None else replace(data, X=data.X[:, block]))

        def build(meta: dict[str, Any]) -> HeadModel:
            linear = lr_final.build({})
            if block is not None:  # read the first set's vector from its block of these inputs
                W = np.zeros((linear.n_members, data.X.shape[1], linear.n_classes), np.float32)
                W[:, block] = linear.weights["W"]
                linear = HeadModel("logreg", {"W": W, "b": linear.weights["b"]}, linear.labels)
            return combine(mlp_final.build({}), linear, meta)

        return Final(build, mlp_final.params, {"epochs": mlp_final.meta.get("epochs", 0), "mlp": mlp_final.meta,
                                              "logreg": lr_final.meta})


def combine(mlp: HeadModel, logreg: HeadModel, meta: dict[str, Any]) -> HeadModel:
    """One "mlp" HeadModel whose members are `mlp`'s plus each `logreg` member as a linear skip over a
    zero hidden layer (probabilities averaged over all members, as for any ensemble)."""
    w = mlp.weights
    K, D, H = w["W1"].shape
    C = w["W2"].shape[2]
    L = logreg.weights["W"].shape[0]
    f32 = np.float32
    weights = {
        "W1": np.concatenate([w["W1"], np.zeros((L, D, H), f32)]),
        "b1": np.concatenate([w["b1"], np.zeros((L, H), f32)]),
        "W2": np.concatenate([w["W2"], np.zeros((L, H, C), f32)]),
        "b2": np.concatenate([w["b2"], logreg.weights["b"]]),
        "Ws": np.concatenate([w.get("Ws", np.zeros((K, D, C), f32)), logreg.weights["W"]]),
    }
    return HeadModel("mlp", weights, mlp.labels, activation=mlp.activation, meta=meta)


FAMILY = BlendFamily()
