"""Admin commands on the same settings as the service: status, audit, flights, migrate.

They talk to the service's Redis and SQLite directly (a running ``holdsvc serve`` with an
embedded Redis leaves its URL in ``<data-dir>/redis.url``). Each prints plain lines; a failure
is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlparse

import orjson
from redis.exceptions import RedisError

from holdsvc.domain.bookings import Bookings
from holdsvc.domain.errors import DomainError, NotFound
from holdsvc.domain.flights import Flights
from holdsvc.domain.payments import Payments
from holdsvc.domain.restore import Restorer
from holdsvc.domain.states import HOLDING, State
from holdsvc.embedded_redis import recorded_url
from holdsvc.gateway import MockGateway
from holdsvc.http import bodies
from holdsvc.http.views import booking_view, flight_view
from holdsvc.metrics import Metrics
from holdsvc.seats.holds import HoldStore, connect_hold_store
from holdsvc.settings import EXIT_DIFFERENCES, EXIT_FAILED, EXIT_NO_REDIS, EXIT_NO_SERVICE, Settings
from persistence.stores import AnyStore, open_store

# A difference seen twice this far apart is real; once, it may be a hold between its Redis
# step and its SQL commit.
RECHECK_AFTER_S = 1.0


class AdminError(Exception):
    """Reported as one line on stderr, with its exit code."""

    code = EXIT_FAILED


class RedisUnreachable(AdminError):
    code = EXIT_NO_REDIS


class ServiceDown(AdminError):
    code = EXIT_NO_SERVICE


@dataclass
class _Handles:
    store: AnyStore
    holds: HoldStore | None
    flights: Flights
    # Why there is no Redis to ask, when there is none.
    redis_problem: AdminError | None = None

    def bookings(self, settings: Settings) -> Bookings:
        """The domain's bookings over these handles, as the service builds them."""
        assert self.holds is not None  # only when Redis answers
        restorer = Restorer(self.holds, self.store, self.flights)
        return Bookings(settings, self.store, self.holds, self.flights, restorer, Metrics())

    def exit_code(self, unknown: str) -> int:
        """0, or the code of the missing Redis, said on stderr with what it left unknown."""
        if self.redis_problem is None:
            return 0
        print(f"{unknown}: {self.redis_problem}", file=sys.stderr)
        return self.redis_problem.code


def redis_url(settings: Settings) -> str:
    if settings.redis_url is not None:
        return settings.redis_url
    url = recorded_url(settings.data_dir)
    if url is None:
        raise ServiceDown(
            f"no running holdsvc with an embedded Redis in {settings.data_dir}"
            " (start `holdsvc serve`, or give --redis-url)"
        )
    return url


async def _connect_redis(settings: Settings) -> HoldStore:
    url = redis_url(settings)
    where = urlparse(url)
    unreachable = f"Redis at {where.hostname}:{where.port} does not answer"
    try:
        holds = await connect_hold_store(
            url,
            pool_size=4,
            cluster=settings.redis_cluster,
            stream_length=settings.seat_stream_length,
        )
    except (RedisError, OSError) as exc:
        raise RedisUnreachable(f"{unreachable}: {exc}") from exc
    try:
        await holds.ping()
        if settings.redis_cluster:
            await holds.load_everywhere()
    except (RedisError, OSError) as exc:
        await holds.close()
        raise RedisUnreachable(f"{unreachable}: {exc}") from exc
    return holds


@contextlib.asynccontextmanager
async def _open(
    settings: Settings, *, create: bool = False, need_redis: bool = True
) -> AsyncIterator[_Handles]:
    """SQL, and Redis when it answers; without ``need_redis`` a missing Redis is noted in
    the handles instead of failing the command, which then reads what SQL alone can say."""
    if not create and not settings.is_postgres and not settings.db_path.exists():
        raise AdminError(f"no database at {settings.db_where} (give --db or --data-dir)")
    store = await open_store(settings.db_target)
    try:
        holds, problem = None, None
        try:
            holds = await _connect_redis(settings)
        except AdminError as exc:
            if need_redis:
                raise
            problem = exc
        try:
            yield _Handles(store, holds, Flights(store), problem)
        finally:
            if holds is not None:
                await holds.close()
    finally:
        await store.close()


