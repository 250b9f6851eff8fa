"""Settings base: one object per service that reads a YAML file, env vars and CLI flags alike.

Precedence, highest first: CLI flags (passed as keyword overrides) > environment variables
(`POLYHEAD_<SECTION>_<FIELD>`) > the YAML file (`--settings FILE` or `POLYHEAD_SETTINGS`; a
top-level section per service, e.g. `embedder:`) > defaults.

The defaults that several places must agree on (addresses, ports) are declared here, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SETTINGS_ENV_VAR = "POLYHEAD_SETTINGS"  # "config" is a head's YAML (configs/heads); this is the settings file

# -- defaults shared by the services, the CLI and `polyhead up` -------------------------------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_EMBEDDER_PORT = 50051
DEFAULT_EMBEDDER_METRICS_PORT = 9101
DEFAULT_GATEWAY_PORT = 8000
DEFAULT_HEAD_PORT = 8001
DEFAULT_EMBEDDER_TARGET = f"{DEFAULT_HOST}:{DEFAULT_EMBEDDER_PORT}"
DEFAULT_GATEWAY_URL = f"http://{DEFAULT_HOST}:{DEFAULT_GATEWAY_PORT}"
DEFAULT_HEADS_DIR = Path("configs/heads")
DEFAULT_MODELS_DIR = Path("models")
DEFAULT_DB_URL = "sqlite:///var/inference.db"  # the inference DB: heads log to it, the gateway reports from it
DEFAULT_MAX_BODY_BYTES = 1_048_576  # the gateway's request body limit; heads allow this plus what it adds
DEFAULT_ADMIN_TOKEN_FILE = Path("var/admin-token")  # `polyhead up` writes one here (0600) when none is set


def Port(default: int, description: str = "Listen port") -> Any:  # noqa: N802 - reads as a type in field lists
    """A TCP port field (0 = let the OS pick, as tests do)."""
    return Field(default, ge=0, le=65535, description=description)


class _YamlSection(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None):
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            section = loaded.get(settings_cls.section, {}) if isinstance(loaded, dict) else {}
            self._data = dict(section or {})

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class PolyheadSettings(BaseSettings):
    """Subclasses set `section` (YAML section) and `env_prefix="POLYHEAD_<SECTION>_"` in `model_config`."""

    section: ClassVar[str] = ""
    _settings_file: ClassVar[Path | None] = None

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        path = cls._settings_file or (Path(os.environ[SETTINGS_ENV_VAR]) if os.environ.get(SETTINGS_ENV_VAR) else None)
        return (init_settings, env_settings, _YamlSection(settings_cls, path))

    @classmethod
    def load(cls, settings_file: Path | str | None = None, **cli_overrides: Any):
        """Build the settings; CLI options left unset (None) fall through to env/file/defaults."""
        overrides = {k: v for k, v in cli_overrides.items()
                     if v is not None and not (isinstance(v, (list, tuple)) and not v)}  # no positional args = unset
        previous = cls._settings_file
        cls._settings_file = Path(settings_file) if settings_file else None
        try:
            return cls(**overrides)
        finally:
            cls._settings_file = previous


class ServiceSettings(PolyheadSettings):
    """What every served process has: where it listens and how it logs. Subclasses add `port`."""

    host: str = Field(DEFAULT_HOST, description="Listen address")
    log_level: str = Field("info", description="debug, info, warning or error")
    json_logs: bool = Field(True, description="One JSON object per log line (off: human-readable lines)")
    otlp_endpoint: str | None = Field(None, description="OpenTelemetry: send spans to this OTLP/HTTP traces endpoint "
                                      "(e.g. http://collector:4318/v1/traces); unset = tracing off, at no cost")


class HttpServiceSettings(ServiceSettings):
    """An HTTP service (gateway, head): its admin credential, body limit and read timeouts."""

    # A secret is never a command-line flag (ps shows those): env var, settings file or a token file.
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin routes (/admin/...); env "
                                          "or settings file only. Unset and no admin_token_file: admin routes refuse")
    admin_token_file: Path | None = Field(None, description="File holding the admin token (what `polyhead up` "
                                          "generates into var/admin-token)")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="Larger request bodies get 413")
    body_read_timeout_s: float = Field(10.0, gt=0, le=600, description="A request body that sends nothing for this "
                                       "long gets 408 and its connection is closed")
    header_read_timeout_s: float = Field(10.0, gt=0, le=600, description="A connection that has not sent complete "
                                         "request headers within this long is closed")

    def admin_secret(self) -> str | None:
        """The admin token: admin_token, else the first line of admin_token_file, else None."""
        if self.admin_token is not None and self.admin_token.get_secret_value():
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None and self.admin_token_file.is_file():
            return self.admin_token_file.read_text().strip() or None
        return None
