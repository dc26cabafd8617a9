"""The cluster-aware hot-path client against a real 3-primary cluster: routing by slot, one
pipelined connection per primary, MOVED and ASK followed while a slot migrates under load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from holdsvc.embedded_redis import LocalCluster
from holdsvc.seats.cluster_client import ClusterPipelinedRedis
from tests.helpers import migrate_slot, node_command, slot_owner


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[ClusterPipelinedRedis]:
    c = ClusterPipelinedRedis(cluster.url)
    try:
        yield c
    finally:
        await c.close()


def flight_key(flight: int, name: str) -> str:
    return f"{{f:{flight}}}:{name}"


async def owner_port(cluster: LocalCluster, key: str) -> int:
    return await slot_owner(cluster.nodes[0].port, key_slot(key.encode()))


async def test_calls_are_routed_by_slot_over_one_connection_per_primary(
    cluster: LocalCluster, client: ClusterPipelinedRedis
) -> None:
    keys = [flight_key(f, "1A") for f in range(300)]
    # Issued in one turn: every node's share goes out pipelined.
    assert await asyncio.gather(*(client.execute("SET", k, k) for k in keys)) == [b"OK"] * 300
    assert await client.execute_many([("GET", k) for k in keys]) == [k.encode() for k in keys]
    for node in cluster.nodes:
        async with Redis(port=node.port) as r:
            here = [k for k in keys if await owner_port(cluster, k) == node.port]
            assert here, "keys on every node"
            assert await r.dbsize() == len(here)
            clients = (await node_command(node.port, "CLIENT", "LIST")).decode().splitlines()
            # Ours (one), plus the two inspecting connections.
            assert len(clients) == 3, clients
    assert client.connects == 3
    # A script routes by its first key and runs where the flight lives.
    script = "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])"
    reply = await client.execute("EVAL", script, 2, flight_key(7, "n"), flight_key(7, "m"))
    assert reply == 2
    # Keys of one flight share a slot; two flights' keys in one script are refused.
    with pytest.raises(Exception, match=r"CROSSSLOT|different slots|hash slot"):
        await client.execute("EVAL", script, 2, flight_key(7, "n"), flight_key(8, "n"))


async def test_a_slot_migrated_under_load_is_followed_without_a_failed_call(
    cluster: LocalCluster, client: ClusterPipelinedRedis
) -> None:
    flight = 42
    keys = [flight_key(flight, f"{r}{c}") for r in range(1, 31) for c in "ABCDEF"]
    slot = key_slot(keys[0].encode())
    source = await owner_port(cluster, keys[0])
    target = next(n.port for n in cluster.nodes if n.port != source)
    for k in keys:
        await client.execute("SET", k, "0")

    stop = asyncio.Event()
    done = 0

    async def load(n: int) -> None:
        nonlocal done
        while not stop.is_set():
            await client.execute("INCR", keys[(n * 7 + done) % len(keys)])
            done += 1

    workers = [asyncio.create_task(load(n)) for n in range(16)]
    await asyncio.sleep(0.2)
    await asyncio.wait_for(migrate_slot([n.port for n in cluster.nodes], slot, target, 20), 20)
    await asyncio.sleep(0.3)  # calls now meet MOVED, then the refreshed map
    stop.set()
    await asyncio.gather(*workers)  # any failed call would raise here
    assert done > 100
    assert client.node_for(keys[0]) is not None
    assert await owner_port(cluster, keys[0]) == target
    total = sum(int(v) for v in await node_command(target, "MGET", *keys))
    assert total == done  # every INCR applied exactly once, wherever it landed
    # Both redirections were met and followed: ASK mid-migration, MOVED after it.
    assert client.asked > 0 and client.moved > 0, (client.asked, client.moved)
    assert client.refreshes >= 2  # the first map, and the one after MOVED


async def test_a_script_refused_for_a_moved_undeclared_key_is_retried_until_the_move_ends(
    cluster: LocalCluster, client: ClusterPipelinedRedis
) -> None:
    ports = [n.port for n in cluster.nodes]
    declared, undeclared = flight_key(9, "d"), flight_key(9, "1A")
    slot = key_slot(declared.encode())
    source = await owner_port(cluster, declared)
    target = next(p for p in ports if p != source)
    await client.execute("SET", declared, "x")
    await client.execute("SET", undeclared, "held")
    ids = {p: (await node_command(p, "CLUSTER", "MYID")).decode() for p in ports}
    await node_command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    await node_command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    await node_command(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", undeclared)
    # As hold_best reads seat keys: derived from the declared key's tag, not declared.
    script = "return redis.call('GET', string.sub(KEYS[1], 1, -2) .. '1A')"
    call: asyncio.Future[Any] = asyncio.ensure_future(client.execute("EVAL", script, 1, declared))
    await asyncio.sleep(0.06)
    assert not call.done()  # refused ("non local key") and retried meanwhile
    await migrate_slot(ports, slot, target)
    assert await asyncio.wait_for(call, 5) == b"held"
    assert client.retried > 0
