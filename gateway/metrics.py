"""Prometheus metrics. Per-packet counts are plain integers read at scrape time (no lock per packet)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# RTP packets sent to viewers, by media kind: incremented by the fan-out once per incoming packet.
forwarded_packets = {"audio": 0, "video": 0}

DROPPED = Counter("whipgate_dropped", "Bad or unusable input dropped and counted, by reason", ["reason"])
HTTP_REJECTED = Counter("whipgate_http_rejected", "WHIP/WHEP requests answered with an error, by status", ["status"])
SESSIONS = Gauge("whipgate_sessions", "Live WHIP (publisher) and WHEP (viewer) sessions", ["kind"])
KEYFRAME_REQUESTS = Counter("whipgate_keyframe_requests", "PLI/FIR sent to publishers")
NACKS_SENT = Counter("whipgate_nacks_sent", "Sequence numbers NACKed to publishers")
RETRANSMISSIONS = Counter("whipgate_retransmissions", "Packets resent to viewers after their NACKs")
LAYER_SWITCHES = Counter(
    "whipgate_layer_switches", "Simulcast layer switches done for viewers, by cause (up, down, pinned, ...)", ["cause"]
)
LAYER_SWITCH_WAIT = Histogram(
    "whipgate_layer_switch_wait_seconds", "From choosing a viewer's new layer to forwarding its first keyframe",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
)


def count_drop(reason: str, count: int = 1) -> None:
    DROPPED.labels(reason).inc(count)


def track_sessions(kind: str, count: Callable[[], int]) -> None:
    SESSIONS.labels(kind).set_function(count)


class _ForwardedCollector(Collector):
    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "whipgate_rtp_packets_forwarded", "RTP packets sent to viewers, by media kind", labels=["kind"]
        )
        for kind, value in forwarded_packets.items():
            family.add_metric([kind], value)
        yield family


REGISTRY.register(_ForwardedCollector())


ESTIMATE_BUCKETS = (150_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000)


class _ViewerCollector(Collector):
    """Per-viewer bandwidth estimates and layers, read from the live sessions at scrape time (no per-viewer
    label: a histogram of estimates and a count of viewers per layer and cause keep the series bounded)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[int, str, str]]] | None = None

    def collect(self) -> Iterable[object]:
        viewers = list(self.source()) if self.source is not None else []
        buckets = [0] * len(ESTIMATE_BUCKETS)
        total = 0
        counts: dict[tuple[str, str], int] = {}
        for estimate, layer, cause in viewers:
            if estimate:
                total += estimate
                for i, bound in enumerate(ESTIMATE_BUCKETS):
                    if estimate <= bound:
                        buckets[i] += 1
            counts[(layer, cause)] = counts.get((layer, cause), 0) + 1
        estimated = sum(1 for e, _, _ in viewers if e)
        histogram = HistogramMetricFamily(
            "whipgate_viewer_estimate_bits_per_second", "Viewers' current bandwidth estimates (transport-cc, REMB or RR)"
        )
        histogram.add_metric(
            [], [(str(b), float(n)) for b, n in zip(ESTIMATE_BUCKETS, buckets)] + [("+Inf", float(estimated))], float(total)
        )
        yield histogram
        layers = GaugeMetricFamily(
            "whipgate_viewers_by_layer", "Viewers by the video layer they receive (rid or spatial id) and why", labels=["layer", "cause"]
        )
        for (layer, cause), n in sorted(counts.items()):
            layers.add_metric([layer, cause], n)
        yield layers


VIEWERS = _ViewerCollector()
REGISTRY.register(VIEWERS)


def track_viewers(source: Callable[[], Iterable[tuple[int, str, str]]]) -> None:
    """Where the viewer collector reads (estimate bps or 0, layer, cause) per viewer: the SessionManager."""
    VIEWERS.source = source
