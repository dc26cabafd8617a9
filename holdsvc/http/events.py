"""The live seat map as Server-Sent Events: ``GET /api/flights/{id}/seats/events``.

A ``snapshot`` event first (every seat, with the stream position as its ``id``), then one
``seat`` event a change, each with its position as ``id``; a client that reconnects with
``Last-Event-ID`` gets the changes after it, or a fresh snapshot when the stream no longer
has it. What the listener's domain side guarantees is in holdsvc/domain/seatfeed.py; this
only writes it out.
"""

from __future__ import annotations

import functools

import orjson
from aiohttp import web

from holdsvc.appkeys import REQUEST_ID, SEAT_FEEDS, SETTINGS
from holdsvc.domain.seatfeed import SeatChange, SeatEvent, SeatSnapshot

# How long a browser's EventSource waits before it reconnects, in ms.
_RETRY = b"retry: 1000\n\n"
_KEEPALIVE = b": keep-alive\n\n"


@functools.lru_cache(maxsize=16384)
def _change(event: SeatChange) -> bytes:
    # One encoding for every listener of the flight: the feed hands all of them the same
    # objects.
    data = orjson.dumps({"seat": event.seat, "status": event.status})
    return b"event: seat\nid: " + event.event_id.encode() + b"\ndata: " + data + b"\n\n"


def _snapshot(event: SeatSnapshot) -> bytes:
    data = orjson.dumps(
        {
            "flight_id": event.flight_id,
            "position": event.event_id,
            "seats": [{"seat": seat, "status": status} for seat, status in event.seats],
        }
    )
    return b"event: snapshot\nid: " + event.event_id.encode() + b"\ndata: " + data + b"\n\n"


def encode(batch: list[SeatEvent]) -> bytes:
    if not batch:
        return _KEEPALIVE
    return b"".join(_change(e) if isinstance(e, SeatChange) else _snapshot(e) for e in batch)


async def stream_seats(request: web.Request, flight_id: int) -> web.StreamResponse:
    """Opened before anything is written: an unknown flight is a 404 JSON answer, an
    unavailable Redis a 503, like any other request's."""

    def closed() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    listener = await request.app[SEAT_FEEDS].open(
        flight_id, request.headers.get("Last-Event-ID"), closed
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            # nginx and the like would otherwise hold events back to fill a buffer.
            "X-Accel-Buffering": "no",
            "X-Request-ID": request[REQUEST_ID],
        }
    )
    try:
        await response.prepare(request)
        await response.write(_RETRY)
        async for batch in listener.batches(request.app[SETTINGS].sse_keepalive):
            await response.write(encode(batch))
    except ConnectionError:
        # The client went away (aiohttp raises a ConnectionResetError subclass): nothing is
        # left to answer.
        pass
    finally:
        listener.close()
    return response
