"""The OpenAPI document, the offline docs page, and schemathesis against the live service:
no 5xx, and every answer matches the document."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.http.routes import ENDPOINTS
from tests.helpers import SMALL_FLIGHT, Client, ServiceProcess


async def test_spec_describes_every_route(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"] == "3.1.0"
    for e in ENDPOINTS:
        op = spec["paths"][e.path][e.method.lower()]
        assert op["responses"], e.path
    hold = spec["paths"]["/api/bookings/"]["post"]
    schema = hold["requestBody"]["content"]["application/json"]["schema"]
    # One of its three shapes, each with its own required fields (an empty body fits none).
    shapes = [spec["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]] for s in schema["oneOf"]]
    assert [sorted(s["required"]) for s in shapes] == [
        ["flight_id", "seats", "user_id"], ["flight_id", "seat_count", "user_id"],
        ["flightId", "noOfSeats", "userId"],
    ]  # fmt: skip
    # Timestamps say so; a state is one shared enum; every operation has a tag; 201s say
    # where the new resource is.
    booking = spec["components"]["schemas"]["Booking"]["properties"]
    assert booking["created_at"] == {"type": "string", "format": "date-time"}
    assert booking["state"] == {"$ref": "#/components/schemas/State"}
    assert all(op["tags"] for path in spec["paths"].values() for op in path.values())
    created = hold["responses"]["201"]["headers"]
    assert created["Location"] == {"$ref": "#/components/headers/Location"}


async def test_docs_page_works_without_internet(client: Client) -> None:
    page = await client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assert "/docs/static/swagger-ui-bundle.js" in html and "http" not in html.split("<body>")[1]
    asset = await client.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status == 200
    assert len(await asset.read()) > 100_000


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    node = services(["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            assert resp.status == 201
    st = shutil.which("schemathesis") or shutil.which("st")
    command = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    run = await asyncio.to_thread(
        subprocess.run,
        [
            *command, "run", f"{node.base}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples", "10", "--seed", "7", "--workers", "1",
            "--request-timeout", "10", "--max-time", "45",
        ],
        capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "generated" in run.stdout, run.stdout[-2000:]
