"""Reading a flight's seat stream (lua/_stream.lua): the scripts that change seats append to
it; this reads it back, blocking, for the live seat map.

Blocking reads (XREAD BLOCK) hold their connection for the whole wait, so they go through a
client of their own, never the hot path's pipelining one, where one would stall every hold
queued behind it. On a cluster that client is redis-py's ``RedisCluster``: a flight's stream
is read once per process, so its per-call cost does not matter here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from holdsvc.seats import keys
from holdsvc.seats.holds import SeatStatus

# The status letters the scripts write (the stream's t, seat_snapshot.lua's statuses), and
# only those: another is a bug, raised.
SNAPSHOT_STATUS = {"h": SeatStatus.HELD, "b": SeatStatus.BOOKED, "a": SeatStatus.AVAILABLE}
_STATUS = {letter.encode(): status for letter, status in SNAPSHOT_STATUS.items()}


class UnknownStreamEntry(RuntimeError):
    """An entry outside the format lua/_stream.lua writes: a bug, never guessed at."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    # The entry's id, "<ms>-<seq>": its position in the stream.
    position: str
    status: SeatStatus
    seats: tuple[str, ...]


def _entry(raw: Any) -> StreamEntry:
    entry_id, fields = raw
    try:
        status = _STATUS[fields[b"t"]]
        seats = tuple(fields[b"s"].decode().split(","))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnknownStreamEntry(f"seat stream entry {raw!r}") from exc
    position = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return StreamEntry(position, status, seats)


class SeatStreams:
    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client

    @classmethod
    def connect(cls, url: str, cluster: bool = False) -> SeatStreams:
        client: Redis | RedisCluster = (
            RedisCluster.from_url(url) if cluster else Redis.from_url(url)
        )
        return cls(client)

    async def last(self, flight_id: int) -> str:
        """The position of the stream's newest entry ("0-0" while it has none)."""
        reply: Any = await self._client.xrevrange(keys.stream(flight_id), "+", "-", count=1)
        return _entry(reply[0]).position if reply else "0-0"

    async def read(
        self, flight_id: int, after: str, block_ms: int, count: int = 1000
    ) -> list[StreamEntry]:
        """The entries after ``after``, waiting up to ``block_ms`` for the first."""
        # redis-py types the reply loosely (object): it is parsed below, checked.
        reply: Any = await self._client.xread(
            {keys.stream(flight_id): after}, count=count, block=block_ms
        )
        if not reply:
            return []
        # RESP2: [[key, entries]]; RESP3: {key: [entries]}.
        entries: Sequence[Any] = (
            next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        )
        return [_entry(e) for e in entries]

    async def starting_at(self, flight_id: int, position: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries from ``position`` on, that one included if it is there."""
        reply: Any = await self._client.xrange(keys.stream(flight_id), position, "+", count=count)
        return [_entry(e) for e in reply]

    async def close(self) -> None:
        await self._client.aclose()


__all__ = ["SNAPSHOT_STATUS", "SeatStreams", "StreamEntry", "UnknownStreamEntry"]
