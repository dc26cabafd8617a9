"""Idempotency-Keys under faults: the SQL writer, or the whole service, SIGKILLed while keyed
requests run; then every key is retried, as a client library would, until it settles.

What must hold: each key had one effect or none; every retry got the first answer (or, where
the first answer was a 5xx, the request ran once); no key is left "in progress"."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from holdsvc import EmbeddedRedis, Settings
from holdsvc.appkeys import STORE
from holdsvc.domain.idempotency import IdempotencyKeys
from holdsvc.domain.records import Claim
from tests.helpers import SMALL_FLIGHT, Client, ServiceProcess, eventually, new_flight
from tests.invariants import check_invariants, unsettled

N = 60
IN_PROGRESS = "still in progress"


async def _post(
    http: Any, url: str, key: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    try:
        async with http.post(url, json=body, headers={"Idempotency-Key": key}) as resp:
            return resp.status, await resp.json()
    except aiohttp.ClientError as exc:
        return 0, repr(exc)  # the connection died with the service: no answer at all


async def _settle(
    http: Any, url: str, key: str, body: dict[str, Any] | None, timeout: float = 30
) -> tuple[int, Any]:
    """Retry until the answer is final: not a 5xx, not 'in progress', not a dead socket."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = await _post(http, url, key, body)
        final = status not in (0, 500, 502, 503) and not (
            status == 409 and IN_PROGRESS in str(answer)
        )
        if final:
            return status, answer
        assert time.monotonic() < deadline, f"{key} never settled: {status} {answer}"
        await asyncio.sleep(0.1)


def _check_answers(firsts: dict[str, tuple[int, Any]], finals: dict[str, tuple[int, Any]]) -> None:
    for key, (status, answer) in firsts.items():
        assert status != 500, (key, answer)
        if status in (0, 503) or (status == 409 and IN_PROGRESS in str(answer)):
            continue  # no answer the client could keep: the retry's is the first it sees
        assert finals[key] == (status, answer), f"{key}: first {status}, retry {finals[key]}"


