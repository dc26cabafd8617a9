"""The auto-pipelining client: database selection, finality of close, and a hold whose
reply was lost being taken back."""

from __future__ import annotations

import asyncio
import signal
import time
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.seats import redis_client
from holdsvc.seats.redis_client import REPLY_TIMEOUT_S, PipelinedRedis
from tests.helpers import Client, eventually, new_flight, seat_map


async def test_commands_go_to_the_database_of_the_url(redis_server: EmbeddedRedis) -> None:
    client = PipelinedRedis(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        replies = await asyncio.gather(*(client.execute("SET", f"k{i}", i) for i in range(50)))
        assert replies == [b"OK"] * 50
    finally:
        await client.close()
    async with Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3") as db3:
        assert await db3.get("k49") == b"49"
    async with Redis.from_url(redis_server.url) as db0:
        assert await db0.get("k49") is None


async def test_close_is_final(redis_server: EmbeddedRedis) -> None:
    client = PipelinedRedis(redis_server.url)
    assert await client.execute("PING") == b"PONG"
    await client.close()
    with pytest.raises(RedisConnectionError):
        await client.execute("PING")


# Keeps Redis busy for ARGV[1] microseconds.
_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


async def test_a_client_that_itself_stalled_keeps_its_connection(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process pauses (a long collection, a long step) just as the watchdog looks: the
    # reply came meanwhile and sits unread in the socket. That is not a Redis that stopped
    # answering, and the connection must stay.
    client = PipelinedRedis(redis_server.url)
    try:
        assert await client.execute("PING") == b"PONG"
        pause = {"armed": False}

        def monotonic() -> float:
            if pause["armed"]:
                pause["armed"] = False
                time.sleep(REPLY_TIMEOUT_S + 1.5)  # the pause, inside the watchdog's step
            return time.perf_counter()

        monkeypatch.setattr(redis_client, "time", SimpleNamespace(monotonic=monotonic))
        await asyncio.sleep(1.5)  # the watchdog now reads this clock
        # Redis busy for 1.2 s, longer than the watchdog's period: a check comes while the
        # reply is outstanding, and that check is where this process pauses.
        reply = client.execute("EVAL", _BUSY, 0, 1_200_000)
        await asyncio.sleep(0)  # written
        pause["armed"] = True
        assert await reply == 1
        await asyncio.sleep(2.5)  # the watchdog's checks after the pause
        assert await client.execute("SET", "stalled", "1") == b"OK"
        assert await client.execute("GET", "stalled") == b"1"
        assert client.connects == 1
    finally:
        await client.close()


async def test_a_hold_whose_reply_was_lost_is_taken_back(
    client: Client, redis_server: EmbeddedRedis
) -> None:
    # Redis stops answering for longer than the client waits: the hold is answered 503, but
    # Redis runs it once it wakes up. The service takes those seats back.
    flight = await new_flight(client)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        request = asyncio.create_task(
            client.post(
                "/api/bookings/",
                json={"flight_id": flight["id"], "user_id": "u1", "seats": ["2B", "2C"]},
            )
        )
        await asyncio.sleep(7.5)  # past the client's 5 s reply timeout and its 1 s check
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    resp = await request
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"

    async def free_again() -> bool:
        seats = await seat_map(client, flight["id"])
        return seats["2B"] == seats["2C"] == "available"

    await eventually(free_again, timeout=10, interval=0.2)
