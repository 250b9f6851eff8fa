"""Gateway settings: YAML section `gateway:`, env `POLYHEAD_GATEWAY_*`, or CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from polyhead.settings import (DEFAULT_DB_URL, DEFAULT_EMBEDDER_TARGET, DEFAULT_GATEWAY_PORT, DEFAULT_HEADS_DIR,
                               HttpServiceSettings, Port)


class ApiKey(BaseModel):
    """A key is stored only as its SHA-256; `polyhead keys create` prints both once. Its `name` is its
    id everywhere else (rate-limit bucket, logged caller of a prediction, who gave a feedback)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"], description="models this key may call; * = all")
    rate_per_s: float | None = Field(None, gt=0, description="overrides the default per-key rate")
    embeddings: bool | None = Field(None, description="may call /v1/embeddings; default: only a key allowed on "
                                    "every model ('*')")
    roles: list[Literal["labeller"]] = Field(default_factory=list, description="labeller: may give feedback on "
                                             "any prediction of the models it may call, not only its own")

    @property
    def all_models(self) -> bool:
        return "*" in self.models

    def may_embed(self) -> bool:
        return self.embeddings if self.embeddings is not None else self.all_models


class GatewaySettings(HttpServiceSettings):
    section = "gateway"
    model_config = SettingsConfigDict(env_prefix="POLYHEAD_GATEWAY_", extra="forbid")

    port: int = Port(DEFAULT_GATEWAY_PORT, "HTTP port")
    workers: int = Field(1, ge=1, le=32, description="uvicorn worker processes; rate limits are kept per worker")

    # Routing: configs/heads/*.yaml names the models; the address comes from, in order, the routes
    # file (written by `polyhead up`), the config's serving.address, then the template.
    heads_dir: Path = Field(DEFAULT_HEADS_DIR, description="Head configs: one model per configs/heads/<name>.yaml")
    routes_file: Path | None = Field(None, description="YAML {name: url} written by `polyhead up`")
    head_url_template: str = Field("http://head-{name}:8000", description="Address of a head by name")
    reload_interval_s: float = Field(1.0, ge=0, description="Look for new/changed head configs this often; 0 = only POST /admin/reload")

    embedder_target: str = Field(DEFAULT_EMBEDDER_TARGET, description="Embedder gRPC address (/v1/embeddings)")
    embedder_timeout_s: float = Field(10.0, gt=0, description="Per-call deadline towards the embedder")

    head_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout towards a head")
    info_timeout_s: float = Field(1.0, gt=0, description="Timeout of the /info calls behind GET /v1/models")
    max_connections_per_head: int = Field(64, ge=1, description="A slow head can hold at most this many connections")
    head_keepalive_s: float = Field(30.0, gt=0, description="Idle keep-alive towards heads; keep it below the heads' "
                                    "keepalive_s, so a head never closes a connection the gateway is about to reuse")
    keepalive_s: float = Field(75.0, gt=0, description="How long the gateway keeps an idle client connection open")

    # Reports and feedback read and write the inference DB the heads log to.
    db_url: str = Field(DEFAULT_DB_URL, description="Inference DB (SQLAlchemy URL) the heads log to: "
                        "reports read it, feedback is stored in it")
    policy_check_interval_s: float = Field(10.0, ge=0, description="After feedback, run a model's promotion gate "
                                           "(auto policy) and rollback guard at most this often; 0 = only on "
                                           "POST /v1/models/{name}/evaluate")
    feedback_wait_s: float = Field(2.0, ge=0, le=30, description="Heads log asynchronously: feedback waits this long "
                                   "for its prediction to reach the DB before answering 404 (unknown prediction_id)")

    # Security. With no keys configured the gateway is open (the local default).
    api_keys: list[ApiKey] = Field(default_factory=list)
    api_keys_file: Path | None = Field(None, description="YAML list of keys (name, sha256, models, rate_per_s)")
    rate_limit_per_s: float = Field(50.0, gt=0, description="Per-key sustained requests/s")
    anonymous_rate_limit_per_s: float | None = Field(None, gt=0, description="Per-client-IP limit when no keys are "
                                                     "configured (the open local default); None = unlimited")
    rate_limit_burst: int = Field(100, ge=1, description="Requests a caller may send at once before the rate applies")
    rate_limit_max_callers: int = Field(100_000, ge=1, description="Callers (keys, client IPs) whose buckets are kept; "
                                       "idle full buckets are dropped first, so memory stays bounded under abuse")
    # Who may read /metrics and the detailed /readyz (which list every model): "open" (anyone who
    # reaches the port), "key" (an API key allowed on every model, or the admin token; open while no
    # keys are configured), "admin" (the admin token only).
    ops_access: Literal["open", "key", "admin"] = Field("key", description="Who may read /metrics and the "
                                                        "detailed /readyz: open, key (a '*' API key or the admin "
                                                        "token) or admin (the admin token)")
