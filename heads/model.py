"""A trained classifier head: numpy-only inference over sentence embeddings.

Serving imports this module alone, so it must never import TensorFlow, torch or scikit-learn.

Head types (every weight has a leading member axis K; K > 1 is an ensemble whose members'
probabilities are averaged, computed in one forward pass):

* ``"mlp"``    -- ``W1 [K,D,H]``, ``b1 [K,H]``, ``W2 [K,H,C]``, ``b2 [K,C]``, optional ``Ws [K,D,C]``;
                  ``p = mean_k softmax(act(x @ W1[k] + b1[k]) @ W2[k] + b2[k] (+ x @ Ws[k]))``
* ``"logreg"`` -- ``W [K,D,C]``, ``b [K,C]``; ``p = mean_k softmax(x @ W[k] + b[k])``

Any input standardisation used in training is folded into ``W1``/``b1`` (or ``W``/``b``), so the
forward takes the raw embedding. Files are plain ``.npz`` (no pickle): the weights, ``labels``,
``head_type``, ``activation`` and a JSON ``meta`` string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HEAD_TYPES = ("mlp", "logreg")
ACTIVATIONS = ("relu", "gelu")
FORMAT_VERSION = 1
_WEIGHT_NAMES = {"mlp": ("W1", "b1", "W2", "b2"), "logreg": ("W", "b")}
_OPTIONAL_WEIGHTS = {"mlp": ("Ws",), "logreg": ()}
_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def gelu(x: np.ndarray) -> np.ndarray:
    """tanh approximation of GELU (float32 in, float32 out)."""
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    np.maximum(z, -80.0, out=z)  # exp(-80) ~ 2e-35: keeps results out of the (slow) subnormal range
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


class HeadModel:
    """Weights + labels + head type; `predict_proba` is a couple of float32 matmuls."""

    def __init__(self, head_type: str, weights: Mapping[str, np.ndarray], labels: Sequence[str], *,
                 activation: str = "relu", meta: Mapping[str, Any] | None = None):
        if head_type not in HEAD_TYPES:
            raise ValueError(f"unknown head type {head_type!r} (one of {HEAD_TYPES})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (one of {ACTIVATIONS})")
        names = _WEIGHT_NAMES[head_type]
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"{head_type} head needs weights {names}; missing {missing}")
        w: dict[str, np.ndarray] = {}
        unknown = set(weights) - set(names) - set(_OPTIONAL_WEIGHTS[head_type])
        if unknown:
            raise ValueError(f"{head_type} head does not take weights {sorted(unknown)}")
        for n in names + tuple(n for n in _OPTIONAL_WEIGHTS[head_type] if n in weights):
            a = np.asarray(weights[n], dtype=np.float32)
            # accept single-member shapes ([D,C], [C]) for convenience
            if n.startswith("W") and a.ndim == 2:
                a = a[None]
            elif n.startswith("b") and a.ndim == 1:
                a = a[None]
            w[n] = np.ascontiguousarray(a)
        self.head_type = head_type
        self.activation = activation
        self.labels: list[str] = [str(label) for label in labels]
        self.weights = w
        self.meta: dict[str, Any] = dict(meta or {})
        self._check_shapes()
        self._prepare()

    # -- shapes and the fused forward ------------------------------------------------------------
    def _check_shapes(self) -> None:
        w, C = self.weights, len(self.labels)
        if self.head_type == "mlp":
            K, D, H = w["W1"].shape
            expected = {"b1": (K, H), "W2": (K, H, C), "b2": (K, C)}
            if "Ws" in w:
                expected["Ws"] = (K, D, C)
        else:
            K, D, _ = w["W"].shape
            expected = {"W": (K, D, C), "b": (K, C)}
        for n, shape in expected.items():
            if w[n].shape != shape:
                raise ValueError(f"{n} has shape {w[n].shape}, expected {shape} ({C} labels)")
        if len(set(self.labels)) != C:
            raise ValueError("labels must be unique")

    def _prepare(self) -> None:
        """Concatenate the members' first layers (and linear skips) so the forward starts with one
        [D, K*H (+ K*C)] matmul."""
        w = self.weights
        first = w["W1"] if self.head_type == "mlp" else w["W"]
        K, D, H = first.shape
        mats = [first.transpose(1, 0, 2).reshape(D, K * H)]
        biases = [(w["b1"] if self.head_type == "mlp" else w["b"]).reshape(K * H)]
        self._skip = "Ws" in w
        if self._skip:
            C = w["Ws"].shape[2]
            mats.append(w["Ws"].transpose(1, 0, 2).reshape(D, K * C))
            biases.append(np.zeros(K * C, np.float32))
        self._width = K * H
        self._first = np.ascontiguousarray(np.concatenate(mats, axis=1))
        self._first_b = np.ascontiguousarray(np.concatenate(biases))

    @property
    def n_members(self) -> int:
        return int((self.weights["W1"] if self.head_type == "mlp" else self.weights["W"]).shape[0])

    @property
    def input_dim(self) -> int:
        return int(self._first.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def n_params(self) -> int:
        return int(sum(a.size for a in self.weights.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.weights.values()))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Per-member logits [N, K, C]."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or X.shape[1] != self.input_dim:
            raise ValueError(f"expected embeddings of shape [N, {self.input_dim}], got {X.shape}")
        K, C = self.n_members, self.n_classes
        z = X @ self._first
        z += self._first_b
        if self.head_type == "logreg":
            return z.reshape(-1, K, C)
        skip = z[:, self._width:].reshape(-1, K, C) if self._skip else None
        z = z[:, :self._width]
        if self.activation == "relu":
            np.maximum(z, 0, out=z)
        else:
            z = gelu(z)
        H = self.weights["W1"].shape[2]
        if K == 1:
            out = z @ self.weights["W2"][0]
            out += self.weights["b2"][0]
            out = out[:, None, :]
        else:
            out = np.matmul(z.reshape(-1, K, H).transpose(1, 0, 2), self.weights["W2"])  # [K, N, C]
            out += self.weights["b2"][:, None, :]
            out = out.transpose(1, 0, 2)
        if skip is not None:
            out = out + skip
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] (float32, rows sum to 1), columns in `self.labels` order."""
        p = softmax(self.logits(X), axis=-1)
        p = p[:, 0, :] if p.shape[1] == 1 else p.mean(axis=1)
        return np.ascontiguousarray(p, dtype=np.float32)

    def predict(self, X: np.ndarray) -> list[str]:
        """The most probable label per row."""
        idx = self.predict_proba(X).argmax(axis=1)
        return [self.labels[i] for i in idx]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write an uncompressed .npz (no pickled objects); returns the path written."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"w_{n}": a for n, a in self.weights.items()}
        meta = {**self.meta, "format_version": FORMAT_VERSION}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, labels=np.array(self.labels, dtype=str), head_type=np.array(self.head_type),
                 activation=np.array(self.activation), meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadModel":
        with np.load(Path(path), allow_pickle=False) as z:
            head_type = str(z["head_type"])
            weights = {k[2:]: z[k] for k in z.files if k.startswith("w_")}
            labels = z["labels"].tolist()
            activation = str(z["activation"]) if "activation" in z.files else "relu"
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        if int(meta.get("format_version", 1)) > FORMAT_VERSION:
            raise ValueError(f"{path}: head format {meta['format_version']} is newer than this reader ({FORMAT_VERSION})")
        return cls(head_type, weights, labels, activation=activation, meta=meta)

    def __repr__(self) -> str:
        return (f"HeadModel({self.head_type!r}, members={self.n_members}, classes={self.n_classes}, "
                f"params={self.n_params}, {self.nbytes / 1024:.0f} KiB)")
