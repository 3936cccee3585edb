"""The Litestar application: WHIP and WHEP resources, pages, health, metrics and a small JSON API."""

from __future__ import annotations

import logging

from litestar import Litestar, Request, get
from litestar.response.base import ASGIResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import aiortc_adapter
from gateway.config import Config
from gateway.pages import pages_router
from gateway.sessions import SessionManager
from whep.resource import whep_handlers
from whip.resource import whip_handlers

log = logging.getLogger(__name__)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict:
    return {"status": "ok"}


@get("/metrics", sync_to_thread=False)
def metrics_endpoint() -> ASGIResponse:
    return ASGIResponse(body=generate_latest(), media_type=CONTENT_TYPE_LATEST)


@get("/api/streams", sync_to_thread=False)
def list_streams(request: Request) -> list[dict]:
    return request.app.state.manager.stream_list()


def create_app(config: Config) -> Litestar:
    manager = SessionManager(config)

    async def startup() -> None:
        aiortc_adapter.install_shims()
        log.info("whipgate listening on %s:%d", config.http.host, config.http.port)

    async def shutdown() -> None:
        await manager.close_all()

    app = Litestar(
        route_handlers=[*whip_handlers, *whep_handlers, healthz, metrics_endpoint, list_streams, pages_router],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=None,
    )
    app.state.manager = manager
    return app
