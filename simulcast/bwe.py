"""Per-viewer send-side bandwidth estimation, probing, layer selection and pacing. Pure and network-free.

Section numbers (§) refer to draft-ietf-rmcat-gcc-02, "A Google Congestion Control Algorithm for Real-Time
Communication" (GCC), unless they name another document.

One viewer's pieces, and how the forwarding path drives them:

    log = SendLog()                                   # every packet sent to the viewer, by transport seq
    prober = Prober()
    estimator = SendSideEstimator(log, prober=prober, initial_bps=1_000_000, max_bps=...)
    selector = LayerSelector()
    pacer = Pacer()

    # per packet sent (media, RTX or padding), with the transport-wide seq stamped in its header (§3):
    cluster = prober.active_cluster
    log.record(seq, size, now_us, cluster)
    if cluster is not None:
        prober.on_sent(size)
    # on TWCC feedback (RTPFB FMT 15) from the viewer (on_feedback_fci(fci, now_us) parses it too, in C after
    # estimator.use_matcher(gateway._srtp_send.FeedbackMatcher)):
    estimator.on_feedback(parse_feedback(fci), now_us)
    # on REMB / receiver reports from viewers without transport-cc (§3, §7):
    estimator.on_remb(bitrate, now_us); estimator.on_receiver_report(block.fraction_lost, now_us)
    # after each feedback (or on a 100-200 ms timer):
    proof = prober.success_bps(now_us) if estimator.has_transport_cc else estimator.estimate_bps
    spatial, temporal, reason = selector.select(layers, estimator.estimate_bps, now_us,
                                                acknowledged_bps=estimator.acknowledged_bps,
                                                probe_ok_bps=proof)
    target = selector.probe_target_bps
    if target and estimator.has_transport_cc and estimator.can_probe and prober.ready(now_us, target):
        prober.start(target, now_us)
    # every 1-5 ms while prober.active_cluster is not None: send prober.padding_needed(now_us) bytes of
    # padding / RTX duplicates, each recorded in the log with the cluster id (not through the pacer).
    pacer.set_estimate(estimator.estimate_bps)

Without transport-cc no probe can be measured and nothing is acknowledged, so the selector's proof falls back
on the estimate itself (REMB is the viewer's own receive-side estimate; with RR only, §7, the estimate is the
loss-based one). A REMB receiver caps its estimate near 1.5x what it receives (§5.5), so such a viewer climbs
one layer at a time at best.

What comes from GCC and what does not:
- §5.1/§5.2 packet groups of burst_time (5 ms) by send time, plus the burst merge of §5.2, are as written.
- §5.3 specifies a scalar Kalman filter for m(i). We use the trendline filter that replaced it in libwebrtc
  (least-squares slope of the smoothed accumulated delay over the last 20 groups, smoothing 0.9, gain 4):
  the brief asked for it. Its output is compared with the §5.4 adaptive threshold as if it were m(i).
- §5.4 over-use detector and adaptive threshold: K_u = 0.01, K_d = 0.00018, del_var_th(0) = 12.5 ms,
  clamp [6, 600] ms, no update when |m| exceeds the threshold by more than 15 ms, overuse_time_th = 10 ms,
  no over-use while m(i) < m(i-1).
- §5.5 AIMD: the state table, multiplicative (8 %/s) / additive (half a packet per response time) increase,
  convergence judged against an EMA (0.95) of the receive rates seen at decreases (3 standard deviations),
  decrease to beta (0.85) x R_hat, R_hat over a 0.5 s window. Our readings where the draft leaves room:
  * "A_hat(i) < 1.5 * R_hat(i)" is a ceiling on increases only (it never lowers the estimate); otherwise a
    successful probe would be undone by the next update, since a forwarding SFU sends whatever layer it
    forwards, not what the estimate allows.
  * The draft assumes one update per response time; we update per feedback (20/s), so the additive
    increase's 1000-bit floor is scaled by elapsed/response_time like alpha.
  * Hold "waits until built-up queues have drained": besides the detector's under-use, we stay in Hold
    while the feedback RTT is more than 100 ms above its 30 s minimum (a queue standing still has no delay
    gradient, so the detector alone reads it as normal after a capacity drop into a deep buffer).
- §6 loss-based controller (>10 %: x(1 - 0.5p); <2 %: x1.05; hold between). Loss is counted over at least
  20 packets (or 1 s) rather than per feedback, so one lost packet of five does not read as 20 % loss; the
  decrease starts from the current final estimate (As_hat(i-1) is the final rate whenever delay limits it)
  and happens at most once per feedback RTT + 300 ms (losses behind a long queue arrive over several
  feedbacks; one congestion event must not cut the rate several times). It is capped at the rate the path
  delivered while losing only when that is a capacity drop (at most half of R_hat, as below): a short loss
  burst on a link that carries the layer lowers the delivered rate by the loss itself.
- Capacity drop (ours, in the §5.4 detector's place; §5.5 then decreases as written, to beta x the rate the
  path delivers): the trendline needs several 5 ms groups and overuse_time_th, so after a cut from 1.6 Mbit/s
  to 300 kbit/s it signalled after ~0.3 s, while every packet beyond the new capacity was being dropped (tc
  tbf's 100 ms queue fills in ~25 ms at a 5x overload). Once the queue is full, loss is reported only behind
  it, later still. So each feedback also looks at the received packets of the last 200 ms of arrival time, at
  the run ending with the newest one over which the bottleneck stayed busy (each packet was sent before its
  predecessor left the queue: the predecessor's queuing delay, its one-way delay above the window's minimum,
  exceeds the send gap; or the packet waited longer than its predecessor): has the delay grown >= 25 ms over
  it, and by at least half its arrival span (the path delivered at most half of what was sent meanwhile)? A
  busy bottleneck delivers at its capacity, so the run's rate (the lowest over its recent parts of >= 30 ms
  and >= 3 packets: a queue already building at the old rate does not count) is the new capacity. Over-use
  when that rate is at most half of R_hat (what the path carried over the last 0.5 s). The guard: a keyframe
  burst at a viewer whose link carries its layer builds the same queue, but then the link delivers at least
  its usual rate (the burst is simply above it), so the ratio stays near or above 1. A jitter spike (Wi-Fi
  retries) releases its held packets at once: no rate can be measured over their few ms, and everything was
  delivered. At most once per feedback RTT + 300 ms, and it counts as the loss controller's decrease for that
  event (the losses of the same overload arrive over the next feedbacks; §6 would otherwise cut again),
  unless a later run delivered less than 0.7x the rate the last drop was measured at: the first feedback
  after a cut holds few packets, the first of them passed by a shaper's token bucket at line rate, and its
  rate can be well above the link's (510 kbit/s on 300; the viewer then sat on a layer the link could not
  carry until the trendline saw over-use 0.25 s later).
- Early warning (ours): the same check over the run's shorter recent parts, each judged alone (SUSPECT_*: >= 15 ms
  of delay grown over >= 15 ms and >= 2 packets delivering >= 500 B after the first: more than one audio packet),
  under the same guard, sets `queue_suspected_us` and changes no estimate. Behind a shaper's token bucket the first
  feedback with a queue often ends at the first packet that waited, one packet time (~28 ms at 300 kbit/s) behind
  the one sent with it that passed on the bucket, and the check then fires one feedback (~60 ms) later. The viewer's
  pacer holds video on the warning until a feedback confirms the drop or shows the queue gone
  (simulcast/viewer_bandwidth.py `_hold_early`): a single late packet on a link that carries its layer (a Wi-Fi
  retry) costs about one feedback interval of video delay, never a layer.
- Successful probe results (not in GCC) raise the delay-based estimate to the measured probe rate; failed
  ones are ignored (they measure the bottleneck itself; adopting them leaves no headroom).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from operator import itemgetter
from typing import Callable, Iterable, Sequence

from simulcast.twcc import REFERENCE_TIME_WRAP_US, TwccFeedback, parse_feedback

__all__ = [
    "SendLog",
    "SendSideEstimator",
    "Prober",
    "LayerSelector",
    "Pacer",
    "ALL_TEMPORAL",
    "STATE_INCREASE",
    "STATE_HOLD",
    "STATE_DECREASE",
]

# ---------------------------------------------------------------------------------------------------------
# Parameters (§5.6 Table 1 unless noted)

BURST_TIME_US = 5_000  # §5.2 / §5.6 burst_time
MAX_BURST_US = 100_000  # ours: a §5.2 arrival-burst merge never makes a group span more than this
RESET_GAP_US = 3_000_000  # ours: a gap this long between groups (pause, clock jump) restarts the filter
TRENDLINE_WINDOW = 20  # groups in the least-squares window (libwebrtc trendline, replaces the §5.3 Kalman)
TRENDLINE_SMOOTHING = 0.9  # EMA of the accumulated delay
TRENDLINE_GAIN = 4.0  # threshold gain applied to the slope
TRENDLINE_MAX_DELTAS = 60  # the slope is scaled by min(deltas seen, 60)
THRESHOLD_INITIAL_MS = 12.5  # §5.4 del_var_th(0)
THRESHOLD_MIN_MS = 6.0  # §5.4 clamp
THRESHOLD_MAX_MS = 600.0
THRESHOLD_MAX_OFFSET_MS = 15.0  # §5.4: no update when |m(i)| - del_var_th(i) > 15
THRESHOLD_MAX_DT_MS = 100.0  # ours: cap on t(i) - t(i-1) in the threshold update (after a pause)
K_UP = 0.01  # §5.4 K_u
K_DOWN = 0.00018  # §5.4 K_d
OVERUSE_TIME_TH_MS = 10.0  # §5.4 overuse_time_th
BETA = 0.85  # §5.5 decrease factor
ETA_PER_SECOND = 1.08  # §5.5 multiplicative increase, at most 8 % per second
RATE_WINDOW_US = 500_000  # §5.5 R_hat window T, [0.5, 1] s RECOMMENDED
MIN_RATE_SPAN_US = 100_000  # ours: R_hat needs this much arrival time to be trusted
RECENT_RATE_WINDOW_US = 200_000  # ours: the receive rate right now, for decreases after a capacity drop
RECENT_RATE_MIN_SPAN_US = 60_000
DELIVERED_MIN_SPAN_US = 30_000  # ours: a loss period's delivered rate needs this much arrival time
CONVERGENCE_SMOOTHING = 0.95  # §5.5 EMA of the receive rate at decreases
CONVERGENCE_MIN_STD = 0.05  # ours: the standard deviation is at least 5 % of the average
MAX_RATE_FACTOR = 1.5  # §5.5 A_hat(i) < 1.5 * R_hat(i)
LOSS_HIGH = 0.10  # §6
LOSS_LOW = 0.02  # §6
LOSS_INCREASE = 1.05  # §6
LOSS_MIN_PACKETS = 20  # ours: evaluate loss over at least this many packets...
LOSS_MAX_PERIOD_US = 1_000_000  # ...or this long, whichever comes first
LOSS_CEILING_FACTOR = 1.5  # ours: As_hat stays within 1.5 x A_hat while a delay-based estimate exists
LOSS_DECREASE_GAP_US = 300_000  # ours: one loss decrease per feedback RTT + this (one congestion event)
DRAINED_QUEUE_US = 100_000  # ours: Hold (§5.5) lasts while the feedback RTT exceeds its minimum by more
MIN_RTT_WINDOW_US = 30_000_000  # ours: the minimum feedback RTT is taken over this long (a queue standing
# longer than this would become the new minimum; at 0.85 x capacity a 4 s queue takes ~28 s to drain)
# Ours: a capacity drop seen within one or two feedbacks (see SendSideEstimator._capacity_drop).
QUEUE_WINDOW_US = 200_000  # the arrival time the check looks back over
QUEUE_JUMP_US = 25_000  # over the run (the bottleneck busy throughout), the delay grows this much...
QUEUE_RUN_MIN_US = 30_000  # ...and its rate is measured over at least this much arrival time...
QUEUE_RUN_MIN_PACKETS = 3  # ...and this many received packets (the first included)
BUSY_SLACK_US = 1_000  # timestamp noise allowed for when judging whether the bottleneck stayed busy
CAPACITY_DROP_RATIO = 0.5  # the run's delivered rate is at most this share of R_hat (the guard)
# Ours (issue #4): the same check over a shorter part of the run (the early warning, `queue_suspected_us`): the delay
# grown this much over a part of at least this much arrival time and this many packets, under the same guard. Two
# packets: behind a shaper's token bucket the first sign of a cut is one packet a whole packet time (at the new rate)
# later than the one sent with it, which passed on the bucket.
SUSPECT_JUMP_US = 15_000
SUSPECT_RUN_MIN_US = 15_000
SUSPECT_RUN_MIN_PACKETS = 2
# ... and the part delivers at least this many bytes after its first packet: more than an audio packet (Opus in 20 ms
# frames: ~40-320 B). A part that carried one audio packet measures one arrival gap, not a rate. Such parts fired the
# warning twice in tests/test_bandwidth.py on links that carried their layers (the INFO line: "its run delivered 23 /
# 34 kbit/s"), both while another browser started on the same host: most likely a receiver that read its socket late.
# Each delayed a viewer's video for nothing. A cut's first sign, one video packet a packet time late, carries ~1 KB.
SUSPECT_MIN_BYTES = 500
# Within one congestion event a further capacity drop counts only when its run delivered less than this share
# of the last one's rate: the first feedbacks after a cut hold a few packets, and a shaper's token bucket
# passes the first of them at line rate (seen with tc tbf: 510 kbit/s measured on a 300 kbit/s link).
CAPACITY_REDROP_RATIO = 0.7
CARRIED_SHARE = 0.95  # ours: an acknowledged rate this close to a layer's bitrate (audio included) carries it
TWCC_ACTIVE_US = 2_000_000  # ours: transport-cc feedback this recent makes REMB / RR loss secondary
HISTORY_US = 5_000_000  # ours: feedback about packets sent longer ago than this is ignored

STATE_INCREASE = "increase"
STATE_HOLD = "hold"
STATE_DECREASE = "decrease"

_NORMAL = 0
_OVERUSE = 1
_UNDERUSE = 2
_SIGNAL_NAMES = ("normal", "overuse", "underuse")

# SendLog per-packet feedback state
_UNREPORTED = 0
_REPORTED_LOST = 1
_REPORTED_RECEIVED = 2
NO_CLUSTER = -1  # SendLog: sent outside any probe cluster


def padding_cluster(cluster_id: int) -> int:
    """What the SendLog's cluster ring holds for a probe cluster's padding (cluster ids are >= 1): -1 - id, so <= -2.
    Media sent while a cluster runs holds the id itself. The prober counts both; the §6 loss controller counts only
    media (`SendSideEstimator._apply_feedback`)."""
    return -1 - cluster_id


def cluster_id(value: int) -> int:
    """The probe cluster of a cluster ring value other than NO_CLUSTER (padding's included)."""
    return value if value >= 0 else -1 - value


_DELAY = itemgetter(1)  # the one-way delay of a _recent_arrivals entry (arrival, delay, size)

# SendSideEstimator._groups slots (gateway/_srtp_send.c FeedbackMatcher GROUP_*): the §5.2 group being built, the
# previous complete group, and the raw / unwrapping offset of the feedback reference time.
G_FIRST_SEND, G_LAST_SEND, G_FIRST_ARRIVAL, G_LAST_ARRIVAL, G_PREV_SEND, G_PREV_ARRIVAL, G_REF_RAW, G_REF_OFFSET = range(8)
NONE = -(1 << 63)  # an empty _groups slot

# Pacer.bucket slots (gateway/_srtp_send.c reads and writes the same ones)
_RATE, _BURST, _BUDGET, _UPDATED, _QUEUED, _HOLD = range(6)


# ---------------------------------------------------------------------------------------------------------
# Send log


class SendLog:
    """What was sent to one viewer, by transport-wide sequence number (§3: the sender maps feedback
    {sequence number, arrival time} pairs to send times).

    A preallocated ring indexed by `seq & (capacity - 1)`: `record` does five array stores and allocates
    nothing. The default 8192 slots hold 5 s of a 13 Mbps viewer at 1200-byte packets; older entries are
    overwritten, and the estimator ignores feedback about packets sent more than `HISTORY_US` ago.
    `lookup(seq)` returns None for a sequence number whose slot now holds another packet.

    The rings are `array.array`s (C arrays behind a buffer): a viewer's C lanes (gateway/_srtp_send.c
    `TransportWide`) record the packets they send straight into them, as `record` does.
    """

    __slots__ = ("capacity", "_mask", "_seqs", "_sizes", "_times", "_clusters", "_states")

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 16 or capacity > 65536 or capacity & (capacity - 1):
            raise ValueError("SendLog capacity must be a power of two in [16, 65536]")
        self.capacity = capacity
        self._mask = capacity - 1
        self._seqs = array("i", [-1]) * capacity  # 16-bit transport seq held by the slot, -1 if none
        self._sizes = array("i", [0]) * capacity
        self._times = array("q", [0]) * capacity  # send time, µs
        # Probe cluster id, NO_CLUSTER if none, padding_cluster(id) for a cluster's padding.
        self._clusters = array("i", [NO_CLUSTER]) * capacity
        self._states = bytearray(capacity)  # _UNREPORTED / _REPORTED_LOST / _REPORTED_RECEIVED

    @property
    def buffers(self) -> tuple[array, array, array, array, bytearray]:
        """(seqs, sizes, times, clusters, states): the rings, for a C writer."""
        return self._seqs, self._sizes, self._times, self._clusters, self._states

    def record(
        self, transport_seq: int, size_bytes: int, send_time_us: int, probe_cluster: int | None = None,
        padding: bool = False,
    ) -> None:
        """Note a packet sent with this 16-bit transport-wide sequence number (0..65535, not checked); `padding`:
        it is probe padding of `probe_cluster`, not media."""
        index = transport_seq & self._mask
        self._seqs[index] = transport_seq
        self._sizes[index] = size_bytes
        self._times[index] = send_time_us
        if probe_cluster is None:
            self._clusters[index] = NO_CLUSTER
        else:
            self._clusters[index] = padding_cluster(probe_cluster) if padding else probe_cluster
        self._states[index] = _UNREPORTED

    def lookup(self, seq: int) -> tuple[int, int, int | None] | None:
        """(send_time_us, size_bytes, probe_cluster) of the packet with this sequence number, or None."""
        index = seq & self._mask
        if self._seqs[index] != seq & 0xFFFF:
            return None
        cluster = self._clusters[index]
        return self._times[index], self._sizes[index], None if cluster == NO_CLUSTER else cluster_id(cluster)

    def is_padding(self, seq: int) -> bool:
        """Whether the packet with this sequence number was recorded as probe padding."""
        index = seq & self._mask
        return self._seqs[index] == seq & 0xFFFF and self._clusters[index] < NO_CLUSTER


# ---------------------------------------------------------------------------------------------------------
# Delay-based estimation


class _Trendline:
    """The arrival-time filter (§5.3 position; trendline instead of the draft's Kalman filter).

    Input: one inter-group delay variation d(i) (ms, §5.1) per completed group and its arrival time.
    Output: the modified trend, min(groups seen, 60) x slope x 4, compared by the over-use detector (§5.4)
    with del_var_th as m(i) would be. The slope is the least-squares slope of the smoothed (EMA 0.9)
    accumulated delay against arrival time over the last 20 groups, kept as running sums: O(1) per group,
    with the sums recomputed from scratch (relative to the oldest point) each time the ring wraps, so
    rounding cannot accumulate and the values stay small.
    """

    __slots__ = (
        "_xs",
        "_ys",
        "_filled",
        "_pos",
        "_accumulated",
        "_smoothed",
        "_origin_ms",
        "_bx",
        "_by",
        "_sx",
        "_sy",
        "_sxx",
        "_sxy",
        "deltas",
    )

    def __init__(self) -> None:
        self._xs = [0.0] * TRENDLINE_WINDOW
        self._ys = [0.0] * TRENDLINE_WINDOW
        self.reset()

    def reset(self) -> None:
        self._filled = 0
        self._pos = 0
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._origin_ms: float | None = None
        self._bx = self._by = 0.0  # the point the sums are taken relative to
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.deltas = 0

    def update(self, delay_variation_ms: float, arrival_ms: float) -> float | None:
        """Add one group's d(i); return the modified trend once the window is full, else None."""
        origin = self._origin_ms
        if origin is None:
            origin = self._origin_ms = arrival_ms
        if self.deltas < 1000:
            self.deltas += 1
        self._accumulated += delay_variation_ms
        smoothed = self._smoothed = (
            TRENDLINE_SMOOTHING * self._smoothed + (1 - TRENDLINE_SMOOTHING) * self._accumulated
        )
        x = arrival_ms - origin
        pos = self._pos
        xs = self._xs
        ys = self._ys
        filled = self._filled
        if filled == 0:
            self._bx = x
            self._by = smoothed
        bx = self._bx
        by = self._by
        if filled == TRENDLINE_WINDOW:  # the oldest point leaves the window
            ox = xs[pos] - bx
            oy = ys[pos] - by
            self._sx -= ox
            self._sy -= oy
            self._sxx -= ox * ox
            self._sxy -= ox * oy
        else:
            filled = self._filled = filled + 1
        xs[pos] = x
        ys[pos] = smoothed
        dx = x - bx
        dy = smoothed - by
        self._sx += dx
        self._sy += dy
        self._sxx += dx * dx
        self._sxy += dx * dy
        pos += 1
        if pos == TRENDLINE_WINDOW:
            pos = 0
            # Rebase on the oldest point (index 0 once the window is full) and recompute exactly.
            bx = self._bx = xs[0]
            by = self._by = ys[0]
            sx = sy = sxx = sxy = 0.0
            for index in range(filled):
                dx = xs[index] - bx
                dy = ys[index] - by
                sx += dx
                sy += dy
                sxx += dx * dx
                sxy += dx * dy
            self._sx, self._sy, self._sxx, self._sxy = sx, sy, sxx, sxy
        self._pos = pos
        if filled < TRENDLINE_WINDOW:
            return None
        n = TRENDLINE_WINDOW
        denominator = n * self._sxx - self._sx * self._sx
        if denominator <= 1e-9:
            return 0.0
        slope = (n * self._sxy - self._sx * self._sy) / denominator
        return min(self.deltas, TRENDLINE_MAX_DELTAS) * slope * TRENDLINE_GAIN


class _RateWindow:
    """R_hat (§5.5): bytes received over the last `window_us` of arrival time, one entry per feedback
    (first arrival, last arrival, bytes, size of the first-arriving packet), so nothing is kept per packet."""

    __slots__ = ("_entries", "_bytes", "_newest", "bps", "_window", "_min_span")

    def __init__(self, window_us: int = RATE_WINDOW_US, min_span_us: int = MIN_RATE_SPAN_US) -> None:
        self._window = window_us
        self._min_span = min_span_us
        self._entries: deque[tuple[int, int, int, int]] = deque()
        self._bytes = 0
        self._newest = 0
        self.bps: int | None = None

    def add(self, first_arrival: int, last_arrival: int, total: int, first_size: int) -> None:
        entries = self._entries
        if entries and last_arrival < self._newest - RESET_GAP_US:
            entries.clear()  # the receiver clock went backwards: start over
            self._bytes = 0
        if not entries or last_arrival > self._newest:
            self._newest = last_arrival
        newest = self._newest
        entries.append((first_arrival, last_arrival, total, first_size))
        self._bytes += total
        while len(entries) > 1 and entries[0][1] < newest - self._window:
            self._bytes -= entries.popleft()[2]
        oldest = min(entries)  # the entry with the earliest first arrival
        span = newest - oldest[0]
        if span >= self._min_span:
            # Bytes after the first arrival over the time they took (the first packet's bytes arrived
            # before the span started).
            self.bps = (self._bytes - oldest[3]) * 8_000_000 // span


class SendSideEstimator:
    """GCC (§5 delay-based + §6 loss-based) for one viewer, fed with transport-cc feedback.

    `estimate_bps` = clamp(min(delay-based A_hat, loss-based As_hat), min_bps, max_bps) (§6 last paragraph).
    Viewers without transport-cc: `on_remb` replaces the delay-based part with the viewer's own estimate and
    `on_receiver_report` feeds RR loss to the loss-based part (§3 second variant, §7). While transport-cc
    feedback is arriving (within the last 2 s), REMB and RR loss are only recorded.

    Not thread-safe; call from the event loop that handles the viewer's RTCP.
    """

    __slots__ = (
        "_log",
        "_prober",
        "min_bps",
        "max_bps",
        "_delay_bps",
        "_loss_bps",
        "_state",
        "_signal",
        "_reason",
        "_loss",
        "_trend",
        "_threshold",
        "_prev_trend",
        "_overuse_time_ms",
        "_overuse_count",
        "_threshold_updated_ms",
        "_groups",
        "_native",
        "_native_match",
        "_rate",
        "_recent_rate",
        "_decreased",
        "_last_update_us",
        "_conv_avg",
        "_conv_var",
        "_rtt_us",
        "_rtt_mins",
        "_period_received",
        "_period_lost",
        "_period_start_us",
        "_period_bytes",
        "_period_first_arrival",
        "_period_last_arrival",
        "_last_twcc_us",
        "_remb_bps",
        "_rr_loss",
        "_loss_decreased_us",
        "_recent_arrivals",
        "_recent_newest",
        "_capacity_drop_us",
        "_capacity_drop_bps",
        "_queue_suspected_us",
        "_queue_suspected_bps",
        "_last_input_us",
        "_k_up",
        "_k_down",
        "feedbacks",
        "unknown_packets",
        "last_lost",
        "last_received",
        "newest_reported_send_us",
    )

    def __init__(
        self,
        send_log: SendLog,
        *,
        initial_bps: int = 1_000_000,
        min_bps: int = 50_000,
        max_bps: int = 20_000_000,
        prober: Prober | None = None,
        k_up: float = K_UP,
        k_down: float = K_DOWN,
    ) -> None:
        if not 0 < min_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= max_bps")
        self._log = send_log
        self._prober = prober
        self.min_bps = min_bps
        self.max_bps = max_bps
        initial = float(min(max(initial_bps, min_bps), max_bps))
        self._delay_bps = initial  # A_hat (§5.5)
        self._loss_bps = initial  # As_hat (§6)
        self._state = STATE_INCREASE  # §5.5: "The subsystem starts in the increase state"
        self._signal = _NORMAL
        self._reason = "initial"
        self._loss = 0.0
        self._trend = _Trendline()
        self._threshold = THRESHOLD_INITIAL_MS
        self._prev_trend = 0.0
        self._overuse_time_ms = -1.0
        self._overuse_count = 0
        self._threshold_updated_ms: float | None = None
        # The packet group being built (§5.1/§5.2), the previous complete one and the feedback reference time's
        # unwrapping, in an array a compiled matcher shares (G_* slots; NONE: not yet).
        self._groups = array("q", [NONE, 0, 0, 0, NONE, 0, NONE, 0])
        self._native: object = None  # gateway._srtp_send.FeedbackMatcher (use_matcher)
        self._native_match: Callable[[bytes, int], tuple] | None = None
        self._rate = _RateWindow()
        # What the path delivers right now: after a capacity drop the 0.5 s R_hat still holds the old rate
        # for half a second, and a decrease to beta x R_hat (or the §6 loss step) lands on a layer that still
        # does not fit, then needs a second decrease and a second keyframe wait.
        self._recent_rate = _RateWindow(RECENT_RATE_WINDOW_US, RECENT_RATE_MIN_SPAN_US)
        self._last_update_us: int | None = None
        self._decreased = False  # any delay- or loss-based decrease yet (the end of start-up)
        self._conv_avg: float | None = None
        self._conv_var = 0.0
        self._rtt_us = 100_000
        # (second, min feedback RTT in it), MIN_RTT_WINDOW_US long. Tuples of ints, replaced rather than mutated: the
        # collector untracks them, where a list per viewer per second lived long enough to reach the oldest
        # generation and made up most of what triggered its full collections (~100 ms at 500 viewers).
        self._rtt_mins: deque[tuple[int, int]] = deque()
        self._period_received = 0
        self._period_lost = 0
        self._period_start_us: int | None = None
        self._period_bytes = 0  # bytes received in the loss period, and their arrival span: the delivered rate
        self._period_first_arrival = 0
        self._period_last_arrival = 0
        self._last_twcc_us: int | None = None
        self._remb_bps: int | None = None
        self._rr_loss: float | None = None
        self._loss_decreased_us: int | None = None
        # (arrival, one-way delay, size) of received packets over the last QUEUE_WINDOW_US, in feedback order.
        self._recent_arrivals: deque[tuple[int, int, int]] = deque()
        self._recent_newest = 0
        self._capacity_drop_us: int | None = None
        self._capacity_drop_bps = 0  # the rate the last capacity drop was measured at
        self._queue_suspected_us: int | None = None
        self._queue_suspected_bps = 0  # the delivered rate the last early warning measured
        # The send time of the newest packet a feedback reported received (None before one did).
        self.newest_reported_send_us: int | None = None
        self._last_input_us = 0
        self._k_up = k_up  # §5.4 K_u, K_d
        self._k_down = k_down
        self.feedbacks = 0
        self.unknown_packets = 0  # feedback entries matching nothing in the send log
        self.last_lost = 0  # packets the last feedback reported lost / received (for stats and tracing)
        self.last_received = 0

    # --- read-only state -------------------------------------------------------------------------------

    @property
    def estimate_bps(self) -> int:
        """The final estimate: min(delay-based, loss-based) (§6), within [min_bps, max_bps]. With neither
        transport-cc nor REMB ever received, the delay-based part is disabled (§7) and this is the
        loss-based estimate alone."""
        value = min(self._delay_bps, self._loss_bps) if self._delay_active() else self._loss_bps
        return int(min(max(value, self.min_bps), self.max_bps))

    @property
    def has_transport_cc(self) -> bool:
        """Whether transport-cc feedback arrived within the last 2 s (as of the last input). Without it
        there are no probe results and no acknowledged rate: see the module docstring for what to pass
        the LayerSelector then."""
        last = self._last_twcc_us
        return last is not None and self._last_input_us - last < TWCC_ACTIVE_US

    @property
    def delay_based_bps(self) -> int:
        return int(self._delay_bps)

    @property
    def loss_based_bps(self) -> int:
        return int(self._loss_bps)

    @property
    def acknowledged_bps(self) -> int:
        """R_hat (§5.5): the viewer's receive rate over the last 0.5 s of acknowledged packets; 0 if
        unknown."""
        return self._rate.bps or 0

    @property
    def state(self) -> str:
        """The §5.5 rate control state: "increase", "hold" or "decrease"."""
        return self._state

    @property
    def signal(self) -> str:
        """The §5.4 detector's last output: "normal", "overuse" or "underuse"."""
        return _SIGNAL_NAMES[self._signal]

    @property
    def loss(self) -> float:
        """Loss fraction of the last evaluated period (transport-cc, or RR when no transport-cc)."""
        return self._loss

    @property
    def reason(self) -> str:
        """What last moved the estimate, for stats: e.g. "overuse", "loss 12%", "probe", "remb"."""
        return self._reason

    @property
    def threshold_ms(self) -> float:
        """The §5.4 adaptive threshold del_var_th."""
        return self._native.threshold if self._native is not None else self._threshold  # type: ignore[attr-defined]

    @property
    def rtt_us(self) -> int:
        """Feedback round trip: feedback receipt minus the send time of the newest packet it acknowledges
        (includes the receiver's feedback interval), smoothed. Used for the §5.5 response time."""
        return self._rtt_us

    @property
    def capacity_drop_us(self) -> int | None:
        """When (the `now_us` of the feedback) a capacity drop was last found, or None."""
        return self._capacity_drop_us

    def reported_since(self, send_us: int) -> bool:
        """Whether a feedback has reported received a packet sent at or after `send_us`: a first-in, first-out
        bottleneck then holds nothing sent before it any more."""
        newest = self.newest_reported_send_us
        return newest is not None and newest >= send_us

    @property
    def queue_suspected_us(self) -> int | None:
        """When (the `now_us` of the feedback) the capacity-drop check last passed on a shorter part of its run than it
        needs (SUSPECT_*, the same guard) without finding a drop, or None: the early warning the viewer's pacer holds
        video on (simulcast/viewer_bandwidth.py `_hold_early`)."""
        return self._queue_suspected_us

    @property
    def queue_suspected_bps(self) -> int:
        """The delivered rate (bit/s) over the part of the run the last early warning fired on (0 before any)."""
        return self._queue_suspected_bps

    @property
    def queuing_delay_us(self) -> int:
        """The smoothed feedback RTT above its minimum over the last 30 s: the queue built on the path."""
        if not self._rtt_mins:
            return 0
        return max(0, self._rtt_us - min(entry[1] for entry in self._rtt_mins))

    @property
    def can_probe(self) -> bool:
        """Whether probing now makes sense: increasing, low loss, no built-up queue. A probe sent into a
        queue measures nothing new and delays its draining. (A forwarding SFU asks for less queue still when the
        path is full: viewer_bandwidth.PROBE_MAX_QUEUE_US.)"""
        return (
            self._state == STATE_INCREASE
            and self._loss < LOSS_LOW
            and self.queuing_delay_us < DRAINED_QUEUE_US
        )

    # --- inputs ----------------------------------------------------------------------------------------

    def on_feedback(self, feedback: TwccFeedback, now_us: int) -> None:
        """Process one transport-cc feedback (§3 first variant): match it with the send log, run the delay
        model (§5.1-§5.4), the rate controller (§5.5) and the loss-based controller (§6)."""
        self._apply_feedback(self._match_feedback(feedback, now_us - HISTORY_US), now_us)

    def on_feedback_fci(self, fci: bytes, now_us: int) -> None:
        """`on_feedback` from the FCI's bytes (RTPFB FMT 15 after the two SSRCs). Raises ValueError, having changed
        nothing, when the FCI is malformed (twcc.parse_feedback's rules). With a compiled matcher (`use_matcher`)
        the parse, the match with the send log and the packet groups' filter and detector run in C; the rest is
        the same Python."""
        match = self._native_match
        if match is None:
            self.on_feedback(parse_feedback(fci), now_us)
        else:
            self._apply_feedback(match(fci, now_us - HISTORY_US), now_us)

    def use_matcher(self, factory: Callable[..., object]) -> None:
        """Parse and match feedback in C, and run its packet groups through the trendline and the over-use detector
        there: `factory` is gateway._srtp_send.FeedbackMatcher, given the send log's rings, the estimator's group
        state, the §5.2 burst rules and the filter's parameters; it also keeps the capacity-drop check's arrivals and
        the two receive-rate windows (`_recent_arrivals` then stays empty, `_rate` and `_recent_rate` hold only the
        rates it hands back). Call before the first feedback (the C filter starts from the initial state; the
        Python one is then unused)."""
        if self.feedbacks:
            raise RuntimeError("use_matcher after feedback was processed")
        parameters = (TRENDLINE_WINDOW, TRENDLINE_SMOOTHING, TRENDLINE_GAIN, TRENDLINE_MAX_DELTAS, self._threshold,
                      THRESHOLD_MIN_MS, THRESHOLD_MAX_MS, THRESHOLD_MAX_OFFSET_MS, THRESHOLD_MAX_DT_MS, self._k_up,
                      self._k_down, OVERUSE_TIME_TH_MS, RESET_GAP_US)
        windows = (RESET_GAP_US, QUEUE_WINDOW_US, QUEUE_JUMP_US, QUEUE_RUN_MIN_US, QUEUE_RUN_MIN_PACKETS, BUSY_SLACK_US,
                   self._rate._window, self._rate._min_span, self._recent_rate._window, self._recent_rate._min_span,
                   SUSPECT_JUMP_US, SUSPECT_RUN_MIN_US, SUSPECT_RUN_MIN_PACKETS, SUSPECT_MIN_BYTES)
        self._native = factory(*self._log.buffers, self._groups, BURST_TIME_US, MAX_BURST_US, parameters, windows)
        self._native_match = self._native.match  # type: ignore[attr-defined]

    def _match_feedback(self, feedback: TwccFeedback, oldest_send: int) -> tuple:
        """Match the feedback's packets with the send log (marking each reported), form the §5.1/§5.2 packet groups and
        add the received packets to the windows (the capacity-drop check's arrivals, R_hat and the recent rate). Returns
        (received, lost, received bytes, first arrival, its size, last arrival, newest send time or None, unknown
        packets, (the check's run rate, R_hat or None, the recent rate or None, the early warning's run rate), [(send
        delta, arrival delta, arrival)] of the groups completed, [(cluster, send, arrival, size) received / (cluster,)
        lost] of probe packets, or None; False, None). gateway/_srtp_send.c FeedbackMatcher.match does the same from the
        FCI's bytes, with windows of its own, and also runs the groups through its filter and detector (`_on_group`): it
        returns no groups, but whether one signalled over-use and the detector's signal after them."""
        groups_state = self._groups
        # The 24-bit reference time wraps every ~12.4 days (twcc.REFERENCE_TIME_WRAP_US); unwrap it.
        raw = feedback.reference_time_us
        previous = groups_state[G_REF_RAW]
        if previous != NONE:
            step = raw - previous
            if step > REFERENCE_TIME_WRAP_US // 2:
                groups_state[G_REF_OFFSET] -= REFERENCE_TIME_WRAP_US
            elif step < -REFERENCE_TIME_WRAP_US // 2:
                groups_state[G_REF_OFFSET] += REFERENCE_TIME_WRAP_US
        groups_state[G_REF_RAW] = raw
        reference = raw + groups_state[G_REF_OFFSET]

        log = self._log
        mask = log._mask
        seqs = log._seqs
        sizes = log._sizes
        times = log._times
        clusters = log._clusters
        states = log._states

        received = 0
        lost = 0
        unknown = 0
        received_bytes = 0
        first_arrival = 0
        first_size = 0
        last_arrival = 0
        newest_send = None
        arrivals: list[tuple[int, int, int]] = []
        groups: list[tuple[int, int, int]] = []
        probes: list[tuple[int, ...]] | None = None

        g_first_send = groups_state[G_FIRST_SEND]
        g_last_send = groups_state[G_LAST_SEND]
        g_first_arrival = groups_state[G_FIRST_ARRIVAL]
        g_last_arrival = groups_state[G_LAST_ARRIVAL]
        prev_send = groups_state[G_PREV_SEND]
        prev_arrival = groups_state[G_PREV_ARRIVAL]

        for seq, rel in feedback.packets:
            index = seq & mask
            if seqs[index] != seq:
                unknown += 1
                continue
            send = times[index]
            if send < oldest_send:
                continue
            status = states[index]
            if rel is None:
                if status == _UNREPORTED:
                    states[index] = _REPORTED_LOST
                    lost += 1
                    if clusters[index] != NO_CLUSTER:
                        probes = probes or []
                        probes.append((clusters[index],))
                continue
            if status == _REPORTED_RECEIVED:
                continue  # reported again (twcc.TwccRecorder does after a late arrival)
            if status == _REPORTED_LOST:
                lost -= 1  # reported lost before, arrived late: not a loss after all
            states[index] = _REPORTED_RECEIVED
            arrival = reference + rel
            size = sizes[index]
            if received == 0 or arrival < first_arrival:
                first_arrival = arrival
                first_size = size
            if received == 0 or arrival > last_arrival:
                last_arrival = arrival
            received += 1
            received_bytes += size
            arrivals.append((arrival, arrival - send, size))
            if newest_send is None or send > newest_send:
                newest_send = send
            if clusters[index] != NO_CLUSTER:
                probes = probes or []
                probes.append((clusters[index], send, arrival, size))

            # §5.1/§5.2: packet groups.
            if g_first_send == NONE:
                g_first_send = g_last_send = send
                g_first_arrival = g_last_arrival = arrival
                continue
            if send < g_first_send:
                continue  # §5.1: "Any packets received out of order are ignored by the arrival-time model."
            if send - g_first_send <= BURST_TIME_US:
                # §5.2: "A sequence of packets which are sent within a burst_time interval constitute a
                # group."
                if send > g_last_send:
                    g_last_send = send
                if arrival > g_last_arrival:
                    g_last_arrival = arrival
                continue
            inter_arrival = arrival - g_last_arrival
            if (
                inter_arrival < BURST_TIME_US
                and inter_arrival - (send - g_last_send) < 0
                and arrival - g_first_arrival < MAX_BURST_US
            ):
                # §5.2: inter-arrival time < burst_time and d(i) < 0: part of the current group (a burst
                # released after an outage).
                g_last_send = send
                if arrival > g_last_arrival:
                    g_last_arrival = arrival
                continue
            # The packet starts a new group: the current one is complete.
            if prev_send != NONE:
                groups.append((g_last_send - prev_send, g_last_arrival - prev_arrival, g_last_arrival))
            prev_send = g_last_send
            prev_arrival = g_last_arrival
            g_first_send = g_last_send = send
            g_first_arrival = g_last_arrival = arrival

        groups_state[G_FIRST_SEND] = g_first_send
        groups_state[G_LAST_SEND] = g_last_send
        groups_state[G_FIRST_ARRIVAL] = g_first_arrival
        groups_state[G_LAST_ARRIVAL] = g_last_arrival
        groups_state[G_PREV_SEND] = prev_send
        groups_state[G_PREV_ARRIVAL] = prev_arrival
        # The windows: the capacity-drop check's arrivals and the two receive rates (the C matcher keeps its own).
        self._recent_arrivals.extend(arrivals)
        run_rate = suspect_rate = 0
        if received:
            self._rate.add(first_arrival, last_arrival, received_bytes, first_size)
            self._recent_rate.add(first_arrival, last_arrival, received_bytes, first_size)
            run_rate, suspect_rate = self._queue_run_rate(last_arrival)
        return (received, lost, received_bytes, first_arrival, first_size, last_arrival, newest_send, unknown,
                (run_rate, self._rate.bps, self._recent_rate.bps, suspect_rate), groups, probes, False, None)

    def _apply_feedback(self, matched: tuple, now_us: int) -> None:
        """The estimator's part of a feedback, from `_match_feedback`'s (or the C matcher's) result."""
        (received, lost, received_bytes, first_arrival, first_size, last_arrival, newest_send, unknown,
         windows, groups, probes, overuse_seen, signal) = matched
        self.feedbacks += 1
        self._last_twcc_us = now_us
        self._last_input_us = now_us
        self.unknown_packets += unknown
        # The check's run rate, R_hat, the recent rate, the early warning's rate (over the run's shorter parts).
        run_rate, self._rate.bps, self._recent_rate.bps, suspect_rate = windows
        prober = self._prober
        padding_received = padding_lost = 0
        if probes:
            for entry in probes:
                cluster = entry[0]
                if cluster < NO_CLUSTER:  # padding_cluster(id)
                    cluster = cluster_id(cluster)
                    if len(entry) == 1:
                        padding_lost += 1
                    else:
                        padding_received += 1
                if prober is not None:
                    if len(entry) == 1:
                        prober._on_lost(cluster)
                    else:
                        prober._on_received(cluster, entry[1], entry[2], entry[3])
        if signal is not None:  # the C matcher ran the groups through its filter and detector
            self._signal = signal
        on_group = self._on_group
        for send_delta, arrival_delta, arrival in groups:
            if on_group(send_delta, arrival_delta, arrival):
                overuse_seen = True

        if received:
            if newest_send is not None and (self.newest_reported_send_us is None
                                            or newest_send > self.newest_reported_send_us):
                self.newest_reported_send_us = newest_send
            if newest_send is not None and now_us > newest_send:
                sample = now_us - newest_send
                self._rtt_us = sample if self.feedbacks == 1 else (7 * self._rtt_us + sample) // 8
                second = now_us // 1_000_000
                mins = self._rtt_mins
                if mins and mins[-1][0] == second:
                    if sample < mins[-1][1]:
                        mins[-1] = (second, sample)
                else:
                    mins.append((second, sample))
                    while mins[0][0] <= second - MIN_RTT_WINDOW_US // 1_000_000:
                        mins.popleft()

        self.last_lost = lost
        self.last_received = received
        capacity = self._capacity_drop(run_rate, now_us) if received else 0
        if capacity:
            overuse_seen = True  # for this feedback only; the detector's own signal is left as it is
        elif self._under_guard(suspect_rate):
            self._queue_suspected_us = now_us
            self._queue_suspected_bps = suspect_rate
        self._update_delay_based(_OVERUSE if overuse_seen else self._signal, now_us, capacity)

        # §6 loss-based controller, over at least LOSS_MIN_PACKETS packets or LOSS_MAX_PERIOD_US.
        if self._period_start_us is None:
            self._period_start_us = now_us
        if received:  # the delivered rate counts every byte the path carried, padding's too
            if not self._period_bytes or first_arrival < self._period_first_arrival:
                self._period_first_arrival = first_arrival
            if not self._period_bytes or last_arrival > self._period_last_arrival:
                self._period_last_arrival = last_arrival
            self._period_bytes += received_bytes
        # Ours (issue #4): probe padding is left out of the loss fraction. Padding lost says the path does not carry
        # the probe's rate, which the prober judges. Counted here, a failed probe for the top layer (60 ms, ~70
        # padding packets of 255 bytes at a 700 kbit/s viewer) read as tens of percent of media loss, and the loss
        # controller moved the viewer down from a layer its media arrived on. RTCP receiver reports, the loss source §6
        # names, count media SSRCs only, so padding on RTX never enters them either. Media lost behind the probe's
        # padding still counts. (A padding packet reported lost and then received late takes one media loss back
        # here; the period's count stays >= 0.)
        self._period_received += received - padding_received
        self._period_lost = max(0, self._period_lost + lost - padding_lost)
        total = self._period_received + self._period_lost
        if total >= LOSS_MIN_PACKETS or (total and now_us - self._period_start_us >= LOSS_MAX_PERIOD_US):
            span = self._period_last_arrival - self._period_first_arrival
            delivered = self._period_bytes * 8_000_000 // span if span >= DELIVERED_MIN_SPAN_US else 0
            self._update_loss_based(self._period_lost / total, now_us, delivered)
            self._period_received = 0
            self._period_lost = 0
            self._period_bytes = 0
            self._period_start_us = now_us

        if prober is not None:
            for measured, target, success in prober._take_results(now_us):
                self._on_probe_result(measured, target, success)
        self._bound()

    def on_remb(self, bitrate_bps: int, now_us: int) -> None:
        """Receiver Estimated Max Bitrate from the viewer (§3 second variant: its delay-based estimate).
        Ignored (only recorded) while transport-cc feedback is arriving."""
        self._remb_bps = bitrate_bps
        self._last_input_us = now_us
        if self._twcc_active(now_us):
            return
        self._delay_bps = float(min(max(bitrate_bps, self.min_bps), self.max_bps))
        self._reason = "remb"
        self._bound()

    def on_receiver_report(self, fraction_lost: int, now_us: int) -> None:
        """RTCP receiver report loss for the §6 loss-based controller (§7: viewers without transport-cc).
        `fraction_lost` is the RFC 3550 §6.4.1 8-bit field (loss = fraction_lost / 256), as
        `gateway.rtcp.ReportBlock.fraction_lost` holds it. Ignored (only recorded) while transport-cc
        feedback is arriving, which already reports every loss."""
        loss = min(max(fraction_lost, 0), 255) / 256.0
        self._rr_loss = loss
        self._last_input_us = now_us
        if self._twcc_active(now_us):
            return
        self._update_loss_based(loss, now_us)
        self._bound()

    def on_probe_result(self, measured_bps: int, target_bps: int, success: bool) -> None:
        """A probe cluster's measured rate (`Prober` reports these itself when attached)."""
        self._on_probe_result(measured_bps, target_bps, success)
        self._bound()

    # --- internals -------------------------------------------------------------------------------------

    def _delay_active(self) -> bool:
        """Is there a delay-based estimate at all (transport-cc or REMB ever received)?"""
        return self._last_twcc_us is not None or self._remb_bps is not None

    def _twcc_active(self, now_us: int) -> bool:
        last = self._last_twcc_us
        return last is not None and now_us - last < TWCC_ACTIVE_US

    def _on_group(self, send_delta_us: int, arrival_delta_us: int, arrival_us: int) -> bool:
        """One complete group: d(i) (§5.1) through the filter and the over-use detector (§5.4).
        Returns True when this group made the detector signal over-use."""
        if arrival_delta_us < 0:
            return False  # reordered groups: no sample
        if arrival_delta_us > RESET_GAP_US or send_delta_us > RESET_GAP_US:
            self._trend.reset()  # a pause or a clock jump: start the model over
            self._threshold_updated_ms = None
            return False
        # §5.1: d(i) = t(i) - t(i-1) - (T(i) - T(i-1)), in ms.
        variation_ms = (arrival_delta_us - send_delta_us) / 1000.0
        arrival_ms = arrival_us / 1000.0
        trend = self._trend.update(variation_ms, arrival_ms)
        if trend is None:
            return False
        return self._detect(trend, send_delta_us / 1000.0, arrival_ms)

    def _detect(self, trend: float, send_delta_ms: float, now_ms: float) -> bool:
        """§5.4 over-use detector with the adaptive threshold. Returns True when over-use is signalled now."""
        signalled = False
        threshold = self._threshold
        if trend > threshold:
            # §5.4: over-use only after it has lasted overuse_time_th, and not while m(i) < m(i-1).
            if self._overuse_time_ms < 0:
                self._overuse_time_ms = send_delta_ms / 2  # assume it started halfway since the last group
            else:
                self._overuse_time_ms += send_delta_ms
            self._overuse_count += 1
            if (
                self._overuse_time_ms > OVERUSE_TIME_TH_MS
                and self._overuse_count > 1
                and trend >= self._prev_trend
            ):
                self._overuse_time_ms = 0.0
                self._overuse_count = 0
                self._signal = _OVERUSE
                signalled = True
        elif trend < -threshold:
            self._overuse_time_ms = -1.0
            self._overuse_count = 0
            self._signal = _UNDERUSE
        else:
            self._overuse_time_ms = -1.0
            self._overuse_count = 0
            self._signal = _NORMAL
        self._prev_trend = trend

        # §5.4: del_var_th(i) = del_var_th(i-1) + (t(i)-t(i-1)) * K(i) * (|m(i)| - del_var_th(i-1)),
        # not updated when |m(i)| - del_var_th > 15, clamped to [6, 600].
        magnitude = abs(trend)
        last = self._threshold_updated_ms
        self._threshold_updated_ms = now_ms
        if last is None or magnitude - threshold > THRESHOLD_MAX_OFFSET_MS:
            return signalled
        gain = self._k_down if magnitude < threshold else self._k_up
        dt = min(max(now_ms - last, 0.0), THRESHOLD_MAX_DT_MS)
        threshold += dt * gain * (magnitude - threshold)
        self._threshold = min(max(threshold, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        return signalled

    def _capacity_drop(self, delivered: int, now_us: int) -> int:
        """The bottleneck's rate when the latest arrivals show a capacity drop (a queue building behind a busy
        bottleneck that delivers at most CAPACITY_DROP_RATIO x R_hat), else 0. See the module docstring.
        `delivered` is `_queue_run_rate`'s (or the C matcher's) run rate; this is the guard."""
        if not self._under_guard(delivered):
            return 0  # the guard: the path still delivers what it carried (a burst above its rate, not a drop)
        last = self._capacity_drop_us
        if (last is not None and now_us - last < self._rtt_us + LOSS_DECREASE_GAP_US
                and delivered >= CAPACITY_REDROP_RATIO * self._capacity_drop_bps):
            return 0  # the same congestion event, measured again (see CAPACITY_REDROP_RATIO)
        self._capacity_drop_us = now_us
        self._capacity_drop_bps = delivered
        self._loss_decreased_us = now_us  # the same congestion event for §6 (see the module docstring)
        return delivered

    def _under_guard(self, delivered: int) -> bool:
        """The capacity-drop check's guard, for it and for its early warning: a run rate was measured and it is at
        most CAPACITY_DROP_RATIO x R_hat (what the path carried over the last 0.5 s)."""
        carried = self._rate.bps
        return bool(delivered and carried) and delivered <= CAPACITY_DROP_RATIO * carried

    def _queue_run_rate(self, newest_arrival: int) -> tuple[int, int]:
        """The delivered rate of the run of recent packets that queued behind a busy bottleneck, or 0 (the
        capacity-drop check before its guard), and the early warning's rate over the run's shorter parts (SUSPECT_*),
        or 0. gateway/_srtp_send.c queue_run_rate does the same."""
        packets = self._recent_arrivals
        if newest_arrival < self._recent_newest - RESET_GAP_US:
            # The receiver clock went backwards: what came before is on the old clock.
            while packets and packets[0][0] > newest_arrival:
                packets.popleft()
            self._recent_newest = newest_arrival
        elif newest_arrival > self._recent_newest:
            self._recent_newest = newest_arrival
        oldest = self._recent_newest - QUEUE_WINDOW_US
        while packets and packets[0][0] < oldest:
            packets.popleft()
        count = len(packets)
        if count < SUSPECT_RUN_MIN_PACKETS:  # <= QUEUE_RUN_MIN_PACKETS
            return 0, 0
        last_arrival, last_delay, _ = packets[-1]
        base = min(map(_DELAY, packets))  # the one-way delays (C-level iteration: ~3x faster than a generator)
        if last_delay - base < SUSPECT_JUMP_US:  # <= QUEUE_JUMP_US
            return 0, 0
        # The run: back from the newest packet while the bottleneck stayed busy between consecutive packets,
        # i.e. each packet was sent before its predecessor had left the queue: the predecessor's queuing delay
        # (one-way delay above the window's minimum) exceeds the send gap between the two (+1 ms for timestamp
        # noise), or, at the queue's start, the packet waited longer than its predecessor. Its delivered rate
        # is the bottleneck's: the lowest rate over the run's recent parts (those of >= QUEUE_RUN_MIN_US and
        # >= QUEUE_RUN_MIN_PACKETS), so that a queue already building at the old rate before the drop does not
        # count. The early warning takes the lowest rate of the run's recent parts of >= SUSPECT_RUN_MIN_US and
        # >= SUSPECT_RUN_MIN_PACKETS over which the delay grew >= SUSPECT_JUMP_US and by at least half the part's
        # arrival span, and that delivered >= SUSPECT_MIN_BYTES after their first packet, each judged alone: a run
        # that reaches back past the queue's start (packets a millisecond apart in delay read as busy) does not hide
        # a queue that began within it.
        delivered = suspect = 0
        start = count - 1
        after_bytes = 0  # bytes of the packets after `start`
        arrival, delay, size = packets[start]
        while start > 0:
            previous_arrival, previous_delay, previous_size = packets[start - 1]
            send_gap = (arrival - delay) - (previous_arrival - previous_delay)
            if previous_delay - base < send_gap + BUSY_SLACK_US and delay <= previous_delay:
                break
            after_bytes += size
            start -= 1
            arrival, delay, size = previous_arrival, previous_delay, previous_size
            span = last_arrival - arrival
            if span >= SUSPECT_RUN_MIN_US:
                rate = after_bytes * 8_000_000 // span
                grown = last_delay - delay
                if (count - start >= SUSPECT_RUN_MIN_PACKETS and grown >= SUSPECT_JUMP_US and 2 * grown >= span
                        and after_bytes >= SUSPECT_MIN_BYTES and (not suspect or rate < suspect)):
                    suspect = rate
                if (span >= QUEUE_RUN_MIN_US and count - start >= QUEUE_RUN_MIN_PACKETS
                        and (not delivered or rate < delivered)):
                    delivered = rate
        if delivered:
            span = last_arrival - arrival
            growth = last_delay - delay
            # Arrival span >= 2 x send span (send span = arrival span - delay growth): at most half got through.
            if growth < QUEUE_JUMP_US or 2 * growth < span:
                delivered = 0
        return delivered, suspect

    def _update_delay_based(self, signal: int, now_us: int, capacity_bps: int = 0) -> None:
        """§5.5 rate control, run once per feedback with the detector's signal. `capacity_bps`: the rate a
        capacity drop was measured at (ours), which the decrease uses as R_hat."""
        state = self._state
        # §5.5 state table (blank = remain).
        if signal == _OVERUSE:
            state = STATE_DECREASE
        elif signal == _NORMAL:
            if state == STATE_HOLD:
                # §5.5: Hold "waits until built-up queues have drained before going to increase state".
                # The detector only sees queues change; the feedback RTT also shows one standing (after a
                # capacity drop into a deep buffer), so we leave Hold only once it is down near its minimum.
                if self.queuing_delay_us < DRAINED_QUEUE_US:
                    state = STATE_INCREASE
            elif state == STATE_DECREASE:
                state = STATE_HOLD
        else:  # under-use
            state = STATE_HOLD
        self._state = state

        last = self._last_update_us
        self._last_update_us = now_us
        elapsed_us = 0 if last is None else min(max(now_us - last, 0), 1_000_000)
        received = self._rate.bps
        estimate = self._delay_bps

        if state == STATE_DECREASE:
            recent = self._recent_rate.bps
            if received and recent and recent < received:
                received = recent  # ours: the path's rate now, not half a second ago
            if capacity_bps and (not received or capacity_bps < received):
                received = capacity_bps  # ours: the bottleneck's rate while the queue built
            # §5.5: A_hat(i) = beta * R_hat(i); never upwards (R_hat can exceed A_hat during a burst).
            target = BETA * received if received else BETA * estimate
            if target < estimate:
                self._delay_bps = target
                self._reason = f"capacity drop {capacity_bps // 1000} kbit/s" if capacity_bps else "overuse"
                self._decreased = True
            if received:
                # §5.5: statistics of the receive rate at decreases, EMA with smoothing 0.95.
                avg = self._conv_avg
                if avg is None:
                    self._conv_avg = float(received)
                    self._conv_var = 0.0
                else:
                    avg = CONVERGENCE_SMOOTHING * avg + (1 - CONVERGENCE_SMOOTHING) * received
                    self._conv_avg = avg
                    self._conv_var = (
                        CONVERGENCE_SMOOTHING * self._conv_var
                        + (1 - CONVERGENCE_SMOOTHING) * (received - avg) ** 2
                    )
            return
        if state == STATE_HOLD:
            return

        # Increase.
        near_convergence = False
        avg = self._conv_avg
        if avg is not None and received:
            std = max(math.sqrt(self._conv_var), CONVERGENCE_MIN_STD * avg)
            if received > avg + 3 * std:
                self._conv_avg = None  # §5.5: the congestion level changed; back to multiplicative
                self._conv_var = 0.0
            elif abs(received - avg) <= 3 * std:
                near_convergence = True
        if near_convergence:
            # §5.5 additive increase: at most half a packet per response_time (RTT + 100 ms).
            # The draft assumes one update per response time ("executed periodically"); we update per
            # feedback, so the 1000 bit floor is scaled by the same elapsed/response_time as alpha
            # (unscaled, 20 feedbacks/s would add 20 kbps/s whatever the rate).
            response_time_us = 100_000 + self._rtt_us
            share = min(elapsed_us / response_time_us, 1.0)
            alpha = 0.5 * share
            bits_per_frame = estimate / 30
            packets_per_frame = math.ceil(bits_per_frame / (1200 * 8)) or 1
            packet_bits = bits_per_frame / packets_per_frame
            increased = estimate + max(1000.0 * share, alpha * packet_bits)
        else:
            # §5.5 multiplicative increase: eta = 1.08^min(time_since_last_update / 1 s, 1).
            increased = estimate * ETA_PER_SECOND ** (elapsed_us / 1_000_000)
        if received:
            # §5.5: A_hat(i) < 1.5 * R_hat(i), as a ceiling on increases only.
            ceiling = MAX_RATE_FACTOR * received
            if increased > ceiling:
                increased = max(estimate, ceiling)
            # Ours, at start-up only (before the first decrease): never below what the path has just delivered
            # without over-use or loss. A forwarding SFU sends the layer's rate whatever the estimate says; a
            # viewer that joined on the top layer with the 1 Mbit/s initial guess would otherwise be moved
            # down after a second, its link carrying twice that (8 %/s from 1 Mbit/s takes 9 s to reach
            # 2 Mbit/s). After a decrease the receive rate includes a draining queue, so AIMD and probes rule.
            if received > increased and not self._decreased and self._loss < LOSS_LOW:
                increased = float(received)
        if increased > estimate:
            self._delay_bps = increased
            if received and increased == received:
                self._reason = "acknowledged"
            else:
                self._reason = "additive increase" if near_convergence else "increase"

    def _update_loss_based(self, loss: float, now_us: int, delivered_bps: int = 0) -> None:
        """§6: >10 % loss: As_hat(i) = As_hat(i-1)(1 - 0.5p); <2 %: As_hat(i) = 1.05 As_hat(i-1).

        Ours: at most one decrease per feedback RTT + 300 ms. Losses behind a long queue are reported late
        and over several evaluations; without the gap one congestion event cuts the rate several times
        (in simulation: 3 Mbps -> 300 kbps behind a 1.7 s queue took the estimate to the 50 kbps floor)."""
        self._loss = loss
        if loss > LOSS_HIGH:
            last = self._loss_decreased_us
            if last is not None and now_us - last < self._rtt_us + LOSS_DECREASE_GAP_US:
                return
            self._loss_decreased_us = now_us
            # The final rate is what was actually lost at.
            base = min(self._loss_bps, self._delay_bps) if self._delay_active() else self._loss_bps
            decreased = base * (1 - 0.5 * loss)
            # Ours: never above what the path delivered while losing (the period's received bytes over their
            # arrival span). Heavy loss after a capacity drop means the sender is far above the new capacity;
            # (1 - 0.5p) alone takes several steps (one per RTT + 300 ms) to get there, and every step is
            # another layer switch and keyframe wait. Only when the path delivered at most
            # CAPACITY_DROP_RATIO x R_hat, as for the capacity-drop rule: a short loss burst on a link that
            # carries the layer (Wi-Fi, a policer's burst) also lowers the delivered rate, by the loss itself
            # (7 of 30 packets: 0.77 x the layer, below the layer / 1.2), and must not move the viewer down;
            # §6's (1 - 0.5p) step alone applies then.
            carried = self._rate.bps
            if (
                delivered_bps
                and delivered_bps < decreased
                and (not carried or delivered_bps <= CAPACITY_DROP_RATIO * carried)
            ):
                decreased = float(delivered_bps)
            self._loss_bps = decreased
            self._decreased = True
            self._reason = f"loss {loss * 100:.0f}%"
        elif loss < LOSS_LOW:
            self._loss_bps *= LOSS_INCREASE
            if not self._decreased and delivered_bps > self._loss_bps:
                self._loss_bps = float(delivered_bps)  # start-up: see the delay-based "acknowledged" rule

    def _on_probe_result(self, measured: int, target: int, success: bool) -> None:
        """A successful probe shows the path carried `measured`: raise the estimates to it, unless the
        detector is signalling over-use right now. A failed probe's measurement is about the bottleneck
        rate itself; moving the estimate up to it would leave no headroom (in simulation: a standing queue
        and tail drops), so it is ignored and the AIMD finds the rate."""
        if not success or self._signal == _OVERUSE or measured <= 0:
            return
        measured_f = float(min(measured, self.max_bps))
        if measured_f > self._delay_bps:
            self._delay_bps = measured_f
            self._reason = "probe"
        if measured_f > self._loss_bps:
            self._loss_bps = measured_f

    def _bound(self) -> None:
        lo = float(self.min_bps)
        hi = float(self.max_bps)
        self._delay_bps = min(max(self._delay_bps, lo), hi)
        loss_bps = self._loss_bps
        if self._delay_active():
            # Ours: keep the loss-based estimate near the delay-based one, so a loss burst acts at once
            # instead of first eating through headroom accumulated by 5 % steps.
            loss_bps = min(loss_bps, LOSS_CEILING_FACTOR * self._delay_bps)
        self._loss_bps = min(max(loss_bps, lo), hi)


# ---------------------------------------------------------------------------------------------------------
# Probing


class _Cluster:
    __slots__ = (
        "id",
        "target",
        "rate",
        "start",
        "end",
        "total",
        "sent_bytes",
        "sent_packets",
        "finished_at",
        "received",
        "lost",
        "recv_bytes",
        "first_arrival",
        "first_arrival_size",
        "last_arrival",
        "first_send",
        "last_send",
        "last_send_size",
        "send_bytes",
        "measured",
        "success",
        "evaluated_at",
    )

    def __init__(self, cluster_id: int, target: int, rate: int, start: int, end: int, total: int) -> None:
        self.id = cluster_id
        self.target = target
        self.rate = rate
        self.start = start
        self.end = end
        self.total = total  # bytes the cluster should carry
        self.sent_bytes = 0
        self.sent_packets = 0
        self.finished_at: int | None = None
        self.received = 0
        self.lost = 0
        self.recv_bytes = 0
        self.first_arrival = 0
        self.first_arrival_size = 0
        self.last_arrival = 0
        self.first_send = 0
        self.last_send = 0
        self.last_send_size = 0
        self.send_bytes = 0
        self.measured: int | None = None
        self.success: bool | None = None
        self.evaluated_at: int | None = None


class Prober:
    """Probe clusters: short bursts at a known rate whose receive rate, read back from transport-cc
    feedback, shows whether the path can carry a higher layer before the selector switches to it.

    `start(target_bps, now_us)` opens a cluster sent at `rate_factor` x target for `duration_us` (longer if
    needed to carry `min_packets` of `packet_size` bytes). While `active_cluster` is not None, every packet
    sent to the viewer (media too) is recorded in the SendLog with that id and counted with `on_sent`;
    `padding_needed(now_us)` says how many bytes of padding (or RTX duplicates) to send now to keep the
    cluster on its rate; it closes the cluster once its bytes are out. When every packet of the cluster has
    been reported (or 1 s after it ended) the cluster is evaluated: measured = min(send rate, receive rate)
    of its acknowledged packets; success when measured >= `success_ratio` x target.

    `ready(now_us, target)` paces the clusters: one at a time, `min_interval_us` after a success, and after a
    failure a backoff doubling from `fail_backoff_us` to `max_backoff_us` (a lower target than the one that
    failed is allowed at once).
    """

    __slots__ = (
        "rate_factor",
        "duration_us",
        "min_packets",
        "packet_size",
        "success_ratio",
        "min_interval_us",
        "fail_backoff_us",
        "max_backoff_us",
        "result_timeout_us",
        "success_ttl_us",
        "active_cluster",
        "_current",
        "_clusters",
        "_pending",
        "_results",
        "_next_id",
        "_retry_at",
        "_failures",
        "_failed_target",
    )

    def __init__(
        self,
        *,
        rate_factor: float = 1.5,
        duration_us: int = 25_000,
        min_packets: int = 5,
        packet_size: int = 250,
        success_ratio: float = 0.9,
        min_interval_us: int = 300_000,
        fail_backoff_us: int = 1_000_000,
        max_backoff_us: int = 4_000_000,
        result_timeout_us: int = 1_000_000,
        success_ttl_us: int = 10_000_000,
    ) -> None:
        self.rate_factor = rate_factor
        self.duration_us = duration_us
        self.min_packets = min_packets
        self.packet_size = packet_size
        self.success_ratio = success_ratio
        self.min_interval_us = min_interval_us
        self.fail_backoff_us = fail_backoff_us
        self.max_backoff_us = max_backoff_us
        self.result_timeout_us = result_timeout_us
        self.success_ttl_us = success_ttl_us
        self.active_cluster: int | None = None  # id to record packets with, None when no cluster is sending
        self._current: _Cluster | None = None
        self._clusters: dict[int, _Cluster] = {}
        self._pending: list[_Cluster] = []  # sent, not yet evaluated
        self._results: list[tuple[int, int, bool]] = []  # evaluated, not yet taken by the estimator
        self._next_id = 1
        self._retry_at = 0
        self._failures = 0
        self._failed_target = 0

    def ready(self, now_us: int, target_bps: int | None = None) -> bool:
        """May a new cluster start now (none in flight, and past the interval / failure backoff)?"""
        if self._current is not None:
            return False
        if self._pending:
            self._evaluate_pending(now_us)  # clusters whose feedback never came time out here too
            if self._pending:
                return False
        if now_us >= self._retry_at:
            return True
        # A lower target than the one that just failed does not need to wait out the backoff.
        return bool(self._failures and target_bps is not None and target_bps < 0.9 * self._failed_target)

    def start(self, target_bps: int, now_us: int) -> int:
        """Open a cluster to test `target_bps`; returns its id. Closes any cluster still sending."""
        if self._current is not None:
            self._finish(self._current, now_us)
        rate = int(target_bps * self.rate_factor)
        duration = self.duration_us
        floor = self.min_packets * self.packet_size
        if rate * duration // 8_000_000 < floor:
            duration = math.ceil(floor * 8_000_000 / max(rate, 1))
        cluster_id = self._next_id
        self._next_id = cluster_id + 1 if cluster_id < 0x7FFFFFFF else 1
        total = rate * duration // 8_000_000
        cluster = _Cluster(cluster_id, target_bps, rate, now_us, now_us + duration, total)
        self._clusters[cluster_id] = cluster
        self._current = cluster
        self.active_cluster = cluster_id
        if len(self._clusters) > 32:
            for old in sorted(self._clusters)[:-16]:
                cluster_old = self._clusters[old]
                if cluster_old is not self._current and cluster_old not in self._pending:
                    del self._clusters[old]
        return cluster_id

    def on_sent(self, size_bytes: int) -> None:
        """Count a packet sent with `active_cluster` (media or padding)."""
        cluster = self._current
        if cluster is not None:
            cluster.sent_bytes += size_bytes
            cluster.sent_packets += 1

    def padding_needed(self, now_us: int) -> int:
        """Bytes of padding to send now to keep the active cluster at its rate (0 when none)."""
        cluster = self._current
        if cluster is None:
            return 0
        elapsed = min(now_us, cluster.end) - cluster.start
        due = cluster.rate * max(elapsed, 0) // 8_000_000
        if now_us >= cluster.end:
            due = cluster.total
        need = due - cluster.sent_bytes
        if now_us >= cluster.end and (need <= 0 or now_us >= cluster.end + 10_000):
            self._finish(cluster, now_us)
            return 0
        return need if need > 0 else 0

    def _finish(self, cluster: _Cluster, now_us: int) -> None:
        cluster.finished_at = now_us
        self._pending.append(cluster)
        self._current = None
        self.active_cluster = None

    def result(self, cluster_id: int) -> int | None:
        """The cluster's measured rate once evaluated (successful or not); None before, or if unusable."""
        cluster = self._clusters.get(cluster_id)
        return None if cluster is None else cluster.measured

    def success(self, cluster_id: int) -> bool | None:
        """Whether the cluster reached success_ratio x its target; None until evaluated."""
        cluster = self._clusters.get(cluster_id)
        return None if cluster is None else cluster.success

    def success_bps(self, now_us: int) -> int:
        """The highest measured rate of a successful cluster evaluated within `success_ttl_us`; 0 if none."""
        best = 0
        for cluster in self._clusters.values():
            if (
                cluster.success
                and cluster.evaluated_at is not None
                and now_us - cluster.evaluated_at <= self.success_ttl_us
                and cluster.measured is not None
                and cluster.measured > best
            ):
                best = cluster.measured
        return best

    def on_feedback(
        self, feedback: TwccFeedback, send_log: SendLog, now_us: int
    ) -> list[tuple[int, int, bool]]:
        """Standalone use (a Prober not attached to a SendSideEstimator): match the feedback with the log,
        evaluate finished clusters. Returns [(measured, target, success)] for clusters evaluated now."""
        reference = feedback.reference_time_us
        for seq, rel in feedback.packets:
            entry = send_log.lookup(seq)
            if entry is None or entry[2] is None:
                continue
            send, size, cluster_id = entry
            if rel is None:
                self._on_lost(cluster_id)
            else:
                self._on_received(cluster_id, send, reference + rel, size)
        return self._take_results(now_us)

    def _on_received(self, cluster_id: int, send: int, arrival: int, size: int) -> None:
        cluster = self._clusters.get(cluster_id)
        if cluster is None or cluster.measured is not None:
            return
        if cluster.received == 0:
            cluster.first_arrival = cluster.last_arrival = arrival
            cluster.first_arrival_size = size
            cluster.first_send = cluster.last_send = send
            cluster.last_send_size = size
        else:
            if arrival < cluster.first_arrival:
                cluster.first_arrival = arrival
                cluster.first_arrival_size = size
            if arrival > cluster.last_arrival:
                cluster.last_arrival = arrival
            if send < cluster.first_send:
                cluster.first_send = send
            if send >= cluster.last_send:
                cluster.last_send = send
                cluster.last_send_size = size
        cluster.received += 1
        cluster.recv_bytes += size

    def _on_lost(self, cluster_id: int) -> None:
        cluster = self._clusters.get(cluster_id)
        if cluster is not None and cluster.measured is None:
            cluster.lost += 1

    def _evaluate_pending(self, now_us: int) -> None:
        """Evaluate the sent clusters whose packets are all reported, or that timed out."""
        still: list[_Cluster] = []
        for cluster in self._pending:
            assert cluster.finished_at is not None
            reported = cluster.received + cluster.lost
            if reported >= cluster.sent_packets or now_us - cluster.finished_at >= self.result_timeout_us:
                self._evaluate(cluster, now_us)
            else:
                still.append(cluster)
        self._pending = still

    def _take_results(self, now_us: int) -> list[tuple[int, int, bool]]:
        """Evaluate what can be, and hand over [(measured, target, success)] not yet taken."""
        if self._pending:
            self._evaluate_pending(now_us)
        results = self._results
        if results:
            self._results = []
        return results

    def _evaluate(self, cluster: _Cluster, now_us: int) -> None:
        cluster.evaluated_at = now_us
        measured = 0
        if cluster.received >= min(self.min_packets, max(cluster.sent_packets, 1)) and cluster.received >= 2:
            recv_span = cluster.last_arrival - cluster.first_arrival
            send_span = cluster.last_send - cluster.first_send
            # Bytes after the first arrival over the arrival span; bytes before the last send over the
            # send span.
            recv_rate = send_rate = None
            if recv_span > 0:
                recv_rate = (cluster.recv_bytes - cluster.first_arrival_size) * 8_000_000 // recv_span
            if send_span > 0:
                send_rate = (cluster.recv_bytes - cluster.last_send_size) * 8_000_000 // send_span
            if recv_rate is not None and send_rate is not None:
                measured = min(recv_rate, send_rate)
            elif recv_rate is not None:
                measured = recv_rate
            elif send_rate is not None:
                measured = send_rate
        success = measured > 0 and measured >= self.success_ratio * cluster.target
        cluster.measured = measured if measured > 0 else None
        cluster.success = success
        if success:
            self._failures = 0
            self._retry_at = now_us + self.min_interval_us
        else:
            self._failures += 1
            self._failed_target = cluster.target
            backoff = min(self.fail_backoff_us << min(self._failures - 1, 16), self.max_backoff_us)
            self._retry_at = now_us + backoff
        if measured > 0:
            self._results.append((measured, cluster.target, success))


# ---------------------------------------------------------------------------------------------------------
# Layer selection

ALL_TEMPORAL = 7  # temporal id meaning "every temporal layer": >= every codec's highest TID (VP9: 7)


class LayerSelector:
    """Chooses the (spatial, temporal) layer one viewer receives from its bandwidth estimate.

    `layers` is [(spatial_id, bitrate_bps, active)] or [(spatial_id, bitrate_bps, active, settled)]. With
    `temporal_fractions` (cumulative share of a spatial layer's bitrate carried by temporal layers 0..N-1, e.g.
    (0.6, 1.0) or (0.4, 0.6, 1.0)), each spatial layer offers N options and temporal layers are dropped before
    spatial ones; without, each spatial layer is one option and the temporal id returned is `all_temporal`.

    Options are ordered by (spatial, temporal). Rules:
    - Down at once when the current option's bitrate > estimate x (1 + down_tolerance): to the highest option
      below it that fits (same spatial layer's lower temporal layers first), else the lowest.
      Why 0.2: a forwarding SFU sends the layer's rate, not the estimate, so on any over-use (a keyframe burst
      is enough) GCC sets the estimate to 0.85 x the receive rate (§5.5 beta), i.e. ~0.85 x the layer when the
      path carries the layer. A tolerance above 1/0.85 - 1 = 0.176 keeps the layer then; it goes when the
      receive rate itself falls below ~98 % of the layer (the path no longer carries it) or loss cuts it.
      Ours: not while the path is clear (the caller's `path_clear`: no over-use, no loss) and the viewer's
      acknowledged rate is at least CARRIED_SHARE x the option's bitrate: the path carries the layer, and the
      estimate below it is what an earlier decrease left (0.85 x R_hat, or §6's step after a keyframe burst's
      loss), climbing back. Seen at a 700 kbit/s viewer on the 0.59 Mbit/s middle layer: estimate 0.49 Mbit/s
      in additive increase, 0.65 Mbit/s acknowledged; it went down, and the flap held it there for 13 s. A
      layer the path cannot carry shows as over-use or loss within a few feedbacks, and then it goes.
    - Up to a higher option only when estimate >= up_factor x its bitrate has held for the hold time
      (up_hold_us, doubled after each up-then-down within flap_window_us, up to max_up_hold_us, and back to
      up_hold_us after stable_us without a downgrade) AND the path has shown it can carry that bitrate: a
      recent successful probe measured >= it (`probe_ok_bps`) or the acknowledged rate reached it.
    - The first call picks the highest option with up_factor x bitrate <= estimate (the initial estimate is a
      configured guess, so no proof is asked), else the lowest.
    - A layer may carry a fourth field, `settled` (default True): False while it is younger than
      simulcast/layer.py LAYER_SETTLE (it just started or resumed, and its encoder is still ramping it up). The
      first choice, an upgrade and the move after the current layer went away take only settled layers, or the
      lowest spatial layer; the estimate's hold for a young layer counts meanwhile. Ours (issue #4): a 700 kbit/s
      viewer that joined as a Chromium publisher started was put on its top layer, measured at 278 kbit/s in its
      first second; the publisher then paused that layer, moved the bitrate to the middle one (661-735 kbit/s for
      2 s, its target being 500), and the viewer, moved there, lost 44% of a feedback's packets and froze 0.94 s
      before it went down (BENCHMARKS.md, "Joining a stream that has just started").
    `probe_target_bps` (after each select): up_factor x the bitrate of the lowest option above the current one
    that lacks proof, capped at `probe_step` x the estimate (big jumps are probed in steps, so a probe on a
    constrained path is a small burst), or None: what the caller should probe next.
    """

    __slots__ = (
        "up_factor",
        "up_hold_us",
        "max_up_hold_us",
        "flap_window_us",
        "stable_us",
        "down_tolerance",
        "probe_step",
        "temporal_fractions",
        "all_temporal",
        "current",
        "probe_target_bps",
        "switches",
        "_since",
        "_hold_us",
        "_last_up_us",
        "_last_down_us",
        "_last_bitrate",
    )

    def __init__(
        self,
        *,
        up_factor: float = 1.2,
        up_hold_us: int = 2_000_000,
        max_up_hold_us: int = 16_000_000,
        flap_window_us: int = 10_000_000,
        stable_us: int = 30_000_000,
        down_tolerance: float = 0.2,
        temporal_fractions: Sequence[float] | None = None,
        all_temporal: int = ALL_TEMPORAL,
        probe_step: float = 2.0,
    ) -> None:
        if temporal_fractions is not None:
            fractions = tuple(float(f) for f in temporal_fractions)
            if not fractions or any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(
                fractions
            ):
                raise ValueError("temporal_fractions must be increasing values in (0, 1]")
            temporal_fractions = fractions
        self.up_factor = up_factor
        self.up_hold_us = up_hold_us
        self.max_up_hold_us = max_up_hold_us
        self.flap_window_us = flap_window_us
        self.stable_us = stable_us
        self.down_tolerance = down_tolerance
        self.probe_step = probe_step
        self.temporal_fractions = temporal_fractions
        self.all_temporal = all_temporal
        self.current: tuple[int, int] | None = None
        self.probe_target_bps: int | None = None
        self.switches = 0
        self._since: dict[tuple[int, int], int] = {}  # option -> since when the estimate supports it
        self._hold_us = up_hold_us
        self._last_up_us: int | None = None
        self._last_down_us: int | None = None
        self._last_bitrate = 0

    def _options(self, layers: Iterable[tuple]) -> list[tuple[int, int, int, bool]]:
        """Active options as (spatial, temporal, bitrate, eligible), in (spatial, temporal) order; `eligible`: the
        layer is settled, or it is the lowest spatial layer (see the class doc)."""
        options = []
        fractions = self.temporal_fractions
        for layer in layers:
            spatial, bitrate, active = layer[0], layer[1], layer[2]
            if not active:
                continue
            settled = layer[3] if len(layer) > 3 else True
            if fractions is None:
                options.append((spatial, self.all_temporal, int(bitrate), settled))
            else:
                for temporal, fraction in enumerate(fractions):
                    options.append((spatial, temporal, int(bitrate * fraction), settled))
        options.sort()
        if options and not options[0][3]:
            lowest = options[0][0]
            options = [option if option[3] or option[0] != lowest else option[:3] + (True,) for option in options]
        return options

    def select(
        self,
        layers: Iterable[tuple],
        estimate_bps: int,
        now_us: int,
        *,
        acknowledged_bps: int = 0,
        probe_ok_bps: int = 0,
        path_clear: bool = False,
    ) -> tuple[int, int, str]:
        """(spatial_id, temporal_id, reason). With no active layer, (-1, -1, "no active layer"). `path_clear`: the
        estimator reads neither over-use nor loss right now (see the class doc's down rule)."""
        options = self._options(layers)
        if not options:
            self.probe_target_bps = None
            self._since.clear()
            return -1, -1, "no active layer"
        estimate = estimate_bps
        up = self.up_factor
        current = self.current
        position = None
        if current is not None:
            for index, option in enumerate(options):
                if (option[0], option[1]) == current:
                    position = index
                    break

        if current is None:
            index = 0
            for candidate, option in enumerate(options):
                if up * option[2] <= estimate and option[3]:
                    index = candidate
            reason = "initial"
            return self._switch(options, index, now_us, reason, estimate, acknowledged_bps, probe_ok_bps)

        if position is None:
            # The current layer went away: the highest active option that fits, else the lowest.
            index = 0
            for candidate, option in enumerate(options):
                if option[2] <= estimate * (1 + self.down_tolerance) and option[3]:
                    index = candidate
            return self._switch(
                options, index, now_us, "layer inactive", estimate, acknowledged_bps, probe_ok_bps
            )

        bitrate = options[position][2]
        carried = path_clear and acknowledged_bps >= CARRIED_SHARE * bitrate
        if bitrate > estimate * (1 + self.down_tolerance) and not carried:
            index = 0
            for candidate in range(position - 1, -1, -1):
                if options[candidate][2] <= estimate * (1 + self.down_tolerance):
                    index = candidate
                    break
            if index != position:
                reason = f"down: {_mbps(bitrate)} > estimate {_mbps(estimate)}"
                return self._switch(options, index, now_us, reason, estimate, acknowledged_bps, probe_ok_bps)

        # Up: the highest option above the current one supported long enough and proven.
        since = self._since
        if self._last_down_us is not None and now_us - self._last_down_us >= self.stable_us:
            self._hold_us = self.up_hold_us
        hold = self._hold_us
        chosen = None
        for candidate in range(position + 1, len(options)):
            key = (options[candidate][0], options[candidate][1])
            rate = options[candidate][2]
            if up * rate <= estimate:
                start = since.setdefault(key, now_us)
                if (now_us - start >= hold and (probe_ok_bps >= rate or acknowledged_bps >= rate)
                        and options[candidate][3]):
                    chosen = candidate
            else:
                since.pop(key, None)
        above = {(option[0], option[1]) for option in options[position + 1 :]}
        for key in [key for key in since if key not in above]:
            del since[key]
        if chosen is not None:
            option = options[chosen]
            proof = "probe" if probe_ok_bps >= option[2] else "acked"
            reason = (
                f"up: estimate {_mbps(estimate)} >= {up:g}x {_mbps(option[2])} for {hold / 1e6:g}s, {proof}"
            )
            return self._switch(options, chosen, now_us, reason, estimate, acknowledged_bps, probe_ok_bps)
        self._set_probe_target(options, position, estimate, acknowledged_bps, probe_ok_bps)
        return options[position][0], options[position][1], "hold"

    def _switch(
        self,
        options: list[tuple[int, int, int, bool]],
        index: int,
        now_us: int,
        reason: str,
        estimate: int,
        acknowledged_bps: int,
        probe_ok_bps: int,
    ) -> tuple[int, int, str]:
        spatial, temporal, bitrate = options[index][:3]
        previous = self.current
        previous_bitrate = self._last_bitrate
        if previous is not None and previous != (spatial, temporal):
            self.switches += 1
            if bitrate > previous_bitrate:
                self._last_up_us = now_us
            elif reason.startswith("down"):  # not "layer inactive": the publisher stopped it, not our estimate
                if self._last_up_us is not None and now_us - self._last_up_us <= self.flap_window_us:
                    self._hold_us = min(self._hold_us * 2, self.max_up_hold_us)  # up then down: flapping
                self._last_down_us = now_us
        self.current = (spatial, temporal)
        self._last_bitrate = bitrate
        if previous is not None and bitrate > previous_bitrate:
            # Up: options above the new one keep the time since the estimate supports them (a climb from the
            # lowest to the top layer holds once, not once per step). Down: everything starts over.
            for key in [key for key in self._since if key <= (spatial, temporal)]:
                del self._since[key]
        else:
            self._since.clear()
        self._set_probe_target(options, index, estimate, acknowledged_bps, probe_ok_bps)
        return spatial, temporal, reason

    def _set_probe_target(
        self,
        options: list[tuple[int, int, int, bool]],
        position: int,
        estimate: int,
        acknowledged_bps: int,
        probe_ok_bps: int,
    ) -> None:
        target = None
        for candidate in range(position + 1, len(options)):
            rate = options[candidate][2]
            if (probe_ok_bps >= rate or acknowledged_bps >= rate) and self.up_factor * rate <= estimate:
                continue  # proven, and the estimate supports it: only the hold is missing
            # Unproven, or proven but the estimate is short of up_factor x its rate (an estimate set by a
            # probe does not grow by itself while the viewer receives a lower layer: 1.5 x R_hat caps it).
            target = int(min(self.up_factor * rate, self.probe_step * max(estimate, 1)))
            break
        self.probe_target_bps = target


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.2f}M"


# ---------------------------------------------------------------------------------------------------------
# Pacing


class Pacer:
    """Leaky bucket for one viewer (§4: a pacer actuates the target rate; burst_time 5 ms).

    Rate = `factor` x estimate; the bucket holds at most `burst_us` of that rate. A packet may leave when the
    bucket is not in debt (>= 0 bytes); it then takes its size out, possibly going into debt, so the long-run
    rate is exact and a packet larger than the burst allowance still goes out. Fast path: `can_send_now(size,
    now_us)` says yes (and charges the bucket) when nothing is queued and the bucket allows it, so the caller
    sends directly; otherwise it `enqueue`s and later sends what `poll(now_us)` returns (at the time
    `next_send_us` gives). Queued packets older than `max_queue_us` worth of rate are dropped (oldest first).
    While packets wait, the bucket keeps filling past the burst allowance (up to `catch_up_us` of rate): a poll
    that comes late (a busy event loop) releases what was due by then, so the queue still drains at the pacing
    rate; with the usual cap, every late timer would lose sending time, the queue would outgrow the rate and the
    extra work of queuing would make the loop later still.

    `hold(until_us)` sends nothing before that time (everything queues) until `release`: the drain after a capacity
    drop (simulcast/viewer_bandwidth.py); the bucket then starts over at its burst allowance, so what queued during
    the hold leaves at the pacing rate, not as one catch-up burst.

    The bucket lives in `bucket`, an array of doubles [rate (bytes/µs), burst (bytes), budget (bytes), last
    refill (µs, -1 before the first), queued packets, held until (µs, 0: not held)], so that a viewer's C lanes
    (gateway/_srtp_send.c `TransportWide`) apply the same `can_send_now` rule to the packets they send, on the same
    budget.
    """

    __slots__ = ("factor", "burst_us", "max_queue_us", "catch_up_us", "bucket", "_queue", "_queued_bytes", "dropped")

    def __init__(
        self,
        estimate_bps: int = 1_000_000,
        *,
        factor: float = 2.5,
        burst_us: int = BURST_TIME_US,
        max_queue_us: int = 2_000_000,
        catch_up_us: int = 100_000,
    ) -> None:
        self.factor = factor
        self.burst_us = burst_us
        self.max_queue_us = max_queue_us
        self.catch_up_us = catch_up_us
        self.bucket = array("d", [0.0, 0.0, 0.0, -1.0, 0.0, 0.0])
        self._queue: deque[tuple[object, int]] = deque()
        self._queued_bytes = 0
        self.dropped = 0
        self.set_estimate(estimate_bps)
        self.bucket[_BUDGET] = self.bucket[_BURST]

    @property
    def rate_bps(self) -> int:
        return int(self.bucket[_RATE] * 8_000_000)

    @property
    def queued_packets(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def limit_bytes(self) -> float:
        """What the queue holds before `enqueue` drops its oldest packets: `max_queue_us` of the rate."""
        return self.bucket[_RATE] * self.max_queue_us

    def would_drop(self, size: int) -> bool:
        """True when `enqueue` of a packet of `size` bytes would drop the oldest queued packet (the queue's limit)."""
        return bool(self._queue) and self._queued_bytes + size > self.limit_bytes

    @property
    def held(self) -> bool:
        return self.bucket[_HOLD] > 0

    def hold(self, until_us: int) -> None:
        """Send nothing before `until_us` (or an earlier `release`)."""
        self.bucket[_HOLD] = float(until_us)

    def release(self, now_us: int) -> None:
        """End a hold: from now on the bucket refills from its burst allowance (nothing owed for the held time)."""
        bucket = self.bucket
        if bucket[_HOLD] <= 0:
            return
        bucket[_HOLD] = 0.0
        bucket[_UPDATED] = float(now_us)
        bucket[_BUDGET] = min(max(bucket[_BUDGET], 0.0), bucket[_BURST])

    def set_estimate(self, estimate_bps: int) -> None:
        """Pace at factor x estimate from now on."""
        bucket = self.bucket
        rate = max(estimate_bps, 1) * self.factor / 8_000_000
        bucket[_RATE] = rate
        burst = bucket[_BURST] = rate * self.burst_us
        if bucket[_BUDGET] > burst:
            bucket[_BUDGET] = burst

    def _refill(self, now_us: int, backlog: bool = False) -> float:
        bucket = self.bucket
        last = bucket[_UPDATED]
        budget = bucket[_BUDGET]
        if last >= 0 and now_us > last:
            if backlog:  # packets waited all along: what was due is owed (see the class doc)
                budget += min(now_us - last, self.catch_up_us) * bucket[_RATE]
            else:
                budget += (now_us - last) * bucket[_RATE]
                if budget > bucket[_BURST]:
                    budget = bucket[_BURST]
        if last < 0 or now_us > last:
            bucket[_UPDATED] = now_us
        bucket[_BUDGET] = budget
        return budget

    def can_send_now(self, size: int, now_us: int) -> bool:
        """True (and the bucket charged) when a packet of `size` bytes may go out now without queuing."""
        if self._queue or now_us < self.bucket[_HOLD]:
            return False
        if self._refill(now_us) < 0:
            return False
        self.bucket[_BUDGET] -= size
        return True

    def enqueue(self, packet: object, size: int) -> None:
        """Queue a packet (any object; returned as is by `poll`)."""
        queue = self._queue
        queue.append((packet, size))
        self._queued_bytes += size
        limit = self.limit_bytes
        while self._queued_bytes > limit and len(queue) > 1:
            _, dropped_size = queue.popleft()
            self._queued_bytes -= dropped_size
            self.dropped += 1
        self.bucket[_QUEUED] = len(queue)

    def discard(self, stale: Callable[[object], bool]) -> list:
        """Drop the queued packets for which `stale(packet)` is true; they are returned, in queue order."""
        kept: deque = deque()
        dropped = []
        for entry in self._queue:
            (dropped if stale(entry[0]) else kept).append(entry)
        if dropped:
            self._queue = kept
            self._queued_bytes = sum(size for _, size in kept)
            self.bucket[_QUEUED] = len(kept)
        return [packet for packet, _ in dropped]

    def poll(self, now_us: int) -> list:
        """The queued packets that may be sent now, in order."""
        queue = self._queue
        if not queue:
            return []
        held = self.bucket[_HOLD]
        if held > 0:
            if now_us < held:
                return []
            self.release(now_us)
        budget = self._refill(now_us, backlog=True)
        out = []
        while queue and budget >= 0:
            packet, size = queue.popleft()
            budget -= size
            self._queued_bytes -= size
            out.append(packet)
        if not queue and budget > self.bucket[_BURST]:
            budget = self.bucket[_BURST]  # the backlog is gone: idle again, at most the burst allowance
        self.bucket[_BUDGET] = budget
        self.bucket[_QUEUED] = len(queue)
        return out

    def next_send_us(self, now_us: int) -> int | None:
        """When `poll` will next release a packet (now_us if it would now), or None when nothing is queued."""
        if not self._queue:
            return None
        if now_us < self.bucket[_HOLD]:
            return int(math.ceil(self.bucket[_HOLD]))
        budget = self._refill(now_us, backlog=True)
        if budget >= 0:
            return now_us
        return now_us + math.ceil(-budget / self.bucket[_RATE])
