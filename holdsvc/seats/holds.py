"""Seat holds in Redis: one method per Lua script, each reply mapped to a result here, once."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from holdsvc.seats import keys
from holdsvc.seats.cluster_client import ClusterPipelinedRedis
from holdsvc.seats.redis_client import FastRedis, PipelinedRedis
from holdsvc.seats.scripts import Scripts, UnknownScriptReply, load_scripts

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Held:
    seats: list[str]
    deadline_ms: int
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class HoldMeta:
    """What a hold's record keeps besides its seats and times."""

    user_id: str
    amount: str
    currency: str
    # The API key that made the hold ("" without keys).
    owner: str = ""

    def who(self) -> str:
        return who(self.user_id, self.owner)


def who(user_id: str, owner: str) -> str:
    """The scripts' ARGV[3], a customer: the owner and the user joined by \x1f, or the user
    alone when there is no owner. The scripts store it whole; neither name can hold \x1f."""
    return f"{owner}\x1f{user_id}" if owner else user_id


def _split_who(who: str) -> tuple[str, str]:
    """(owner, user) of a stored ARGV[3] (records made before owners have the user alone)."""
    owner, sep, user = who.partition("\x1f")
    return (owner, user) if sep else ("", who)


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A hold's Idempotency-Key, claimed by the hold script itself."""

    key: str
    fingerprint: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """A held booking as its Redis record has it (a hold not yet in SQL)."""

    booking_id: str
    flight_id: int
    user_id: str
    seats: list[str]
    amount: str
    currency: str
    created_ms: int
    deadline_ms: int
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Replayed:
    """The key's first request got ``first``; nothing changed now."""

    first: Held | Taken | NotEnough
    booking_id: str
    meta: HoldMeta | None


@dataclass(frozen=True, slots=True)
class KeyMismatch:
    """The key was used with a different request; nothing changed."""


@dataclass(frozen=True, slots=True)
class Taken:
    """Nothing was held; these seats belong to someone else."""

    seats: list[str]


@dataclass(frozen=True, slots=True)
class NotEnough:
    """Nothing was held; the flight has only ``free`` free seats."""

    free: int


@dataclass(frozen=True, slots=True)
class OverCustomerLimit:
    """Nothing was held; the customer already has ``held`` seats of the flight."""

    held: int


@dataclass(frozen=True, slots=True)
class NotRestored:
    """Nothing was held; this Redis does not have the flight's booked seats (yet)."""


@dataclass(frozen=True, slots=True)
class Extended:
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class ExtensionRefused:
    """Nothing changed: the extension would pass the hold's longest life (``extensions`` is
    None), or the hold has had the most extensions allowed."""

    max_deadline_ms: int
    extensions: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A flight's seats at one position of its seat stream (lua/seat_snapshot.lua)."""

    # The stream's last entry id then, "0-0" for an empty stream.
    position: str
    # One letter a seat in row-major order: "a" available, "h" held, "b" booked.
    statuses: str


class Confirm(Enum):
    BOOKED = 1
    ALREADY_BOOKED = 2
    HOLD_LOST = 0


class SeatStatus(Enum):
    AVAILABLE = "available"
    HELD = "held"
    BOOKED = "booked"