@pytest.mark.sqlite_only  # kills the SQLite writer process
async def test_keyed_pays_and_holds_survive_the_sql_writer_killed(
    make_client: Callable[..., Any], settings: Settings, redis: Redis
) -> None:
    client: Client = await make_client(
        settings.replace(hold_ttl=4.0, payment_window=1.0, gateway_timeout=0.5, sweep_interval=0.2)
    )
    flight = await new_flight(client, rows=20, seat_letters="ABCDEF")
    fid = flight["id"]
    holds = [
        await client.post("/api/bookings/", json={"flight_id": fid, "user_id": f"u{i}",
                                                  "seats": [f"{i // 6 + 1}{'ABCDEF'[i % 6]}"]})
        for i in range(N)
    ]  # fmt: skip
    bids = [(await h.json())["id"] for h in holds]
    store = client.app[STORE]
    answered = 0
    some_answered = asyncio.Event()
    kill_after = random.Random().randint(1, N // 2)

    async def send(key: str, url: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        nonlocal answered
        result = await _post(client, url, key, body)
        answered += 1
        if answered >= kill_after:
            some_answered.set()
        return result

    async def kill_writer() -> None:
        # While keyed requests are in every stage: some answered, the others in flight.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(some_answered.wait(), 5)
        pid = store.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    pays = {f"pay-{b}": f"/api/bookings/{b}/pay/" for b in bids}
    hold_bodies = {
        f"hold-{i}": {
            "flight_id": fid,
            "user_id": "k",
            "seats": [f"{11 + i // 6}{'ABCDEF'[i % 6]}"],
        }
        for i in range(N)
    }
    first = await asyncio.gather(
        kill_writer(),
        *(send(key, url, None) for key, url in pays.items()),
        *(send(key, "/api/bookings/", body) for key, body in hold_bodies.items()),
    )
    firsts = dict(zip([*pays, *hold_bodies], first[1:], strict=True))
    assert any(s == 503 for s, _ in firsts.values()), "the writer died after every answer"

    finals = {}
    for key, url in pays.items():
        finals[key] = await _settle(client, url, key, None)
    for key, body in hold_bodies.items():
        finals[key] = await _settle(client, "/api/bookings/", key, body)
    _check_answers(firsts, finals)

    # One effect a key: one hold each (the script claims the key with the seats), and each
    # booking confirmed at most once, charged at most once.
    held = {a["id"] for s, a in finals.values() if s == 201}
    assert len(held) == N
    for bid in bids:
        history = await store.transitions_of(bid)
        assert [h[1] for h in history].count("CONFIRMED") <= 1, history

    # No key is "in progress" once the writer is back: each answers at once, the same.
    await asyncio.sleep(2)
    for key, url in pays.items():
        assert await _post(client, url, key) == finals[key], key
    for key, body in hold_bodies.items():
        assert await _post(client, "/api/bookings/", key, body) == finals[key], key

    async def settled() -> bool:
        return unsettled(settings.db_target) == []

    await eventually(settled, timeout=10, interval=0.2)
    await check_invariants(settings.db_target, settings.gateway_ledger_path, redis, fid)


async def test_keyed_pays_and_holds_survive_the_service_killed(
    tmp_path: Path,
    db: str,
    redis_server: EmbeddedRedis,
    redis: Redis,
    services: Callable[..., ServiceProcess],
) -> None:
    # A dead pay is settled a gateway timeout after its payment last changed: short waits.
    args = [
        "--redis-url", redis_server.url,
        "--data-dir", str(tmp_path),
        "--db", db,
        "--hold-ttl", "4",
        "--payment-window", "1",
        "--gateway-timeout", "0.5",
        "--reconcile-grace", "0.5",
        "--sweep-interval", "0.2",
    ]  # fmt: skip
    doomed = services(args)
    async with aiohttp.ClientSession() as http:
        flight = {**SMALL_FLIGHT, "rows": 12, "seat_letters": "ABCDE"}
        async with http.post(f"{doomed.base}/api/flights/", json=flight) as resp:
            fid = (await resp.json())["id"]
        async with http.post(f"{doomed.base}/api/flights/", json=flight) as resp:
            fid2 = (await resp.json())["id"]
        bids = []
        for i in range(N):
            seat = f"{i // 5 + 1}{'ABCDE'[i % 5]}"
            plain = {"flight_id": fid, "user_id": f"u{i}", "seats": [seat]}
            async with http.post(f"{doomed.base}/api/bookings/", json=plain) as resp:
                bids.append((await resp.json())["id"])
        # Keyed pays of those holds, and keyed holds of the other seats, all in flight.
        requests: dict[str, tuple[str, dict[str, Any] | None]] = {
            f"pay-{b}": (f"/api/bookings/{b}/pay/", None) for b in bids
        }
        for i in range(N):
            seat = f"{i // 5 + 1}{'ABCDE'[i % 5]}"
            keyed = {"flight_id": fid2, "user_id": f"k{i}", "seats": [seat]}
            requests[f"hold-{i}"] = ("/api/bookings/", keyed)

        answered = 0
        some_answered = asyncio.Event()
        kill_after = random.Random().randint(1, N // 2)

        async def send(key: str, url: str, body: dict[str, Any] | None) -> tuple[int, Any]:
            nonlocal answered
            result = await _post(http, doomed.base + url, key, body)
            answered += 1
            if answered >= kill_after:
                some_answered.set()
            return result

        async def kill() -> None:
            # While requests are in every stage: some answered, the others in flight.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(some_answered.wait(), 5)
            doomed.stop(signal.SIGKILL)

        first = await asyncio.gather(
            kill(), *(send(key, url, body) for key, (url, body) in requests.items())
        )
        firsts = dict(zip(requests, first[1:], strict=True))
        assert any(s == 0 for s, _ in firsts.values()), "the service died after every answer"

        survivor = services(args)
        try:
            finals = {
                key: await _settle(http, survivor.base + url, key, body)
                for key, (url, body) in requests.items()
            }
        except AssertionError:
            print("\n".join(x for x in survivor.output.splitlines() if "access" not in x)[-8000:])
            raise
        _check_answers(firsts, finals)
        # One hold a key: every hold key answers one booking, each a different one.
        held = {a["id"] for k, (s, a) in finals.items() if k.startswith("hold-") and s == 201}
        assert len(held) == N
        for key, (url, body) in requests.items():
            assert await _post(http, survivor.base + url, key, body) == finals[key], key

    async def settled() -> bool:
        return unsettled(db) == []

    await eventually(settled, timeout=15, interval=0.2)
    await check_invariants(db, tmp_path / "mock-gateway.sqlite3", redis, fid)


async def test_a_claim_is_in_progress_only_while_its_request_runs(
    client: Client, settings: Settings
) -> None:
    # Two processes' key services on one store; the first claims two keys.
    store = client.app[STORE]
    first = IdempotencyKeys(store, "first", settings.takeover_after_ms, 86_400_000)
    second = IdempotencyKeys(store, "second", settings.takeover_after_ms, 86_400_000)
    _, running = await first.claim("k-running", b"fp")
    _, failed = await first.claim("k-failed", b"fp")
    # The failed request ended (a 5xx) and its release could not be written: it is only
    # finished here, never released.
    first.finish(failed)
    started = time.monotonic()
    assert (await second.claim("k-failed", b"fp"))[0].claim is Claim.RUNNING
    while (await second.claim("k-failed", b"fp"))[0].claim is Claim.RUNNING:
        await first.renew()  # the first process is alive and healthy all along
        await asyncio.sleep(0.1)
    assert time.monotonic() - started < 2.0
    # The request still running keeps its claim, for as long as it runs.
    for _ in range(25):
        await first.renew()
        assert (await second.claim("k-running", b"fp"))[0].claim is Claim.RUNNING
        await asyncio.sleep(0.1)
    first.finish(running)
