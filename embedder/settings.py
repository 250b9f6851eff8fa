"""Embedder settings: YAML section `embedder:`, env `POLYHEAD_EMBEDDER_*`, or CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from embedder.l2keys import L2_KEY_PREFIX
from polyhead.settings import DEFAULT_EMBEDDER_METRICS_PORT, DEFAULT_EMBEDDER_PORT, Port, ServiceSettings

DEFAULT_MODEL_DIR = Path("models/_encoders/all-minilm-l6-v2")
DEFAULT_ONNX_DIR = Path("models/_encoders/all-minilm-l6-v2-onnx")  # beside the SavedModel


class EmbedderSettings(ServiceSettings):
    section = "embedder"
    model_config = SettingsConfigDict(env_prefix="POLYHEAD_EMBEDDER_", extra="forbid")

    # Which runtime runs the encoder (embedder/backends.py); each backend+precision has its own fingerprint.
    backend: str = Field("tf_hub", description="tf_hub: the TensorFlow SavedModel (the "
                                              "reference); onnx: ONNX Runtime, no TensorFlow (install extra `onnx`)")
    precision: Literal["fp32", "int8"] = Field("fp32", description="onnx only: int8 = dynamic int8 quantisation "
                                               "(faster, vectors slightly off FP32; README: when to choose it)")
    onnx_model_dir: Path = Field(DEFAULT_ONNX_DIR, description="Backend onnx: the directory of model.<precision>.onnx "
                                 "and vocab.txt (exported there on first start when export_if_missing)")
    # The servable: a TF-Hub handle (URL or local directory), or fake:// (embedder/fake.py).
    model_handle: str = Field(str(DEFAULT_MODEL_DIR), description="TF-Hub handle: URL or local SavedModel directory; "
                              "fake:// serves a deterministic fake model (tests and development only)")
    model_name: str = Field("all-MiniLM-L6-v2", description="Name reported to callers")
    export_if_missing: bool = Field(True, description="Export the bundled MiniLM when model_handle is a missing local dir")
    max_seq_length: int = Field(128, ge=8, le=512, description="Used when exporting the bundled model")

    # Front end.
    port: int = Port(DEFAULT_EMBEDDER_PORT, "gRPC port")
    metrics_port: int = Port(DEFAULT_EMBEDDER_METRICS_PORT, "Prometheus /metrics over HTTP; 0 disables")
    grpc_max_message_mb: int = Field(64, ge=4, description="Largest gRPC message, both ways")
    shutdown_grace_s: float = Field(10.0, ge=0, description="In-flight calls get this long on SIGTERM")
    max_connection_age_s: float = Field(300.0, gt=0, description="Clients reconnect this often, so round-robin "
                                        "clients (k8s headless service) discover new replicas")

    # Limits (INVALID_ARGUMENT beyond them).
    max_texts_per_request: int = Field(1024, ge=1, description="Texts in one Embed call")
    max_text_chars: int = Field(10_000, ge=1, description="Characters in one text")

    # Cache.
    cache_max_entries: int = Field(50_000, ge=0, description="LRU entries; 0 disables the cache")
    # The shared L2 cache (Redis): survives restarts, shared by replicas. Its memory cap is Redis's own
    # maxmemory + maxmemory-policy allkeys-lru, set on the Redis server.
    l2_cache_url: str | None = Field(None, description="Shared L2 cache, e.g. redis://127.0.0.1:6379/0; "
                                     "unset = no L2 (the in-process LRU only)")
    l2_cache_ttl_s: float = Field(7 * 86400, gt=0, description="Lifetime of an L2 entry (seconds)")
    l2_cache_timeout_ms: float = Field(100.0, gt=0, description="A Redis read slower than this is skipped (the "
                                       "texts go to the model); writes, off the request path, get 5x as long")
    l2_cache_retry_s: float = Field(5.0, gt=0, description="After a Redis failure, L2 is skipped this long")
    l2_cache_key_prefix: str = Field(L2_KEY_PREFIX, description="Prefix of every L2 key")

    # Batching.
    max_batch_size: int = Field(32, ge=1, description="Texts per model batch")
    max_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits for company")
    max_queue_size: int = Field(8192, ge=1, description="Texts waiting for the model; RESOURCE_EXHAUSTED beyond")
    batch_window: int = Field(16, ge=1, description="A deep queue is read this many batches ahead to put texts of "
                              "similar length together (less padding); 1 = first come, first batched")
    split_overhead_chars: int = Field(256, ge=0, description="A model call's fixed cost, in characters of padding: "
                                      "a batch is cut into runs of similar length when that saves more; 0 = never cut")

    # Runtime threads (TensorFlow's or ONNX Runtime's); 0 = the runtime's own choice.
    intra_op_threads: int = Field(0, ge=0, description="Intra-op threads of TensorFlow / ONNX Runtime (0 = auto)")
    inter_op_threads: int = Field(0, ge=0, description="Inter-op threads of TensorFlow / ONNX Runtime (0 = auto)")
    # ONNX Runtime's pool threads spin between ops by default: quickest on an idle machine, but a spinning
    # thread takes a core from the gRPC loop and from whatever shares the machine (heads, gateway). Off by
    # default: on 2 busy cores, the INT8 service did 1.6-2.7x the texts/s without spinning (under load, to be
    # re-measured quietly; BENCHMARKS.md, "profile, under load").
    onnx_thread_spinning: bool = Field(False, description="Backend onnx: intra-op threads spin while waiting for "
                                       "work (ONNX Runtime's default; on for a machine the embedder has to itself)")
    # On by default: TensorFlow enables oneDNN by itself only on recent Intel CPUs (BENCHMARKS.md, section 1).
    onednn: bool = Field(True, description="TensorFlow's oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS, applied before "
                         "TensorFlow is imported)")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from embedder.backends import BACKENDS  # the registry: a backend is known when it is registered

        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {', '.join(BACKENDS)}")
        return value
