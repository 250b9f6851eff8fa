"""The "mlp" family: K networks trained jointly with mini-batch AdamW (numpy only).

For each candidate of a small grid (`TrainParams.search_grid`) it trains on softmax cross-entropy
with label smoothing, dropout and decoupled weight decay, halving the learning rate on validation
plateaus and early-stopping on the validation metric. Inputs are centred and scaled (`scaler`),
folded into the first layer afterwards, so the served model takes raw embeddings. Under
cross-validation the fold members train jointly as members of one wide network and are scored on
their pooled out-of-fold predictions, and each fold records its own best epoch. The refit retrains
the choice on all the data for the median of the folds' best epochs (never one split's lucky
epoch; the pooled best epoch with a single validation split), replaying the learning-rate schedule; `n_ensemble` members with different
initialisations are stored in one HeadModel whose forward averages their probabilities.

`head_type` "logreg" makes the network a single linear layer trained the same way (AdamW, early
stopping): not the "logreg" family (scikit-learn's estimator, heads.training.logreg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from heads.model import HeadModel, gelu, softmax
from heads.training.data import class_weights
from heads.training.evaluation import confusion_matrix, score_confusion
from heads.training.family_api import Candidate, Clock, Final, FinalData, Progress, SearchData
from heads.training.params import TrainParams

_TINY = np.float32(1e-15)


def scaler(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
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


# -- the network ---------------------------------------------------------------------------------
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
        # Scratch arrays reused by every step: allocating (and page-faulting) a fresh [D, K*H] array for
        # each gradient and AdamW temporary cost about as much as the matmuls on all6's 2,304 dims.
        self._grad = {k: np.empty_like(v) for k, v in self.params.items()}
        self._tmp = {k: np.empty_like(v) for k, v in self.params.items()}
        self._tmp2 = {k: np.empty_like(v) for k, v in self.params.items()}
        self._mask = {k: np.empty(v.shape, bool) for k, v in self.params.items()}
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

    def out_of_fold_proba(self, X: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """[N, C]: example i scored by member folds[i] only (the member that never trained on it): a
        fifth of member_proba's work with 5 folds, the same numbers."""
        P, H, C = self.params, self.H, self.C
        out = np.empty((len(X), C), np.float32)
        for k in range(self.K):
            rows = np.flatnonzero(folds == k)
            if not len(rows):
                continue
            cols = slice(k * H, (k + 1) * H)
            state = {"W1": P["W1"][:, cols], "b1": P["b1"][cols]}
            if self.mlp:
                state |= {"W2": P["W2"][k:k + 1], "b2": P["b2"][k:k + 1]}
                if self.skip:
                    state["Ws"] = P["Ws"][:, k * C:(k + 1) * C]
            K = self.K
            self.K = 1
            try:
                out[rows] = self.member_proba(X[rows], state)[0]
            finally:
                self.K = K
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
            grads["W2"] = np.matmul(h3.transpose(0, 2, 1), g, out=self._grad["W2"])
            grads["b2"] = np.sum(g, axis=1, out=self._grad["b2"])
            if self.skip:
                grads["Ws"] = np.matmul(xb.T, g.transpose(1, 0, 2).reshape(B, K * C), out=self._grad["Ws"])
            dh = np.matmul(g, P["W2"].transpose(0, 2, 1)).transpose(1, 0, 2).reshape(B, K * H)
            if mask is not None:
                dh *= mask
            da = dh * self._act_grad(a)
        else:
            da = g.transpose(1, 0, 2).reshape(B, K * C)
        grads["W1"] = np.matmul(xb.T, da, out=self._grad["W1"])
        grads["b1"] = np.sum(da, axis=0, out=self._grad["b1"])
        for k, g_ in grads.items():  # squares of tiny gradients would be subnormal, which makes numpy crawl
            tiny = np.less(np.abs(g_, out=self._tmp[k]), _TINY, out=self._mask[k])
            np.copyto(g_, 0, where=tiny)
        self._adamw(grads, p)

    def _adamw(self, grads: dict[str, np.ndarray], p: TrainParams, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> None:
        """Decoupled weight decay, then Adam; in place, in the scratch arrays (the same arithmetic, in the
        same order, as the plain expressions in the comments, so the results are bit-identical)."""
        self.t += 1
        lr = self.lr * self.lr_scale
        lr_t = lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for k, g in grads.items():
            w, m, v, tmp, tmp2 = self.params[k], self.m[k], self.v[k], self._tmp[k], self._tmp2[k]
            if k in self.decay and p.weight_decay > 0:
                w *= np.float32(1 - lr * p.weight_decay)
            m *= np.float32(b1)  # m = b1 m + (1 - b1) g
            m += np.multiply(np.float32(1 - b1), g, out=tmp)
            v *= np.float32(b2)  # v = b2 v + (1 - b2) g^2
            v += np.multiply(np.float32(1 - b2), np.multiply(g, g, out=tmp), out=tmp)
            # w -= lr_t m / (sqrt(v) + eps)
            np.add(np.sqrt(v, out=tmp2), np.float32(eps), out=tmp2)
            w -= np.divide(np.multiply(np.float32(lr_t), m, out=tmp), tmp2, out=tmp)

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
class MlpFit:
    net: _Net
    state: dict[str, np.ndarray]  # weights at the best epoch (the last one without validation)
    score: float
    epochs: int
    lr_plan: list[float]  # learning-rate multiplier per epoch, as run
    val_proba: np.ndarray | None  # [n_val, C] validation probabilities at the best epoch
    fold_epochs: list[int] | None = None  # under cross-validation: each fold's own best epoch

    def refit_epochs(self) -> int:
        """Epochs for the refit: the median of the folds' best epochs, or the best epoch."""
        return max(1, int(round(float(np.median(self.fold_epochs))))) if self.fold_epochs else max(1, self.epochs)


def fit(p: TrainParams, X: np.ndarray, y: np.ndarray, C: int, *, K: int, seed: int, epochs: int,
         X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, folds: np.ndarray | None = None,
         lr_plan: list[float] | None = None, progress: Progress | None = None,
         class_w: np.ndarray | None = None) -> MlpFit:
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
    fold_best, fold_epochs = np.full(K, -1.0), np.zeros(K, np.int64)
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
            proba = net.out_of_fold_proba(X, folds)  # example i scored by member folds[i]
            truth = y
            pred = proba.argmax(axis=1)
            for k in range(K):  # each fold's own best epoch (ties: the later), for the refit's epoch count
                rows = folds == k
                fold_score = score_confusion(confusion_matrix(y[rows], pred[rows], C), p.selection_metric)
                if fold_score >= fold_best[k] - 1e-12:
                    fold_best[k], fold_epochs[k] = fold_score, epoch
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
        return MlpFit(net, net.snapshot(), float("nan"), epochs, plan, None)
    return MlpFit(net, best_state, best, best_epoch, plan, best_proba,
                  [int(e) for e in fold_epochs] if folds is not None else None)



def _tagged(progress: Progress | None, stage: str, i: int, n: int, overrides: dict[str, Any]) -> Progress | None:
    if progress is None:
        return None
    return lambda ev: progress({"stage": stage, "candidate": i, "of": n, "overrides": overrides, **ev})


# -- the family ------------------------------------------------------------------------------------
@dataclass
class _SearchFit:
    fit: MlpFit
    mean: np.ndarray  # the input scaling it was trained with
    scale: np.ndarray


class MlpFamily:
    name = "mlp"

    def default_params(self, p: TrainParams) -> dict[str, Any] | None:
        return None

    def search(self, data: SearchData) -> list[Candidate]:
        p = data.p
        if data.validated and data.contained and not p.mlp_on_contained_sets:
            return []  # the MLP on the set holding these vectors is fitted instead
        mean, scale = scaler(data.X_fit, p.input_scaling)
        Z_fit = ((data.X_fit - mean) * scale).astype(np.float32)
        Z_sel = ((data.X_sel - mean) * scale).astype(np.float32) if data.X_sel is not None else None
        grid = p.candidates() if data.validated else [{}]
        K = p.cv_folds if data.folds is not None else (1 if p.refit else p.n_ensemble)
        out = []
        for j, overrides in enumerate(grid):
            clock = Clock()
            result = fit(p.model_copy(update=overrides), Z_fit, data.y_fit, data.n_classes, K=K, seed=data.seed,
                         epochs=p.epochs_max, X_val=Z_sel, y_val=data.y_sel if Z_sel is not None else None,
                         folds=data.folds,
                         progress=_tagged(data.progress, "search", data.first_index + j, len(grid), overrides))
            out.append(Candidate(self.name, dict(overrides), data.score(result.val_proba), result.val_proba,
                                 _SearchFit(result, mean, scale), clock.wall_s(),
                                 {"epochs": result.epochs, "refit_epochs": result.refit_epochs(),
                                  **({"fold_epochs": result.fold_epochs} if result.fold_epochs else {})},
                                 cpu_s=clock.cpu_s()))
        return out

    def final(self, chosen: Candidate, data: FinalData) -> Final:
        p, searched = data.p, chosen.fitted
        final = p.model_copy(update=chosen.params)
        epochs = int(chosen.record.get("refit_epochs", chosen.record["epochs"]))
        if data.refit:
            mean, scale = scaler(data.X, p.input_scaling)
            result = fit(final, ((data.X - mean) * scale).astype(np.float32), data.y, data.n_classes,
                         K=p.n_ensemble, seed=data.seed, epochs=max(1, epochs), lr_plan=searched.fit.lr_plan,
                         class_w=data.class_w, progress=_tagged(data.progress, "refit", 0, 1, chosen.params))
            net, state = result.net, result.state
        else:  # the search model itself (under cross-validation: the fold members, as an ensemble)
            net, state, mean, scale = searched.fit.net, searched.fit.state, searched.mean, searched.scale
        if np.any(data.shift):
            state = net.shifted(state, data.shift)
        return Final(lambda meta: net.to_head(state, data.labels, mean, scale, final, meta), final,
                     {"epochs": epochs})


FAMILY = MlpFamily()
