"""Classification metrics for string labels (numpy only): accuracy, F1, confusion matrix."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from heads.model import HeadModel

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


def score_confusion(cm: np.ndarray, metric: str) -> float:
    """One selection metric (accuracy, f1_weighted, f1_macro) of a confusion matrix."""
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
    """Metrics for string labels; `labels` fixes the order (labels seen only in the data are appended).

    Macro averages run over the labels that occur in y_true or y_pred (as scikit-learn's); a 0/0
    precision, recall or F1 counts as 0."""
    labels = [str(x) for x in labels]
    y_true = [str(x) for x in y_true]
    y_pred = [str(x) for x in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    extra = sorted((set(y_true) | set(y_pred)) - set(labels))
    labels = labels + extra
    index = {label: i for i, label in enumerate(labels)}
    t = np.array([index[x] for x in y_true], np.int64)
    p = np.array([index[x] for x in y_pred], np.int64)
    cm = confusion_matrix(t, p, len(labels))
    precision, recall, f1, support = _prf(cm)
    n = int(cm.sum())
    present = (support > 0) | (cm.sum(axis=0) > 0)
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
    """accuracy, f1_weighted, f1_macro, precision/recall_macro, per-class precision/recall/f1/support
    and the confusion matrix (rows true, columns predicted) in `labels` order (= `model.labels`,
    plus any label of `y` the model does not know)."""
    return classification_report(y, model.predict(X), model.labels)
