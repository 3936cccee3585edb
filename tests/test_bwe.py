"""Per-viewer bandwidth estimation (simulcast/bwe.py) against a deterministic link simulator.

The simulator is pure Python and time-stepped (1 ms): a sender (the gateway side of one viewer) stamps
transport-wide sequence numbers, records packets in a SendLog and sends them over a bottleneck link (capacity
C, FIFO queue with tail drop, propagation delay). The receiver side is the real `TwccRecorder`: it records
arrival times and every 50 ms builds RTCP transport-cc feedback, which travels back and goes through
`gateway.rtcp.parse_compound` and `parse_feedback` into `SendSideEstimator.on_feedback`, exactly as a
viewer's feedback would.

Two senders:
- "elastic": media at the estimate (a codec following its target rate) plus probing at 2x the estimate
  whenever the Prober allows: the estimator's own dynamics.
- "sfu": media at the bitrate of the layer the LayerSelector picks, probes where the selector asks: the
  gateway's behaviour.

Section numbers refer to draft-ietf-rmcat-gcc-02.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import random
import timeit
from array import array
from collections import deque
from dataclasses import dataclass, field

import pytest

import simulcast.bwe as bwe
from gateway.rtcp import TransportCcFeedback, parse_compound
from simulcast.bwe import (
    ALL_TEMPORAL,
    LayerSelector,
    Pacer,
    Prober,
    SendLog,
    SendSideEstimator,
)
from simulcast.twcc import REFERENCE_TIME_WRAP_US, TwccFeedback, TwccRecorder, parse_feedback

from fuzzing import damage

MS = 1_000
SECOND = 1_000_000
LAYERS = [(0, 150_000, True), (1, 500_000, True), (2, 1_500_000, True)]


class StandInLayer:
    """What ViewerBandwidth.select reads of a simulcast layer (simulcast/layer.py Layer): alive, and settled."""

    def __init__(self, spatial_id: int, bitrate: int) -> None:
        self.spatial_id, self.bitrate, self.active = spatial_id, bitrate, True

    def settled(self, now: float) -> bool:
        return self.active


# ---------------------------------------------------------------------------------------------------------
# The simulator


class Link:
    """Bottleneck: capacity (bps), FIFO queue of at most `queue_bytes` (tail drop), then propagation delay
    (plus optional uniform jitter, which can reorder)."""

    def __init__(self, capacity_bps: int, queue_bytes: int, delay_us: int, jitter_us: int = 0, seed: int = 1):
        self.capacity = capacity_bps
        self.queue_limit = queue_bytes
        self.delay = delay_us
        self.jitter = jitter_us
        self._rng = random.Random(seed)
        self._queue: deque[tuple[int, int, int]] = deque()  # (seq, size, enqueued at)
        self._queued = 0
        self._busy_until = 0.0
        self._in_flight: list[tuple[float, int, int]] = []  # heap of (arrival, seq, size)

    def set_capacity(self, bps: int, now: int) -> None:
        self._serve(now)
        self.capacity = bps

    def _serve(self, now: int) -> None:
        queue = self._queue
        while queue:
            seq, size, enqueued = queue[0]
            start = max(float(enqueued), self._busy_until)
            finish = start + size * 8_000_000 / self.capacity
            if finish > now:
                break
            queue.popleft()
            self._queued -= size
            self._busy_until = finish
            arrival = finish + self.delay + (self._rng.uniform(0, self.jitter) if self.jitter else 0)
            heapq.heappush(self._in_flight, (arrival, seq, size))

    def send(self, now: int, seq: int, size: int) -> bool:
        self._serve(now)
        if self._queued + size > self.queue_limit:
            return False
        self._queue.append((seq, size, now))
        self._queued += size
        return True

    def arrivals(self, now: int) -> list[tuple[int, int, int]]:
        self._serve(now)
        out = []
        heap = self._in_flight
        while heap and heap[0][0] <= now:
            arrival, seq, size = heapq.heappop(heap)
            out.append((int(arrival), seq, size))
        return out

    def queue_delay_us(self) -> float:
        return self._queued * 8_000_000 / self.capacity


@dataclass
class Bucket:
    """Figures for one 100 ms interval (sends by send time, deliveries by arrival time)."""

    sent: int = 0
    dropped: int = 0
    delivered_bytes: int = 0
    estimate: int = 0
    queue_ms: float = 0.0
    layer: tuple[int, int] | None = None


@dataclass
class Sim:
    capacity_bps: int
    mode: str = "elastic"  # or "sfu"
    initial_bps: int = 300_000
    max_bps: int = 10_000_000
    queue_bytes: int = 64_000
    delay_us: int = 20_000
    jitter_us: int = 0
    feedback_interval_us: int = 50_000
    layers: list[tuple[int, int, bool]] = field(default_factory=lambda: list(LAYERS))
    temporal_fractions: tuple[float, ...] | None = None
    keyframe_factor: float = 4.0  # a keyframe's size in frames (sfu mode)
    audio: bool = False  # also 120-byte audio packets every 20 ms, not paced (as Opus next to the video)
    seed: int = 7
    matcher: object = None  # gateway._srtp_send.FeedbackMatcher: feedback parsed and matched in C (on_feedback_fci)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.link = Link(self.capacity_bps, self.queue_bytes, self.delay_us, self.jitter_us, self.seed)
        self.log = SendLog()
        self.prober = Prober()
        self.estimator = SendSideEstimator(
            self.log, initial_bps=self.initial_bps, max_bps=self.max_bps, prober=self.prober
        )
        if self.matcher is not None:
            self.estimator.use_matcher(self.matcher)
        self.selector = LayerSelector(temporal_fractions=self.temporal_fractions)
        self.pacer = Pacer(self.initial_bps)
        self.recorder = TwccRecorder()
        self.receiver_clock = 987_654_321_000  # the viewer's clock has its own origin
        self.now = 0
        self.seq = 0
        self.next_frame = 0
        self.next_feedback = self.feedback_interval_us
        self.feedback_queue: deque[tuple[int, bytes]] = deque()
        self.buckets: list[Bucket] = []
        self.layer: tuple[int, int] | None = None
        self.layer_bps = 0
        self.reasons: list[tuple[int, str]] = []
        self.estimator_reasons: list[tuple[int, str]] = []  # (time, estimator reason), at each change
        self.frames = 0
        self.keyframe_due = True
        if self.mode == "sfu":
            self._select()

    # --- sender ---------------------------------------------------------------------------------------

    def _bucket(self, time_us: int) -> Bucket:
        index = time_us // (100 * MS)
        while len(self.buckets) <= index:
            self.buckets.append(Bucket())
        return self.buckets[index]

    def _send(self, size: int, padding: bool = False) -> None:
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        cluster = self.prober.active_cluster
        self.log.record(seq, size, self.now, cluster, padding)
        if cluster is not None:
            self.prober.on_sent(size)
        bucket = self._bucket(self.now)
        bucket.sent += 1
        if not self.link.send(self.now, seq, size):
            bucket.dropped += 1

    def _media_rate(self) -> int:
        if self.mode == "elastic":
            return self.estimator.estimate_bps
        return self.layer_bps

    def _select(self) -> None:
        est = self.estimator
        spatial, temporal, reason = self.selector.select(
            self.layers,
            est.estimate_bps,
            self.now,
            acknowledged_bps=est.acknowledged_bps,
            probe_ok_bps=self.prober.success_bps(self.now),
        )
        if (spatial, temporal) != self.layer:
            self.layer = (spatial, temporal)
            self.reasons.append((self.now, reason))
            self.keyframe_due = True
            bitrate = next(rate for sid, rate, _ in self.layers if sid == spatial)
            if self.temporal_fractions is not None:
                bitrate = int(bitrate * self.temporal_fractions[temporal])
            self.layer_bps = bitrate

    def _maybe_probe(self) -> None:
        est = self.estimator
        if self.mode == "elastic":
            target = min(2 * est.estimate_bps, self.max_bps)
            if target < 1.1 * est.estimate_bps:
                return
        else:
            target = self.selector.probe_target_bps
            if not target:
                return
        if est.can_probe and self.prober.ready(self.now, target):
            self.prober.start(target, self.now)

    def _tick(self) -> None:
        now = self.now
        # Receiver: arrivals into the TWCC recorder, feedback every feedback_interval_us.
        for arrival, seq, size in self.link.arrivals(now):
            self.recorder.record(seq, arrival + self.receiver_clock)
            self._bucket(arrival).delivered_bytes += size
        if now >= self.next_feedback:
            self.next_feedback += self.feedback_interval_us
            for packet in self.recorder.build_feedback(0x1234, 0x5678):
                self.feedback_queue.append((now + self.delay_us, packet))
        # Sender: feedback in, estimate out.
        while self.feedback_queue and self.feedback_queue[0][0] <= now:
            _, packet = self.feedback_queue.popleft()
            (parsed,) = parse_compound(packet)
            assert isinstance(parsed, TransportCcFeedback)
            if self.matcher is not None:
                self.estimator.on_feedback_fci(parsed.raw, now)
            else:
                self.estimator.on_feedback(parse_feedback(parsed.raw), now)
            reason = self.estimator.reason
            if not self.estimator_reasons or self.estimator_reasons[-1][1] != reason:
                self.estimator_reasons.append((now, reason))
            self.pacer.set_estimate(self.estimator.estimate_bps)
            if self.mode == "sfu":
                self._select()
            self._maybe_probe()
        # Media: 30 frames per second, +-10 % size noise, a keyframe keyframe_factor x as large after a switch
        # and every 4 s.
        if now >= self.next_frame:
            self.next_frame += SECOND // 30
            self.frames += 1
            size = self._media_rate() / 30 / 8 * self.rng.uniform(0.9, 1.1)
            if self.mode == "sfu" and (self.keyframe_due or self.frames % 120 == 0):
                size *= self.keyframe_factor
                self.keyframe_due = False
            size = max(int(size), 100)
            while size > 0:
                chunk = min(size, 1200)
                size -= chunk
                if self.pacer.can_send_now(chunk, now):
                    self._send(chunk)
                else:
                    self.pacer.enqueue(chunk, chunk)
        if self.audio and now % (20 * MS) == 0:
            self._send(120)
        for chunk in self.pacer.poll(now):
            self._send(chunk)
        # Probe padding, straight out (not through the pacer), 250-byte packets.
        need = self.prober.padding_needed(now)
        while need > 0:
            self._send(250, padding=True)
            need -= 250
        if now % (100 * MS) == 0:
            bucket = self._bucket(now)
            bucket.estimate = self.estimator.estimate_bps
            bucket.queue_ms = self.link.queue_delay_us() / MS
            bucket.layer = self.layer

    def run(self, until_us: int, events: dict[int, int] | None = None) -> None:
        """Run to `until_us`; `events` maps a time to a new link capacity."""
        events = dict(events or {})
        while self.now < until_us:
            if self.now in events:
                self.link.set_capacity(events.pop(self.now), self.now)
            self._tick()
            self.now += MS

    # --- figures --------------------------------------------------------------------------------------

    def window(self, start_us: int, end_us: int) -> list[Bucket]:
        return self.buckets[start_us // (100 * MS) : end_us // (100 * MS)]

    def first_time(self, start_us: int, predicate) -> int | None:
        """Start time (µs) of the first 100 ms bucket from start_us whose sample satisfies predicate."""
        for index in range(start_us // (100 * MS), len(self.buckets)):
            if predicate(self.buckets[index]):
                return index * 100 * MS
        return None

    def loss(self, start_us: int, end_us: int) -> float:
        buckets = self.window(start_us, end_us)
        sent = sum(b.sent for b in buckets)
        return sum(b.dropped for b in buckets) / sent if sent else 0.0

    def utilisation(self, start_us: int, end_us: int, capacity_bps: int) -> float:
        buckets = self.window(start_us, end_us)
        return sum(b.delivered_bytes for b in buckets) * 8 / (capacity_bps * (end_us - start_us) / SECOND)

    def switches(self, start_us: int = 0) -> int:
        return sum(1 for time, _ in self.reasons[1:] if time >= start_us)


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.3f} Mbps"


# ---------------------------------------------------------------------------------------------------------
# Estimator scenarios (elastic sender)


def test_ramp_up_on_a_fast_link() -> None:
    """300 kbps start on a 2.5 Mbps link: above 1.5 Mbps within 5 s."""
    sim = Sim(2_500_000, initial_bps=300_000)
    sim.run(20 * SECOND)
    reached = sim.first_time(0, lambda b: b.estimate > 1_500_000)
    steady = sim.window(10 * SECOND, 20 * SECOND)
    avg = sum(b.estimate for b in steady) / len(steady)
    util = sim.utilisation(10 * SECOND, 20 * SECOND, 2_500_000)
    queue = max(b.queue_ms for b in steady)
    print(
        f"\n[ramp 2.5M] estimate > 1.5 Mbps after {reached / 1e6 if reached is not None else None} s; "
        f"10-20 s: mean estimate {_mbps(avg)}, utilisation {util:.0%}, max queue {queue:.0f} ms, "
        f"loss {sim.loss(10 * SECOND, 20 * SECOND):.2%}"
    )
    assert reached is not None and reached <= 5 * SECOND
    assert 1_500_000 <= avg <= 2_900_000
    assert util >= 0.6


def test_settles_on_a_700k_link() -> None:
    """On a 700 kbps link the estimate settles within ~500-800 kbps without sustained queue growth."""
    sim = Sim(700_000, initial_bps=300_000)
    sim.run(60 * SECOND)
    steady = sim.window(10 * SECOND, 60 * SECOND)
    estimates = sorted(b.estimate for b in steady)
    avg = sum(estimates) / len(estimates)
    p10 = estimates[len(estimates) // 10]
    p90 = estimates[len(estimates) * 9 // 10]
    queues = sorted(b.queue_ms for b in steady)
    early = sum(b.queue_ms for b in sim.window(10 * SECOND, 35 * SECOND)) / 250
    late = sum(b.queue_ms for b in sim.window(35 * SECOND, 60 * SECOND)) / 250
    util = sim.utilisation(10 * SECOND, 60 * SECOND, 700_000)
    print(
        f"\n[700k] 10-60 s: estimate mean {_mbps(avg)} p10 {_mbps(p10)} p90 {_mbps(p90)}; utilisation "
        f"{util:.0%}; queue median {queues[len(queues) // 2]:.0f} ms "
        f"p95 {queues[len(queues) * 95 // 100]:.0f} ms, "
        f"mean 10-35 s {early:.0f} ms vs 35-60 s {late:.0f} ms; loss {sim.loss(10 * SECOND, 60 * SECOND):.2%}"
    )
    assert 500_000 <= avg <= 800_000
    assert 450_000 <= p10 and p90 <= 850_000
    assert queues[len(queues) * 95 // 100] < 150  # no standing queue: 64 KB would be ~730 ms here
    assert late <= early + 30  # no sustained growth
    assert util >= 0.6


def test_capacity_drop_and_recovery() -> None:
    """3 Mbps -> 300 kbps at 20 s: below 300 kbps within 1 s, loss in that second bounded; back to 3 Mbps at
    40 s: past 1.5 Mbps again within 5 s."""
    sim = Sim(3_000_000, initial_bps=300_000)
    drop, back = 20 * SECOND, 40 * SECOND
    sim.run(60 * SECOND, {drop: 300_000, back: 3_000_000})
    before = sim.window(15 * SECOND, drop)
    before_avg = sum(b.estimate for b in before) / len(before)
    down = sim.first_time(drop, lambda b: b.estimate < 300_000)
    loss_1s = sim.loss(drop, drop + SECOND)
    low = sim.window(drop + 2 * SECOND, back)
    low_avg = sum(b.estimate for b in low) / len(low)
    low_queues = sorted(b.queue_ms for b in sim.window(drop + 5 * SECOND, back))
    up = sim.first_time(back, lambda b: b.estimate > 1_500_000)
    print(
        f"\n[drop] 15-20 s at 3 Mbps: mean estimate {_mbps(before_avg)}, utilisation "
        f"{sim.utilisation(15 * SECOND, drop, 3_000_000):.0%}; after the drop to 300 kbps: estimate "
        f"< 300 kbps after {(down - drop) / 1e6 if down is not None else None} s, loss in the first second "
        f"{loss_1s:.1%}, "
        f"loss 21-40 s {sim.loss(drop + SECOND, back):.1%}, mean estimate 22-40 s {_mbps(low_avg)}, "
        f"queue 25-40 s median {low_queues[len(low_queues) // 2]:.0f} ms "
        f"p95 {low_queues[len(low_queues) * 95 // 100]:.0f} ms, "
        f"utilisation 22-40 s {sim.utilisation(drop + 2 * SECOND, back, 300_000):.0%}; "
        f"back to 3 Mbps: estimate > 1.5 Mbps after {(up - back) / 1e6 if up is not None else None} s"
    )
    assert before_avg >= 1_800_000
    assert down is not None and down - drop <= SECOND
    # Bounded: the sender keeps ~2.4 Mbps into 300 kbps until over-use is signalled (~0.6 s: each 5 ms send
    # group now takes ~100 ms to arrive and the trendline needs ~3 of them); 64 KB of buffer absorbs some.
    assert loss_1s <= 0.6
    assert sim.loss(drop + SECOND, back) <= 0.05
    assert 150_000 <= low_avg <= 330_000
    queues = sorted(b.queue_ms for b in sim.window(drop + 5 * SECOND, back))
    assert queues[len(queues) // 2] <= 150  # the 1.7 s queue filled by the drop drains (Hold, §5.5)
    assert up is not None and up - back <= 5 * SECOND


def _queue_medians(sim: Sim) -> list[float]:
    medians = []
    for start in range(20, 60, 5):
        window = sim.window(start * SECOND, (start + 5) * SECOND)
        medians.append(sorted(b.queue_ms for b in window)[len(window) // 2])
    return medians


def test_standing_queue_in_a_deep_buffer_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 Mbps -> 300 kbps into a 200 KB buffer (5.3 s at 300 kbps): the queue the drop fills is drained by
    staying in Hold (§5.5) while the feedback RTT is above its minimum; draining runs at (1 - beta) x C.

    The capacity-drop rule catches this drop within ~0.1 s, before the buffer fills; so that a deep standing
    queue exists to drain (as after a slower detection, e.g. a milder drop the rule leaves to the trendline),
    the rule is switched off for the Hold part, and compared with it on."""
    with_rule = Sim(3_000_000, queue_bytes=200_000)
    with_rule.run(60 * SECOND, {20 * SECOND: 300_000})
    monkeypatch.setattr(SendSideEstimator, "_capacity_drop", lambda self, newest_arrival, now_us: 0)
    sim = Sim(3_000_000, queue_bytes=200_000)
    sim.run(60 * SECOND, {20 * SECOND: 300_000})
    medians = _queue_medians(sim)
    medians_with_rule = _queue_medians(with_rule)
    drained = next((20 + 5 * i for i, q in enumerate(medians) if q < 150), None)
    print(
        f"\n[deep buffer] median queue per 5 s from 20 s: {[round(q) for q in medians]} ms; "
        f"below 150 ms from {drained} s; with the capacity-drop rule: {[round(q) for q in medians_with_rule]} ms"
    )
    assert medians_with_rule[0] < medians[0] / 2  # the rule leaves far less queue behind
    assert all(q < 200 for q in medians_with_rule[2:])
    assert max(medians) > 2000  # the drop did fill it
    assert drained is not None and drained <= 55
    assert all(q < 200 for q in medians[(drained - 20) // 5 :])


def test_jittery_link_does_not_collapse() -> None:
    """0-3 ms of arrival jitter (with reordering) on a 2 Mbps link: the estimate stays useful."""
    sim = Sim(2_000_000, initial_bps=1_000_000, jitter_us=3 * MS, seed=3)
    sim.run(30 * SECOND)
    steady = sim.window(10 * SECOND, 30 * SECOND)
    avg = sum(b.estimate for b in steady) / len(steady)
    util = sim.utilisation(10 * SECOND, 30 * SECOND, 2_000_000)
    print(f"\n[jitter 2M] 10-30 s: mean estimate {_mbps(avg)}, utilisation {util:.0%}")
    assert 1_000_000 <= avg <= 2_400_000


# ---------------------------------------------------------------------------------------------------------
# Layer selection over the simulated link (sfu sender)


@pytest.mark.parametrize(
    "capacity, expected",
    [(50_000_000, 2), (700_000, 1), (300_000, 0)],
    ids=["unconstrained", "700k", "300k"],
)
def test_sfu_picks_the_layer_the_link_carries(capacity: int, expected: int) -> None:
    sim = Sim(capacity, mode="sfu", initial_bps=1_000_000)
    sim.run(60 * SECOND)
    final = sim.layer
    settled = sim.first_time(0, lambda b: b.layer is not None and b.layer[0] == expected)
    late_switches = sim.switches(20 * SECOND)
    steady = sim.window(20 * SECOND, 60 * SECOND)
    avg = sum(b.estimate for b in steady) / len(steady)
    print(
        f"\n[sfu {capacity / 1e6:g}M] layer {final} from {settled / 1e6 if settled is not None else None} s; "
        f"switches "
        f"{sim.switches()} in 60 s ({late_switches} after 20 s); mean estimate 20-60 s {_mbps(avg)}; loss "
        f"{sim.loss(20 * SECOND, 60 * SECOND):.2%}; switches: {[(t / 1e6, r) for t, r in sim.reasons]}"
    )
    assert final is not None and final[0] == expected
    assert late_switches <= 1
    assert sim.switches() <= 4


def test_sfu_upgrades_after_capacity_returns() -> None:
    sim = Sim(3_000_000, mode="sfu", initial_bps=1_000_000)
    sim.run(60 * SECOND, {20 * SECOND: 300_000, 35 * SECOND: 3_000_000})
    at_top = sim.first_time(0, lambda b: b.layer is not None and b.layer[0] == 2)
    down = sim.first_time(20 * SECOND, lambda b: b.layer is not None and b.layer[0] == 0)
    up = sim.first_time(35 * SECOND, lambda b: b.layer is not None and b.layer[0] == 2)
    print(
        f"\n[sfu 3M->300k->3M] top layer at {at_top / 1e6 if at_top is not None else None} s; bottom "
        f"{(down - 20 * SECOND) / 1e6 if down is not None else None} s after the drop; top again "
        f"{(up - 35 * SECOND) / 1e6 if up is not None else None} s after the recovery; switches: "
        f"{[(t / 1e6, r) for t, r in sim.reasons]}"
    )
    assert at_top is not None and at_top <= 8 * SECOND
    assert down is not None and down - 20 * SECOND <= 2 * SECOND
    assert up is not None and up - 35 * SECOND <= 12 * SECOND


# ---------------------------------------------------------------------------------------------------------
# LayerSelector logic


def test_selector_noisy_estimates_do_not_flap() -> None:
    """A simulated minute of estimates (every 100 ms, +-25 % noise) around three levels."""
    rng = random.Random(11)
    for level, expected in [(20_000_000, 2), (700_000, 1), (300_000, 0)]:
        selector = LayerSelector()
        switches = 0
        previous = None
        for step in range(600):
            now = step * 100 * MS
            estimate = int(level * rng.uniform(0.75, 1.25)) if level < 10_000_000 else level
            spatial, temporal, _ = selector.select(
                LAYERS, estimate, now, acknowledged_bps=int(estimate * 0.8), probe_ok_bps=estimate
            )
            if previous is not None and spatial != previous:
                switches += 1
            previous = spatial
        print(f"\n[selector noisy {level / 1e6:g}M] final spatial {previous}, switches {switches}")
        assert previous == expected
        assert temporal == ALL_TEMPORAL
        assert switches <= 1


def test_selector_hysteresis_and_proof() -> None:
    selector = LayerSelector()
    assert selector.select(LAYERS, 700_000, 0)[:2] == (1, ALL_TEMPORAL)  # initial: 1.2 x 500k <= 700k
    # The estimate supports the top layer, but nothing proves it: no upgrade, a probe is asked for.
    for step in range(1, 40):
        spatial, _, reason = selector.select(LAYERS, 2_000_000, step * 100 * MS)
        assert spatial == 1 and reason == "hold"
    assert selector.probe_target_bps == 1_800_000
    # Proof arrives (probe measured 1.9 Mbps): still needs 2 s of support counted from its start.
    spatial, _, reason = selector.select(LAYERS, 2_000_000, 4 * SECOND, probe_ok_bps=1_900_000)
    assert spatial == 2 and reason.startswith("up:")
    assert selector.probe_target_bps is None  # nothing above the top layer
    # Down at once when the layer's bitrate exceeds the estimate by more than the 20 % tolerance (an over-use
    # at the layer's own rate leaves the estimate at 0.85 x it, which must not be read as a shortage).
    assert selector.select(LAYERS, 1_275_000, 4 * SECOND + 1)[0] == 2
    spatial, _, reason = selector.select(LAYERS, 1_200_000, 4 * SECOND + 2)
    assert spatial == 1 and reason.startswith("down:")
    # Up then down within 10 s: the hold doubles to 4 s (support counted from 4.1 s).
    for step in range(1, 40):
        now = 4 * SECOND + 2 + step * 100 * MS
        assert selector.select(LAYERS, 2_000_000, now, probe_ok_bps=1_900_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 8 * SECOND + 100 * MS, probe_ok_bps=1_900_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 8 * SECOND + 200 * MS, probe_ok_bps=1_900_000)[0] == 2
    assert selector.switches == 3
    # Probe targets are capped at 2x the estimate: a big step is probed in stages.
    selector = LayerSelector()
    selector.select(LAYERS, 200_000, 0)
    assert selector.probe_target_bps == 400_000  # 1.2 x 500k = 600k, capped at 2 x 200k


def test_selector_acknowledged_rate_is_proof_and_start_of_hold_resets() -> None:
    selector = LayerSelector()
    assert selector.select(LAYERS, 300_000, 0)[0] == 0
    selector.select(LAYERS, 700_000, 1 * SECOND, acknowledged_bps=600_000)
    selector.select(LAYERS, 500_000, 2 * SECOND, acknowledged_bps=600_000)  # dips below 1.2 x 500k
    assert selector.select(LAYERS, 700_000, 3 * SECOND + 500 * MS, acknowledged_bps=600_000)[0] == 0
    assert selector.select(LAYERS, 700_000, 5 * SECOND, acknowledged_bps=600_000)[0] == 0  # 1.5 s < 2 s
    spatial, _, reason = selector.select(LAYERS, 700_000, 5 * SECOND + 500 * MS, acknowledged_bps=600_000)
    assert spatial == 1 and reason.endswith("acked")


def test_selector_drops_temporal_layers_first() -> None:
    selector = LayerSelector(temporal_fractions=(0.4, 0.6, 1.0))
    assert selector.select(LAYERS, 3_000_000, 0) == (2, 2, "initial")
    # 1 Mbps (x 1.2 tolerance = 1.2M): 1.5M no longer fits; 1.5M x 0.6 = 900k does: keep the spatial layer,
    # drop temporal layer 2.
    spatial, temporal, reason = selector.select(LAYERS, 1_000_000, 1)
    assert (spatial, temporal) == (2, 1) and reason.startswith("down:")
    # 700k (840k): 1.5M x 0.4 = 600k still fits.
    assert selector.select(LAYERS, 700_000, 2)[:2] == (2, 0)
    # 450k (540k): nothing of spatial 2 fits; spatial 1 with every temporal layer (500k) does.
    assert selector.select(LAYERS, 450_000, 3)[:2] == (1, 2)
    # The probe target is the next option up: 1.2 x 600k.
    assert selector.probe_target_bps == 720_000


def test_selector_inactive_layers() -> None:
    selector = LayerSelector()
    assert selector.select(LAYERS, 5_000_000, 0)[0] == 2
    layers = [(0, 150_000, True), (1, 500_000, True), (2, 1_500_000, False)]
    assert selector.select(layers, 5_000_000, 1) == (1, ALL_TEMPORAL, "layer inactive")
    assert selector.select([(0, 150_000, False)], 5_000_000, 2) == (-1, -1, "no active layer")
    # A layer coming back is an upgrade like any other (hold + proof).
    assert selector.select(LAYERS, 5_000_000, 3, probe_ok_bps=5_000_000)[0] == 1
    assert selector.select(LAYERS, 5_000_000, 3 + 2 * SECOND, probe_ok_bps=5_000_000)[0] == 2


def test_selector_keeps_viewers_off_layers_that_have_not_settled() -> None:
    """A layer younger than LAYER_SETTLE (fourth field False) is neither the first choice, nor an upgrade, nor
    where a viewer goes when its layer dies, unless it is the lowest; the estimate's hold for it counts meanwhile."""
    young = [(0, 150_000, True, False), (1, 500_000, True, False), (2, 278_000, True, False)]
    selector = LayerSelector()
    assert selector.select(young, 1_000_000, 0) == (0, ALL_TEMPORAL, "initial")  # every layer young: the lowest
    h_settled = [(0, 150_000, True, False), (1, 500_000, True, True), (2, 278_000, True, False)]
    assert LayerSelector().select(h_settled, 1_000_000, 0)[0] == 1
    # Upgrades: proven and supported for longer than the hold, but the top layer is young: the middle one.
    for step in range(1, 30):
        assert selector.select(h_settled, 5_000_000, step * 100 * MS, probe_ok_bps=5_000_000)[0] == (
            0 if step <= 20 else 1  # support counted from 0.1 s: held 2 s at 2.1 s
        )
    # The top layer settles: it goes there at once (its hold counted while it was young).
    settled = [(0, 150_000, True, True), (1, 500_000, True, True), (2, 1_500_000, True, True)]
    spatial, _, reason = selector.select(settled, 5_000_000, 3 * SECOND, probe_ok_bps=5_000_000)
    assert spatial == 2 and reason.startswith("up:")
    # The top layer dies while the middle one has just resumed: the lowest.
    gone = [(0, 150_000, True, True), (1, 500_000, True, False), (2, 0, False, False)]
    assert selector.select(gone, 5_000_000, 4 * SECOND) == (0, ALL_TEMPORAL, "layer inactive")


def test_a_layer_settles_after_layer_settle_seconds_alive_and_again_after_a_pause() -> None:
    from simulcast.layer import LAYER_SETTLE, LAYER_TIMEOUT, Layer

    layer = Layer(kind="video", codec_key="vp8", clock_rate=90000, rid="f", offer_index=2, history_size=16,
                  nack_enabled=False, pli_enabled=False, fir_enabled=False, keyframe_interval=0.0, local_ssrc=1,
                  send_rtcp=lambda data: 0)
    assert not layer.settled(100.0)  # never alive
    layer.last_packet = 100.0
    assert layer.refresh(100.0) and layer.active
    assert not layer.settled(100.0 + LAYER_SETTLE - 0.1)
    assert layer.settled(100.0 + LAYER_SETTLE)
    layer.refresh(100.0 + LAYER_SETTLE + LAYER_TIMEOUT)  # no packet since: dead
    assert not layer.active and not layer.settled(100.0 + LAYER_SETTLE + LAYER_TIMEOUT)
    layer.last_packet = 110.0  # resumes
    assert layer.refresh(110.0) and not layer.settled(110.0 + LAYER_SETTLE - 0.1) and layer.settled(110.0 + LAYER_SETTLE)


# ---------------------------------------------------------------------------------------------------------
# Estimator units


def _feedback(base: int, arrivals: list[int | None], reference: int = 0) -> TwccFeedback:
    packets = [((base + i) & 0xFFFF, None if a is None else a - reference) for i, a in enumerate(arrivals)]
    return TwccFeedback(base & 0xFFFF, reference, 0, packets)


def test_send_log_ring() -> None:
    log = SendLog(capacity=16)
    for seq in range(65530, 65536 + 20):
        log.record(seq & 0xFFFF, 1000 + seq % 7, seq * 10, 3 if seq % 2 else None)
    assert log.lookup(19) == ((65536 + 19) * 10, 1000 + (65536 + 19) % 7, 3)
    assert log.lookup(65535) is None  # overwritten (16 slots)
    assert log.lookup(4) == ((65536 + 4) * 10, 1000 + (65536 + 4) % 7, None)
    with pytest.raises(ValueError):
        SendLog(capacity=1000)


def test_a_viewer_without_transport_cc_allocates_no_send_log() -> None:
    """Only transport-cc viewers have packets logged, so only they get the full send log (84 KiB of rings); the
    others estimate from REMB and receiver reports, which still move their estimate."""
    import tracemalloc

    from simulcast.viewer_bandwidth import ViewerBandwidth

    def kib_each(transport_cc: bool) -> float:
        tracemalloc.start()
        try:
            kept = [ViewerBandwidth(transport_cc=transport_cc) for _ in range(8)]
            size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        for bandwidth in kept:
            bandwidth.close()
        return size / len(kept) / 1024

    assert kib_each(True) > 80  # the transport-cc viewer's log is all there
    assert kib_each(False) < 32
    plain = ViewerBandwidth(transport_cc=False)
    plain.on_remb(400_000)
    assert plain.estimator.estimate_bps == 400_000
    plain.on_receiver_report(128)  # 50 % lost (RFC 3550 §6.4.1 fraction): §6 decreases
    assert plain.estimator.estimate_bps < 400_000


def test_a_transport_cc_viewer_send_log_covers_late_feedback_at_the_top_rate() -> None:
    """A transport-cc viewer's send log still holds what it sent 1.5 s ago at MAX_BPS (1,200-byte packets): feedback
    that late (a deep queue, then the receiver's feedback interval) matches every packet it reports."""
    from simulcast.viewer_bandwidth import MAX_BPS, ViewerBandwidth

    bandwidth = ViewerBandwidth(transport_cc=True)
    gap = 1200 * 8 * SECOND // MAX_BPS
    start, late = 10 * SECOND, 1_500_000
    recorder = TwccRecorder()
    for seq in range(late // gap):
        bandwidth.sent(seq, 1200, start + seq * gap)
        if seq < 50:
            recorder.record(seq, 5 * SECOND + seq * gap + 20 * MS)
    bandwidth.estimator.on_feedback_fci(_fci(recorder), start + late)
    assert bandwidth.estimator.unknown_packets == 0
    assert bandwidth.estimator.last_received == 50 and bandwidth.estimator.last_lost == 0
    bandwidth.close()


def test_estimator_loss_duplicates_and_unknown() -> None:
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_000_000)
    for seq in range(40):
        log.record(seq, 1000, seq * 5 * MS)
    # 40 packets, every 4th lost (25 %): the §6 controller decreases by (1 - 0.5 x 0.25).
    arrivals = [None if i % 4 == 3 else 50 * MS + i * 5 * MS for i in range(40)]
    est.on_feedback(_feedback(0, arrivals), 250 * MS)
    assert est.loss == pytest.approx(0.25)
    assert est.loss_based_bps == pytest.approx(1_000_000 * 0.875, rel=0.01)
    assert est.reason == "loss 25%"
    # The same feedback again changes nothing; packets not in the log are counted as unknown.
    before = (est.loss_based_bps, est.acknowledged_bps)
    est.on_feedback(_feedback(0, arrivals), 260 * MS)
    assert (est.loss_based_bps, est.acknowledged_bps) == before
    est.on_feedback(_feedback(1000, [1 * SECOND, 1 * SECOND + MS]), 270 * MS)
    assert est.unknown_packets == 2
    # Late arrivals of packets reported lost are not losses: 20 more packets, 10 of them late arrivals.
    for seq in range(40, 50):
        log.record(seq, 1000, seq * 5 * MS)
    late = [(seq, 300 * MS + seq * 100) for seq in range(3, 40, 4)]
    late += [(seq, 300 * MS + seq * 5 * MS) for seq in range(40, 50)]
    est.on_feedback(TwccFeedback(3, 0, 1, late), 600 * MS)
    assert est.loss == 0.0


def test_estimator_reference_time_wrap_and_rate() -> None:
    """Feedback whose 24-bit reference time wraps (sign-extended value jumps from +2^23 to -2^23 units)."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=500_000)
    unit = 64 * MS
    origin = REFERENCE_TIME_WRAP_US // 2 - 3 * unit  # the receiver clock, 3 units before the wrap
    seq = 0
    wrapped = False
    for step in range(40):  # 2 s at 1 Mbps: 1000-byte packets every 8 ms, feedback every 96 ms
        arrivals = []
        for _ in range(12):
            log.record(seq & 0xFFFF, 1000, seq * 8 * MS)
            arrivals.append(origin + seq * 8 * MS + 30 * MS)
            seq += 1
        reference = arrivals[0] // unit * unit
        raw = reference
        if raw >= REFERENCE_TIME_WRAP_US // 2:
            raw -= REFERENCE_TIME_WRAP_US  # what parse_feedback returns after the wrap
            wrapped = True
        packets = [((seq - 12 + i) & 0xFFFF, a - reference) for i, a in enumerate(arrivals)]
        est.on_feedback(TwccFeedback((seq - 12) & 0xFFFF, raw, step, packets), seq * 8 * MS + 60 * MS)
    assert wrapped
    assert est.acknowledged_bps == pytest.approx(1_000_000, rel=0.03)
    assert est.signal == "normal"
    assert est.state == "increase"
    assert 500_000 < est.estimate_bps <= 1_500_000


def test_trendline_running_sums_match_least_squares() -> None:
    """The O(1) running-sum slope equals a direct least-squares fit over the last 20 groups."""
    from simulcast.bwe import _Trendline

    trend = _Trendline()
    rng = random.Random(5)
    xs: list[float] = []
    ys: list[float] = []
    accumulated = smoothed = 0.0
    origin = 1e9  # large arrival times (ms) must not cost precision
    arrival = origin
    for index in range(3000):
        variation = rng.gauss(0.2, 3.0)
        arrival += rng.uniform(2, 60)
        accumulated += variation
        smoothed = 0.9 * smoothed + 0.1 * accumulated
        xs.append(arrival - origin)
        ys.append(smoothed)
        result = trend.update(variation, arrival)
        if index < 19:
            assert result is None
            continue
        wx, wy = xs[-20:], ys[-20:]
        mx, my = sum(wx) / 20, sum(wy) / 20
        slope = sum((a - mx) * (b - my) for a, b in zip(wx, wy)) / sum((a - mx) ** 2 for a in wx)
        assert result == pytest.approx(min(index + 1, 60) * slope * 4, rel=1e-7, abs=1e-9)


def test_estimator_detects_growing_queue() -> None:
    """Packets sent every 5 ms but delivered every 6 ms (a queue growing by 1 ms per packet): over-use,
    decrease to 0.85 x the receive rate."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_000_000)
    seq = 0
    signals = set()
    for step in range(30):
        arrivals = []
        for _ in range(10):
            log.record(seq, 1000, seq * 5 * MS)
            arrivals.append(seq * 6 * MS + 20 * MS)
            seq += 1
        est.on_feedback(_feedback(seq - 10, arrivals), (seq - 1) * 6 * MS + 80 * MS)
        signals.add(est.signal)
    assert "overuse" in signals
    assert est.acknowledged_bps == pytest.approx(1_333_333, rel=0.03)
    assert est.delay_based_bps <= 0.86 * 1_333_333
    assert est.reason == "overuse"
    assert 6.0 <= est.threshold_ms <= 600.0


def test_remb_and_receiver_reports_without_twcc() -> None:
    est = SendSideEstimator(SendLog(), initial_bps=1_000_000, max_bps=5_000_000)
    est.on_remb(2_500_000, 0)
    assert est.estimate_bps == 1_000_000  # the loss-based estimate (1 Mbps) is the lower one
    for second in range(1, 20):
        est.on_receiver_report(0, second * SECOND)  # no loss: +5 % per report (§6)
    assert est.estimate_bps == 2_500_000
    est.on_receiver_report(64, 20 * SECOND)  # 25 % loss
    assert est.loss == 0.25
    assert est.estimate_bps == int(2_500_000 * 0.875)
    est.on_remb(10_000_000, 21 * SECOND)
    assert est.delay_based_bps == 5_000_000  # clamped to max_bps
    est.on_remb(100, 22 * SECOND)
    assert est.estimate_bps == 50_000  # min_bps


def test_receiver_reports_only() -> None:
    """No transport-cc, no REMB: the delay-based controller is disabled (§7), RR loss alone moves it."""
    est = SendSideEstimator(SendLog(), initial_bps=1_000_000, max_bps=3_000_000)
    for second in range(1, 15):
        est.on_receiver_report(2, second * SECOND)  # 0.8 % loss: +5 % per report
    assert est.estimate_bps == int(1_000_000 * 1.05**14)
    assert not est.has_transport_cc
    est.on_receiver_report(51, 15 * SECOND)  # 19.9 % loss
    assert est.estimate_bps == int(1_000_000 * 1.05**14 * (1 - 0.5 * 51 / 256))
    est.on_receiver_report(51, 15 * SECOND + 100 * MS)  # the same event: within RTT + 300 ms
    assert est.estimate_bps == int(1_000_000 * 1.05**14 * (1 - 0.5 * 51 / 256))
    est.on_receiver_report(20, 16 * SECOND)  # 7.8 %: hold
    assert est.estimate_bps == int(1_000_000 * 1.05**14 * (1 - 0.5 * 51 / 256))


def test_twcc_makes_remb_and_rr_secondary() -> None:
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_000_000)
    log.record(0, 1000, 0)
    log.record(1, 1000, 10 * MS)
    est.on_feedback(_feedback(0, [20 * MS, 30 * MS]), 50 * MS)
    est.on_remb(100_000, 60 * MS)
    est.on_receiver_report(200, 70 * MS)
    assert est.estimate_bps >= 1_000_000
    assert est.has_transport_cc
    est.on_remb(300_000, 3 * SECOND)  # transport-cc silent for 2 s: REMB counts again
    assert est.estimate_bps == 300_000
    assert not est.has_transport_cc


# ---------------------------------------------------------------------------------------------------------
# Prober units


def test_prober_cluster_success_and_failure() -> None:
    prober = Prober(
        rate_factor=1.5, duration_us=20 * MS, min_interval_us=300 * MS, fail_backoff_us=2 * SECOND
    )
    log = SendLog()
    assert prober.ready(0, 1_000_000)
    cluster = prober.start(1_000_000, 0)
    assert prober.active_cluster == cluster and not prober.ready(0, 1_000_000)
    seq = 0
    sends = []
    for ms in range(0, 40):
        now = ms * MS
        need = prober.padding_needed(now)
        while need > 0:
            cid = prober.active_cluster
            log.record(seq, 250, now, cid)
            prober.on_sent(250)
            sends.append((seq, now))
            seq += 1
            need -= 250
    assert prober.active_cluster is None
    total = sum(250 for _ in sends)
    assert total == pytest.approx(1_500_000 * 0.020 / 8, abs=250)
    # A fast path: arrivals keep the send spacing -> measured 1.5 Mbps, success.
    fb = _feedback(0, [t + 20 * MS for _, t in sends])
    results = prober.on_feedback(fb, log, 100 * MS)
    assert len(results) == 1 and results[0][2] is True
    assert prober.result(cluster) == pytest.approx(1_500_000, rel=0.1)
    assert prober.success(cluster) is True
    assert prober.success_bps(100 * MS) == prober.result(cluster)
    assert not prober.ready(200 * MS, 2_000_000) and prober.ready(400 * MS, 2_000_000)

    # A 600 kbps path: arrivals spaced by the bottleneck -> failure and a 2 s backoff.
    cluster2 = prober.start(2_000_000, 1 * SECOND)
    sends = []
    for ms in range(1000, 1040):
        now = ms * MS
        need = prober.padding_needed(now)
        while need > 0:
            log.record(seq, 250, now, prober.active_cluster)
            prober.on_sent(250)
            sends.append(seq)
            seq += 1
            need -= 250
    base = sends[0]
    fb = _feedback(base, [1 * SECOND + 30 * MS + i * 250 * 8 * SECOND // 600_000 for i in range(len(sends))])
    results = prober.on_feedback(fb, log, 2 * SECOND)
    assert results and results[0][2] is False
    assert prober.result(cluster2) == pytest.approx(600_000, rel=0.05)
    assert not prober.ready(3 * SECOND, 2_000_000)
    assert prober.ready(3 * SECOND, 1_000_000)  # a lower target may go at once
    assert prober.ready(4 * SECOND, 2_000_000)


def test_prober_timeout_without_feedback() -> None:
    prober = Prober()
    cluster = prober.start(1_000_000, 0)
    for ms in range(50):
        need = prober.padding_needed(ms * MS)
        while need > 0:
            prober.on_sent(250)
            need -= 250
    assert prober.active_cluster is None
    assert prober._take_results(500 * MS) == []
    assert not prober.ready(500 * MS)
    # No feedback at all: ready() itself times the cluster out (1 s) and then applies the failure backoff.
    assert not prober.ready(1100 * MS)
    assert prober.result(cluster) is None and prober.success(cluster) is False
    assert prober.ready(2200 * MS)


# ---------------------------------------------------------------------------------------------------------
# Pacer


def test_pacer_rate_and_burst() -> None:
    pacer = Pacer(1_000_000, factor=2.5, burst_us=5 * MS)  # 2.5 Mbps = 312.5 bytes/ms, burst 1562 bytes
    sent: list[tuple[int, int]] = []
    # A 30-packet keyframe at t=0: the fast path takes what the burst allows, the rest is queued.
    for _ in range(30):
        if pacer.can_send_now(1200, 0):
            sent.append((0, 1200))
        else:
            pacer.enqueue(1200, 1200)
    # 1562 bytes of allowance: a packet at 1562, another at 362 (into debt), not a third.
    assert len(sent) == 2
    now = 0
    while pacer.queued_packets:
        now = pacer.next_send_us(now)
        for size in pacer.poll(now):
            sent.append((now, size))
    duration = sent[-1][0]
    rate = sum(size for _, size in sent[:-1]) * 8 / (duration / 1e6)
    print(
        f"\n[pacer] 30 x 1200 B at 2.5 Mbps: last packet at {duration / 1000:.1f} ms, "
        f"rate {rate / 1e6:.2f} Mbps"
    )
    assert rate == pytest.approx(2_500_000, rel=0.05)
    # Burst limit: in any 5 ms window at most burst + one packet.
    for start_index, (start, _) in enumerate(sent):
        window = sum(size for time, size in sent[start_index:] if time < start + 5 * MS)
        assert window <= 1562.5 + 2 * 1200
    # Idle refills only up to the burst allowance.
    assert pacer.can_send_now(1200, 10 * SECOND)
    assert pacer.can_send_now(1200, 10 * SECOND)
    assert not pacer.can_send_now(1200, 10 * SECOND)


def test_pacer_order_and_queue_limit() -> None:
    pacer = Pacer(100_000, factor=2.5, max_queue_us=100 * MS)  # 250 kbps: 100 ms = 3125 bytes
    assert pacer.can_send_now(1200, 0)
    for index in range(10):
        pacer.enqueue(index, 1200)
    assert not pacer.can_send_now(100, 1 * SECOND)  # something is queued: keep order
    assert pacer.dropped == 8 and pacer.queued_packets == 2
    assert pacer.next_send_us(0) == 33_400  # a debt of 1044 bytes at 31.25 bytes/ms
    assert pacer.poll(33 * MS) == []
    assert pacer.poll(34 * MS) == [8]
    assert pacer.next_send_us(34 * MS) == 34 * MS + 37_800  # 18.75 bytes of credit less 1200: 1181.25 of debt
    assert pacer.poll(34 * MS + 37_800) == [9]
    # Idle again: however long, the bucket holds 5 ms (156 bytes) of credit.
    assert pacer.can_send_now(1200, 1 * SECOND)
    assert not pacer.can_send_now(100, 1 * SECOND)
    pacer.set_estimate(4_000_000)
    assert pacer.rate_bps == 10_000_000
    assert pacer.next_send_us(0) is None


def test_a_late_poll_keeps_the_pacing_rate() -> None:
    """A backlog paced at 2.5 Mbit/s, 1.92 Mbit/s coming in, the pacer's timer firing every 20 ms (a busy event
    loop, late each time): capped at the 5 ms burst allowance, each poll would release ~2 packets (0.96 Mbit/s)
    and the queue would grow until it drops; the pacer owes the waiting queue what was due (up to 100 ms), so it
    releases at up to 2.5 Mbit/s and keeps up."""
    pacer = Pacer(1_000_000, factor=2.5)  # 312.5 bytes/ms
    released = 0
    for tick in range(1, 51):  # 1 s of 20 ms ticks; 20 packets of 1200 bytes every 100 ms
        if tick % 5 == 1:
            for _ in range(20):
                pacer.enqueue(1200, 1200)
        released += len(pacer.poll(tick * 20 * MS))
    assert pacer.dropped == 0
    assert released >= 190 and pacer.queued_packets == 200 - released, released
    # A poll after a long stall releases at most 100 ms of rate at once (31,250 bytes), not the whole queue.
    stalled = Pacer(1_000_000, factor=2.5)
    for _ in range(200):
        stalled.enqueue(1200, 1200)
    assert len(stalled.poll(0)) == 2  # the burst allowance (1562.5 bytes), then 837.5 bytes of debt
    assert len(stalled.poll(5 * SECOND)) == 26  # 31,250 - 837.5 bytes: 25 packets and one into debt


# ---------------------------------------------------------------------------------------------------------
# Costs


def test_per_call_costs() -> None:
    log = SendLog()
    record = log.record
    counter = iter(range(10**9))

    def one_record() -> None:
        seq = next(counter)
        record(seq & 0xFFFF, 1200, seq, None)

    number = 200_000
    record_us = min(timeit.repeat(one_record, number=number, repeat=5)) / number * 1e6
    harness = timeit.repeat(lambda: (next(counter) & 0xFFFF, 1200, 0, None), number=number, repeat=5)
    loop_us = min(harness) / number * 1e6

    # Feedback processing: 100 ms of a 2.5 Mbps viewer (~26 packets) per feedback.
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    feedbacks = []
    seq = 0
    for step in range(400):
        arrivals = []
        for _ in range(26):
            log.record(seq & 0xFFFF, 1200, seq * 3846)
            arrivals.append(seq * 3846 + 20 * MS)
            seq += 1
        feedbacks.append(((seq - 26) & 0xFFFF, arrivals, seq * 3846 + 50 * MS))

    parsed = [(_feedback(base, arrivals), now) for base, arrivals, now in feedbacks]
    fresh = bytes(log.capacity)

    def run_feedbacks() -> None:
        log._states[:] = fresh  # every packet unreported again, as on first receipt
        est = SendSideEstimator(log, initial_bps=2_500_000)
        for feedback, now in parsed:
            est.on_feedback(feedback, now)

    reset = min(timeit.repeat(lambda: SendSideEstimator(log), number=3, repeat=3)) / 3
    total = min(timeit.repeat(run_feedbacks, number=3, repeat=3)) / 3 - reset
    per_feedback_us = total / len(feedbacks) * 1e6
    per_packet_us = per_feedback_us / 26

    pacer = Pacer(1_000_000_000)
    pace_us = min(timeit.repeat(lambda: pacer.can_send_now(1200, 0), number=number, repeat=5)) / number * 1e6
    selector = LayerSelector()
    selects = timeit.repeat(lambda: selector.select(LAYERS, 2_000_000, 0), number=20_000, repeat=3)
    select_us = min(selects) / 20_000 * 1e6
    print(
        f"\n[costs] SendLog.record {record_us:.3f} µs/call (harness {loop_us:.3f} µs, "
        f"so ~{record_us - loop_us:.3f} µs "
        f"own); on_feedback {per_feedback_us:.1f} µs per 26-packet feedback = {per_packet_us:.2f} µs/packet; "
        f"Pacer.can_send_now {pace_us:.3f} µs; LayerSelector.select {select_us:.2f} µs"
    )
    assert record_us < 2.0
    assert per_packet_us < 20.0


# ---------------------------------------------------------------------------------------------------------
# Reactions measured on the shaped lab link (tests/test_bandwidth.py), pinned down here as pure units


def _deliver(est: SendSideEstimator, log: SendLog, seq: int, send_us: int, packets: int, send_gap_us: int,
             arrive_gap_us: int, lost_every: int = 0, size: int = 1200) -> tuple[int, int]:
    """Log `packets` sent every send_gap_us, feed one feedback with arrivals every arrive_gap_us (every
    `lost_every`-th reported lost). Returns the next (seq, send time)."""
    arrivals: list[int | None] = []
    for i in range(packets):
        log.record((seq + i) & 0xFFFF, size, send_us + i * send_gap_us)
        lost = lost_every and i % lost_every == lost_every - 1
        arrivals.append(None if lost else 5 * MS + send_us + i * arrive_gap_us)
    end = send_us + packets * send_gap_us
    est.on_feedback(_feedback(seq, arrivals), end + 20 * MS)
    return seq + packets, end


def test_startup_estimate_rises_to_what_the_path_delivers() -> None:
    """A viewer joins on a 2.4 Mbit/s layer with the 1 Mbit/s initial guess: the estimate follows the delivered
    rate (no over-use, no loss) instead of climbing 8 %/s and moving the viewer down meanwhile."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_000_000)
    seq, t = 0, 0
    for _ in range(10):  # 10 feedbacks of 12 packets of 1200 B, one every 4 ms: 2.4 Mbit/s for 0.48 s
        seq, t = _deliver(est, log, seq, t, 12, 4 * MS, 4 * MS)
    assert est.estimate_bps >= 2_000_000, est.reason


def test_startup_rule_ends_at_the_first_decrease() -> None:
    """After a congestion event the receive rate includes a draining queue: it must not lift the estimate."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_000_000)
    seq, t = 0, 0
    for _ in range(6):  # heavy loss: a loss-based decrease
        seq, t = _deliver(est, log, seq, t, 12, 4 * MS, 4 * MS, lost_every=3)
    after_loss = est.estimate_bps
    assert after_loss < 1_000_000
    for _ in range(10):  # then 2.4 Mbit/s delivered cleanly: AIMD, not a jump to the delivered rate
        seq, t = _deliver(est, log, seq, t, 12, 4 * MS, 4 * MS)
    assert est.estimate_bps < 1.6 * after_loss


def test_heavy_loss_cuts_to_the_delivered_rate_in_one_step() -> None:
    """A link cut from 2.4 Mbit/s to 300 kbit/s: the first loss decrease lands near what now gets through
    (one layer switch, one keyframe wait), not at (1 - 0.5 p) x the old rate."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_400_000)
    seq, t = 0, 0
    for _ in range(10):
        seq, t = _deliver(est, log, seq, t, 12, 4 * MS, 4 * MS)
    assert est.estimate_bps >= 2_000_000
    # Cut: 7 of 8 packets lost, the survivors arrive 32 ms apart (1200 B / 32 ms = 300 kbit/s).
    arrivals: list[int | None] = []
    for i in range(32):
        log.record(seq + i, 1200, t + i * 4 * MS)
        arrivals.append(t + 5 * MS + (i // 8) * 32 * MS if i % 8 == 0 else None)
    est.on_feedback(_feedback(seq, arrivals), t + 32 * 4 * MS + 20 * MS)
    assert est.loss > 0.5
    # (1 - 0.5 x 0.875) x 2.4M alone would be ~1.05M; the delivered rate is 4 x 1200 B over 96 ms = 400k.
    assert 250_000 <= est.estimate_bps <= 450_000


def test_selector_probes_a_proven_layer_the_estimate_does_not_carry() -> None:
    """A probe proved 1.6 Mbit/s once, but the estimate (set by that probe) is short of 1.2 x the top layer:
    the selector asks for another probe instead of waiting for an estimate that cannot grow while the viewer
    receives a lower layer (the §5.5 1.5 x R_hat ceiling holds it)."""
    selector = LayerSelector(up_hold_us=1 * SECOND)
    layers = [(0, 150_000, True), (1, 500_000, True), (2, 1_600_000, True)]
    selector.select(layers, 700_000, 0)
    spatial, _, _ = selector.select(layers, 1_700_000, 2 * SECOND, probe_ok_bps=1_700_000)
    assert spatial == 1
    assert selector.probe_target_bps == int(1.2 * 1_600_000)


def test_selector_climbs_two_layers_with_one_hold() -> None:
    """Support for the top layer that started before the switch to the middle one still counts after it."""
    selector = LayerSelector(up_hold_us=1 * SECOND)
    assert selector.select(LAYERS, 200_000, 0)[0] == 0
    selector.select(LAYERS, 700_000, 1 * SECOND, probe_ok_bps=700_000)  # middle supported from 1 s
    selector.select(LAYERS, 2_000_000, 1 * SECOND + 500 * MS, probe_ok_bps=2_000_000)  # top from 1.5 s
    assert selector.select(LAYERS, 2_000_000, 2 * SECOND, probe_ok_bps=2_000_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 2 * SECOND + 400 * MS, probe_ok_bps=2_000_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 2 * SECOND + 500 * MS, probe_ok_bps=2_000_000)[0] == 2


def test_selector_layer_going_inactive_is_not_a_flap() -> None:
    """The publisher pausing its top layer (CPU or its own bandwidth) moves the viewer down, but that is not a
    wrong upgrade of ours: the upgrade hold stays as it was (doubling it would slow the climb back)."""
    selector = LayerSelector(up_hold_us=1 * SECOND, flap_window_us=3 * SECOND)
    selector.select(LAYERS, 700_000, 0)
    assert selector.select(LAYERS, 2_000_000, 1 * SECOND, probe_ok_bps=2_000_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 2 * SECOND, probe_ok_bps=2_000_000)[0] == 2  # up after 1 s
    gone = [(0, 150_000, True), (1, 500_000, True), (2, 1_500_000, False)]
    assert selector.select(gone, 2_000_000, 2 * SECOND + 500 * MS)[2] == "layer inactive"
    assert selector.select(LAYERS, 2_000_000, 2 * SECOND + 600 * MS, probe_ok_bps=2_000_000)[0] == 1
    assert selector.select(LAYERS, 2_000_000, 3 * SECOND + 600 * MS, probe_ok_bps=2_000_000)[0] == 2  # 1 s again


# ---------------------------------------------------------------------------------------------------------
# Capacity drop within the first feedbacks, and what must not look like one (issue #4)


def _cut(queue_bytes: int) -> Sim:
    """A viewer on the top layer of an unconstrained link; at 20 s the link is cut to 300 kbit/s with a tbf-like
    queue of `queue_bytes` (7 KB ~ tbf latency 100 ms + its 3.2 KB burst; 18 KB ~ 400 ms), lifted at 40 s. With
    audio next to the video and feedback every 62 ms, as from Chromium."""
    sim = Sim(50_000_000, mode="sfu", initial_bps=1_000_000, audio=True, feedback_interval_us=62_000)
    sim.run(20 * SECOND)
    assert sim.layer is not None and sim.layer[0] == 2
    sim.link.set_capacity(300_000, sim.now)
    sim.link.queue_limit = queue_bytes
    sim.run(40 * SECOND)
    sim.link.set_capacity(50_000_000, sim.now)
    sim.link.queue_limit = 64_000
    sim.run(50 * SECOND)
    return sim


@pytest.mark.parametrize("queue_bytes", [7_000, 18_000], ids=["100ms", "400ms"])
def test_capacity_drop_moves_down_from_the_first_feedbacks(queue_bytes: int) -> None:
    """The cut shows in the first feedbacks after it as a run of packets queued behind a busy bottleneck,
    delivered at ~300 kbit/s while ~1.6 Mbit/s was carried: the viewer goes straight to the lowest layer ~0.1 s
    after the cut (before: §6 or the trendline after 0.29 s behind the 7 KB queue and 0.42 s behind the 18 KB
    one, while ~80 % of what was sent beyond the queue was dropped), the loss of that event is not cut a second
    time, and the climb back after the lift stays within 5 s."""
    sim = _cut(queue_bytes)
    cut, lift = 20 * SECOND, 40 * SECOND
    downs = [(t, r) for t, r in sim.reasons if cut <= t < lift]
    first = next((t for t, r in sim.estimator_reasons if t >= cut and r != sim.estimator_reasons[0][1]), None)
    drop_reasons = [(t, r) for t, r in sim.estimator_reasons if cut <= t < cut + SECOND]
    up = sim.first_time(lift, lambda b: b.layer is not None and b.layer[0] == 2)
    print(
        f"\n[cut {queue_bytes} B] down {[((t - cut) / 1e6, r) for t, r in downs]}; estimator "
        f"{[((t - cut) / 1e6, r) for t, r in drop_reasons]}; loss first s {sim.loss(cut, cut + SECOND):.1%}, "
        f"capped {sim.loss(cut, lift):.1%}; up {(up - lift) / 1e6 if up is not None else None} s after the lift"
    )
    assert first is not None
    assert len(downs) == 1 and downs[0][1].startswith("down")
    assert downs[0][0] - cut <= 200 * MS
    assert sim.window(cut + 300 * MS, lift)[0].layer[0] == 0  # one step, to the layer that fits
    assert drop_reasons[0][1].startswith("capacity drop")
    assert not any(r.startswith("loss") for t, r in drop_reasons if t < drop_reasons[0][0] + 300 * MS)
    # Before (the trendline or §6 first, 0.29 / 0.42 s after the cut): 31 % / 34 % in the first second, 2.3 % /
    # 2.7 % over the 20 s (packets sent, audio included).
    assert sim.loss(cut, cut + SECOND) <= 0.2
    assert sim.loss(cut, lift) <= 0.015
    assert up is not None and up - lift <= 5 * SECOND


def test_keyframe_burst_at_a_700k_viewer_is_not_a_capacity_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 700 kbit/s viewer on the 500 kbit/s layer gets keyframes 12 frames large (~25 KB) every 4 s: each one
    leaves the pacer at 2.5x the estimate, builds ~150 ms of queue and arrives at 700 kbit/s, i.e. exactly the
    run of growing delays the capacity-drop rule looks for. The guard (the run delivered at most half of R_hat)
    keeps it from firing: the link delivers at least what it carried. Without the guard it fires, which shows
    the scenario does exercise the rule."""

    def run() -> Sim:
        sim = Sim(700_000, mode="sfu", initial_bps=1_000_000, keyframe_factor=12)
        sim.run(30 * SECOND)
        return sim

    sim = run()
    fired = [t for t, r in sim.estimator_reasons if r.startswith("capacity drop")]
    print(f"\n[keyframes at 700k] switches {[(t / 1e6, r) for t, r in sim.reasons]}; capacity drops {fired}")
    assert not fired
    assert sim.estimator.queue_suspected_us is None  # nor its early warning (viewer_bandwidth._hold_early)
    assert [layer for _, layer in [(0, sim.layer)]] == [(1, ALL_TEMPORAL)]
    assert sim.switches() == 0
    monkeypatch.setattr(bwe, "CAPACITY_DROP_RATIO", 10.0)  # the guard off
    unguarded = run()
    fired = [t for t, r in unguarded.estimator_reasons if r.startswith("capacity drop")]
    print(f"[keyframes at 700k, no guard] capacity drops at {[t / 1e6 for t in fired]}")
    assert fired


def _steady(est: SendSideEstimator, log: SendLog, seq: int, t: int, feedbacks: int, lost: range = range(0),
            hold_us: int = 0) -> tuple[int, int]:  # fmt: skip
    """Feedbacks of 10 packets of 1020 B sent over 50 ms each (1.63 Mbit/s) on a link that carries them (5 ms
    one way). In the last feedback the packets whose index is in `lost` are lost and the first half is held
    `hold_us` and then released at once (a Wi-Fi retry burst)."""
    for number in range(feedbacks):
        arrivals: list[int | None] = []
        last = number == feedbacks - 1
        for i in range(10):
            send = t + i * 5 * MS
            log.record((seq + i) & 0xFFFF, 1020, send)
            arrival = send + 5 * MS
            if last and hold_us and i < 5:
                arrival = t + hold_us + 5 * MS + i * 100  # released together, in order
            arrivals.append(None if last and i in lost else arrival)
        est.on_feedback(_feedback(seq, arrivals), t + 60 * MS + (hold_us if last else 0))
        seq, t = seq + 10, t + 50 * MS
    return seq, t


TOP_1630 = [(0, 150_000, True), (1, 500_000, True), (2, 1_630_000, True)]


def test_short_loss_burst_at_a_viewer_whose_link_is_fine_keeps_its_layer() -> None:
    """7 of 10 packets of one feedback lost (7 of 30 over the loss period) on a link that carries the 1.63 Mbit/s
    layer: §6 cuts by (1 - 0.5p), but the delivered rate (0.77 x the layer) is no capacity drop, so the estimate
    is not capped at it and the viewer stays on the top layer. (Capped, it would be 1.25 Mbit/s: 1.63 > 1.2 x
    1.25, a downgrade.)"""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    selector = LayerSelector()
    assert selector.select(TOP_1630, est.estimate_bps, 0)[0] == 2
    seq, t = _steady(est, log, 0, 0, 40)
    seq, t = _steady(est, log, seq, t, 2, lost=range(2, 9))
    assert est.reason.startswith("loss"), est.reason
    assert est.estimate_bps * 1.2 >= 1_630_000, est.estimate_bps
    assert selector.select(TOP_1630, est.estimate_bps, t)[0] == 2
    # The same loss with the path delivering a fifth of what it carried is a capacity drop: capped.
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    seq, t = _steady(est, log, 0, 0, 40)
    for _ in range(2):
        arrivals: list[int | None] = []
        for i in range(10):
            log.record((seq + i) & 0xFFFF, 1020, t + i * 5 * MS)
            arrivals.append(t + 5 * MS + i * 5 * MS if i % 5 == 0 else None)  # 2 of 10 arrive
        est.on_feedback(_feedback(seq, arrivals), t + 60 * MS)
        seq, t = seq + 10, t + 50 * MS
    assert est.reason.startswith("loss") and est.estimate_bps <= 500_000, (est.reason, est.estimate_bps)


def test_jitter_burst_at_a_viewer_whose_link_is_fine_is_not_a_capacity_drop() -> None:
    """Half a feedback held 80 ms and released at once (Wi-Fi retries): its packets wait less and less (the later
    ones were sent later), so there is no run of growing delays, and the path delivered everything."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    seq, t = _steady(est, log, 0, 0, 40)
    before = est.estimate_bps
    _steady(est, log, seq, t, 1, hold_us=80 * MS)
    assert not est.reason.startswith("capacity drop")
    assert est.queue_suspected_us is None  # nor its early warning (viewer_bandwidth._hold_early)
    assert est.estimate_bps >= 0.85 * before


# Recorded at a Chromium viewer (bench/bwe.py, tbf 300 kbit/s with a 100 ms queue, 0.82 Mbit/s top layer + Opus):
# (arrival ms, one-way delay above the minimum ms, bytes) of what two transport-cc feedbacks acknowledged, the
# first 60 ms before the cut (frames of 3 packets, audio between), the second 70 ms after it.
CHROMIUM_BEFORE_CUT = [
    (0.0, 0.2, 43), (16.5, 0.2, 1034), (16.5, 0.1, 1034), (18.0, 0.0, 1034), (19.5, 0.0, 43), (43.8, 1.0, 43),
    (52.0, 0.2, 1007), (52.2, 0.3, 1007), (52.5, 0.1, 1007), (59.8, 0.1, 43), (83.0, 0.1, 43), (83.8, 0.3, 1129),
    (84.0, 0.2, 1129), (86.2, 1.2, 1129), (88.5, 0.3, 1130), (91.5, 0.1, 1130), (100.0, 0.1, 43),
    (118.2, 0.2, 895), (118.5, 0.3, 896), (118.5, 0.2, 896), (119.5, 0.1, 43), (141.8, 0.3, 162),
    (156.0, 0.8, 1010), (156.0, 0.7, 1010), (156.0, 0.3, 1010), (159.8, 0.0, 140), (182.8, 0.2, 1045),
    (183.0, 0.2, 1045), (183.2, 0.1, 141), (183.2, 0.0, 1046), (200.0, 0.3, 121),
]
CHROMIUM_AFTER_CUT = [
    (217.5, 0.1, 1069), (217.7, 0.3, 1069), (221.3, 2.0, 1069), (225.5, 6.2, 121), (255.3, 33.8, 1070),
    (285.0, 61.1, 1070), (314.5, 87.4, 1070), (318.7, 76.2, 121),
]


def test_capacity_drop_on_a_recorded_chromium_cut() -> None:
    """On the recorded arrivals the bottleneck stays busy from the first queued packet on, though the last one
    (audio, sent 15 ms after the video packet before it) waited less than its predecessor: the drop is seen in
    this first feedback with a queue, at ~280 kbit/s (a rule asking for ever-growing delays saw it 2 feedbacks
    later, after ~6 more packets had been dropped)."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_200_000)
    seq = 0
    for packets, when in ((CHROMIUM_BEFORE_CUT, 210), (CHROMIUM_AFTER_CUT, 330)):
        arrivals: list[int | None] = []
        for i, (arrival_ms, delay_ms, size) in enumerate(packets):
            arrival = int(arrival_ms * MS) + 5 * MS
            log.record(seq + i, size, arrival - int(delay_ms * MS) - 5 * MS)
            arrivals.append(arrival)
        est.on_feedback(_feedback(seq, arrivals), when * MS)
        seq += len(packets)
        if packets is CHROMIUM_BEFORE_CUT:
            assert est.estimate_bps >= 1_000_000 and not est.reason.startswith("capacity drop")
    assert est.reason.startswith("capacity drop"), est.reason
    assert 0.85 * 250_000 <= est.estimate_bps <= 0.85 * 320_000, est.estimate_bps


def _replay(est: SendSideEstimator, log: SendLog, feedbacks: list[tuple[list, int]], seq: int = 0,
            start_ms: int = 0) -> list[tuple[int, str]]:  # fmt: skip
    """(arrival ms, one-way delay above the minimum ms, bytes) lists as CHROMIUM_* above, each acknowledged by one
    feedback at the given ms (both shifted by `start_ms`); the estimate and reason after each."""
    after = []
    for packets, when in feedbacks:
        when += start_ms
        arrivals: list[int | None] = []
        for i, (arrival_ms, delay_ms, size) in enumerate(packets):
            arrival = int((arrival_ms + start_ms) * MS) + 5 * MS
            log.record(seq + i, size, arrival - int(delay_ms * MS) - 5 * MS)
            arrivals.append(arrival)
        est.on_feedback(_feedback(seq, arrivals), when * MS)
        seq += len(packets)
        after.append((est.estimate_bps, est.reason))
    return after


# The recorded cut's next packets, at the same ~300 kbit/s (synthetic: 29.7 ms per 1070 B video packet).
CUT_CONTINUED = [(344.2, 113.0, 1070), (373.9, 138.9, 1070), (378.0, 121.2, 121)]


def test_an_over_estimated_capacity_drop_is_corrected_at_the_next_feedback() -> None:
    """The first feedback after a cut holds few packets; with its last two stamped early (a busy receiver, a
    shaper's bucket) its run reads ~480 kbit/s on a 300 kbit/s link, and the viewer would sit on a layer the link
    cannot carry until the trendline saw over-use (0.25 s later in bench/bwe_cuts.py). The next feedback's run
    delivered less than 0.7x that rate: a second capacity drop of the same congestion event, to ~280 kbit/s. A
    run at about the rate already found is the same event measured again: no second drop (which would hold the
    pacer again, viewer_bandwidth._drain_queue)."""
    early = CHROMIUM_AFTER_CUT[:4] + [(240.3, 18.8, 1070), (259.0, 35.1, 1070)]
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    seq, t = _steady(est, log, 0, 0, 40)  # 1.63 Mbit/s carried, as the top layer in bench/bwe_cuts.py
    (first, first_reason), (second, second_reason) = _replay(
        est, log, [(early, 262), (CHROMIUM_AFTER_CUT[5:], 330)], seq, t // MS - 215)
    assert first_reason.startswith("capacity drop") and 0.85 * 450_000 <= first <= 0.85 * 520_000, first_reason
    assert second_reason.startswith("capacity drop") and 0.85 * 250_000 <= second <= 0.85 * 320_000, second_reason

    log = SendLog()
    est = SendSideEstimator(log, initial_bps=1_200_000)
    after = _replay(est, log, [(CHROMIUM_BEFORE_CUT, 210), (CHROMIUM_AFTER_CUT, 330), (CUT_CONTINUED, 392)])
    dropped_at = est.capacity_drop_us
    assert after[1][1].startswith("capacity drop") and dropped_at == 330 * MS
    assert after[2][0] == after[1][0] and est.capacity_drop_us == dropped_at  # measured again, not a new drop


def test_capacity_drop_survives_a_receiver_clock_jump() -> None:
    """The receiver's clock jumping back (a restart of its arrival clock) leaves no packets of the old clock in
    the capacity-drop window: after the jump a steady link reads as steady, a cut as a cut."""
    log = SendLog()
    est = SendSideEstimator(log, initial_bps=2_500_000)
    seq, t = _steady(est, log, 0, 0, 20)
    arrivals: list[int | None] = []
    for i in range(10):  # the same steady flow, its arrival times 10 s earlier on the viewer's clock
        log.record(seq + i, 1020, t + i * 5 * MS)
        arrivals.append(t + i * 5 * MS + 5 * MS - 10 * SECOND)
    est.on_feedback(_feedback(seq, arrivals, reference=-20 * SECOND), t + 60 * MS)
    assert all(entry[0] <= arrivals[-1] for entry in est._recent_arrivals)
    assert not est.reason.startswith("capacity drop")


# ---------------------------------------------------------------------------------------------------------
# The compiled feedback matcher (gateway/_srtp_send.c FeedbackMatcher) against _match_feedback

from gateway.aiortc_adapter import FeedbackMatcher  # noqa: E402

needs_matcher = pytest.mark.skipif(FeedbackMatcher is None, reason="the compiled extension is not built")


@needs_matcher
@pytest.mark.parametrize("mode", ["elastic", "sfu"])
def test_compiled_matcher_gives_the_python_estimator_run_exactly(mode: str) -> None:
    """The same link run twice, feedback through _match_feedback and through the C matcher: every estimate, layer
    choice and send log state the same, through capacity drops (loss, queues), jitter (reordering), audio beside
    video (interleaved groups), probes (clusters in the log) and the transport seq wrapping."""
    runs = []
    for matcher in (None, FeedbackMatcher):
        sim = Sim(2_000_000, mode=mode, initial_bps=1_000_000, jitter_us=4 * MS, audio=True, seed=11,
                  queue_bytes=6_000, matcher=matcher)
        sim.seq = 65_000  # the transport-wide seq wraps within the first seconds
        sim.run(12 * SECOND, {3 * SECOND: 400_000, 7 * SECOND: 3_000_000})
        runs.append(sim)
    python, native = runs
    assert python.estimator._native_match is None and native.estimator._native_match is not None
    assert python.estimator.feedbacks == native.estimator.feedbacks > 200
    assert [b.estimate for b in python.buckets] == [b.estimate for b in native.buckets]
    assert [b.layer for b in python.buckets] == [b.layer for b in native.buckets]
    assert python.estimator_reasons == native.estimator_reasons
    assert python.log._states == native.log._states and python.estimator._groups == native.estimator._groups
    assert native.estimator._native.trend == python.estimator._prev_trend != 0  # type: ignore[attr-defined]
    assert python.loss(0, 12 * SECOND) > 0  # the small queue did overflow: loss paths were exercised
    assert any(reason.startswith("probe") for _, reason in python.estimator_reasons) or mode == "elastic"


def _twin_estimators(count: int, first_seq: int, rng: random.Random) -> tuple[SendSideEstimator, ...]:
    """Two estimators on equal send logs of `count` packets (some in probe clusters, media or padding), one with the C
    matcher."""
    pair = []
    for matcher in (None, FeedbackMatcher):
        log = SendLog(capacity=256)
        estimator = SendSideEstimator(log, prober=Prober())
        if matcher is not None:
            estimator.use_matcher(matcher)
        pair.append(estimator)
    for k in range(count):
        seq, size, cluster = (first_seq + k) & 0xFFFF, rng.choice((120, 1200, 900)), rng.choice((None, None, 3))
        padding = cluster is not None and k % 2 == 0
        for estimator in pair:
            estimator._log.record(seq, size, 1_000_000 + k * 2_000, cluster, padding)
    return tuple(pair)


@needs_matcher
def test_compiled_matcher_agrees_on_every_fci_good_or_malformed() -> None:
    """Feedback built by TwccRecorder (losses, late arrivals, negative and large deltas, the 24-bit reference
    time wrapping, sequence numbers never sent), then bit flips and truncations of it: the C matcher accepts what
    parse_feedback accepts, returns what _match_feedback returns, and leaves everything unchanged when it refuses."""
    rng = random.Random(2024)
    python, native = _twin_estimators(400, 65_400, rng)
    recorder = TwccRecorder()
    arrival = REFERENCE_TIME_WRAP_US // 2 - 3 * SECOND  # the 24-bit signed reference time wraps in this run
    fcis = []
    for k in range(430):  # the last 30 were never sent: unknown to the log
        if rng.random() < 0.15:
            continue  # lost (some arrive later: below)
        arrival += rng.choice((100, 2_000, 2_000, 90_000, -3_000))
        recorder.record((65_400 + k) & 0xFFFF, arrival)
        if k % 40 == 39:
            fcis += [parse_compound(packet)[0].raw for packet in recorder.build_feedback(1, 2)]
            late = (65_400 + k - rng.randrange(1, 30)) & 0xFFFF
            recorder.record(late, arrival + 500)
    fcis += [parse_compound(packet)[0].raw for packet in recorder.build_feedback(1, 2)]
    assert len(fcis) >= 11
    oldest = 1_000_000 + 20 * 2_000  # the first 20 packets are too old to count
    totals = [0] * 5  # received, lost, unknown, probe entries, groups
    CHECKED_WARNING_RATES.clear()
    for fci in fcis:
        matched = check_same(python, native, fci, oldest)
        totals = [totals[0] + matched[0], totals[1] + matched[1], totals[2] + matched[7],
                  totals[3] + len(matched[10] or ()), totals[4] + len(matched[9])]
    assert all(totals), totals  # every kind of entry came up
    assert python._groups[bwe.G_REF_OFFSET] == REFERENCE_TIME_WRAP_US  # the reference time did wrap (unwrapped)
    for iteration in range(3000):
        data = bytes(damage(rng, rng.choice(fcis), rng.randrange(1, 4)))
        states, groups, threshold = bytes(native._log._states), native._groups.tobytes(), native.threshold_ms
        try:
            parse_feedback(data)
        except ValueError:
            with pytest.raises(ValueError):
                native._native_match(data, oldest)
            assert bytes(native._log._states) == states and native._groups.tobytes() == groups
            assert native.threshold_ms == threshold
            continue
        check_same(python, native, data, oldest, f"iteration {iteration}")
    assert any(CHECKED_WARNING_RATES)  # the early warning's parts came up too


CHECKED_RUN_RATES: list[int] = []  # check_same's capacity-drop run rates, for tests that need a nonzero one
CHECKED_WARNING_RATES: list[int] = []  # ... and its early warning's rates


def check_same(python: SendSideEstimator, native: SendSideEstimator, fci: bytes, oldest: int, note: str = "") -> tuple:
    """The FCI through _match_feedback + _on_group and through the C matcher: the same match (with the windows), the
    same groups' outcome (over-use seen, the detector's signal and threshold), the same capacity-drop run rate and
    receive rates, and the same send log and group state after. Returns the Python match."""
    want = python._match_feedback(parse_feedback(fci), oldest)
    got = native._native_match(fci, oldest)
    # Slot 8: the windows (the capacity-drop check's run rate, R_hat, the recent rate, the early warning's rate), each
    # matcher's own.
    assert got[:9] + got[10:11] == want[:9] + want[10:11], note
    CHECKED_RUN_RATES.append(want[8][0])
    CHECKED_WARNING_RATES.append(want[8][3])
    overuse = any([python._on_group(*group) for group in want[9]])
    assert (got[11], got[12], native.threshold_ms) == (overuse, python._signal, python.threshold_ms), note
    assert native._native.trend == python._prev_trend, note  # type: ignore[attr-defined]  # the very same doubles
    assert python._log._states == native._log._states and python._groups == native._groups, note
    return want


@needs_matcher
def test_compiled_matcher_refuses_arrays_that_are_not_the_send_log() -> None:
    """The C matcher reads and writes the Python arrays in place, so it checks each one's item size and kind, the
    rings' one power-of-two length and the group state's size before keeping any."""
    estimator = SendSideEstimator(SendLog(capacity=64))
    seqs, sizes, times, clusters, states = estimator._log.buffers
    groups = estimator._groups
    parameters = (20, 0.9, 4.0, 60, 12.5, 6.0, 600.0, 15.0, 100.0, 0.01, 0.00018, 10.0, 3_000_000)
    windows = (3_000_000, 200_000, 25_000, 30_000, 3, 1_000, 500_000, 100_000, 200_000, 60_000, 15_000, 15_000, 2, 500)
    FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, parameters, windows)  # right
    wrong = [
        ((array("d", [0.0]) * 64, sizes, times, clusters, states, groups), TypeError),  # doubles for seqs
        ((seqs, sizes, array("i", [0]) * 64, clusters, states, groups), TypeError),  # 4-byte send times
        ((seqs, sizes, times, clusters, bytearray(32), groups), ValueError),  # a ring of another length
        ((seqs, sizes, times, clusters, states, array("q", [0]) * 3), ValueError),  # group state too short
        ((bytes(256), sizes, times, clusters, states, groups), (TypeError, BufferError)),  # read-only
    ]
    for arrays, error in wrong:
        with pytest.raises(error):
            FeedbackMatcher(*arrays, 5_000, 100_000, parameters, windows)
    with pytest.raises(ValueError):
        FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, (99,) + parameters[1:], windows)
    with pytest.raises(ValueError):  # a rate window whose minimum span is 0 would divide by zero
        FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, parameters,
                        windows[:7] + (0,) + windows[8:])
    with pytest.raises(ValueError):  # the early warning's run longer than the check's own: it would warn after it
        FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, parameters,
                        windows[:11] + (40_000, 2, 500))
    with pytest.raises(ValueError):  # a negative byte floor for the early warning's parts
        FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, parameters, windows[:13] + (-1,))
    with pytest.raises(TypeError):  # the tuple without that floor (an extension built before it)
        FeedbackMatcher(seqs, sizes, times, clusters, states, groups, 5_000, 100_000, parameters, windows[:13])


