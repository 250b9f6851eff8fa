"""One logged prediction, as written to the database and to the spool (JSON lines)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class PredictionRecord:
    id: str
    ts: datetime
    request_id: str
    head: str
    head_version: str
    embedder_fingerprint: str
    text: str | None
    text_sha256: str
    label: str
    probability: float
    top_k: list[dict[str, Any]]
    latency_ms: float
    # Added by migration 2; None in spool lines written by older heads.
    abstained: bool | None = None
    text_index: int | None = None  # the text's position in its request (feedback names it as `index`)
    # Added by migration 5: the server-issued id feedback names (prediction_id; unguessable, unlike a
    # client's x-request-id) and the API key (its name, never the secret) that asked for the prediction.
    issued_id: str | None = None
    caller: str | None = None
    # Added by migration 6: True on a challenger's shadow prediction (never returned to the caller).
    shadow: bool | None = None

    @classmethod
    def create(
        cls,
        *,
        request_id: str,
        head: str,
        head_version: str,
        embedder_fingerprint: str,
        text: str,
        label: str,
        probability: float,
        top_k: Iterable[Mapping[str, Any] | tuple[str, float]],
        latency_ms: float,
        abstained: bool | None = None,
        text_index: int | None = None,
        issued_id: str | None = None,
        caller: str | None = None,
        redact: bool = False,
        shadow: bool | None = None,
        text_sha256: str | None = None,
    ) -> PredictionRecord:
        """Fill id (uuid4 hex), ts (now, UTC) and the text hash (``text_sha256``: already computed, e.g.
        for the champion's row of the same text); with ``redact`` keep only the hash."""
        pairs = [(k["label"], k["probability"]) if isinstance(k, Mapping) else k for k in top_k]
        return cls(
            id=uuid.uuid4().hex,
            ts=datetime.now(timezone.utc),
            request_id=str(request_id),
            head=head,
            head_version=str(head_version),
            embedder_fingerprint=embedder_fingerprint,
            text=None if redact else text,
            text_sha256=text_sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest(),
            label=str(label),
            probability=float(probability),  # numpy scalars -> plain float (JSON, drivers)
            top_k=[{"label": str(lab), "probability": float(p)} for lab, p in pairs],
            latency_ms=float(latency_ms),
            abstained=None if abstained is None else bool(abstained),
            text_index=None if text_index is None else int(text_index),
            issued_id=issued_id,
            caller=caller,
            shadow=None if shadow is None else bool(shadow),
        )

    def to_json(self) -> str:
        # Field by field, not dataclasses.asdict: its deep copy cost ~4x the whole line on the request path.
        obj = {name: getattr(self, name) for name in _FIELDS}
        obj["ts"] = self.ts.isoformat()
        return json.dumps(obj, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> PredictionRecord:
        obj = json.loads(line)
        obj["ts"] = datetime.fromisoformat(obj["ts"])
        return cls(**obj)


_FIELDS = tuple(f.name for f in dataclasses.fields(PredictionRecord))
