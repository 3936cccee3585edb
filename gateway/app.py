"""The Litestar application: WHIP and WHEP resources, pages, health, metrics and a small JSON API."""

from __future__ import annotations

import logging
from typing import Optional

from litestar import Litestar, Request, get
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response.base import ASGIResponse
from litestar.types import Scope
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import aiortc_adapter
from gateway.cluster import make_registry
from gateway.config import Config
from gateway.pages import pages_router
from gateway.sessions import SessionManager
from gateway.workers import WorkerRole
from whep.resource import whep_handlers
from whip.resource import whip_handlers

log = logging.getLogger(__name__)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict:
    return {"status": "ok"}


@get("/metrics", sync_to_thread=False)
def metrics_endpoint() -> ASGIResponse:
    return ASGIResponse(body=generate_latest(), media_type=CONTENT_TYPE_LATEST)


@get("/readyz", sync_to_thread=False)
def readyz(request: Request) -> ASGIResponse:
    """Readiness: 503 "degraded" while the registry (Redis) is unreachable; local sessions keep working."""
    import json

    registry = request.app.state.manager.registry
    healthy = registry is None or registry.healthy
    body = {"status": "ready" if healthy else "degraded", "registry": "ok" if healthy else "unreachable"}
    return ASGIResponse(body=json.dumps(body).encode(), status_code=200 if healthy else 503, media_type="application/json")


@get("/api/streams", sync_to_thread=False)
def list_streams(request: Request) -> list[dict]:
    return request.app.state.manager.stream_list()


@get("/api/streams/{name:str}/viewers", sync_to_thread=False)
def list_viewers(request: Request, name: FromPath[str]) -> list[dict]:
    """Each viewer of a stream on this node: its tracks with layer, reason, bandwidth estimate and counters."""
    return request.app.state.manager.viewer_list(name)


def create_app(config: Config, worker: Optional[WorkerRole] = None) -> Litestar:
    """The gateway; `worker`: this process is one of the front's workers (gateway/workers.py)."""
    manager = SessionManager(config, worker=worker)
    manager.registry = make_registry(config, load=lambda: len(manager.sessions), on_stream_lost=manager.stream_lost)

    async def startup() -> None:
        aiortc_adapter.install_shims()
        await manager.registry.start()
        if worker is not None:
            log.info("whipgate worker %d of %d listening on %s:%d (egress path: %s)", worker.index, len(worker.urls),
                     config.http.host, config.http.port, aiortc_adapter.EGRESS_PATH)
        else:
            log.info("whipgate listening on %s:%d (egress path: %s)", config.http.host, config.http.port,
                     aiortc_adapter.EGRESS_PATH)

    async def shutdown() -> None:
        await manager.close_all()
        await manager.registry.close()

    async def log_unexpected(exception: Exception, scope: Scope) -> None:
        """A 500 must say why in the log: with `logging_config=None` Litestar logs no exception itself."""
        if not isinstance(exception, HTTPException):
            log.error("%s %s failed", scope.get("method", ""), scope.get("path", ""), exc_info=exception)

    app = Litestar(
        route_handlers=[*whip_handlers, *whep_handlers, healthz, readyz, metrics_endpoint, list_streams, list_viewers, pages_router],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=None,
        logging_config=None,  # the CLI configured logging ([log] level); Litestar would reset it to INFO
        after_exception=[log_unexpected],
    )
    app.state.manager = manager
    return app
