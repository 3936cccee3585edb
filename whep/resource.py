"""WHEP endpoint and session resources (draft-ietf-wish-whep §4, mirroring RFC 9725): POST offers, OPTIONS, PATCH trickle, DELETE."""

from __future__ import annotations

from typing import Optional

from litestar import Request, route
from litestar.params import FromPath
from litestar.response.base import ASGIResponse

from gateway.auth import stream_tokens
from gateway.http_resources import create_session, delete_session, options, patch_session, session_options
from gateway.http_responses import problem, read_body, respond
from gateway.relay import RELAY_HEADER
from gateway.sessions import SessionManager
from whep.events import create_event_stream, delete_event_stream, event_stream_response, extension_options
from whep.layer_request import LAYER_OK_STATUS, parse_layer_request
from whep.session import ViewerSession


@route("/whep/{stream:str}", http_method=["POST", "OPTIONS"], status_code=201)
async def whep_endpoint(request: Request, stream: FromPath[str]) -> ASGIResponse:
    if request.method == "OPTIONS":
        return options(request)
    token = stream_tokens(request.app.state.manager.config, stream).play_token
    relay_for = request.headers.get(RELAY_HEADER)
    if relay_for is None:
        return await create_session(request, stream, token, SessionManager.play)

    async def play_for_relay(manager: SessionManager, name: str, sdp: str) -> ViewerSession:
        session = await manager.play(name, sdp)
        session.relay_for = relay_for[:100]  # another node's or worker's pull of the stream, shown in the viewer list
        return session

    return await create_session(request, stream, token, play_for_relay)


@route("/whep/{stream:str}/{session_id:str}", http_method=["PATCH", "DELETE", "OPTIONS"], status_code=200)
async def whep_session(request: Request, stream: FromPath[str], session_id: FromPath[str]) -> ASGIResponse:
    if request.method == "OPTIONS":
        return session_options(request)
    if request.method == "PATCH":
        return await patch_session(request, "viewer", stream, session_id)
    return await delete_session(request, "viewer", stream, session_id)


whep_handlers = [whep_endpoint, whep_session]


# ---- WHEP extensions (draft-ietf-wish-whep-02 §4.9): server-sent events and layer selection ----------------
def _viewer(request: Request, stream: str, session_id: str) -> Optional[ViewerSession]:
    session = request.app.state.manager.find("viewer", stream, session_id)
    return session if isinstance(session, ViewerSession) else None


def _no_session(request: Request) -> ASGIResponse:
    return problem(request.app.state.manager.config, 404, "Not Found", "no such session")


@route("/whep/{stream:str}/{session_id:str}/sse", http_method=["POST", "OPTIONS"], status_code=201)
async def whep_sse(request: Request, stream: FromPath[str], session_id: FromPath[str]) -> ASGIResponse:
    if request.method == "OPTIONS":
        return extension_options(request, "POST, OPTIONS")
    session = _viewer(request, stream, session_id)
    if session is None:
        return _no_session(request)
    return await create_event_stream(request, session.events, session.location)


@route("/whep/{stream:str}/{session_id:str}/sse/{event_stream:str}", http_method=["GET", "DELETE", "OPTIONS"], status_code=200)
async def whep_event_stream(
    request: Request, stream: FromPath[str], session_id: FromPath[str], event_stream: FromPath[str]
) -> ASGIResponse:
    if request.method == "OPTIONS":
        return extension_options(request, "GET, DELETE, OPTIONS")
    session = _viewer(request, stream, session_id)
    if session is None:
        return _no_session(request)
    if request.method == "DELETE":
        return delete_event_stream(request, session.events, event_stream)
    return event_stream_response(session.events, event_stream, request.app.state.manager.config)


@route("/whep/{stream:str}/{session_id:str}/layer", http_method=["POST", "OPTIONS"], status_code=200)
async def whep_layer(request: Request, stream: FromPath[str], session_id: FromPath[str]) -> ASGIResponse:
    """§4.9.2: pin a layer ({"rid": "h"}, {"spatialLayerId": 0}, {"maxWidth": 640, ...}); {} = automatic."""
    if request.method == "OPTIONS":
        return extension_options(request, "POST, OPTIONS")
    config = request.app.state.manager.config
    session = _viewer(request, stream, session_id)
    if session is None:
        return _no_session(request)
    try:
        session.pin(parse_layer_request(await read_body(request)))
    except ValueError as exc:
        return problem(config, 400, "Bad Request", str(exc))
    return respond(config, LAYER_OK_STATUS)


whep_handlers += [whep_sse, whep_event_stream, whep_layer]
