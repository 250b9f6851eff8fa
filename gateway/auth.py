"""API keys (Bearer, stored hashed), per-key rate limits (token bucket)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cachetools import TTLCache
from fastapi import Request

from gateway.settings import ApiKey, GatewaySettings
from polyhead.errors import ForbiddenError, OverloadedError, UnauthorizedError
from polyhead.http import BodySizeLimit  # noqa: F401 - re-exported: it lived here first
from polyhead.http import bearer_token, token_matches


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    key = "ph_" + secrets.token_urlsafe(32)
    return key, hash_key(key)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per caller: `rate` tokens/s, up to `burst`; an empty bucket says when to retry.

    Buckets live in a TTL cache bounded to `max_callers`: a bucket idle for burst/slowest-rate seconds
    has refilled, and a full bucket is the same as none, so expiring it changes nothing. Only when more
    than `max_callers` callers are active at once is the least recently used bucket dropped early
    (that caller starts over with a full burst): memory stays bounded however many callers appear.
    """

    def __init__(self, rate: float, burst: int, max_callers: int = 100_000, slowest_rate: float | None = None,
                 clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.refill_s = burst / min(rate, slowest_rate or rate)
        self._buckets: TTLCache[str, _Bucket] = TTLCache(maxsize=max_callers, ttl=self.refill_s, timer=clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, who: str, rate: float | None = None) -> None:
        rate = rate or self.rate
        now = self.clock()
        b = self._buckets.get(who)
        if b is None:
            b = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * rate)
        b.updated = now
        self._buckets[who] = b  # (re)insert: the TTL counts from the last request
        if b.tokens < 1:
            raise OverloadedError(f"rate limit of {rate:g} requests/s exceeded for {who!r}",
                                  retry_after_s=(1 - b.tokens) / rate)
        b.tokens -= 1


class Authenticator:
    def __init__(self, settings: GatewaySettings):
        keys = list(settings.api_keys)
        if settings.api_keys_file and Path(settings.api_keys_file).exists():
            keys += [ApiKey.model_validate(k) for k in yaml.safe_load(Path(settings.api_keys_file).read_text()) or []]
        self._by_hash = {k.sha256: k for k in keys}
        self.anonymous_rate = settings.anonymous_rate_limit_per_s
        rates = [settings.rate_limit_per_s, self.anonymous_rate or settings.rate_limit_per_s,
                 *(k.rate_per_s for k in keys if k.rate_per_s)]
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst,
                                   settings.rate_limit_max_callers, slowest_rate=min(rates))

    @property
    def required(self) -> bool:
        return bool(self._by_hash)

    def authenticate(self, request: Request) -> ApiKey | None:
        """None when no keys are configured (open local default); raises 401 otherwise. Remembered on
        the request: routes authenticate first (a dependency), before their body is validated."""
        if not self.required:
            return None
        if getattr(request.state, "api_key", None) is not None:
            return request.state.api_key
        request.state.api_key = key = self._check(request.headers.get("authorization", ""))
        return key

    def _check(self, header: str) -> ApiKey:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'", field="authorization")
        digest = hash_key(token.strip())
        for stored, key in self._by_hash.items():
            if hmac.compare_digest(stored, digest):
                return key
        raise UnauthorizedError("invalid API key", field="authorization")

    def check_embeddings(self, key: ApiKey | None) -> None:
        if key is not None and not key.may_embed():
            raise ForbiddenError(f"API key {key.name!r} may not call /v1/embeddings (a key limited to some models "
                                 f"needs embeddings: true)", field="authorization")

    def check_ops(self, request: Request, access: str, admin_token: str | None) -> bool:
        """May this request read /metrics and the detailed /readyz? (`ops_access`: open, key or admin)"""
        if access == "open" or token_matches(bearer_token(request), admin_token):
            return True
        if access == "admin":
            return False
        if not self.required:
            return True
        try:
            return self.authenticate(request).all_models
        except UnauthorizedError:
            return False

    @staticmethod
    def check_model(key: ApiKey | None, model: str) -> None:
        """ForbiddenError unless the key (None: no keys configured) may call `model`."""
        if key is not None and "*" not in key.models and model not in key.models:
            raise ForbiddenError(f"API key {key.name!r} may not call model {model!r}", field="model")

    def admit(self, request: Request, model: str | None = None) -> ApiKey | None:
        """Authenticate, check the model (if one is named) and take one request from the caller's rate."""
        key = self.authenticate(request)
        if model is not None:
            self.check_model(key, model)
        if key is not None:
            self.limiter.take(key.name, key.rate_per_s)
        elif self.anonymous_rate is not None:
            self.limiter.take(f"ip:{request.client.host if request.client else 'unknown'}", self.anonymous_rate)
        return key
