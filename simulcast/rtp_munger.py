"""One continuous outgoing counter built from a succession of source streams (simulcast layer switches).

A viewer's video track forwards one simulcast layer at a time. Each layer is its own RTP stream (RFC 3550 §5.1:
its own SSRC, random initial sequence number and timestamp) and, for VP8/VP9, its own picture id sequence. The
viewer must see ONE stream whose counters never jump: `RtpMunger` does this for the RTP sequence number and
timestamp, `SerialMunger` for any other wrapping counter (VP8/VP9 picture ids, see simulcast.vp8/vp9).

The model, shared by both: the outgoing value is the incoming value plus an offset (modulo 2**bits). The offset
is set at each `switch_to` so the switch point's value follows the last outgoing one, and lowered by one when
the newest incoming value is dropped on purpose (`drop`), so the viewer sees no gap where nothing was lost.
Each offset change opens a *segment* (first incoming value, first outgoing value, offset); the newest segments
are kept in a fixed ring so that late packets still map to the value the viewer expects (a gap stays a gap,
RFC 4585 §6.2.1 NACKs name it) and a viewer's NACK maps back to the original packet (`RtpMunger.unmap`).

All arithmetic is serial-number arithmetic (RFC 1982 §3): `a` is newer than `b` when 0 < (a - b) mod 2**bits <
2**(bits-1). The per-packet paths (`map`, and `drop` when nothing changes) allocate nothing but the returned
tuple; segments live in preallocated lists.
"""

from __future__ import annotations

import random
import time
from array import array
from typing import NamedTuple

__all__ = ["Origin", "RtpMunger", "SerialMunger"]

_TS_MASK = 0xFFFFFFFF


def initial_sequence_number() -> int:
    """A viewer stream's first sequence number: random (RFC 3550 §5.1) and below 2**15 (see RtpMunger.switch_to)."""
    return random.getrandbits(15)


class Origin(NamedTuple):
    """Where one outgoing sequence number came from (see `RtpMunger.unmap`)."""

    layer: int  # the `layer` key given to the `switch_to` that started the segment
    seq: int  # the publisher's sequence number on that layer
    ts_offset: int  # outgoing timestamp = (the packet's timestamp + ts_offset) mod 2**32


