"""What WHIP publisher and WHEP viewer sessions share: identity, ETag, transport, one-shot teardown."""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Optional

from gateway.config import Config
from gateway.sdp import SETUP_ANSWER, AnsweredMedia, Offer, write_answer
from gateway.transport import PeerTransport, host_addresses

if TYPE_CHECKING:
    from gateway.sessions import SessionManager

log = logging.getLogger(__name__)


class PeerSession:
    kind = "peer"  # "publisher" or "viewer"

    def __init__(self, manager: "SessionManager", stream_name: str, offer: Offer, config: Config) -> None:
        self.manager = manager
        self.config = config
        self.stream_name = stream_name
        self.offer = offer
        # RFC 9725 §4.1 / §6: session URLs must be unguessable; 128 random bits.
        # A worker's ids start with "w<index>." (gateway/workers.py): the front routes session requests by it.
        self.id = getattr(manager, "session_id_prefix", "") + secrets.token_urlsafe(16)
        self.etag = '"' + secrets.token_hex(12) + '"'  # strong entity tag (RFC 9110 §8.8.3)
        self.created = time.time()
        self.connected_at: Optional[float] = None
        self.ended = False
        self.end_reason: Optional[str] = None
        self.answer_media: list[AnsweredMedia] = []
        self.transport = PeerTransport(
            addresses=host_addresses(config.rtc.ice_addresses),
            announced_ip=config.rtc.announced_ip,
            consent_interval=config.rtc.consent_interval,
            consent_failures=config.rtc.consent_failures,
            udp_port=config.rtc.udp_port,
            port_range=(config.rtc.udp_port_min, config.rtc.udp_port_max) if config.rtc.udp_port_min else None,
            receive_buffer=config.rtc.udp_receive_buffer,
            on_rtp=self.on_rtp,
            on_rtcp=self.on_rtcp,
            on_connected=self._connected,
            on_closed=self._transport_closed,
        )

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def location(self) -> str:
        prefix = "whip" if self.kind == "publisher" else "whep"
        return f"/{prefix}/{self.stream_name}/{self.id}"

    async def prepare(self) -> None:
        await self.transport.gather()

    def answer_sdp(self) -> str:
        candidates = self.transport.local_candidates()
        first = candidates[0]
        return write_answer(
            self.offer,
            self.answer_media,
            ice_ufrag=self.transport.ice_ufrag,
            ice_pwd=self.transport.ice_pwd,
            fingerprint=self.transport.fingerprint,
            setup=SETUP_ANSWER.get(self.offer.setup, "passive"),
            candidates=[c.sdp() for c in candidates],
            address=first.ip,
            port=first.port,
        )

    def start_transport(self) -> None:
        # We answer passive (DTLS server) unless the offerer insisted on being passive itself (FFmpeg).
        role = "client" if SETUP_ANSWER.get(self.offer.setup) == "active" else "server"
        self.transport.start(
            remote_ufrag=self.offer.ice_ufrag,
            remote_pwd=self.offer.ice_pwd,
            fingerprints=self.offer.fingerprints,
            dtls_role=role,
            candidates=self.offer.candidates,
            end_of_candidates=self.offer.end_of_candidates,
            timeout=self.config.rtc.ice_timeout,
        )

    def _connected(self) -> None:
        self.connected_at = time.time()
        log.info("%s %s of %s connected", self.kind, self.id, self.stream_name)
        self.on_connected()

    def _transport_closed(self, reason: str) -> None:
        if not self.ended:
            self.manager.spawn(self.manager.end(self, reason))

    # ---- for subclasses ----------------------------------------------------------------------------
    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        raise NotImplementedError

    def on_rtcp(self, data: bytes) -> None:
        raise NotImplementedError

    def on_connected(self) -> None:
        pass

    def extension_links(self) -> list[tuple[str, str]]:
        """Link headers for protocol extensions in the 201 (RFC 9725 §4.9); none by default."""
        return []

    async def close(self, reason: str) -> None:
        """Release everything; called once by SessionManager.end."""
        self.ended = True
        self.end_reason = reason
        await self.transport.close(reason)

    def info(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "stream": self.stream_name,
            "connected": self.transport.connected,
            "created": self.created,
        }
