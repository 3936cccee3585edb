"""A WHIP publisher session: demultiplexes the publisher's RTP into its PublishedTracks.

Packet path (ingest half): aioice socket -> RTCDtlsTransport (SRTP unprotect) -> PublisherSession.on_rtp
-> route by SSRC to (track, layer); an SSRC seen for the first time is placed by its mid / rid / repaired-rid
header extensions (RFC 8843 §9.2, RFC 8852) or, for a plain track, its payload type -> RTX unwrapped
(RFC 4588 §4) -> PublishedTrack.on_packet -> DownTrack.forward for the layer's viewers (see gateway/sfu/).
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
from gateway.rtcp import Bye, SenderReport, build_receiver_report, build_sdes_cname, parse_or_count
from gateway.rtp import RtpError, RtpPacket, parse_rtp
from gateway.sdp import EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, Offer
from gateway.sfu.published_track import PublishedTrack
from simulcast.layer import Layer
from simulcast.twcc import TwccRecorder
from whip.offer_answer import PublishPlan

Route = tuple[PublishedTrack, Layer, bool]  # track, layer, is RTX

if TYPE_CHECKING:
    from gateway.sessions import SessionManager

log = logging.getLogger(__name__)

RECEIVER_REPORT_INTERVAL = 1.0
FEEDBACK_INTERVAL = 0.05  # TWCC feedback, NACK retries, layer liveness


class PublisherSession(PeerSession):
    kind = "publisher"

    def __init__(self, manager: "SessionManager", stream_name: str, offer: Offer, plan: PublishPlan, config: Config) -> None:
        super().__init__(manager, stream_name, offer, config)
        self.answer_media = plan.answer_media
        self.local_ssrc = random.getrandbits(32) or 1
        self.cname = f"whipgate-{self.id[:8]}"
        self.token: Optional[str] = None  # the Bearer token it presented (WHIP takeover compares it)
        self.tracks: dict[str, PublishedTrack] = {}
        self._by_ssrc: dict[int, Route] = {}
        self._by_payload_type: dict[int, PublishedTrack] = {}
        self._rtcp_task: Optional[asyncio.Task[None]] = None
        self._add_tracks(plan)

    def _add_tracks(self, plan: PublishPlan) -> None:
        """The plan's tracks (from the offer; for a relay ingest, from the origin's answer, gateway/relay.py)."""
        config = self.config
        for t in plan.tracks:
            track = PublishedTrack(
                kind=t.kind,
                mid=t.mid,
                codec=t.codec,
                rtx_payload_type=t.rtx_payload_type,
                extensions=t.extensions,
                feedback=t.feedback,
                rids=t.rids,
                history_size=config.rtc.packet_history,
                keyframe_interval=config.rtc.keyframe_request_interval,
                local_ssrc=self.local_ssrc,
                send_rtcp=self.transport.send_rtcp,
            )
            self.tracks[t.mid] = track
            self._by_payload_type[t.codec.payload_type] = track
            if t.rtx_payload_type is not None:
                self._by_payload_type[t.rtx_payload_type] = track
            layer = track.layers[0]
            if t.ssrc is not None and not track.simulcast:
                layer.ssrc = t.ssrc
                self._by_ssrc[t.ssrc] = (track, layer, False)
            if t.rtx_ssrc is not None and not track.simulcast:
                layer.rtx_ssrc = t.rtx_ssrc
                self._by_ssrc[t.rtx_ssrc] = (track, layer, True)
        # Extension ids are negotiated per m= section but BUNDLE peers use one id per URI (RFC 8843 §9.2).
        self._mid_ids = {t.extensions[EXT_MID] for t in self.tracks.values() if EXT_MID in t.extensions}
        # Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01): one sequence
        # space for the whole transport, fed back to the publisher's own estimator.
        twcc_ids = {t.extensions[EXT_TRANSPORT_CC] for t in self.tracks.values() if EXT_TRANSPORT_CC in t.extensions}
        self._twcc_id = next(iter(twcc_ids)) if twcc_ids else None
        self._twcc = TwccRecorder() if self._twcc_id is not None else None

    # ---- RTP in ------------------------------------------------------------------------------------
    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        try:
            packet = parse_rtp(data)
        except RtpError:
            metrics.count_drop("rtp_malformed")
            return
        if self._twcc is not None:
            seq = packet.extensions.get(self._twcc_id)
            if seq is not None and len(seq) >= 2:
                self._twcc.record((seq[0] << 8) | seq[1], time.monotonic_ns() // 1000)
        route = self._by_ssrc.get(packet.ssrc)
        if route is None:
            route = self._learn_ssrc(packet)
            if route is None:
                return
        track, layer, is_rtx = route
        if is_rtx:
            packet = self._unwrap_rtx(packet, track, layer)
            if packet is None:
                return
        track.on_packet(layer, packet, time.monotonic())

    def _learn_ssrc(self, packet: RtpPacket) -> Optional[Route]:
        """Place an SSRC seen for the first time: mid then rid/repaired-rid extensions, else the payload type."""
        track: Optional[PublishedTrack] = None
        for mid_id in self._mid_ids:
            mid = packet.extensions.get(mid_id)
            if mid is not None:
                track = self.tracks.get(mid.decode(errors="replace"))
                break
        if track is None:
            track = self._by_payload_type.get(packet.payload_type)
        if track is None:
            metrics.count_drop("rtp_unknown_stream")
            return None
        is_rtx = packet.payload_type == track.rtx_payload_type
        if track.simulcast:
            ext_id = track.extensions.get(EXT_REPAIRED_RID if is_rtx else EXT_RID)
            rid = packet.extensions.get(ext_id) if ext_id is not None else None
            layer = track.by_rid.get(rid.decode(errors="replace")) if rid is not None else None
            if layer is None:
                metrics.count_drop("rtp_unknown_layer")  # no (known) rid yet: the next packets will carry it
                return None
        else:
            layer = track.layers[0]
        if is_rtx:
            layer.rtx_ssrc = packet.ssrc
        else:
            layer.ssrc = packet.ssrc
        route = (track, layer, is_rtx)
        self._by_ssrc[packet.ssrc] = route
        return route

    def _unwrap_rtx(self, packet: RtpPacket, track: PublishedTrack, layer: Layer) -> Optional[RtpPacket]:
        """RFC 4588 §4: the payload starts with the original sequence number (OSN)."""
        if packet.payload_size < 2 or layer.ssrc is None:
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
        rebuilt[8:12] = layer.ssrc.to_bytes(4, "big")
        return RtpPacket(
            bytes(rebuilt),
            packet.marker,
            track.payload_type,
            osn,
            packet.timestamp,
            layer.ssrc,
            packet.extensions,
            start,
            len(rebuilt),
        )

    # ---- RTCP in and out ---------------------------------------------------------------------------
    def on_rtcp(self, data: bytes) -> None:
        packets = parse_or_count(data)
        now = time.monotonic()
        for packet in packets:
            if isinstance(packet, SenderReport):
                route = self._by_ssrc.get(packet.ssrc)
                if route is not None and not route[2]:
                    route[0].on_sender_report(route[1], packet.ntp_timestamp, packet.rtp_timestamp, now)
            elif isinstance(packet, Bye):
                log.info("publisher %s of %s sent RTCP BYE", self.id, self.stream_name)

    def on_connected(self) -> None:
        self._rtcp_task = asyncio.create_task(self._rtcp_loop())
        for track in self.tracks.values():
            for down in track.down_tracks:
                if down.target is not None:
                    down.target.request_keyframe()

    async def _rtcp_loop(self) -> None:
        """Every 50 ms: TWCC feedback, NACK retries, layer liveness; every second receiver reports (RFC 3550 §6.2)."""
        next_report = time.monotonic() + RECEIVER_REPORT_INTERVAL
        while not self.ended:
            await asyncio.sleep(FEEDBACK_INTERVAL)
            now = time.monotonic()
            if self._twcc is not None and self._twcc.pending:
                media_ssrc = next((l.ssrc for t in self.tracks.values() for l in t.layers if l.ssrc), 0)
                for feedback in self._twcc.build_feedback(self.local_ssrc, media_ssrc):
                    self.transport.send_rtcp(feedback)
            for track in self.tracks.values():
                for layer in track.layers:
                    layer.retry_nacks(now)
                track.refresh(now)
            if now >= next_report:
                next_report = now + RECEIVER_REPORT_INTERVAL
                self._send_receiver_reports()

    def _send_receiver_reports(self) -> None:
        now = time.monotonic()  # the clock SR arrivals were stamped with, for DLSR
        blocks = [
            layer.stats.report_block(layer.ssrc, now)
            for track in self.tracks.values()
            for layer in track.layers
            if layer.ssrc is not None and layer.stats.started
        ]
        if blocks:
            self.transport.send_rtcp(build_receiver_report(self.local_ssrc, blocks) + build_sdes_cname(self.local_ssrc, self.cname))

    async def close(self, reason: str) -> None:
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
        await super().close(reason)
