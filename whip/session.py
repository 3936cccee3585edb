"""A WHIP publisher session: demultiplexes the publisher's RTP into its PublishedTracks.

Packet path (ingest half): aioice socket -> RTCDtlsTransport (SRTP unprotect) -> PublisherSession.on_rtp
-> route by SSRC (learned from the offer or by payload type) -> RTX unwrapped (RFC 4588 §4) ->
PublishedTrack.on_packet -> DownTrack.forward for every viewer (see gateway/sfu/).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Optional

from gateway import metrics
from gateway.config import Config
from gateway.peer_session import PeerSession
from gateway.rtcp import Bye, RtcpError, SenderReport, build_receiver_report, build_sdes_cname, parse_compound
from gateway.rtp import RtpError, RtpPacket, parse_rtp
from gateway.sdp import Offer
from gateway.sfu.published_track import NACK_RETRY_INTERVAL, PublishedTrack
from whip.offer_answer import PublishPlan

if TYPE_CHECKING:
    from gateway.sessions import SessionManager

log = logging.getLogger(__name__)

RECEIVER_REPORT_INTERVAL = 1.0


class PublisherSession(PeerSession):
    kind = "publisher"

    def __init__(self, manager: "SessionManager", stream_name: str, offer: Offer, plan: PublishPlan, config: Config) -> None:
        super().__init__(manager, stream_name, offer, config)
        self.answer_media = plan.answer_media
        self.local_ssrc = random.getrandbits(32) or 1
        self.cname = f"whipgate-{self.id[:8]}"
        self.tracks: dict[str, PublishedTrack] = {}
        self._by_ssrc: dict[int, tuple[PublishedTrack, bool]] = {}
        self._by_payload_type: dict[int, tuple[PublishedTrack, bool]] = {}
        for t in plan.tracks:
            track = PublishedTrack(
                kind=t.kind,
                mid=t.mid,
                codec=t.codec,
                rtx_payload_type=t.rtx_payload_type,
                extensions=t.extensions,
                feedback=t.feedback,
                history_size=config.rtc.packet_history,
                keyframe_interval=config.rtc.keyframe_request_interval,
                local_ssrc=self.local_ssrc,
                send_rtcp=self.transport.send_rtcp,
            )
            self.tracks[t.mid] = track
            self._by_payload_type[t.codec.payload_type] = (track, False)
            if t.rtx_payload_type is not None:
                self._by_payload_type[t.rtx_payload_type] = (track, True)
            if t.ssrc is not None:
                track.ssrc = t.ssrc
                self._by_ssrc[t.ssrc] = (track, False)
            if t.rtx_ssrc is not None:
                track.rtx_ssrc = t.rtx_ssrc
                self._by_ssrc[t.rtx_ssrc] = (track, True)
        self._rtcp_task: Optional[asyncio.Task[None]] = None

    # ---- RTP in ------------------------------------------------------------------------------------
    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        try:
            packet = parse_rtp(data)
        except RtpError:
            metrics.count_drop("rtp_malformed")
            return
        route = self._by_ssrc.get(packet.ssrc)
        if route is None:
            route = self._learn_ssrc(packet)
            if route is None:
                metrics.count_drop("rtp_unknown_stream")
                return
        track, is_rtx = route
        if is_rtx:
            packet = self._unwrap_rtx(packet, track)
            if packet is None:
                return
        track.on_packet(packet, time.monotonic())

    def _learn_ssrc(self, packet: RtpPacket) -> Optional[tuple[PublishedTrack, bool]]:
        """An SSRC the offer did not list: its payload type tells the track (unique per BUNDLE, RFC 8843 §9.2)."""
        route = self._by_payload_type.get(packet.payload_type)
        if route is None:
            return None
        track, is_rtx = route
        if is_rtx:
            track.rtx_ssrc = packet.ssrc
        else:
            track.ssrc = packet.ssrc
        self._by_ssrc[packet.ssrc] = route
        return route

    def _unwrap_rtx(self, packet: RtpPacket, track: PublishedTrack) -> Optional[RtpPacket]:
        """RFC 4588 §4: the payload starts with the original sequence number (OSN)."""
        if packet.payload_size < 2 or track.ssrc is None:
            metrics.count_drop("rtx_padding" if packet.payload_size < 2 else "rtx_before_media")
            return None
        data = packet.data
        start = packet.payload_offset
        osn = (data[start] << 8) | data[start + 1]
        rebuilt = bytearray(data[:start])
        rebuilt += data[start + 2 : packet.payload_end]
        rebuilt[0] &= 0xDF  # padding was stripped
        rebuilt[1] = (rebuilt[1] & 0x80) | track.payload_type
        rebuilt[2:4] = osn.to_bytes(2, "big")
        rebuilt[8:12] = track.ssrc.to_bytes(4, "big")
        return RtpPacket(
            bytes(rebuilt),
            packet.marker,
            track.payload_type,
            osn,
            packet.timestamp,
            track.ssrc,
            packet.extensions,
            start,
            len(rebuilt),
        )

    # ---- RTCP in and out ---------------------------------------------------------------------------
    def on_rtcp(self, data: bytes) -> None:
        try:
            packets = parse_compound(data)
        except RtcpError:
            metrics.count_drop("rtcp_malformed")
            return
        now = time.monotonic()
        for packet in packets:
            if isinstance(packet, SenderReport):
                route = self._by_ssrc.get(packet.ssrc)
                if route is not None and not route[1]:
                    route[0].on_sender_report(packet.ntp_timestamp, packet.rtp_timestamp, now)
            elif isinstance(packet, Bye):
                log.info("publisher %s of %s sent RTCP BYE", self.id, self.stream_name)

    def on_connected(self) -> None:
        self._rtcp_task = asyncio.create_task(self._rtcp_loop())
        for track in self.tracks.values():
            if track.down_tracks:
                track.request_keyframe()

    async def _rtcp_loop(self) -> None:
        """NACK retries every 100 ms and receiver reports every second (RFC 3550 §6.2 allows 5% of rate)."""
        next_report = time.monotonic() + RECEIVER_REPORT_INTERVAL
        while not self.ended:
            await asyncio.sleep(NACK_RETRY_INTERVAL)
            now = time.monotonic()
            for track in self.tracks.values():
                track.retry_nacks(now)
            if now >= next_report:
                next_report = now + RECEIVER_REPORT_INTERVAL
                self._send_receiver_reports()

    def _send_receiver_reports(self) -> None:
        now = time.monotonic()  # the clock SR arrivals were stamped with, for DLSR
        blocks = [
            t.stats.report_block(t.ssrc, now) for t in self.tracks.values() if t.ssrc is not None and t.stats.started
        ]
        if blocks:
            self.transport.send_rtcp(build_receiver_report(self.local_ssrc, blocks) + build_sdes_cname(self.local_ssrc, self.cname))

    async def close(self, reason: str) -> None:
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
        await super().close(reason)