def test_steady_state_keeps_no_container_the_collector_must_track() -> None:
    """What the estimator keeps per second (the RTT minima) must not be objects the cyclic collector tracks: at
    500 viewers one list per viewer per second lived long enough to reach the oldest generation and triggered a
    full collection (~100 ms with the event loop held, BENCHMARKS.md) every ~13 s. Tuples of ints are untracked by
    the collector's first pass over them."""
    sim = Sim(2_500_000)
    sim.run(12 * SECOND)
    mins = sim.estimator._rtt_mins
    assert len(mins) >= 10, "the run kept too few RTT minima to say anything"
    gc.collect()
    assert [entry for entry in mins if gc.is_tracked(entry)] == []


@needs_matcher
def test_compiled_matcher_windows_grow_past_their_first_allocation() -> None:
    """Packets sent 0.25 ms apart into a bottleneck that delivers one per 0.6 ms (a capacity drop at ~40 Mbit/s):
    the capacity-drop check's window then holds hundreds of arrivals, past the 64 the C matcher's ring starts
    with, and it grows without losing or reordering any: the same run rate (nonzero: the queue grows) and receive
    rates as the Python windows, FCI after FCI."""
    rng = random.Random(5)
    python, native = _twin_estimators(0, 0, rng)
    recorder = TwccRecorder()
    fcis = []
    for k in range(600):
        for estimator in (python, native):
            estimator._log.record(k, 1200, 1_000_000 + k * 250, None)
        recorder.record(k, 5_000_000 + k * 600)
        if k % 100 == 99:
            fcis += [parse_compound(packet)[0].raw for packet in recorder.build_feedback(1, 2)]
    largest = 0
    CHECKED_RUN_RATES.clear()
    CHECKED_WARNING_RATES.clear()
    for fci in fcis:
        check_same(python, native, fci, 0)
        largest = max(largest, len(python._recent_arrivals))
    assert largest >= 256, largest  # the send log (capacity 256) knows no more
    assert any(CHECKED_RUN_RATES), CHECKED_RUN_RATES
    assert any(CHECKED_WARNING_RATES), CHECKED_WARNING_RATES


