"""One published track as one viewer receives it.

Per packet (synchronous, no coroutine): pack this viewer's sequence number, timestamp and SSRC in front of the
profile's shared header tail and payload, protect, send. Sequence numbers and timestamps are the publisher's plus per-viewer offsets,
so gaps stay gaps and the viewer's NACKs map back to the original packets. Video starts at a keyframe.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Callable

from gateway import metrics
from gateway.rtcp import build_sdes_cname, build_sender_report
from gateway.rtp import RtpPacket
from gateway.sfu.egress import EgressProfile, Template, assemble

if TYPE_CHECKING:
    from gateway.sfu.published_track import PublishedTrack


class DownTrack:
    __slots__ = (
        "source",
        "profile",
        "ssrc",
        "rtx_ssrc",
        "cname",
        "_send_rtp",
        "_send_rtcp",
        "seq_offset",
        "ts_offset",
        "active",
        "waiting_keyframe",
        "packets_sent",
        "octets_sent",
        "retransmissions",
        "_rtx_seq",
        "fraction_lost",
        "jitter",
        "keyframe_requests",
    )

    def __init__(
        self,
        source: "PublishedTrack",
        profile: EgressProfile,
        *,
        ssrc: int,
        rtx_ssrc: int | None,
        cname: str,
        send_rtp: Callable[[bytes], int],
        send_rtcp: Callable[[bytes], int],
    ) -> None:
        self.source = source
        self.profile = source.profile(profile)
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.cname = cname
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        self.seq_offset = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.active = False
        self.waiting_keyframe = source.kind == "video"
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmissions = 0
        self._rtx_seq = random.getrandbits(16)
        self.fraction_lost = 0
        self.jitter = 0
        self.keyframe_requests = 0

    def start(self) -> None:
        """The viewer's transport is up: join the fan-out and start video at a keyframe."""
        self.active = True
        self.source.attach(self)
        if self.waiting_keyframe and not self.source.replay_from_keyframe(self):
            self.source.request_keyframe()

    def stop(self) -> None:
        self.active = False
        self.source.detach(self)

    # ---- the forwarding path -----------------------------------------------------------------------
    def forward(self, template: Template, packet: RtpPacket, keyframe: bool) -> int:
        if self.waiting_keyframe:
            if not keyframe:
                return 0
            self.waiting_keyframe = False
        data = assemble(
            template,
            (packet.sequence_number + self.seq_offset) & 0xFFFF,
            (packet.timestamp + self.ts_offset) & 0xFFFFFFFF,
            self.ssrc,
        )
        if not self._send_rtp(data):
            return 0
        self.packets_sent += 1
        self.octets_sent += packet.payload_end - packet.payload_offset
        return 1

    # ---- viewer feedback ---------------------------------------------------------------------------
    def on_nack(self, lost: list[int]) -> None:
        """Resend what the viewer lost: on RTX when negotiated (RFC 4588 §4), else the packet again."""
        for out_seq in lost:
            packet = self.source.packet((out_seq - self.seq_offset) & 0xFFFF)
            if packet is None:
                metrics.count_drop("nack_not_in_history")
                continue
            out_ts = (packet.timestamp + self.ts_offset) & 0xFFFFFFFF
            if self.profile.rtx_payload_type is not None and self.rtx_ssrc is not None:
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
                data = assemble(self.profile.build_rtx(packet, out_seq), self._rtx_seq, out_ts, self.rtx_ssrc)
            else:
                data = assemble(self.profile.build(packet), out_seq, out_ts, self.ssrc)
            if self._send_rtp(data):
                self.retransmissions += 1
                metrics.RETRANSMISSIONS.inc()

    def on_keyframe_request(self) -> None:
        self.keyframe_requests += 1
        self.source.request_keyframe()

    def on_receiver_report(self, fraction_lost: int, jitter: int) -> None:
        self.fraction_lost = fraction_lost
        self.jitter = jitter

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """The publisher's SR mapped into this viewer's timestamp space, with our own counts."""
        if not self.active or self.packets_sent == 0:
            return
        self._send_rtcp(
            build_sender_report(
                self.ssrc,
                ntp_timestamp,
                (rtp_timestamp + self.ts_offset) & 0xFFFFFFFF,
                self.packets_sent & 0xFFFFFFFF,
                self.octets_sent & 0xFFFFFFFF,
            )
            + build_sdes_cname(self.ssrc, self.cname)
        )

    def stats(self) -> dict:
        return {
            "kind": self.source.kind,
            "codec": self.source.codec.name,
            "ssrc": self.ssrc,
            "packets_sent": self.packets_sent,
            "octets_sent": self.octets_sent,
            "retransmissions": self.retransmissions,
            "fraction_lost": self.fraction_lost,
            "jitter": self.jitter,
            "waiting_keyframe": self.waiting_keyframe,
            "at": time.time(),
        }
