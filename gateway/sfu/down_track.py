"""One published track as one viewer receives it: exactly one layer, as one continuous RTP stream.

Per packet (synchronous, no coroutine): the RtpMunger maps the layer's sequence number and timestamp into
this viewer's continuous space, the VP8/VP9 munger keeps picture ids continuous across switches, the bytes are
packed in front of the profile's shared header tail, protected and sent. A switch to another layer happens only
at a keyframe of the target layer (RFC 8853 §1 leaves this to the SFU; a decoder cannot start elsewhere).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional

from gateway import metrics
from gateway.aiortc_adapter import LaneGroup
from gateway.rtcp import build_sdes_cname, build_sender_report
from gateway.rtp import RtpPacket
from gateway.sdp import same_codec
from gateway.sfu.egress import PACED_HEADER_BYTES, EgressProfile, Template, assemble, payload_size
from simulcast import vp8, vp9
from simulcast.rtp_munger import RtpMunger

if TYPE_CHECKING:
    from gateway.sfu.published_track import PublishedTrack
    from simulcast.viewer_bandwidth import ViewerBandwidth
    from simulcast.layer import Layer
    from whep.layer_request import LayerRequest


# Packets an armed viewer's C lane forwards before it takes one packet through the Python path again, where its
# PacketSender re-checks the nominated ICE pair (~3-10 s of video, ~10 s of Opus).
LANE_LEASE = 512


class RetransmissionBudget:
    """What a viewer's NACKs may cost. On a congested link the viewer NACKs the same packets again and again;
    answering all of them floods the link further (measured: 28,000 resends in 6 s at 150 kbit/s). So each
    packet is resent at most once per MIN_INTERVAL, and resends spend at most SHARE of what the viewer was sent
    over the last second (never less than FLOOR_BPS, but never more than SHARE of the viewer's bandwidth
    estimate when there is one: on a 300 kbit/s link a 100 kbit/s floor kept the queue full), with a 250 ms
    burst."""

    MIN_INTERVAL = 0.1
    SHARE = 0.25
    FLOOR_BPS = 100_000
    SLOTS = 1024

    __slots__ = ("_seq", "_time", "_tokens", "_refilled", "_window_start", "_window_octets", "_rate_bps")

    def __init__(self) -> None:
        # The per-packet slots (16 KiB) come with the first NACK: most tracks never get one (audio, a clean path).
        self._seq: list[int] = []
        self._time: list[float] = []
        self._tokens = self.FLOOR_BPS / 8 * 0.25  # start with a full burst
        self._refilled = time.monotonic()
        self._window_start = self._refilled
        self._window_octets = 0
        self._rate_bps = 0.0

    def allow(self, out_seq: int, size: int, octets_sent: int, now: float, estimate_bps: int = 0) -> bool:
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._rate_bps = (octets_sent - self._window_octets) * 8 / elapsed
            self._window_start, self._window_octets = now, octets_sent
        if not self._seq:
            self._seq = [-1] * self.SLOTS
            self._time = [0.0] * self.SLOTS
        slot = out_seq & (self.SLOTS - 1)
        if self._seq[slot] == out_seq and now - self._time[slot] < self.MIN_INTERVAL:
            return False
        rate = max(self.FLOOR_BPS, self.SHARE * self._rate_bps)
        if estimate_bps:
            rate = min(rate, self.SHARE * estimate_bps)
        byte_rate = rate / 8
        self._tokens = min(self._tokens + byte_rate * (now - self._refilled), byte_rate * 0.25)
        self._refilled = now
        if self._tokens < size:
            return False
        self._tokens -= size
        self._seq[slot] = out_seq
        self._time[slot] = now
        return True


class DownTrack:
    def __init__(
        self,
        source: "PublishedTrack",
        profile: EgressProfile,
        *,
        ssrc: int,
        rtx_ssrc: Optional[int],
        cname: str,
        send_rtp: Callable[[bytes], int],
        send_rtcp: Callable[[bytes], int],
        native_sender: Optional[Callable[[], object]] = None,
    ) -> None:
        self.source = source
        self.kind = source.kind
        self.profile = source.profile(profile)
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.cname = cname
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        # The compiled sender of the viewer's route (PeerTransport.native_sender): with it, a viewer in steady
        # state is forwarded by a C lane of its layer (see `_arm`); `armed_in` is the LaneGroup it is armed in.
        self._native_sender = native_sender if LaneGroup is not None else None
        self.armed_in: Optional[object] = None
        self._replaying = False  # `_replay` is forwarding a keyframe run, not its last packet: `forward` does not arm
        # Video opens a munger segment at every layer switch and every packet dropped on purpose (a temporal layer
        # above the target, padding), and NACKs map back through them: 256. Audio opens one when its source changes
        # (a publisher replaced, a relay re-pulled) or a packet is dropped while the viewer's socket is congested:
        # 32 (5 rings of 8-byte slots: ~9 KiB less per viewer).
        self.munger = RtpMunger(source.codec.clock_rate, segments=256 if self.kind == "video" else 32)
        codec_mungers = {"vp8": vp8.Vp8Munger, "vp9": vp9.Vp9Munger}
        self.codec_munger = codec_mungers[source.codec_key]() if source.codec_key in codec_mungers else None
        self.current: Optional["Layer"] = None  # the layer being forwarded
        self.target: Optional["Layer"] = None  # the layer wanted; forwarded from its next keyframe
        self.pinned: Optional["LayerRequest"] = None  # WHEP layer extension: a viewer's own choice
        self.reason = "automatic"
        self.active = False
        self._packets_sent = 0  # forwarded by the Python path; a lane counts its own (see packets_sent)
        self._octets_sent = 0
        self.retransmissions = 0
        self._budget = RetransmissionBudget()
        self.switches = 0
        self._rtx_seq = 0
        self.fraction_lost = 0
        self.jitter = 0
        self.keyframe_requests = 0
        self.on_switch: Optional[Callable[["DownTrack"], None]] = None
        self.bandwidth: Optional["ViewerBandwidth"] = None  # the viewer's estimate, shared by its tracks
        # A downgrade for lack of bandwidth stops the current layer at once (it no longer fits the path) and
        # leaves a short freeze until the lower layer's keyframe, instead of piling loss onto a congested link.
        self._congested = False
        self.target_since = 0.0  # when the current target was chosen (monotonic s)
        self.last_switch_wait = 0.0  # how long the last switch waited for its layer's keyframe (s)
        # The munger's layer keys are source_key + offer_index: a `rebind` to another source (a new publisher)
        # moves source_key on, so a NACK for a packet of the previous source is never looked up in the new one.
        self._source_key = 0

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """The viewer's transport is up: join, pick a layer, start it from a held keyframe or ask for one."""
        self.active = True
        self.source.attach(self)
        self.retarget(request_keyframe=False)
        target = self.target
        if target is None:
            return
        run = target.keyframe_run() if self.kind == "video" else None
        if run:
            self._replay(target, run)
        elif self.kind == "video":
            target.request_keyframe()

    def _replay(self, layer: "Layer", run: list[RtpPacket]) -> None:
        """Forward `layer`'s held packets from its last keyframe (`Layer.keyframe_run`): the viewer starts or switches
        there now. `forward` arms the C lane only after the last of them (`_replaying` until then). Were it to arm the
        lane after each packet, as it does for live ones, the next `forward` would settle it again: two lane changes
        per replayed packet, about half of what a join's replay cost (py-spy, 600 viewers joining; BENCHMARKS.md)."""
        parse = self.source.parse_descriptor
        last = len(run) - 1
        try:
            for i, packet in enumerate(run):
                payload = packet.data[packet.payload_offset : packet.payload_end]
                descriptor = parse(payload) if parse else None
                self._replaying = i < last
                self.forward(self.profile.build(packet), packet, layer, i == 0, descriptor, payload)
        finally:
            self._replaying = False

    def _resume_at_held_keyframe(self, layer: "Layer") -> bool:
        """Switch to `layer` now if it holds a keyframe newer than the last packet of the layer this viewer is on.
        That happens only when the current layer fell silent (its encoder turned it off) and the track asked `layer`
        for a keyframe while it was silent (PublishedTrack._prepare_fallback): every frame replayed from it is newer
        than anything the viewer decoded, so nothing goes back in time. True if the viewer is now on `layer`."""
        current = self.current
        if self.kind != "video" or not self.active or current is None or layer.keyframe_time <= current.last_packet:
            return False
        run = layer.keyframe_run()
        if not run:
            return False
        self._replay(layer, run)
        return self.current is layer

    def stop(self) -> None:
        self.active = False
        self.source.detach(self)

    # ---- the compiled lane -------------------------------------------------------------------------
    def _arm(self, layer: "Layer") -> None:
        """Hand this viewer's forwarding of `layer` to the layer's C lane group (gateway/_srtp_send.c): called after
        the Python path forwarded a packet, for a viewer with nothing per packet that only Python does (no VP9
        payload, no VP8 temporal layer change pending, no switch pending, no probe cluster sending). The lane runs
        the munger's fast path, the VP8 picture id / TL0PICIDX / KEYIDX continuation, header, transport-wide seq +
        send log + pacer (transport-cc), protect and send; whatever else happens to this viewer settles it first."""
        vp8_state = None
        if self.codec_munger is not None:
            if not isinstance(self.codec_munger, vp8.Vp8Munger):
                return
            vp8_state = self.codec_munger.lane_state()
            if vp8_state is None:
                return
        transport = None
        if self.profile.transport_cc_id is not None:
            bandwidth = self.bandwidth
            if bandwidth is None or bandwidth.native is None or bandwidth.probing:
                return
            transport = bandwidth.native
        sender = self._native_sender() if self._native_sender is not None else None
        state = self.munger.lane_state() if sender is not None else None
        if state is None:
            return
        group = self.source.lane_group(layer, self.profile)
        group.arm(self, sender, self.ssrc, *state, LANE_LEASE,  # type: ignore[attr-defined]
                  transport=transport, paced=transport is not None and self.kind == "video", vp8=vp8_state)
        self.armed_in = group
        self.source.lane_changed(self)

    def settle(self) -> None:
        """Leave the C lane, if armed: the munger state and counts it moved on come back here."""
        group = self.armed_in
        if group is not None:
            state = group.disarm(self)  # type: ignore[attr-defined]
            if state is not None:
                self.lane_left(state)
            else:  # not in the group (cannot happen: the track takes failed lanes back first); never stay marked
                self.armed_in = None
                self.source.lane_changed(self)

    def lane_left(self, state: tuple) -> None:
        """The lane's state after it left its group (settle, or the group gave it up before a packet)."""
        self.armed_in = None
        self.source.lane_changed(self)
        highest_in, last_out, last_ts, last_time, packets, octets, vp8_state = state
        self.munger.resume(highest_in, last_out, last_ts, last_time)
        if vp8_state is not None:
            self.codec_munger.resume(*vp8_state)  # type: ignore[union-attr]
        self._packets_sent += packets
        self._octets_sent += octets

    def _lane_counts(self) -> tuple[int, int]:
        group = self.armed_in
        counts = group.counts(self) if group is not None else None  # type: ignore[attr-defined]
        return counts if counts is not None else (0, 0)

    @property
    def packets_sent(self) -> int:
        return self._packets_sent + self._lane_counts()[0]

    @property
    def octets_sent(self) -> int:
        """Payload octets sent (RFC 3550 §6.4.1 sender's octet count)."""
        return self._octets_sent + self._lane_counts()[1]

    # ---- changing the source (a publisher leaves, another takes its place) ---------------------------
    def unbind(self) -> None:
        """The source is gone (its publisher left): leave it, keeping this viewer's RTP/picture id counters."""
        self.source.detach(self)
        self.current = self.target = None
        self._congested = False

    def accepts(self, source: "PublishedTrack") -> bool:
        """Whether this viewer can decode `source` in the codec it negotiated (no transcoding)."""
        return source.kind == self.kind and same_codec(source.codec, self.source.codec)

    def rebind(self, source: "PublishedTrack") -> None:
        """Forward `source` from now on (same kind and codec, see `accepts`). The viewer's SSRC, payload types and
        extension ids stay; from the new source's first keyframe the RtpMunger and VP8/VP9 munger continue the
        sequence numbers, timestamps and picture ids where they stopped (their `switch_to`, as at a layer switch),
        so the viewer's decoder sees one stream. A keyframe is requested (or a held one replayed) at once."""
        self.unbind()
        old = self.source
        by_id = {ext_id: uri for uri, ext_id in old.extensions.items()}
        extension_map = tuple(
            (source.extensions[by_id[src]], out)
            for src, out in self.profile.extension_map
            if src in by_id and by_id[src] in source.extensions
        )
        p = self.profile
        mid = p.mid_value.decode()
        self.profile = source.profile(
            EgressProfile(p.payload_type, p.rtx_payload_type, p.mid_id, mid, extension_map, p.transport_cc_id)
        )
        self.source = source
        self._source_key += 1 << 8
        if self.active:
            self.start()

    # ---- choosing the layer ------------------------------------------------------------------------
    def choose(self) -> Optional["Layer"]:
        if self.pinned is not None and not self.pinned.is_automatic:
            try:
                layer = self.source.pinned_layer(self.pinned)
            except ValueError:  # the pinned layer is gone from the stream: back to automatic
                layer = None
            if layer is not None:
                self.reason = "pinned by the viewer"
                return layer
        bandwidth = self.bandwidth
        if bandwidth is not None and bandwidth.choice is not None and self.source.simulcast:
            spatial, _, reason = bandwidth.choice
            layer = next((l for l in self.source.layers if l.spatial_id == spatial), None)
            if layer is not None:
                self.reason = reason
                return layer
        self.reason = "highest active layer"
        return self.source.best_layer()

    def retarget(self, request_keyframe: bool = True) -> None:
        new = self.choose()
        old = self.target
        if new is old:
            return
        self.settle()
        current = self.current
        self._congested = (
            new is not None and current is not None and new.spatial_id < current.spatial_id and self.reason.startswith("down")
        )
        self.target = new
        if new is not None:
            new.subscribe(self)
            if new is not self.current:
                self.target_since = time.monotonic()
                self.source.switching.add(self)
                if not self._resume_at_held_keyframe(new) and request_keyframe:
                    new.request_keyframe()
            else:
                self.source.switching.discard(self)
        if old is not None and old is not self.current and old is not new:
            old.unsubscribe(self)

    def pin(self, request: Optional["LayerRequest"]) -> None:
        self.pinned = request
        if self.codec_munger is not None:
            temporal = None
            if request is not None:
                temporal = request.temporal_layer_id if request.temporal_layer_id is not None else request.max_temporal_layer_id
            # Fewer temporal layers: a lower frame rate at the same resolution (RFC 7741 §4.2 TID / Y).
            self.set_temporal_target(temporal if temporal is not None else type(self.codec_munger)().target_temporal)
        self.retarget()

    def set_temporal_target(self, temporal: int) -> None:
        """The highest VP8/VP9 temporal layer to forward (from the next frame down, from a sync frame up). A C lane
        forwards only at a steady temporal layer: it leaves first."""
        munger = self.codec_munger
        if munger is not None and munger.target_temporal != temporal:
            self.settle()
            munger.target_temporal = temporal

    @property
    def temporal_layer(self) -> Optional[int]:
        return self.codec_munger.temporal if self.codec_munger is not None else None

    # ---- the forwarding path -----------------------------------------------------------------------
    def forward(
        self,
        template: Template,
        packet: RtpPacket,
        layer: "Layer",
        keyframe: bool,
        descriptor: object = None,
        payload: Optional[bytes] = None,
    ) -> int:
        """Send one packet of `layer` to this viewer if it is the layer it receives; 1 if sent, else 0.

        `descriptor` and `payload` (VP8/VP9 only) are parsed once per incoming packet by the track."""
        if self.armed_in is not None:  # called directly while armed (start()'s keyframe replay): Python takes over
            self.settle()
        if layer is not self.current:
            if layer is not self.target or (self.kind == "video" and not keyframe):
                return 0
            self._switch(layer, packet, descriptor)
        elif self._congested:
            self.munger.drop(packet.sequence_number)  # no gap for the viewer to NACK
            return 0
        if descriptor is not None and self.codec_munger is not None:
            template = self._rewrite_payload(template, payload, descriptor)  # type: ignore[assignment]
            if template is None:  # a picture this viewer does not get (older than a switch, temporal layer)
                self.munger.drop(packet.sequence_number)
                return 0
        mapped = self.munger.map(packet.sequence_number, packet.timestamp)
        if mapped is None:
            return 0
        out_seq, out_ts = mapped
        if not self._send(template, out_seq, out_ts, self.ssrc):
            return 0
        self._packets_sent += 1
        self._octets_sent += packet.payload_end - packet.payload_offset
        if self._native_sender is not None and layer is self.target and self.active and not self._replaying:
            self._arm(layer)
        return 1

    def defer(self, template: Template, seq: int, timestamp: int, payload_len: int, rest: Optional[bytes] = None) -> int:
        """A packet this viewer's C lane mapped but its pacer held back: queue it there (as `_send` does); `rest`:
        the template's last part with this viewer's VP8 fields, when they differ from the shared one's."""
        bandwidth = self.bandwidth
        if bandwidth is None:  # cannot happen: only transport-cc lanes are paced
            return 0
        if rest is not None:
            template = template[0], template[1], rest
        bandwidth.enqueue(self, template, seq, timestamp, self.ssrc, len(template[2]) + PACED_HEADER_BYTES)
        self._packets_sent += 1
        self._octets_sent += payload_len
        return 1

    def _rewrite_payload(self, template: Template, payload: bytes, descriptor: object) -> Optional[Template]:
        """Picture ids, TL0PICIDX, KEYIDX continued for this viewer; the shared template when nothing changes."""
        rewritten = self.codec_munger.rewrite(payload, descriptor)  # type: ignore[union-attr]
        if rewritten is None:
            return None
        if rewritten is payload:  # the munger returns its input untouched when no field changes
            return template
        rest = template[2]
        return template[0], template[1], rest[: len(rest) - len(payload)] + bytes(rewritten)

    def _send(self, template: Template, seq: int, timestamp: int, ssrc: int, paced: bool = True,
              padding: bool = False) -> int:  # fmt: skip
        """Assemble, stamp the transport-wide sequence number when negotiated, send, log for the estimator
        (`padding`: a probe's padding, logged as such).

        With transport-cc, video goes through the viewer's pacer (GCC §4): at once while its budget allows,
        else queued and sent by the pacer's timer (one timer per viewer, not a task per packet), so a keyframe
        leaves at 2.5x the estimate instead of as one line-rate burst. Audio and probe padding are not paced."""
        bandwidth = self.bandwidth
        if template[1] and bandwidth is not None:
            if paced and self.kind == "video":
                size = len(template[2]) + PACED_HEADER_BYTES
                now = bandwidth.may_send_now(size)
                if not now:
                    bandwidth.enqueue(self, template, seq, timestamp, ssrc, size)
                    return size
                return self.send_stamped(template, seq, timestamp, ssrc, now)
            return self.send_stamped(template, seq, timestamp, ssrc, 0, padding)
        return self._send_rtp(assemble(template, seq, timestamp, ssrc))

    def send_stamped(self, template: Template, seq: int, timestamp: int, ssrc: int, now_us: int = 0,
                     padding: bool = False) -> int:  # fmt: skip
        """Send now with the next transport-wide sequence number, logged for the estimator (at `now_us` when the
        caller has just read the clock; `padding`: a probe's padding)."""
        bandwidth = self.bandwidth
        assert bandwidth is not None
        transport_seq = bandwidth.next_seq()
        size = self._send_rtp(assemble(template, seq, timestamp, ssrc, transport_seq))
        if size:
            bandwidth.sent(transport_seq, size, now_us, padding)
        return size

    def send_padding(self, size: int) -> int:
        """Padding-only RTX packets (bandwidth probes); bytes put on the wire, 0 without RTX."""
        self.settle()  # the padding carries the munger's last timestamp
        if self.profile.rtx_payload_type is None or self.rtx_ssrc is None or not self.active:
            return 0
        sent = 0
        while size > 0:
            chunk = min(size, 255)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            n = self._send(self.profile.padding(chunk), self._rtx_seq, self.munger.last_ts, self.rtx_ssrc, paced=False,
                           padding=True)
            if not n:
                break
            sent += n
            size -= chunk
        return sent

    def _switch(self, layer: "Layer", packet: RtpPacket, descriptor: object = None) -> None:
        old = self.current
        self.current = layer
        self.last_switch_wait = time.monotonic() - self.target_since
        self._congested = False
        self.source.switching.discard(self)
        key = self._source_key + layer.offer_index
        if old is not None and self.bandwidth is not None:  # a layer switch (not a new publisher's first keyframe)
            self._unsend(self.bandwidth.discard_before_switch(self))
        if self.bandwidth is not None and self.kind == "video":
            self.bandwidth.on_switch()  # the new layer's keyframe leaves gently (ViewerBandwidth.on_switch)
        self.munger.switch_to(packet.sequence_number, packet.timestamp, time.monotonic(), key)
        if self.codec_munger is not None and descriptor is not None:
            self.codec_munger.switch_to(descriptor, key)
        if old is not None:
            self.switches += 1
            if old is not self.target:
                old.unsubscribe(self)
        if self.on_switch is not None:
            self.on_switch(self)

    def _unsend(self, dropped: list) -> None:
        """Queued packets the pacer dropped at a switch (`ViewerBandwidth.discard_before_switch`, oldest first) never
        left: the new layer takes their sequence numbers and the sender report's counts (RFC 3550 §6.4.1) leave
        them out."""
        if not dropped:
            return
        self.munger.unsend(dropped[0][2])
        self._packets_sent -= len(dropped)
        self._octets_sent -= sum(payload_size(packet[1]) for packet in dropped)

    # ---- viewer feedback ---------------------------------------------------------------------------
    def on_nack(self, lost: list[int]) -> None:
        """Resend what the viewer lost: on RTX when negotiated (RFC 4588 §4), else the packet again."""
        self.settle()  # unmap reads the munger's newest outgoing value
        layers = self.source.layers
        now = time.monotonic()
        video = self.kind == "video"
        for out_seq in lost:
            if video and not self.munger.since_switch(out_seq):
                # Sent before the last layer switch: the viewer's decoder restarts at the switch's keyframe,
                # so the packet is useless, and resending it (often a big packet of the higher layer left
                # behind for lack of bandwidth) would only congest the link again.
                metrics.count_drop("nack_before_switch")
                continue
            origin = self.munger.unmap(out_seq)
            index = origin.layer - self._source_key if origin is not None else -1
            packet = layers[index].packet(origin.seq) if 0 <= index < len(layers) else None
            if packet is None:
                metrics.count_drop("nack_not_in_history")
                continue
            if not self._budget.allow(out_seq, len(packet.data), self.octets_sent, now, self._estimate_bps()):
                metrics.count_drop("nack_over_budget")
                continue
            out_ts = (packet.timestamp + origin.ts_offset) & 0xFFFFFFFF
            template = self.profile.build(packet)
            parse = self.source.parse_descriptor
            if parse is not None and self.codec_munger is not None:
                payload = packet.data[packet.payload_offset : packet.payload_end]
                descriptor = parse(payload)
                rewritten = self._rewrite_payload(template, payload, descriptor) if descriptor is not None else None
                if rewritten is None:
                    metrics.count_drop("nack_not_in_history")
                    continue
                template = rewritten
            if self.profile.rtx_payload_type is not None and self.rtx_ssrc is not None:
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
                rtx = self.profile.as_rtx(template, packet.payload_end - packet.payload_offset, out_seq)
                sent = self._send(rtx, self._rtx_seq, out_ts, self.rtx_ssrc)
            else:
                sent = self._send(template, out_seq, out_ts, self.ssrc)
            if sent:
                self.retransmissions += 1
                metrics.RETRANSMISSIONS.inc()

    def _estimate_bps(self) -> int:
        bandwidth = self.bandwidth
        return bandwidth.estimator.estimate_bps if bandwidth is not None and bandwidth.transport_cc else 0

    def on_keyframe_request(self) -> None:
        self.keyframe_requests += 1
        layer = self.target or self.current
        if layer is not None:
            layer.request_keyframe()

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
                (rtp_timestamp + self.munger.ts_offset) & 0xFFFFFFFF,
                self.packets_sent & 0xFFFFFFFF,
                self.octets_sent & 0xFFFFFFFF,
            )
            + build_sdes_cname(self.ssrc, self.cname)
        )

    def stats(self) -> dict:
        return {
            "kind": self.kind,
            "codec": self.source.codec.name,
            "ssrc": self.ssrc,
            "layer": self.current.rid if self.current is not None else None,
            "target_layer": self.target.rid if self.target is not None else None,
            "reason": self.reason,
            "switches": self.switches,
            "temporal_layer": self.temporal_layer,
            **(self.bandwidth.stats() if self.bandwidth is not None and self.kind == "video" else {}),
            "packets_sent": self.packets_sent,
            "octets_sent": self.octets_sent,
            "retransmissions": self.retransmissions,
            "lane": self.armed_in is not None,  # forwarded by a C lane (gateway/_srtp_send.c LaneGroup)
            "fraction_lost": self.fraction_lost,
            "jitter": self.jitter,
        }


class LayerDownTrack(DownTrack):
    """One simulcast layer, always the same one, to a relay (an edge gateway pulling every layer, gateway/relay.py).

    A relay session has one LayerDownTrack per layer, each on its own SSRC with the layer's rid header extension
    (RFC 8853 §5.1 sender side, RFC 8852), so the edge demultiplexes them like a publisher's layers. No switching:
    while the layer is paused at the origin its SSRC is silent, exactly as the publisher's is.
    """

    def __init__(self, source: "PublishedTrack", profile: EgressProfile, *, rid: str, **kwargs: object) -> None:
        super().__init__(source, profile, **kwargs)  # type: ignore[arg-type]
        self.rid = rid

    def choose(self) -> Optional["Layer"]:
        self.reason = f"relay of layer {self.rid}"
        return self.source.by_rid.get(self.rid)
