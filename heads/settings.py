"""Head settings: YAML section `head:`, env `POLYHEAD_HEAD_*`, or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from polyhead.settings import DEFAULT_DB_URL, DEFAULT_EMBEDDER_TARGET, DEFAULT_HEAD_PORT, DEFAULT_MODELS_DIR, Port, ServiceSettings


class HeadSettings(ServiceSettings):
    section = "head"
    model_config = SettingsConfigDict(env_prefix="POLYHEAD_HEAD_", extra="forbid")

    config: Path = Field(..., description="The head's config, configs/heads/<name>.yaml")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Where versioned artifacts live")
    embedder_target: str = Field(DEFAULT_EMBEDDER_TARGET, description="Embedder gRPC address (dns:///name:port balances)")
    embedder_timeout_s: float = Field(5.0, gt=0, description="Per-call deadline towards the embedder")
    embed_fallback_entries: int = Field(2048, ge=0, description="Recently embedded texts kept (~1.5 KiB each) to "
                                        "answer them while no embedder answers; 0 = off")
    l2_cache_url: str | None = Field(None, description="The embedders' shared L2 cache (Redis URL), read while no "
                                     "embedder answers; unset = recent texts only")
    l2_cache_key_prefix: str = Field("polyhead:emb:", description="The embedders' l2_cache_key_prefix")
    l2_cache_timeout_ms: float = Field(100.0, gt=0, description="A slower Redis read is given up (503 as before)")
    port: int = Port(DEFAULT_HEAD_PORT, "HTTP port")
    keepalive_s: float = Field(75.0, gt=0, description="Idle keep-alive of client connections; longer than the "
                               "gateway's head_keepalive_s, so the gateway's reused connections are never stale")
    db_url: str = Field(DEFAULT_DB_URL, description="Inference DB (SQLAlchemy URL)")
    spool_dir: Path = Field(Path("var/spool"), description="Records wait here while the DB is down")
    version_poll_s: float = Field(2.0, ge=0, description="How often to look for a new version; 0 = only on /admin/reload")
    readiness_ttl_s: float = Field(2.0, ge=0, description="How long a readiness probe of the embedder is reused")