class _Segments:
    """The segment ring and the serial arithmetic shared by `SerialMunger` and `RtpMunger`."""

    __slots__ = (
        "_mask",
        "_half",
        "_ring",
        "_seg_in",
        "_seg_out",
        "_seg_off",
        "_seg_layer",
        "_seg_extra",
        "_count",
        "_run_start",
        "_run_first_out",
        "_started",
        "_in_start",
        "_offset",
        "_extra",
        "_highest_in",
        "_last_out",
        "layer",
    )

    def __init__(self, bits: int, segments: int) -> None:
        if segments < 2 or segments & (segments - 1):
            raise ValueError("segments must be a power of two >= 2")
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._ring = segments - 1
        zeros = bytes(8 * segments)
        self._seg_in = array("q", zeros)  # first incoming value of each segment
        self._seg_out = array("q", zeros)  # ... and the outgoing value it maps to
        self._seg_off = array("q", zeros)  # out = (in + off) & mask inside the segment
        self._seg_layer = array("q", zeros)
        self._seg_extra = array("q", zeros)  # per-run data for the owner (RtpMunger: the timestamp offset)
        self._count = 0  # segments ever opened; the current one is (_count - 1) & _ring
        self._run_start = 0  # _count index of the segment opened by the last switch_to
        self._run_first_out = 0  # the first outgoing value of the last switch_to
        self._started = False
        # The current segment, cached for the per-packet fast path.
        self._in_start = 0
        self._offset = 0
        self._extra = 0
        self._highest_in = 0  # newest incoming value of the current layer seen by map or drop
        self._last_out = 0  # newest outgoing value handed out
        self.layer = 0  # key of the layer being forwarded

    @property
    def started(self) -> bool:
        return self._started

    def _open(self, first_in: int, first_out: int, layer: int, extra: int) -> None:
        i = self._count & self._ring
        offset = (first_out - first_in) & self._mask
        self._seg_in[i] = first_in
        self._seg_out[i] = first_out
        self._seg_off[i] = offset
        self._seg_layer[i] = layer
        self._seg_extra[i] = extra
        self._count += 1
        self._in_start = first_in
        self._offset = offset

    def _switch(self, first_in: int, first_out: int, layer: int, extra: int) -> None:
        mask = self._mask
        first_in &= mask
        self._extra = extra
        self._open(first_in, first_out, layer, extra)
        self._run_start = self._count - 1
        self._run_first_out = first_out & mask
        self._highest_in = (first_in - 1) & mask
        self._last_out = (first_out - 1) & mask
        self.layer = layer
        self._started = True

    def drop(self, value: int) -> None:
        """`value` of the current layer will not be forwarded. If it is the newest value seen, the following
        outgoing values close over it (the viewer sees no gap); otherwise the gap is left as it is."""
        if not self._started:
            return
        mask = self._mask
        if not 0 < (value - self._highest_in) & mask < self._half:
            return  # not newer than everything seen: its outgoing value may already be implied by later ones
        self._highest_in = value
        following = (value + 1) & mask
        if value == self._in_start:
            # Nothing of the current segment has gone out yet (its first value is the one dropped): slide it.
            self._in_start = following
            self._offset = offset = (self._offset - 1) & mask
            i = (self._count - 1) & self._ring
            self._seg_in[i] = following
            self._seg_off[i] = offset
        else:
            # The value after the dropped one takes the dropped one's outgoing value.
            self._open(following, (value + self._offset) & mask, self.layer, self._extra)

    def _map_older(self, value: int, record: bool = True) -> int | None:
        """Outgoing value for a late `value` of the current layer older than the current segment, or None when
        it precedes the switch point, was dropped with its gap closed, or is older than the segments kept."""
        if not self._started:
            return None
        mask = self._mask
        half = self._half
        ring = self._ring
        seg_in = self._seg_in
        seg_out = self._seg_out
        count = self._count
        upper = seg_out[(count - 1) & ring]  # first outgoing value of the segment after the one searched
        k = count - 2
        stop = max(self._run_start, count - ring - 1)
        while k >= stop:
            i = k & ring
            if (value - seg_in[i]) & mask < half:
                out = (value + self._seg_off[i]) & mask
                if not 0 < (upper - out) & mask < half:
                    return None  # its outgoing value went to a later packet when it was dropped
                if record and 0 < (out - self._last_out) & mask < half:
                    self._last_out = out  # fills a gap after the newest packet sent so far
                return out
            upper = seg_out[i]
            k -= 1
        return None

    def unsend(self, first: int) -> None:
        """Outgoing values from `first` to the newest were handed out but never sent (dropped from a pacer's queue
        before they left): forget them, so that the next `switch_to`, which must follow at once, continues at
        `first` and the viewer sees no gap (a gap reads as loss in its statistics and asks for a NACK of packets
        that never existed for it). Segments that begin after `first - 1` are forgotten with them."""
        if not self._started:
            return
        mask, half = self._mask, self._half
        if (self._last_out - first) & mask >= half:
            return  # `first` is after the newest value: nothing of it was handed out
        last = (first - 1) & mask
        seg_out, ring = self._seg_out, self._ring
        while self._count > 0 and 0 < (seg_out[(self._count - 1) & ring] - last) & mask < half:
            self._count -= 1
        self._last_out = last

    def since_switch(self, out: int) -> bool:
        """Whether outgoing value `out` was handed out at or after the last `switch_to` (not before it)."""
        return self._started and (out - self._run_first_out) & self._mask < self._half

    def _find(self, out: int) -> int:
        """Ring index of the segment holding outgoing value `out`, or -1 (never sent, or too old)."""
        if not self._started:
            return -1
        mask = self._mask
        half = self._half
        ring = self._ring
        last = self._last_out
        back = (last - out) & mask
        if back >= half:
            return -1  # after the newest value sent
        seg_out = self._seg_out
        k = self._count - 1
        stop = max(0, self._count - ring - 1)
        while k >= stop and 0 < (seg_out[k & ring] - last) & mask < half:
            k -= 1  # segments opened after the newest value sent hold nothing yet
        while k >= stop:
            i = k & ring
            start_back = (last - seg_out[i]) & mask
            if start_back >= half:
                return -1  # older than half the counter space: ambiguous
            if back <= start_back:
                return i
            k -= 1
        return -1


