"""What the FastAPI front ends (heads, gateway) share: the PolyheadError -> HTTP mapping, request
ids, and one error shape for every failure, {"error": {"type", "message", "field"?}}: ours,
FastAPI's (422), Starlette's (404/405 on unknown paths and methods) and the body's (415 for a body
that is not JSON, 422 naming the field for invalid UTF-8)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from polyhead.errors import PolyheadError, UnauthorizedError
from polyhead.validation import UNION_TAGS

REQUEST_ID_HEADER = "x-request-id"
# The server-issued id of a prediction (also in the body): what feedback names. Unguessable.
PREDICTION_ID_HEADER = "x-prediction-id"
# Gateway -> head: the API key (name) a request is made for; logged with the prediction. A head
# believes it only from a caller holding its admin token (when it has one: internal_caller()).
CALLER_HEADER = "x-polyhead-caller"
_CALLER_OK = re.compile(r"[\x21-\x7e]{1,128}")
# A caller's id is echoed in headers, logs and gRPC metadata: anything else is replaced by our own.
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Error type per HTTP status for errors that are not PolyheadErrors (framework, body guard).
_KIND_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 408: "timeout", 413: "too_large", 415: "unsupported_media_type", 422: "validation",
                   429: "overloaded", 503: "unavailable"}

log = logging.getLogger("polyhead.http")


class ErrorJSONResponse(JSONResponse):
    """Error bodies are ASCII JSON: a message may quote the caller's input, unpaired surrogates included."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(status: int, message: str, field: str | None = None, kind: str | None = None,
               headers: dict | None = None) -> ErrorJSONResponse:
    error = {"type": kind or _KIND_BY_STATUS.get(status, "http_error"), "message": message}
    if field is not None:
        error["field"] = field
    return ErrorJSONResponse({"error": error}, status_code=status, headers=headers)


def error_response(err: PolyheadError, request_id: str | None = None) -> JSONResponse:
    headers = {}
    if err.retry_after_s:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return ErrorJSONResponse({"error": err.to_dict()}, status_code=int(err.http_status), headers=headers)


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID_OK.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_matches(given: str | None, secret: str | None) -> bool:
    return given is not None and secret is not None and hmac.compare_digest(given.encode(), secret.encode())


def require_admin(request: Request, secret: str | None) -> None:
    """Admin routes: 401 unless the request bears the service's admin token. A service with no token
    configured refuses every admin call (it never falls open): `polyhead up` always sets one."""
    if secret is None:
        raise UnauthorizedError("admin routes are disabled: this service has no admin_token configured",
                                field="authorization")
    if not token_matches(bearer_token(request), secret):
        raise UnauthorizedError("admin route: send 'Authorization: Bearer <admin token>'", field="authorization")


def internal_caller(request: Request, secret: str | None) -> str | None:
    """The API key name the gateway says a request is for (CALLER_HEADER). With an admin token
    configured, only a request bearing it is believed (anyone else could claim any key)."""
    global _warned_untrusted_caller
    caller = request.headers.get(CALLER_HEADER)
    if caller is None or not _CALLER_OK.fullmatch(caller):
        return None
    if secret is not None and not token_matches(bearer_token(request), secret):
        if not _warned_untrusted_caller:  # usually a gateway without the heads' admin token: say it once
            _warned_untrusted_caller = True
            log.warning("%s header without this head's admin token: ignored (give the gateway the same "
                        "admin_token, or feedback by API key cannot find its predictions)", CALLER_HEADER)
        return None
    return caller


_warned_untrusted_caller = False