# ---------------------------------------------------------------------------------------------------------
# The drain after a capacity drop (simulcast/viewer_bandwidth.py ViewerBandwidth._drain_queue)


def test_pacer_hold_release_and_discard() -> None:
    """Held, nothing leaves (fast path or queue) until the hold's end or a release; then the queue leaves at the
    pacing rate from the burst allowance, not as the catch-up a late poll gets (the held time is not owed)."""
    pacer = Pacer(1_000_000, factor=1.0, burst_us=5 * MS)  # 125 bytes/ms, burst 625 bytes
    pacer.hold(200 * MS)
    assert pacer.held and not pacer.can_send_now(100, 0)
    for index in range(10):
        pacer.enqueue(index, 1200)
    assert pacer.poll(150 * MS) == [] and pacer.next_send_us(150 * MS) == 200 * MS
    pacer.release(150 * MS)
    assert not pacer.held
    assert pacer.poll(150 * MS) == [0]  # the burst allowance (625 bytes) lets one packet out, into debt
    assert pacer.next_send_us(150 * MS) == 150 * MS + 4_600  # 575 bytes of debt at 125 bytes/ms
    # A hold that runs out by itself: the poll at its end releases it, again from the burst allowance.
    pacer.hold(1 * SECOND)
    assert pacer.poll(900 * MS) == []
    assert pacer.poll(1 * SECOND) == [1] and not pacer.held
    # discard: what the predicate names leaves the queue, the rest keeps its order.
    assert pacer.discard(lambda packet: packet % 2 == 0) == [2, 4, 6, 8]  # in queue order
    assert pacer.queued_packets == 4 and pacer.queued_bytes == 4 * 1200 and pacer.bucket[4] == 4
    released = []
    now = 10 * SECOND
    while pacer.queued_packets:
        released += pacer.poll(now)
        now = pacer.next_send_us(now) or now
    assert released == [3, 5, 7, 9]


