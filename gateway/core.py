"""The gateway's core, independent of HTTP: route by model name, forward, embed, list."""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx

from embedder.client import AsyncEmbedderClient, RetryPolicy
from gateway import metrics
from gateway.routing import Route, RoutingTable
from gateway.settings import GatewaySettings
from polyhead.errors import NotFoundError, PolyheadError, UnavailableError, ValidationError
from polyhead.http import REQUEST_ID_HEADER

log = logging.getLogger("polyhead.gateway.core")


class UpstreamReply:
    """A head's answer, passed through as is (status, raw JSON bytes, the headers that matter)."""

    def __init__(self, status: int, content: bytes, headers: dict[str, str]):
        self.status, self.content, self.headers = status, content, headers


class GatewayService:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.routing = RoutingTable(settings)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.embedder: AsyncEmbedderClient | None = None

    async def start(self) -> None:
        self.routing.refresh(force=True)
        self.embedder = AsyncEmbedderClient(self.settings.embedder_target, timeout_s=self.settings.embedder_timeout_s,
                                            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1))

    def _client(self, route: Route) -> httpx.AsyncClient:
        """One keep-alive pool per head: a slow or dead head cannot starve the others' connections
        (and httpcore's pool bookkeeping grows with the number of connections it scans)."""
        client = self._clients.get(route.url)
        if client is None:
            n = self.settings.max_connections_per_head
            client = httpx.AsyncClient(base_url=route.url, timeout=self.settings.head_timeout_s,
                                       limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
            self._clients[route.url] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        if self.embedder:
            await self.embedder.close()

    async def watch_routes(self) -> None:
        while self.settings.reload_interval_s > 0:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                self.routing.refresh()
            except Exception:  # a half-written file is read again next time
                log.exception("routing refresh failed")

    async def _call_head(self, route: Route, method: str, path: str, request_id: str, **kwargs) -> httpx.Response:
        try:
            return await self._client(route).request(method, path, headers={REQUEST_ID_HEADER: request_id},
                                           timeout=kwargs.pop("timeout", None) or route.timeout_s or self.settings.head_timeout_s,
                                           **kwargs)
        except httpx.TimeoutException:
            metrics.UPSTREAM_ERRORS.labels(route.name, "timeout").inc()
            raise UnavailableError(f"model {route.name!r} timed out (head at {route.url})", retry_after_s=2) from None
        except httpx.TransportError as exc:
            metrics.UPSTREAM_ERRORS.labels(route.name, "unreachable").inc()
            raise UnavailableError(f"model {route.name!r} is unavailable: head at {route.url} is unreachable "
                                   f"({type(exc).__name__})", retry_after_s=2) from None

    async def predict(self, name: str, payload: dict, request_id: str) -> UpstreamReply:
        route = self.routing.get(name)
        response = await self._call_head(route, "POST", "/predict", request_id, json=payload)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        if (response.status_code >= 500 and response.status_code != 503) or not is_json:
            metrics.UPSTREAM_ERRORS.labels(name, f"http_{response.status_code}").inc()
            raise UnavailableError(f"model {name!r} failed (head answered HTTP {response.status_code})", retry_after_s=2)
        headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
        return UpstreamReply(response.status_code, response.content, headers)

    async def model_info(self, name: str, request_id: str = "") -> dict:
        route = self.routing.get(name)
        entry = {"name": name, "description": route.description, "ready": False}
        try:
            r = await self._call_head(route, "GET", "/info", request_id, timeout=self.settings.info_timeout_s)
            info = r.json()
        except (PolyheadError, ValueError) as exc:
            return {**entry, "error": getattr(exc, "message", str(exc))}
        metrics_ = info.get("metrics") or {}
        return {**entry, "version": info.get("version"), "labels": info.get("labels", []),
                "metrics": {k: metrics_.get(k) for k in ("accuracy", "f1_weighted", "f1_macro") if k in metrics_},
                "ready": bool(info.get("ready")), "checks": info.get("checks", {}),
                "embedder_fingerprint": info.get("embedder_fingerprint")}

    async def list_models(self, request_id: str = "") -> list[dict]:
        names = sorted(self.routing.routes)
        return list(await asyncio.gather(*(self.model_info(n, request_id) for n in names)))

    async def embeddings(self, inputs: list[str], model: str, encoding_format: str, dimensions: int | None,
                         request_id: str) -> dict:
        info = await self.embedder.info(timeout_s=2.0)
        if model not in (info.model, "default"):
            raise NotFoundError(f"unknown embedding model {model!r}; known models: {info.model}", field="model")
        if dimensions is not None and dimensions != info.dim:
            raise ValidationError(f"dimensions: {info.model} produces {info.dim} dimensions, got {dimensions}",
                                  field="dimensions")
        out = await self.embedder.embed(inputs, request_id=request_id)
        data = []
        for i, vector in enumerate(out.vectors):
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding_format == "base64" \
                else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(out.token_counts)
        return {"object": "list", "data": data, "model": out.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
