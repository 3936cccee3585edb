"""Browser pages: an index, a WHIP publish page and a WHEP player, plus their static assets.

The pages are plain HTML/CSS/JS from `gateway/static/` (no build step, no external CDN). They talk to the
gateway only through the public WHIP/WHEP endpoints described in docs/http-contract.md, so they double as a
reference client and as the browser side of tests/test_browser.py.
"""

from __future__ import annotations

import pathlib

from litestar import Response, Router, get
from litestar.enums import MediaType
from litestar.static_files import create_static_files_router

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"

# The pages are tiny and change with the code: let browsers revalidate rather than cache stale copies.
_NO_CACHE = {"Cache-Control": "no-cache"}


def _page(filename: str) -> Response[str]:
    html = (STATIC_DIR / filename).read_text(encoding="utf-8")
    return Response(html, media_type=MediaType.HTML, headers=_NO_CACHE)


@get("/", media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False, name="pages:index")
def index_page() -> Response[str]:
    return _page("index.html")


@get("/publish", media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False, name="pages:publish")
def publish_page() -> Response[str]:
    return _page("publish.html")


@get("/play", media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False, name="pages:play")
def play_page() -> Response[str]:
    return _page("play.html")


static_router = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="static",
    include_in_schema=False,
)

pages_router = Router(path="/", route_handlers=[index_page, publish_page, play_page, static_router])