class HoldStore:
    """Atomic seat operations of one Redis; every method is one round trip.

    The hot path (every script call, seat reads) goes through the auto-pipelining client;
    redis-py serves the rest (INFO, pipelines of admin reads).
    """

    def __init__(
        self, redis: Redis, scripts: Scripts, fast: FastRedis, stream_length: int = 10_000
    ) -> None:
        self.redis = redis
        # Entries each flight's seat stream keeps, about (lua/_stream.lua); 0: no stream.
        self.stream_length = stream_length
        self.clock_offset_ms = 0.0
        self._s = scripts
        self._fast = fast
        if isinstance(fast, ClusterPipelinedRedis):
            fast.on_new_primary(self._load_on)

    owns_redis = False

    @property
    def fast(self) -> FastRedis:
        """The hot-path client (the one-server client, or the cluster's)."""
        return self._fast

    @property
    def connects(self) -> int:
        """Connections the hot-path client opened: 1, plus one per reconnect."""
        return self._fast.connects

    async def close(self) -> None:
        await self._fast.close()
        if self.owns_redis:
            await self.redis.aclose()

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        # _loaded's logic inlined: this is every hold's one round trip, and each coroutine
        # layer between the handler and the reply's future showed in its profile.
        try:
            return await self._fast.execute(*command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._reload(script)
        return await self._fast.execute(*command)

    async def _eval_many(
        self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One script over many key sets, all in one write (the sweeper's probes)."""
        if not calls:
            return []
        commands = [("EVALSHA", script.sha, len(ks), *ks, *args) for ks, args in calls]
        return await self._loaded(script, lambda: self._fast.execute_many(commands))

    async def _loaded(self, script: AsyncScript, run: Callable[[], Awaitable[T]]) -> T:
        """``run()``; after a NOSCRIPT (SCRIPT FLUSH, a restarted Redis) load the script's
        source and run it again, once."""
        try:
            return await run()
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._reload(script)
        return await run()

    async def load_everywhere(self) -> None:
        """SCRIPT LOAD every script on every Redis process (each primary of a cluster), so no
        node answers its first hold with NOSCRIPT."""
        for script in self._s.all():
            await self._fast.execute("SCRIPT", "LOAD", script.script)

    async def _load_on(self, node: PipelinedRedis) -> None:
        """Every script on a primary that just joined the cluster (slot by slot, a flight's
        holds follow their slot there)."""
        await asyncio.gather(*(node.execute("SCRIPT", "LOAD", s.script) for s in self._s.all()))
        log.info("loaded %d Lua scripts on a new primary", len(self._s.all()))

    async def _reload(self, script: AsyncScript) -> None:
        log.warning("Redis has no script %s (NOSCRIPT): loading it again", script.sha)
        await self._fast.execute("SCRIPT", "LOAD", script.script)

    async def ping(self) -> None:
        """Every Redis process this store uses answers (each primary of a cluster)."""
        await self._fast.run_ids()

    async def hold(
        self,
        flight_id: int,
        seats: list[str],
        booking_id: str,
        ttl_ms: int,
        meta: HoldMeta,
        key: KeyClaim | None = None,
        customer_limit: int = 0,
    ) -> Held | Taken | NotRestored | Replayed | KeyMismatch | OverCustomerLimit:
        # The run id of the connection the script goes out on (nothing awaits in between):
        # the script holds nothing unless the flight was restored into that very process.
        marker = _flight_keys(flight_id)[1]
        run_id = self._fast.run_id_for(marker) or await self._fast.connected_run_id_for(marker)
        reply = await self._eval(
            self._s.hold_seats,
            [*_hold_keys(flight_id, booking_id, key), *keys.seats(flight_id, seats)],
            [
                *_hold_args(booking_id, ttl_ms, meta, key, run_id),
                self.stream_length,
                customer_limit,
            ],
        )
        match reply:
            case [1, int(deadline), int(created)]:
                self.saw_clock(created)
                return Held(seats, deadline, created)
            case [2, *positions] if positions:
                return Taken([seats[int(p) - 1] for p in positions])
            case [3]:
                return NotRestored()
            case [6, int(held)]:
                return OverCustomerLimit(held)
        return _keyed("hold_seats", reply)

    async def hold_best(
        self,
        flight_id: int,
        count: int,
        rows: int,
        letters: str,
        booking_id: str,
        ttl_ms: int,
        meta: HoldMeta,
        key: KeyClaim | None = None,
        customer_limit: int = 0,
    ) -> Held | NotEnough | NotRestored | Replayed | KeyMismatch | OverCustomerLimit:
        marker = _flight_keys(flight_id)[1]
        run_id = self._fast.run_id_for(marker) or await self._fast.connected_run_id_for(marker)
        reply = await self._eval(
            self._s.hold_best,
            _hold_keys(flight_id, booking_id, key),
            [
                *_hold_args(booking_id, ttl_ms, meta, key, run_id),
                count,
                rows,
                letters,
                self.stream_length,
                customer_limit,
            ],
        )
        match reply:
            case [1, int(deadline), int(created), *names] if len(names) == count:
                self.saw_clock(created)
                return Held([n.decode() for n in names], deadline, created)
            case [2, int(free)]:
                return NotEnough(free)
            case [3]:
                return NotRestored()
            case [6, int(held)]:
                return OverCustomerLimit(held)
        return _keyed("hold_best", reply)

    async def records(self, flight_id: int, booking_ids: Sequence[str]) -> dict[str, HoldRecord]:
        """The Redis records of these bookings that exist, in one round trip."""
        if not booking_ids:
            return {}
        values = await self._fast.execute("HMGET", keys.records(flight_id), *booking_ids)
        return {
            booking_id: _record(flight_id, booking_id, value)
            for booking_id, value in zip(booking_ids, values, strict=True)
            if value is not None
        }

    async def record(self, flight_id: int, booking_id: str) -> HoldRecord | None:
        value = await self._fast.execute("HGET", keys.records(flight_id), booking_id)
        return None if value is None else _record(flight_id, booking_id, value)

    async def begin_payment(
        self, flight_id: int, seats: list[str], booking_id: str, window_ms: int
    ) -> int | None:
        """Extend the hold through the payment; None when the hold is no longer this booking's."""
        reply = await self._eval(
            self._s.begin_payment,
            [keys.deadlines(flight_id), *keys.seats(flight_id, seats)],
            [booking_id, window_ms],
        )
        match reply:
            case [1, int(deadline)]:
                return deadline
            case [0]:
                return None
        raise UnknownScriptReply("begin_payment", reply)

    async def confirm(self, flight_id: int, seats: list[str], booking_id: str) -> Confirm:
        reply = await self._eval(
            self._s.confirm_seats,
            [
                keys.deadlines(flight_id),
                keys.records(flight_id),
                keys.stream(flight_id),
                *keys.seats(flight_id, seats),
            ],
            [booking_id, self.stream_length],
        )
        if isinstance(reply, int) and reply in (0, 1, 2):
            return Confirm(reply)
        raise UnknownScriptReply("confirm_seats", reply)

    async def release(
        self, flight_id: int, seats: Sequence[str], booking_id: str, who: str = ""
    ) -> int:
        """Free the booking's seats; ``who`` made it (HoldMeta.who(), for the per-customer
        count of a confirmed booking, which has no record to say so)."""
        reply = await self._eval(
            self._s.release_seats,
            [
                keys.deadlines(flight_id),
                keys.records(flight_id),
                *keys.index(flight_id),
                keys.stream(flight_id),
                keys.customers(flight_id),
                *keys.seats(flight_id, seats),
            ],
            [booking_id, self.stream_length, who],
        )
        if isinstance(reply, int) and 0 <= reply <= len(seats):
            return reply
        raise UnknownScriptReply("release_seats", reply)

    async def due(self, flight_id: int, limit: int) -> list[str]:
        """Booking ids of this flight whose hold deadline has passed."""
        reply = await self._eval(self._s.due_holds, [keys.deadlines(flight_id)], [limit])
        if isinstance(reply, list):
            return [b.decode() for b in reply]
        raise UnknownScriptReply("due_holds", reply)

    async def flights_with_due_holds(self, flight_ids: list[int]) -> list[int]:
        """Which of these flights have a hold past its deadline, in one round trip."""
        replies = await self._eval_many(
            self._s.due_holds, [([keys.deadlines(f)], [1]) for f in flight_ids]
        )
        return [f for f, reply in zip(flight_ids, replies, strict=True) if reply]

    async def forget(
        self, flight_id: int, booking_ids: list[str], seats: Sequence[str] = ()
    ) -> None:
        """Once the expiry of these holds is recorded in SQL: drop them from the deadline
        index, delete their records, and mark free in the free-seat index those of ``seats``
        that their TTL freed."""
        if not booking_ids:
            return
        reply = await self._eval(
            self._s.free_lapsed,
            [
                keys.deadlines(flight_id),
                *keys.index(flight_id),
                keys.records(flight_id),
                keys.stream(flight_id),
                keys.customers(flight_id),
            ],
            [len(booking_ids), self.stream_length, *booking_ids, *seats],
        )
        if not (isinstance(reply, int) and 0 <= reply <= len(seats)):
            raise UnknownScriptReply("free_lapsed", reply)

    async def extend(
        self,
        flight_id: int,
        seats: Sequence[str],
        booking_id: str,
        add_ms: int,
        max_hold_ms: int,
        max_extensions: int,
    ) -> Extended | ExtensionRefused | None:
        """Move a held booking's deadline ``add_ms`` later (lua/extend_hold.lua); None when
        the booking holds its seats no more."""
        reply = await self._eval(
            self._s.extend_hold,
            [keys.deadlines(flight_id), keys.records(flight_id), *keys.seats(flight_id, seats)],
            [booking_id, add_ms, max_hold_ms, max_extensions],
        )
        match reply:
            case [1, int(deadline), int(now)]:
                self.saw_clock(now)
                return Extended(deadline)
            case [0]:
                return None
            case [2, int(latest)]:
                return ExtensionRefused(latest)
            case [3, int(latest), int(count)]:
                return ExtensionRefused(latest, count)
        raise UnknownScriptReply("extend_hold", reply)

    async def take_token(self, client: str, rate: float, burst: float) -> int | None:
        """One token of the client's bucket (lua/rate_limit.lua): None when taken, else the
        milliseconds until the next one."""
        reply = await self._eval(self._s.rate_limit, [keys.rate_bucket(client)], [rate, burst])
        match reply:
            case [1]:
                return None
            case [0, int(wait_ms)]:
                return wait_ms
        raise UnknownScriptReply("rate_limit", reply)

    async def sync_clock(self) -> None:
        seconds, micros = await self._fast.execute("TIME")
        self.saw_clock(int(seconds) * 1000 + int(micros) // 1000)

    def saw_clock(self, redis_ms: int) -> None:
        """Redis's clock, as a script just read it: kept as an offset from this process's,
        so a view can say how long a hold has left by the clock that expires it."""
        self.clock_offset_ms = redis_ms - time.time() * 1000

    def redis_now_ms(self) -> float:
        """Now by Redis's clock, as last seen (this process's clock before any script ran).
        Low by up to a reply's latency, so a hold's time left reads high by that much."""
        return time.time() * 1000 + self.clock_offset_ms

    async def snapshot(self, flight_id: int, rows: int, letters: str) -> Snapshot | NotRestored:
        """Every seat's status and the seat-stream position they are true at, atomically."""
        marker = keys.marker(flight_id)
        run_id = self._fast.run_id_for(marker) or await self._fast.connected_run_id_for(marker)
        reply = await self._eval(
            self._s.seat_snapshot, [marker, keys.stream(flight_id)], [run_id, rows, letters]
        )
        match reply:
            case [1, bytes(position), bytes(statuses)] if len(statuses) == rows * len(letters):
                return Snapshot(position.decode(), statuses.decode())
            case [3]:
                return NotRestored()
        raise UnknownScriptReply("seat_snapshot", reply)

    async def index(self, flight_id: int, rows: int, letters: str) -> int:
        """Build the flight's free-seat index from its seat keys; returns the seats taken."""
        reply = await self._eval(self._s.index_seats, keys.index(flight_id), [rows, letters])
        if isinstance(reply, int) and 0 <= reply <= rows * len(letters):
            return reply
        raise UnknownScriptReply("index_seats", reply)

    async def restore(
        self,
        flight_id: int,
        booked: list[tuple[str, str]],
        run_id: str | None,
        chunk: int = 5000,
    ) -> None:
        """Mark ``(seat, booking id)`` booked for good, then, given a ``run_id``, set the
        flight's marker to it, last."""
        chunks = [booked[i : i + chunk] for i in range(0, len(booked), chunk)] or [[]]
        for n, part in enumerate(chunks):
            last = n == len(chunks) - 1 and run_id is not None
            pairs = [x for seat, booking_id in part for x in (seat, booking_id)]
            reply = await self._eval(
                self._s.restore_seats,
                [keys.marker(flight_id), keys.stream(flight_id)],
                ["1" if last else "0", run_id or "", self.stream_length, *pairs],
            )
            if not (isinstance(reply, int) and 0 <= reply <= len(part)):
                raise UnknownScriptReply("restore_seats", reply)

    async def stale_markers(self, flight_ids: list[int]) -> list[int]:
        """The flights whose marker is missing or was set under another run id than that of
        the Redis process serving the flight now."""
        if not flight_ids:
            return []
        markers = [keys.marker(f) for f in flight_ids]
        # One GET per flight, not one MGET: each marker lives in its own flight's slot.
        values = await self._fast.execute_many([("GET", m) for m in markers])
        wanted = await self._fast.run_ids_for(markers)
        return [f for f, v, w in zip(flight_ids, values, wanted, strict=True) if v != w.encode()]

    async def holders(self, flight_id: int, bookings: list[tuple[str, list[str]]]) -> list[bool]:
        """For each (booking id, seats): does it still hold (or own) every one of its seats?"""
        replies = await self._fast.execute_many(
            [("MGET", *keys.seats(flight_id, seats)) for _, seats in bookings]
        )
        return [
            all((keys.seat_owner(v) or ("", False))[0] == booking_id for v in values)
            for (booking_id, _), values in zip(bookings, replies, strict=True)
        ]

    async def booked_values(self, flight_id: int, seats: Sequence[str]) -> dict[str, str]:
        """seat -> booking id of every seat booked for good ("!" values) among ``seats``."""
        owners = await self.seat_owners(flight_id, seats)
        return {seat: o[0] for seat, o in zip(seats, owners, strict=True) if o is not None and o[1]}

    async def run_id_of_flight(self, flight_id: int) -> str:
        """The run id of the Redis process that serves this flight (its cluster node), now."""
        [run_id] = await self._fast.run_ids_for([keys.marker(flight_id)])
        return run_id

    async def server_run_id(self) -> str:
        """Changes whenever a Redis process restarts (any primary of a cluster)."""
        return ",".join(sorted(await self._fast.run_ids()))

    async def seat_owners(
        self, flight_id: int, seats: Sequence[str]
    ) -> list[tuple[str, bool] | None]:
        """Each seat's (booking id, booked for good), or None where it is free."""
        values = await self._fast.execute("MGET", *keys.seats(flight_id, seats))
        return [keys.seat_owner(v) for v in values]

    async def live_holds(self, flight_ids: list[int]) -> int:
        """How many holds the deadline indexes of these flights count, in one round trip."""
        if not flight_ids:
            return 0
        return sum(
            await self._fast.execute_many([("ZCARD", keys.deadlines(f)) for f in flight_ids])
        )

    async def seat_statuses(self, flight_id: int, seats: Sequence[str]) -> list[SeatStatus]:
        owners = await self.seat_owners(flight_id, seats)
        return [_status(o) for o in owners]

    async def free_counts(self, flights: list[tuple[int, Sequence[str]]]) -> list[int]:
        """Free seats of several flights in one round trip (each flight's MGET goes to the
        node that serves it)."""
        if not flights:
            return []
        replies = await self._fast.execute_many(
            [("MGET", *keys.seats(flight_id, seats)) for flight_id, seats in flights]
        )
        return [sum(1 for v in values if v is None) for values in replies]


def _record(flight_id: int, booking_id: str, value: bytes) -> HoldRecord:
    """A record as _hold.lua's write_record() joins it; who (owner and user) is last."""
    created, deadline, seats, amount, currency, who = value.decode().split("\x1f", 5)
    owner, user = _split_who(who)
    return HoldRecord(
        booking_id, flight_id, user, seats.split(","), amount, currency, int(created),
        int(deadline), owner,
    )  # fmt: skip


def _hold_keys(flight_id: int, booking_id: str, key: KeyClaim | None) -> list[str]:
    fixed = _flight_keys(flight_id)
    if key is None:
        return list(fixed)
    return [*fixed[:3], keys.idempotency(flight_id, key.key), *fixed[4:]]


@functools.lru_cache(maxsize=16384)
def _flight_keys(flight_id: int) -> tuple[str, ...]:
    """A flight's keys that every hold names, built once: eight f-strings a hold showed in
    the store client's share of a hold (an unkeyed hold's idempotency key is the empty one)."""
    return (
        keys.deadlines(flight_id),
        keys.marker(flight_id),
        keys.records(flight_id),
        keys.idempotency(flight_id, ""),
        *keys.index(flight_id),
        keys.stream(flight_id),
        keys.customers(flight_id),
    )


def _hold_args(
    booking_id: str, ttl_ms: int, meta: HoldMeta, key: KeyClaim | None, run_id: str
) -> list[Any]:
    return [
        booking_id, ttl_ms, meta.who(), meta.amount, meta.currency,
        key.fingerprint if key else "", key.ttl_ms if key else 0, run_id,
    ]  # fmt: skip


def _keyed(script: str, reply: Any) -> Replayed | KeyMismatch:
    """The replies only a keyed hold gets: the key's first answer, or a mismatch."""
    match reply:
        case [5]:
            return KeyMismatch()
        case [4, b"h", bid, seats, deadline, created, who, amount, currency]:
            owner, user = _split_who(who.decode())
            meta = HoldMeta(user, amount.decode(), currency.decode(), owner)
            held = Held(seats.decode().split(","), int(deadline), int(created))
            return Replayed(held, bid.decode(), meta)
        case [4, b"t", _, seats, *_]:
            return Replayed(Taken(seats.decode().split(",")), "", None)
        case [4, b"n", _, free, *_]:
            return Replayed(NotEnough(int(free)), "", None)
    raise UnknownScriptReply(script, reply)


def _status(owner: tuple[str, bool] | None) -> SeatStatus:
    if owner is None:
        return SeatStatus.AVAILABLE
    return SeatStatus.BOOKED if owner[1] else SeatStatus.HELD


async def connect_hold_store(
    url: str, pool_size: int = 64, cluster: bool = False, stream_length: int = 10_000
) -> HoldStore:
    """A HoldStore with its own clients, for tools that run without the app (the benchmark).
    With ``cluster``, the hot path goes through the cluster client, routed by slot; the
    scripts are loaded on each primary as it first answers NOSCRIPT."""
    from redis.asyncio import BlockingConnectionPool

    redis = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=pool_size))
    fast: FastRedis = PipelinedRedis(url)
    if cluster:
        fast = ClusterPipelinedRedis(url)
    store = HoldStore(redis, await load_scripts(redis), fast, stream_length)
    store.owns_redis = True
    return store
