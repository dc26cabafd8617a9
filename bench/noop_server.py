"""The do-nothing endpoint the HTTP scenario compares holdsvc with: parse the JSON body,
answer 201 with a small JSON object, served by aiohttp exactly as holdsvc is."""

from __future__ import annotations

import sys

import orjson
from aiohttp import web


async def hold(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        body=orjson.dumps({"id": "noop", "state": "SEAT_HELD", "seats": body.get("seats")}),
        status=201,
        content_type="application/json",
    )


def main() -> None:
    app = web.Application()
    app.router.add_post("/api/bookings/", hold)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
