"""The live seat map: each process reads a watched flight's seat stream once, however many
clients listen, and hands every change to every listener, in order, none lost.

A listener starts from a snapshot (every seat's status and the stream position it is true
at), or, reconnecting with the position of the last event it got, from the entries after
that one, while the stream still has it. Whatever a listener cannot be given in order (its
position trimmed away, Redis's data lost, a client too slow to keep up) it gets as a fresh
snapshot instead: a change is never silently skipped.

Why a listener never misses an entry: it is registered with its flight's feed before its
snapshot is read (or its catch-up range), so every entry after the snapshot's position
reaches it through the feed, and entries it gets twice (through both) are dropped by
position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from holdsvc.domain.errors import Unavailable
from holdsvc.domain.flights import Flight, Flights
from holdsvc.seats.holds import HoldStore, NotRestored
from holdsvc.seats.scripts import UnknownScriptReply
from holdsvc.seats.stream import SNAPSHOT_STATUS, SeatStreams, StreamEntry

log = logging.getLogger(__name__)

Pos = tuple[int, int]
# How long one blocking read waits before the feed looks at its listeners again (who left).
BLOCK_MS = 1000
# Entries one read or catch-up call takes at most.
BATCH = 1000
# Entries a listener may fall behind by before it is given a snapshot instead.
MAX_PENDING = 20_000
RETRY_S = 0.2


def parse_position(text: str) -> Pos | None:
    """A stream position "<ms>-<seq>", or None for anything else."""
    ms, dash, seq = text.partition("-")
    if not dash or not (_digits(ms) and _digits(seq)):
        return None
    return int(ms), int(seq)


def parse_event_id(text: str | None) -> tuple[str, Pos, int | None] | None:
    """A ``Last-Event-ID``: an entry's position ("<ms>-<seq>": all of its seats were sent),
    or "<ms>-<seq>.<i>" (its seats up to the i-th, from 0, were sent); None when malformed."""
    if not text:
        return None
    position, dot, index = text.strip().partition(".")
    pos = parse_position(position)
    if pos is None or (dot and not _digits(index)):
        return None
    return position, pos, int(index) if dot else None


def _digits(text: str) -> bool:
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class SeatChange:
    """One seat's new status. ``event_id`` is its position: the entry's for the last seat of
    the entry, "<entry>.<i>" for the ones before it."""

    event_id: str
    seat: str
    status: str


@dataclass(frozen=True, slots=True)
class SeatSnapshot:
    """Every seat of the flight, (name, status) in seat order, true at ``event_id``."""

    event_id: str
    flight_id: int
    seats: tuple[tuple[str, str], ...]


SeatEvent = SeatChange | SeatSnapshot


@dataclass(frozen=True, slots=True)
class _Entry:
    """A stream entry as the feed hands it out: parsed once, shared by every listener."""

    pos: Pos
    changes: tuple[SeatChange, ...]


def _entry(raw: StreamEntry) -> _Entry:
    pos = parse_position(raw.position)
    if pos is None:
        raise UnknownScriptReply("seat stream", raw.position)
    last = len(raw.seats) - 1
    status = raw.status.value
    return _Entry(
        pos,
        tuple(
            SeatChange(raw.position if i == last else f"{raw.position}.{i}", seat, status)
            for i, seat in enumerate(raw.seats)
        ),
    )


def _snapshot_pos(snapshot: SeatSnapshot) -> Pos:
    # "0-0" for an empty stream: every entry is after it.
    return parse_position(snapshot.event_id) or (0, 0)


class Listener:
    """One client of one flight's feed."""

    def __init__(self, feed: _FlightFeed, closed: Callable[[], bool]) -> None:
        self._feed = feed
        self.closed = closed
        self._items: list[_Entry] = []
        self._wake = asyncio.Event()
        # The feed's dispatch count when this listener last needed a snapshot: a snapshot
        # read before a later dispatch may miss an entry this listener was not handed.
        self.need_since = feed.dispatches
        self._resync = False
        self._gone = False
        self._pos: Pos = (0, 0)
        self._first: list[SeatEvent] = []

    @property
    def gone(self) -> bool:
        return self._gone

    def begin(self, first: list[SeatEvent], pos: Pos) -> None:
        """What the listener is sent first, and the position it is true at."""
        self._first, self._pos = first, pos

    def push(self, entry: _Entry) -> None:
        if len(self._items) >= MAX_PENDING:
            self.resync()
            return
        self._items.append(entry)
        self._wake.set()

    def resync(self) -> None:
        """Give this listener a fresh snapshot next: what it had queued is dropped."""
        self._items.clear()
        self._resync = True
        self.need_since = self._feed.dispatches
        self._wake.set()

    def end(self) -> None:
        self._gone = True
        self._wake.set()

    def close(self) -> None:
        self._gone = True
        self._feed.remove(self)

    async def batches(self, keepalive_s: float) -> AsyncIterator[list[SeatEvent]]:
        """The listener's events, a batch at a time (what is ready is sent together); an
        empty batch when nothing happened for ``keepalive_s``."""
        first, self._first = self._first, []
        yield first
        while not self._gone:
            if self._resync:
                self._resync = False
                snapshot = await self._feed.snapshot_when_ready(self)
                if snapshot is None:
                    return
                self._pos = _snapshot_pos(snapshot)
                yield [snapshot]
                continue
            if not self._items:
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive_s):
                        await self._wake.wait()
                except TimeoutError:
                    yield []
                continue
            items, self._items = self._items, []
            out: list[SeatEvent] = []
            for item in items:
                if item.pos > self._pos:
                    out.extend(item.changes)
                    self._pos = item.pos
            if out:
                yield out


