"""The head API's request and response shapes (shared with the gateway, which forwards them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "my card was declined"}]})

    text: str | None = Field(None, description="One text")
    texts: list[str] | None = Field(None, description="Several texts", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self


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