class _Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _fci(recorder: TwccRecorder) -> bytes:
    from gateway.rtcp import lone_transport_cc_fci

    (packet,) = recorder.build_feedback(0x1111, 0x2222)
    fci = lone_transport_cc_fci(packet)
    assert fci is not None
    return fci


def _viewer_on_a_clock(monkeypatch: pytest.MonkeyPatch, compiled: bool, base: int) -> tuple:
    """A transport-cc ViewerBandwidth on a clock set to `base` (the test moves `clock.now`), its feedback matched in
    C or in Python, its transport-wide seqs from 0, and a recorder for its feedback: (viewer, clock, recorder)."""
    import simulcast.viewer_bandwidth as vb

    if compiled and vb.FeedbackMatcher is None:
        pytest.skip("gateway._srtp_send not built")
    clock = _Clock(base)
    monkeypatch.setattr(vb, "now_us", clock)
    monkeypatch.setattr(vb, "FeedbackMatcher", vb.FeedbackMatcher if compiled else None)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.counters[0] = 0
    return bw, clock, TwccRecorder()


def _report_recorded(bw: object, recorder: TwccRecorder, seq: int, packets: list, zero: int, base: int) -> int:
    """`packets` as (arrival ms after `zero`, one-way delay above the minimum ms, bytes): logged as sent by the
    viewer (5 ms one way) and recorded as arrived (times relative to `base`). Returns the next seq."""
    for arrival_ms, delay_ms, size in packets:
        arrival = zero + int(arrival_ms * MS) + 5 * MS
        bw.sent(bw.next_seq(), size, arrival - int(delay_ms * MS) - 5 * MS)  # type: ignore[attr-defined]
        recorder.record(seq, arrival - base)
        seq += 1
    return seq


