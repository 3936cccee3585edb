"""HTTP response helpers shared by every resource: CORS, problem details (RFC 9457), bounded bodies.

Kept free of session imports so the WHEP extension modules can use it without an import cycle.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Optional

from litestar import Request
from litestar.response.base import ASGIResponse

from gateway import metrics
from gateway.config import Config

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
EXPOSED = "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After, WWW-Authenticate"
STREAM_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_BODY = 64 * 1024

Headers = list[tuple[str, str]]


def cors(config: Config) -> Headers:
    return [("Access-Control-Allow-Origin", config.http.cors_allow_origin), ("Access-Control-Expose-Headers", EXPOSED)]


def respond(config: Config, status: int, body: bytes = b"", media_type: Optional[str] = None, headers: Iterable[tuple[str, str]] = ()) -> ASGIResponse:
    all_headers = cors(config) + list(headers)
    return ASGIResponse(body=body, status_code=status, media_type=media_type, headers=all_headers)


def problem(config: Config, status: int, title: str, detail: str, headers: Iterable[tuple[str, str]] = ()) -> ASGIResponse:
    """RFC 9457 problem details; RFC 9725 §4.2 lets clients fall back to the status class."""
    metrics.HTTP_REJECTED.labels(str(status)).inc()
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    return respond(config, status, body, "application/problem+json", headers)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ValueError(f"body larger than {MAX_BODY} bytes")
    return body


def preflight_response(config: Config, methods: str, extra: Iterable[tuple[str, str]] = ()) -> ASGIResponse:
    """204 for OPTIONS and CORS preflights: the allowed methods and request headers, plus e.g. Accept-Post."""
    headers = [
        *extra,
        ("Access-Control-Allow-Methods", methods),
        ("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match"),
        ("Access-Control-Max-Age", "86400"),
    ]
    return respond(config, 204, headers=headers)
