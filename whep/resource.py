"""WHEP endpoint and session resources (draft-ietf-wish-whep §4, mirroring RFC 9725): POST offers, OPTIONS, PATCH trickle, DELETE."""

from __future__ import annotations

from litestar import Request, route
from litestar.response.base import ASGIResponse

from gateway.auth import stream_tokens
from gateway.http_resources import create_session, delete_session, options, patch_session, session_options
from gateway.sessions import SessionManager


@route("/whep/{stream:str}", http_method=["POST", "OPTIONS"], status_code=201)
async def whep_endpoint(request: Request, stream: str) -> ASGIResponse:
    if request.method == "OPTIONS":
        return options(request)
    token = stream_tokens(request.app.state.manager.config, stream).play_token
    return await create_session(request, stream, token, SessionManager.play)


@route("/whep/{stream:str}/{session_id:str}", http_method=["PATCH", "DELETE", "OPTIONS"], status_code=200)
async def whep_session(request: Request, stream: str, session_id: str) -> ASGIResponse:
    if request.method == "OPTIONS":
        return session_options(request)
    if request.method == "PATCH":
        return await patch_session(request, "viewer", stream, session_id)
    return await delete_session(request, "viewer", stream, session_id)


whep_handlers = [whep_endpoint, whep_session]
