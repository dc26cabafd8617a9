"""The app factory: every resource and background task is wired here, through ``cleanup_ctx``,
in the order the service must start (and, reversed, stop)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from holdsvc import appkeys as k
from holdsvc.domain.access import Action, is_loopback, load_keyring
from holdsvc.domain.bookings import Bookings
from holdsvc.domain.expiry import Expirer
from holdsvc.domain.flights import Flights
from holdsvc.domain.health import Health
from holdsvc.domain.idempotency import RENEW_EVERY_S, IdempotencyKeys
from holdsvc.domain.payments import PaymentRecovery, Payments
from holdsvc.domain.records import Transition
from holdsvc.domain.restore import Restorer
from holdsvc.domain.seatfeed import SeatFeeds
from holdsvc.domain.seatmap import SeatMap
from holdsvc.domain.sweeper import run_sweeper, sweep_round
from holdsvc.embedded_redis import (
    EmbeddedRedis,
    Keeper,
    Revival,
    find_binary,
    forget_url,
    record_url,
    running_url,
)
from holdsvc.gateway import MockGateway
from holdsvc.http.auth import requires
from holdsvc.http.middleware import edge_middleware
from holdsvc.http.openapi import add_docs
from holdsvc.http.pages import add_pages
from holdsvc.http.routes import add_routes
from holdsvc.metrics import CONTENT_TYPE, Metrics
from holdsvc.seats.cluster_client import ClusterPipelinedRedis
from holdsvc.seats.holds import HoldStore
from holdsvc.seats.redis_client import FastRedis, PipelinedRedis
from holdsvc.seats.scripts import load_scripts
from holdsvc.seats.stream import SeatStreams
from holdsvc.settings import Settings
from holdsvc.tasks import background, stop
from persistence.persister import Persister
from persistence.stores import open_store

log = logging.getLogger(__name__)
transition_log = logging.getLogger("holdsvc.transitions")

# Enough connections for every request the event loop can have in flight against Redis;
# a request past that waits for one instead of failing.
REDIS_POOL_SIZE = 64
# How often a cluster's primaries are read again, for the expiry consumers to follow them.
TOPOLOGY_EVERY_S = 5.0


WORKER_HEADER = "X-Holdsvc-Worker"


class StartupError(RuntimeError):
    """A precondition of serving does not hold; start-up stops with this message."""


IDEMPOTENCY_PURGE_EVERY_S = 3600.0


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[edge_middleware],
    )
    app[k.SETTINGS] = settings
    app[k.KEYRING] = load_keyring(settings.api_keys_file, settings.api_key)
    app[k.LOOPBACK] = is_loopback(settings.host)
    app[k.METRICS] = Metrics()
    app[k.METRICS].identify(settings.worker, os.getpid())
    if settings.worker:
        app.on_response_prepare.append(_say_worker)
    app.cleanup_ctx.extend(
        [
            _embedded_redis,
            _sql,
            _redis,
            _domain,
            _persister,
            _housekeeping,
            _sweeper,
        ]
    )
    # Before the server waits for its handlers to end: the live seat streams never would.
    app.on_shutdown.append(_end_seat_streams)
    add_routes(app)
    add_docs(app)
    add_pages(app)
    app.router.add_get("/metrics", _metrics)
    return app


async def _end_seat_streams(app: web.Application) -> None:
    if k.SEAT_FEEDS in app:
        app[k.SEAT_FEEDS].end_all()


async def _say_worker(request: web.Request, response: web.StreamResponse) -> None:
    """One of several API processes names itself on every answer (the operator's "which one
    answered"); a lone serve adds nothing."""
    response.headers[WORKER_HEADER] = str(request.app[k.SETTINGS].worker)


@requires(Action.ADMIN_VIEWS)
async def _metrics(request: web.Request) -> web.Response:
    # Each API process answers with its own counts (`serve --workers N`): X-Holdsvc-Worker
    # and the holdsvc_worker series say which one answered; a scraper sums them.
    return web.Response(
        body=request.app[k.METRICS].render(), headers={"Content-Type": CONTENT_TYPE}
    )


async def _embedded_redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[k.SETTINGS]
    if settings.redis_url is not None:
        app[k.REDIS_URL] = settings.redis_url
        yield
        return
    running = await asyncio.to_thread(running_url, settings.data_dir)
    if running is not None:
        # Another process of this data dir (a serve, a persister) runs the embedded Redis:
        # share it. Two servers on one AOF directory would corrupt it.
        log.info("using the embedded Redis already running for %s", settings.data_dir)
        app[k.REDIS_URL] = running
        yield
        return
    server = EmbeddedRedis(
        settings.data_dir / "redis",
        binary=find_binary(settings.redis_server),
        fsync=settings.redis_fsync,
    )
    await asyncio.to_thread(server.start)
    app[k.REDIS_URL] = server.url
    # The admin commands (holdsvc status, audit, ...) find this Redis through this file.
    record_url(settings.data_dir, server.url)
    keeper = asyncio.create_task(_keep_alive(app, server), name="embedded-redis-keeper")
    try:
        yield
    finally:
        await stop(keeper)
        forget_url(settings.data_dir, server.url)
        await asyncio.to_thread(server.stop)


REVIVE_EVERY_S = 0.2


async def _keep_alive(app: web.Application, server: EmbeddedRedis) -> None:
    """Start the embedded Redis again whenever it dies (it was left <defunct>, and every
    route answered 503 for good), then restore the flights into it. Holds meanwhile answer
    503; the hold script refuses a flight whose marker is from the earlier run, so none is
    served from the new process before its flight is restored. Past --redis-restarts within
    a minute, the service stops itself and exits 1."""
    keeper = Keeper(server, app[k.SETTINGS].redis_restarts)
    while True:
        await asyncio.sleep(REVIVE_EVERY_S)
        revival = await asyncio.to_thread(keeper.check)
        if revival is Revival.GAVE_UP:
            assert keeper.gave_up is not None
            app[k.GAVE_UP] = keeper.gave_up
            os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop, then exit 1
            return
        if revival is Revival.FAILED:
            await asyncio.sleep(1.0)
        if revival is not Revival.RESTARTED:
            continue
        restorer = app.get(k.RESTORER)
        if restorer is not None:
            try:
                await restorer.check()
            except Exception as exc:  # the sweeper and the hold path restore it too
                log.warning("restore after the embedded Redis restarted failed: %s", exc)


async def _sql(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[k.SETTINGS].db_target)
    metrics = app[k.METRICS]
    store.on_commit(metrics.on_commit)

    def observe(t: Transition) -> None:
        metrics.on_transition(t)
        if transition_log.isEnabledFor(logging.INFO):
            transition_log.info(
                "%s %s -> %s (%s)",
                t.booking_id,
                t.from_state,
                t.to_state,
                t.cause,
                extra={
                    "booking_id": t.booking_id,
                    "from": t.from_state,
                    "to": t.to_state,
                    "cause": t.cause,
                },
            )

    store.on_transition = observe
    app[k.STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[k.SETTINGS]
    pool = BlockingConnectionPool.from_url(
        app[k.REDIS_URL], max_connections=REDIS_POOL_SIZE, timeout=10
    )
    # On a cluster this client talks to the node the URL names: it loads the scripts' SHAs
    # there; everything of a flight goes through the cluster client, routed by slot.
    redis = Redis(connection_pool=pool)
    fast: FastRedis = PipelinedRedis(app[k.REDIS_URL])
    if settings.redis_cluster:
        fast = ClusterPipelinedRedis(app[k.REDIS_URL])
    try:
        await redis.ping()
        nodes = await _primaries(fast, app[k.REDIS_URL])
        events_on = True
        for url in nodes:
            # In every node's own configuration: events come only from the node that owns
            # the key.
            async with Redis.from_url(url) as node:
                events_on = await _ensure_expiry_events(node) and events_on
        if not events_on and settings.require_keyspace_events:
            raise StartupError(
                "Redis expiry events (notify-keyspace-events Ex) are off and cannot be turned on"
            )
        scripts = await load_scripts(redis)
        app[k.REDIS] = redis
        holds = HoldStore(redis, scripts, fast, settings.seat_stream_length)
        if settings.redis_cluster:
            await holds.load_everywhere()
        await holds.sync_clock()
        app[k.HOLDS] = holds
        app[k.METRICS].watch_redis_client(lambda: holds.connects)
        try:
            yield
        finally:
            await holds.close()
    except BaseException:
        if k.HOLDS not in app:
            await fast.close()
        raise
    finally:
        await redis.aclose()
        await pool.disconnect()


async def _primaries(fast: FastRedis, url: str) -> list[str]:
    """Every primary's URL: the cluster's, or the one server."""
    if isinstance(fast, ClusterPipelinedRedis):
        await fast.refresh()
        return fast.primaries()
    return [url]


async def _ensure_expiry_events(redis: Redis) -> bool:
    """Expiry events are the fast path of expiry: turn them on if this Redis has them off.

    Returns whether they are on. Off, expiry still happens, at the sweeper's pace.
    """
    try:
        config = await redis.config_get("notify-keyspace-events")
    except RedisError as exc:  # CONFIG may be renamed or refused on managed Redis
        log.warning("cannot read notify-keyspace-events (%s); expiry events may be off", exc)
        return False
    raw = next(iter(config.values()), b"")
    flags = raw.decode() if isinstance(raw, bytes) else str(raw)
    if "E" in flags and ("x" in flags or "A" in flags):
        return True
    wanted = "".join(sorted(set(flags) | {"E", "x"}))
    try:
        await redis.config_set("notify-keyspace-events", wanted)
    except RedisError as exc:
        log.warning(
            "Redis expiry events are OFF (notify-keyspace-events=%r) and cannot be turned on"
            " (%s): holds expire only at the sweeper's pace",
            flags,
            exc,
        )
        return False
    log.warning("Redis expiry events were off (%r); turned them on (%r)", flags, wanted)
    return True


async def _domain(app: web.Application) -> AsyncIterator[None]:
    store = app[k.STORE]
    flights = Flights(store)
    app[k.FLIGHTS] = flights
    app[k.SEAT_MAP] = SeatMap(app[k.HOLDS], flights)
    settings = app[k.SETTINGS]
    feeds = SeatFeeds(
        app[k.HOLDS], SeatStreams.connect(app[k.REDIS_URL], settings.redis_cluster), flights
    )
    app[k.SEAT_FEEDS] = feeds
    restorer = Restorer(app[k.HOLDS], store, flights)
    app[k.RESTORER] = restorer
    app[k.HEALTH] = Health(app[k.HOLDS], store, restorer)
    gateway = MockGateway(settings.gateway_ledger_path)
    app[k.GATEWAY] = gateway
    bookings = Bookings(settings, store, app[k.HOLDS], flights, restorer, app[k.METRICS])
    app[k.BOOKINGS] = bookings
    payments = Payments(settings, store, app[k.HOLDS], bookings, gateway)
    app[k.PAYMENTS] = payments
    app[k.EXPIRER] = Expirer(app[k.HOLDS], store, flights)
    app[k.RECOVERY] = PaymentRecovery(
        payments, bookings, store, gateway, settings.gateway_timeout_ms
    )
    try:
        yield
    finally:
        await feeds.close()
        await bookings.close()
        await gateway.close()


async def _persister(app: web.Application) -> AsyncIterator[None]:
    if not app[k.SETTINGS].persister_enabled:
        yield
        return
    redis = app[k.REDIS]
    expirer = app[k.EXPIRER]

    def consumer(client: Redis, db: int) -> Persister:
        return Persister(
            client,
            db,
            on_expired=expirer.on_expired_keys,
            # Events sent while unsubscribed are lost: look for what they would have expired.
            on_subscribed=lambda: expirer.sweep("resubscribe"),
        )

    if app[k.SETTINGS].redis_cluster:
        fast = app[k.HOLDS].fast
        assert isinstance(fast, ClusterPipelinedRedis)
        nodes = NodePersisters(fast, lambda url: consumer(Redis.from_url(url), 0))
        async with background(nodes.run(), "persisters"):
            await asyncio.wait_for(nodes.subscribed(), timeout=10)
            yield
        return
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    persister = consumer(redis, db)
    app[k.PERSISTER] = persister
    async with background(persister.run(), "persister"):
        await asyncio.wait_for(persister.subscribed.wait(), timeout=10)
        yield


class NodePersisters:
    """One expiry-event consumer per primary of a cluster (events come only from the node
    that owns the key), following the topology: a primary that joins gets one, one that
    leaves loses its own."""

    def __init__(self, fast: ClusterPipelinedRedis, make: Callable[[str], Persister]) -> None:
        self._fast = fast
        self._make = make
        self._running: dict[str, tuple[Persister, asyncio.Task[None]]] = {}
        self._started = asyncio.Event()

    async def subscribed(self) -> None:
        """Every primary's consumer, as first read, has subscribed."""
        await self._started.wait()
        await asyncio.gather(*(p.subscribed.wait() for p, _ in self._running.values()))

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._fast.refresh()
                except RedisError as exc:
                    log.warning("reading the cluster's primaries failed: %s", exc)
                self._follow(set(self._fast.primaries()))
                self._started.set()
                await asyncio.sleep(TOPOLOGY_EVERY_S)
        finally:
            await asyncio.gather(*(stop(t) for _, t in self._running.values()))

    def _follow(self, primaries: set[str]) -> None:
        for url in primaries - set(self._running):
            persister = self._make(url)
            task = asyncio.get_running_loop().create_task(persister.run(), name=f"persister {url}")
            self._running[url] = (persister, task)
            log.info("consuming expiry events of primary %s", url)
        for url in set(self._running) - primaries:
            _, task = self._running.pop(url)
            task.cancel()
            log.info("primary %s left the cluster: no longer consuming its events", url)


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    settings = app[k.SETTINGS]
    restorer, expirer, recovery = app[k.RESTORER], app[k.EXPIRER], app[k.RECOVERY]
    grace_ms = settings.grace_ms
    # Before traffic: booked seats back into a Redis that lost them, and whatever lapsed while
    # no process was watching recorded.
    await sweep_round(restorer, expirer, recovery, grace_ms, "start-up")
    if settings.sweep_interval <= 0:
        yield
        return
    sweeper = run_sweeper(restorer, expirer, recovery, settings.sweep_interval, grace_ms)
    async with background(sweeper, "sweeper"):
        yield


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """The renewal of this process's running Idempotency-Key claims (so they read "in
    progress" exactly while they run), and the purge of keys past their retention."""
    settings = app[k.SETTINGS]
    keys = IdempotencyKeys(
        # Names this process in the owner of each claim it makes.
        app[k.STORE],
        secrets.token_hex(8),
        settings.takeover_after_ms,
        settings.idempotency_ttl_ms,
    )
    app[k.IDEMPOTENCY] = keys

    async def beat() -> None:
        last_purge = 0.0
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                await keys.renew()
                if time.monotonic() - last_purge > IDEMPOTENCY_PURGE_EVERY_S:
                    await keys.purge()
                    last_purge = time.monotonic()
            except Exception as exc:
                log.warning("housekeeping failed: %s", exc)

    async with background(beat(), "housekeeping"):
        yield