def install_error_handlers(app: FastAPI) -> None:
    """Every error in one shape; also installs JsonBodyGuard (bodies that are not JSON or not UTF-8)."""
    app.add_middleware(JsonBodyGuard)

    @app.exception_handler(PolyheadError)
    async def _polyhead(request: Request, err: PolyheadError):
        return error_response(err, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = [_describe(e) for e in exc.errors()] or [("body", "body: invalid request")]
        return error_body(422, "; ".join(m for _, m in problems), problems[0][0],
                          headers={REQUEST_ID_HEADER: request_id_of(request)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):  # routing 404/405, body parser 400
        status = exc.status_code
        path = f"{request.method} {request.url.path}"
        if status == 404:
            message = f"not found: nothing at {path}"
        elif status == 405:
            message = f"method not allowed: {path} (allowed: {(exc.headers or {}).get('Allow', '?')})"
        else:
            message = f"{HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else 'error'}: " \
                      f"{exc.detail}"
        field = "body" if status == 400 else None
        return error_body(status, message, field, headers={**(exc.headers or {}), REQUEST_ID_HEADER: request_id_of(request)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # still JSON, still a request id
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return error_body(500, "internal error", kind="internal", headers={REQUEST_ID_HEADER: request_id_of(request)})


def _location(loc) -> str:
    """("body", "texts", 3) -> "texts[3]"; ("body", "a", "b") -> "a.b"."""
    out = ""
    for part in loc:
        if (part == "body" and not out) or part in UNION_TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _describe(error: dict) -> tuple[str, str]:
    """(field, message) of one pydantic error; the field reads like the JSON (`texts[3]`), no 'body.'."""
    if error.get("type") == "json_invalid":  # loc is ("body", <character offset>): not a field
        reason = (error.get("ctx") or {}).get("error", "")
        return "body", f"body: invalid JSON at character {error['loc'][-1]}" + (f" ({reason})" if reason else "")
    field = _location(error["loc"])
    if error.get("type") == "value_error" and (error.get("ctx") or {}).get("error") is not None:
        return field, f"{field}: {error['ctx']['error']}"  # our validators' words, without "Value error, "
    if error.get("type") in ("model_attributes_type", "dict_type", "model_type") and field == "body":
        return field, "body: expected a JSON object"
    return field, f"{field}: {error['msg']}"


class JsonBodyGuard:
    """ASGI middleware for request bodies, ahead of FastAPI's parser.

    - a body whose Content-Type is not JSON (or missing) -> 415, instead of a confusing 422;
    - a body that is not valid UTF-8: invalid bytes inside JSON strings become lone surrogates
      (re-encoded as \\udcXX escapes), so the schema's text check names the field, e.g. texts[3];
      anything else -> 422 naming the byte offset. Valid bodies pass through untouched.
    """

    METHODS = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in self.METHODS:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body:
            headers = dict(scope.get("headers") or [])
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if not _is_json(content_type):
                got = f"got {content_type!r}" if content_type else "no Content-Type header"
                response = error_body(415, f"content-type: send the body as application/json ({got})",
                                      "content-type")
                return await response(scope, receive, send)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                body = _with_escaped_invalid_bytes(body)
                if body is None:
                    response = error_body(422, f"body: not valid UTF-8 at byte {exc.start} and not repairable "
                                               f"as JSON", "body")
                    return await response(scope, receive, send)
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                         + [(b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _with_escaped_invalid_bytes(body: bytes) -> bytes | None:
    """The same JSON with each invalid byte as a \\udcXX escape (a lone surrogate the text check names),
    or None when the body is not JSON even then. Only hostile or broken clients get here."""
    try:
        return json.dumps(json.loads(body.decode("utf-8", "surrogateescape"))).encode("ascii")
    except ValueError:
        return None


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every error body of every polyhead HTTP service."""

    error: ErrorDetail


_ERROR_TEXT = {
    401: "Missing or invalid API key", 403: "This key may not do this",
    404: "Not found; the message says what", 409: "The current state does not allow it; the message says why",
    413: "Request body over max_body_bytes",
    415: "The body is not application/json", 422: "Invalid input; the message names the field and the limit",
    429: "Rate limit hit or server overloaded; see Retry-After",
    503: "Not ready or a dependency is down; see Retry-After",
    504: "A dependency (the embedder) did not answer in time",
}


def error_responses(*codes: int, **descriptions: str) -> dict:
    """OpenAPI `responses` for these error statuses, all in the ErrorResponse shape.
    Override a description with e.g. `_404="unknown model"`."""
    return {c: {"model": ErrorResponse, "description": descriptions.get(f"_{c}", _ERROR_TEXT[c])} for c in codes}


# /metrics: Prometheus' text exposition format, not JSON.
PROMETHEUS_TEXT = {200: {"description": "Prometheus text exposition format",
                         "content": {"text/plain": {"schema": {"type": "string"}}}}}


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit, declared or streamed (gateway and heads alike)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        response = JSONResponse({"error": {"type": "too_large", "message": f"request body exceeds the limit of "
                                           f"max_body_bytes={self.max_bytes}", "field": "body"}}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyReadTimeout:
    """ASGI middleware: a request body that stops arriving (Content-Length 100, 25 bytes sent) gets a
    408 and the connection is closed, instead of holding it and a task forever. The limit is per
    read (each chunk must come within `timeout_s`), so a slow but moving upload is not cut off.

    Incomplete headers never reach the app: uvicorn's h11 parser holds them; see polyhead_uvicorn_config's
    `timeout_keep_alive`, which our servers also apply to a connection that has sent nothing yet."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise _ReadTimedOut() from None

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except _ReadTimedOut:
            if started:
                raise
            response = error_body(408, f"request body: no data for {self.timeout_s:g} s (body_read_timeout_s); "
                                       f"send the whole body at once", "body", headers={"connection": "close"})
            await response(scope, receive, send)


class _ReadTimedOut(Exception):
    pass