def _probe_feedback(compiled: bool, padding: bool, media_lost: int) -> tuple[SendSideEstimator, Prober, int]:
    """30 media packets with a probe cluster's 30 padding packets between them, all sent while the cluster runs;
    every padding packet is lost, `media_lost` media packets from the 11th on too. Returns the estimator after that one
    feedback, its prober and the cluster id."""
    log = SendLog()
    prober = Prober()
    estimator = SendSideEstimator(log, prober=prober, initial_bps=1_000_000)
    if compiled:
        estimator.use_matcher(FeedbackMatcher)
    base = 10 * SECOND
    cluster = prober.start(1_000_000, base)
    recorder = TwccRecorder()
    for k in range(30):
        media, pad = 2 * k, 2 * k + 1
        log.record(media, 1200, base + k * MS, cluster)
        log.record(pad, 255, base + k * MS, cluster, padding=padding)
        if not 10 <= k < 10 + media_lost:
            recorder.record(media, 5 * SECOND + k * MS + 10 * MS)
    recorder.record(60, 5 * SECOND + 40 * MS)  # one media packet after the cluster, so the last padding is reported
    log.record(60, 1200, base + 30 * MS)
    estimator.on_feedback_fci(_fci(recorder), base + 80 * MS)
    return estimator, prober, cluster


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_probe_padding_lost_fails_the_probe_but_is_not_media_loss(compiled: bool) -> None:
    """A probe whose padding the path drops (the path does not carry its rate) fails as a probe; the §6 loss
    controller counts media only, so it neither reads 50% loss nor decreases. Media lost beside the padding still
    counts. The same packets logged without the padding mark read as 50% loss and cut the estimate."""
    if compiled and FeedbackMatcher is None:
        pytest.skip("gateway._srtp_send not built")
    estimator, prober, cluster = _probe_feedback(compiled, padding=True, media_lost=0)
    assert estimator.last_lost == 30  # the feedback did report the padding lost...
    assert estimator.loss == 0.0 and estimator.loss_based_bps >= 1_000_000  # ...and the controller saw no loss
    assert not estimator.reason.startswith("loss")
    assert prober._clusters[cluster].lost == 30 and prober._clusters[cluster].received == 30
    assert SendLog().is_padding(0) is False
    lossy, _, _ = _probe_feedback(compiled, padding=True, media_lost=6)
    assert lossy.loss == pytest.approx(6 / 31) and lossy.loss_based_bps < 1_000_000 and lossy.reason.startswith("loss")
    unmarked, _, _ = _probe_feedback(compiled, padding=False, media_lost=0)
    assert unmarked.loss == pytest.approx(30 / 61) and unmarked.loss_based_bps < 1_000_000


