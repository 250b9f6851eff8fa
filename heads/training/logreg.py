"""L2-regularised multinomial logistic regression, solved to convergence (L-BFGS).

The simple baseline every head must match: `heads.training.fit` compares it with the MLP family
on the validation data. The objective is scikit-learn's, with sample weights s_i:

    sum_i s_i * cross_entropy(softmax(x_i @ W + b), y_i) / sum_i s_i  +  ||W||^2 / (2 * C * sum_i s_i)

(the intercept is not penalised), so `C` means what it means in `LogisticRegression(C=...)` for
the same inputs. The inputs here are the trainer's scaled embeddings (centred, one global scale
by default): centring only moves the intercept and a global scale only rescales C, but the
centred problem is far better conditioned, so L-BFGS needs fewer iterations.

`init` warm-starts a fit from a neighbouring C's solution (the trainer walks a C grid). Matmuls run in float32 (the embeddings are float32), the optimiser's
state in float64 (scipy's L-BFGS-B; scipy is imported here only, i.e. only when training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heads.model import softmax


@dataclass
class LogregFit:
    W: np.ndarray  # [D, C] float32
    b: np.ndarray  # [C] float32
    C: float
    n_iter: int

    def proba(self, Z: np.ndarray) -> np.ndarray:
        return softmax(Z @ self.W + self.b, axis=1)


def fit(Z: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray, C: float, *,
        init: LogregFit | None = None, max_iter: int = 300, tol: float = 1e-4) -> LogregFit:
    """One L2 logistic regression on Z [N, D] float32, integer labels y; `init` warm-starts it."""
    from scipy.optimize import minimize

    Z = np.ascontiguousarray(Z, np.float32)
    N, D = Z.shape
    K = n_classes
    sw = np.asarray(sample_weight, np.float64)
    total = float(sw.sum())
    if total <= 0:
        raise ValueError("logistic regression needs a positive total sample weight")
    keep = sw > 0  # a fold's held-out examples have weight 0: leave them out of the matmuls
    if not keep.all():
        Z, y, sw = Z[keep], y[keep], sw[keep]
    sw32 = (sw / total).astype(np.float32)[:, None]
    onehot = np.zeros((len(y), K), np.float32)
    onehot[np.arange(len(y)), y] = 1.0
    alpha = 1.0 / (C * total)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[:D * K].reshape(D, K)
        b = theta[D * K:]
        logits = Z @ W.astype(np.float32) + b.astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        np.maximum(logits, -80.0, out=logits)  # no subnormal probabilities (they make BLAS crawl)
        log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_p = logits - log_norm
        loss = -float(np.sum(sw32 * (onehot * log_p), dtype=np.float64)) + 0.5 * alpha * float(W.ravel() @ W.ravel())
        G = sw32 * (np.exp(log_p) - onehot)  # d loss / d logits
        gW = (Z.T @ G).astype(np.float64) + alpha * W
        gb = G.sum(axis=0, dtype=np.float64)
        return loss, np.concatenate([gW.ravel(), gb])

    theta0 = (np.concatenate([init.W.astype(np.float64).ravel(), init.b.astype(np.float64)])
              if init is not None else np.zeros(D * K + K))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "maxcor": 20})
    theta = res.x
    return LogregFit(theta[:D * K].reshape(D, K).astype(np.float32), theta[D * K:].astype(np.float32),
                     float(C), int(res.nit))

