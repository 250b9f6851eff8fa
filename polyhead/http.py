"""What the FastAPI front ends (heads, gateway) share: the PolyheadError -> HTTP mapping,
request ids, and readable 422s for malformed bodies."""

from __future__ import annotations

import math
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from polyhead.errors import PolyheadError

REQUEST_ID_HEADER = "x-request-id"


def error_response(err: PolyheadError, request_id: str | None = None) -> JSONResponse:
    headers = {}
    if err.retry_after_s:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse({"error": err.to_dict()}, status_code=int(err.http_status), headers=headers)


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PolyheadError)
    async def _polyhead(request: Request, err: PolyheadError):
        return error_response(err, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = [_describe(e) for e in exc.errors()] or [("body", "body: invalid request")]
        return JSONResponse({"error": {"type": "validation", "message": "; ".join(m for _, m in problems),
                                       "field": problems[0][0]}}, status_code=422,
                            headers={REQUEST_ID_HEADER: request_id_of(request)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # still JSON, still a request id
        import logging

        logging.getLogger("polyhead.http").exception("unhandled error", extra={"request_id": request_id_of(request)})
        return JSONResponse({"error": {"type": "internal", "message": "internal error"}}, status_code=500,
                            headers={REQUEST_ID_HEADER: request_id_of(request)})


def _describe(error: dict) -> tuple[str, str]:
    """(field, message) of one pydantic error; the field is dotted and has no 'body.' prefix."""
    if error.get("type") == "json_invalid":  # loc is ("body", <character offset>): not a field
        reason = (error.get("ctx") or {}).get("error", "")
        return "body", f"body: invalid JSON at character {error['loc'][-1]}" + (f" ({reason})" if reason else "")
    field = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
    return field, f"{field}: {error['msg']}"


ERROR_RESPONSES = {
    422: {"description": "Invalid input: the message names the field and the limit"},
    503: {"description": "Not ready or a dependency (embedder) is down; see Retry-After"},
}
