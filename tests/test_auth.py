"""API keys and roles, through HTTP: who may call what, whose bookings a key can reach, what
stays open, and that no secret is ever logged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.http.routes import ENDPOINTS
from holdsvc.settings import Settings
from tests.helpers import SMALL_FLIGHT, ServiceProcess

Client = TestClient[Any, Any]
MakeClient = Callable[[Settings], Awaitable[Client]]

ADMIN = "adm-0123456789abcdef-secret"
SHOP_A = "shopA-0123456789abcdef-secret"
SHOP_B = "shopB-0123456789abcdef-secret"
WRONG = "nobody-0123456789abcdef-secret"
ENV_KEY = "envkey-0123456789abcdef-secret"
SECRETS = (ADMIN, SHOP_A, SHOP_B, WRONG, ENV_KEY)
KEY_FILE = f"""# name role secret
ops admin {ADMIN}
shop-a client {SHOP_A}

shop-b client {SHOP_B}
"""


def bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(KEY_FILE)
    return path


@pytest.fixture
async def keyed(make_client: MakeClient, settings: Settings, key_file: Path) -> Client:
    return await make_client(settings.replace(api_keys_file=key_file))


async def _flight(client: Client) -> int:
    resp = await client.post("/api/flights/", json=SMALL_FLIGHT, headers=bearer(ADMIN))
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


class Seats:
    """One seat after another of a 10-seat flight, then of a new one."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.free: list[tuple[int, str]] = []

    async def take(self) -> tuple[int, str]:
        if not self.free:
            flight_id = await _flight(self.client)
            self.free = [(flight_id, f"{r}{c}") for r in (1, 2) for c in "ABCDE"]
        return self.free.pop(0)