async def migrate(settings: Settings) -> int:
    """Bring the database's schema to this holdsvc's version, as `holdsvc serve` does at
    start-up; SQL only, so it works while nothing else runs."""
    store = await open_store(settings.db_target)
    try:
        now, applied = await store.schema_version(), store.applied_migrations
    finally:
        await store.close()
    if applied:
        print(f"schema version {applied[0] - 1} -> {now} ({settings.db_where})")
    else:
        print(f"schema version {now}: up to date ({settings.db_where})")
    return 0


async def status(settings: Settings, as_json: bool = False) -> int:
    async with _open(settings, need_redis=False) as h:
        counts = await h.store.count_by_state()
        flights = await h.flights.all()
        live: int | None = None
        if h.holds is not None:
            live = await h.holds.live_holds([f.id for f in flights])
            info = await h.holds.redis.info("server")
            where = urlparse(redis_url(settings))
            redis_line = f"ok ({info.get('redis_version', '?')}, {where.hostname}:{where.port})"
        else:
            redis_line = f"unavailable: {h.redis_problem}"
        if as_json:
            report = {
                "redis": redis_line,
                "sql": f"ok ({settings.db_where})",
                "flights": len(flights),
                "live_holds": live,
                "bookings": {state.value: counts.get(state.value, 0) for state in State},
            }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            return h.redis_problem.code if h.redis_problem else 0
        print(f"redis        {redis_line}")
        print(f"sql          ok ({settings.db_where})")
        print(f"flights      {len(flights)}")
        print(f"live holds   {live if live is not None else 'unknown (no Redis)'}")
        for state in State:
            print(f"{state.value:<16} {counts.get(state.value, 0)}")
        return h.redis_problem.code if h.redis_problem else 0


@dataclass(frozen=True, slots=True)
class Difference:
    """A seat on which Redis and SQL disagree: each side's (status, booking id)."""

    flight_id: int
    seat: str
    redis: tuple[str, str | None]
    sql: tuple[str, str | None]

    def line(self) -> str:
        r_status, r_bid = self.redis
        s_state, s_bid = self.sql
        redis = f"Redis {r_status} by {r_bid}" if r_bid else f"Redis {r_status}"
        sql = f"SQL {s_state} {s_bid}" if s_bid else "SQL free"
        return f"flight {self.flight_id} seat {self.seat}: {redis}, {sql}"

    def view(self) -> dict[str, object]:
        return {
            "flight_id": self.flight_id,
            "seat": self.seat,
            "redis": {"status": self.redis[0], "booking_id": self.redis[1]},
            "sql": {"state": self.sql[0], "booking_id": self.sql[1]},
        }


async def audit(settings: Settings, as_json: bool = False) -> int:
    """Print every seat on which Redis and SQL disagree; 1 if there is any. Without Redis
    there is nothing to compare: say so, with what SQL alone holds, and exit 3 or 4."""
    async with _open(settings, need_redis=False) as h:
        flights = await h.flights.all()
        if h.redis_problem is not None:
            live = [len(await h.store.live_bookings(f.id)) for f in flights]
            if as_json:
                report = {
                    "redis": f"unavailable: {h.redis_problem}",
                    "flights": len(flights),
                    "live_bookings_in_sql": sum(live),
                    "differences": None,
                }
                print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            else:
                print(f"cannot compare: Redis unavailable: {h.redis_problem}")
                print(f"SQL has {sum(live)} live bookings on {len(flights)} flights")
            return h.redis_problem.code
        found = {f.id: await _differences(h, f.id) for f in flights}
        if any(found.values()):
            await asyncio.sleep(RECHECK_AFTER_S)
            again = {f: await _differences(h, f) for f in found if found[f]}
            found = {f: [d for d in found[f] if d in again[f]] for f in again}
        differences = [d for lines in found.values() for d in lines]
        if as_json:
            report = {
                "redis": "ok",
                "flights": len(flights),
                "differences": [d.view() for d in differences],
            }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        else:
            for d in differences:
                print(d.line())
            print(f"{len(differences)} differences in {len(flights)} flights")
    return EXIT_DIFFERENCES if differences else 0


