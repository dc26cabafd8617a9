"""Every Redis key holdsvc uses, built in one place.

All keys of a flight share the hash tag ``{f:<id>}`` so that every script touching one flight
runs on one Redis Cluster slot. Names are short on purpose: a held seat is one key, and its
name's bytes are Redis memory multiplied by every seat on sale.
"""

from __future__ import annotations

from collections.abc import Sequence

# Seat keys are ``{f:<id>}:<seat>``; seat names always start with a row digit, so they can never
# collide with the one-letter suffixes of the flight's other keys below.
_DEADLINES = "d"
_MARKER = "e"
_RECORDS = "b"
_IDEMPOTENCY = "k:"
# The free-seat index (lua/_hold.lua): the bitmap, the runs and counts a row, the layout.
_INDEX = ("m", "r", "c", "l")
_STREAM = "s"
_CUSTOMERS = "u"

# A confirmed seat keeps this prefix before the booking id, and no TTL: expiry can never free it.
BOOKED_PREFIX = b"!"


def seat_owner(value: bytes | None) -> tuple[str, bool] | None:
    """A seat key's value read: (booking id, booked for good), or None for a free seat."""
    if value is None:
        return None
    if value.startswith(BOOKED_PREFIX):
        return value[len(BOOKED_PREFIX) :].decode(), True
    return value.decode(), False


def seat(flight_id: int, seat_name: str) -> str:
    return f"{{f:{flight_id}}}:{seat_name}"


def seats(flight_id: int, seat_names: Sequence[str]) -> list[str]:
    prefix = f"{{f:{flight_id}}}:"
    return [prefix + s for s in seat_names]


def deadlines(flight_id: int) -> str:
    """Sorted set of the flight's live holds: member = booking id, score = deadline (ms)."""
    return f"{{f:{flight_id}}}:{_DEADLINES}"


def flight_of(key: bytes | str) -> int | None:
    """The flight id in a key of ours, or None for a key that is not ours."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if not text.startswith("{f:"):
        return None
    end = text.find("}", 3)
    if end < 0:
        return None
    number = text[3:end]
    return int(number) if number.isdigit() else None


def marker(flight_id: int) -> str:
    """Present once the flight's booked seats are in this Redis; gone with Redis's data."""
    return f"{{f:{flight_id}}}:{_MARKER}"


def records(flight_id: int) -> str:
    """The flight's held bookings' records: one hash, a field per booking (its id), written
    by the hold script beside the seats. One hash a flight, not a key a booking: a key's own
    overhead was most of what a record cost in memory."""
    return f"{{f:{flight_id}}}:{_RECORDS}"


def idempotency(flight_id: int, key: str) -> str:
    """A hold's Idempotency-Key entry (hash), in the flight's slot so the hold script owns it."""
    return f"{{f:{flight_id}}}:{_IDEMPOTENCY}{key}"


def stream(flight_id: int) -> str:
    """The flight's seat stream (a Redis Stream): every seat status change, in order."""
    return f"{{f:{flight_id}}}:{_STREAM}"


def customers(flight_id: int) -> str:
    """Seats held or booked per customer (hash: who -> seats), for the per-customer limit."""
    return f"{{f:{flight_id}}}:{_CUSTOMERS}"


def rate_bucket(client: str) -> str:
    """A client's hold-rate bucket: its own hash tag, so each client's lives in one slot."""
    return f"rl:{{{client}}}"


def index(flight_id: int) -> list[str]:
    """The flight's free-seat index: bitmap, longest free run a row, free seats a row, layout."""
    return [f"{{f:{flight_id}}}:{part}" for part in _INDEX]
