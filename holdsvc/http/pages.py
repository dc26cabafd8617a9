"""The seat map page, served by the app itself: ``/`` lists the flights, ``/flights/{id}``
draws one cabin, live from its seat stream. One HTML file, plain JavaScript and CSS shipped
in the package: no CDN, no build step. The files hold no data, so they need no API key; the
page asks for one and sends it with every API call."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
_PAGE = (STATIC / "page.html").read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8")


def add_pages(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/flights/{flight_id:[0-9]{1,15}}", page)
    app.router.add_static("/static", STATIC)
