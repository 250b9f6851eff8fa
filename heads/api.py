"""The head API, owned here once: the typed results a head computes and their one wire encoding.

Used by the head's HTTP front end, by the gateway (which documents and forwards the same shapes)
and by `polyhead batch` (which reads them back). Cores return `PredictResult`; only front ends
call `encode_predict_response`, so the JSON shape is written in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A packed head process serves each head under this prefix (`http://host:port/heads/<name>`); a
# one-head process at its root. The gateway needs the prefix only to find which routes share a
# process (and send them one /classify); every other call goes to `route.url + path`.
PACKED_PREFIX = "/heads"


def packed_path(name: str) -> str:
    return f"{PACKED_PREFIX}/{name}"


def process_base_url(route_url: str, name: str) -> str | None:
    """The process's base URL if `route_url` is a head of a packed process, else None."""
    suffix = packed_path(name)
    return route_url[: -len(suffix)] if route_url.rstrip("/").endswith(suffix) else None


# -- typed results (what the core computes) ---------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    label: str  # the abstain label when the top probability is under the head's threshold
    probability: float
    top_k: list[dict]  # [{"label", "probability"}], best first
    abstained: bool


@dataclass(frozen=True)
class PredictResult:
    head: str
    version: str
    embedder_fingerprint: str
    request_id: str
    latency_ms: float
    predictions: list[Prediction]


# -- wire encoding ---------------------------------------------------------------------------------
def encode_prediction(p: Prediction) -> dict:
    return {"label": p.label, "probability": round(p.probability, 6), "top_k": p.top_k, "abstained": p.abstained}


def encode_model_error(status: int, error: dict) -> dict:
    """One model's failure inside a multi-model answer (/classify): its status and its error body."""
    return {"error": error, "status": int(status)}


def encode_predict_response(result: PredictResult) -> dict:
    """The JSON body of a 200 from /predict (schema: `PredictResponse`)."""
    return {
        "head": result.head,
        "version": result.version,
        "embedder_fingerprint": result.embedder_fingerprint,
        "request_id": result.request_id,
        "latency_ms": round(result.latency_ms, 3),
        "predictions": [encode_prediction(p) for p in result.predictions],
    }


# -- schemas (request validation and OpenAPI) -------------------------------------------------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "my card was declined"}]})

    text: str | None = Field(None, description="One text")
    texts: list[str] | None = Field(None, description="Several texts", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def batch(self) -> bool:
        return self.texts is not None

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class ScoredLabel(BaseModel):
    label: str
    probability: float


class PredictionOut(BaseModel):
    label: str
    probability: float
    top_k: list[ScoredLabel]
    abstained: bool


class PredictResponse(BaseModel):
    head: str
    version: str
    embedder_fingerprint: str
    request_id: str
    latency_ms: float
    predictions: list[PredictionOut]


class ClassifyRequest(BaseModel):
    """Several models on the same texts (gateway POST /v1/classify; a head process's POST /classify)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "my card was declined", "models": ["sentiment", "urgency"]},
                     {"texts": ["refund me", "the app crashes"], "models": "*"}]})

    text: str | None = Field(None, description="One text")
    texts: list[str] | None = Field(None, description="Several texts", min_length=1)
    models: list[str] | Literal["*"] = Field(..., description="Model names, or '*' for every routable model")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if isinstance(self.models, list) and not self.models:
            raise ValueError("models: name at least one model, or '*' for all")
        return self

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class ModelError(BaseModel):
    error: dict = Field(..., description="{type, message, field?}, as the model's own endpoint would answer")
    status: int = Field(..., description="The HTTP status the model's own endpoint would have answered")


class ClassifyResponse(BaseModel):
    request_id: str
    results: dict[str, PredictResponse | ModelError] = Field(
        ..., description="Per model: its predict answer, or its error (one model failing fails only its entry)")
