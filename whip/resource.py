"""WHIP endpoint and session resources (RFC 9725 §4): POST offers, OPTIONS, PATCH trickle, DELETE."""

from __future__ import annotations

from litestar import Request, route
from litestar.params import FromPath
from litestar.response.base import ASGIResponse

from gateway.auth import bearer_token, stream_tokens
from gateway.http_resources import create_session, delete_session, options, patch_session, session_options
from gateway.sessions import SessionManager


@route("/whip/{stream:str}", http_method=["POST", "OPTIONS"], status_code=201)
async def whip_endpoint(request: Request, stream: FromPath[str]) -> ASGIResponse:
    if request.method == "OPTIONS":
        return options(request)
    token = stream_tokens(request.app.state.manager.config, stream).publish_token
    presented = bearer_token(request.headers.get("authorization"))  # for a takeover (whip.takeover)

    def publish(manager: SessionManager, name: str, sdp: str):
        return manager.publish(name, sdp, token=presented)

    return await create_session(request, stream, token, publish)


@route("/whip/{stream:str}/{session_id:str}", http_method=["PATCH", "DELETE", "OPTIONS"], status_code=200)
async def whip_session(request: Request, stream: FromPath[str], session_id: FromPath[str]) -> ASGIResponse:
    if request.method == "OPTIONS":
        return session_options(request)
    if request.method == "PATCH":
        return await patch_session(request, "publisher", stream, session_id)
    return await delete_session(request, "publisher", stream, session_id)


whip_handlers = [whip_endpoint, whip_session]
