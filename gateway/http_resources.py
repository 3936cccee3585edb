"""HTTP machinery the WHIP and WHEP resources share: they are mirror images (RFC 9725 §4, WHEP draft §4).

whip/resource.py and whep/resource.py declare the routes; this module does the work: content negotiation,
Bearer auth, problem details (RFC 9457), CORS, trickle-ICE PATCH (RFC 8840) and DELETE.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Optional

from litestar import Request
from litestar.response.base import ASGIResponse

from gateway import metrics
from gateway.auth import bearer_token_matches
from gateway.config import Config
from gateway.http_responses import (
    SDP,
    STREAM_NAME,
    TRICKLE,
    media_type,
    preflight_response,
    problem,
    read_body,
    respond,
)
from gateway.ice_servers import ice_server_links
from gateway.peer_session import PeerSession
from gateway.sdp import OfferRejected, SdpError
from gateway.sessions import OverCapacity, SessionManager, StreamBusy, StreamElsewhere, StreamNotLive
from gateway.transport import PortRangeExhausted

log = logging.getLogger(__name__)

OVER_CAPACITY_RETRY_AFTER = 5  # seconds (RFC 9110 §10.2.3) a publisher refused for capacity waits before retrying

def check_token(config: Config, request: Request, expected: Optional[str]) -> Optional[ASGIResponse]:
    """RFC 9725 §4.5: Bearer tokens (RFC 6750); a stream without a configured token needs none."""
    if bearer_token_matches(request.headers.get("authorization"), expected):
        return None
    return problem(
        config,
        401,
        "Unauthorized",
        "a valid Bearer token is required for this stream",
        [("WWW-Authenticate", 'Bearer realm="whipgate"')],
    )


async def create_session(
    request: Request,
    stream: str,
    token: Optional[str],
    start: Callable[[SessionManager, str, str], Awaitable[PeerSession]],
) -> ASGIResponse:
    """POST an offer: 201 with the answer, Location, ETag and ice-server Links (RFC 9725 §4.2, §4.6)."""
    manager: SessionManager = request.app.state.manager
    config = manager.config
    if not STREAM_NAME.match(stream):
        return problem(config, 404, "Not Found", "stream names are 1-128 letters, digits, '.', '_' or '-'")
    denied = check_token(config, request, token)
    if denied is not None:
        return denied
    if media_type(request) != SDP:
        return problem(config, 415, "Unsupported Media Type", f"the offer must be sent as {SDP}", [("Accept-Post", SDP)])
    try:
        text = (await read_body(request)).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        return problem(config, 400, "Bad Request", f"unreadable offer: {exc}")
    try:
        session = await start(manager, stream, text)
    except SdpError as exc:
        return problem(config, 400, "Bad Request", str(exc))
    except OfferRejected as exc:
        return problem(config, 422, "Unprocessable Content", str(exc))
    except StreamBusy:
        return problem(config, 409, "Conflict", f"stream {stream!r} already has a live publisher")
    except StreamElsewhere as moved:
        # RFC 9725 §4.5: 307 keeps the method and body, so the client re-POSTs its offer to the owner.
        return respond(config, 307, headers=[("Location", moved.url)])
    except OverCapacity as full:
        if full.url is not None:  # RFC 9725 §4.5 load balancing: 307 to another node, same method and body
            return respond(config, 307, headers=[("Location", full.url)])
        return problem(
            config,
            503,
            "Service Unavailable",
            "this gateway has as many publishers as it takes (cluster.max_publishers)",
            [("Retry-After", str(OVER_CAPACITY_RETRY_AFTER))],
        )
    except StreamNotLive:
        return problem(
            config,
            409,
            "Conflict",
            f"stream {stream!r} has no publisher yet",
            [("Retry-After", str(config.whep_retry_after))],
        )
    except PortRangeExhausted as exc:
        log.error("session refused: %s", exc)
        return problem(config, 503, "Service Unavailable",
                       "no free UDP port for this session: every port of rtc.udp_port_min..udp_port_max is in use",
                       [("Retry-After", "5")])
    except OSError as exc:
        log.error("cannot open ICE sockets: %s", exc)
        return problem(config, 503, "Service Unavailable", "the gateway cannot open media sockets", [("Retry-After", "5")])
    headers = [("Location", session.location), ("ETag", session.etag)]
    headers += [("Link", link) for link in ice_server_links(config.ice_servers)]
    headers += session.extension_links()
    return respond(config, 201, session.answer_sdp().encode(), SDP, headers)


def options(request: Request) -> ASGIResponse:
    """RFC 9725 §4.2 / Fetch CORS: Accept-Post for OPTIONS; preflights get the allowed methods and headers."""
    return preflight_response(request.app.state.manager.config, "POST, OPTIONS", [("Accept-Post", SDP)])


def session_options(request: Request) -> ASGIResponse:
    return preflight_response(request.app.state.manager.config, "PATCH, DELETE, OPTIONS", [("Accept-Patch", TRICKLE)])


def find_session(request: Request, kind: str, stream: str, session_id: str) -> tuple[Optional[PeerSession], Config]:
    manager: SessionManager = request.app.state.manager
    return manager.find(kind, stream, session_id), manager.config


async def patch_session(request: Request, kind: str, stream: str, session_id: str) -> ASGIResponse:
    """Trickle ICE (RFC 8840 §4.4, RFC 9725 §4.3.1). ICE restarts (§4.3.2) are not supported: 422."""
    session, config = find_session(request, kind, stream, session_id)
    if session is None:
        return problem(config, 404, "Not Found", "no such session")
    if media_type(request) != TRICKLE:
        return problem(config, 415, "Unsupported Media Type", f"PATCH bodies must be {TRICKLE}", [("Accept-Patch", TRICKLE)])
    if_match = request.headers.get("if-match")
    if if_match is not None and if_match.strip() != "*" and if_match.strip() != session.etag:
        return problem(config, 412, "Precondition Failed", "If-Match does not match the session's ETag")
    try:
        text = (await read_body(request)).decode("utf-8")
        fragment = parse_sdpfrag(text)
    except (ValueError, UnicodeDecodeError) as exc:
        metrics.count_drop("trickle_malformed")
        return problem(config, 400, "Bad Request", f"malformed trickle-ice-sdpfrag: {exc}")
    ufrag, pwd = fragment["ice-ufrag"], fragment["ice-pwd"]
    if (ufrag and ufrag != session.offer.ice_ufrag) or (pwd and pwd != session.offer.ice_pwd):
        return problem(
            config,
            422,
            "Unprocessable Content",
            "ICE restart is not supported; start a new session (POST) instead",
        )
    try:
        for candidate in fragment["candidates"]:
            await session.transport.add_remote_candidate(candidate)
        if fragment["end"]:
            await session.transport.end_of_candidates()
    except Exception as exc:  # aiortc's candidate parser raises assorted exceptions on garbage
        metrics.count_drop("trickle_malformed")
        return problem(config, 400, "Bad Request", f"malformed candidate: {type(exc).__name__} {exc}".strip())
    return respond(config, 204)


def parse_sdpfrag(text: str) -> dict:
    """The parts of an RFC 8840 §9 SDP fragment we use; ValueError when it is not an SDP fragment."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines:
        raise ValueError("empty fragment")
    out: dict = {"ice-ufrag": None, "ice-pwd": None, "candidates": [], "end": False}
    for line in lines:
        if len(line) < 2 or line[1] != "=" or line[0] not in "amc":
            raise ValueError(f"not an SDP fragment line: {line[:40]!r}")
        if line.startswith("a=ice-ufrag:"):
            out["ice-ufrag"] = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            out["ice-pwd"] = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            if len(line.split()) < 8:
                raise ValueError(f"candidate line too short: {line[:60]!r}")
            out["candidates"].append(line[2:])
        elif line == "a=end-of-candidates":
            out["end"] = True
    return out


async def delete_session(request: Request, kind: str, stream: str, session_id: str) -> ASGIResponse:
    """RFC 9725 §4.2: DELETE ends the session; closing ICE revokes consent (RFC 7675 §5.2)."""
    session, config = find_session(request, kind, stream, session_id)
    if session is None:
        return problem(config, 404, "Not Found", "no such session")
    await request.app.state.manager.end(session, "DELETE by the client")
    return respond(config, 200)
