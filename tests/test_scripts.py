"""Lua scripts: loaded once, reloaded after SCRIPT FLUSH, and a broken one stops start-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from redis.asyncio import Redis

from holdsvc.seats.scripts import LUA_DIR, NAMES, ScriptLoadError, load_scripts
from tests.helpers import Client, hold, new_flight, seat_map


async def test_every_script_has_a_contract_header() -> None:
    for name in NAMES:
        text = (LUA_DIR / f"{name}.lua").read_text()
        header = text.split("local ", 1)[0]
        for word in ("KEYS[1]", "ARGV[1]", "Returns"):
            assert word in header, f"{name}.lua header lacks {word}"


async def test_holds_and_confirms_work_after_script_flush(client: Client, redis: Redis) -> None:
    flight = await new_flight(client)
    first = await hold(client, flight["id"], ["1A"])
    await redis.script_flush()
    second = await hold(client, flight["id"], ["1B"])
    await redis.script_flush()
    resp = await client.post(f"/api/bookings/{second['id']}/pay/")
    assert resp.status == 200
    seats = await seat_map(client, flight["id"])
    assert seats["1A"] == "held" and seats["1B"] == "booked"
    assert first["id"] != second["id"]


async def test_a_broken_script_fails_loading_with_its_file_name(
    tmp_path: Path, redis: Redis
) -> None:
    lua = tmp_path / "lua"
    shutil.copytree(LUA_DIR, lua)
    (lua / "confirm_seats.lua").write_text("return redis.call('GET', KEYS[1]")
    with pytest.raises(ScriptLoadError, match=r"confirm_seats\.lua"):
        await load_scripts(redis, lua)
    (lua / "hold_seats.lua").unlink()
    with pytest.raises(ScriptLoadError, match=r"hold_seats\.lua"):
        await load_scripts(redis, lua)
