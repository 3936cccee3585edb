"""`Link: <url>; rel="ice-server"` header values advertising STUN/TURN servers (RFC 9725 §4.6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence

from gateway.config import IceServer

__all__ = ["ice_server_links", "time_limited_credentials"]

# The user id part of coturn REST-API usernames ("<expiry>:<user>").
TURN_REST_USER = "whipgate"


def ice_server_links(servers: Sequence[IceServer], now: float | None = None) -> list[str]:
    """One Link header value per URL of every configured server, in configuration order.

    Servers configured with a shared `secret` get fresh time-limited credentials valid until now + ttl
    (`now` defaults to the current Unix time).
    """
    if now is None:
        now = time.time()
    links: list[str] = []
    for server in servers:
        username, credential = server.username, server.credential
        if server.secret is not None:
            username, credential = time_limited_credentials(server.secret, server.ttl, now)
        for url in server.urls:
            links.append(_link_value(url, username, credential))
    return links


def time_limited_credentials(secret: str, ttl: int, now: float) -> tuple[str, str]:
    """coturn "use-auth-secret" (TURN REST API) credentials.

    username = "<expiry unix time>:<user id>", credential = base64(HMAC-SHA1(secret, username)); the TURN
    server recomputes the HMAC with the same secret and refuses the username once its expiry has passed.
    """
    username = f"{int(now) + ttl}:{TURN_REST_USER}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _link_value(url: str, username: str | None, credential: str | None) -> str:
    # RFC 9725 §4.6: the username and credential link-params mirror RTCIceServer's fields, with
    # credential-type "password" (the only type left in W3C WebRTC 1.0).
    value = f'<{url}>; rel="ice-server"'
    if username is not None and credential is not None:
        value += (
            f"; username={_quoted_string(username)}"
            f"; credential={_quoted_string(credential)}"
            '; credential-type="password"'
        )
    return value


def _quoted_string(text: str) -> str:
    # RFC 8288 §3 link-param values use RFC 9110 §5.6.4 quoted-string: backslash-escape '"' and '\'.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
