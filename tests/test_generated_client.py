"""A client generated from the live OpenAPI document (openapi-python-client) type-checks and
drives the lifecycle: hold, pay, cancel, refund, a 409 and a 402, with typed models."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import SMALL_FLIGHT, ServiceProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def generated(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> Iterator[tuple[str, Any]]:
    generator = shutil.which("openapi-python-client")
    if generator is None:
        pytest.skip("openapi-python-client is not installed (pip install -e '.[test]')")
    node = services(["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")])
    spec = tmp_path / "openapi.json"
    with urllib.request.urlopen(f"{node.base}/openapi.json", timeout=10) as resp:
        spec.write_bytes(resp.read())
    out = tmp_path / "holdsvc_client"
    done = subprocess.run(
        [generator, "generate", "--path", str(spec), "--meta", "none", "--output-path", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The generated models type-check (its client.py is the generator's own template, and
    # the SSE endpoint's function parses JSON: neither is what the spec decides).
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-incremental", str(out / "models"), str(out / "types.py")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield node.base, importlib.import_module("holdsvc_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "holdsvc_client"]:
            del sys.modules[name]


def test_a_generated_client_drives_the_lifecycle(generated: tuple[str, Any]) -> None:
    base, _ = generated
    api = _modules("holdsvc_client.api.bookings", "create_booking", "pay_booking",
                   "cancel_booking", "refund_booking")  # fmt: skip
    flights = _modules("holdsvc_client.api.flights", "create_flight")
    models = importlib.import_module("holdsvc_client.models")
    with importlib.import_module("holdsvc_client").Client(base_url=base) as client:
        _lifecycle(client, api, flights, models)


def _lifecycle(client: Any, api: Any, flights: Any, models: Any) -> None:

    flight_in = models.FlightIn.from_dict({**SMALL_FLIGHT, "flight_number": "GC1"})
    made = flights.create_flight.sync_detailed(client=client, body=flight_in)
    assert made.status_code == 201 and made.headers["Location"].startswith("/api/flights/")
    fid = made.parsed.id

    def hold(seats: list[str]) -> Any:
        return api.create_booking.sync_detailed(
            client=client, body=models.HoldSeats(flight_id=fid, user_id="gen", seats=seats)
        )

    held = hold(["1A", "1B"])
    assert held.status_code == 201
    booking = held.parsed
    assert held.headers["Location"] == f"/api/bookings/{booking.id}/"
    assert booking.state == models.State.SEAT_HELD
    assert isinstance(booking.created_at, datetime) and isinstance(
        booking.hold_expires_at, datetime
    )
    assert booking.expires_in_seconds > 0

    taken = hold(["1B"])
    assert taken.status_code == 409
    assert taken.parsed.code == "seats_not_available"

    paid = api.pay_booking.sync_detailed(
        booking.id, client=client, body=models.PayIn(payment_method="pm_card_visa")
    )
    assert paid.status_code == 200 and paid.parsed.state == models.State.CONFIRMED
    cancelled = api.cancel_booking.sync_detailed(booking.id, client=client, body=models.CancelIn())
    assert cancelled.parsed.state == models.State.CANCELLED
    refunded = api.refund_booking.sync_detailed(booking.id, client=client, body=models.EmptyIn())
    assert refunded.status_code == 200
    assert refunded.parsed.state == models.State.REFUNDED

    other = hold(["2A"]).parsed
    declined = api.pay_booking.sync_detailed(
        other.id, client=client, body=models.PayIn(payment_method="pm_card_chargeDeclined")
    )
    assert declined.status_code == 402
    assert declined.parsed.decline_code.value == "card_declined"
    assert declined.parsed.state.value == "CANCELLED"


class _Namespace:
    pass


def _modules(package: str, *names: str) -> Any:
    """The generated endpoint modules of ``package``, as attributes."""
    space = _Namespace()
    for name in names:
        setattr(space, name, importlib.import_module(f"{package}.{name}"))
    return space
