"""What the FastAPI front ends (heads, gateway) share: the PolyheadError -> HTTP mapping, request
ids, and one error shape for every failure, {"error": {"type", "message", "field"?}}: ours,
FastAPI's (422), Starlette's (404/405 on unknown paths and methods) and the body's (415 for a body
that is not JSON, 422 naming the field for invalid UTF-8)."""

from __future__ import annotations

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

from polyhead.errors import PolyheadError
from polyhead.validation import UNION_TAGS

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is echoed in headers, logs and gRPC metadata: anything else is replaced by our own.
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Error type per HTTP status for errors that are not PolyheadErrors (framework, body guard).
_KIND_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 422: "validation",
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
