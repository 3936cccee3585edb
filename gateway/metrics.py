"""Prometheus metrics. Per-packet counts are plain integers read at scrape time (no lock per packet)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# RTP packets sent to viewers, by media kind: incremented by the fan-out once per incoming packet.
forwarded_packets = {"audio": 0, "video": 0}

DROPPED = Counter("whipgate_dropped", "Bad or unusable input dropped and counted, by reason", ["reason"])
HTTP_REJECTED = Counter("whipgate_http_rejected", "WHIP/WHEP requests answered with an error, by status", ["status"])
SESSIONS = Gauge("whipgate_sessions", "Live WHIP (publisher) and WHEP (viewer) sessions", ["kind"])
KEYFRAME_REQUESTS = Counter("whipgate_keyframe_requests", "PLI/FIR sent to publishers")
NACKS_SENT = Counter("whipgate_nacks_sent", "Sequence numbers NACKed to publishers")
RETRANSMISSIONS = Counter("whipgate_retransmissions", "Packets resent to viewers after their NACKs")


def count_drop(reason: str) -> None:
    DROPPED.labels(reason).inc()


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
