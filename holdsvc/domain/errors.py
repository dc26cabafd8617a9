"""Domain errors. The error middleware maps each to its HTTP status and JSON body, once."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """An expected refusal; ``status`` and :meth:`body` are what the client receives:
    ``{"error": <a readable sentence>, "code": <stable snake_case>, ...details}``. A program
    acts on ``code`` (README lists them all); ``error`` keeps the seed systems' messages."""

    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated, replaced per instance

    def __init__(self, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.extra}


class ValidationError(DomainError):
    """Bad input. ``errors`` lists every problem found, each ``{"field": "$.rows",
    "message": "must be at most 150"}`` in words; a refusal of the request as a whole (no
    body, two ways of saying one thing) names no field."""

    status = 400
    code = "validation_error"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        errors: list[dict[str, str]] | None = None,
        field: str | None = None,
        **extra: Any,
    ) -> None:
        if errors is None:
            errors = [{"field": field or "$", "message": message}]
        super().__init__(message, code, errors=errors, **extra)


class UnsupportedMediaType(DomainError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(DomainError):
    """No API key, or one nobody configured (RFC 6750's challenge says which)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, code: str, challenge: str = 'Bearer realm="holdsvc"') -> None:
        super().__init__(message, code)
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, current: str, target: str) -> None:
        # The seed's exact sentence, and the two states apart, for programs.
        super().__init__(
            f"Invalid state transition from {current} to {target}",
            **{"from": current, "to": target},
        )
        self.current = current
        self.target = target


class SeatsNotAvailable(Conflict):
    code = "seats_not_available"

    def __init__(self, **extra: Any) -> None:
        super().__init__("Seats not available", **extra)


class IdempotencyMismatch(DomainError):
    status = 422
    code = "idempotency_conflict"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers = {"Retry-After": str(retry_after_s)}


class Unavailable(DomainError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers = {"Retry-After": str(retry_after_s)}
