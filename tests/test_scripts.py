"""Lua scripts: loaded once, reloaded after SCRIPT FLUSH, and a broken one stops start-up."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from holdsvc import EmbeddedRedis, Held, HoldStore, NotRestored, PipelinedRedis, Taken
from holdsvc.seats import keys as seat_keys
from holdsvc.seats.holds import (
    Confirm,
    Extended,
    ExtensionRefused,
    HoldMeta,
    KeyClaim,
    KeyMismatch,
    NotEnough,
    OverCustomerLimit,
    Replayed,
    Snapshot,
)
from holdsvc.seats.scripts import (
    LUA_DIR,
    NAMES,
    PRELUDE,
    ScriptLoadError,
    UnknownScriptReply,
    load_scripts,
)
from tests.helpers import Client, eventually, hold, new_flight, seat_map


async def test_every_script_has_a_contract_header() -> None:
    files = {p.stem for p in LUA_DIR.glob("*.lua")} - {n.removesuffix(".lua") for n in PRELUDE}
    assert files == set(NAMES), "every script in lua/ is loaded, and only those"
    for name in NAMES:
        text = (LUA_DIR / f"{name}.lua").read_text()
        header = text.split("\nlocal ", 1)[0]
        for word in ("KEYS[1]", "ARGV[1]", "Returns (closed set):"):
            assert word in header, f"{name}.lua header lacks {word}"


async def _store(redis: Redis, url: str, lua_dir: Path = LUA_DIR) -> HoldStore:
    return HoldStore(redis, await load_scripts(redis, lua_dir), PipelinedRedis(url))


async def test_every_documented_reply_maps_to_its_result(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    """Drive each script into each code of its closed set, through the hold store."""
    store = await _store(redis, redis_server.url)
    try:
        fid, ttl, m = 7, 60_000, META
        # Before a restore the marker is missing: hold scripts answer {3}.
        assert isinstance(await store.hold(fid, ["1A"], "b1", ttl, m), NotRestored)
        assert isinstance(await store.hold_best(fid, 1, 2, "AB", "b1", ttl, m), NotRestored)
        # A marker from another Redis run (a restart from an AOF that may miss its last
        # second) holds nothing either, until the flight is restored into this run.
        await store.restore(fid, [("2B", "sold")], "an-earlier-run")  # restore_seats: n >= 0
        assert isinstance(await store.hold(fid, ["1A"], "b1", ttl, m), NotRestored)
        assert isinstance(await store.hold_best(fid, 1, 2, "AB", "b1", ttl, m), NotRestored)
        await store.restore(fid, [("2B", "sold")], await store.server_run_id())
        held = await store.hold(fid, ["1A", "1B"], "b1", ttl, m)  # {1, deadline}
        assert isinstance(held, Held) and held.seats == ["1A", "1B"]
        taken = await store.hold(fid, ["1C", "1B", "2B"], "b2", ttl, m)  # {2, i, j}
        assert isinstance(taken, Taken) and taken.seats == ["1B", "2B"]
        best = await store.hold_best(fid, 1, 2, "AB", "b3", ttl, m)  # {1, deadline, seat}
        assert isinstance(best, Held) and best.seats == ["2A"]
        none = await store.hold_best(fid, 1, 2, "AB", "b4", ttl, m)  # {2, free}
        assert isinstance(none, NotEnough) and none.free == 0
        paying = await store.begin_payment(fid, ["1A", "1B"], "b1", ttl)  # {1, deadline}
        assert paying is not None and paying >= held.deadline_ms
        assert await store.begin_payment(fid, ["1A"], "b2", ttl) is None  # {0}
        assert await store.confirm(fid, ["1A", "1B"], "b1") is Confirm.BOOKED  # 1
        assert await store.confirm(fid, ["1A", "1B"], "b1") is Confirm.ALREADY_BOOKED  # 2
        assert await store.confirm(fid, ["2A"], "b2") is Confirm.HOLD_LOST  # 0
        # seat_snapshot: {1, position, statuses} (1A, 1B and 2B booked, 2A held by b3), the
        # position the stream's last entry: the confirm of 1A and 1B.
        snap = await store.snapshot(fid, 2, "AB")
        assert isinstance(snap, Snapshot) and snap.statuses == "bbhb"
        newest: Any = await redis.xrevrange(seat_keys.stream(fid), count=1)
        [(last_id, last)] = newest
        assert snap.position == last_id.decode() and last == {b"s": b"1A,1B", b"t": b"b"}
        assert isinstance(await store.snapshot(fid + 1, 2, "AB"), NotRestored)  # {3}
        # extend_hold: {1, deadline, now}, {2, latest}, {3, latest, n} and {0}.
        long = await store.hold(fid, ["3B"], "b7", ttl, m)
        assert isinstance(long, Held)
        grown = await store.extend(fid, ["3B"], "b7", 1000, ttl + 1500, 1)
        assert isinstance(grown, Extended) and grown.deadline_ms == long.deadline_ms + 1000
        too_long = await store.extend(fid, ["3B"], "b7", 1000, ttl + 1500, 2)
        assert too_long == ExtensionRefused(long.created_ms + ttl + 1500)
        too_many = await store.extend(fid, ["3B"], "b7", 100, ttl + 1500, 1)
        assert too_many == ExtensionRefused(long.created_ms + ttl + 1500, 1)
        assert await store.extend(fid, ["3B"], "b2", 100, ttl + 1500, 5) is None
        # {6, held}: over the per-customer limit (the customer holds 1A, 1B, 3A... of fid).
        over = await store.hold(fid, ["4C", "4D"], "b8", ttl, m, customer_limit=1)
        assert isinstance(over, OverCustomerLimit) and over.held == 0
        assert isinstance(await store.hold(fid, ["4C"], "b8", ttl, m, customer_limit=1), Held)
        best_over = await store.hold_best(fid, 1, 2, "AB", "b9", ttl, m, customer_limit=1)
        assert best_over == OverCustomerLimit(1)
        # rate_limit: {1} a token taken, then {0, wait_ms} with the bucket empty.
        assert await store.take_token("c1", 2, 1) is None
        wait = await store.take_token("c1", 2, 1)
        assert wait is not None and 0 < wait <= 500
        assert await store.due(fid, 10) == []  # {} (nothing past its deadline)
        short = await store.hold(fid, ["3A"], "b5", 1, m)
        assert isinstance(short, Held)

        async def lapsed() -> bool:
            return bool(await store.due(fid, 10))

        await eventually(lapsed, timeout=5, interval=0.01)
        assert await store.due(fid, 10) == ["b5"]  # {booking id, ...}
        assert await store.release(fid, ["2A"], "b3") == 1  # n >= 0
        assert await store.release(fid, ["2A"], "b3") == 0
        # With a key: the first answer ({4, ...}) and a different request ({5}).
        key = KeyClaim("k1", "fp1", 60_000)
        first = await store.hold(fid, ["4A"], "b6", ttl, m, key)
        again = await store.hold(fid, ["4A"], "b7", ttl, m, key)
        assert isinstance(first, Held) and isinstance(again, Replayed)
        assert again.booking_id == "b6" and again.first == first and again.meta == m
        other = KeyClaim("k1", "fp2", 60_000)
        assert isinstance(await store.hold(fid, ["4B"], "b8", ttl, m, other), KeyMismatch)
        assert isinstance(await store.hold_best(fid, 1, 2, "AB", "b8", ttl, m, other), KeyMismatch)
        refused = await store.hold(fid, ["4A"], "b9", ttl, m, KeyClaim("k2", "fp", 60_000))
        replay = await store.hold(fid, ["4A"], "b9", ttl, m, KeyClaim("k2", "fp", 60_000))
        assert isinstance(refused, Taken)
        assert isinstance(replay, Replayed) and replay.first == Taken(["4A"])
    finally:
        await store.close()


META = HoldMeta("u1", "10.00", "INR")


# A reply outside each script's closed set, and the call that meets it.
OUT_OF_SET: dict[str, tuple[str, Callable[[HoldStore], Awaitable[object]]]] = {
    "hold_seats": ("{1}", lambda s: s.hold(1, ["1A"], "b", 1000, META)),
    "hold_best": ("{1, 5, 6, '1A'}", lambda s: s.hold_best(1, 2, 1, "AB", "b", 1000, META)),
    "begin_payment": ("{2}", lambda s: s.begin_payment(1, ["1A"], "b", 1000)),
    "confirm_seats": ("3", lambda s: s.confirm(1, ["1A"], "b")),
    "release_seats": ("2", lambda s: s.release(1, ["1A"], "b")),
    "due_holds": ("7", lambda s: s.due(1, 10)),
    "restore_seats": ("-1", lambda s: s.restore(1, [("1A", "b")], "r")),
    "index_seats": ("-1", lambda s: s.index(1, 2, "AB")),
    "free_lapsed": ("5", lambda s: s.forget(1, ["b"], ["1A"])),
    "seat_snapshot": ("{1, '0-0', 'aaa'}", lambda s: s.snapshot(1, 2, "AB")),
    "extend_hold": ("{4}", lambda s: s.extend(1, ["1A"], "b", 1000, 10_000, 5)),
    "rate_limit": ("{2}", lambda s: s.take_token("c", 1, 1)),
}


async def test_a_reply_outside_a_scripts_closed_set_is_raised(
    tmp_path: Path, redis: Redis, redis_server: EmbeddedRedis
) -> None:
    assert set(OUT_OF_SET) == set(NAMES)
    for name, (reply, call) in OUT_OF_SET.items():
        lua = tmp_path / name
        shutil.copytree(LUA_DIR, lua)
        (lua / f"{name}.lua").write_text(f"return {reply}\n")
        store = await _store(redis, redis_server.url, lua)
        try:
            with pytest.raises(UnknownScriptReply, match=name):
                await call(store)
        finally:
            await store.close()


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