class SerialMunger(_Segments):
    """A `bits`-wide wrapping counter (VP8/VP9 picture id: bits=15) kept continuous across layer switches.

    Before the first `switch_to` nothing maps. The first switch keeps the incoming value (offset 0) unless
    `start` is given; later switches continue at last outgoing value + 1.
    """

    __slots__ = ()

    def __init__(self, bits: int, *, segments: int = 32) -> None:
        super().__init__(bits, segments)

    def switch_to(self, first: int, layer: int = 0, start: int | None = None) -> int:
        """`first` starts the new layer (its keyframe); returns the outgoing value it maps to."""
        if self._started:
            first_out = (self._last_out + 1) & self._mask
        else:
            first_out = (first if start is None else start) & self._mask
        self._switch(first, first_out, layer, 0)
        return first_out

    def map(self, value: int) -> int | None:
        """Outgoing value for `value` of the current layer; None before the switch point or if dropped."""
        mask = self._mask
        if (value - self._in_start) & mask < self._half and self._started:
            out = (value + self._offset) & mask
            if 0 < (value - self._highest_in) & mask < self._half:
                self._highest_in = value
                self._last_out = out
            return out
        return self._map_older(value)

    def is_newest(self, value: int) -> bool:
        """True when `value` is newer than every value of the current layer seen so far."""
        return 0 < (value - self._highest_in) & self._mask < self._half

    def lookup(self, value: int) -> int | None:
        """The outgoing value `value` has (or would have), without recording anything; None as for `map`."""
        if not self._started:
            return None
        mask = self._mask
        if (value - self._in_start) & mask < self._half:
            return (value + self._offset) & mask
        return self._map_older(value, False)

    @property
    def last(self) -> int:
        """The newest outgoing value."""
        return self._last_out

    def lane_state(self) -> tuple[int, int, int, int] | None:
        """(in_start, offset, highest_in, last_out) of the current segment for a compiled lane (as
        RtpMunger.lane_state); None before the first switch."""
        if not self._started:
            return None
        return self._in_start, self._offset, self._highest_in, self._last_out

    def resume(self, highest_in: int, last_out: int) -> None:
        """Take back what a compiled lane moved on while it mapped the current segment."""
        self._highest_in = highest_in
        self._last_out = last_out


