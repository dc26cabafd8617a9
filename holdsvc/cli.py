"""``holdsvc`` command line: ``holdsvc serve`` and ``holdsvc persister``."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from aiohttp import web
from redis.exceptions import RedisError

from holdsvc import admin, logs
from holdsvc import appkeys as k
from holdsvc.app import StartupError, create_app
from holdsvc.appkeys import GAVE_UP
from holdsvc.domain.access import is_loopback, load_keyring
from holdsvc.domain.records import NewFlight
from holdsvc.embedded_redis import EmbeddedRedisError
from holdsvc.seats.scripts import ScriptLoadError
from holdsvc.settings import Settings
from persistence.records import SchemaTooNew

log = logging.getLogger("holdsvc")


class GaveUp(RuntimeError):
    """The service stopped itself: something it depends on kept failing."""


STARTUP_ERRORS = (
    StartupError,
    EmbeddedRedisError,
    ScriptLoadError,
    RedisError,
    sqlite3.Error,
    OSError,
    ValueError,
    SchemaTooNew,
)

DEMO_FLIGHT = NewFlight(
    flight_number="AI101",
    origin="DEL",
    destination="BOM",
    departure_time="",  # a week after the start-up that creates it
    rows=30,
    seat_letters="ABCDEF",
    price="4999.00",
    currency="INR",
)
DEMO_DEPARTS_AFTER = timedelta(days=7)


def main(argv: Sequence[str] | None = None) -> int:
    command, settings, args = Settings.from_env_and_argv(argv)
    quiet = command not in ("serve", "persister") and getattr(args, "log_level", None) is None
    # Admin commands print their own lines; the service's INFO logs would only be noise.
    logs.configure("WARNING" if quiet else settings.log_level, settings.log_format)
    try:
        if command == "serve":
            serve(settings)
        elif command == "persister":
            asyncio.run(persist(settings))
        else:
            return admin.run(command, settings, args)
    except GaveUp as exc:
        print(f"holdsvc: stopped: {exc}", file=sys.stderr)
        return 1
    except STARTUP_ERRORS as exc:
        service = command in ("serve", "persister")
        what = "cannot start" if service else f"{command} failed"
        print(f"holdsvc: {what}: {exc}", file=sys.stderr)
        return 1 if service else 2
    return 0


# A request allocates and frees hundreds of containers; with the default gen-0 threshold
# (700) the collector ran ~90 times a second under load and every few seconds a full
# collection walked all that start-up left behind: 170 ms pauses, the p99 of POST
# /api/bookings/ (bench/RESULTS.md). Almost all of a request's objects die by refcount, so
# a higher threshold rarely triggers, and what start-up built is frozen out of the scans.
GC_THRESHOLDS = (20_000, 20, 20)


async def _tune_gc(app: web.Application) -> None:
    gc.collect()  # start-up's garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _check_access(settings: Settings) -> None:
    """No keys: serve open, but only where no other machine can reach the port."""
    keyring = load_keyring(settings.api_keys_file, settings.api_key)
    if not keyring.open:
        return
    if not is_loopback(settings.host):
        raise StartupError(
            f"refusing to serve without API keys on {settings.host or 'every address'}:"
            " anyone who reaches the port could create flights and refund bookings. Give"
            " --api-keys FILE (or HOLDSVC_API_KEY), or listen on 127.0.0.1"
        )
    if settings.worker == 0:  # once, not once per worker
        log.warning(
            "no API keys configured: serving open, without authentication, on %s only",
            settings.host,
        )


def serve(settings: Settings) -> None:
    _check_access(settings)
    if settings.workers > 1:
        from holdsvc.workers import Supervisor

        supervisor = Supervisor(settings)
        supervisor.run()
        if supervisor.gave_up:
            raise GaveUp(supervisor.gave_up)
        return
    app = create_app(settings)
    if settings.demo:
        app.cleanup_ctx.append(_demo_flight)
    # After every start-up step (the cleanup contexts run first): their objects are frozen.
    app.on_startup.append(_tune_gc)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda text: print(text, flush=True),
        access_log=None,
        # One of several API processes on this port: each has a listener of its own.
        reuse_port=settings.worker > 0,
    )
    if app.get(GAVE_UP):
        raise GaveUp(app[GAVE_UP])


async def persist(settings: Settings) -> None:
    """The app's resources and background tasks, with no HTTP listener, until SIGTERM/SIGINT."""
    runner = web.AppRunner(create_app(settings.replace(persister_enabled=True)))
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("holdsvc persister running", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _demo_flight(app: web.Application) -> AsyncIterator[None]:
    settings = app[k.SETTINGS]
    now = datetime.now(UTC)
    # The demo flight of an earlier start, while it has more than a day to go; else a new
    # one, departing a week from now (a departed flight takes no holds).
    upcoming = [
        f for f in await app[k.FLIGHTS].all()
        if f.record.flight_number == DEMO_FLIGHT.flight_number
        and f.departs_ms > (now + timedelta(days=1)).timestamp() * 1000
    ]  # fmt: skip
    if upcoming:
        flight_id = upcoming[0].id
    else:
        departs = (now + DEMO_DEPARTS_AFTER).replace(second=0, microsecond=0)
        demo = dataclasses.replace(
            DEMO_FLIGHT, departure_time=departs.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        flight_id = (await app[k.RESTORER].add_flight(demo)).id
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"demo flight {DEMO_FLIGHT.flight_number} has id {flight_id}; hold two seats with:\n"
        f"  curl -s -X POST {base}/api/bookings/ -H 'Content-Type: application/json'"
        f' -d \'{{"flight_id": {flight_id}, "user_id": "u1", "seats": ["1A", "1B"]}}\'',
        flush=True,
    )
    yield
