"""The head API, owned here once: the typed results a head computes, which are also its wire contract.

Used by the head's HTTP front end, by the gateway (which documents and forwards the same shapes)
and by `polyhead batch` (which reads them back). Cores return `PredictResponse` / `ExplainResponse`
(frozen dataclasses: no validation on the hot path); their JSON and their OpenAPI schema are both
pydantic's reading of these same classes (`encode_*`, `decode_predict_response`), so each shape is
written in exactly one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter, WithJsonSchema, create_model,
                      model_validator)
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from heads.config import ServingConfig
from polyhead.validation import TextOrTexts, one_text_or_texts_schema, text_type, texts_type

_DEFAULT_SERVING = ServingConfig()


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


# -- typed results (what the core computes, and what the wire carries) -------------------------------
# Rounded on the wire only: the core keeps full precision (the inference log, drift).
Probability = Annotated[float, PlainSerializer(lambda v: round(v, 6), return_type=float)]
Milliseconds = Annotated[float, PlainSerializer(lambda v: round(v, 3), return_type=float)]


class ScoredLabel(TypedDict):
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    label: str  # the abstain label when the top probability is under the head's threshold
    probability: Probability
    top_k: list[ScoredLabel]  # best first
    abstained: bool


@dataclass(frozen=True)
class PredictResponse:
    head: str
    version: str
    embedder_fingerprint: str
    request_id: str
    latency_ms: Milliseconds
    predictions: list[Prediction]
    # server-issued, unguessable: what feedback names (request_id is only the caller's correlation id)
    prediction_id: Annotated[str, Field(description="Issued by the server, unguessable: what feedback names "
                                                    "(also in the x-prediction-id header)")] = ""


@dataclass(frozen=True)
class WordImportance:
    word: str
    start: Annotated[int, Field(description="Character offset of the word in the text")]  # text[start:end] == word
    end: int
    importance: Annotated[Probability, Field(description="Drop in the label's probability without this word; "
                                                         "negative when the word argued against the label")]


@dataclass(frozen=True)
class ExplainResponse:
    head: str
    version: str
    label: Annotated[str, Field(description="The model's top label, which the importances refer to")]  # even abstaining
    probability: Probability
    abstained: bool
    words: list[WordImportance]
    request_id: str
    latency_ms: Milliseconds


_PREDICT_RESPONSE = TypeAdapter(PredictResponse)
_EXPLAIN_RESPONSE = TypeAdapter(ExplainResponse)


# -- wire encoding: pydantic's serialisation of the classes above (no validation: the core built them) --
def encode_predict_response(result: PredictResponse) -> dict:
    """The JSON body of a 200 from /predict, as a dict (one entry of /classify's results)."""
    return _PREDICT_RESPONSE.dump_python(result, mode="json")


def encode_predict_json(result: PredictResponse) -> bytes:
    """The JSON body of a 200 from /predict (serialised in pydantic-core: cheaper than a dict + json.dumps)."""
    return _PREDICT_RESPONSE.dump_json(result)


def decode_predict_response(body: bytes | str) -> PredictResponse:
    """A /predict answer read back (polyhead batch), validated: ValueError (pydantic's) if it is not one."""
    return _PREDICT_RESPONSE.validate_json(body)


def encode_explain_json(result: ExplainResponse) -> bytes:
    """The JSON body of a 200 from /explain."""
    return _EXPLAIN_RESPONSE.dump_json(result)


def encode_model_error(status: int, error: dict) -> dict:
    """One model's failure inside a multi-model answer (/classify): its status and its error body."""
    return {"error": error, "status": int(status)}


# -- schemas (request validation and OpenAPI) -------------------------------------------------------
class PredictRequestBase(TextOrTexts):
    """Exactly one of `text` / `texts`; every text non-blank, valid UTF-8 and within the head's limits.

    The limits come from the head's ServingConfig, so each head builds its own request model
    (`predict_request_model`) and its OpenAPI states the limits it enforces.
    """


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


_ExplainText = text_type(_DEFAULT_SERVING.max_text_chars, "One text; at most the head's serving.max_explain_words words")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "my card was declined"}]})

    text: _ExplainText


