"""The receive side of one published track (one audio or video m= section of a WHIP session).

Owns: the packet history that answers viewers' NACKs, receive statistics for our receiver reports, loss
detection and NACKs upstream, rate-limited keyframe requests upstream, keyframe tracking so a new viewer can
start at once, and the synchronous fan-out of every packet to the track's DownTracks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Optional

from gateway import metrics
from gateway.rtcp import build_fir, build_generic_nack, build_pli
from gateway.rtp import RtpPacket, seq_newer
from gateway.sfu.egress import EgressProfile, Template
from gateway.sfu.receive_stats import ReceiveStats
from simulcast.keyframe import is_keyframe_start

if TYPE_CHECKING:
    from gateway.sdp import Codec
    from gateway.sfu.down_track import DownTrack

log = logging.getLogger(__name__)

NACK_MAX_GAP = 256  # a larger jump is a stream restart, not loss
NACK_MAX_TRIES = 3
NACK_RETRY_INTERVAL = 0.1
REPLAY_MAX_PACKETS = 400  # longest keyframe-to-now run replayed to a joining viewer
# Replay only a recent keyframe: older pictures would arrive as a burst behind live audio; asking the
# publisher for a fresh keyframe (one PLI round trip) is then the faster way to a live picture.
REPLAY_MAX_AGE = 1.0


class PublishedTrack:
    def __init__(
        self,
        *,
        kind: str,
        mid: str,
        codec: "Codec",
        rtx_payload_type: Optional[int],
        extensions: dict[str, int],
        feedback: list[str],
        history_size: int,
        keyframe_interval: float,
        local_ssrc: int,
        send_rtcp: Callable[[bytes], int],
    ) -> None:
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.codec_key = codec.name.lower()
        self.payload_type = codec.payload_type
        self.rtx_payload_type = rtx_payload_type
        self.extensions = extensions  # publisher's uri -> id
        self.nack_enabled = "nack" in feedback
        self.pli_enabled = "nack pli" in feedback
        self.fir_enabled = "ccm fir" in feedback
        self.ssrc: Optional[int] = None
        self.rtx_ssrc: Optional[int] = None
        self.stats = ReceiveStats(codec.clock_rate)
        self._mask = history_size - 1
        self.history: list[Optional[RtpPacket]] = [None] * history_size
        self.keyframe_seq: Optional[int] = None
        self.keyframe_ts: Optional[int] = None
        self.keyframe_time = 0.0
        self.keyframes = 0
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = 0.0
        self._fir_seq = 0
        self._local_ssrc = local_ssrc
        self._send_rtcp = send_rtcp
        self._missing: dict[int, list[float]] = {}  # seq -> [tries, next attempt time]
        self.down_tracks: tuple["DownTrack", ...] = ()
        self._profiles: dict[tuple, EgressProfile] = {}
        self.packets = 0
        self.bytes = 0

    # ---- viewers -----------------------------------------------------------------------------------
    def profile(self, profile: EgressProfile) -> EgressProfile:
        """The shared instance equal to `profile`, so viewers alike share one header per packet."""
        return self._profiles.setdefault(profile.key, profile)

    def attach(self, down: "DownTrack") -> None:
        self.down_tracks = self.down_tracks + (down,)

    def detach(self, down: "DownTrack") -> None:
        self.down_tracks = tuple(d for d in self.down_tracks if d is not down)

    def replay_from_keyframe(self, down: "DownTrack") -> bool:
        """Send a joining viewer everything since the last keyframe we hold; False if we hold none whole."""
        start = self.keyframe_seq
        if start is None or not self.stats.started or time.monotonic() - self.keyframe_time > REPLAY_MAX_AGE:
            return False
        count = ((self.stats.max_seq - start) & 0xFFFF) + 1
        if count > min(REPLAY_MAX_PACKETS, len(self.history)):
            return False
        run = []
        for i in range(count):
            packet = self.history[(start + i) & self._mask]
            if packet is None or packet.sequence_number != (start + i) & 0xFFFF:
                return False
            run.append(packet)
        for i, packet in enumerate(run):
            down.forward(down.profile.build(packet), packet, i == 0)
        return True

    # ---- incoming media ----------------------------------------------------------------------------
    def on_packet(self, packet: RtpPacket, now: float) -> None:
        seq = packet.sequence_number
        slot = seq & self._mask
        previous = self.history[slot]
        if previous is not None and previous.sequence_number == seq:
            metrics.count_drop("rtp_duplicate")
            return
        self.history[slot] = packet
        stats = self.stats
        if stats.started and self.nack_enabled:
            self._detect_loss(seq, now)
        stats.update(seq, packet.timestamp, now)
        self.packets += 1
        self.bytes += packet.payload_size
        # A keyframe may begin in several packets (STAP-A with SPS/PPS, then FU-A IDR): only the first packet of a
        # new keyframe picture (a new timestamp) is where a decoder can start.
        keyframe = (
            self.kind == "video"
            and packet.timestamp != self.keyframe_ts
            and is_keyframe_start(self.codec_key, packet.data[packet.payload_offset : packet.payload_end])
        )
        if keyframe and (self.keyframe_seq is None or seq_newer(seq, self.keyframe_seq)):
            self.keyframe_seq = seq
            self.keyframe_ts = packet.timestamp
            self.keyframe_time = now
            self.keyframes += 1
        downs = self.down_tracks
        if not downs:
            return
        templates: dict[EgressProfile, Template] = {}
        sent = 0
        for down in downs:
            profile = down.profile
            template = templates.get(profile)
            if template is None:
                template = templates[profile] = profile.build(packet)
            try:
                sent += down.forward(template, packet, keyframe)
            except Exception:  # one viewer's failure (e.g. an SRTP error) must not cost the others the packet
                metrics.count_drop("forward_error")
                log.exception("forwarding to a viewer failed")
        metrics.forwarded_packets[self.kind] += sent

    def _detect_loss(self, seq: int, now: float) -> None:
        missing = self._missing
        if seq in missing:
            del missing[seq]  # a retransmission or a late packet filled the gap
            return
        gap = (seq - self.stats.max_seq - 1) & 0xFFFF
        if 0 < gap < NACK_MAX_GAP:
            lost = [(self.stats.max_seq + 1 + i) & 0xFFFF for i in range(gap)]
            for s in lost:
                missing[s] = [1, now + NACK_RETRY_INTERVAL]
            self._send_nack(lost)

    def retry_nacks(self, now: float) -> None:
        """Called every NACK_RETRY_INTERVAL by the publisher session: re-NACK what is still missing."""
        missing = self._missing
        if not missing:
            return
        due = []
        for seq, state in list(missing.items()):
            if state[0] >= NACK_MAX_TRIES or not seq_newer(seq, (self.stats.max_seq - NACK_MAX_GAP) & 0xFFFF):
                del missing[seq]
            elif state[1] <= now:
                state[0] += 1
                state[1] = now + NACK_RETRY_INTERVAL
                due.append(seq)
        if due:
            self._send_nack(due)

    def _send_nack(self, seqs: list[int]) -> None:
        if self.ssrc is None:
            return
        self._send_rtcp(build_generic_nack(self._local_ssrc, self.ssrc, seqs))
        metrics.NACKS_SENT.inc(len(seqs))

    def request_keyframe(self, now: Optional[float] = None) -> bool:
        """PLI (RFC 4585 §6.3.1) or else FIR (RFC 5104 §4.3.1) upstream, at most once per interval."""
        if self.kind != "video" or self.ssrc is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_keyframe_request < self._keyframe_interval:
            return False
        self._last_keyframe_request = now
        if self.pli_enabled or not self.fir_enabled:
            self._send_rtcp(build_pli(self._local_ssrc, self.ssrc))
        else:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            self._send_rtcp(build_fir(self._local_ssrc, self.ssrc, self._fir_seq))
        metrics.KEYFRAME_REQUESTS.inc()
        return True

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, arrival: float) -> None:
        """Keep LSR for our reports and translate the SR for every viewer (lip sync, RFC 3550 §6.4.1)."""
        self.stats.on_sender_report(ntp_timestamp, arrival)
        for down in self.down_tracks:
            down.send_sender_report(ntp_timestamp, rtp_timestamp)

    def packet(self, seq: int) -> Optional[RtpPacket]:
        packet = self.history[seq & self._mask]
        if packet is not None and packet.sequence_number == seq:
            return packet
        return None
