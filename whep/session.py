"""A WHEP viewer session: the DownTracks one viewer receives, and that viewer's RTCP feedback.

Packet path (egress half): PublishedTrack.on_packet -> DownTrack.forward (rewrite in place) ->
PeerTransport.send_rtp (SRTP protect + sendto on the nominated pair). Viewer RTCP comes back here:
NACK -> retransmit from the track's history, PLI/FIR -> rate-limited keyframe request upstream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.config import Config
from gateway.peer_session import PeerSession
from gateway.rtcp import (
    FullIntraRequest,
    GenericNack,
    PictureLossIndication,
    ReceiverReport,
    RtcpError,
    SenderReport,
    parse_compound,
)
from gateway.sdp import Offer
from gateway.sfu.down_track import DownTrack
from gateway.sfu.stream import Stream
from whep.offer_answer import negotiate_play

if TYPE_CHECKING:
    from gateway.sessions import SessionManager

log = logging.getLogger(__name__)


class ViewerSession(PeerSession):
    kind = "viewer"

    def __init__(self, manager: "SessionManager", stream: Stream, offer: Offer, config: Config) -> None:
        super().__init__(manager, stream.name, offer, config)
        self.stream = stream
        self.cname = f"whipgate-{self.id[:8]}"
        plan = negotiate_play(offer, stream, self.cname)
        self.answer_media = plan.answer_media
        self.down_tracks = [
            DownTrack(
                p.source,
                p.profile,
                ssrc=p.ssrc,
                rtx_ssrc=p.rtx_ssrc,
                cname=self.cname,
                send_rtp=self.transport.send_rtp,
                send_rtcp=self.transport.send_rtcp,
            )
            for p in plan.down_tracks
        ]
        self._by_ssrc: dict[int, DownTrack] = {}
        for down in self.down_tracks:
            self._by_ssrc[down.ssrc] = down
            if down.rtx_ssrc is not None:
                self._by_ssrc[down.rtx_ssrc] = down

    def on_connected(self) -> None:
        for down in self.down_tracks:
            down.start()

    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        metrics.count_drop("rtp_from_viewer")  # viewers answer recvonly; nothing to forward

    def on_rtcp(self, data: bytes) -> None:
        try:
            packets = parse_compound(data)
        except RtcpError:
            metrics.count_drop("rtcp_malformed")
            return
        by_ssrc = self._by_ssrc
        for packet in packets:
            if isinstance(packet, GenericNack):
                down = by_ssrc.get(packet.media_ssrc)
                if down is not None:
                    down.on_nack(packet.lost)
            elif isinstance(packet, PictureLossIndication):
                down = by_ssrc.get(packet.media_ssrc)
                if down is not None:
                    down.on_keyframe_request()
            elif isinstance(packet, FullIntraRequest):
                for ssrc, _ in packet.entries:
                    down = by_ssrc.get(ssrc)
                    if down is not None:
                        down.on_keyframe_request()
            elif isinstance(packet, (ReceiverReport, SenderReport)):
                for block in packet.reports:
                    down = by_ssrc.get(block.ssrc)
                    if down is not None:
                        down.on_receiver_report(block.fraction_lost, block.jitter)

    async def close(self, reason: str) -> None:
        for down in self.down_tracks:
            down.stop()
        await super().close(reason)

    def info(self) -> dict:
        return super().info() | {"tracks": [d.stats() for d in self.down_tracks]}
