"""Receive statistics of one incoming RTP stream, for the receiver reports we send the publisher.

RFC 3550 §6.4.1 report block fields, computed as in Appendix A.3 (loss) and A.8 (interarrival jitter).
"""

from __future__ import annotations

from gateway.rtcp import ReportBlock, ntp_middle32


class ReceiveStats:
    __slots__ = (
        "clock_rate",
        "started",
        "base_seq",
        "max_seq",
        "cycles",
        "received",
        "expected_prior",
        "received_prior",
        "jitter",
        "last_transit",
        "last_sr_ntp",
        "last_sr_arrival",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self.last_transit: float | None = None
        self.last_sr_ntp = 0
        self.last_sr_arrival = 0.0

    def update(self, seq: int, timestamp: int, arrival: float) -> None:
        """Account one packet (arrival in seconds). Late and duplicate packets count as received (A.3)."""
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self.max_seq:
                    self.cycles += 0x10000
                self.max_seq = seq
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        if self.last_transit is not None:
            d = abs(transit - self.last_transit)
            self.jitter += (d - self.jitter) / 16.0
        self.last_transit = transit

    def on_sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        self.last_sr_ntp = ntp_middle32(ntp_timestamp)
        self.last_sr_arrival = arrival

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def lost(self) -> int:
        expected = self.extended_max - self.base_seq + 1
        return max(0, expected - self.received)

    def report_block(self, ssrc: int, now: float) -> ReportBlock:
        expected = self.extended_max - self.base_seq + 1
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        cumulative = max(-0x800000, min(0x7FFFFF, expected - self.received))
        dlsr = int((now - self.last_sr_arrival) * 65536) if self.last_sr_ntp else 0
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=cumulative,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter) & 0xFFFFFFFF,
            lsr=self.last_sr_ntp,
            dlsr=dlsr & 0xFFFFFFFF,
        )
