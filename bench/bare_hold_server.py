"""The middle rung of the HTTP scenario: parse the JSON body, run holdsvc's hold script through
its pipelining client, answer 201 (409 when taken). No validation, no SQL, no metrics, no
booking record: what perf-anchors.md measured as "hold through the auto-pipelining client".

Between the no-op and holdsvc it separates what the Redis hold costs over HTTP from what
holdsvc's other duties (the durable SQL record, validation, the booking view) cost.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from holdsvc import Held, HoldMeta, HoldStore, Taken, connect_hold_store

# Its own flights, so its holds never meet holdsvc's in the same Redis.
FLIGHT_OFFSET = 1_000_000
TTL_MS = 600_000
STORE = web.AppKey("store", HoldStore)
_ids = itertools.count()
# What the service's hold script writes in a booking's record, so the rung costs the same.
META = HoldMeta("bench", "10.00", "INR")


async def hold(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    booking_id = f"bare{next(_ids)}"
    result = await request.app[STORE].hold(
        FLIGHT_OFFSET + body["flight_id"], body["seats"], booking_id, TTL_MS, META
    )
    if isinstance(result, Held):
        return web.Response(
            body=orjson.dumps(
                {"id": booking_id, "state": "SEAT_HELD", "seats": result.seats,
                 "hold_expires_at": result.deadline_ms}
            ),
            status=201,
            content_type="application/json",
        )  # fmt: skip
    seats = result.seats if isinstance(result, Taken) else []
    return web.Response(
        body=orjson.dumps({"error": "Seats not available", "seats": seats}),
        status=409,
        content_type="application/json",
    )


def main() -> None:
    port, url, flights = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    async def store(app: web.Application) -> AsyncIterator[None]:
        holds = await connect_hold_store(url)
        run_id = await holds.server_run_id()
        # The flights' markers: the hold script refuses a flight Redis has not restored.
        await asyncio.gather(
            *(holds.restore(FLIGHT_OFFSET + f, [], run_id) for f in range(1, flights + 1))
        )
        app[STORE] = holds
        yield
        await holds.close()

    app = web.Application()
    app.cleanup_ctx.append(store)
    app.router.add_post("/api/bookings/", hold)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