def test_padding_is_marked_in_the_send_log_and_read_back_as_its_cluster() -> None:
    log = SendLog()
    log.record(7, 255, 1_000, 3, padding=True)
    log.record(8, 1200, 1_000, 3)
    log.record(9, 1200, 1_000)
    assert log.lookup(7) == (1_000, 255, 3) and log.lookup(8) == (1_000, 1200, 3) and log.lookup(9)[2] is None
    assert log.is_padding(7) and not log.is_padding(8) and not log.is_padding(9) and not log.is_padding(10)
    assert bwe.cluster_id(bwe.padding_cluster(0x7FFFFFFF)) == 0x7FFFFFFF and bwe.padding_cluster(1) < bwe.NO_CLUSTER


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_capacity_drop_holds_video_until_its_queue_has_drained(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    """The recorded Chromium cut through a ViewerBandwidth: the feedback that finds the capacity drop holds video
    (and probes) back; a feedback that reports only packets sent before the drop keeps it held (the queue in
    front of them still drains); the first one reporting a packet sent after it (audio, never held) ends the
    hold, and what waited leaves at the estimate until the pacer's queue is empty."""
    import simulcast.viewer_bandwidth as vb

    base = 1_000_000 * SECOND
    bw, clock, recorder = _viewer_on_a_clock(monkeypatch, compiled, base)
    seq = 0
    for packets, when in ((CHROMIUM_BEFORE_CUT, 210), (CHROMIUM_AFTER_CUT, 330)):
        seq = _report_recorded(bw, recorder, seq, packets, base, base)
        clock.now = base + when * MS
        assert not bw.pacer.held
        bw.on_feedback(_fci(recorder))
    drop = clock.now
    assert bw.estimator.reason.startswith("capacity drop") and bw.estimator.capacity_drop_us == drop
    assert bw.pacer.held and bw.may_send_now(1000) == 0
    for index in range(8):  # the lower layer's keyframe, deferred to the pacer
        bw.pacer.enqueue(index, 1000)
    # Packets sent before the drop, still in the queue, arrive: the hold stays.
    for size, sent in ((1070, 300), (1070, 320)):
        clock.now += 20 * MS
        bw.sent(bw.next_seq(), size, base + sent * MS)
        recorder.record(seq, clock.now - base - 1 * MS)
        seq += 1
    bw.on_feedback(_fci(recorder))
    assert bw.pacer.held and bw.pacer.poll(clock.now) == []
    # The first packet sent after the drop (audio) is reported received: the queue in front of it has gone.
    clock.now += 40 * MS
    bw.sent(bw.next_seq(), 121, drop + 5 * MS)
    recorder.record(seq, clock.now - base - 1 * MS)
    seq += 1
    bw.on_feedback(_fci(recorder))
    assert not bw.pacer.held
    assert bw.pacer.factor == vb.DRAIN_PACING_FACTOR  # what waited leaves at the estimate
    assert bw.pacer.rate_bps == pytest.approx(bw.estimator.estimate_bps, rel=0.01)
    released = bw.pacer.poll(clock.now)
    assert 1 <= len(released) <= 2  # from the burst allowance, not the held time's catch-up
    t = clock.now
    for _ in range(20):  # bounded: 8 packets
        t = bw.pacer.next_send_us(t) or t
        bw.pacer.poll(t)
    assert bw.pacer.queued_packets == 0
    clock.now = t + 60 * MS
    bw.sent(bw.next_seq(), 121, clock.now - 30 * MS)
    recorder.record(seq, clock.now - base - 1 * MS)
    bw.on_feedback(_fci(recorder))
    assert bw.pacer.factor in (vb.CONGESTED_PACING_FACTOR, vb.PACING_FACTOR)  # drained: pacing as before


# Shaped on what bench/bwe_cuts.py printed of the matcher's arrivals (Chromium viewer, tbf 300 kbit/s with a 100 ms
# queue and a 3.2 KB bucket, ~1.5 Mbit/s top layer + Opus; printed to the ms, filled in to 0.1 ms): (arrival ms, one-way
# delay above the minimum ms, bytes) after a cut at 0 ms, per feedback. The frame sent at 43 ms: three packets pass on
# the bucket, the fourth waits 28 ms; the feedback at 100 ms ends there.
EARLY_CUT_FIRST = [(6.0, 0.0, 101), (12.0, 0.0, 1106), (13.0, 0.2, 1106), (14.5, 0.6, 1107), (15.3, 1.0, 1107),
                   (24.0, 0.0, 100)]  # fmt: skip
EARLY_CUT_WARNING = [(43.2, 0.0, 1037), (43.6, 0.1, 1037), (45.0, 1.2, 1037), (72.0, 28.0, 1037)]
# Another cut's: the third packet left the bucket as early as the second, so the run is the last two packets only.
EARLY_CUT_PAIR = [(32.2, 0.0, 1018), (32.5, 0.0, 1018), (32.8, 0.0, 1018), (60.9, 28.0, 1018)]
# Another's (as in bench/bwe_cuts.py, with the queue shorter): packets a millisecond or less apart in delay read as
# busy back to 24 ms, so the whole run (44.5 ms, 22 ms grown) reads as no queue; its last part is one.
EARLY_CUT_REACHING = [(30.0, 0.5, 114), (45.0, 0.9, 114), (46.0, 1.0, 1037), (46.2, 1.1, 1037), (46.5, 1.3, 1037),
                      (68.5, 22.0, 1037)]  # fmt: skip
EARLY_CUT_DROP = [(102.0, 57.0, 1037), (106.0, 61.0, 121), (110.0, 47.0, 121), (143.0, 67.0, 1172)]
# Instead of EARLY_CUT_DROP: the delay falls back at once (a short stall upstream, not the link), all of it arrives,
# audio sent after the warning (at 110 ms) too.
EARLY_CUT_STALL = [(74.0, 0.5, 1037), (80.0, 0.0, 121), (90.0, 0.3, 1037), (95.0, 0.0, 1037), (115.0, 0.0, 121)]
# Or: only audio sent before the warning, as late as the packet before it: no drop found, the queue still there.
EARLY_CUT_QUEUED = [(100.0, 27.0, 121)]


def _carrying(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> tuple:
    """A ViewerBandwidth carrying ~1.63 Mbit/s for 2 s (feedbacks of 10 packets of 1020 B sent over 50 ms, 5 ms one
    way). Returns (the ViewerBandwidth, its clock, the feedback recorder, the next seq, the time after it, base)."""
    base = 1_000_000 * SECOND
    bw, clock, recorder = _viewer_on_a_clock(monkeypatch, compiled, base)
    seq = 0
    t = base
    for _ in range(40):
        for i in range(10):
            bw.sent(bw.next_seq(), 1020, t + i * 5 * MS)
            recorder.record(seq, t + i * 5 * MS + 5 * MS - base)
            seq += 1
        clock.now = t + 60 * MS
        bw.on_feedback(_fci(recorder))
        t += 50 * MS
    return bw, clock, recorder, seq, t, base


def _early_cut(monkeypatch: pytest.MonkeyPatch, compiled: bool, after: list,
               warning: list = EARLY_CUT_WARNING) -> tuple:  # fmt: skip
    """`_carrying`, then EARLY_CUT_FIRST, `warning` and `after`, each reported by one feedback at 40 / 100 / 160 ms.
    Returns (the ViewerBandwidth, its clock, the warning feedback's time, [estimate after each of the three], the
    feedback recorder, the next seq)."""
    bw, clock, recorder, seq, cut, base = _carrying(monkeypatch, compiled)
    estimates = []
    warned = 0
    for packets, when in ((EARLY_CUT_FIRST, 40), (warning, 100), (after, 160)):
        seq = _report_recorded(bw, recorder, seq, packets, cut, base)
        clock.now = cut + when * MS
        bw.on_feedback(_fci(recorder))
        estimates.append(bw.estimator.estimate_bps)
        if packets is warning:
            warned = clock.now
            assert bw.estimator.queue_suspected_us == warned and bw.estimator.capacity_drop_us is None
            assert bw.pacer.held and bw.may_send_now(1000) == 0 and bw.early_holds == 1
            for index in range(5):  # the next frame, deferred to the pacer
                bw.pacer.enqueue(index, 1000)
        elif packets is EARLY_CUT_FIRST:  # 1 ms of queue: nothing to warn of
            assert bw.estimator.queue_suspected_us is None and not bw.pacer.held
    return bw, clock, warned, estimates, recorder, seq


@pytest.mark.parametrize("warning", [EARLY_CUT_WARNING, EARLY_CUT_PAIR, EARLY_CUT_REACHING],
                         ids=["three", "two", "reaching"])
@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_early_warning_holds_video_one_feedback_before_the_capacity_drop(
    monkeypatch: pytest.MonkeyPatch, compiled: bool, warning: list
) -> None:
    """Recorded cuts whose first queued packet (28 ms) comes last in its feedback: too short a run for the
    capacity-drop check (30 ms, 3 packets). Before, the decision came at the next feedback, and the frames the top
    layer sent meanwhile went into the full queue and were lost (bench/bwe_cuts.py: 14-16 in such cuts). Now that run
    is the early warning: video waits (the estimate and the layer stay), the next feedback finds the capacity drop,
    and the drain goes on from the warning: the switch down drops what waited (`discard_before_switch`), which never
    reached the link."""
    import simulcast.viewer_bandwidth as vb

    bw, clock, warned, estimates, recorder, seq = _early_cut(monkeypatch, compiled, EARLY_CUT_DROP, warning)
    assert estimates[0] > 1_300_000 and estimates[1] >= estimates[0]  # the warning alone decreases nothing
    assert bw.estimator.capacity_drop_us == clock.now and bw.estimator.reason.startswith("capacity drop")
    assert 0.85 * 230_000 <= estimates[2] <= 0.85 * 330_000, estimates  # ~300 kbit/s
    assert bw._draining_since == warned and bw.pacer.held  # held on, from the warning
    assert bw.pacer.queued_packets == 5 and bw.early_holds_released == 0
    stand_in = type("StandIn", (), {"ssrc": 1, "rtx_ssrc": 2})()
    bw.pacer.discard(lambda packet: True)
    bw.pacer.enqueue((stand_in, None, 0, 0, 1), 1000)
    assert len(bw.discard_before_switch(stand_in)) == 1  # draining: the old layer's queue goes at the switch
    # The hold ends at the first feedback reporting a packet sent after the warning (audio, never held), though
    # it was sent before the feedback that found the drop: the queue in front of it left too.
    assert warned + 5 * MS < bw.estimator.capacity_drop_us
    clock.now += 40 * MS
    bw.sent(bw.next_seq(), 121, warned + 5 * MS)
    recorder.record(seq, warned + 50 * MS + 5 * MS - 1_000_000 * SECOND)  # behind the 1172 B packet, 45 ms queued
    bw.on_feedback(_fci(recorder))
    assert bw.estimator.capacity_drop_us < clock.now  # the same drop, not a second one
    assert not bw.pacer.held and bw.pacer.factor == vb.DRAIN_PACING_FACTOR  # what waited leaves at the estimate


# Shaped on two unconfirmed warnings in tests/test_bandwidth.py (the INFO line "its run delivered 23 / 34 kbit/s",
# both while another browser started on the host; most likely a receiver that read its socket late): a frame through
# at once, then audio sent 20 ms apart arriving 41 ms apart, the second 21 ms later than the first. The part measures
# one audio packet's arrival gap.
LATE_READ_AUDIO = [(43.2, 0.0, 1037), (43.6, 0.1, 1037), (45.0, 1.2, 1037), (52.0, 0.0, 121), (93.0, 21.0, 121)]
# The same gap carrying a video packet: one packet a packet time late, a cut's first sign (EARLY_CUT_PAIR).
LATE_VIDEO = LATE_READ_AUDIO[:-1] + [(93.0, 21.0, 1037)]


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_an_audio_packet_read_late_is_no_early_warning(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    """The early warning's part must deliver SUSPECT_MIN_BYTES after its first packet: a gap before one audio packet
    says nothing of what the path delivers. The same gap before a video packet still warns."""
    for packets, warns in ((LATE_READ_AUDIO, False), (LATE_VIDEO, True)):
        bw, clock, recorder, seq, cut, base = _carrying(monkeypatch, compiled)
        seq = _report_recorded(bw, recorder, seq, EARLY_CUT_FIRST, cut, base)
        clock.now = cut + 40 * MS
        bw.on_feedback(_fci(recorder))
        _report_recorded(bw, recorder, seq, packets, cut, base)
        clock.now = cut + 100 * MS
        bw.on_feedback(_fci(recorder))
        assert bw.estimator.capacity_drop_us is None
        assert (bw.estimator.queue_suspected_us == clock.now) is warns, packets[-1]
        assert bw.pacer.held is warns and bw.early_holds == int(warns)


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_an_early_warning_the_next_feedback_does_not_confirm_releases_video(monkeypatch: pytest.MonkeyPatch,
                                                                             caplog: pytest.LogCaptureFixture,
                                                                             compiled: bool) -> None:  # fmt: skip
    """The same warning, then a feedback whose delays fell back at once, that lost nothing and that reports audio
    sent after the warning: no capacity drop, and no queue in front of the hold. What waited leaves at once (the
    pacer's timer no longer waits for the hold), and the estimate is untouched. The release is logged at INFO with
    what fired the warning (a warning no drop followed delayed video for nothing)."""
    with caplog.at_level(logging.INFO, logger="simulcast.viewer_bandwidth"):
        bw, clock, warned, estimates, _, _ = _early_cut(monkeypatch, compiled, EARLY_CUT_STALL)
    assert bw.estimator.capacity_drop_us is None and not bw.estimator.reason.startswith("capacity drop")
    assert estimates[2] >= 0.85 * estimates[0]
    assert not bw.pacer.held and bw._draining_since is None
    assert bw.early_holds == 1 and bw.early_holds_released == 1
    assert bw.stats()["early_holds_released"] == 1
    assert bw.pacer.poll(clock.now)  # what waited may leave now
    suspected = bw.estimator.queue_suspected_bps
    assert suspected > 0  # the delivered rate of the run part the warning fired on
    [line] = [r.getMessage() for r in caplog.records if "early warning not confirmed" in r.getMessage()]
    assert "(a packet sent after it was reported)" in line and f"delivered {suspected // 1000} kbit/s" in line


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "c"])
def test_an_early_hold_stays_while_the_queue_in_front_of_it_does(monkeypatch: pytest.MonkeyPatch,
                                                                  compiled: bool) -> None:  # fmt: skip
    """The next feedback neither finds the drop nor reports anything sent after the warning: what waited would go
    into the queue still in front of it (in bench/bwe_cuts.py, released at such a feedback, ~13 KB of the top layer
    did, and the check confirmed the cut one feedback later). The hold stays, until EARLY_HOLD_MAX_US at most."""
    import simulcast.viewer_bandwidth as vb

    bw, clock, warned, estimates, recorder, seq = _early_cut(monkeypatch, compiled, EARLY_CUT_QUEUED)
    assert bw.estimator.capacity_drop_us is None and bw.estimator.newest_reported_send_us < warned
    assert bw.pacer.held and bw.early_holds == 1 and bw.early_holds_released == 0
    clock.now = warned + vb.EARLY_HOLD_MAX_US  # a feedback at the hold's limit, still about packets sent before it
    bw.sent(bw.next_seq(), 121, warned - 20 * MS)
    recorder.record(seq, warned + 20 * MS + 5 * MS - 1_000_000 * SECOND)
    bw.on_feedback(_fci(recorder))
    assert bw.estimator.capacity_drop_us is None
    assert not bw.pacer.held and bw.early_holds_released == 1 and bw.pacer.poll(clock.now)


def test_a_hold_without_feedback_ends_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """No feedback reports a packet sent after the drop (a video-only stream, feedback lost): the hold ends
    after DRAIN_HOLD_MAX_US all the same, and no probe starts while what waited drains, nor while video waits on an
    early warning."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.pacer.hold(clock.now + vb.DRAIN_HOLD_MAX_US)
    bw._draining_since = clock.now
    bw.pacer.enqueue("keyframe", 1000)
    assert bw.pacer.next_send_us(clock.now) == clock.now + vb.DRAIN_HOLD_MAX_US
    assert bw.pacer.poll(clock.now + vb.DRAIN_HOLD_MAX_US - 1) == []
    assert bw.pacer.poll(clock.now + vb.DRAIN_HOLD_MAX_US) == ["keyframe"] and not bw.pacer.held
    # While what waited drains, select names a probe target but starts no cluster; a viewer not draining does.
    layers = [StandInLayer(s, b) for s, b in ((0, 150_000), (1, 1_500_000))]
    bw.pacer.enqueue("delta frame", 1000)
    calm = vb.ViewerBandwidth(transport_cc=True)
    early = vb.ViewerBandwidth(transport_cc=True)
    clock.now += vb.DRAIN_HOLD_MAX_US
    for viewer in (bw, calm, early):  # one feedback each: transport-cc is live, the path shows no queue
        recorder = TwccRecorder()
        viewer.counters[0] = 0
        for index in range(3):
            viewer.sent(viewer.next_seq(), 200, clock.now + index * MS)
            recorder.record(index, 10 * SECOND + index * MS)
        clock.now += 10 * MS
        viewer.on_feedback(_fci(recorder))
    early._early_hold_since = clock.now  # what `_hold_early` does on a warning
    for viewer in (bw, calm, early):
        assert viewer.select(layers)[0] == 0
        assert viewer.selector.probe_target_bps
    assert not calm.probing and not bw.probing  # the first choice: its keyframe comes before any probe
    clock.now += vb.SWITCH_PACING_US
    for viewer in (bw, calm, early):
        assert viewer.select(layers)[0] == 0
        assert viewer.selector.probe_target_bps
    assert calm.probing and not bw.probing and not early.probing


def test_a_drain_whose_queue_never_empties_ends_after_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a capacity drop the video still forwarded can run above the estimate (the estimate fell below the
    lowest layer): at the estimate the pacer's queue then never empties. The drain ends DRAIN_MAX_US after the drop
    all the same, and the pacer goes back to at least the forwarded rate. Without the limit it stayed at the
    estimate, the queue outgrew the pacer's 2 s and lost its oldest packets, which the viewer counted lost."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.forwarded_bps = lambda: 3_000_000  # far above the 1 Mbit/s estimate
    bw.counters[0] = 0
    recorder = TwccRecorder()
    drop = clock.now
    bw._draining_since = drop  # a capacity drop's feedback, its hold already over
    bw.pacer.enqueue("waiting", 1000)
    seq = 0

    def feedback_at(now: int) -> None:
        nonlocal seq
        clock.now = now
        for _ in range(3):  # the path shows no queue
            bw.sent(bw.next_seq(), 200, now - 20 * MS)
            recorder.record(seq, now - 10 * MS)
            seq += 1
        bw.on_feedback(_fci(recorder))

    feedback_at(drop + vb.DRAIN_MAX_US // 2)
    assert bw._draining_since == drop and bw.pacer.factor == vb.DRAIN_PACING_FACTOR  # still draining, queue not empty
    assert bw.pacer.rate_bps == pytest.approx(bw.estimator.estimate_bps, rel=0.01)
    feedback_at(drop + vb.DRAIN_MAX_US)
    assert bw._draining_since is None and bw.pacer.queued_packets == 1
    assert bw.pacer.rate_bps >= vb.CONGESTED_PACING_FACTOR * 3_000_000 * 0.99


def _video_through_pacer(pacer: Pacer, bps: int, seconds: float, start_us: int) -> tuple[int, int]:
    """`bps` of 1,000-byte video packets, evenly spaced, through `pacer` (sent when it allows, else queued and sent
    when `poll`ed at the next packet's time): (packets dropped, longest wait in the queue, µs)."""
    gap = 8_000 * 1_000_000 // bps
    longest = 0
    t = start_us
    for _ in range(int(seconds * 1_000_000) // gap):  # bounded: one iteration per packet
        for sent_at in pacer.poll(t):
            longest = max(longest, t - sent_at)
        if not pacer.can_send_now(1000, t):
            pacer.enqueue(t, 1000)
        t += gap
    if pacer.queued_packets:
        longest = max(longest, t - min(entry[0] for entry in pacer._queue))
    return pacer.dropped, longest


def test_the_pacer_never_paces_below_the_forwarded_video_except_while_a_drop_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer forwarded one 6 Mbit/s layer (OBS, FFmpeg) on the 1 Mbit/s initial estimate: the pacer runs at 2.5x
    the video's rate, so the video passes with no wait; paced at 2.5x the estimate it would wait ever longer, then be
    dropped. While a capacity drop's queue drains the estimate rules all the same."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    unfloored = vb.ViewerBandwidth(transport_cc=True)
    unfloored.repace()
    assert unfloored.pacer.rate_bps == pytest.approx(vb.PACING_FACTOR * vb.INITIAL_BPS, rel=0.01)
    dropped, longest = _video_through_pacer(unfloored.pacer, 6_000_000, 3.0, clock.now)
    assert dropped > 0 and longest > 500_000  # what the floor prevents

    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.forwarded_bps = lambda: 6_000_000
    bw.repace()
    assert bw.pacer.rate_bps == pytest.approx(vb.PACING_FACTOR * 6_000_000, rel=0.01)
    assert _video_through_pacer(bw.pacer, 6_000_000, 3.0, clock.now) == (0, 0)
    bw.forwarded_bps = lambda: 300_000  # video below the estimate: the estimate sets the pace
    bw.repace()
    assert bw.pacer.rate_bps == pytest.approx(vb.PACING_FACTOR * vb.INITIAL_BPS, rel=0.01)
    bw.forwarded_bps = lambda: 6_000_000
    bw._draining_since = clock.now  # a capacity drop's queue drains: at the estimate, whatever the video
    bw.repace()
    assert bw.pacer.factor == vb.DRAIN_PACING_FACTOR
    assert bw.pacer.rate_bps == pytest.approx(bw.estimator.estimate_bps, rel=0.01)


def test_no_probe_starts_while_a_switch_keyframe_is_on_its_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a spatial switch's decision (the first choice included) until SWITCH_PACING_US after its keyframe began
    to leave (`on_switch`), select names the probe target but starts no cluster; afterwards it does."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.counters[0] = 0
    recorder = TwccRecorder()
    for index in range(3):  # one feedback: transport-cc is live, the path shows no queue
        bw.sent(bw.next_seq(), 200, clock.now + index * MS)
        recorder.record(index, 10 * SECOND + index * MS)
    clock.now += 10 * MS
    bw.on_feedback(_fci(recorder))
    layers = [StandInLayer(s, b) for s, b in ((0, 150_000), (1, 1_500_000))]
    assert bw.select(layers)[0] == 0 and bw.selector.probe_target_bps and not bw.probing  # decided: no probe
    clock.now += 300 * MS
    bw.on_switch()  # the keyframe arrived 0.3 s later and leaves now
    clock.now += vb.SWITCH_PACING_US - MS
    assert bw.select(layers)[0] == 0 and bw.selector.probe_target_bps and not bw.probing
    clock.now += MS
    assert bw.select(layers)[0] == 0 and bw.probing


@pytest.mark.parametrize("full", [True, False], ids=["full", "jitter"])
def test_no_probe_for_a_higher_layer_starts_on_a_full_path(monkeypatch: pytest.MonkeyPatch, full: bool) -> None:
    """Feedback whose RTT stays PROBE_MAX_QUEUE_US above the minimum. While the viewer acknowledges about the estimate
    (the layer fills the path) select names the probe target but starts no cluster, though the estimator itself would
    allow one (`can_probe`), until the RTT is back near its minimum. With far less acknowledged than the estimate
    (an RTT that jitters on a path with room) the same queue reading does not stop the probe."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.counters[0] = 0
    recorder = TwccRecorder()
    seq = 0
    count, size = (12, 1200) if full else (3, 200)  # ~1.1 Mbit/s (the estimate follows it up) or ~60 kbit/s

    def feedback(rtt_us: int, queue_us: int = 0) -> None:
        """One 60 ms burst of packets and its feedback `rtt_us` after the last one; `queue_us`: the forward path's
        queue (in the arrival times too), the rest of the RTT above 10 ms is the way back."""
        nonlocal seq
        start, step = clock.now, 60 * MS // count
        for k in range(count):
            bw.sent(bw.next_seq(), size, start + k * step)
            recorder.record(seq, start + k * step + 10 * SECOND + queue_us)
            seq += 1
        clock.now = start + (count - 1) * step + rtt_us
        bw.on_feedback(_fci(recorder))
        clock.now = start + 60 * MS + rtt_us

    layers = [StandInLayer(s, b) for s, b in ((0, 150_000), (1, 3_000_000))]
    feedback(10 * MS)
    assert bw.select(layers)[0] == 0
    standing = 60 * MS if full else vb.PROBE_MAX_QUEUE_US + 5 * MS
    if full:  # the queue builds (over-use: the estimate goes below what arrives), then stands
        for _ in range(10):
            feedback(10 * MS)
        for step in range(1, 4):
            feedback(10 * MS + standing * step // 3, standing * step // 3)
        assert bw.estimator._decreased
    for _ in range(5 if full else 20):  # (on a full path the next over-use comes within a few feedbacks)
        feedback(10 * MS + standing, standing if full else 0)
    e = bw.estimator
    assert e.queuing_delay_us >= vb.PROBE_MAX_QUEUE_US and e.can_probe
    assert (e.acknowledged_bps >= vb.PATH_FULL_SHARE * e.estimate_bps) == full
    clock.now += vb.SWITCH_PACING_US  # past the first choice's window
    assert bw.select(layers)[0] == 0 and bw.selector.probe_target_bps
    assert bw.probing != full
    if full:
        for _ in range(30):
            feedback(10 * MS)
        assert e.queuing_delay_us < vb.PROBE_MAX_QUEUE_US and e.can_probe
        assert bw.select(layers)[0] == 0 and bw.probing


def test_discard_before_switch_drops_only_the_old_layers_queued_media_while_draining() -> None:
    """At a switch while a capacity drop's queue drains, the track's queued media leaves the pacer, oldest first
    in what is returned, and the munger hands those never-sent sequence numbers to the new layer: the viewer sees
    the new keyframe right after the last packet that really left. The track's queued RTX (retransmissions of the
    layer it leaves) is dropped too but not returned (those sequence numbers are not the media's); other tracks'
    packets stay queued. At an ordinary switch nothing is dropped and the new layer follows the queued packets."""
    from simulcast.rtp_munger import RtpMunger
    from simulcast.viewer_bandwidth import ViewerBandwidth

    class Down:
        ssrc = 0x1234
        rtx_ssrc = 0x9999

        def __init__(self) -> None:
            self.munger = RtpMunger()

    def queued_track(bw: ViewerBandwidth) -> tuple[Down, Down, list[int]]:
        down, other = Down(), Down()
        down.munger.switch_to(100, 9000, 0.0)
        sent = [down.munger.map(100 + i, 9000, 0.0)[0] for i in range(3)]  # these left before the pacer queued
        queued = [down.munger.map(103 + i, 12000, 0.0)[0] for i in range(5)]
        for seq in queued:
            bw.pacer.enqueue((down, None, seq, 0, Down.ssrc), 1000)
        bw.pacer.enqueue((down, None, 7, 0, Down.rtx_ssrc), 300)  # a retransmission of the layer's media, on RTX
        bw.pacer.enqueue((other, None, queued[0], 0, Down.ssrc), 300)  # another track's: kept
        return down, other, sent + queued

    bw = ViewerBandwidth(transport_cc=True)
    down, other, mapped = queued_track(bw)
    assert bw.discard_before_switch(down) == []  # an ordinary switch: the old layer's frames still go out
    assert bw.pacer.queued_packets == 7
    down.munger.switch_to(5000, 77000, 0.1)
    assert down.munger.map(5000, 77000, 0.1)[0] == (mapped[-1] + 1) & 0xFFFF

    bw = ViewerBandwidth(transport_cc=True)
    down, other, mapped = queued_track(bw)
    bw._draining_since = 1  # after a capacity drop
    dropped = bw.discard_before_switch(down)
    assert [packet[2] for packet in dropped] == mapped[3:]
    down.munger.unsend(dropped[0][2])  # what DownTrack._switch does with them
    down.munger.switch_to(5000, 77000, 0.1, 1)  # the new layer, from its keyframe
    first_new = down.munger.map(5000, 77000, 0.1)[0]
    assert first_new == (mapped[2] + 1) & 0xFFFF  # no gap after the last packet that left
    assert [(p[0] is down, p[2], p[4]) for p in bw.pacer.poll(10**12)] == [(False, mapped[3], Down.ssrc)]
    # A NACK for the new layer's packets finds them; one from before the switch maps to the old layer.
    assert down.munger.unmap(first_new)[:2] == (1, 5000)
    assert down.munger.unmap(mapped[1])[:2] == (0, 101)

def test_the_layer_choice_runs_again_at_once_only_when_it_may_have_to_go_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a feedback the choice runs again at once when the estimate fell below the one it was made with or a
    layer went alive or dead, else at most every RESELECT_INTERVAL_US: a rising estimate waits (an upgrade is held
    1 s anyway), a falling one does not (whep/session.py `_reselect` asks `select_due`)."""
    from simulcast import viewer_bandwidth
    from simulcast.viewer_bandwidth import RESELECT_INTERVAL_US, ViewerBandwidth

    clock = [10 * SECOND]
    monkeypatch.setattr(viewer_bandwidth, "now_us", lambda: clock[0])
    layers = [StandInLayer(0, 150_000), StandInLayer(1, 500_000), StandInLayer(2, 1_500_000)]
    bw = ViewerBandwidth(transport_cc=True)
    assert bw.select_due(layers)  # never chosen yet
    bw.estimator._delay_bps = bw.estimator._loss_bps = 2_600_000.0
    assert bw.select(layers)[0] == 2
    clock[0] += 60 * MS
    assert not bw.select_due(layers)
    bw.estimator._delay_bps = bw.estimator._loss_bps = 2_700_000.0  # rose: waits
    assert not bw.select_due(layers)
    bw.estimator._delay_bps = bw.estimator._loss_bps = 2_599_000.0  # below what the choice was made with
    assert bw.select_due(layers)
    bw.estimator._delay_bps = bw.estimator._loss_bps = 2_600_000.0
    assert not bw.select_due(layers)
    layers[2].active = False  # the top layer died
    assert bw.select_due(layers)
    assert bw.select(layers)[:2] == (1, ALL_TEMPORAL)
    clock[0] += 60 * MS
    assert not bw.select_due(layers)
    layers[2].active = True
    assert bw.select_due(layers)
    bw.select(layers)
    clock[0] += RESELECT_INTERVAL_US - 1
    assert not bw.select_due(layers)
    clock[0] += 1
    assert bw.select_due(layers)
    gc.collect()  # what each choice keeps (one per viewer every 0.2 s) must not reach the collector's oldest generation
    assert not gc.is_tracked(bw._selected_alive)


def test_a_layer_the_path_carries_is_kept_while_the_estimate_climbs_back() -> None:
    """A 700 kbit/s viewer on the 0.59 Mbit/s middle layer after a keyframe burst's loss: estimate 0.49 Mbit/s in
    additive increase, 0.65 Mbit/s acknowledged (CI, tests/test_bandwidth.py). The path carries the layer, so it
    stays while the estimator reads no over-use and no loss; it goes once the path is not clear or the viewer
    gets clearly less than the layer."""
    layers = [(0, 150_000, True), (1, 590_000, True), (2, 1_500_000, True)]
    selector = LayerSelector(up_hold_us=1 * SECOND)
    assert selector.select(layers, 800_000, 0)[0] == 1
    kept = selector.select(layers, 485_000, 1 * SECOND, acknowledged_bps=651_000, path_clear=True)
    assert kept[:2] == (1, ALL_TEMPORAL) and kept[2] == "hold"
    assert selector.select(layers, 485_000, 2 * SECOND, acknowledged_bps=651_000)[0] == 0  # over-use or loss: down
    selector = LayerSelector(up_hold_us=1 * SECOND)
    selector.select(layers, 800_000, 0)
    assert selector.select(layers, 485_000, 1 * SECOND, acknowledged_bps=520_000, path_clear=True)[0] == 0


def test_the_path_is_clear_only_without_over_use_or_loss() -> None:
    """What ViewerBandwidth tells the selector: clear while the estimator increases on a normal signal with
    under 2% loss; any of decrease / hold, over-use or loss is not."""
    from simulcast.viewer_bandwidth import ViewerBandwidth

    seen: list[bool] = []

    class Spy(LayerSelector):
        def select(self, *args: object, **kwargs: object) -> tuple[int, int, str]:  # type: ignore[override]
            seen.append(kwargs["path_clear"])  # type: ignore[arg-type]
            return super().select(*args, **kwargs)  # type: ignore[arg-type]

    bw = ViewerBandwidth(transport_cc=True)
    bw.selector = Spy(up_hold_us=1 * SECOND)
    layers = [StandInLayer(0, 150_000), StandInLayer(1, 590_000)]
    e = bw.estimator
    bw.select(layers)  # a new estimator: increase, normal, no loss
    e._state = "hold"
    bw.select(layers)
    e._state, e._signal = "increase", 1  # over-use
    bw.select(layers)
    e._signal, e._loss = 0, 0.05
    bw.select(layers)
    e._loss = 0.0
    bw.select(layers)
    assert e.signal == "normal" and seen == [True, False, False, False, True]


def test_a_switch_paces_the_new_layers_keyframe_at_1_2x_the_estimate_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """ViewerBandwidth.on_switch (DownTrack._switch calls it for video, the first layer included): for
    SWITCH_PACING_US the pacer runs at 1.2x the estimate instead of 2.5x, then back at the next feedback's pacing;
    the drain after a capacity drop still wins."""
    from simulcast import viewer_bandwidth
    from simulcast.viewer_bandwidth import (CONGESTED_PACING_FACTOR, DRAIN_PACING_FACTOR, PACING_FACTOR,
                                            SWITCH_PACING_US, ViewerBandwidth)

    clock = [10 * SECOND]
    monkeypatch.setattr(viewer_bandwidth, "now_us", lambda: clock[0])
    bw = ViewerBandwidth(transport_cc=True)
    bw._pace()
    assert bw.pacer.factor == PACING_FACTOR
    estimate = bw.estimator.estimate_bps
    bw.on_switch()
    assert bw.pacer.factor == CONGESTED_PACING_FACTOR
    assert bw.pacer.bucket[0] == pytest.approx(estimate * CONGESTED_PACING_FACTOR / 8_000_000)  # bytes per µs
    clock[0] += SWITCH_PACING_US - 1
    bw._pace()  # a feedback within the window
    assert bw.pacer.factor == CONGESTED_PACING_FACTOR
    clock[0] += 1
    bw._pace()
    assert bw.pacer.factor == PACING_FACTOR
    bw._draining_since = clock[0]
    bw.on_switch()
    assert bw.pacer.factor == DRAIN_PACING_FACTOR


async def test_the_switch_window_ends_by_itself_for_a_viewer_that_sends_no_feedback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1.2x window after a switch also ends without a feedback to re-pace (a timer), and close() cancels it."""
    import asyncio

    from simulcast import viewer_bandwidth
    from simulcast.viewer_bandwidth import CONGESTED_PACING_FACTOR, PACING_FACTOR, ViewerBandwidth

    monkeypatch.setattr(viewer_bandwidth, "SWITCH_PACING_US", 20_000)
    bw = ViewerBandwidth(transport_cc=True)
    bw.on_switch()
    assert bw.pacer.factor == CONGESTED_PACING_FACTOR
    await asyncio.sleep(0.1)
    assert bw.pacer.factor == PACING_FACTOR and bw._switch_timer is None
    bw.on_switch()
    bw.on_switch()  # a second switch within the window: one timer, the later end
    bw.close()
    assert bw._switch_timer is None
    await asyncio.sleep(0.1)
    assert bw.pacer.factor == CONGESTED_PACING_FACTOR  # closed: nothing runs any more


class _CountingDownTrack:
    """Stands in for the DownTrack a ViewerBandwidth sends its queued packets through: counts them."""

    active = True

    def __init__(self) -> None:
        self.sent = 0

    def send_stamped(self, template: object, seq: int, timestamp: int, ssrc: int) -> None:
        self.sent += 1


async def test_a_drain_never_costs_the_viewer_a_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer forwarded one 8 Mbit/s layer (FFmpeg, OBS: nothing lower to move to) on a free link; a delay
    spike (a busy host) reads as a capacity drop to 1.5 Mbit/s. The drain holds the video, then paces it at that
    estimate, and its queue grows at 6.5 Mbit/s: past the pacer's limit (2 s of the drain's rate) the pacer
    would lose its oldest packets, numbered for the viewer, which counts them lost (tests/test_bandwidth.py's
    single-layer viewer once lost 373 packets, 363 of them `pacer_queue_full`). At that limit the drain ends
    instead: the pacer goes back to at least the forwarded rate, and sends what waited."""
    import simulcast.viewer_bandwidth as vb

    clock = _Clock(5 * SECOND)
    monkeypatch.setattr(vb, "now_us", clock)
    bw = vb.ViewerBandwidth(transport_cc=True)
    bw.forwarded_bps = lambda: 8_000_000
    bw.estimator._loss_bps = 1_500_000  # what the spike's feedback left
    assert bw.estimator.estimate_bps == 1_500_000
    drop = clock.now
    bw._draining_since = drop  # the capacity drop's feedback (`_drain_queue`)
    bw.pacer.hold(drop + vb.DRAIN_HOLD_MAX_US)
    bw._pace()
    assert bw.pacer.rate_bps == pytest.approx(1_500_000, rel=0.01)
    down = _CountingDownTrack()
    loop = asyncio.get_running_loop()
    size, gap = 1_200, 1_200  # 1,200-byte packets every 1.2 ms: 8 Mbit/s
    packets = (vb.DRAIN_MAX_US + 200 * MS) // gap
    try:
        for n in range(packets):  # bounded; the timers never run: the loop is not yielded to
            clock.now = drop + n * gap
            bw._send_due(loop)
            if bw.pacer.can_send_now(size, clock.now):
                down.sent += 1
            else:
                bw.enqueue(down, None, n, 0, 0x1234, size)  # type: ignore[arg-type]
        assert bw.pacer.dropped == 0
        assert bw._draining_since is None and not bw.pacer.held  # ended by its queue, before DRAIN_MAX_US
        assert bw.drains_ended_at_limit == 1 and bw.stats()["drains_ended_at_pacer_limit"] == 1
        assert bw.pacer.rate_bps >= vb.CONGESTED_PACING_FACTOR * 8_000_000 * 0.99
        assert down.sent + bw.pacer.queued_packets == packets
        assert bw.pacer.queued_bytes < 8_000_000 // 8 // 10  # what waited is leaving: under 100 ms of the video
    finally:
        bw.close()

    # A viewer on its way down to a layer that fits the estimate: the drain goes on, the switch empties the queue.
    moving_down = vb.ViewerBandwidth(transport_cc=True)
    moving_down.forwarded_bps = lambda: 1_000_000  # the target layer's rate, under the estimate
    moving_down.estimator._loss_bps = 1_500_000
    moving_down._draining_since = clock.now = drop
    moving_down._pace()
    try:
        for n in range(int(moving_down.pacer.limit_bytes) // size + 2):  # bounded: just past the pacer's limit
            moving_down.enqueue(down, None, n, 0, 0x1234, size)  # type: ignore[arg-type]
        assert moving_down._draining_since == drop and moving_down.drains_ended_at_limit == 0
    finally:
        moving_down.close()
