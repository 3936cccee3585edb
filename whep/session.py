"""A WHEP viewer session: the DownTracks one viewer receives, and that viewer's RTCP feedback.

Packet path (egress half): PublishedTrack.on_packet -> DownTrack.forward (rewrite in place) ->
PeerTransport.send_rtp (SRTP protect + sendto on the nominated pair). Viewer RTCP comes back here:
NACK -> retransmit from the track's history, PLI/FIR -> rate-limited keyframe request upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional

from gateway import metrics
from gateway.config import Config
from gateway.peer_session import PeerSession
from gateway.rtcp import (
    FullIntraRequest,
    GenericNack,
    PictureLossIndication,
    ReceiverReport,
    Remb,
    SenderReport,
    TransportCcFeedback,
    lone_transport_cc_fci,
    parse_or_count,
)
from gateway.sdp import Offer
from gateway.sfu.down_track import DownTrack, LayerDownTrack
from gateway.sfu.published_track import PublishedTrack
from gateway.sfu.stream import Stream
from whep.events import ViewerEvents, extension_links
from whep.layer_request import LayerRequest, layers_event
from simulcast.viewer_bandwidth import ViewerBandwidth
from whep.offer_answer import DownTrackPlan, negotiate_play

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
            (DownTrack(p.source, p.profile, **self._down_args(p)) if p.rid is None
             else LayerDownTrack(p.source, p.profile, rid=p.rid, **self._down_args(p)))
            for p in plan.down_tracks
        ]
        # A relay (an edge pulling every layer) gets fixed layers: no estimate picks them.
        self.relay = any(isinstance(d, LayerDownTrack) for d in self.down_tracks)
        self.relay_for: Optional[str] = None  # a relay's pull: who pulls (its Whipgate-Relay header, gateway/relay.py)
        # Per-viewer bandwidth estimation (send-side, from transport-wide CC feedback; REMB/RR as fallback).
        transport_cc = any(d.profile.transport_cc_id is not None for d in self.down_tracks)
        self.bandwidth = ViewerBandwidth(transport_cc=transport_cc)
        self.bandwidth.forwarded_bps = self._video_bps
        self._estimate_layers = config.rtc.bandwidth_estimation and not self.relay
        for down in self.down_tracks:
            down.bandwidth = self.bandwidth
        self._probe_task: Optional[asyncio.Task[None]] = None
        self._by_ssrc: dict[int, DownTrack] = {}
        for down in self.down_tracks:
            self._by_ssrc[down.ssrc] = down
            if down.rtx_ssrc is not None:
                self._by_ssrc[down.rtx_ssrc] = down
        # WHEP extensions (draft-ietf-wish-whep-02 §4.9): server-sent events and layer selection.
        self.events = ViewerEvents()
        self.video = next((d for d in self.down_tracks if d.kind == "video"), None)
        self._video_mline = next((str(m.index) for m in offer.media if m.kind == "video"), "0")
        if self.video is not None:
            self.video.on_switch = self._switched
            self.video.source.on_layers_changed.append(self._layers_changed)
        self.events.publish("active", {})

    def _video_bps(self) -> int:
        """The measured bitrate of the video this viewer is forwarded (ViewerBandwidth's pacing floor): per video
        track the lower of its current and target layers, so a downgrade counts from its decision, an upgrade from
        its switch."""
        total = 0
        for down in self.down_tracks:
            if down.kind == "video":
                rates = [layer.bitrate for layer in (down.current, down.target) if layer is not None]
                if rates:
                    total += min(rates)
        return total

    def _down_args(self, plan: "DownTrackPlan") -> dict:
        return dict(ssrc=plan.ssrc, rtx_ssrc=plan.rtx_ssrc, cname=self.cname,
                    send_rtp=self.transport.send_rtp, send_rtcp=self.transport.send_rtcp,
                    native_sender=self.transport.native_sender)

    def extension_links(self) -> list[tuple[str, str]]:
        return extension_links(self.location)

    def on_connected(self) -> None:
        if self.video is not None and self.video.source.simulcast and self._estimate_layers:
            self.bandwidth.select(self.video.source.layers)  # the first layer must fit the initial estimate
        for down in self.down_tracks:
            down.start()
        self.publish_layers()

    # ---- bandwidth ---------------------------------------------------------------------------------
    def _reselect(self) -> None:
        """After feedback: the layer the estimate carries (unless the viewer pinned one), probes for upgrades."""
        down = self.video
        if down is None or not down.source.simulcast or not down.active or not self._estimate_layers:
            return
        if log.isEnabledFor(logging.DEBUG):
            e = self.bandwidth.estimator
            log.debug(
                "viewer %s: estimate %d kbit/s (delay %d, loss %d), acknowledged %d, %s/%s, loss %.2f (last feedback "
                "%d lost of %d), rtt %d ms, queue %d ms",
                self.id, e.estimate_bps // 1000, e.delay_based_bps // 1000, e.loss_based_bps // 1000,
                e.acknowledged_bps // 1000, e.state, e.signal, e.loss, e.last_lost, e.last_lost + e.last_received,
                e.rtt_us // 1000, e.queuing_delay_us // 1000,
            )
        if (down.pinned is None or down.pinned.is_automatic) and self.bandwidth.select_due(down.source.layers):
            before = self.bandwidth.choice
            choice = self.bandwidth.select(down.source.layers)
            if before is None or choice[:2] != before[:2]:
                e = self.bandwidth.estimator
                log.info(
                    "viewer %s: layer %d/%d (%s); estimate %d kbit/s, acknowledged %d kbit/s, %s",
                    self.id, choice[0], choice[1], choice[2], e.estimate_bps // 1000, e.acknowledged_bps // 1000, e.reason,
                )
                down.set_temporal_target(choice[1])
                down.retarget()
                self.bandwidth.repace()
                self.publish_layers()
        if self.bandwidth.probing and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.create_task(self._send_probe())

    async def _send_probe(self) -> None:
        """Pace one probe cluster's padding (a few tens of ms), then stop: a task per cluster, not per packet."""
        down = self.video
        deadline = time.monotonic() + 0.2
        while down is not None and self.bandwidth.probing and not self.ended and time.monotonic() < deadline:
            # Everything due since the last tick: a late tick (a busy loop) must not make the probe slower than its
            # target rate, or it would measure our sending instead of the path and fail.
            needed = self.bandwidth.padding_needed()
            if needed > 0 and not down.send_padding(min(needed, 16_000)):
                return
            await asyncio.sleep(0.002)

    # ---- layers and events -------------------------------------------------------------------------
    def _switched(self, down: DownTrack) -> None:
        """The viewer now receives another layer (at its keyframe): tell the viewer, log and count the wait."""
        metrics.LAYER_SWITCHES.labels(down.reason.split(":")[0]).inc()
        metrics.LAYER_SWITCH_WAIT.observe(down.last_switch_wait)
        log.info(
            "viewer %s: now on layer %s (%s), %d ms after it was chosen (keyframe wait)",
            self.id, down.current.rid if down.current is not None else None, down.reason, down.last_switch_wait * 1000,
        )
        self.publish_layers()


    def _layers_changed(self, track: PublishedTrack) -> None:
        self.publish_layers()

    def publish_layers(self) -> None:
        """The `layers` event (§4.9.1.3): the stream's layers and which one this viewer receives and why."""
        down = self.video
        if down is None or self.ended:
            return
        current = down.current.as_info() if down.current is not None else None
        target = down.target.as_info() if down.target is not None else None
        pinned = down.pinned is not None and not down.pinned.is_automatic
        infos = [layer.as_info() for layer in down.source.layers]
        data = layers_event(infos, current, target, pinned, down.reason, media_id=self._video_mline)
        if self._estimate_layers:
            # Ours, next to the reason: the estimate behind this viewer's automatic choice (§4.9.1.3 has no field).
            data["selection"][self._video_mline]["estimateBps"] = self.bandwidth.estimator.estimate_bps
        self.events.publish("layers", data)

    def pin(self, request: LayerRequest) -> None:
        """§4.9.2 layer selection; ValueError (LayerNotFound) when the request names no layer of this stream."""
        if self.video is None:
            raise ValueError("this session receives no video")
        temporal = request.temporal_layer_id is not None or request.max_temporal_layer_id is not None
        if temporal and self.video.codec_munger is None:
            raise ValueError(f"temporal layer selection needs VP8 or VP9; this stream sends {self.video.source.codec.name}")
        self.video.source.pinned_layer(request)  # validates: raises for an unknown rid / spatial layer
        self.video.pin(request)
        self.bandwidth.repace()
        self.publish_layers()

    # ---- the publisher leaves and another takes its place (gateway/sfu/stream.py) ----------------------
    def source_left(self) -> None:
        """The stream lost its publisher: stop forwarding, keep the counters, tell the player (§4.9.1.2)."""
        for down in self.down_tracks:
            down.unbind()
        if self.video is not None and self._layers_changed in self.video.source.on_layers_changed:
            self.video.source.on_layers_changed.remove(self._layers_changed)
        self.events.publish("inactive", {})

    def rebind(self, tracks: list[PublishedTrack]) -> Optional[str]:
        """Receive `tracks` (a new publisher's) from now on; the reason when this viewer cannot decode them.

        Each DownTrack moves to the new track of its kind (`DownTrack.rebind`: continuous sequence numbers,
        timestamps and picture ids, a keyframe requested). A kind the new publisher does not send stays silent.
        All or nothing: a codec this viewer did not negotiate for any kind refuses the whole rebind."""
        moves = []
        for down in self.down_tracks:
            new = next((t for t in tracks if t.kind == down.kind), None)
            if new is None:
                log.info("viewer %s: the new publisher of %s sends no %s", self.id, self.stream_name, down.kind)
                down.unbind()
                continue
            if not down.accepts(new):
                return (
                    f"the new publisher sends {down.kind} {new.codec.name}, this viewer negotiated "
                    f"{down.source.codec.name} and cannot decode it"
                )
            moves.append((down, new))
        if self.video is not None and self._layers_changed in self.video.source.on_layers_changed:
            self.video.source.on_layers_changed.remove(self._layers_changed)
        for down, new in moves:
            down.rebind(new)
        if self.video is not None:
            self.video.source.on_layers_changed.append(self._layers_changed)
        self.events.publish("active", {})
        self.publish_layers()
        return None

    def on_rtp(self, data: bytes, arrival_ms: int) -> None:
        metrics.count_drop("rtp_from_viewer")  # viewers answer recvonly; nothing to forward

    def on_rtcp(self, data: bytes) -> None:
        fci = lone_transport_cc_fci(data)
        if fci is not None:  # a browser's feedback on its own: straight to the estimator
            self.bandwidth.on_feedback(fci)
            self._reselect()
            return
        packets = parse_or_count(data)
        by_ssrc = self._by_ssrc
        feedback = False
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
            elif isinstance(packet, TransportCcFeedback):
                self.bandwidth.on_feedback(packet.raw)
                feedback = True
            elif isinstance(packet, Remb):
                self.bandwidth.on_remb(packet.bitrate)
                feedback = True
            elif isinstance(packet, (ReceiverReport, SenderReport)):
                for block in packet.reports:
                    down = by_ssrc.get(block.ssrc)
                    if down is not None:
                        down.on_receiver_report(block.fraction_lost, block.jitter)
                        if down is self.video and not self.bandwidth.transport_cc:
                            self.bandwidth.on_receiver_report(block.fraction_lost)
                            feedback = True
        if feedback:
            self._reselect()

    async def close(self, reason: str) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        self.bandwidth.close()
        for down in self.down_tracks:
            down.stop()
        if self.video is not None and self._layers_changed in self.video.source.on_layers_changed:
            self.video.source.on_layers_changed.remove(self._layers_changed)
        self.events.publish("inactive", {})
        self.events.close()
        await super().close(reason)

    def layer_summary(self) -> tuple[int, str, str]:
        """(estimate bps, or 0 without estimation; the video layer received; why) for /metrics."""
        down = self.video
        estimate = self.bandwidth.estimator.estimate_bps if self._estimate_layers else 0
        if down is None or down.current is None:
            return estimate, "none", "no video"
        layer = down.current.rid or str(down.current.spatial_id)
        return estimate, layer, down.reason.split(":")[0]

    def info(self) -> dict:
        return super().info() | {"relay_for": self.relay_for, "tracks": [d.stats() for d in self.down_tracks]}
