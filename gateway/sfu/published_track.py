"""One published track (one audio or video m= section of a WHIP session) and its fan-out.

A track has one Layer per encoding: one for a plain track, one per rid for simulcast (RFC 8853). Each packet
is accounted by its layer (simulcast/layer.py), then handed synchronously to the DownTracks subscribed to that
layer: each viewer receives exactly one layer, switching at keyframes (gateway/sfu/down_track.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Optional

from gateway import metrics
from gateway.aiortc_adapter import LaneGroup
from gateway.rtp import RtpPacket
from gateway.sfu.egress import PACED_HEADER_BYTES, EgressProfile, Template
from simulcast import vp8, vp9
from simulcast.layer import Layer
from whep.layer_request import LayerRequest, choose_layer

if TYPE_CHECKING:
    from typing import Callable

    from gateway.sdp import Codec
    from gateway.sfu.down_track import DownTrack

log = logging.getLogger(__name__)

# libwebrtc makes at most one keyframe on request per 300 ms for all of a sender's layers and drops the requests in
# between (video/encoder_rtcp_feedback.cc kMinKeyframeSendIntervalMs, one time_last_intra_request_ms_); with a
# margin for the requests' jitter on the way.
PUBLISHER_KEYFRAME_GAP = 0.35
# A layer that viewers receive and that has sent nothing for this long, and for FALLBACK_KEYFRAME_FRAMES of its
# usual picture intervals, has probably been turned off by its encoder (a browser drops its top layer when its own
# estimate falls, or on RTCRtpSender.setParameters active=false). Half of simulcast/layer.py's LAYER_TIMEOUT, after
# which it is declared dead: see `_prepare_fallback`. Under 12 pictures a second a layer is suspected only after 3
# of its picture intervals, and under 6 (a screen share of still content) never: its gaps are its frame rate, not
# an encoder that stopped.
FALLBACK_KEYFRAME_SILENCE = 0.25
FALLBACK_KEYFRAME_FRAMES = 3
SR_SLICE = 32  # viewers sent a translated sender report per event-loop turn (on_sender_report)


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
        rids: Optional[list[str]],
        history_size: int,
        keyframe_interval: float,
        local_ssrc: int,
        send_rtcp: "Callable[[bytes], int]",
    ) -> None:
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.codec_key = codec.name.lower()
        self.payload_type = codec.payload_type
        self.rtx_payload_type = rtx_payload_type
        self.extensions = extensions  # publisher's uri -> id
        self.simulcast = bool(rids)
        self.layers = [
            Layer(
                kind=kind,
                codec_key=self.codec_key,
                clock_rate=codec.clock_rate,
                rid=rid,
                offer_index=i,
                history_size=history_size,
                nack_enabled="nack" in feedback,
                pli_enabled="nack pli" in feedback,
                fir_enabled="ccm fir" in feedback,
                keyframe_interval=keyframe_interval,
                local_ssrc=local_ssrc,
                send_rtcp=send_rtcp,
            )
            for i, rid in enumerate(rids or [None])
        ]
        self.by_rid = {layer.rid: layer for layer in self.layers if layer.rid is not None}
        # VP8/VP9 carry picture ids that must stay continuous across a viewer's layer switches.
        self.parse_descriptor = {"vp8": vp8.parse_descriptor, "vp9": vp9.parse_descriptor}.get(self.codec_key)
        self.down_tracks: tuple["DownTrack", ...] = ()
        # Viewers waiting for a keyframe of their target layer. Chromium honours one keyframe request per 300 ms
        # per simulcast sender (and then makes one on every layer), so a request can be lost to an earlier one:
        # refresh() asks again, rate limited per layer, until each has switched.
        self.switching: set["DownTrack"] = set()
        self._profiles: dict[tuple, EgressProfile] = {}
        # Per layer (by offer_index): the C lane groups of its armed viewers, one per egress profile (DownTrack._arm).
        self._lanes: list[dict[EgressProfile, object]] = [{} for _ in self.layers]
        # Per layer: (the subscribers tuple it was made from, those subscribers no lane forwards), so the Python loop
        # does not step over hundreds of armed viewers per packet. Layer replaces its subscribers tuple when it
        # changes (rebuilt then); a DownTrack that arms or leaves a lane calls lane_changed, which patches it.
        self._unarmed: list[tuple[tuple, tuple]] = [((), ()) for _ in self.layers]
        self.on_layers_changed: list["Callable[[PublishedTrack], None]"] = []

    # ---- the fan-out -------------------------------------------------------------------------------
    def on_packet(self, layer: Layer, packet: RtpPacket, now: float) -> None:
        keyframe = layer.accept(packet, now)
        if keyframe is None:
            return
        if keyframe and self.simulcast and layer.size is not None:
            self._order_layers()
        subscribers = layer.subscribers
        if not subscribers:
            return
        descriptor = payload = None
        if self.parse_descriptor is not None:
            payload = packet.data[packet.payload_offset : packet.payload_end]
            descriptor = self.parse_descriptor(payload)
        templates: dict[EgressProfile, Template] = {}
        lanes = self._lanes[layer.offer_index]
        sent = self._send_on_lanes(lanes, templates, packet, now, descriptor) if lanes else 0
        for down in self._python_subscribers(layer):  # after the lanes: one that just left takes the packet here
            profile = down.profile
            template = templates.get(profile)
            if template is None:
                template = templates[profile] = profile.build(packet)
            try:
                sent += down.forward(template, packet, layer, keyframe, descriptor, payload)
            except Exception:  # one viewer's failure (e.g. an SRTP error) must not cost the others the packet
                metrics.count_drop("forward_error")
                log.exception("forwarding to a viewer failed")
        metrics.forwarded_packets[self.kind] += sent

    def _send_on_lanes(self, lanes: dict, templates: dict, packet: RtpPacket, now: float, descriptor: object = None) -> int:
        """The armed viewers of this packet's layer, one C call per egress profile. A lane that cannot take the
        packet leaves its group first (its state comes back to its DownTrack), so the loop in on_packet forwards
        it the Python way. A packet a transport-cc viewer's pacer holds back comes back "deferred" (already mapped
        into the viewer's sequence space) and waits in that pacer's queue."""
        sent = 0
        seq, ts = packet.sequence_number, packet.timestamp
        size = packet.payload_end - packet.payload_offset
        fields = vp8.lane_fields(descriptor) if descriptor is not None and self.codec_key == "vp8" else None
        for profile, group in lanes.items():
            if not group:
                continue
            template = templates.get(profile)
            if template is None:
                template = templates[profile] = profile.build(packet)
            try:
                sent += group.send(template[0], template[1], template[2], seq, ts, now, size,
                                   len(template[2]) + PACED_HEADER_BYTES, fields)
                failed = False
            except Exception:  # e.g. a packet too long for the compiled path: every lane goes the Python way
                metrics.count_drop("forward_error")
                log.exception("forwarding on a lane group failed")
                failed = True
            if group.deferred:
                for down, out_seq, out_ts, rest in group.take_deferred():
                    sent += down.defer(template, out_seq, out_ts, size, rest)
            if group.failed:
                for down, state in group.take_failed():
                    down.lane_left(state)
            if failed:
                for down in self.down_tracks:
                    if down.armed_in is group:
                        down.settle()
            if group.drops:
                full, failed = group.take_drops()
                if full:
                    metrics.count_drop("egress_socket_full", full)
                if failed:
                    metrics.count_drop("egress_send_failed", failed)
        return sent

    def _python_subscribers(self, layer: Layer) -> tuple["DownTrack", ...]:
        """`layer`'s subscribers that no lane forwards (cached until the layer's subscribers change; lane_changed
        keeps it current as viewers arm and leave lanes)."""
        index = layer.offer_index
        source, unarmed = self._unarmed[index]
        subscribers = layer.subscribers
        if source is not subscribers:
            unarmed = tuple(down for down in subscribers if down.armed_in is None)
            self._unarmed[index] = (subscribers, unarmed)
        return unarmed

    def lane_changed(self, down: "DownTrack") -> None:
        """`down` armed a lane or left one: patch the unarmed subscribers of the layers it subscribes to, in
        O(unarmed) rather than rebuilding from every subscriber (each lane leaves every LANE_LEASE packets, so with
        500 viewers a rebuild of 500 came with almost every packet: ~2% of the core in py-spy)."""
        armed = down.armed_in is not None
        for layer, (subscribers, unarmed) in zip(self.layers, self._unarmed):
            if down not in layer.subscriber_set:  # not subscribed now: a cache made while it was is rebuilt anyway
                continue
            index = layer.offer_index
            if armed:
                if down in unarmed:
                    self._unarmed[index] = (subscribers, tuple(d for d in unarmed if d is not down))
            elif down not in unarmed:
                self._unarmed[index] = (subscribers, unarmed + (down,))

    def lane_group(self, layer: Layer, profile: EgressProfile) -> object:
        """The C lane group of `layer`'s viewers with `profile` (made on first use)."""
        lanes = self._lanes[layer.offer_index]
        group = lanes.get(profile)
        if group is None:
            group = lanes[profile] = LaneGroup()
        return group

    # ---- layers ------------------------------------------------------------------------------------
    @property
    def ordered_layers(self) -> list[Layer]:
        """Lowest to highest spatial layer."""
        return sorted(self.layers, key=lambda layer: layer.spatial_id)

    def _order_layers(self) -> bool:
        """Order by what layers carry: picture area when known (from keyframes), else measured bitrate."""
        ranked = sorted(
            self.layers,
            key=lambda l: ((l.size[0] * l.size[1]) if l.size else 0, l.bitrate, -l.offer_index if l.rid else 0),
        )
        changed = False
        for spatial_id, layer in enumerate(ranked):
            if layer.spatial_id != spatial_id:
                layer.spatial_id = spatial_id
                changed = True
        return changed

    def refresh(self, now: float) -> bool:
        """Every 50 ms: rates, liveness and order; viewers move when a layer dies or appears; pending switches
        get their keyframe request repeated."""
        changed = False
        for layer in self.layers:
            changed |= layer.refresh(now)
        changed |= self._order_layers()
        if self.simulcast:
            self._prepare_fallback(now)
        if changed:
            for down in self.down_tracks:
                down.retarget()
            for callback in self.on_layers_changed:
                callback(self)
        for down in self.switching:
            target = down.target
            if target is not None and target.active and not target.request_keyframe(now):
                self._ask_again_if_ignored(target, now)
        return changed

    def _prepare_fallback(self, now: float) -> None:
        """A layer with viewers that has been silent for FALLBACK_KEYFRAME_SILENCE and FALLBACK_KEYFRAME_FRAMES of its
        picture intervals (not yet LAYER_TIMEOUT, when it is declared dead): ask the highest live layer below it for a
        keyframe now, once per silence. When the silent layer is declared dead its viewers switch at that keyframe at
        once (DownTrack._resume_at_held_keyframe) instead of asking only then and waiting a round trip plus the
        encoder's keyframe: the freeze is about LAYER_TIMEOUT, not LAYER_TIMEOUT plus a keyframe. If the layer was
        only pausing, this cost one keyframe on the layer below."""
        for layer in self.layers:
            silent_since = layer.last_packet
            silence = now - silent_since
            if (
                not layer.active
                or not layer.subscribers
                or silence < FALLBACK_KEYFRAME_SILENCE
                or silence * layer.frame_rate < FALLBACK_KEYFRAME_FRAMES
                or layer.fallback_asked_at == silent_since
            ):
                continue
            layer.fallback_asked_at = silent_since
            below = [
                l for l in self.layers
                if l.active and l.spatial_id < layer.spatial_id and now - l.last_packet < FALLBACK_KEYFRAME_SILENCE
            ]
            if below:
                max(below, key=lambda l: l.spatial_id).request_keyframe(now)

    def _ask_again_if_ignored(self, layer: Layer, now: float) -> None:
        """A publisher makes at most one keyframe per PUBLISHER_KEYFRAME_GAP for all its layers (libwebrtc's
        EncoderRtcpFeedback drops the requests in between), so a request for this layer sent within that gap after
        one for another layer (a viewer moved down two layers in two steps, as after an over-estimated capacity
        drop) was most likely dropped. Ask again as soon as the gap has passed, not after our own interval
        (`keyframe_request_interval`): the viewer is waiting for that keyframe to switch."""
        mine = layer.last_keyframe_request
        for other in self.layers:
            theirs = other.last_keyframe_request
            if other is not layer and 0 <= mine - theirs < PUBLISHER_KEYFRAME_GAP <= now - theirs:
                layer.request_keyframe(now, again=True)
                return

    def best_layer(self) -> Optional[Layer]:
        """Automatic choice until bandwidth estimation exists: the highest layer that is alive."""
        alive = [layer for layer in self.layers if layer.active]
        if not alive:
            return self.layers[0] if len(self.layers) == 1 else None
        return max(alive, key=lambda layer: layer.spatial_id)

    def pinned_layer(self, request: "LayerRequest") -> Optional[Layer]:
        """The layer a WHEP layer request names (whep/layer_request.py rules); ValueError if it names none."""
        chosen = choose_layer(request, [layer.as_info() for layer in self.layers])
        if chosen is None:
            return None
        return next(layer for layer in self.layers if layer.spatial_id == chosen.spatial_id)

    # ---- viewers -----------------------------------------------------------------------------------
    def profile(self, profile: EgressProfile) -> EgressProfile:
        """The shared instance equal to `profile`, so viewers alike share one header per packet."""
        return self._profiles.setdefault(profile.key, profile)

    def attach(self, down: "DownTrack") -> None:
        self.down_tracks = self.down_tracks + (down,)

    def detach(self, down: "DownTrack") -> None:
        down.settle()
        self.down_tracks = tuple(d for d in self.down_tracks if d is not down)
        self.switching.discard(down)
        for layer in self.layers:
            layer.unsubscribe(down)

    def on_sender_report(self, layer: Layer, ntp_timestamp: int, rtp_timestamp: int, arrival: float) -> None:
        """Keep LSR for our reports; translate the SR for the viewers receiving this layer (RFC 3550 §6.4.1).

        Each viewer's SR is built, protected and sent in Python (~16 µs), so 500 viewers would hold the event loop
        ~8 ms (py-spy in bench/load.py), once per SR (browsers: every second on video), every packet arriving
        meanwhile waiting for it. So the fan-out goes SR_SLICE viewers per event-loop turn, the packets that came
        meanwhile forwarded in between. An
        SR's NTP/RTP pair is a mapping, not a "now" (§6.4.1), so a viewer reached a few ms later gets the same pair
        (the newest the layer has)."""
        layer.stats.on_sender_report(ntp_timestamp, arrival)
        layer.sender_report = (ntp_timestamp, rtp_timestamp)
        downs = [down for down in layer.subscribers if down.current is layer]
        self._send_sender_reports(layer, downs, 0)

    def _send_sender_reports(self, layer: Layer, downs: list["DownTrack"], start: int) -> None:
        ntp_timestamp, rtp_timestamp = layer.sender_report  # type: ignore[misc]
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (pure unit use): every viewer now
            loop = None
        stop = start + SR_SLICE if loop is not None else len(downs)
        for down in downs[start:stop]:
            if down.current is layer:  # it may have switched layer or left since the round began
                down.send_sender_report(ntp_timestamp, rtp_timestamp)
        if loop is not None and stop < len(downs):
            loop.call_soon(self._send_sender_reports, layer, downs, stop)

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "mid": self.mid,
            "codec": self.codec.name,
            "simulcast": self.simulcast,
            "viewers": len(self.down_tracks),
            "layers": [layer.info() for layer in self.ordered_layers],
        }
