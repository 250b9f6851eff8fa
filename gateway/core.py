"""The gateway's core, independent of HTTP: route by model name, forward, embed, list."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping

import aiohttp
from pydantic import BaseModel, Field, ValidationError as SchemaError, create_model

from embedder.client import AsyncEmbedderClient, RetryPolicy
from gateway import metrics
from gateway.routing import Route, RoutingTable
from gateway.settings import GatewaySettings
from heads.api import HeadInfo, encode_model_error, process_base_url
from polyhead import tracing
from polyhead.errors import NotFoundError, PolyheadError, UnavailableError, ValidationError
from polyhead.http import CALLER_HEADER, PREDICTION_ID_HEADER, REQUEST_ID_HEADER

log = logging.getLogger("polyhead.gateway.core")

RETRY_DELAY_S = 0.05  # before the one retry of a call whose connection broke (the standby needs a few ms)


class UpstreamReply:
    """A head's answer, passed through as is (status, raw JSON bytes, the headers that matter)."""

    def __init__(self, status: int, content: bytes, headers: Mapping[str, str]):
        self.status, self.content, self.headers = status, content, headers


class _ModelInfoOwn(BaseModel):
    name: str
    description: str = ""
    metrics: dict[str, float | None] = Field({}, description="The served version's test accuracy, f1_weighted "
                                                             "and f1_macro")
    error: str | None = Field(None, description="Why the head's /info could not be read")


# A /v1/models entry: the route's name and description, and a digest of the head's /info whose fields are
# HeadInfo's own (declared once, there).
MODEL_INFO_FROM_HEAD = ("version", "labels", "ready", "checks", "embedder_fingerprint", "feature_set", "drift")
ModelInfo = create_model("ModelInfo", __base__=_ModelInfoOwn, __module__=__name__,
                         **{f: (HeadInfo.model_fields[f].annotation, HeadInfo.model_fields[f])
                            for f in MODEL_INFO_FROM_HEAD})
TEST_METRICS_SHOWN = ("accuracy", "f1_weighted", "f1_macro")


