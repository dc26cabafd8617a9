"""Who may do what: API keys, their two roles, and which bookings a key may see.

The one place for these rules. The HTTP layer only finds the request's key (its bearer
secret) and names the action; the booking services ask :func:`may_see` before they act.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from holdsvc.domain.records import BookingRecord


class Role(StrEnum):
    ADMIN = "admin"
    CLIENT = "client"


class Action(StrEnum):
    """What a request does, as far as permissions go."""

    READ_FLIGHTS = "read flights"
    CREATE_FLIGHT = "create flights"
    HOLD = "hold seats"
    # On one booking; a client key only on its own (may_see).
    ACT_ON_BOOKING = "act on bookings"
    # /metrics, /openapi.json and /docs, when the service listens beyond loopback.
    ADMIN_VIEWS = "read the admin views"


# The one permission table. A client key holds, reads flights, and reads, pays, cancels and
# refunds its own bookings; an admin key does everything, on any booking.
PERMITS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.CLIENT: frozenset({Action.READ_FLIGHTS, Action.HOLD, Action.ACT_ON_BOOKING}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a key's name and role."""

    name: str
    role: Role

    def may(self, action: Action) -> bool:
        return action in PERMITS[self.role]


# The service run without keys: every request acts as this, as before keys existed (it is
# only allowed on a loopback address). Its bookings have owner "".
OPEN = Principal("", Role.ADMIN)
# The admin CLI, run by whoever can read the database: an admin.
OPERATOR = Principal("", Role.ADMIN)


def may_see(principal: Principal, booking: BookingRecord) -> bool:
    """A client key sees only the bookings it made; to it, any other does not exist."""
    return principal.role is Role.ADMIN or booking.owner == principal.name


class KeyFileError(ValueError):
    """A key file or variable that cannot be used; the message names the line."""


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Long enough that guessing is hopeless; printable and without spaces, so a line splits.
_SECRET = re.compile(r"[\x21-\x7e]{16,256}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    principal: Principal
    # sha256 of the secret: the secret itself is kept nowhere after loading.
    digest: bytes

    def __repr__(self) -> str:  # never the digest either, in a log or a traceback
        return f"ApiKey({self.principal.name!r}, {self.principal.role.value})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def parse_key_line(line: str, where: str) -> ApiKey:
    """``name role secret``; ``where`` names the line in the error (never the secret)."""
    parts = line.split()
    if len(parts) != 3:
        raise KeyFileError(f"{where}: expected 'name role secret', got {len(parts)} fields")
    name, role, secret = parts
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"{where}: a key's name is 1 to 64 of A-Z a-z 0-9 _ . -")
    if role not in Role.__members__.values():
        raise KeyFileError(f"{where}: role must be admin or client, not {role!r}")
    if not _SECRET.fullmatch(secret):
        raise KeyFileError(f"{where}: a secret is 16 to 256 visible ASCII characters")
    return ApiKey(Principal(name, Role(role)), _digest(secret))


def parse_key_file(text: str, source: str) -> list[ApiKey]:
    """One key a line; blank lines and lines starting with # are skipped."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(parse_key_line(line, f"{source} line {n}"))
    return found


class Keyring:
    """The configured keys, found by their secret's digest. A dict lookup on a sha256 digest
    tells a timing observer nothing about the secret; the found entry is then confirmed with
    a constant-time comparison."""

    def __init__(self, api_keys: Iterable[ApiKey]) -> None:
        self._by_digest: dict[bytes, ApiKey] = {}
        names: set[str] = set()
        for key in api_keys:
            if key.principal.name in names:
                raise KeyFileError(f"the key name {key.principal.name!r} is given twice")
            if key.digest in self._by_digest:
                raise KeyFileError(
                    f"keys {self._by_digest[key.digest].principal.name!r} and"
                    f" {key.principal.name!r} have the same secret"
                )
            names.add(key.principal.name)
            self._by_digest[key.digest] = key

    @property
    def open(self) -> bool:
        """No keys: the service serves without authentication (loopback only)."""
        return not self._by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, secret: str) -> Principal | None:
        digest = _digest(secret)
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return None
        return key.principal


def load_keyring(path: Path | None, line: str | None) -> Keyring:
    """The keys of ``--api-keys FILE`` and of HOLDSVC_API_KEY (one line), together."""
    found: list[ApiKey] = []
    if path is not None:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror}") from None
        found += parse_key_file(text, str(path))
        if not found:
            raise KeyFileError(f"the API key file {path} has no keys")
    if line is not None and line.strip():
        found.append(parse_key_line(line, "HOLDSVC_API_KEY"))
    return Keyring(found)


def is_loopback(host: str) -> bool:
    """Only this machine can reach a listener on it. "" and 0.0.0.0 mean every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


__all__ = [
    "OPEN",
    "OPERATOR",
    "Action",
    "ApiKey",
    "KeyFileError",
    "Keyring",
    "Principal",
    "Role",
    "is_loopback",
    "load_keyring",
    "may_see",
    "parse_key_file",
    "parse_key_line",
]
