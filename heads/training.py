"""Train a classifier head (numpy only) from sentence embeddings and string labels.

    result = train_head(X_train, y_train, X_val, y_val, params=TrainParams())
    result.model.predict_proba(X)          # a heads.model.HeadModel
    evaluate(result.model, X_test, y_test)  # accuracy, weighted/macro F1, per class, confusion

What `train_head` does:

1. encodes the string labels (sorted), and weights classes for imbalance ("balanced":
   n / (C * n_c), as scikit-learn's; "none" turns it off);
2. standardises the inputs (per-dimension mean/std of the fit data, later folded into the first
   layer, so the served model takes raw embeddings);
3. for each candidate of a small grid (`TrainParams.search_grid`), trains with mini-batch AdamW on
   softmax cross-entropy with label smoothing, dropout and decoupled weight decay, and early-stops
   on the validation metric; the validation data is the given split or, if none, a seeded
   stratified `val_fraction` of the training data;
4. keeps the best candidate (and its best epoch count) and, with `refit` (default), retrains it on
   train+val for that many epochs; `n_ensemble` members (different seeds, trained jointly in one
   wide network) are stored in one HeadModel whose forward averages their probabilities.

Everything is seeded: the same inputs, params and seed give identical weights.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from heads.model import HeadModel, gelu, softmax

Progress = Callable[[dict[str, Any]], None]
_SEARCHABLE = {"hidden_units", "dropout", "input_dropout", "weight_decay", "lr", "label_smoothing", "batch_size",
               "activation", "head_type"}


class TrainParams(BaseModel):
    """Hyper-parameters; the defaults are meant to be used as they are."""

    model_config = ConfigDict(extra="forbid")

    head_type: Literal["mlp", "logreg"] = "mlp"
    hidden_units: int = Field(256, ge=1, le=8192)
    activation: Literal["relu", "gelu"] = "relu"
    lr: float = Field(1e-3, gt=0)
    epochs_max: int = Field(40, ge=1)
    patience: int = Field(4, ge=1, description="epochs without a better val score before stopping")
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-2, ge=0, description="decoupled (AdamW) weight decay on weight matrices")
    dropout: float = Field(0.3, ge=0, lt=1, description="on the hidden layer")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="on the (standardised) embedding")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weighting: Literal["balanced", "none"] = "balanced"
    prior_adjustment: float | Literal["auto"] = Field(
        "auto", description="tau: tau * log(class prior) is added to the output logits of a class-weighted model "
                            "(0 keeps the balanced decision rule, 1 restores the training prior); 'auto' picks "
                            "tau from prior_adjustment_grid on the validation data. Ignored without class weighting.")
    prior_adjustment_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="held out of train when no val split is given")
    selection_metric: Literal["accuracy", "f1_weighted", "f1_macro"] = "accuracy"
    refit: bool = Field(True, description="retrain the chosen settings on train+val")
    n_ensemble: int = Field(1, ge=1, le=16, description="members averaged in probability in the final model")
    input_scaling: Literal["center_scale", "standardize", "none"] = Field(
        "center_scale", description="center_scale: subtract the mean, one global scale (keeps the embedding's "
                                    "geometry); standardize: per-dimension z-scores")
    search_grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"dropout": [0.2, 0.5]},
        description="grid (cartesian product) of overrides tried on the val split; epochs come from early stopping",
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

    def candidates(self) -> list[dict[str, Any]]:
        keys = sorted(self.search_grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.search_grid[k] for k in keys))]


@dataclass
class TrainResult:
    model: HeadModel
    params: TrainParams  # the resolved settings used for the final model (grid choice applied)
    chosen: dict[str, Any]  # the grid choice plus the epoch count
    val_score: float  # selection metric of the chosen candidate on the validation data
    val_metric: str
    train_time_s: float
    search: list[dict[str, Any]] = field(default_factory=list)  # every candidate's score and best epoch
    n_train: int = 0
    n_val: int = 0
    val_source: str = ""  # "given", "split" or "none"


# -- metrics ---------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class index; columns: predicted class index."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support


def _score(cm: np.ndarray, metric: str) -> float:
    n = cm.sum()
    if n == 0:
        return 0.0
    if metric == "accuracy":
        return float(np.trace(cm) / n)
    _, _, f1, support = _prf(cm)
    if metric == "f1_weighted":
        return float((f1 * support).sum() / support.sum())
    present = (support > 0) | (cm.sum(axis=0) > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Metrics for string labels; `labels` fixes the order (labels seen only in the data are appended)."""
    labels = [str(x) for x in labels]
    y_true = [str(x) for x in y_true]
    y_pred = [str(x) for x in y_pred]
    extra = sorted((set(y_true) | set(y_pred)) - set(labels))
    labels = labels + extra
    index = {label: i for i, label in enumerate(labels)}
    t = np.array([index[x] for x in y_true], np.int64)
    p = np.array([index[x] for x in y_pred], np.int64)
    cm = confusion_matrix(t, p, len(labels))
    precision, recall, f1, support = _prf(cm)
    n = int(cm.sum())
    present = (support > 0) | (cm.sum(axis=0) > 0)  # macro over labels in y_true or y_pred, as scikit-learn
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "f1_weighted": float((f1 * support).sum() / support.sum()) if n else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model: HeadModel, X: np.ndarray, y: Sequence[str]) -> dict[str, Any]:
    """accuracy, f1_weighted, f1_macro, per-class precision/recall/f1/support and the confusion
    matrix (rows true, columns predicted) in `model.labels` order."""
    return classification_report(y, model.predict(X), model.labels)


