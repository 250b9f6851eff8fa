"""One error type for every service, mapped once to HTTP and gRPC status codes (as TEI does).

Core code raises `PolyheadError` subclasses; only the front ends (gRPC servicer, FastAPI
exception handler) translate them, so a given failure means the same status everywhere.
"""

from __future__ import annotations

from http import HTTPStatus


class PolyheadError(Exception):
    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code_name: str = "INTERNAL"  # a grpc.StatusCode member name; grpc is imported lazily
    kind: str = "internal"

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict:
        body = {"type": self.kind, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class ValidationError(PolyheadError):
    """The caller sent something outside the contract; retrying the same request cannot help."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code_name = "INVALID_ARGUMENT"
    kind = "validation"


class UnauthorizedError(PolyheadError):
    """No or an unknown API key."""

    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code_name = "UNAUTHENTICATED"
    kind = "unauthorized"


class ForbiddenError(PolyheadError):
    """A known key that may not do this."""

    http_status = HTTPStatus.FORBIDDEN
    grpc_code_name = "PERMISSION_DENIED"
    kind = "forbidden"


class NotFoundError(PolyheadError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_code_name = "NOT_FOUND"
    kind = "not_found"


class ConflictError(PolyheadError):
    """Well formed, but the current state does not allow it (e.g. nothing to promote or roll back to)."""

    http_status = HTTPStatus.CONFLICT
    grpc_code_name = "FAILED_PRECONDITION"
    kind = "conflict"


class OverloadedError(PolyheadError):
    """Queue full or rate limit hit: retry later, the request was not accepted."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    grpc_code_name = "RESOURCE_EXHAUSTED"
    kind = "overloaded"


class UnavailableError(PolyheadError):
    """Not ready, draining, or a dependency is down."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code_name = "UNAVAILABLE"
    kind = "unavailable"


class DeadlineExceededError(PolyheadError):
    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code_name = "DEADLINE_EXCEEDED"
    kind = "deadline_exceeded"


def grpc_status_code(error: PolyheadError):
    import grpc

    return getattr(grpc.StatusCode, error.grpc_code_name)