class RtpMunger(_Segments):
    """Per viewer video track: RTP sequence number and timestamp of the layer being forwarded -> the viewer's.

    Per packet: `map(seq, ts, now)` for a packet to forward, `drop(seq)` for one of the current layer that will
    not be forwarded (padding only, a temporal layer above the target). At a switch (the new layer's keyframe
    start, also the very first packet): `switch_to(first_seq, first_ts, now, layer)`. For a viewer's NACK:
    `unmap(out_seq)`. `now` is a time.monotonic() reading (seconds); use the same clock everywhere.
    """

    __slots__ = ("clock_rate", "_ts_offset", "_last_ts", "_last_time")

    def __init__(self, clock_rate: int = 90000, *, segments: int = 256) -> None:
        super().__init__(16, segments)
        self.clock_rate = clock_rate  # RFC 3551 §6 (table 5): 90 kHz for video
        self._ts_offset = 0
        self._last_ts = 0  # newest outgoing timestamp
        self._last_time = 0.0  # arrival of the first forwarded packet carrying _last_ts

    def switch_to(self, first_seq: int, first_ts: int, now: float, layer: int = 0) -> None:
        """Forward a new layer from its packet (`first_seq`, `first_ts`) on, arriving at `now`.

        Its sequence number follows the last outgoing one; its timestamp is the last outgoing one advanced by
        the wall-clock time since that timestamp was first forwarded (at least one tick), so the viewer's
        playout clock (RFC 3550 §5.1: timestamps reflect sampling instants) runs on without a jump.
        The first switch picks random outgoing values (RFC 3550 §5.1), the sequence number below 2**15: an SRTP
        receiver starts its rollover counter at 0 with the first packet it can decrypt (RFC 3711 §3.3.1), and the
        first packets after the viewer's DTLS handshake are often lost (its SRTP keys are not set yet). Started
        just below 2**16, the sender wraps before the viewer decrypts anything, the two rollover counters differ by
        one and every packet fails authentication (seen in bench/load.py; libwebrtc keeps its initial sequence
        numbers below 2**15 for the same reason).
        """
        if self._started:
            ticks = round((now - self._last_time) * self.clock_rate)
            out_ts = (self._last_ts + (ticks if ticks > 0 else 1)) & _TS_MASK
            out_seq = (self._last_out + 1) & 0xFFFF
        else:
            out_ts = random.getrandbits(32)
            out_seq = initial_sequence_number()
        self._ts_offset = ts_offset = (out_ts - first_ts) & _TS_MASK
        self._switch(first_seq, out_seq, layer, ts_offset)
        self._last_ts = out_ts
        self._last_time = now

    def map(self, seq: int, ts: int, now: float | None = None) -> tuple[int, int] | None:
        """The viewer's (seq, ts) for a packet of the current layer, or None when it must not be sent: older
        than the switch point, its sequence number was closed over by `drop`, or older than the segments kept.
        Gaps stay gaps. `now` (arrival time; time.monotonic() when omitted) paces the next switch."""
        if (seq - self._in_start) & 0xFFFF < 0x8000 and self._started:
            out_ts = (ts + self._ts_offset) & _TS_MASK
            if 0 < (seq - self._highest_in) & 0xFFFF < 0x8000:
                self._highest_in = seq
                self._last_out = out_seq = (seq + self._offset) & 0xFFFF
                if out_ts != self._last_ts:
                    self._last_ts = out_ts
                    self._last_time = time.monotonic() if now is None else now
                return out_seq, out_ts
            return (seq + self._offset) & 0xFFFF, out_ts
        out_seq = self._map_older(seq)
        if out_seq is None:
            return None
        return out_seq, (ts + self._ts_offset) & _TS_MASK

    def lane_state(self) -> tuple[int, int, int, int, int, int, float] | None:
        """What a compiled lane (gateway/_srtp_send.c LaneGroup) needs to run `map`'s fast path for the current
        segment: (in_start, offset, ts_offset, highest_in, last_out, last_ts, last_time); None before the first
        switch. The lane applies the same rules and gives the moved state back through `resume`."""
        if not self._started:
            return None
        return (self._in_start, self._offset, self._ts_offset, self._highest_in, self._last_out, self._last_ts,
                self._last_time)

    def resume(self, highest_in: int, last_out: int, last_ts: int, last_time: float) -> None:
        """Take back the state a compiled lane moved on while it forwarded the current segment."""
        self._highest_in = highest_in
        self._last_out = last_out
        self._last_ts = last_ts
        self._last_time = last_time

    def unmap(self, out_seq: int) -> Origin | None:
        """The packet a viewer's NACK names (RFC 4585 §6.2.1): `Origin(layer, seq, ts_offset)` of the current or
        an earlier segment (earlier layers included), or None when `out_seq` was never sent or is too old.
        Sequence numbers of gaps map back too (the publisher's packet may arrive later via its own NACK)."""
        i = self._find(out_seq)
        if i < 0:
            return None
        return Origin(self._seg_layer[i], (out_seq - self._seg_off[i]) & 0xFFFF, self._seg_extra[i])

    # ---- read-only state, e.g. for sender reports (RFC 3550 §6.4.1: SR timestamps in the viewer's space) ----
    @property
    def ts_offset(self) -> int:
        """The current layer's timestamp offset: outgoing = (incoming + ts_offset) mod 2**32."""
        return self._ts_offset

    @property
    def last_seq(self) -> int:
        return self._last_out

    @property
    def last_ts(self) -> int:
        return self._last_ts
