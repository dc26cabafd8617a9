"""Domain errors. The error middleware maps each to its HTTP status and JSON body, once."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """An expected refusal; ``status`` and :meth:`body` are what the client receives."""

    status = 400
    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated, replaced per instance

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class ValidationError(DomainError):
    status = 400


class UnsupportedMediaType(DomainError):
    status = 415


class Unauthorized(DomainError):
    """No API key, or one nobody configured (RFC 6750's challenge says which)."""

    status = 401

    def __init__(self, message: str, challenge: str = 'Bearer realm="holdsvc"') -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(DomainError):
    status = 403


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class InvalidTransition(Conflict):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"Invalid state transition from {current} to {target}")
        self.current = current
        self.target = target


class SeatsNotAvailable(Conflict):
    def __init__(self, **extra: Any) -> None:
        super().__init__("Seats not available", **extra)


class IdempotencyMismatch(DomainError):
    status = 422


class Unavailable(DomainError):
    status = 503

    def __init__(self, message: str, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers = {"Retry-After": str(retry_after_s)}