class _FlightFeed:
    """One flight's stream, read by one task for every listener of this process."""

    def __init__(
        self, flight: Flight, holds: HoldStore, streams: SeatStreams, drop: Callable[[], None]
    ) -> None:
        self.flight = flight
        self._holds = holds
        self._streams = streams
        self._drop = drop
        self.listeners: list[Listener] = []
        self.dispatches = 0
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._snapshot: tuple[int, asyncio.Task[SeatSnapshot | None]] | None = None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"seat feed {flight.id}"
        )

    async def ready(self) -> None:
        await asyncio.shield(self._ready)

    def add(self, closed: Callable[[], bool]) -> Listener:
        listener = Listener(self, closed)
        self.listeners.append(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)

    async def snapshot(self, listener: Listener) -> SeatSnapshot | None:
        """A snapshot read after ``listener`` needed it (shared with every listener that
        needed one since no entry was dispatched); None when the flight is not restored."""
        current = self._snapshot
        if current is None or current[0] < listener.need_since or current[1].done():
            task = asyncio.get_running_loop().create_task(self._read_snapshot())
            current = self._snapshot = (self.dispatches, task)
        return await asyncio.shield(current[1])

    async def snapshot_when_ready(self, listener: Listener) -> SeatSnapshot | None:
        """A snapshot for a listener already streaming: retried quietly while Redis is away
        or the flight is being restored; None once the listener is gone."""
        while not listener.gone:
            try:
                snapshot = await self.snapshot(listener)
            except RedisError:
                snapshot = None
            if snapshot is not None:
                return snapshot
            await asyncio.sleep(RETRY_S)
        return None

    async def _read_snapshot(self) -> SeatSnapshot | None:
        record = self.flight.record
        snap = await self._holds.snapshot(self.flight.id, record.rows, record.seat_letters)
        if isinstance(snap, NotRestored):
            return None
        try:
            statuses = [SNAPSHOT_STATUS[c].value for c in snap.statuses]
        except KeyError as exc:
            raise UnknownScriptReply("seat_snapshot", snap.statuses) from exc
        return SeatSnapshot(
            snap.position, self.flight.id, tuple(zip(self.flight.seats, statuses, strict=True))
        )

    async def catch_up(
        self, position: str, pos: Pos, after: int | None
    ) -> tuple[list[SeatEvent], Pos] | None:
        """The changes after a client's last event and the position they end at, or None
        when the stream no longer has that event's entry (trimmed away, or lost with Redis's
        data)."""
        entries = await self._streams.starting_at(self.flight.id, position, BATCH)
        if not entries or entries[0].position != position:
            return None
        first = _entry(entries[0])
        out: list[SeatEvent] = list(first.changes[after + 1 :] if after is not None else ())
        last = pos
        while True:
            for raw in entries[1:]:
                item = _entry(raw)
                out.extend(item.changes)
                last = item.pos
            if len(entries) < BATCH:
                break
            entries = await self._streams.starting_at(self.flight.id, entries[-1].position, BATCH)
        return out, last

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception:
            # A bug (an entry outside the stream's format): said loudly; the listeners are
            # ended, so their clients reconnect and start from a snapshot.
            log.exception("seat stream of flight %d: the feed failed", self.flight.id)
            if not self._ready.done():
                self._ready.set_exception(RedisError("the seat feed failed"))
            for listener in self.listeners:
                listener.end()
            self._drop()

    async def _follow(self) -> None:
        fid = self.flight.id
        try:
            position = await self._streams.last(fid)
        except RedisError as exc:
            self._ready.set_exception(exc)
            self._drop()
            return
        self._ready.set_result(None)
        broken = False
        warned = False
        while True:
            for listener in [x for x in self.listeners if x.closed()]:
                self.remove(listener)
                listener.end()
            if not self.listeners:
                self._drop()
                return
            try:
                if broken:
                    position = await self._check(position)
                    broken = False
                    if warned:
                        log.warning("seat stream of flight %d: reading again", fid)
                        warned = False
                got = await self._streams.read(fid, position, BLOCK_MS, BATCH)
            except RedisError as exc:
                if not warned:
                    log.warning("seat stream of flight %d: reading failed: %s", fid, exc)
                    warned = True
                broken = True
                await asyncio.sleep(RETRY_S)
                continue
            if got:
                self.dispatches += 1
                items = [_entry(e) for e in got]
                for listener in list(self.listeners):
                    for item in items:
                        listener.push(item)
                position = got[-1].position

    async def _check(self, position: str) -> str:
        """After a read failed: is the feed's position still in the stream? If not (Redis
        lost its data, or the stream was trimmed past it), every listener is given a fresh
        snapshot, and the feed goes on from the stream's end."""
        if position == "0-0":
            return position
        entries = await self._streams.starting_at(self.flight.id, position, 1)
        if entries and entries[0].position == position:
            return position
        log.warning(
            "seat stream of flight %d lost position %s: every listener gets a fresh snapshot",
            self.flight.id,
            position,
        )
        position = await self._streams.last(self.flight.id)
        self.dispatches += 1
        for listener in self.listeners:
            listener.resync()
        return position

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.end()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class SeatFeeds:
    """Every flight's feed in this process, started by its first listener and stopped
    within a read's wait after its last one leaves."""

    def __init__(self, holds: HoldStore, streams: SeatStreams, flights: Flights) -> None:
        self._holds = holds
        self._streams = streams
        self._flights = flights
        self._feeds: dict[int, _FlightFeed] = {}

    def listening(self) -> int:
        return sum(len(f.listeners) for f in self._feeds.values())

    async def open(
        self, flight_id: int, last_event_id: str | None, closed: Callable[[], bool]
    ) -> Listener:
        """A listener of the flight, its first batch ready (a snapshot, or the changes after
        ``last_event_id``). Raises NotFound for an unknown flight and Unavailable while
        Redis does not answer or the flight is being restored, before anything is sent."""
        flight = await self._flights.get(flight_id)
        feed = self._feeds.get(flight.id)
        if feed is None:
            feed = self._feeds[flight.id] = _FlightFeed(
                flight, self._holds, self._streams, lambda: self._forget(flight.id, feed)
            )
        # Added before anything awaits: the feed stops once it has no listener.
        listener = feed.add(closed)
        try:
            try:
                await feed.ready()
            except RedisError as exc:
                raise Unavailable("Redis is unavailable") from exc
            listener.begin(*await self._first(feed, listener, parse_event_id(last_event_id)))
        except BaseException:
            listener.close()
            raise
        return listener

    async def _first(
        self, feed: _FlightFeed, listener: Listener, resume: tuple[str, Pos, int | None] | None
    ) -> tuple[list[SeatEvent], Pos]:
        try:
            if resume is not None:
                caught = await feed.catch_up(*resume)
                if caught is not None:
                    return caught
            snapshot = await feed.snapshot(listener)
        except RedisError as exc:
            raise Unavailable("Redis is unavailable") from exc
        if snapshot is None:
            raise Unavailable("The flight's seats are being restored; retry shortly")
        return [snapshot], _snapshot_pos(snapshot)

    def _forget(self, flight_id: int, feed: _FlightFeed | None) -> None:
        if self._feeds.get(flight_id) is feed:
            del self._feeds[flight_id]

    def end_all(self) -> None:
        """End every listener (the service is stopping): their clients reconnect elsewhere,
        or later, and resume from their last event."""
        for feed in self._feeds.values():
            for listener in feed.listeners:
                listener.end()

    async def close(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        await asyncio.gather(*(f.stop() for f in feeds))
        await self._streams.close()