async def _differences(h: _Handles, flight_id: int) -> list[Difference]:
    assert h.holds is not None  # compared only when Redis answers
    flight = await h.flights.get(flight_id)
    owners = await h.holds.seat_owners(flight_id, flight.seats)
    owner: dict[str, tuple[str, str]] = {}
    for bid, state, seats in await h.store.live_bookings(flight_id):
        for seat in seats:
            owner[seat] = (state, bid)
    out = []
    for seat, in_redis in zip(flight.seats, owners, strict=True):
        sql: tuple[str, str | None] = owner.get(seat) or ("free", None)
        if in_redis is None:
            if sql[1] is not None:
                out.append(Difference(flight_id, seat, ("free", None), sql))
            continue
        bid, booked = in_redis
        if booked and sql != (State.CONFIRMED.value, bid):
            out.append(Difference(flight_id, seat, ("booked", bid), sql))
        elif not booked and sql[1] is not None and (sql[1] != bid or sql[0] not in HOLDING):
            # Held in Redis and not in SQL is a hold SQL has not seen yet: that is normal.
            out.append(Difference(flight_id, seat, ("held", bid), sql))
    return out


async def flights_create(settings: Settings, args: argparse.Namespace) -> int:
    body = orjson.dumps(
        {
            "flight_number": args.flight_number,
            "origin": args.origin,
            "destination": args.destination,
            "departure_time": args.departure_time,
            "rows": args.rows,
            "seat_letters": args.seat_letters,
            "price": args.price,
            "currency": args.currency,
        }
    )
    try:
        new = bodies.flight_from(bodies.decode(body, "application/json", bodies.FlightIn))
    except DomainError as exc:
        raise AdminError(exc.message) from exc
    async with _open(settings, create=True) as h:
        assert h.holds is not None  # opened with Redis required
        flight = await Restorer(h.holds, h.store, h.flights).add_flight(new)
        print(
            f"flight {flight.id} {new.flight_number} {new.origin}-{new.destination}"
            f" {new.departure_time}: {len(flight.seats)} seats at {new.price} {new.currency}"
        )
    return 0


async def flights_list(settings: Settings, as_json: bool = False) -> int:
    async with _open(settings, need_redis=False) as h:
        flights = await h.flights.all()
        free: list[int | None] = [None] * len(flights)
        if h.holds is not None:
            free = list(await h.holds.free_counts([(f.id, f.seats) for f in flights]))
        if as_json:
            views = [flight_view(f, n) for f, n in zip(flights, free, strict=True)]
            print(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode())
        else:
            for f, n in zip(flights, free, strict=True):
                r = f.record
                print(
                    f"{r.id:>5} {r.flight_number:<8} {r.origin}-{r.destination}"
                    f" {r.departure_time}  {'?' if n is None else n}/{len(f.seats)} free"
                    f"  {r.price} {r.currency}"
                )
            print(f"{len(flights)} flights")
        return h.exit_code("free seats unknown")