# -- data helpers ----------------------------------------------------------------------------------
def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `fraction` of each class to val, keeping >= 1 of each class in train."""
    rng = np.random.default_rng([seed, 0x5EED])
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx))) if len(idx) >= 2 else 0
        k = min(k, len(idx) - 1)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights, "balanced" = n / (C_present * n_c) (mean sample weight 1)."""
    if mode == "none":
        return np.ones(n_classes, np.float32)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


# -- the network -----------------------------------------------------------------------------------
class _Net:
    """K independent members trained jointly: first layer [D, K*H] (one matmul), second [K, H, C].

    For "logreg" the first layer is the whole model ([D, K*C])."""

    def __init__(self, p: TrainParams, D: int, C: int, K: int, rng: np.random.Generator):
        self.mlp = p.head_type == "mlp"
        self.K, self.C, self.D = K, C, D
        self.H = p.hidden_units if self.mlp else C
        self.act = p.activation
        f32 = np.float32
        if self.mlp:
            lim1 = math.sqrt(6.0 / (D + self.H))  # Glorot uniform
            lim2 = math.sqrt(6.0 / (self.H + C))
            self.params = {
                "W1": rng.uniform(-lim1, lim1, (D, K * self.H)).astype(f32),
                "b1": np.zeros(K * self.H, f32),
                "W2": rng.uniform(-lim2, lim2, (K, self.H, C)).astype(f32),
                "b2": np.zeros((K, C), f32),
            }
        else:
            self.params = {"W1": np.zeros((D, K * C), f32), "b1": np.zeros(K * C, f32)}
        self.decay = {"W1", "W2"}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0

    def _act(self, a: np.ndarray) -> np.ndarray:
        return np.maximum(a, 0) if self.act == "relu" else gelu(a)

    def _act_grad(self, a: np.ndarray) -> np.ndarray:
        if self.act == "relu":
            return (a > 0).astype(np.float32)
        c = np.float32(math.sqrt(2.0 / math.pi))
        t = np.tanh(c * (a + np.float32(0.044715) * a ** 3))
        return np.float32(0.5) * (1 + t) + np.float32(0.5) * a * (1 - t * t) * c * (1 + np.float32(3 * 0.044715) * a * a)

    def proba(self, X: np.ndarray, batch: int = 4096) -> np.ndarray:
        """Ensemble-averaged probabilities [N, C]."""
        out = np.empty((len(X), self.C), np.float32)
        P, K, H, C = self.params, self.K, self.H, self.C
        for s in range(0, len(X), batch):
            a = X[s:s + batch] @ P["W1"] + P["b1"]
            if self.mlp:
                h = self._act(a).reshape(-1, K, H).transpose(1, 0, 2)
                z = np.matmul(h, P["W2"]) + P["b2"][:, None, :]  # [K, B, C]
            else:
                z = a.reshape(-1, K, C).transpose(1, 0, 2)
            out[s:s + batch] = softmax(z, axis=-1).mean(axis=0)
        return out

    def step(self, xb: np.ndarray, target: np.ndarray, sw: np.ndarray, p: TrainParams, rng: np.random.Generator) -> None:
        P, K, H, C = self.params, self.K, self.H, self.C
        B = len(xb)
        f32 = np.float32
        if p.input_dropout > 0:
            keep = 1.0 - p.input_dropout
            xb = xb * ((rng.random(xb.shape, dtype=f32) < keep) / f32(keep))
        a = xb @ P["W1"] + P["b1"]  # [B, K*H]
        grads: dict[str, np.ndarray] = {}
        if self.mlp:
            h = self._act(a)
            mask = None
            if p.dropout > 0:
                keep = 1.0 - p.dropout
                mask = (rng.random(h.shape, dtype=f32) < keep) / f32(keep)
                h = h * mask
            h3 = h.reshape(B, K, H).transpose(1, 0, 2)  # [K, B, H]
            z = np.matmul(h3, P["W2"]) + P["b2"][:, None, :]  # [K, B, C]
        else:
            z = a.reshape(B, K, C).transpose(1, 0, 2)
        g = softmax(z, axis=-1)
        g -= target[None]
        g *= (sw / f32(B))[None, :, None]  # d(mean weighted CE)/dz, per member
        if self.mlp:
            grads["W2"] = np.matmul(h3.transpose(0, 2, 1), g)
            grads["b2"] = g.sum(axis=1)
            dh = np.matmul(g, P["W2"].transpose(0, 2, 1)).transpose(1, 0, 2).reshape(B, K * H)
            if mask is not None:
                dh *= mask
            da = dh * self._act_grad(a)
        else:
            da = g.transpose(1, 0, 2).reshape(B, K * C)
        grads["W1"] = xb.T @ da
        grads["b1"] = da.sum(axis=0)
        self._adamw(grads, p)

    def _adamw(self, grads: dict[str, np.ndarray], p: TrainParams, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> None:
        self.t += 1
        lr_t = p.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for k, g in grads.items():
            w, m, v = self.params[k], self.m[k], self.v[k]
            if k in self.decay and p.weight_decay > 0:
                w *= np.float32(1 - p.lr * p.weight_decay)
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * (g * g)
            w -= np.float32(lr_t) * m / (np.sqrt(v) + np.float32(eps))

    def shifted(self, state: dict[str, np.ndarray], shift: np.ndarray) -> dict[str, np.ndarray]:
        """`state` with `shift` [C] added to every member's output logits."""
        out = dict(state)
        if self.mlp:
            out["b2"] = (state["b2"] + shift[None, :]).astype(np.float32)
        else:
            out["b1"] = (state["b1"].reshape(self.K, self.C) + shift[None, :]).reshape(-1).astype(np.float32)
        return out

    def proba_with(self, state: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        saved, self.params = self.params, state
        try:
            return self.proba(X)
        finally:
            self.params = saved

    def snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def to_head(self, params: dict[str, np.ndarray], labels: list[str], mean: np.ndarray, scale: np.ndarray,
                p: TrainParams, meta: dict[str, Any]) -> HeadModel:
        """Fold the standardisation ((x - mean) * scale) into the first layer and split members."""
        K, H, D = self.K, self.H, self.D
        W1 = params["W1"].astype(np.float64)
        Wf = W1 * scale[:, None]
        bf = params["b1"].astype(np.float64) - (mean * scale) @ W1
        W1k = Wf.reshape(D, K, H).transpose(1, 0, 2).astype(np.float32)
        b1k = bf.reshape(K, H).astype(np.float32)
        if self.mlp:
            weights = {"W1": W1k, "b1": b1k, "W2": params["W2"], "b2": params["b2"]}
            return HeadModel("mlp", weights, labels, activation=p.activation, meta=meta)
        return HeadModel("logreg", {"W": W1k, "b": b1k}, labels, meta=meta)


def _fit(p: TrainParams, X: np.ndarray, y: np.ndarray, C: int, *, K: int, seed: int,
         X_val: np.ndarray | None, y_val: np.ndarray | None, epochs: int, metric: str,
         progress: Progress | None, stage: str) -> tuple[_Net, dict[str, np.ndarray], float, int]:
    """Train; with val data early-stop on `metric` and return the best epoch's weights."""
    rng = np.random.default_rng([seed, 1])
    net = _Net(p, X.shape[1], C, K, rng)
    weights = class_weights(y, C, p.class_weighting)
    sw_all = weights[y]
    ls = p.label_smoothing
    onehot = np.full((C,), ls / C, np.float32)
    best, best_epoch, best_params, bad = -1.0, 0, net.snapshot(), 0
    bs = min(p.batch_size, len(X))
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(X))
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            target = np.broadcast_to(onehot, (len(idx), C)).copy()
            target[np.arange(len(idx)), y[idx]] += np.float32(1.0 - ls)
            net.step(X[idx], target, sw_all[idx], p, rng)
        if X_val is not None and len(X_val):
            pred = net.proba(X_val).argmax(axis=1)
            score = _score(confusion_matrix(y_val, pred, C), metric)
            if progress:
                progress({"stage": stage, "epoch": epoch, "val_score": score})
            if score >= best - 1e-12:  # ties: the later epoch (small val sets tie often)
                best, best_epoch, best_params, bad = score, epoch, net.snapshot(), 0
            else:
                bad += 1
                if bad >= p.patience:
                    break
        elif progress:
            progress({"stage": stage, "epoch": epoch})
    if X_val is None or not len(X_val):
        return net, net.snapshot(), float("nan"), epochs
    return net, best_params, best, best_epoch


def _log_prior(y: np.ndarray, C: int) -> np.ndarray:
    counts = np.bincount(y, minlength=C).astype(np.float64) + 0.5  # +0.5: no log(0) for a class absent here
    return np.log(counts / counts.sum())


def _pick_tau(net: _Net, state: dict[str, np.ndarray], X_val: np.ndarray, y_val: np.ndarray, log_prior: np.ndarray,
              taus: list[float], metric: str, z: float = 1.0) -> tuple[float, float]:
    """The prior adjustment tau with the best val score, guarded against val noise.

    tau = 0 (the balanced decision rule) is the default; another tau must score higher *and* its
    per-example changes must be a real improvement: with b examples it fixes and c it breaks
    (relative to tau = 0), b - c > z * sqrt(b + c) (a McNemar-style one-sigma rule)."""
    def run(tau: float) -> tuple[np.ndarray, float]:
        pred = net.proba_with(net.shifted(state, tau * log_prior), X_val).argmax(axis=1)
        return pred == y_val, _score(confusion_matrix(y_val, pred, net.C), metric)

    base_ok, base = run(0.0)
    best_tau, best = 0.0, base
    for tau in sorted(set(float(t) for t in taus) - {0.0}):
        ok, score = run(tau)
        fixed, broken = int((ok & ~base_ok).sum()), int((~ok & base_ok).sum())
        import os
        if os.environ.get("TAUDBG"): print("   tau", tau, "score", round(score, 4), "base", round(base, 4), "fixed", fixed, "broken", broken)
        if score > best + 1e-9 and fixed - broken > z * math.sqrt(fixed + broken):
            best_tau, best = tau, score
    return best_tau, best


def _standardizer(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) so that (x - mean) * scale is the network input.

    Dead dimensions (all-MiniLM-L6-v2 has a few that are ~1e-32 everywhere) get scale 0: besides
    carrying no signal, their products underflow to subnormal floats, which makes BLAS crawl.
    Small-but-live dimensions are floored so standardising cannot blow them up."""
    std = X.std(axis=0, dtype=np.float64)
    ref = float(np.median(std)) if std.size else 1.0
    dead = std <= 1e-4 * max(ref, 1e-12)
    if mode == "none":
        mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    elif mode == "center_scale":
        mean = X.mean(axis=0, dtype=np.float64)
        scale = np.full(X.shape[1], 1.0 / max(float(np.sqrt(np.mean(std ** 2))), 1e-12))
    else:
        mean = X.mean(axis=0, dtype=np.float64)
        scale = 1.0 / np.maximum(std, 0.25 * ref)
    mean[dead] = 0.0
    scale[dead] = 0.0
    return mean, scale


def train_head(X_train: np.ndarray, y_train: Sequence[str], X_val: np.ndarray | None = None,
               y_val: Sequence[str] | None = None, *, params: TrainParams | None = None, seed: int = 0,
               progress: Progress | None = None) -> TrainResult:
    """Train a head on embeddings [N, D] and string labels; see the module docstring."""
    started = time.perf_counter()
    p = params or TrainParams()
    X_train = np.asarray(X_train, np.float32)
    y_train = np.array([str(v) for v in y_train])
    if X_train.ndim != 2 or len(X_train) != len(y_train):
        raise ValueError(f"X_train {X_train.shape} and y_train ({len(y_train)}) do not match")
    if len(X_train) == 0:
        raise ValueError("no training data")
    given_val = X_val is not None and y_val is not None and len(y_val) > 0
    if given_val:
        X_val = np.asarray(X_val, np.float32)
        y_val = np.array([str(v) for v in y_val])
        if len(X_val) != len(y_val):
            raise ValueError(f"X_val {X_val.shape} and y_val ({len(y_val)}) do not match")
        labels = sorted(set(y_train.tolist()) | set(y_val.tolist()))
    else:
        labels = sorted(set(y_train.tolist()))
    if len(labels) < 2:
        raise ValueError(f"need at least two classes, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    C = len(labels)
    yi = np.array([index[v] for v in y_train], np.int64)

    if given_val:
        Xs_tr, ys_tr = X_train, yi
        Xs_va, ys_va = X_val, np.array([index[v] for v in y_val], np.int64)
        val_source = "given"
    else:
        tr, va = stratified_split(yi, p.val_fraction, seed)
        Xs_tr, ys_tr, Xs_va, ys_va = X_train[tr], yi[tr], X_train[va], yi[va]
        val_source = "split" if len(va) else "none"

    # -- search ----------------------------------------------------------------------------------
    mean, scale = _standardizer(Xs_tr, p.input_scaling)
    s32 = lambda A: ((A - mean) * scale).astype(np.float32)  # noqa: E731
    Ztr, Zva = s32(Xs_tr), s32(Xs_va)
    candidates = p.candidates() if len(Xs_va) else [{}]
    search: list[dict[str, Any]] = []
    best_i, best_state = -1, None
    weighted = p.class_weighting != "none"
    log_prior_tr = _log_prior(ys_tr, C)
    for i, overrides in enumerate(candidates):
        cp = p.model_copy(update=overrides)
        t0 = time.perf_counter()
        K = p.n_ensemble if not p.refit else 1
        net, state, score, epoch = _fit(cp, Ztr, ys_tr, C, K=K, seed=seed, X_val=Zva if len(Zva) else None,
                                        y_val=ys_va, epochs=p.epochs_max, metric=p.selection_metric,
                                        progress=_tagged(progress, "search", i, len(candidates), overrides),
                                        stage="search")
        tau = 0.0
        if weighted and len(Zva):
            if p.prior_adjustment == "auto":
                tau, score = _pick_tau(net, state, Zva, ys_va, log_prior_tr, p.prior_adjustment_grid, p.selection_metric)
            else:
                tau = float(p.prior_adjustment)
                pred = net.proba_with(net.shifted(state, tau * log_prior_tr), Zva).argmax(axis=1)
                score = _score(confusion_matrix(ys_va, pred, C), p.selection_metric)
        elif weighted and p.prior_adjustment != "auto":
            tau = float(p.prior_adjustment)
        search.append({**overrides, "val_score": score, "epochs": epoch, "prior_adjustment": tau,
                       "time_s": round(time.perf_counter() - t0, 3)})
        if best_i < 0 or score > search[best_i]["val_score"] + 1e-9:
            best_i, best_state = i, (net, state, mean, scale)
    chosen = dict(candidates[best_i])
    final = p.model_copy(update=chosen)
    best_epochs = search[best_i]["epochs"]
    val_score = search[best_i]["val_score"]
    tau = search[best_i]["prior_adjustment"]

    # -- final model -----------------------------------------------------------------------------
    meta = {"trainer": "heads.training", "seed": seed, "chosen": chosen, "epochs": best_epochs,
            "val_score": val_score, "val_metric": p.selection_metric, "val_source": val_source,
            "params": final.model_dump(exclude={"search_grid"})}
    if p.refit and len(Xs_va):
        X_all = np.concatenate([X_train, X_val]) if given_val else X_train
        y_all = np.concatenate([yi, ys_va]) if given_val else yi
        mean, scale = _standardizer(X_all, p.input_scaling)
        net, state, _, _ = _fit(final, ((X_all - mean) * scale).astype(np.float32), y_all, C, K=p.n_ensemble,
                                seed=seed, X_val=None, y_val=None, epochs=max(1, best_epochs), metric=p.selection_metric,
                                progress=_tagged(progress, "refit", 0, 1, chosen), stage="refit")
        n_fit, log_prior = len(X_all), _log_prior(y_all, C)
    else:
        assert best_state is not None
        net, state, mean, scale = best_state
        n_fit, log_prior = len(Xs_tr), log_prior_tr
    if tau:
        state = net.shifted(state, tau * log_prior)
    meta["n_fit"] = n_fit
    meta["prior_adjustment"] = tau
    model = net.to_head(state, labels, mean, scale, final, meta)
    elapsed = time.perf_counter() - started
    model.meta["train_time_s"] = round(elapsed, 3)
    return TrainResult(model=model, params=final, chosen={**chosen, "epochs": best_epochs, "prior_adjustment": tau}, val_score=val_score,
                       val_metric=p.selection_metric, train_time_s=elapsed, search=search, n_train=len(X_train),
                       n_val=len(Xs_va), val_source=val_source)


def _tagged(progress: Progress | None, stage: str, i: int, n: int, overrides: dict[str, Any]) -> Progress | None:
    if progress is None:
        return None
    return lambda ev: progress({**ev, "stage": stage, "candidate": i, "of": n, "overrides": overrides})