_ClassifyText = text_type(None, "One text")
_ClassifyTexts = texts_type(None, None, "Several texts, answered in order")


# The schema states "at least one name" (minItems); _some_models enforces it with a message naming `models`.
_ClassifyModels = Annotated[list[str] | Literal["*"], WithJsonSchema(
    {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string", "const": "*"}]})]


def _classify_schema_extra(schema: dict) -> None:
    """Exactly one of text/texts, never null (as for predict), with classify's examples."""
    one_text_or_texts_schema(schema)
    schema["examples"] = [{"text": "my card was declined", "models": ["sentiment", "urgency"]},
                          {"texts": ["refund me", "the app crashes"], "models": "*"}]


class ClassifyRequest(TextOrTexts):
    """Several models on the same texts (gateway POST /v1/classify; a head process's POST /classify)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_classify_schema_extra)

    # Encoding and blank texts are checked here; each head checks its own limits (per-model 422).
    # Absent fields are None; an explicit null is refused (the types are not optional), as the schema says.
    text: _ClassifyText = Field(None)
    texts: _ClassifyTexts = Field(None)
    models: _ClassifyModels = Field(..., description="Model names (at least one), or '*' for every routable model")

    @model_validator(mode="after")
    def _some_models(self):
        if isinstance(self.models, list) and not self.models:
            raise ValueError("models: name at least one model, or '*' for all")
        return self


class DriftSummary(BaseModel):
    """The short form of a head's drift (GET /drift has the details): in its /info and the gateway's /v1/models."""

    flagged: bool
    scores: dict[str, float | None] = {}
    available: bool = Field(True, description="false: the served artifact has no drift reference statistics")


class DriftReport(BaseModel):
    """A head's GET /drift (heads.drift.DriftMonitor.report): its rolling window against the served
    version's training data. The gateway's report carries it as `drift`."""

    head: str
    version: str | None
    window: int = Field(description="Texts in the rolling window now")
    window_size: int
    min_window: int = Field(description="Texts needed before the head can be flagged")
    scores: dict[str, float | None]
    thresholds: dict[str, float]
    flagged: bool
    reasons: list[str]
    available: bool = Field(description="false: the served artifact has no drift reference statistics")
    reference: dict[str, Any] = Field(description="The training data's figures the window is compared with")
    current: dict[str, Any] | None = Field(None, description="The window's figures; absent while it is empty")


class HeadInfo(BaseModel):
    """A head's GET /info: what it serves and whether it is ready. The gateway reads it back (its /v1/models
    entries are a digest of it: gateway.core.ModelInfo) and so does the feedback check (the labels)."""

    name: str
    description: str = ""
    version: str | None = Field(None, description="The served artifact version; null before the first training")
    version_spec: str = Field("latest", description="A pinned version id, or 'latest'")
    labels: list[str] = []
    metrics: dict[str, Any] = Field({}, description="The served version's test-set metrics")
    embedder_fingerprint: str | None = None
    feature_set: str | None = Field(None, description="The embedder feature set the served version was trained on")
    ready: bool
    checks: dict[str, str | dict[str, Any]] = Field(
        {}, description="Readiness checks (artifact, embedder, fingerprint): why not ready; inference_log: the log's "
                        "lag (oldest unwritten row age, spool rows, dead letters)")
    serving: ServingConfig = Field(_DEFAULT_SERVING, description="The head's serving configuration")
    server_version: str = ""
    drift: DriftSummary | None = Field(None, description="The head's drift flag and scores (GET <head>/drift has "
                                                         "the details); null when the head does not report drift")


class ModelError(BaseModel):
    error: dict = Field(..., description="{type, message, field?}, as the model's own endpoint would answer")
    status: int = Field(..., description="The HTTP status the model's own endpoint would have answered")


class ClassifyResponse(BaseModel):
    request_id: str
    results: dict[str, PredictResponse | ModelError] = Field(
        ..., description="Per model: its predict answer, or its error (one model failing fails only its entry)")
