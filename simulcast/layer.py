"""One encoding of a published track: a simulcast layer, or the only encoding of a plain track.

Owns what is per SSRC on the receive side: the packet history that answers viewers' NACKs, receive statistics
for our receiver reports, loss detection and NACKs upstream, keyframe tracking (and the picture size a keyframe
states), the measured bitrate and whether the layer is alive. The track (gateway/sfu/published_track.py)
owns the fan-out; DownTracks subscribe to the layers they receive or are switching to.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional

from gateway import metrics
from gateway.rtcp import build_fir, build_generic_nack, build_pli
from gateway.rtp import RtpPacket, seq_newer
from gateway.sfu.receive_stats import ReceiveStats
from simulcast.keyframe import is_keyframe_start
from simulcast.resolution import keyframe_size

if TYPE_CHECKING:
    from gateway.sfu.down_track import DownTrack
    from whep.layer_request import LayerInfo

NACK_MAX_GAP = 256  # a larger jump is a stream restart, not loss
NACK_MAX_TRIES = 3
NACK_RETRY_INTERVAL = 0.1
REPLAY_MAX_PACKETS = 400  # longest keyframe-to-now run replayed to a joining viewer
# Replay only a recent keyframe: older pictures would arrive as a burst behind live audio; asking the
# publisher for a fresh keyframe (one PLI round trip) is then the faster way to a live picture.
REPLAY_MAX_AGE = 1.0
LAYER_TIMEOUT = 0.5  # no packet for this long: the encoder dropped the layer (checked every 50 ms)
RATE_WINDOW = 1.0
# A layer that started or resumed this recently is still ramping (libwebrtc brings a new or resumed simulcast
# encoding up from its minimum bitrate over seconds, and moves bitrate between encodings meanwhile): its measured
# rate says little of what it will send. Viewers are not put on it before then (LayerSelector, simulcast/bwe.py).
LAYER_SETTLE = 3.0


class Layer:
    def __init__(
        self,
        *,
        kind: str,
        codec_key: str,
        clock_rate: int,
        rid: Optional[str],
        offer_index: int,
        history_size: int,
        nack_enabled: bool,
        pli_enabled: bool,
        fir_enabled: bool,
        keyframe_interval: float,
        local_ssrc: int,
        send_rtcp: Callable[[bytes], int],
    ) -> None:
        self.kind = kind
        self.codec_key = codec_key
        self.rid = rid
        self.offer_index = offer_index
        self.ssrc: Optional[int] = None
        self.rtx_ssrc: Optional[int] = None
        self.stats = ReceiveStats(clock_rate)
        self.sender_report: Optional[tuple[int, int]] = None  # the publisher's newest SR: (NTP, RTP timestamp)
        self._mask = history_size - 1
        self.history: list[Optional[RtpPacket]] = [None] * history_size
        self.nack_enabled = nack_enabled
        self.pli_enabled = pli_enabled
        self.fir_enabled = fir_enabled
        self._missing: dict[int, list[float]] = {}  # seq -> [tries, next attempt time]
        self.keyframe_seq: Optional[int] = None
        self.keyframe_ts: Optional[int] = None
        self.keyframe_time = 0.0
        self.keyframes = 0
        self.size: Optional[tuple[int, int]] = None
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = -1e9
        self._fir_seq = 0
        self._local_ssrc = local_ssrc
        self._send_rtcp = send_rtcp
        self.packets = 0
        self.bytes = 0
        self._window_bytes = 0
        self._window_start = time.monotonic()
        self.bitrate = 0  # bits per second over the last RATE_WINDOW
        self._frame_ts: Optional[int] = None
        self._window_frames = 0
        self.frame_rate = 0.0  # pictures (distinct RTP timestamps) per second over the last RATE_WINDOW
        self.last_packet = -1e9
        # `last_packet` as it was when the track asked the layer below for a keyframe because this one fell silent
        # (PublishedTrack._prepare_fallback): once per silence.
        self.fallback_asked_at = -1e9
        self.active = False
        self.active_since = 0.0  # when it last went alive (monotonic seconds)
        self.spatial_id = 0  # 0 = lowest resolution; set by the track's ordering
        self.subscribers: tuple["DownTrack", ...] = ()
        # The same viewers as a set, for membership tests: `in` on the tuple compares element by element (~20 µs over
        # 1,000 viewers), on the set it hashes once (PublishedTrack.lane_changed asks at every lane arm and leave).
        self.subscriber_set: set["DownTrack"] = set()

    # ---- receiving ---------------------------------------------------------------------------------
    def accept(self, packet: RtpPacket, now: float) -> Optional[bool]:
        """Store and account one packet; None for a duplicate, else whether it starts a keyframe."""
        seq = packet.sequence_number
        slot = seq & self._mask
        previous = self.history[slot]
        if previous is not None and previous.sequence_number == seq:
            metrics.count_drop("rtp_duplicate")
            return None
        self.history[slot] = packet
        stats = self.stats
        if stats.started and self.nack_enabled:
            self._detect_loss(seq, now)
        stats.update(seq, packet.timestamp, now)
        size = packet.payload_end - packet.payload_offset
        self.packets += 1
        self.bytes += size
        self._window_bytes += size
        self.last_packet = now
        if packet.timestamp != self._frame_ts:
            self._frame_ts = packet.timestamp
            self._window_frames += 1
        # A keyframe may begin in several packets (STAP-A with SPS/PPS, then FU-A IDR): only the first packet of a
        # new keyframe picture (a new timestamp) is where a decoder can start.
        if self.kind != "video" or packet.timestamp == self.keyframe_ts:
            return False
        payload = packet.data[packet.payload_offset : packet.payload_end]
        if not is_keyframe_start(self.codec_key, payload):
            return False
        if self.keyframe_seq is None or seq_newer(seq, self.keyframe_seq):
            self.keyframe_seq = seq
            self.keyframe_ts = packet.timestamp
            self.keyframe_time = now
            self.keyframes += 1
        size_found = keyframe_size(self.codec_key, payload)
        if size_found is not None:
            self.size = size_found
        return True

    def packet(self, seq: int) -> Optional[RtpPacket]:
        packet = self.history[seq & self._mask]
        if packet is not None and packet.sequence_number == seq:
            return packet
        return None

    def keyframe_run(self) -> Optional[list[RtpPacket]]:
        """Every packet from the last keyframe to the newest, if we hold them all (for a joining viewer)."""
        start = self.keyframe_seq
        if start is None or not self.stats.started or time.monotonic() - self.keyframe_time > REPLAY_MAX_AGE:
            return None
        count = ((self.stats.max_seq - start) & 0xFFFF) + 1
        if count > min(REPLAY_MAX_PACKETS, len(self.history)):
            return None
        run = []
        for i in range(count):
            packet = self.packet((start + i) & 0xFFFF)
            if packet is None:
                return None
            run.append(packet)
        return run

    # ---- liveness and rate (called every 100 ms by the publisher session) --------------------------
    def refresh(self, now: float) -> bool:
        """Update bitrate and liveness; True when the layer went alive or dead."""
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW:
            self.bitrate = int(self._window_bytes * 8 / elapsed)
            self.frame_rate = self._window_frames / elapsed
            self._window_bytes = 0
            self._window_frames = 0
            self._window_start = now
        alive = now - self.last_packet < LAYER_TIMEOUT
        if alive != self.active:
            self.active = alive
            if alive:
                self.active_since = now
            else:
                self.bitrate = 0
                self.frame_rate = 0.0
            return True
        return False

    def settled(self, now: float) -> bool:
        """Alive for LAYER_SETTLE or longer."""
        return self.active and now - self.active_since >= LAYER_SETTLE

    # ---- feedback upstream -------------------------------------------------------------------------
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
        """Re-NACK what is still missing, at most NACK_MAX_TRIES times per packet."""
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

    @property
    def last_keyframe_request(self) -> float:
        """When a keyframe request for this layer was last sent (monotonic seconds; far in the past before one)."""
        return self._last_keyframe_request

    def request_keyframe(self, now: Optional[float] = None, *, again: bool = False) -> bool:
        """PLI (RFC 4585 §6.3.1) or else FIR (RFC 5104 §4.3.1) for this layer's SSRC, at most once per interval
        (`again`: this once, whatever the interval; PublishedTrack.refresh, for a request the publisher ignored)."""
        if self.kind != "video" or self.ssrc is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_keyframe_request < self._keyframe_interval and not again:
            return False
        self._last_keyframe_request = now
        if self.pli_enabled or not self.fir_enabled:
            self._send_rtcp(build_pli(self._local_ssrc, self.ssrc))
        else:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            self._send_rtcp(build_fir(self._local_ssrc, self.ssrc, self._fir_seq))
        metrics.KEYFRAME_REQUESTS.inc()
        return True

    # ---- who receives it ---------------------------------------------------------------------------
    def subscribe(self, down: "DownTrack") -> None:
        if down not in self.subscriber_set:
            self.subscriber_set.add(down)
            self.subscribers = self.subscribers + (down,)

    def unsubscribe(self, down: "DownTrack") -> None:
        if down in self.subscriber_set:
            self.subscriber_set.discard(down)
            self.subscribers = tuple(d for d in self.subscribers if d is not down)

    def as_info(self) -> "LayerInfo":
        from whep.layer_request import LayerInfo

        width, height = self.size or (0, 0)
        return LayerInfo(self.rid or "", self.spatial_id, width, height, self.bitrate, self.active)

    def info(self) -> dict:
        return {
            "rid": self.rid,
            "spatial_id": self.spatial_id,
            "active": self.active,
            "settled": self.settled(time.monotonic()),  # LAYER_SETTLE: viewers are moved onto it only once settled
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "bitrate": self.bitrate,
            "ssrc": self.ssrc,
            "packets": self.packets,
            "keyframes": self.keyframes,
            "lost": self.stats.lost if self.stats.started else 0,
        }
