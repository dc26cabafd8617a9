"""The app factory: every resource and background task is wired here, through ``cleanup_ctx``,
in the order the service must start (and, reversed, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from holdsvc import appkeys as k
from holdsvc.api import add_routes
from holdsvc.bookings import Bookings
from holdsvc.embedded_redis import EmbeddedRedis, find_binary
from holdsvc.expiry import Expirer
from holdsvc.flights import Flights
from holdsvc.holds import HoldStore
from holdsvc.middleware import errors_middleware, idempotency_middleware
from holdsvc.payments import MockGateway
from holdsvc.scripts import load_scripts
from holdsvc.settings import Settings
from persistence.persister import Persister
from persistence.sqlite_store import SqlStore, now_ms

log = logging.getLogger(__name__)

# Enough connections for every request the event loop can have in flight against Redis;
# a request past that waits for one instead of failing.
REDIS_POOL_SIZE = 64
IDEMPOTENCY_PURGE_EVERY_S = 3600.0


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[errors_middleware, idempotency_middleware],
    )
    app[k.SETTINGS] = settings
    app.cleanup_ctx.extend(
        [
            _embedded_redis,
            _sql,
            _redis,
            _domain,
            _persister,
            _purge_idempotency_keys,
        ]
    )
    add_routes(app)
    return app


async def _embedded_redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[k.SETTINGS]
    if settings.redis_url is not None:
        app[k.REDIS_URL] = settings.redis_url
        yield
        return
    server = EmbeddedRedis(settings.data_dir / "redis", binary=find_binary(settings.redis_server))
    await asyncio.to_thread(server.start)
    app[k.REDIS_URL] = server.url
    try:
        yield
    finally:
        await asyncio.to_thread(server.stop)


async def _sql(app: web.Application) -> AsyncIterator[None]:
    store = await SqlStore.open(app[k.SETTINGS].db_path)
    app[k.STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    pool = BlockingConnectionPool.from_url(
        app[k.REDIS_URL], max_connections=REDIS_POOL_SIZE, timeout=10
    )
    redis = Redis(connection_pool=pool)
    try:
        await redis.ping()
        await _ensure_expiry_events(redis)
        scripts = await load_scripts(redis)
        app[k.REDIS] = redis
        app[k.HOLDS] = HoldStore(redis, scripts)
        yield
    finally:
        await redis.aclose()
        await pool.disconnect()


async def _ensure_expiry_events(redis: Redis) -> None:
    """Expiry events are the fast path of expiry: turn them on if this Redis has them off."""
    try:
        config = await redis.config_get("notify-keyspace-events")
    except Exception as exc:  # CONFIG may be renamed or refused on managed Redis
        log.warning("cannot read notify-keyspace-events (%s); expiry events may be off", exc)
        return
    flags = next(iter(config.values()), b"")
    flags = flags.decode() if isinstance(flags, bytes) else str(flags)
    has_events = ("E" in flags) and ("x" in flags or "A" in flags)
    if has_events:
        return
    wanted = "".join(sorted(set(flags) | {"E", "x"}))
    try:
        await redis.config_set("notify-keyspace-events", wanted)
        log.warning("notify-keyspace-events was %r; set it to %r", flags, wanted)
    except Exception as exc:
        log.warning(
            "notify-keyspace-events is %r and cannot be changed (%s): expiry events are off",
            flags,
            exc,
        )


async def _domain(app: web.Application) -> AsyncIterator[None]:
    store = app[k.STORE]
    flights = Flights(store)
    app[k.FLIGHTS] = flights
    app[k.BOOKINGS] = Bookings(app[k.SETTINGS], store, app[k.HOLDS], flights, MockGateway())
    app[k.EXPIRER] = Expirer(app[k.HOLDS], store, flights)
    yield


async def _persister(app: web.Application) -> AsyncIterator[None]:
    if not app[k.SETTINGS].persister_enabled:
        yield
        return
    redis = app[k.REDIS]
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    expirer = app[k.EXPIRER]
    persister = Persister(
        redis,
        db,
        on_expired=expirer.on_expired_keys,
        # Events sent while unsubscribed are lost: look for what they would have expired.
        on_subscribed=lambda: expirer.sweep("resubscribe"),
    )
    app[k.PERSISTER] = persister
    task = asyncio.create_task(persister.run(), name="persister")
    try:
        await asyncio.wait_for(persister.subscribed.wait(), timeout=10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _purge_idempotency_keys(app: web.Application) -> AsyncIterator[None]:
    store = app[k.STORE]
    ttl_ms = round(app[k.SETTINGS].idempotency_ttl * 1000)

    async def purge() -> None:
        while True:
            try:
                await store.purge_keys(now_ms() - ttl_ms)
            except Exception:
                log.exception("purging idempotency keys failed")
            await asyncio.sleep(IDEMPOTENCY_PURGE_EVERY_S)

    task = asyncio.create_task(purge(), name="purge-idempotency-keys")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
