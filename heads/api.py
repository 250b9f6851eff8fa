"""The head API, owned here once: the typed results a head computes and their one wire encoding.

Used by the head's HTTP front end, by the gateway (which documents and forwards the same shapes)
and by `polyhead batch` (which reads them back). Cores return `PredictResult`; only front ends
call `encode_predict_response`, so the JSON shape is written in exactly one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator

from heads.config import ServingConfig
from polyhead.validation import text_type, texts_type

_DEFAULT_SERVING = ServingConfig()


def _request_schema_extra(schema: dict) -> None:
    """JSON Schema for "exactly one of text/texts, never null" (pydantic alone writes `default: null`)."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [{"text": "my card was declined"}, {"texts": ["reset my password", "app crashes"]}]

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
    prediction_id: str = ""  # server-issued, unguessable: what feedback names (request_id is the caller's)


@dataclass(frozen=True)
class WordImportance:
    word: str
    start: int  # character offsets into the text: text[start:end] == word
    end: int
    importance: float  # drop in the label's probability when the word is left out (< 0: it argued against)


@dataclass(frozen=True)
class Explanation:
    head: str
    version: str
    request_id: str
    label: str  # the model's top label (even when the prediction abstains), the one the importances refer to
    probability: float
    abstained: bool
    words: list[WordImportance]
    latency_ms: float


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
        "prediction_id": result.prediction_id,
        "latency_ms": round(result.latency_ms, 3),
        "predictions": [encode_prediction(p) for p in result.predictions],
    }


def encode_explain_response(result: Explanation) -> dict:
    """The JSON body of a 200 from /explain (schema: `ExplainResponse`)."""
    return {
        "head": result.head,
        "version": result.version,
        "label": result.label,
        "probability": round(result.probability, 6),
        "abstained": result.abstained,
        "words": [{"word": w.word, "start": w.start, "end": w.end, "importance": round(w.importance, 6)}
                  for w in result.words],
        "request_id": result.request_id,
        "latency_ms": round(result.latency_ms, 3),
    }


# -- schemas (request validation and OpenAPI) -------------------------------------------------------
class PredictRequestBase(BaseModel):
    """Exactly one of `text` / `texts`; every text non-blank, valid UTF-8 and within the head's limits.

    The limits come from the head's ServingConfig, so each head builds its own request model
    (`predict_request_model`) and its OpenAPI states the limits it enforces.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_request_schema_extra)

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


@functools.cache
def predict_request_model(max_texts: int = _DEFAULT_SERVING.max_texts_per_request,
                          max_chars: int = _DEFAULT_SERVING.max_text_chars) -> type[PredictRequestBase]:
    """The request model for a head with these limits (absent fields are None; null is refused)."""
    return create_model(
        "PredictRequest", __base__=PredictRequestBase,
        text=(text_type(max_chars, "One text"), Field(None)),
        texts=(texts_type(max_texts, max_chars, "Several texts, answered in order"), Field(None)),
    )


# The generic contract (ServingConfig's default limits): what the gateway documents.
PredictRequest = predict_request_model()


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
    request_id: str = Field(..., description="Correlation id: the caller's x-request-id, or one made up")
    prediction_id: str = Field(..., description="Issued by the server, unguessable: what feedback names "
                               "(also in the x-prediction-id header)")
    latency_ms: float
    predictions: list[PredictionOut]


_ExplainText = text_type(_DEFAULT_SERVING.max_text_chars, "One text; at most the head's serving.max_explain_words words")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "my card was declined"}]})

    text: _ExplainText


class WordImportanceOut(BaseModel):
    word: str
    start: int = Field(..., description="Character offset of the word in the text")
    end: int
    importance: float = Field(..., description="Drop in the label's probability without this word; "
                              "negative when the word argued against the label")


class ExplainResponse(BaseModel):
    head: str
    version: str
    label: str = Field(..., description="The model's top label, which the importances refer to")
    probability: float
    abstained: bool
    words: list[WordImportanceOut]
    request_id: str
    latency_ms: float


_ClassifyText = text_type(None, "One text")
_ClassifyTexts = texts_type(None, None, "Several texts, answered in order")


# The schema states "at least one name" (minItems); _exactly_one enforces it with a message naming `models`.
_ClassifyModels = Annotated[list[str] | Literal["*"], WithJsonSchema(
    {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string", "const": "*"}]})]


def _classify_schema_extra(schema: dict) -> None:
    """Exactly one of text/texts, never null (as for predict), with classify's examples."""
    _request_schema_extra(schema)
    schema["examples"] = [{"text": "my card was declined", "models": ["sentiment", "urgency"]},
                          {"texts": ["refund me", "the app crashes"], "models": "*"}]


class ClassifyRequest(BaseModel):
    """Several models on the same texts (gateway POST /v1/classify; a head process's POST /classify)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_classify_schema_extra)

    # Encoding and blank texts are checked here; each head checks its own limits (per-model 422).
    # Absent fields are None; an explicit null is refused (the types are not optional), as the schema says.
    text: _ClassifyText = Field(None)
    texts: _ClassifyTexts = Field(None)
    models: _ClassifyModels = Field(..., description="Model names (at least one), or '*' for every routable model")

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
