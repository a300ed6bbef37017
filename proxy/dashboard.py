"""The live spend dashboard's static page.

The page (``/dashboard``, files in ``proxy/static``) holds no data and needs no key to load; it asks for a key
once and reads only the finance and ops API (``/v1/spend/report|teams|budgets|forecast|experiments|value|...``,
``/v1/alerts``, ``/v1/routing/evidence``, and for an admin ``/v1/upstreams`` and ``/v1/routing/models/{team}``), so
every number it shows is the API's, to the nano-dollar: money arrives as exact decimal strings and anything derived
is computed in integer nano-dollars (BigInt).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError

_STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# Nothing outside the proxy may be loaded or contacted by the page.
_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
}


@cache
def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


async def page(request: Request) -> Response:
    return Response(_read("dashboard.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        raise TiergateError("not_found", f"no such dashboard file: {name!r}")
    return Response(_read(name), media_type=_ASSETS[name], headers=_HEADERS)
