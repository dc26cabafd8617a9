"""A small Server-Sent Events reader over an aiohttp response, for the seat stream's tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientResponse


@dataclass
class Event:
    event: str | None
    id: str | None
    data: Any
    comment: str | None = None

    @property
    def seat(self) -> tuple[str, str]:
        return self.data["seat"], self.data["status"]


class SSE:
    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def _block(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    async def next(self, timeout: float = 5.0, comments: bool = False) -> Event:
        """The next event (comments only when asked for; the retry hint never)."""
        async with asyncio.timeout(timeout):
            while True:
                block = await self._block()
                if "" in block:
                    if comments:
                        return Event(None, None, None, block[""])
                    continue
                if "event" not in block and "data" not in block:
                    continue
                data = orjson.loads(block["data"]) if "data" in block else None
                return Event(block.get("event"), block.get("id"), data)

    async def seats(self, n: int, timeout: float = 5.0) -> list[Event]:
        """The next ``n`` seat events."""
        out: list[Event] = []
        while len(out) < n:
            e = await self.next(timeout)
            assert e.event == "seat", e
            out.append(e)
        return out

    def close(self) -> None:
        self.response.close()
