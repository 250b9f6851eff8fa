"""Train a classifier head (numpy only) from sentence embeddings and string labels.

    result = train_head(X_train, y_train, X_val, y_val, params=TrainParams())
    result.model.predict_proba(X)           # a heads.model.HeadModel
    evaluate(result.model, X_test, y_test)  # heads.training.evaluation

What `train_head` does:

1. encodes the string labels (sorted); by default every example counts once, as in the baseline
   (`class_weighting="balanced"`: n / (C * n_c) per class, as scikit-learn's, for macro metrics);
2. centres and scales the MLP's inputs (folded into the first layer afterwards, so the served model
   takes raw embeddings);
3. compares head families on the same validation predictions (`families`):
   * "mlp": for each candidate of a small grid (`search_grid`), trains with mini-batch AdamW on
     softmax cross-entropy with label smoothing, dropout and decoupled weight decay, halving the
     learning rate on validation plateaus and early-stopping on the validation metric;
   * "logreg": scikit-learn's LogisticRegression on the raw embeddings (heads.training.logreg)
     over `logreg_c_grid`, walked from its middle C each way while the validation score improves,
     each fit warm-started from its neighbour's. This is the simple baseline; keeping it unless
     another candidate validates clearly better keeps the trainer from losing to it.
   The validation data: the given (X_val, y_val); else, for up to `cv_max_examples` examples,
   `cv_folds`-fold stratified cross-validation (MLP folds train jointly as members of one wide
   network; logreg fits one path per fold; both are scored on their pooled out-of-fold
   predictions, far less noisy than one small split); else a seeded stratified `val_fraction` split;
4. picks the prior adjustment tau (see `TrainParams.prior_adjustment`) on the same validation
   predictions for every candidate; keeps the default candidate (logreg at the grid's middle C)
   unless another one is clearly better on the validation examples: by `selection_min_gain`, and
   by McNemar's one-sided test at `selection_alpha`, Bonferroni-corrected for the number of
   alternatives (as for tau). A few examples of a few hundred are noise, and chasing them (a
   lax test picked the MLP on validation gains that did not hold on test) lost to plain logistic
   regression on held-out data. With `refit` (default) it
   retrains the choice on all the data (train + val) with the training split's class weights: the
   MLP for the chosen number of epochs, replaying the learning-rate schedule; logreg with the
   chosen C from a cold start (at C=10, unweighted: exactly LogisticRegression(C=10) fitted on
   train + val).
   `n_ensemble` MLP members with different initialisations train jointly and are stored in one
   HeadModel whose forward averages their probabilities. `TrainResult.selection` (and the
   artifact's metrics.json) lists every candidate's validation score and the choice.

Defaults (chosen on the benchmark in scripts/bench_heads.py, mean of 3 seeds): an ensemble of 2
ReLU MLPs with 128 hidden units each (~400-550 KB of float32 weights in all), dropout 0.5, AdamW
lr 3e-3, weight decay 1e-2, batch 128, no label smoothing (0.1 cost CLINC150 several points of
out-of-scope recall), at most 40 epochs. The default grid is a single candidate: wider grids
(dropout, lr, hidden size) chosen on the validation data did not beat it on average, the
validation sets being too small to tell such settings apart; epochs and the prior adjustment are
still selected per dataset. The logreg family's C grid (1-300 in scikit-learn's units) is wide on
purpose, to hold whatever C suits a dataset rather than to fit the benchmark sets; its middle,
C=10, the default candidate, is the LogisticRegression(C=10) the trainer must never lose to.

Everything is seeded: the same inputs, params and seed give identical weights. Training runs
BLAS and OpenMP single-threaded by default (threadpoolctl): the matmuls are small, and threads
fighting over shared cores slowed training down six- to eight-fold on a busy 2-core machine
(scikit-learn's LogisticRegression on CLINC150: 12 s with one thread, 44 s with two, load ~6).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np

from heads.model import HeadModel, gelu, softmax
from heads.training import logreg
from heads.training.evaluation import confusion_matrix, score_confusion
from heads.training.params import TrainParams

Progress = Callable[[dict[str, Any]], None]
_TINY = np.float32(1e-15)


@dataclass
class TrainResult:
    model: HeadModel
    params: TrainParams  # the settings of the final model (grid choice applied)
    chosen: dict[str, Any]  # the grid choice, the epoch count and the prior adjustment
    val_score: float  # selection metric of the chosen candidate on the validation predictions
    val_metric: str
    train_time_s: float
    search: list[dict[str, Any]] = field(default_factory=list)  # every candidate's score, epochs, time
    n_train: int = 0
    n_val: int = 0  # examples scored for selection (out-of-fold predictions under cross-validation)
    val_source: str = ""  # "given", "cv", "split" or "none"
    # [n_val, C] held-out probabilities of the chosen candidate at its best epoch, prior adjustment
    # applied: on the given val split, the out-of-fold predictions (cv) or the held-out split. The
    # final (refit) model never trained without these texts, so this is its honest confidence.
    val_proba: np.ndarray | None = None
    selection: dict[str, Any] = field(default_factory=dict)  # metric, source, chosen, every candidate's score


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


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per example: each class dealt round-robin over the k folds, in seeded order."""
    rng = np.random.default_rng([seed, 0xF01D])
    folds = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # spread the remainders of small classes over different folds
    return folds


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights, "balanced" = n / (C_present * n_c) (mean sample weight 1)."""
    if mode == "none":
        return np.ones(n_classes, np.float32)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


def _log_prior(y: np.ndarray, C: int) -> np.ndarray:
    counts = np.bincount(y, minlength=C).astype(np.float64) + 0.5  # +0.5: no log(0) for a class absent here
    return np.log(counts / counts.sum())


def _scaler(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) so that (x - mean) * scale is the network input.

    Dead dimensions (all-MiniLM-L6-v2 has a few that are ~1e-32 everywhere) get scale 0: besides
    carrying no signal, their products underflow to subnormal floats, which makes BLAS crawl.
    Small-but-live dimensions are floored so per-dimension standardising cannot blow them up."""
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