class GatewayService:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.routing = RoutingTable(settings)
        self._session: aiohttp.ClientSession | None = None
        self.embedder: AsyncEmbedderClient | None = None
        self._embedder_info = None  # the embedder's Info, re-read only when an Embed reports another fingerprint
        # Heads believe the caller header (whose key a prediction is) only with the admin token.
        self._admin_token = settings.admin_secret()

    async def start(self) -> None:
        self.routing.refresh(force=True)
        self.embedder = AsyncEmbedderClient(self.settings.embedder_target, timeout_s=self.settings.embedder_timeout_s,
                                            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1))
        # aiohttp, not httpx, on the hot path: its pool hands out a keep-alive connection in O(1), and a
        # forwarded call costs about a third of httpx's CPU (BENCHMARKS.md, section 3, "upstream client").
        # limit_per_host: a slow or dead head can hold only its own share of connections.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.settings.max_connections_per_head,
                                         keepalive_timeout=self.settings.head_keepalive_s)
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.head_timeout_s))

    async def close(self) -> None:
        if self._session:
            await self._session.close()
        if self.embedder:
            await self.embedder.close()

    async def watch_routes(self) -> None:
        while self.settings.reload_interval_s > 0:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                self.routing.refresh()
            except Exception:  # a half-written file is read again next time
                log.exception("routing refresh failed")

    async def _call_head(self, route: Route, method: str, path: str, request_id: str, body: bytes | None = None,
                         timeout_s: float | None = None, caller: str | None = None) -> UpstreamReply:
        return await self._request(method, route.url + path, [route], request_id, body,
                                   timeout_s or route.timeout_s or self.settings.head_timeout_s, caller)

    async def _request(self, method: str, url: str, routes: list[Route], request_id: str, body: bytes | None,
                       timeout_s: float, caller: str | None = None) -> UpstreamReply:
        """One call to a head process on behalf of `routes` (one head, or several packed ones behind
        /classify); a timeout or an unreachable head is UnavailableError naming every model involved.
        `caller`: the API key (name) the call is made for; the head logs it with its predictions."""
        headers = {REQUEST_ID_HEADER: request_id}
        if body is not None:
            headers["content-type"] = "application/json"
        if caller is not None:
            headers[CALLER_HEADER] = caller
        if self._admin_token is not None:
            headers["authorization"] = f"Bearer {self._admin_token}"
        tracing.inject(headers)
        failure, cause = "timeout", None
        for attempt in (1, 2):
            try:
                async with self._session.request(method, url, data=body, headers=headers,
                                                 timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                    content = await response.read()
                    return UpstreamReply(response.status, content, response.headers)
            except TimeoutError:  # aiohttp's timeouts are TimeoutErrors; checked before ClientError on purpose
                failure, cause = "timeout", None
                break  # a slow head is not retried: it would get the same work twice
            except aiohttp.ClientConnectionError as exc:
                # The connection broke or was refused: the head process died (its standby, or its
                # restart, takes over the port). Every call to a head is idempotent (a predict only
                # logs): one retry on a fresh connection.
                failure, cause = "unreachable", type(exc).__name__
                if attempt == 1:
                    metrics.UPSTREAM_RETRIES.labels(routes[0].name if len(routes) == 1 else "-").inc()
                    await asyncio.sleep(RETRY_DELAY_S)
            except aiohttp.ClientError as exc:
                failure, cause = "unreachable", type(exc).__name__
                break
        for r in routes:
            metrics.UPSTREAM_ERRORS.labels(r.name, failure).inc()
        if len(routes) == 1:
            who, are, where = f"model {routes[0].name!r}", "is", f"head at {routes[0].url}"
        else:
            who, are, where = f"models {', '.join(r.name for r in routes)}", "are", f"head process at {url}"
        if cause is None:
            raise UnavailableError(f"{who} timed out ({where})", retry_after_s=2)
        raise UnavailableError(f"{who} {are} unavailable: {where} is unreachable ({cause})", retry_after_s=2)

    async def predict(self, name: str, body: bytes, request_id: str, caller: str | None = None) -> UpstreamReply:
        """Forward a predict body (JSON bytes) to the named model's head; its answer comes back as is."""
        return await self._forward(name, "/predict", body, request_id, caller)

    async def explain(self, name: str, body: bytes, request_id: str, caller: str | None = None) -> UpstreamReply:
        """Forward an explain body to the named model's head (word-occlusion importances)."""
        return await self._forward(name, "/explain", body, request_id, caller)

    async def _forward(self, name: str, path: str, body: bytes, request_id: str,
                       caller: str | None = None) -> UpstreamReply:
        route = self.routing.get(name)
        reply = await self._call_head(route, "POST", path, request_id, body=body, caller=caller)
        is_json = reply.headers.get("Content-Type", "").startswith("application/json")
        if (reply.status >= 500 and reply.status != 503) or not is_json:
            metrics.UPSTREAM_ERRORS.labels(name, f"http_{reply.status}").inc()
            raise UnavailableError(f"model {name!r} failed (head answered HTTP {reply.status})", retry_after_s=2)
        reply.headers = {k: v for k, v in reply.headers.items() if k.lower() in ("retry-after", PREDICTION_ID_HEADER)}
        return reply

    async def head_json(self, route: Route, path: str, request_id: str = "") -> dict | None:
        """A head's JSON answer to GET `path` (e.g. /info, /drift), or None: unreachable, not 200, not JSON."""
        try:
            reply = await self._call_head(route, "GET", path, request_id, timeout_s=self.settings.info_timeout_s)
            body = json.loads(reply.content) if reply.status == 200 else None
        except (PolyheadError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def classify(self, texts: list[str], names: list[str], request_id: str,
                       refused: Mapping[str, PolyheadError] | None = None, caller: str | None = None) -> dict:
        """Every named model on the same texts: {name: its predict body | {"error", "status"}}.

        Models packed in one head process get ONE /classify call (one embedding, shared in-process);
        models in their own processes get their /predict calls at once, so the embedder embeds the
        texts once and answers the others from its in-flight dedup and cache. One model failing
        fails only its entry. `refused`: models already answered with an error (e.g. 403)."""
        results: dict[str, dict] = {n: encode_model_error(int(e.http_status), e.to_dict())
                                    for n, e in (refused or {}).items()}
        by_process: dict[str, list[Route]] = {}
        single: list[Route] = []
        for name in names:
            if name in results:
                continue
            route = self.routing.routes.get(name)
            if route is None:
                err = NotFoundError(f"unknown model {name!r}; known models: "
                                    f"{', '.join(sorted(self.routing.routes)) or '(none)'}", field="models")
                results[name] = encode_model_error(404, err.to_dict())
                continue
            base = process_base_url(route.url, name)
            if base is None:
                single.append(route)
            else:
                by_process.setdefault(base, []).append(route)

        async def packed(base: str, routes: list[Route]) -> dict:
            # ensure_ascii=False: never larger than the caller's body (the heads' body limit is the gateway's)
            body = json.dumps({"texts": texts, "models": [r.name for r in routes]}, ensure_ascii=False).encode()
            timeout = max((r.timeout_s or self.settings.head_timeout_s) for r in routes)
            try:
                reply = await self._request("POST", base + "/classify", routes, request_id, body, timeout, caller)
            except PolyheadError as err:
                return {r.name: encode_model_error(int(err.http_status), err.to_dict()) for r in routes}
            if reply.status == 200:
                return json.loads(reply.content)["results"]
            return {r.name: _error_entry(reply, r.name) for r in routes}

        async def alone(route: Route) -> dict:
            body = json.dumps({"texts": texts}, ensure_ascii=False).encode()
            try:
                reply = await self._call_head(route, "POST", "/predict", request_id, body=body, caller=caller)
            except PolyheadError as err:
                return {route.name: encode_model_error(int(err.http_status), err.to_dict())}
            if reply.status == 200:
                return {route.name: json.loads(reply.content)}
            return {route.name: _error_entry(reply, route.name)}

        parts = await asyncio.gather(*(packed(b, rs) for b, rs in by_process.items()), *(alone(r) for r in single))
        for part in parts:
            results.update(part)
        return {n: results[n] for n in names if n in results}

    async def head_info(self, route: Route, request_id: str = "") -> HeadInfo:
        """The head's GET /info, typed; UnavailableError saying why it could not be read."""
        reply = await self._call_head(route, "GET", "/info", request_id, timeout_s=self.settings.info_timeout_s)
        if reply.status != 200:
            raise UnavailableError(f"model {route.name!r}: its head answered HTTP {reply.status} to /info")
        try:
            return HeadInfo.model_validate_json(reply.content)
        except SchemaError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise UnavailableError(f"model {route.name!r}: its head's /info is not a head info "
                                   f"({exc.error_count()} errors; {where}: {first['msg']})") from None

    async def model_info(self, name: str, request_id: str = "") -> ModelInfo:
        route = self.routing.get(name)
        try:
            info = await self.head_info(route, request_id)
        except PolyheadError as exc:
            return ModelInfo(name=name, description=route.description, ready=False, error=exc.message)
        return ModelInfo(name=name, description=route.description,
                         metrics={k: info.metrics.get(k) for k in TEST_METRICS_SHOWN if k in info.metrics},
                         **{f: getattr(info, f) for f in MODEL_INFO_FROM_HEAD})

    async def list_models(self, request_id: str = "", names: list[str] | None = None) -> list[ModelInfo]:
        names = sorted(self.routing.routes) if names is None else names
        return list(await asyncio.gather(*(self.model_info(n, request_id) for n in names)))

    async def _refresh_embedder_info(self):
        self._embedder_info = await self.embedder.info(timeout_s=2.0)
        return self._embedder_info

    async def embeddings(self, inputs: list[str], model: str, encoding_format: str, dimensions: int | None,
                         request_id: str) -> dict:
        info = self._embedder_info or await self._refresh_embedder_info()
        _check_embedding_request(info, model, dimensions)
        out = await self.embedder.embed(inputs, request_id=request_id)
        if out.fingerprint != info.fingerprint:  # another encoder now serves: check the request against it
            _check_embedding_request(await self._refresh_embedder_info(), model, dimensions)
        data = []
        for i, vector in enumerate(out.vectors):
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding_format == "base64" \
                else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(out.token_counts)
        return {"object": "list", "data": data, "model": out.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _error_entry(reply: UpstreamReply, name: str) -> dict:
    """A head's non-200 answer as one model's entry: its status and its error body (when it is one)."""
    if reply.status >= 500 and reply.status != 503:  # as /predict does: a crashed head is "unavailable"
        metrics.UPSTREAM_ERRORS.labels(name, f"http_{reply.status}").inc()
        return encode_model_error(503, UnavailableError(
            f"model {name!r} failed (head answered HTTP {reply.status})").to_dict())
    try:
        error = json.loads(reply.content)["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "unavailable", "message": f"model {name!r} answered HTTP {reply.status} without an error body"}
    return encode_model_error(reply.status, error)


def _check_embedding_request(info, model: str, dimensions: int | None) -> None:
    if model not in (info.model, "default"):
        raise NotFoundError(f"unknown embedding model {model!r}; known models: {info.model}", field="model")
    if dimensions is not None and dimensions != info.dim:
        raise ValidationError(f"dimensions: {info.model} produces {info.dim} dimensions, got {dimensions}",
                              field="dimensions")
