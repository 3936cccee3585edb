"""One viewer's bandwidth: transport-wide sequence numbers, send log, estimator, prober and layer choice.

A ViewerSession owns one ViewerBandwidth shared by its DownTracks (transport-wide means every packet on the
viewer's transport: audio, video, RTX, padding). The forwarding path calls `next_seq` and `sent` per packet;
the viewer's RTCP feeds `on_feedback` (TWCC), `on_remb` and `on_receiver_report`; after each feedback the session
asks `select` for the layer the estimate allows (simulcast/bwe.py holds the GCC-style estimator and selector).

The per-packet state (next transport-wide seq, send log rings, pacer bucket) sits in arrays that the viewer's C
lanes (gateway/_srtp_send.c) share through `native`, a TransportWide: a lane stamps, logs and paces like
DownTrack._send, on the same counters. While a probe cluster is sending, `counters[PROBING]` sends every packet
the Python way (the prober counts what each cluster carries).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from array import array
from typing import TYPE_CHECKING, Callable, Optional

from gateway import metrics
from gateway.aiortc_adapter import FeedbackMatcher, TransportWide
from simulcast.bwe import LayerSelector, Pacer, Prober, SendLog, SendSideEstimator

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gateway.sfu.down_track import DownTrack
    from gateway.sfu.egress import Template
    from simulcast.layer import Layer

INITIAL_BPS = 1_000_000  # the estimate before any feedback: the layer chosen at join must fit it
MAX_BPS = 20_000_000
SEND_LOG_SLOTS = 4096  # a transport-cc viewer's send log (see ViewerBandwidth.__init__)
PACING_FACTOR = 2.5  # GCC §4 / libwebrtc's pacing factor
CONGESTED_PACING_FACTOR = 1.2  # ours: while over-used, holding or losing more than CONGESTED_LOSS
CONGESTED_LOSS = 0.02
# Ours (issue #4): after a capacity drop, video waits until the feedback shows that what was sent before it has
# left the bottleneck's queue (a packet sent after the drop was received), at most this long. See `_drain_queue`.
DRAIN_HOLD_MAX_US = 300_000
# Ours (issue #4): on the estimator's early warning (`SendSideEstimator.queue_suspected_us`: a queue building behind
# a bottleneck that delivers at most half of what it carried, over a run too short for the capacity-drop check), video
# waits until a feedback finds the drop or shows the queue gone, at most this long. See `_hold_early`.
EARLY_HOLD_MAX_US = 200_000
DRAIN_PACING_FACTOR = 1.0  # ... and what waited then leaves at the estimate, not above it...
# ... until the pacer's queue is empty, or this long after the drop at the latest. When the video still forwarded runs
# above the estimate (the estimate fell below even the lowest layer) the queue never empties at the estimate, and a
# drain without an end would let it outgrow the pacer's limit and lose its oldest packets, which the viewer counts
# lost. (bench/bwe_cuts.py once showed 34 such drops in a cut after a two-step downgrade, its viewer losing 22% of
# its video; this is the one way found for that queue to grow so long.) After it the pacer runs at least at the
# forwarded layer's rate (`_pace`).
DRAIN_MAX_US = 1_000_000
# Ours (issue #4): after a layer switch (the viewer's first layer included) the new layer's keyframe, often ten or
# more times a frame, leaves at CONGESTED_PACING_FACTOR x the estimate for this long. See `on_switch`.
SWITCH_PACING_US = 500_000
# Ours (issue #4): no probe for a higher layer starts on a full path: the feedback RTT this much or more above its
# minimum (the estimator's `can_probe` allows up to 100 ms) while the viewer acknowledges at least PATH_FULL_SHARE of
# the estimate. The layer a forwarding SFU sends has the publisher's rate, not the estimate's: with a standing queue
# and the estimate at or below what arrives, it already fills the path, there is no headroom to find, and the probe's
# padding lands on that queue. A 700 kbit/s viewer on the ~0.55 Mbit/s middle layer read 15-100 ms (median 36, tbf's
# limit 100 ms), estimate ~510 kbit/s, acknowledged ~650; its 60 ms probe for the top layer overflowed the queue and
# the media behind the padding was lost (21 of 39 packets in one feedback), which moved it down. An idle path reads
# 7-13 ms here (the RTT's own noise: feedback timing, a busy host). The queue alone is not enough: on a path whose RTT
# jitters (Wi-Fi, cellular) its smoothed excess over the minimum can stay above 25 ms with the path far from full, and
# a queue rule alone would then never let the viewer move up.
PROBE_MAX_QUEUE_US = 25_000
PATH_FULL_SHARE = 0.9
NEXT_SEQ, PROBING = 0, 1  # ViewerBandwidth.counters (gateway/_srtp_send.c COUNTER_*)
# Ours (issue #6): after a feedback the layer choice runs again at once only when the estimate fell below the one
# the last choice was made with, or a layer went alive or dead; else at most this often. See `select_due`.
RESELECT_INTERVAL_US = 200_000


def now_us() -> int:
    return time.monotonic_ns() // 1000


def _liveness(layers: list["Layer"]) -> tuple[bool, ...]:
    """Which layers are alive, as `select_due` compares it. A tuple of bools: the collector untracks it, so the one
    each viewer keeps per choice never reaches gen2 (BENCHMARKS.md, "Full GC passes")."""
    return tuple([layer.active for layer in layers])


class ViewerBandwidth:
    def __init__(self, *, transport_cc: bool) -> None:
        self.transport_cc = transport_cc
        # Only transport-cc viewers have packets logged (DownTrack._send stamps theirs); a viewer without transport-cc
        # gets the smallest log, which nothing writes. The log is 21 bytes a slot, most of what a viewer costs
        # beyond its DTLS and SRTP: SEND_LOG_SLOTS hold ~2 s at MAX_BPS in 1,200-byte packets (~13 s of a 2.5
        # Mbit/s layer with audio), where Chromium's feedback comes every 50-250 ms after the path's queue.
        self.log = SendLog(SEND_LOG_SLOTS if transport_cc else 16)
        # 60 ms clusters: a shorter probe fits inside a shaper's token burst and passes at line rate, which would
        # "prove" a rate the path cannot sustain (seen with tc tbf: a 25 ms probe passed 1.2 Mbit/s on 700 kbit/s).
        # Failed probes back off 1 s, doubling to at most 2 s: while capped a probe every 2 s costs little, and
        # after the cap is lifted the next probe is at most 2 s away (issue #4: upgrade within 5 s of a lift).
        self.prober = Prober(duration_us=60_000, max_backoff_us=2_000_000)
        self.estimator = SendSideEstimator(self.log, prober=self.prober, initial_bps=INITIAL_BPS, max_bps=MAX_BPS)
        # Hold an upgrade 1 s (doubling after flaps, at most 4 s): issue #4 asks for an upgrade within 5 s of a lift.
        # An up-then-down within 3 s counts as a flap (a wrong upgrade); a down later is the path changing.
        self.selector = LayerSelector(up_hold_us=1_000_000, max_up_hold_us=4_000_000, flap_window_us=3_000_000)
        self.counters = array("q", [random.getrandbits(16), 0])  # [next transport-wide seq, probe cluster sending]
        self.choice: Optional[tuple[int, int, str]] = None  # (spatial id, temporal id, reason)
        # GCC §4: the pacer sends at 2.5x the estimate, so a keyframe (tens of packets at once) does not hit the
        # path as one burst, queue up at its bottleneck, read as over-use and lose its tail.
        self.pacer = Pacer(INITIAL_BPS, factor=PACING_FACTOR)
        # The bitrate of the video this viewer is forwarded (bits/s; its session sets it, `_pace`): what the pacer
        # never paces below, whatever the estimate.
        self.forwarded_bps: Optional[Callable[[], int]] = None
        self._drain: Optional[asyncio.TimerHandle] = None
        self._draining_since: Optional[int] = None  # the capacity drop whose queue is draining (µs), see `_drain_queue`
        self._early_hold_since: Optional[int] = None  # the early warning video waits on (µs), see `_hold_early`
        self.early_holds = 0  # early warnings held on, and those the next feedback did not confirm (stats)
        self.early_holds_released = 0
        self.drains_ended_at_limit = 0  # see `_end_drain`
        self._switch_paced_until = 0  # µs; see `on_switch`
        self._probe_after = 0  # µs: no probe cluster starts before this (a layer switch's keyframe is on its way)
        self._switch_timer: Optional[asyncio.TimerHandle] = None
        self._selected_at: Optional[int] = None  # when `select` last ran (µs), with the estimate and liveness it saw
        self._selected_estimate = 0
        self._selected_alive: tuple[bool, ...] = ()
        self.native = (
            TransportWide(*self.log.buffers, self.counters, self.pacer.bucket)
            if TransportWide is not None and transport_cc else None
        )
        if FeedbackMatcher is not None and transport_cc:
            self.estimator.use_matcher(FeedbackMatcher)

    # ---- per packet (the forwarding path) ----------------------------------------------------------
    def next_seq(self) -> int:
        counters = self.counters
        seq = counters[NEXT_SEQ]
        counters[NEXT_SEQ] = (seq + 1) & 0xFFFF
        return seq

    def may_send_now(self, size: int) -> int:
        """The send time (µs, for the `sent` that follows: one clock read per packet) when the pacer lets a packet of
        `size` bytes out now (and charges it); 0 when it must be queued."""
        now = time.monotonic_ns() // 1000
        return now if self.pacer.can_send_now(size, now) else 0

    def enqueue(self, down: "DownTrack", template: "Template", seq: int, timestamp: int, ssrc: int, size: int) -> None:
        """Queue a packet the pacer holds back; its timer sends it (with its transport-wide seq) when due."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (pure unit use): nothing could drain a queue, so send now
            down.send_stamped(template, seq, timestamp, ssrc)
            return
        pacer = self.pacer
        if (self._draining_since is not None and pacer.would_drop(size)
                and self.forwarded_bps is not None and self.forwarded_bps() > self.estimator.estimate_bps):
            self._end_drain(now_us())
        before = pacer.dropped
        pacer.enqueue((down, template, seq, timestamp, ssrc), size)
        if pacer.dropped != before:
            metrics.count_drop("pacer_queue_full")
        if self._drain is None:
            self._schedule(loop)

    def discard_before_switch(self, down: "DownTrack") -> list:
        """`down` is about to forward another layer while a capacity drop's queue drains (`_drain_queue`): its media
        still waiting in the pacer was mapped from the layer it leaves, typically the keyframe of a layer chosen
        from an over-estimated first drop, held behind the hold. Sending it first would delay the new layer's
        keyframe by its whole size on a path that just proved too narrow for it, and the viewer's decoder restarts
        at that keyframe anyway: the packets are dropped and returned, in the order they were mapped, so that the
        caller hands their sequence numbers to the new layer (`RtpMunger.unsend`): the viewer never saw them and
        must not count them lost. The pacer's queue is first in, first out and a track's later packets queue
        behind its earlier ones, so what is dropped is the newest the track mapped. Retransmissions (RTX) of the old
        layer waiting there are dropped as well (DownTrack.on_nack no longer sends those once the switch happened);
        they are not returned: the media sequence numbers are not theirs. At other switches the old layer's queued
        frames still go out (the viewer decodes them until the new keyframe comes)."""
        if not self.pacer.queued_packets or self._draining_since is None:
            return []
        ssrc, rtx_ssrc = down.ssrc, down.rtx_ssrc
        dropped = self.pacer.discard(
            lambda packet: packet[0] is down and (packet[4] == ssrc or packet[4] == rtx_ssrc)  # type: ignore[index]
        )
        if dropped:
            metrics.count_drop("pacer_before_switch", len(dropped))
        return [packet for packet in dropped if packet[4] == ssrc]

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        now = now_us()
        due = self.pacer.next_send_us(now)
        if due is not None:
            self._drain = loop.call_later(max(due - now, 0) / 1_000_000, self._send_due, loop)

    def _send_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain = None
        for down, template, seq, timestamp, ssrc in self.pacer.poll(now_us()):
            if down.active:
                down.send_stamped(template, seq, timestamp, ssrc)
        self._schedule(loop)

    def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        if self._switch_timer is not None:
            self._switch_timer.cancel()
            self._switch_timer = None

    def sent(self, seq: int, size: int, send_time_us: int = 0, padding: bool = False) -> None:
        """Log a packet sent with transport-wide `seq`; `padding`: probe padding (its loss is the probe's, not the
        loss controller's: SendSideEstimator._apply_feedback)."""
        cluster = self.prober.active_cluster
        self.log.record(seq, size, send_time_us or now_us(), cluster, padding)
        if cluster is not None:
            self.prober.on_sent(size)

    # ---- feedback ----------------------------------------------------------------------------------
    def on_feedback(self, fci: bytes) -> None:
        """Transport-wide CC feedback (RTPFB FMT 15) from the viewer."""
        now = now_us()
        try:
            self.estimator.on_feedback_fci(fci, now)
        except ValueError:  # malformed: nothing was changed
            metrics.count_drop("twcc_feedback_malformed")
            return
        early = self._early_hold_since  # an early hold this feedback ends, confirmed or not
        released = self._hold_early(now)
        if self._draining_since is not None or self.estimator.capacity_drop_us == now:
            released = self._drain_queue(now, early or now) or released
        self._pace()
        if released and self._drain is not None:  # the pacer's timer waits for the hold's end: send what is due now
            self._drain.cancel()
            self._drain = None
            self._send_due(asyncio.get_running_loop())

    def _hold_early(self, now: int) -> bool:
        """Hold video on the estimator's early warning (ours, issue #4); True when an early hold ends now unconfirmed.

        After a cut the capacity-drop check needs a run of >= 30 ms and 3 packets; behind a shaper's token bucket
        the first feedback after a cut often ends at the first packet that waited (bench/bwe_cuts.py: a frame's
        first packets passed on the bucket, the next one waited 28 ms), and the check fired one feedback (~60 ms)
        later. Each further frame the old layer sent meanwhile went into a full queue and was lost: the loss of a
        downgrade is what is sent between the cut and the decision. The early warning is the same check over a
        shorter run (SUSPECT_*: down to two packets) with the same guard, so it does not fire on a keyframe burst at
        a viewer whose link carries its layer, nor on a burst released at once after a stall. One packet 15 ms or
        more later than the one sent with it can fire it (a Wi-Fi retry looks the same): that costs about one
        feedback interval of video delay, never a layer.

        On it, video waits in the pacer (audio never does), at most EARLY_HOLD_MAX_US, until a feedback
        - finds the capacity drop: the drain (`_drain_queue`) goes on from the hold's start, and the switch down
          drops what waited (`discard_before_switch`): the viewer never sees a gap for it;
        - or reports a packet sent after the hold's start as received (audio, as the drain's end): the queue in
          front of it has gone, so it was no drop (or one the queue already absorbed), and what waited leaves at
          once, at the pacing rate. Released on the next feedback alone, what waited (~13 KB of the top layer)
          once went into the queue of a cut the check confirmed one feedback later, and was lost.
        Without audio (or with Opus DTX in a silence) nothing sent after the warning can show the queue gone, and a
        warning no drop follows costs the whole EARLY_HOLD_MAX_US. A feedback that ends an early hold does not start
        another one."""
        e = self.estimator
        since = self._early_hold_since
        if since is not None:
            if e.capacity_drop_us == now:
                self._early_hold_since = None
                return False  # `_drain_queue` goes on from the hold's start
            reported = e.reported_since(since)
            if not reported and now - since < EARLY_HOLD_MAX_US:
                return False  # the queue in front of the hold is still there (or no feedback showed it gone)
            self._early_hold_since = None
            self.early_holds_released += 1
            # INFO: a warning no drop followed delayed this viewer's video for nothing; what fired it, for the log.
            log.info("early warning not confirmed after %d ms (%s): its run delivered %d kbit/s against %d kbit/s "
                     "carried, queue %d ms; %d bytes of video leave", (now - since) // 1000,
                     "a packet sent after it was reported" if reported else "no feedback showed that",
                     e.queue_suspected_bps // 1000, e.acknowledged_bps // 1000, e.queuing_delay_us // 1000,
                     self.pacer.queued_bytes)
            self.pacer.release(now)
            return True
        if (e.queue_suspected_us == now and e.capacity_drop_us != now and self._draining_since is None
                and not self.pacer.held):
            self._early_hold_since = now
            self.early_holds += 1
            self.pacer.hold(now + EARLY_HOLD_MAX_US)
            log.debug("early warning of a capacity drop: video held until a feedback confirms it or shows no queue")
        return False

    def _drain_queue(self, now: int, start: int) -> bool:
        """Hold video after a capacity drop until the path's queue has drained (ours, issue #4); True when the
        hold ends now.

        When the capacity drop is found, the bottleneck's queue is full of what the old rate sent since the drop,
        and a packet arriving at a full queue is lost. The lower layer's keyframe, asked for at that moment, would
        be sent into it and partly lost, and so would the NACKed packets and the keyframe after that. A
        bottleneck's queue is first in, first out: once the feedback reports a packet sent after the drop as
        received (audio, which is never held, or the first video after the hold), everything sent before it has
        left the queue. Until then video waits in the pacer (the C lanes defer to it), at most DRAIN_HOLD_MAX_US.
        Then what waited leaves at the estimate itself (DRAIN_PACING_FACTOR; `_pace`) until the pacer's queue is
        empty, or DRAIN_MAX_US after the drop. The keyframe would have waited behind the old queue anyway, so the
        hold costs the picture about one feedback interval, not the queue's length."""
        pacer = self.pacer
        if self.estimator.capacity_drop_us == now:  # this feedback found the drop
            self._draining_since = start  # now, or the start of the early hold it confirms (`_hold_early`)
            pacer.hold(now + DRAIN_HOLD_MAX_US)
            log.debug("capacity drop: video held until its queue has drained")
            return False
        if pacer.held:
            if not self.estimator.reported_since(self._draining_since):  # type: ignore[arg-type]
                return False
            log.debug("capacity drop's queue drained after %d ms: %d bytes of video leave at the estimate",
                      (now - self._draining_since) // 1000, pacer.queued_bytes)  # type: ignore[operator]
            pacer.release(now)
            return True
        if not pacer.queued_packets or now - self._draining_since >= DRAIN_MAX_US:  # type: ignore[operator]
            self._draining_since = None
        return False

    def _end_drain(self, now: int) -> None:
        """A capacity drop's drain ends before it costs the viewer a packet (ours, issue #4): its queue is at the
        pacer's limit, where `Pacer.enqueue` would drop the oldest packets, already numbered for the viewer, which
        counts them lost, and the video the viewer is forwarded, or is about to be (`forwarded_bps`: the lower of
        its current and target layers), runs above the estimate. Nothing can move the viewer lower (one layer, as
        OBS and FFmpeg send; the lowest; a pinned one), so at the estimate the queue only grows and the drain could
        only lose video; or the drop was not one (a delay spike on a busy host). The pacer goes back to at least
        the forwarded rate (`_pace`), and what waited leaves at once (the timer that waited for the hold is
        replaced). When a lower layer that fits the estimate is on its way, the drain goes on: the switch drops the
        old layer's queue (`discard_before_switch`), and the new keyframe must not meet a full bottleneck."""
        log.debug("capacity drop's drain ended at the pacer's limit after %d ms: %d bytes waiting",
                  (now - self._draining_since) // 1000, self.pacer.queued_bytes)  # type: ignore[operator]
        self.drains_ended_at_limit += 1
        self._draining_since = None
        self.pacer.release(now)
        self._pace()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    def on_remb(self, bitrate: int) -> None:
        self.estimator.on_remb(bitrate, now_us())
        self._pace()

    def on_receiver_report(self, fraction_lost: int) -> None:
        self.estimator.on_receiver_report(fraction_lost, now_us())
        self._pace()

    def on_switch(self) -> None:
        """A video track of this viewer switched layers, or started: its next packets are the new layer's keyframe.
        A forwarding SFU cannot make that keyframe smaller, as an encoder does for its own rate: a 500 kbit/s
        layer's is 15-20 KB. At 2.5x an estimate that is still a guess (the initial 1 Mbit/s at a 700 kbit/s
        viewer) it arrives at 2.5 Mbit/s, and 72% of it, ~14 KB, is beyond what the link carries meanwhile: more
        than a 100 ms queue (~12 KB at 700 kbit/s with tbf's burst) holds. In tests/test_bandwidth.py such a
        viewer's loss periods then read 40-54%, and the loss controller moved it down. At 1.2x, 42% of the keyframe
        (~8 KB) is beyond the link's rate, within that queue. So for SWITCH_PACING_US the pacer runs at 1.2x (ours,
        issue #4). The next feedback after the window paces as before; a timer does it too, for a viewer that sends
        none."""
        self._switch_paced_until = now_us() + SWITCH_PACING_US
        self._probe_after = max(self._probe_after, self._switch_paced_until)
        self._pace()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (pure unit use): the next feedback ends the window
            return
        if self._switch_timer is not None:
            self._switch_timer.cancel()
        # +1 ms: an event loop may run a timer up to its clock resolution early.
        self._switch_timer = loop.call_later((SWITCH_PACING_US + 1_000) / 1_000_000, self._switch_paced)

    def _switch_paced(self) -> None:
        self._switch_timer = None
        self._pace()

    def repace(self) -> None:
        """The layer this viewer is forwarded changed (a retarget): pace for it now, not at the next feedback."""
        self._pace()

    def _pace(self) -> None:
        """2.5x the estimate while the path has room; close to the estimate itself while it is congested (just
        after a downgrade the lower layer's keyframe must not overflow the queue the higher layer filled) and for
        a while after a layer switch (`on_switch`).

        Never below the rate of the video the viewer is forwarded (`forwarded_bps`), except while a capacity drop's
        queue drains (ours, issue #4). The pacer spreads bursts; it cannot make the media smaller, as an encoder's
        rate control would. Below that rate it only queues the video, up to the pacer's 2 s, then drops it: a
        single-layer stream above 2.5x the estimate (every viewer starts at 1 Mbit/s; OBS and FFmpeg often send 6
        Mbit/s or more), the lowest layer or a pinned one above the estimate. Measured with FFmpeg publishing 10
        Mbit/s H.264 to a Chromium viewer on a free link: the viewer decoded nothing for ~2.5 s, the pacer dropped
        287 packets and the viewer lost 293, before the estimate caught up."""
        e = self.estimator
        estimate = e.estimate_bps
        if self._draining_since is not None:
            self.pacer.factor = DRAIN_PACING_FACTOR
        else:
            if self._switch_paced_until and now_us() < self._switch_paced_until:
                self.pacer.factor = CONGESTED_PACING_FACTOR
            else:
                self.pacer.factor = PACING_FACTOR if self._path_clear() else CONGESTED_PACING_FACTOR
            if self.forwarded_bps is not None:
                estimate = max(estimate, self.forwarded_bps())
        self.pacer.set_estimate(estimate)

    def _path_clear(self) -> bool:
        """The estimator reads neither over-use nor loss: §5.5 increase on a normal signal, loss under
        CONGESTED_LOSS. Else the pacer runs at CONGESTED_PACING_FACTOR and the selector's down rule applies in
        full (LayerSelector.select's `path_clear`)."""
        e = self.estimator
        return e.state == "increase" and e.signal == "normal" and e.loss < CONGESTED_LOSS

    def _path_full(self) -> bool:
        """A standing queue while the viewer acknowledges about the estimate or more: no probe (PROBE_MAX_QUEUE_US)."""
        e = self.estimator
        return e.queuing_delay_us >= PROBE_MAX_QUEUE_US and e.acknowledged_bps >= PATH_FULL_SHARE * e.estimate_bps

    # ---- layer choice ------------------------------------------------------------------------------
    def select_due(self, layers: list["Layer"]) -> bool:
        """Whether the layer choice should run again after this feedback (ours, issue #6). At once when the estimate
        fell below the one the last choice was made with (a downgrade must not wait) or a layer went alive or dead;
        otherwise once RESELECT_INTERVAL_US has passed. Feedback comes every ~62 ms from Chromium, and for a
        simulcast viewer the choice was ~45% of what a feedback cost in place (10.9 of 24.7 µs, 400 viewers):
        what it decides otherwise, an upgrade (held 1 s, LayerSelector) or a probe, loses at most 0.2 s."""
        at = self._selected_at
        if at is None or now_us() - at >= RESELECT_INTERVAL_US:
            return True
        if self.estimator.estimate_bps < self._selected_estimate:
            return True
        return _liveness(layers) != self._selected_alive

    def select(self, layers: list["Layer"]) -> tuple[int, int, str]:
        """The spatial and temporal layer the estimate carries; starts a probe before an upgrade."""
        t = now_us()
        now = time.monotonic()  # the layers' clock
        estimator = self.estimator
        before = self.choice
        self._selected_at = t
        self._selected_estimate = estimator.estimate_bps
        self._selected_alive = _liveness(layers)
        proof = self.prober.success_bps(t) if estimator.has_transport_cc else estimator.estimate_bps
        self.choice = self.selector.select(
            [(layer.spatial_id, layer.bitrate, layer.active, layer.settled(now)) for layer in layers],
            estimator.estimate_bps,
            t,
            acknowledged_bps=estimator.acknowledged_bps,
            probe_ok_bps=proof,
            path_clear=self._path_clear(),
        )
        if self.choice[0] != (before[0] if before is not None else None):
            self._probe_after = t + SWITCH_PACING_US
        target = self.selector.probe_target_bps
        # No probe while a capacity drop's queue drains (`_drain_queue`), nor while video waits on an early warning
        # (`_hold_early`): its padding would join that queue. None
        # either from a spatial switch's decision until SWITCH_PACING_US after its keyframe started (`on_switch`):
        # the keyframe, ten or more frames' worth, is the largest burst the path sees, and padding on top of it
        # overflows the queue that the keyframe alone fits (ours, issue #4). Before this rule a probe for the top
        # layer could start 0.3 s after a switch up (the prober's interval after the probe that proved the layer), and
        # at join with the first keyframe (for 1.86 Mbit/s on the 1 Mbit/s guess): a 700 kbit/s viewer read 45% loss
        # 1.2 s after switching up (CI) and 22 of 32 packets lost in one feedback at join. None either on a full path
        # (`_path_full`).
        if (target and estimator.has_transport_cc and estimator.can_probe and self._draining_since is None
                and self._early_hold_since is None
                and t >= self._probe_after and not self._path_full()
                and self.prober.ready(t, target)):
            self.prober.start(target, t)
            self.counters[PROBING] = 1
        return self.choice

    @property
    def probing(self) -> bool:
        return self.prober.active_cluster is not None

    def padding_needed(self) -> int:
        needed = self.prober.padding_needed(now_us())
        self.counters[PROBING] = self.prober.active_cluster is not None
        return needed

    def stats(self) -> dict:
        e = self.estimator
        return {
            "estimate_bps": int(e.estimate_bps),
            "acknowledged_bps": int(e.acknowledged_bps),
            "state": e.state,
            "loss": round(e.loss, 4),
            "estimator_reason": e.reason,
            "pacer_queue_bytes": self.pacer.queued_bytes,
            "drains_ended_at_pacer_limit": self.drains_ended_at_limit,
            "early_holds": self.early_holds,
            "early_holds_released": self.early_holds_released,
            "feedback_unknown": e.unknown_packets,  # feedback about packets not in the send log (should stay 0)
            "transport_cc": self.transport_cc,
        }