# -- the network -----------------------------------------------------------------------------------
class _Net:
    """K independent members trained jointly: first layer [D, K*H] (one matmul), second [K, H, C].

    For "logreg" the first layer is the whole model ([D, K*C]). Members share batches but not
    initialisation or dropout masks; per-member sample weights let them train on different folds."""

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
            if p.linear_skip:
                self.params["Ws"] = np.zeros((D, K * C), f32)
        else:
            self.params = {"W1": np.zeros((D, K * C), f32), "b1": np.zeros(K * C, f32)}
        self.skip = self.mlp and p.linear_skip
        self.decay = {"W1", "W2", "Ws"}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0
        self.lr = p.resolved_lr()
        self.lr_scale = 1.0

    def _act(self, a: np.ndarray) -> np.ndarray:
        return np.maximum(a, 0) if self.act == "relu" else gelu(a)

    def _act_grad(self, a: np.ndarray) -> np.ndarray:
        if self.act == "relu":
            return (a > 0).astype(np.float32)
        c = np.float32(math.sqrt(2.0 / math.pi))
        t = np.tanh(c * (a + np.float32(0.044715) * a ** 3))
        return np.float32(0.5) * (1 + t) + np.float32(0.5) * a * (1 - t * t) * c * (1 + np.float32(3 * 0.044715) * a * a)

    def member_proba(self, X: np.ndarray, state: dict[str, np.ndarray] | None = None, batch: int = 4096) -> np.ndarray:
        """Per-member probabilities [K, N, C]."""
        P, K, H, C = state or self.params, self.K, self.H, self.C
        out = np.empty((K, len(X), C), np.float32)
        for s in range(0, len(X), batch):
            a = X[s:s + batch] @ P["W1"] + P["b1"]
            if self.mlp:
                h = self._act(a).reshape(-1, K, H).transpose(1, 0, 2)
                z = np.matmul(h, P["W2"]) + P["b2"][:, None, :]  # [K, B, C]
                if self.skip:
                    z += (X[s:s + batch] @ P["Ws"]).reshape(-1, K, C).transpose(1, 0, 2)
            else:
                z = a.reshape(-1, K, C).transpose(1, 0, 2)
            out[:, s:s + batch] = softmax(z, axis=-1)
        return out

    def step(self, xb: np.ndarray, target: np.ndarray, sw: np.ndarray, p: TrainParams, rng: np.random.Generator) -> None:
        """One AdamW step on a batch; `sw` [K, B] per-member sample weights."""
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
            if self.skip:
                z += (xb @ P["Ws"]).reshape(B, K, C).transpose(1, 0, 2)
        else:
            z = a.reshape(B, K, C).transpose(1, 0, 2)
        g = softmax(z, axis=-1)
        g -= target[None]
        g *= (sw / f32(B))[:, :, None]  # d(mean weighted CE)/dz, per member
        if self.mlp:
            grads["W2"] = np.matmul(h3.transpose(0, 2, 1), g)
            grads["b2"] = g.sum(axis=1)
            if self.skip:
                grads["Ws"] = xb.T @ g.transpose(1, 0, 2).reshape(B, K * C)
            dh = np.matmul(g, P["W2"].transpose(0, 2, 1)).transpose(1, 0, 2).reshape(B, K * H)
            if mask is not None:
                dh *= mask
            da = dh * self._act_grad(a)
        else:
            da = g.transpose(1, 0, 2).reshape(B, K * C)
        grads["W1"] = xb.T @ da
        grads["b1"] = da.sum(axis=0)
        for g_ in grads.values():  # squares of tiny gradients would be subnormal, which makes numpy crawl
            g_[np.abs(g_) < _TINY] = 0
        self._adamw(grads, p)

    def _adamw(self, grads: dict[str, np.ndarray], p: TrainParams, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> None:
        self.t += 1
        lr = self.lr * self.lr_scale
        lr_t = lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for k, g in grads.items():
            w, m, v = self.params[k], self.m[k], self.v[k]
            if k in self.decay and p.weight_decay > 0:
                w *= np.float32(1 - lr * p.weight_decay)
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * (g * g)
            w -= np.float32(lr_t) * m / (np.sqrt(v) + np.float32(eps))

    def flush_tiny(self) -> None:
        """Zero Adam moments decaying towards the subnormal range (dead units' moments decay forever)."""
        for d in (self.m, self.v):
            for a in d.values():
                a[np.abs(a) < _TINY * _TINY] = 0

    def shifted(self, state: dict[str, np.ndarray], shift: np.ndarray) -> dict[str, np.ndarray]:
        """`state` with `shift` [C] added to every member's output logits."""
        out = dict(state)
        if self.mlp:
            out["b2"] = (state["b2"] + shift[None, :]).astype(np.float32)
        else:
            out["b1"] = (state["b1"].reshape(self.K, self.C) + shift[None, :]).reshape(-1).astype(np.float32)
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def to_head(self, state: dict[str, np.ndarray], labels: list[str], mean: np.ndarray, scale: np.ndarray,
                p: TrainParams, meta: dict[str, Any]) -> HeadModel:
        """Fold the input scaling ((x - mean) * scale) into the first layer and split the members."""
        K, H, D = self.K, self.H, self.D
        W1 = state["W1"].astype(np.float64)
        Wf = W1 * scale[:, None]
        bf = state["b1"].astype(np.float64) - (mean * scale) @ W1
        W1k = Wf.reshape(D, K, H).transpose(1, 0, 2).astype(np.float32)
        b1k = bf.reshape(K, H).astype(np.float32)
        if self.mlp:
            weights = {"W1": W1k, "b1": b1k, "W2": state["W2"], "b2": state["b2"]}
            if self.skip:
                Ws = state["Ws"].astype(np.float64)
                weights["Ws"] = (Ws * scale[:, None]).reshape(D, K, self.C).transpose(1, 0, 2).astype(np.float32)
                weights["b2"] = (state["b2"] - ((mean * scale) @ Ws).reshape(K, self.C)).astype(np.float32)
            return HeadModel("mlp", weights, labels, activation=p.activation, meta=meta)
        return HeadModel("logreg", {"W": W1k, "b": b1k}, labels, meta=meta)


@dataclass
class _Fit:
    net: _Net
    state: dict[str, np.ndarray]  # weights at the best epoch (the last one without validation)
    score: float
    epochs: int
    lr_plan: list[float]  # learning-rate multiplier per epoch, up to the best epoch
    val_proba: np.ndarray | None  # [n_val, C] validation probabilities at the best epoch


def _fit(p: TrainParams, X: np.ndarray, y: np.ndarray, C: int, *, K: int, seed: int, epochs: int,
         X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, folds: np.ndarray | None = None,
         lr_plan: list[float] | None = None, progress: Progress | None = None,
         class_w: np.ndarray | None = None) -> _Fit:
    """Train K members jointly for up to `epochs` epochs.

    Validation, when there is some, early-stops on the selection metric and decays the learning
    rate on plateaus: on (X_val, y_val) with the members' average; or, with `folds` (K = number of
    folds), member k trains without fold k and predicts it, scored on the pooled out-of-fold
    predictions. `lr_plan` replays a schedule instead (refits). `class_w` fixes the per-class weights
    (default: computed from y)."""
    rng = np.random.default_rng([seed, 1])
    net = _Net(p, X.shape[1], C, K, rng)
    if class_w is None:
        class_w = class_weights(y, C, p.class_weighting)
    sw_all = np.broadcast_to(class_w[y], (K, len(y)))
    if folds is not None:
        sw_all = sw_all * (folds[None, :] != np.arange(K)[:, None])  # member k never sees fold k
    sw_all = np.ascontiguousarray(sw_all, np.float32)
    validate = folds is not None or (X_val is not None and len(X_val) > 0)
    ls = p.label_smoothing
    smooth = np.full((C,), ls / C, np.float32)
    bs = max(1, min(p.batch_size, len(X)))
    best, best_epoch, best_state, best_proba, bad = -1.0, 0, net.snapshot(), None, 0
    plan: list[float] = []
    mult, since_decay = 1.0, 0
    for epoch in range(1, epochs + 1):
        if lr_plan is not None:
            mult = lr_plan[min(epoch, len(lr_plan)) - 1] if lr_plan else 1.0
        net.lr_scale = mult
        plan.append(mult)
        order = rng.permutation(len(X))
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            target = np.broadcast_to(smooth, (len(idx), C)).copy()
            target[np.arange(len(idx)), y[idx]] += np.float32(1.0 - ls)
            net.step(X[idx], target, sw_all[:, idx], p, rng)
        net.flush_tiny()
        if not validate:
            if progress:
                progress({"epoch": epoch})
            continue
        if folds is not None:
            member = net.member_proba(X)
            proba = member[folds, np.arange(len(X))]  # out-of-fold: example i scored by member folds[i]
            truth = y
        else:
            proba = net.member_proba(X_val).mean(axis=0)
            truth = y_val
        score = score_confusion(confusion_matrix(truth, proba.argmax(axis=1), C), p.selection_metric)
        if progress:
            progress({"epoch": epoch, "val_score": score})
        improved = score > best + 1e-9
        if score >= best - 1e-12:  # ties: the later epoch (small validation sets tie often)
            best, best_epoch, best_state, best_proba, bad = score, epoch, net.snapshot(), proba, 0
        else:
            bad += 1
            if bad >= p.patience:
                break
        since_decay = 0 if improved else since_decay + 1
        if since_decay >= p.lr_decay_patience and p.lr_decay < 1:
            mult *= p.lr_decay
            since_decay = 0
    if not validate:
        return _Fit(net, net.snapshot(), float("nan"), epochs, plan, None)
    return _Fit(net, best_state, best, best_epoch, plan[:best_epoch], best_proba)


def _pick_tau(proba: np.ndarray, y: np.ndarray, log_prior: np.ndarray, taus: list[float], metric: str,
              min_score_gain: float = 0.0025, z: float = 1.645, min_gain: int = 2) -> tuple[float, float]:
    """The prior adjustment tau with the best validation score, guarded against validation noise.

    tau = 0 (the balanced decision rule) is the default; another tau must raise the score by at
    least `min_score_gain` *and* be a real improvement example-wise: with b examples it fixes and c
    it breaks (relative to tau = 0), b - c >= min_gain and b - c > z * sqrt(b + c) (McNemar-style),
    so neither a small validation set nor a negligible gain moves the decision rule."""
    logp = np.log(np.maximum(proba, 1e-30))
    C = proba.shape[1]

    def run(tau: float) -> tuple[np.ndarray, float]:
        pred = (logp + tau * log_prior).argmax(axis=1)
        return pred == y, score_confusion(confusion_matrix(y, pred, C), metric)

    base_ok, base = run(0.0)
    best_tau, best = 0.0, base
    for tau in sorted(set(float(t) for t in taus) - {0.0}):
        ok, score = run(tau)
        if score > best + 1e-9 and _clear_gain(ok, score, base_ok, base, min_score_gain, z, min_gain):
            best_tau, best = tau, score
    return best_tau, best


def _z(alpha: float, alternatives: int) -> float:
    """One-sided normal quantile for `alpha`, Bonferroni-corrected: with m alternatives each tested
    against the default, the chance that noise alone moves off the default stays <= alpha."""
    return NormalDist().inv_cdf(1.0 - alpha / max(1, alternatives))


def _clear_gain(ok: np.ndarray, score: float, base_ok: np.ndarray, base: float, min_score_gain: float = 0.0025,
                z: float = 1.645, min_gain: int = 2) -> bool:
    """Whether predictions that are right where `ok` beat the base ones (right where `base_ok`) by
    more than validation noise: the score by `min_score_gain`, and example-wise, with b examples
    fixed and c broken, b - c >= min_gain and b - c > z * sqrt(b + c) (McNemar-style)."""
    fixed, broken = int((ok & ~base_ok).sum()), int((~ok & base_ok).sum())
    gain = fixed - broken
    return score >= base + min_score_gain - 1e-12 and gain >= min_gain and gain > z * math.sqrt(fixed + broken)


def _blas_threads(n: int | None):
    """Limit BLAS and OpenMP threads for the duration (results do not depend on it; speed does).

    scikit-learn (the logreg family) is imported first: threadpoolctl only limits the thread pools of
    libraries already loaded, and scikit-learn brings its own OpenMP runtime."""
    if n is None:
        return contextlib.nullcontext()
    import sklearn.linear_model  # noqa: F401  loads scikit-learn's OpenMP before the limit is set
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def train_head(X_train: np.ndarray, y_train: Sequence[str], X_val: np.ndarray | None = None,
               y_val: Sequence[str] | None = None, *, params: TrainParams | None = None, seed: int = 0,
               progress: Progress | None = None) -> TrainResult:
    """Train a head on embeddings [N, D] and string labels; see the module docstring.

    Labels are strings (other values are converted with str()); the model's labels are sorted.
    `progress`, if given, is called with dicts such as
    {"stage": "search", "candidate": 0, "of": 1, "overrides": {...}, "epoch": 3, "val_score": 0.91}
    and {"stage": "refit", ..., "epoch": 3}.
    """
    p = params or TrainParams()
    with _blas_threads(p.blas_threads):
        return _train_head(X_train, y_train, X_val, y_val, p, seed, progress)


def _train_head(X_train, y_train, X_val, y_val, p: TrainParams, seed: int, progress: Progress | None) -> TrainResult:
    started = time.perf_counter()
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
        if X_val.ndim != 2 or len(X_val) != len(y_val) or X_val.shape[1] != X_train.shape[1]:
            raise ValueError(f"X_val {X_val.shape} and y_val ({len(y_val)}) do not match X_train {X_train.shape}")
        labels = sorted(set(y_train.tolist()) | set(y_val.tolist()))
    else:
        labels = sorted(set(y_train.tolist()))
    if len(labels) < 2:
        raise ValueError(f"need at least two classes, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    C = len(labels)
    yi = np.array([index[v] for v in y_train], np.int64)

    # -- where validation predictions come from ----------------------------------------------------
    folds = None
    if given_val:
        val_source = "given"
        X_fit, y_fit = X_train, yi
        X_sel, y_sel = X_val, np.array([index[v] for v in y_val], np.int64)
    elif p.cv_folds >= 2 and len(X_train) <= p.cv_max_examples and len(X_train) >= 2 * p.cv_folds:
        val_source = "cv"
        X_fit, y_fit = X_train, yi
        X_sel, y_sel = None, yi
        folds = stratified_folds(yi, p.cv_folds, seed)
    else:
        tr, va = stratified_split(yi, p.val_fraction, seed)
        val_source = "split" if len(va) else "none"
        X_fit, y_fit = X_train[tr], yi[tr]
        X_sel, y_sel = X_train[va], yi[va]

    mean, scale = _scaler(X_fit, p.input_scaling)

    def scaled(A: np.ndarray) -> np.ndarray:
        return ((A - mean) * scale).astype(np.float32)

    Z_fit = scaled(X_fit)
    Z_sel = scaled(X_sel) if X_sel is not None and len(X_sel) else None
    weighted = p.class_weighting != "none"
    log_prior_fit = _log_prior(y_fit, C)
    # Class weights come from the training split and stay fixed in the refit: the validated
    # objective is the one refitted, whatever the class mix of the validation split.
    fit_class_w = class_weights(y_fit, C, p.class_weighting)

    # -- search: every family's candidates, scored on the same validation predictions --------------
    correct: dict[int, np.ndarray] = {}  # per candidate: which validation examples it gets right
    val_probas: dict[int, np.ndarray | None] = {}  # per candidate: its validation probabilities (before tau)

    def with_tau(proba: np.ndarray | None) -> tuple[float, float, np.ndarray | None]:
        """(prior adjustment, score, right-or-wrong per example) of validation probabilities."""
        if proba is None:
            return (float(p.prior_adjustment) if weighted and p.prior_adjustment != "auto" else 0.0), float("nan"), None
        if weighted and p.prior_adjustment == "auto":
            tau, _ = _pick_tau(proba, y_sel, log_prior_fit, p.prior_adjustment_grid, p.selection_metric,
                               min_score_gain=p.prior_adjustment_min_gain,
                               z=_z(p.selection_alpha, len(set(p.prior_adjustment_grid) - {0.0})))
        else:
            tau = float(p.prior_adjustment) if weighted else 0.0
        pred = (np.log(np.maximum(proba, 1e-30)) + tau * log_prior_fit).argmax(axis=1)
        return tau, score_confusion(confusion_matrix(y_sel, pred, C), p.selection_metric), pred == y_sel

    validated = val_source != "none"
    families = list(p.families) if validated else list(p.families)[:1]  # nothing to compare on
    search: list[dict[str, Any]] = []
    mlp_fits: dict[int, _Fit] = {}
    logreg_fits: dict[int, list[logreg.LogregFit]] = {}  # per candidate: one fit (K fold fits under CV)
    if "mlp" in families:
        grid = p.candidates() if validated else [{}]
        for overrides in grid:
            cp = p.model_copy(update=overrides)
            t0 = time.perf_counter()
            K = p.cv_folds if folds is not None else (1 if p.refit else p.n_ensemble)
            fit = _fit(cp, Z_fit, y_fit, C, K=K, seed=seed, epochs=p.epochs_max, X_val=Z_sel,
                       y_val=y_sel if Z_sel is not None else None, folds=folds,
                       progress=_tagged(progress, "search", len(search), len(grid), overrides))
            tau, score, correct[len(search)] = with_tau(fit.val_proba)
            mlp_fits[len(search)], val_probas[len(search)] = fit, fit.val_proba
            search.append({"family": "mlp", "params": dict(overrides), "val_score": score, "epochs": fit.epochs,
                           "prior_adjustment": tau, "time_s": round(time.perf_counter() - t0, 3)})
    if "logreg" in families:
        Cs = list(p.logreg_c_grid) if validated else [_middle(p.logreg_c_grid)]
        # scikit-learn's estimator on the raw embeddings, as the baseline is fitted (no input scaling)
        R_fit = np.ascontiguousarray(X_fit, np.float32)
        R_sel = np.ascontiguousarray(X_sel, np.float32) if Z_sel is not None else None
        sw = fit_class_w[y_fit]
        n_members = p.cv_folds if folds is not None else 1
        # under cross-validation member k trains without fold k and predicts it (pooled out-of-fold scores)
        member_sw = [sw * (folds != k) for k in range(n_members)] if folds is not None else [sw]
        tried: dict[int, tuple[list[logreg.LogregFit], dict[str, Any]]] = {}

        def try_c(j: int, init: list[logreg.LogregFit] | None) -> tuple[list[logreg.LogregFit], float]:
            t0 = time.perf_counter()
            # A warm start sits within scikit-learn's default tol of its neighbour's optimum (a change of C
            # moves the gradient by ~|W| / (C N)), so it would stop at once: neighbours are solved with a
            # tighter tol, within as many iterations as the cold-started default needed (a time budget).
            tol, max_iter = (p.logreg_tol, p.logreg_max_iter) if init is None else (
                p.logreg_tol * 1e-2, max(10, max(f.n_iter for f in init)))
            fits = [logreg.fit(R_fit, y_fit, C, member_sw[k], Cs[j], init=init[k] if init else None,
                               max_iter=max_iter, tol=tol) for k in range(n_members)]
            if folds is not None:
                proba = np.empty((len(y_fit), C), np.float32)
                for k, f in enumerate(fits):
                    proba[folds == k] = f.proba(R_fit[folds == k])
            else:
                proba = fits[0].proba(R_sel) if R_sel is not None else None
            tau, score, ok = with_tau(proba)
            if progress:
                progress({"stage": "search", "family": "logreg", "C": Cs[j], "val_score": score})
            tried[j] = (fits, ok, proba, {"family": "logreg", "params": {"C": Cs[j]}, "val_score": score,
                               "iterations": max(f.n_iter for f in fits), "prior_adjustment": tau,
                               "time_s": round(time.perf_counter() - t0, 3)})
            return fits, score

        # Walk the grid from its middle, each way while the validation score improves, each fit
        # warm-started from its neighbour's: the score is close to unimodal in log C, and the fits
        # far from the optimum (the costliest, from a cold start) are skipped.
        middle = Cs.index(_middle(Cs))
        first, first_score = try_c(middle, None)
        for step in (1, -1):
            fits, best_score, j = first, first_score, middle + step
            while 0 <= j < len(Cs):
                fits, score = try_c(j, fits)
                if not score > best_score + 1e-9:
                    break
                best_score, j = score, j + step
            if best_score > first_score + 1e-9:
                break  # the score rose this way: close to unimodal in log C, the other way will not
        for j in sorted(tried):  # recorded in ascending C
            logreg_fits[len(search)], correct[len(search)], val_probas[len(search)] = tried[j][:3]
            search.append(tried[j][3])
    # The default is logreg at the grid's middle C (the simple baseline); another candidate (another
    # C, the MLP) replaces it only for a clear gain on the validation examples, not for one or two
    # examples' worth of noise. Among those with a clear gain: the best score (ties: logreg, earlier).
    default_c = _middle(p.logreg_c_grid)
    base_i = next((i for i, c in enumerate(search) if c["family"] == "logreg" and c["params"]["C"] == default_c), 0)
    best_i = base_i
    if correct.get(base_i) is not None:
        base_ok, base_score = correct[base_i], search[base_i]["val_score"]
        ranked = sorted(range(len(search)), key=lambda i: (-_rounded(search[i]["val_score"]),
                                                           search[i]["family"] != "logreg", i))
        for i in ranked:
            if i == base_i or search[i]["val_score"] <= base_score + 1e-9:
                break
            if _clear_gain(correct[i], search[i]["val_score"], base_ok, base_score, p.selection_min_gain,
                           _z(p.selection_alpha, len(search) - 1)):
                best_i = i
                break
    best = search[best_i]
    family = best["family"]
    val_score = float(best["val_score"])
    tau = float(best["prior_adjustment"])
    selection = {"metric": p.selection_metric, "source": val_source, "default": search[base_i]["params"] | {
                     "family": search[base_i]["family"]}, "chosen": {"family": family, "params": best["params"]},
                 "candidates": search}

    # -- the final model ---------------------------------------------------------------------------
    X_all = np.concatenate([X_train, X_val]) if given_val else X_train
    y_all = np.concatenate([yi, y_sel]) if given_val else yi
    if family == "logreg":
        c_value = float(best["params"]["C"])
        final = p.model_copy(update={"head_type": "logreg"})
        mean, scale = np.zeros(X_all.shape[1]), np.ones(X_all.shape[1])  # fitted on the raw embeddings
        if p.refit and validated:
            # from a cold start, as LogisticRegression(C).fit(train + val) would be: at the default C on
            # evenly weighted classes this is exactly the baseline's model
            members = [logreg.fit(np.ascontiguousarray(X_all, np.float32), y_all, C, fit_class_w[y_all], c_value,
                                  max_iter=p.logreg_max_iter, tol=p.logreg_tol)]
            n_fit, log_prior = len(X_all), _log_prior(y_all, C)
        else:  # the search fit itself (under cross-validation: the fold fits, as an ensemble)
            members, n_fit, log_prior = logreg_fits[best_i], len(X_fit), log_prior_fit
        model_meta = {"C": c_value, "iterations": [m.n_iter for m in members]}
        build = lambda meta: _logreg_head(members, labels, mean, scale, tau * log_prior, meta)  # noqa: E731
        best_epochs = 0
    else:
        chosen_overrides = dict(best["params"])
        final = p.model_copy(update=chosen_overrides)
        best_fit = mlp_fits[best_i]
        best_epochs = int(best["epochs"])
        if p.refit and validated:
            mean, scale = _scaler(X_all, p.input_scaling)
            fit = _fit(final, ((X_all - mean) * scale).astype(np.float32), y_all, C, K=p.n_ensemble, seed=seed,
                       epochs=max(1, best_epochs), lr_plan=best_fit.lr_plan, class_w=fit_class_w,
                       progress=_tagged(progress, "refit", 0, 1, chosen_overrides))
            net, state, n_fit, log_prior = fit.net, fit.state, len(X_all), _log_prior(y_all, C)
        else:  # the search model itself (under cross-validation: the fold members, as an ensemble)
            net, state, n_fit, log_prior = best_fit.net, best_fit.state, len(X_fit), log_prior_fit
        if tau:
            state = net.shifted(state, tau * log_prior)
        model_meta = {"epochs": best_epochs}
        build = lambda meta: net.to_head(state, labels, mean, scale, final, meta)  # noqa: E731
    chosen = {"family": family, **best["params"], **model_meta, "prior_adjustment": tau}
    elapsed = time.perf_counter() - started
    meta = {"trainer": "heads.training.fit", "seed": seed, "chosen": chosen, "epochs": best_epochs,
            "prior_adjustment": tau, "val_score": val_score, "val_metric": p.selection_metric,
            "val_source": val_source, "n_fit": n_fit, "train_time_s": round(elapsed, 3),
            "selection": selection, "params": final.model_dump(exclude={"search_grid"})}
    model = build(meta)
    return TrainResult(model=model, params=final, chosen=chosen, val_score=val_score, val_metric=p.selection_metric,
                       train_time_s=time.perf_counter() - started, search=search, n_train=len(X_train),
                       n_val=len(y_sel) if validated else 0, val_source=val_source, selection=selection,
                       val_proba=_adjusted(val_probas.get(best_i), tau * log_prior_fit))


def _adjusted(proba: np.ndarray | None, shift: np.ndarray) -> np.ndarray | None:
    """Probabilities with `shift` added to their logits (the prior adjustment the final model gets)."""
    if proba is None or not np.any(shift):
        return proba
    logits = np.log(np.maximum(proba, 1e-30)) + shift
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _rounded(score: float) -> float:
    return -math.inf if math.isnan(score) else round(score, 9)


def _middle(values: list[float]) -> float:
    """The geometric middle of a sorted grid (the logreg C when nothing can be validated)."""
    return float(sorted(values)[(len(values) - 1) // 2])


def _logreg_head(members: list[logreg.LogregFit], labels: list[str], mean: np.ndarray, scale: np.ndarray,
                 shift: np.ndarray, meta: dict[str, Any]) -> HeadModel:
    """Fold the input scaling ((x - mean) * scale) and the prior shift into each member's W, b."""
    Ws, bs = [], []
    for m in members:
        W = m.W.astype(np.float64)
        Ws.append(W * scale[:, None])
        bs.append(m.b.astype(np.float64) - (mean * scale) @ W + shift)
    return HeadModel("logreg", {"W": np.stack(Ws).astype(np.float32), "b": np.stack(bs).astype(np.float32)},
                     labels, meta=meta)

def _tagged(progress: Progress | None, stage: str, i: int, n: int, overrides: dict[str, Any]) -> Progress | None:
    if progress is None:
        return None
    return lambda ev: progress({"stage": stage, "candidate": i, "of": n, "overrides": overrides, **ev})
