"""The hot-path client for a Redis Cluster: each call routed by its key's slot to the primary
that owns it, over one auto-pipelining connection per primary (``PipelinedRedis``), so calls
to different nodes issued in one loop turn still go out as one write per node.

Why not redis-py's ``RedisCluster``: it spends about 60 us of Python per call and its
cluster pipelines refuse ``EVALSHA`` (shared/perf-anchors.md). Every key a holdsvc script
names for one flight shares the ``{f:<id>}`` hash tag, so a script's first key routes it.

Redirections are followed: ``MOVED`` updates the slot's owner and the call goes again there,
with the whole map refreshed in the background; ``ASK`` (a slot being migrated, this key
already moved) sends ``ASKING`` and the call to the importing node, back to back on its
connection, once. ``TRYAGAIN`` (a multi-key call during a migration) is retried shortly, and
so is a script Redis refused for touching an undeclared key that has already moved ("non
local key"): every holdsvc script reads its undeclared keys before its first write to one, so
a script refused there changed nothing (each script's header says why). Past the retries the
call fails as unavailable: a 503, to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from holdsvc.seats.redis_client import PipelinedRedis

log = logging.getLogger(__name__)

SLOTS = 16384
# Redirections one call follows before it fails (a slot moving twice while one call is in
# flight is already rare).
MAX_REDIRECTS = 10
TRYAGAIN_DELAY_S = 0.02
# Valkey's and Redis's refusal of a script's undeclared key in a slot being migrated.
_NOT_LOCAL = "non local key"
# Commands whose keys come after a key count: the script's first key routes it.
_SCRIPTED = frozenset({b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO", b"FCALL", b"FCALL_RO"})
# Commands that go to every primary (a script must be loaded on each node).
_EVERY_PRIMARY = frozenset({b"SCRIPT"})


@functools.lru_cache(maxsize=65536)
def _slot(key: str) -> int:
    return key_slot(key.encode())


def _name(arg: Any) -> bytes:
    return arg.upper() if isinstance(arg, bytes) else str(arg).upper().encode()


def key_of(args: Sequence[Any]) -> bytes | None:
    """The key a command routes by, or None for one that names no key (INFO, PING)."""
    command = _name(args[0])
    if command in _SCRIPTED:
        if len(args) < 4 or int(args[2]) == 0:
            return None
        key = args[3]
    elif len(args) > 1:
        key = args[1]
    else:
        return None
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterPipelinedRedis:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self._seed = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._userinfo = url.split("//", 1)[1].split("@", 1)[0] + "@" if "@" in url else ""
        self._nodes: dict[tuple[str, int], PipelinedRedis] = {}
        self._urls: dict[str, PipelinedRedis] = {}
        self._slots: list[PipelinedRedis | None] = [None] * SLOTS
        self._refreshing: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        # Primaries already announced to the join callbacks, and the nodes whose callbacks
        # still run: calls to such a node wait for them (its scripts are being loaded).
        self._seen: set[PipelinedRedis] = set()
        self._on_join: list[Callable[[PipelinedRedis], Awaitable[None]]] = []
        self._preparing: dict[PipelinedRedis, asyncio.Task[None]] = {}
        # How often the map was read, and redirections followed (for tests and metrics).
        self.refreshes = 0
        self.moved = 0
        self.asked = 0
        self.retried = 0

    # ----- routing

    def _node(self, address: tuple[str, int]) -> PipelinedRedis:
        node = self._nodes.get(address)
        if node is None:
            host, port = address
            url = f"redis://{self._userinfo}{host}:{port}/0"
            node = self._nodes[address] = self._urls[url] = PipelinedRedis(url)
        return node

    async def refresh(self) -> None:
        """Read the slot map (CLUSTER SLOTS) from a node that answers: a known one, else the
        one the URL named."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            candidates = [*self._nodes.values()] or [self._node(self._seed)]
            last: Exception | None = None
            for node in candidates:
                try:
                    reply = await node.execute("CLUSTER", "SLOTS")
                except (RedisConnectionError, ResponseError, OSError) as exc:
                    last = exc
                    continue
                self._apply(reply)
                self.refreshes += 1
                return
            raise RedisConnectionError(f"no cluster node answers CLUSTER SLOTS: {last}")

    def _apply(self, reply: list[Any]) -> None:
        slots: list[PipelinedRedis | None] = [None] * SLOTS
        for first, last, primary, *_replicas in reply:
            host = primary[0].decode() if primary[0] else self._seed[0]
            node = self._node((host, int(primary[1])))
            for slot in range(int(first), int(last) + 1):
                slots[slot] = node
        self._slots = slots
        for node in dict.fromkeys(n for n in slots if n is not None):
            if node not in self._seen:
                self._seen.add(node)
                for callback in self._on_join:
                    self._announce(callback, node)

    def on_new_primary(self, callback: Callable[[PipelinedRedis], Awaitable[None]]) -> None:
        """Call ``callback(node)`` for each primary a later slot map shows for the first time
        (a node that joined, or took slots it had none of), so it can be prepared (its scripts
        loaded) before the calls that MOVED sends there find it bare."""
        self._on_join.append(callback)
        self._seen.update(n for n in self._slots if n is not None)

    def _announce(self, callback: Callable[[PipelinedRedis], Awaitable[None]],
                  node: PipelinedRedis) -> None:  # fmt: skip
        before = self._preparing.get(node)

        async def run() -> None:
            if before is not None:
                await before
            try:
                await callback(node)
            except Exception as exc:  # the node's first call answers NOSCRIPT and reloads
                log.warning("preparing a new primary failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._preparing[node] = task

        def done(_: object) -> None:
            if self._preparing.get(node) is task:
                del self._preparing[node]

        task.add_done_callback(done)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._quiet_refresh())

    async def _quiet_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the next redirection or call tries again
            log.warning("refreshing the cluster's slot map failed: %s", exc)

    def node_for(self, key: bytes | str) -> PipelinedRedis | None:
        """The primary this client would send ``key`` to now (None before the map is read)."""
        return self._slots[_slot(key) if isinstance(key, str) else key_slot(key)]

    # ----- calls

    def execute(self, *args: Any) -> Awaitable[Any]:
        return self._run(args)

    async def _run(self, args: tuple[Any, ...]) -> Any:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        command = args[0]
        if command == "EVALSHA" and args[2]:
            # The hold path's every call: its first key's slot, cached (a flight's keys
            # repeat), without the general parse below.
            slot = _slot(args[3])
        else:
            if _name(command) in _EVERY_PRIMARY:
                return await self._everywhere(args)
            key = key_of(args)
            slot = key_slot(key) if key is not None else 0
        node = self._slots[slot]
        if node is None:
            await self.refresh()
            node = self._slots[slot]
            if node is None:
                raise RedisConnectionError(f"no cluster node serves slot {slot}")
        asking = False
        for _ in range(MAX_REDIRECTS):
            if self._preparing and node in self._preparing:
                await asyncio.shield(self._preparing[node])
            try:
                if asking:
                    return await self._asking(node, args)
                return await node.execute(*args)
            except ResponseError as exc:
                text = str(exc)
                kind, _, rest = text.partition(" ")
                if kind == "MOVED":
                    self.moved += 1
                    moved_slot, address = rest.split(" ", 1)
                    node = self._node(_address(address, self._seed[0]))
                    self._slots[int(moved_slot)] = node
                    self._refresh_soon()
                    asking = False
                elif kind == "ASK":
                    self.asked += 1
                    node = self._node(_address(rest.split(" ", 1)[1], self._seed[0]))
                    asking = True
                elif kind == "TRYAGAIN" or _NOT_LOCAL in text:
                    self.retried += 1
                    await asyncio.sleep(TRYAGAIN_DELAY_S)
                else:
                    raise
        raise RedisConnectionError(
            f"{_name(args[0]).decode()}: the cluster kept redirecting it (a slot migrating)"
        )

    @staticmethod
    async def _asking(node: PipelinedRedis, args: tuple[Any, ...]) -> Any:
        """ASKING and the call, queued in one turn on the node's one connection: nothing
        can come between them."""
        await node.connected_run_id()  # connected, so both go on the same connection
        asking = node.execute("ASKING")
        reply = node.execute(*args)
        await asking
        return await reply

    async def _everywhere(self, args: tuple[Any, ...]) -> Any:
        if not any(self._slots):
            await self.refresh()
        primaries = list(dict.fromkeys(n for n in self._slots if n is not None))
        replies = await asyncio.gather(*(n.execute(*args) for n in primaries))
        return replies[0]

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Many commands, each routed by its own key, all issued in this turn (each node's
        share goes out in one write); replies in order, the first error raised after all."""
        replies = await asyncio.gather(*(self._run(c) for c in commands), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    # ----- the Redis process behind a key (a node restarted empty must be restored)

    def run_id_for(self, key: str) -> str | None:
        node = self.node_for(key)
        return node.run_id if node is not None else None

    async def connected_run_id_for(self, key: str) -> str:
        node = self.node_for(key)
        if node is None:
            await self.refresh()
            node = self.node_for(key)
            if node is None:
                raise RedisConnectionError("no cluster node serves this key")
        return await node.connected_run_id()

    async def run_ids_for(self, keys: Sequence[str]) -> list[str]:
        if not any(self._slots):
            await self.refresh()
        nodes = [self.node_for(k) for k in keys]
        distinct = list(dict.fromkeys(n for n in nodes if n is not None))
        ids = dict(zip(distinct, await asyncio.gather(*(n.server_run_id() for n in distinct)),
                       strict=True))  # fmt: skip
        return [ids[n] if n is not None else "" for n in nodes]

    async def run_ids(self) -> list[str]:
        if not any(self._slots):
            await self.refresh()
        primaries = list(dict.fromkeys(n for n in self._slots if n is not None))
        return list(await asyncio.gather(*(n.server_run_id() for n in primaries)))

    def primaries(self) -> list[str]:
        """The URL of every primary that serves slots, as the last map read says."""
        nodes = dict.fromkeys(n for n in self._slots if n is not None)
        return [url for url, node in self._urls.items() if node in nodes]

    @property
    def connects(self) -> int:
        return sum(n.connects for n in self._nodes.values())

    async def close(self) -> None:
        self._closed = True
        for task in self._preparing.values():
            task.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing
        await asyncio.gather(*(n.close() for n in self._nodes.values()))


def _address(text: str, default_host: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or default_host, int(port.split("@")[0]))


__all__ = ["ClusterPipelinedRedis", "key_of"]
