"""The auto-pipelining client: database selection, finality of close, and a hold whose
reply was lost being taken back."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.seats.redis_client import PipelinedRedis
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
