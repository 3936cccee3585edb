"""Bearer-token checks for WHIP publishers and WHEP viewers (RFC 9725 §4.7, RFC 6750)."""

from __future__ import annotations

import hmac

from gateway.config import Config, StreamAuth

__all__ = ["bearer_token", "bearer_token_matches", "stream_tokens"]

_OPEN_STREAM = StreamAuth()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an RFC 6750 §2.1 `Authorization: Bearer <token>` header value, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.lstrip(" ")
    return token if scheme.lower() == "bearer" and token else None


def bearer_token_matches(authorization: str | None, expected: str | None) -> bool:
    """Whether an Authorization header value carries the expected Bearer token.

    `expected` None means the stream needs no token: anything (or nothing) matches.
    """
    if expected is None:
        return True
    if authorization is None:
        return False
    # RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive (RFC 9110 §11.1).
    scheme, _, token = authorization.strip().partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Constant-time comparison so response timing does not reveal how much of the token was right. Compare bytes:
    # compare_digest rejects str arguments holding non-ASCII characters.
    return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def stream_tokens(config: Config, stream: str) -> StreamAuth:
    """The tokens configured for a stream; a stream without a [streams.NAME] table needs none."""
    return config.streams.get(stream, _OPEN_STREAM)
