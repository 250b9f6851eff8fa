"""Head settings: YAML section `head:`, env `POLYHEAD_HEAD_*`, or CLI flags."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from embedder.l2keys import L2_KEY_PREFIX
from polyhead.settings import (
    DEFAULT_DB_URL,
    DEFAULT_EMBEDDER_TARGET,
    DEFAULT_HEAD_PORT,
    DEFAULT_HEADS_DIR,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MODELS_DIR,
    HttpServiceSettings,
    Port,
)


class HeadSettings(HttpServiceSettings):
    section = "head"
    model_config = SettingsConfigDict(env_prefix="POLYHEAD_HEAD_", extra="forbid")

    # Which heads this process serves: config files (the positional arguments, or POLYHEAD_HEAD_CONFIG,
    # comma-separated) and/or `heads` (names or globs in heads_dir). ONE config file and no `heads` is
    # the classic one-head process, its endpoints at "/"; anything else is a packed process, each head's
    # endpoints at "/heads/<name>".
    config: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Head config file(s), configs/heads/<name>.yaml; env: comma-separated")
    heads: str | None = Field(None, description="Serve these heads packed in one process: names or globs of "
                              "configs in heads_dir, comma-separated (e.g. 'sentiment,spam' or '*')")
    heads_dir: Path = Field(DEFAULT_HEADS_DIR, description="Where --heads looks for <name>.yaml")
    pool_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                                  description="Name of a packed process (its spool folder); default from its heads")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Where versioned artifacts live")
    embedder_target: str = Field(DEFAULT_EMBEDDER_TARGET, description="Embedder gRPC address (dns:///name:port balances)")
    embedder_timeout_s: float = Field(5.0, gt=0, description="Per-call deadline towards the embedder")
    embed_fallback_entries: int = Field(2048, ge=0, description="Recently embedded texts kept per head "
                                        "(1.5 KiB each on the default feature set, 9 KiB on all6) to answer them "
                                        "while no embedder answers; 0 = off")
    l2_cache_url: str | None = Field(None, description="The embedders' shared L2 cache (Redis URL), read while no "
                                     "embedder answers; unset = recent texts only")
    l2_cache_key_prefix: str = Field(L2_KEY_PREFIX, description="The embedders' l2_cache_key_prefix")
    l2_cache_timeout_ms: float = Field(100.0, gt=0, description="A slower Redis read is given up (503 as before)")
    coalesce: bool = Field(True, description="Merge concurrent Embed calls of this process into fewer, larger ones")
    coalesce_max_inflight: int = Field(4, ge=1, le=64, description="Embed calls on the wire at once when coalescing; "
                                       "callers arriving meanwhile join the next call")
    coalesce_max_texts: int = Field(256, ge=1, le=1024, description="Most texts in one coalesced Embed call")
    coalesce_window_ms: float = Field(0.0, ge=0, le=50, description="Extra wait for company before a coalesced call "
                                      "(0: send as soon as a slot is free)")
    port: int = Port(DEFAULT_HEAD_PORT, "HTTP port")
    standby: bool = Field(False, description="Keep a forked warm standby worker that takes over the port at once "
                          "when the serving worker dies (heads/standby.py)")
    keepalive_s: float = Field(75.0, gt=0, description="Idle keep-alive of client connections; longer than the "
                               "gateway's head_keepalive_s, so the gateway's reused connections are never stale")
    db_url: str = Field(DEFAULT_DB_URL, description="Inference DB (SQLAlchemy URL)")
    spool_dir: Path = Field(Path("var/spool"), description="Write-ahead spool of the inference log: every answered "
                            "prediction is here until it is in the DB")
    retention_days: float = Field(0.0, ge=0, description="Prune raw inference-log rows older than this, in small "
                                  "batches (hourly rollups are kept; rows with feedback until a "
                                  "`train --with-feedback` run has used it); 0 = keep all")
    version_poll_s: float = Field(2.0, ge=0, description="How often to look for a new version; 0 = only on /admin/reload")
    readiness_ttl_s: float = Field(2.0, ge=0, description="How long a readiness probe of the embedder is reused")
    # The gateway's limit plus room for what it adds when it forwards (/classify's model names).
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES + 65_536, ge=1024, description="Larger request bodies get 413")

    @field_validator("config", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None:
            return []
        if isinstance(value, (str, Path)):
            return [p.strip() for p in str(value).split(",") if p.strip()]
        return value

    @property
    def packed(self) -> bool:
        return bool(self.heads) or len(self.config) != 1

    def config_paths(self) -> list[Path]:
        """Every head config this process serves, in order, without duplicates; errors name what is missing."""
        paths = list(self.config)
        for pattern in (p.strip() for p in (self.heads or "").split(",")):
            if not pattern:
                continue
            found = sorted(self.heads_dir.glob(pattern if pattern.endswith(".yaml") else f"{pattern}.yaml"))
            if not found:
                raise ValueError(f"heads: no head config matches {pattern!r} in {self.heads_dir}")
            paths += found
        if not paths:
            raise ValueError("no head to serve: give a config file or --heads NAMES")
        unique = {p.resolve(): p for p in paths}
        return list(unique.values())

    def spool_for(self, names: list[str]) -> Path:
        """One spool folder per process (the inference log locks it): the head's name, or the pool's."""
        if not self.packed:
            return self.spool_dir / names[0]
        pool = self.pool_name or "pool-" + hashlib.sha1(",".join(sorted(names)).encode()).hexdigest()[:10]
        return self.spool_dir / pool
