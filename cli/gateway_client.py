"""The CLI's calls to the gateway's public API: one place that turns a transport failure or an
`{"error": ...}` answer into the error taxonomy (polyhead.errors), so every command reports alike."""

from __future__ import annotations

from polyhead.errors import (ConflictError, ForbiddenError, NotFoundError, UnauthorizedError, UnavailableError,
                             ValidationError)

# The gateway's status -> the error the CLI reports (anything else: the gateway is not serving it).
ERRORS = {401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError, 422: ValidationError}


def call_gateway(method: str, url: str, *, api_key: str | None, timeout_s: float = 120, hint: str = "", **kwargs):
    """The httpx response of a 200; else the error of ERRORS (UnavailableError for any other status, or
    no answer) naming the gateway's own message."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.request(method, url, headers=headers, timeout=timeout_s, **kwargs)
    except httpx.HTTPError as exc:
        raise UnavailableError(f"gateway at {url.split('/v1/')[0]} is unreachable ({type(exc).__name__}); "
                               f"is `polyhead up` running?{hint}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise ERRORS.get(r.status_code, UnavailableError)(f"HTTP {r.status_code}: {message}")
    return r