async def bookings_show(settings: Settings, args: argparse.Namespace) -> int:
    """Through the domain, as GET /api/bookings/{id}/ reads it: SQL first, then the hold's
    Redis record (so a hold that Redis alone has is shown too, while Redis answers)."""
    async with _open(settings, need_redis=False) as h:
        booking_id: str = args.booking_id
        booking = await h.store.get_booking(booking_id)
        if booking is None and h.holds is not None:
            try:
                booking = await h.bookings(settings).get(booking_id)
            except NotFound:
                booking = None
        if booking is None:
            where = "SQL" if h.redis_problem is not None else "SQL or Redis"
            raise AdminError(f"booking {booking_id} not found in {where}")
        history = await h.store.transitions_of(booking_id)
        if args.json:
            view = booking_view(booking)
            view["owner"] = booking.owner or None
            view["history"] = [{"from": f, "to": t, "cause": c} for f, t, c in history]
            print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        else:
            b = booking
            print(f"booking      {b.id}")
            print(f"state        {b.state}")
            print(f"flight       {b.flight_id}")
            print(f"user         {b.user_id}")
            print(f"API key      {b.owner or '(made without keys)'}")
            print(f"seats        {', '.join(b.seats)}")
            print(f"amount       {b.amount} {b.currency}")
            if b.payment is not None:
                print(f"payment      {b.payment.status} ({b.payment.payment_id or 'no id yet'})")
            if not b.in_sql:
                print("history      held in Redis only (SQL has it from its first money step)")
            for f, t, c in history:
                print(f"history      {f} -> {t} ({c})")
        return h.exit_code("Redis not asked")


async def bookings_list(settings: Settings, args: argparse.Namespace) -> int:
    if args.state is not None and args.state not in {s.value for s in State}:
        raise AdminError(f"state must be one of {', '.join(s.value for s in State)}")
    if not 1 <= args.limit <= 10_000:
        raise AdminError("limit must be 1..10000")
    async with _open(settings, need_redis=False) as h:
        found = await h.store.find_bookings(user_id=args.user, state=args.state, limit=args.limit)
        if args.json:
            print(
                orjson.dumps([booking_view(b) for b in found], option=orjson.OPT_INDENT_2).decode()
            )
        else:
            for b in found:
                seats = ",".join(b.seats)
                print(
                    f"{b.id}  {b.state:<16} flight {b.flight_id}  {b.user_id}  {seats}"
                    f"  {b.amount} {b.currency}"
                )
            print(f"{len(found)} bookings (SQL's: a hold enters SQL at its first money step)")
    return 0


async def bookings_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """POST /api/bookings/{id}/cancel/ (and refund/) by the same domain code, so the same
    transition table and the same once-only refund hold; a refused move is one line, exit 2."""
    async with _open(settings) as h:
        assert h.holds is not None  # opened with Redis required
        bookings = h.bookings(settings)
        gateway = MockGateway(settings.gateway_ledger_path)
        try:
            booking = await bookings.get(args.booking_id)
            if booking.state != State.CANCELLED.value or not args.refund:
                booking = await bookings.cancel(args.booking_id)
                print(f"booking {booking.id}: {booking.state}")
            if args.refund:
                payments = Payments(settings, h.store, h.holds, bookings, gateway)
                booking = await payments.refund(args.booking_id)
                print(f"booking {booking.id}: {booking.state}")
        except DomainError as exc:
            raise AdminError(exc.message) from exc
        finally:
            await bookings.close()
            await gateway.close()
    return 0


def run(command: str, settings: Settings, args: argparse.Namespace) -> int:
    commands = {
        "status": lambda: status(settings, args.json),
        "audit": lambda: audit(settings, args.json),
        "flights create": lambda: flights_create(settings, args),
        "flights list": lambda: flights_list(settings, args.json),
        "migrate": lambda: migrate(settings),
        "bookings show": lambda: bookings_show(settings, args),
        "bookings cancel": lambda: bookings_cancel(settings, args),
        "bookings list": lambda: bookings_list(settings, args),
    }
    try:
        return asyncio.run(commands[command]())
    except AdminError as exc:
        print(f"holdsvc {command}: {exc}", file=sys.stderr)
        return exc.code