async def _hold(client: Client, seats: Seats, secret: str = SHOP_A) -> str:
    flight_id, seat = await seats.take()
    resp = await client.post(
        "/api/bookings/",
        json={"flight_id": flight_id, "user_id": "u1", "seats": [seat]},
        headers=bearer(secret),
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _post(client: Client, path: str, secret: str | None = SHOP_A) -> int:
    resp = await client.post(path, headers=bearer(secret))
    return resp.status


# For each endpoint: the request to make, given a booking shop-a made that the request
# needs (or none), and the answer a key allowed to make it gets.
async def _request(
    client: Client, seats: Seats, handler: str, secret: str | None
) -> aiohttp.ClientResponse:
    headers = bearer(secret)
    booking = ""
    if handler in ("get_booking", "pay_booking", "cancel_booking", "extend_booking"):
        booking = await _hold(client, seats)
    elif handler == "refund_booking":
        booking = await _hold(client, seats)
        assert await _post(client, f"/api/bookings/{booking}/pay/") == 200
        assert await _post(client, f"/api/bookings/{booking}/cancel/") == 200
    if handler == "create_flight":
        return await client.post("/api/flights/", json=SMALL_FLIGHT, headers=headers)
    if handler == "create_booking":
        flight_id, seat = await seats.take()
        body = {"flight_id": flight_id, "user_id": "u1", "seats": [seat]}
        return await client.post("/api/bookings/", json=body, headers=headers)
    flight_id = (await seats.take())[0]
    paths = {
        "list_flights": "/api/flights/",
        "get_flight": f"/api/flights/{flight_id}/",
        "flight_seats": f"/api/flights/{flight_id}/seats/",
        "flight_seat_events": f"/api/flights/{flight_id}/seats/events",
        "get_booking": f"/api/bookings/{booking}/",
        "pay_booking": f"/api/bookings/{booking}/pay/",
        "cancel_booking": f"/api/bookings/{booking}/cancel/",
        "extend_booking": f"/api/bookings/{booking}/extend/",
        "refund_booking": f"/api/bookings/{booking}/refund/",
        "healthz": "/healthz",
        "readyz": "/readyz",
        "livez": "/livez",
    }
    path = paths[handler]
    if handler.endswith("_booking") and handler != "get_booking":
        return await client.post(path, headers=headers)
    return await client.get(path, headers=headers)


ALLOWED = {
    "create_flight": 201, "list_flights": 200, "get_flight": 200, "flight_seats": 200,
    "flight_seat_events": 200,
    "create_booking": 201, "get_booking": 200, "pay_booking": 200, "cancel_booking": 200,
    "refund_booking": 200, "extend_booking": 200, "healthz": 200, "readyz": 200, "livez": 200,
}  # fmt: skip
OPEN_TO_ALL = {"healthz", "readyz", "livez"}
ADMIN_ONLY = {"create_flight"}


async def test_every_endpoint_with_no_key_a_wrong_key_a_client_key_and_an_admin_key(
    keyed: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handlers = {e.handler.__name__ for e in ENDPOINTS}
    assert handlers == set(ALLOWED), "a new endpoint needs its row in this test"
    seats = Seats(keyed)
    for handler in sorted(handlers):
        for who, secret in (("none", None), ("wrong", WRONG), ("client", SHOP_A),
                            ("admin", ADMIN)):  # fmt: skip
            resp = await _request(keyed, seats, handler, secret)
            if resp.content_type == "text/event-stream":
                # A live stream: it opened; its first event is the snapshot.
                async with asyncio.timeout(5):
                    await resp.content.readuntil(b"event: snapshot\n")
                resp.close()
                body: Any = {}
            else:
                body = await resp.json()
            where = f"{handler} with {who} key: {resp.status} {body}"
            if handler in OPEN_TO_ALL:
                assert resp.status == 200, where
            elif who == "none":
                assert resp.status == 401, where
                assert resp.headers["WWW-Authenticate"].startswith("Bearer"), where
                assert "API key is required" in body["error"], where
            elif who == "wrong":
                assert resp.status == 401, where
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], where
                assert body == {"error": "Unknown API key", "code": "unknown_api_key"}, where
            elif who == "client" and handler in ADMIN_ONLY:
                assert resp.status == 403, where
                assert body == {
                    "error": "An API key with the role client may not create flights",
                    "code": "role_not_allowed",
                }, where
            else:
                assert resp.status == ALLOWED[handler], where
    for secret in SECRETS:
        assert secret not in caplog.text


async def test_a_refused_request_changes_nothing(keyed: Client) -> None:
    seats = Seats(keyed)
    booking = await _hold(keyed, seats)
    for secret in (None, WRONG):
        assert await _post(keyed, f"/api/bookings/{booking}/cancel/", secret) == 401
    resp = await keyed.post("/api/flights/", json=SMALL_FLIGHT, headers=bearer(SHOP_A))
    assert resp.status == 403
    listed = await (await keyed.get("/api/flights/", headers=bearer(ADMIN))).json()
    assert len(listed) == 1  # the client's flight was not created
    got = await keyed.get(f"/api/bookings/{booking}/", headers=bearer(SHOP_A))
    assert (await got.json())["state"] == "SEAT_HELD"


async def test_a_client_cannot_reach_another_clients_booking(keyed: Client) -> None:
    seats = Seats(keyed)
    held = await _hold(keyed, seats, SHOP_A)
    paid = await _hold(keyed, seats, SHOP_A)
    assert await _post(keyed, f"/api/bookings/{paid}/pay/", SHOP_A) == 200
    missing = "AAAAAAAAAAAAAAAAAAAA.1"
    for booking in (held, paid, missing):  # a live hold, a booking in SQL, no booking
        got = await keyed.get(f"/api/bookings/{booking}/", headers=bearer(SHOP_B))
        assert got.status == 404
        assert await got.json() == {"error": "Booking not found", "code": "not_found"}
        for action in ("pay", "cancel", "refund"):
            resp = await keyed.post(f"/api/bookings/{booking}/{action}/", headers=bearer(SHOP_B))
            assert resp.status == 404, (booking, action)
            assert await resp.json() == {"error": "Booking not found", "code": "not_found"}
    # Untouched, and still reachable by its owner and by an admin.
    for secret in (SHOP_A, ADMIN):
        states = []
        for booking in (held, paid):
            got = await keyed.get(f"/api/bookings/{booking}/", headers=bearer(secret))
            states.append((await got.json())["state"])
        assert states == ["SEAT_HELD", "CONFIRMED"]
    # An admin acts on any booking.
    assert await _post(keyed, f"/api/bookings/{held}/cancel/", ADMIN) == 200


async def test_idempotency_keys_are_per_api_key(keyed: Client) -> None:
    flight_id = await _flight(keyed)
    answers = []
    for secret in (SHOP_A, SHOP_B, SHOP_A):
        resp = await keyed.post(
            "/api/bookings/",
            json={"flight_id": flight_id, "user_id": "u1", "seat_count": 1},
            headers={**bearer(secret), "Idempotency-Key": "order-1"},
        )
        assert resp.status == 201
        answers.append(((await resp.json())["id"], resp.headers.get("Idempotent-Replayed")))
    (a, a_replayed), (b, b_replayed), (again, replayed) = answers
    # shop-b's "order-1" is its own: a hold of its own, not shop-a's answer.
    assert a != b and a_replayed is None and b_replayed is None
    assert again == a and replayed == "true"
    got = await keyed.get(f"/api/bookings/{a}/", headers=bearer(SHOP_B))
    assert got.status == 404


async def test_admin_views_are_open_on_loopback_and_need_an_admin_key_elsewhere(
    make_client: MakeClient, settings: Settings, key_file: Path
) -> None:
    views = ("/metrics", "/openapi.json", "/docs")
    loopback = await make_client(settings.replace(api_keys_file=key_file))
    for path in views:
        assert (await loopback.get(path)).status == 200, path
    wide = await make_client(settings.replace(api_keys_file=key_file, host="0.0.0.0"))
    for path in views:
        assert (await wide.get(path)).status == 401, path
        assert (await wide.get(path, headers=bearer(SHOP_A))).status == 403, path
        assert (await wide.get(path, headers=bearer(ADMIN))).status == 200, path
    for path in ("/healthz", "/livez", "/readyz"):
        assert (await wide.get(path)).status == 200, path
    spec = await (await wide.get("/openapi.json", headers=bearer(ADMIN))).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/api/bookings/"]["post"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/api/bookings/"]["post"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


async def test_without_keys_the_service_stays_open(client: Client) -> None:
    resp = await client.post("/api/flights/", json=SMALL_FLIGHT)
    assert resp.status == 201


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "holdsvc", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_it_refuses_to_serve_open_beyond_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "example.org"):
        done = _serve("--host", host, "--data-dir", str(tmp_path))
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("holdsvc: cannot start: refusing to serve without API keys")
        assert "--api-keys" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_key_file_is_refused_with_its_line_and_never_its_secret(tmp_path: Path) -> None:
    cases = {
        f"ops admin {ADMIN}\nshop-a superuser {SHOP_A}\n": "line 2: role must be admin or client",
        f"ops admin {ADMIN}\nops client {SHOP_A}\n": "the key name 'ops' is given twice",
        f"ops admin {ADMIN}\nshop client {ADMIN}\n": "have the same secret",
        "ops admin short\n": "line 1: a secret is 16 to 256",
        f"ops admin {ADMIN} extra\n": "line 1: expected 'name role secret', got 4 fields",
        "# nothing\n": "has no keys",
    }
    for text, expected in cases.items():
        path = tmp_path / "keys"
        path.write_text(text)
        done = _serve("--api-keys", str(path), "--data-dir", str(tmp_path))
        assert done.returncode == 1, (text, done.stderr)
        assert done.stderr.startswith("holdsvc: cannot start:"), done.stderr
        assert expected in done.stderr, (expected, done.stderr)
        for secret in (ADMIN, SHOP_A, "short"):
            assert secret not in done.stderr
    missing = _serve("--api-keys", str(tmp_path / "nope"), "--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "cannot read the API key file" in missing.stderr


async def test_keys_on_every_address_and_no_secret_in_the_service_log(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    key_file: Path,
    services: Callable[..., ServiceProcess],
) -> None:
    node = services(
        ["--host", "0.0.0.0", "--api-keys", str(key_file), "--redis-url", redis_server.url,
         "--db", str(tmp_path / "db.sqlite3"), "--log-format", "json", "--log-level", "DEBUG"],
        env={"HOLDSVC_API_KEY": f"env-admin admin {ENV_KEY}"},
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.base}/api/flights/", json=SMALL_FLIGHT, headers=bearer(ENV_KEY)
        ) as resp:
            assert resp.status == 201, await resp.text()
            flight_id = (await resp.json())["id"]
        for secret in (SHOP_A, WRONG, None, SHOP_B):
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight_id, "user_id": "u1", "seat_count": 1},
                headers=bearer(secret),
            ) as resp:
                assert resp.status == (201 if secret in (SHOP_A, SHOP_B) else 401)
        async with http.get(f"{node.base}/metrics", headers=bearer(ADMIN)) as resp:
            assert resp.status == 200
    output = node.stop()
    for secret in SECRETS:
        assert secret not in output
    access = [json.loads(line) for line in output.splitlines()
              if line.startswith("{") and '"route"' in line]  # fmt: skip
    keys = [(line["route"], line["status"], line.get("key")) for line in access]
    assert ("/api/flights/", 201, "env-admin") in keys
    assert ("/api/bookings/", 201, "shop-a") in keys
    assert ("/api/bookings/", 201, "shop-b") in keys
    assert ("/api/bookings/", 401, None) in keys
    assert "serving open" not in output


async def test_open_on_loopback_says_so_once(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    node = services(["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            assert resp.status == 201
    output = node.stop()
    assert output.count("no API keys configured: serving open") == 1
