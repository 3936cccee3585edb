"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

Receive side: `TwccRecorder.record(transport_seq, arrival_us)` runs for every incoming RTP packet that
carries the transport-wide sequence number extension (§2.2) and costs one dict insert in the common case.
`TwccRecorder.build_feedback(sender_ssrc, media_ssrc)`, called every 50-100 ms, returns the RTCP RTPFB
FMT 15 packets (§3.1) that report every sequence number since the previous feedback.

Send side: `parse_feedback(fci)` decodes the FCI of a feedback packet (what `gateway.rtcp.parse_compound`
returns as `TransportCcFeedback.raw`) into `TwccFeedback`.

Format decisions where the draft is ambiguous or self-contradictory (matching what libwebrtc, i.e. Chrome,
actually sends and accepts):
- §3.1.4 says a 1-bit status vector holds "packet received" (0) and "packet not received" (1), but its own
  Example 1 and every deployed implementation use 0 = not received, 1 = received with a small delta. We
  follow the example.
- §3.1.1 lists symbol 11 as reserved while §3.1.3 Example 2 calls it "received, w/o recv delta". We never
  send it and `parse_feedback` rejects it (ValueError), as libwebrtc does.
- §3.1 says "zero padding" after the deltas. We pad with the RTCP padding bit (RFC 3550 §6.4.1: P set,
  last octet = padding count), as libwebrtc does, so `parse_compound` strips it; `parse_feedback` ignores
  any trailing bytes after the last delta (zero padding without the P bit).
- §3.1 "reference time" is a 24-bit signed count of 64 ms. The value wraps every 2^24 * 64 ms (~12.4
  days); `TwccFeedback.reference_time_us` is the sign-extended value, so compare reference times of two
  feedbacks modulo `REFERENCE_TIME_WRAP_US`.
- A packet status count of 0 is rejected (libwebrtc: "empty feedback messages not allowed").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "TwccRecorder",
    "TwccFeedback",
    "parse_feedback",
    "MAX_FEEDBACK_SIZE",
    "REFERENCE_TIME_WRAP_US",
]

PT_RTPFB = 205  # RFC 4585 §6.1
FMT_TRANSPORT_CC = 15  # §3.1

MAX_FEEDBACK_SIZE = 1200  # bytes per RTCP packet, header and padding included; keeps SRTCP under the MTU
REFERENCE_TIME_UNIT_US = 64_000  # §3.1: reference time in multiples of 64 ms
REFERENCE_TIME_WRAP_US = (1 << 24) * REFERENCE_TIME_UNIT_US  # the 24-bit field wraps after ~12.4 days
DELTA_UNIT_US = 250  # §3.1.5: receive deltas in multiples of 250 µs

# Packet status symbols, §3.1.1.
SYMBOL_NOT_RECEIVED = 0
SYMBOL_SMALL_DELTA = 1  # 8-bit unsigned receive delta, [0, 63.75] ms (§3.1.5)
SYMBOL_LARGE_DELTA = 2  # 16-bit signed receive delta, [-8192, 8191.75] ms (§3.1.5)
SYMBOL_RESERVED = 3

_MAX_RUN_LENGTH = 0x1FFF  # §3.1.3: 13-bit run length
_MAX_STATUS_COUNT = 0xFFFF  # §3.1: 16-bit packet status count
_SMALL_DELTA_MAX = 0xFF
_LARGE_DELTA_MIN = -0x8000
_LARGE_DELTA_MAX = 0x7FFF
_HEADER_SIZE = 20  # RTCP header (4), sender and media SSRC (8), base seq, count, reference time, fb count (8)

# Receiver bookkeeping limits (not from the draft).
LATE_WINDOW = 1000  # packets more than this many sequence numbers behind the highest one are ignored
RESYNC_AFTER = 64  # this many consecutive ignored packets mean the sender jumped: start over
MAX_PENDING = 16384  # received packets held for feedback; more means build_feedback is not being called

# V/P/FMT, PT, length, sender SSRC, media SSRC, base seq, status count, reference time | fb pkt count (§3.1)
_PACKET_HEADER = struct.Struct("!BBHIIHHI")
_FCI_HEADER = struct.Struct("!HHI")  # base seq, packet status count, reference time | fb pkt count (§3.1)
_I16 = struct.Struct("!h")


@dataclass(slots=True)
class TwccFeedback:
    """One decoded transport-wide feedback FCI (§3.1).

    `packets` holds one (transport sequence number, arrival time) tuple per reported packet, in sequence
    order starting at `base_seq` (16-bit numbers, wrapping). The arrival time is in µs relative to
    `reference_time_us` (at 250 µs resolution), or None for "packet not received".
    """

    base_seq: int
    reference_time_us: int
    feedback_count: int
    packets: list[tuple[int, int | None]]


# ---------------------------------------------------------------------------------------------------------
# Receive side


class TwccRecorder:
    """Records transport-wide sequence numbers and arrival times; builds feedback packets from them.

    Sequence numbers are unwrapped against the highest one seen so far (a step of up to ±32767 is taken as
    the shortest way round). Duplicates are ignored. Packets reordered within one feedback interval are
    simply reported in sequence order (with a large or negative delta where needed). A packet that arrives
    after the feedback that already reported it as "not received" is reported in the next feedback, whose
    base sequence number then goes back to it; packets in between that were already reported as received
    are marked "not received" there, as §3.1.1 requires. Packets more than `LATE_WINDOW` sequence numbers
    behind the highest one are dropped; after `RESYNC_AFTER` such packets in a row the recorder assumes
    the sender restarted its counter, drops what it has not reported yet and starts over from the packet
    that tipped it (no losses are reported for the jump).

    `arrival_us` is any monotonic clock in µs (integers); feedback carries it modulo
    `REFERENCE_TIME_WRAP_US`. Not thread-safe: call from the event loop that receives the packets.
    """

    __slots__ = ("_pending", "_highest", "_next_seq", "_reported", "_stale", "_feedback_count")

    def __init__(self) -> None:
        self._pending: dict[int, int] = {}  # unwrapped seq -> arrival µs, received and not yet reported
        self._highest: int | None = None  # highest unwrapped seq ever recorded
        self._next_seq: int | None = None  # lowest seq not yet covered by any feedback
        self._reported: set[int] = set()  # seqs reported as received, within LATE_WINDOW of the highest
        self._stale = 0  # consecutive packets dropped as too old
        self._feedback_count = 0  # §3.1 feedback packet count of the next packet, 8 bits

    @property
    def pending(self) -> int:
        """How many received packets await feedback."""
        return len(self._pending)

    def record(self, transport_seq: int, arrival_us: int) -> None:
        """Note that the packet with this 16-bit transport-wide sequence number (§2) arrived at
        `arrival_us`."""
        highest = self._highest
        if highest is None:
            ext = transport_seq & 0xFFFF
            self._highest = ext
            self._pending[ext] = arrival_us
            return
        ext = highest + (((transport_seq - highest + 0x8000) & 0xFFFF) - 0x8000)
        pending = self._pending
        if ext > highest:  # the common case: the next packet in order, or after a gap
            if len(pending) < MAX_PENDING:
                self._highest = ext
                self._stale = 0
                pending[ext] = arrival_us
            return
        # Reordered, duplicate or late.
        if ext in pending:
            return
        if ext < highest - LATE_WINDOW:
            self._stale += 1
            if self._stale >= RESYNC_AFTER:
                self._resync(transport_seq, arrival_us)
            return
        self._stale = 0
        next_seq = self._next_seq
        if next_seq is not None and ext < next_seq and ext in self._reported:
            return  # a duplicate of a packet an earlier feedback reported as received
        if len(pending) < MAX_PENDING:
            pending[ext] = arrival_us

    def _resync(self, transport_seq: int, arrival_us: int) -> None:
        # The sender's counter jumped (restart, or a step beyond ±32767). Forget everything unreported rather
        # than report tens of thousands of phantom losses; continue above every number used so far.
        highest = self._highest
        assert highest is not None
        ext = highest + 1 + ((transport_seq - highest - 1) & 0xFFFF)
        self._pending = {ext: arrival_us}
        self._reported = set()
        self._highest = ext
        self._next_seq = ext
        self._stale = 0

    def build_feedback(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """RTCP RTPFB FMT 15 packets (§3.1) for everything recorded since the last call; [] if nothing was.

        The first packet starts at the lowest sequence number not yet reported (so losses right after the
        previous feedback are reported too) and the last one ends at the highest received packet. A new
        packet starts when a receive delta does not fit 16 bits signed (§3.1.5), when the status count
        would exceed 65535, or when the packet would exceed `MAX_FEEDBACK_SIZE` bytes.
        """
        pending = self._pending
        if not pending:
            return []
        seqs = sorted(pending)
        next_seq = self._next_seq
        base = seqs[0] if next_seq is None or next_seq > seqs[0] else next_seq
        packets = []
        index = 0
        count = len(seqs)
        while index < count:
            if seqs[index] - base >= _MAX_STATUS_COUNT:
                base = seqs[index]  # unreachable with ±32767 unwrapping; keeps the count field in range
            packet, index, base = self._build_one(seqs, index, base, sender_ssrc, media_ssrc)
            packets.append(packet)

        last = seqs[-1] + 1
        self._next_seq = last if next_seq is None or last > next_seq else next_seq
        reported = self._reported
        reported.update(seqs)
        pending.clear()
        if len(reported) > 4 * LATE_WINDOW:
            floor = (self._highest or 0) - LATE_WINDOW
            self._reported = {seq for seq in reported if seq >= floor}
        return packets

    def _build_one(
        self, seqs: list[int], first: int, base: int, sender_ssrc: int, media_ssrc: int
    ) -> tuple[bytes, int, int]:
        """One feedback packet starting at sequence number `base`, whose first received packet is
        seqs[first]. Returns (packet, index of the first packet left out, base of the next packet)."""
        pending = self._pending
        # §3.1: reference time in 64 ms units; the first delta is relative to it, so it is in [0, 64 ms).
        reference = pending[seqs[first]] // REFERENCE_TIME_UNIT_US
        chunks, deltas, end, next_base = _encode(pending, seqs, first, len(seqs), base, reference)
        size = _HEADER_SIZE + 2 * len(chunks) + len(deltas)
        if size > MAX_FEEDBACK_SIZE:
            # Binary search for the longest run of packets that fits (MAX_FEEDBACK_SIZE is a multiple of
            # 4, so fitting before padding means fitting after). One packet always fits: 20 header bytes,
            # at most 9 chunks (8 for a gap of up to 65534 losses), 2 delta bytes.
            fits, too_big = first + 1, end
            best = _encode(pending, seqs, first, fits, base, reference)
            while too_big - fits > 1:
                middle = (fits + too_big) // 2
                candidate = _encode(pending, seqs, first, middle, base, reference)
                if _HEADER_SIZE + 2 * len(candidate[0]) + len(candidate[1]) <= MAX_FEEDBACK_SIZE:
                    fits, best = middle, candidate
                else:
                    too_big = middle
            chunks, deltas, end, next_base = best
            size = _HEADER_SIZE + 2 * len(chunks) + len(deltas)
        padded = (size + 3) & ~3
        padding = padded - size
        feedback_count = self._feedback_count
        self._feedback_count = (feedback_count + 1) & 0xFF
        header = _PACKET_HEADER.pack(
            0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC,  # V=2, P, FMT=15
            PT_RTPFB,
            (padded >> 2) - 1,  # RFC 3550 §6.4.1: length in 32-bit words minus one
            sender_ssrc & 0xFFFFFFFF,
            media_ssrc & 0xFFFFFFFF,
            base & 0xFFFF,
            next_base - base,  # packet status count
            ((reference & 0xFFFFFF) << 8) | feedback_count,  # 24-bit reference time, 8-bit fb pkt count
        )
        parts = [header, struct.pack(f"!{len(chunks)}H", *chunks), deltas]
        if padding:
            parts.append(bytes(padding - 1) + bytes((padding,)))  # RFC 3550 §6.4.1 padding
        return b"".join(parts), end, next_base


def _encode(
    pending: dict[int, int], seqs: list[int], first: int, limit: int, base: int, reference: int
) -> tuple[list[int], bytearray, int, int]:
    """`_select` followed by `_encode_chunks`: (chunks, deltas, end index, next base)."""
    segments, deltas, end, next_base = _select(pending, seqs, first, limit, base, reference)
    return _encode_chunks(segments), deltas, end, next_base


def _select(
    pending: dict[int, int], seqs: list[int], first: int, limit: int, base: int, reference: int
) -> tuple[list[list[int]], bytearray, int, int]:
    """Take received packets seqs[first:limit] in order while their deltas fit (§3.1.5), the status count
    fits 16 bits and the deltas alone fit MAX_FEEDBACK_SIZE. Returns the status symbols as run segments
    [[symbol, length], ...] (neighbours differ), the receive delta bytes, the index after the last packet
    taken and the sequence number after it."""
    reference_us = reference * REFERENCE_TIME_UNIT_US
    segments: list[list[int]] = []
    deltas = bytearray()
    previous = 0  # in 250 µs ticks since the reference time
    position = base  # next sequence number to describe
    index = first
    while index < limit:
        seq = seqs[index]
        if seq - base >= _MAX_STATUS_COUNT:
            break
        # Quantize the time since the reference, not each delta, so rounding errors do not accumulate.
        ticks = (pending[seq] - reference_us + DELTA_UNIT_US // 2) // DELTA_UNIT_US
        delta = ticks - previous
        if 0 <= delta <= _SMALL_DELTA_MAX:
            symbol = SYMBOL_SMALL_DELTA
        elif _LARGE_DELTA_MIN <= delta <= _LARGE_DELTA_MAX:
            symbol = SYMBOL_LARGE_DELTA
        else:
            # §3.1.5: "a new feedback message must be used". Never for the first packet: its delta is
            # within 64 ms of the reference time, i.e. 0..256 ticks.
            break
        # Even with a single chunk the deltas alone would not fit: a safe place to stop looking.
        if _HEADER_SIZE + 2 + len(deltas) + symbol > MAX_FEEDBACK_SIZE:
            break
        if seq > position:  # the packets in between were not received (§3.1.1)
            segments.append([SYMBOL_NOT_RECEIVED, seq - position])
        if segments and segments[-1][0] == symbol:
            segments[-1][1] += 1
        else:
            segments.append([symbol, 1])
        if symbol == SYMBOL_SMALL_DELTA:
            deltas.append(delta)
        else:
            deltas += _I16.pack(delta)
        previous = ticks
        position = seq + 1
        index += 1
    return segments, deltas, index, position


def _encode_chunks(segments: list[list[int]]) -> list[int]:
    """Packet status chunks (§3.1.2) for a symbol sequence given as run segments.

    Greedy, left to right: a run length chunk (§3.1.3) when the run at hand covers at least as many
    symbols as a status vector could, else a status vector (§3.1.4) of 14 1-bit symbols when the next 14
    symbols are all "not received"/"small delta", else 7 2-bit symbols. The last chunk may hold fewer
    symbols than its capacity; the unused positions are zero and the status count says where to stop.
    """
    chunks: list[int] = []
    count = len(segments)
    seg = 0  # cursor: segment index and offset inside it
    offset = 0
    while seg < count:
        symbol, length = segments[seg]
        run = length - offset
        # The next (up to) 14 symbols.
        window: list[int] = []
        peek = seg
        peek_offset = offset
        while len(window) < 14 and peek < count:
            peek_symbol, peek_length = segments[peek]
            take = min(peek_length - peek_offset, 14 - len(window))
            window.extend([peek_symbol] * take)
            peek += 1
            peek_offset = 0
        capacity = 14 if SYMBOL_LARGE_DELTA not in window else 7
        if run >= min(capacity, len(window)):
            take = min(run, _MAX_RUN_LENGTH)
            chunks.append((symbol << 13) | take)  # §3.1.3: T=0, S (2 bits), run length (13 bits)
        else:
            take = min(capacity, len(window))
            if capacity == 14:
                chunk = 0x8000  # §3.1.4: T=1, S=0, 14 1-bit symbols, first symbol in the highest bit
                for position in range(take):
                    chunk |= window[position] << (13 - position)
            else:
                chunk = 0xC000  # §3.1.4: T=1, S=1, 7 2-bit symbols
                for position in range(take):
                    chunk |= window[position] << (12 - 2 * position)
            chunks.append(chunk)
        # Advance the cursor by `take` symbols.
        while take:
            left = segments[seg][1] - offset
            if take < left:
                offset += take
                take = 0
            else:
                take -= left
                seg += 1
                offset = 0
    return chunks


# ---------------------------------------------------------------------------------------------------------
# Send side


def parse_feedback(fci: bytes) -> TwccFeedback:
    """Decode a transport-wide feedback FCI (§3.1: everything after the two SSRCs, padding removed).

    Raises ValueError, and nothing else, for malformed input: shorter than the 8-byte FCI header, a status
    count of 0, packet chunks or receive deltas cut short, or a reserved symbol (§3.1.1) among the
    counted statuses. Bytes after the last receive delta are ignored (zero padding, §3.1).
    """
    if type(fci) is not bytes:
        fci = bytes(fci)
    size = len(fci)
    if size < 8:
        raise ValueError(f"transport-cc FCI of {size} bytes is shorter than its 8-byte header")
    base_seq, status_count, word = _FCI_HEADER.unpack_from(fci, 0)
    if status_count == 0:
        raise ValueError("transport-cc feedback with a packet status count of 0")
    reference = word >> 8
    if reference & 0x800000:  # §3.1: 24-bit signed
        reference -= 0x1000000

    # §3.1.2-3.1.4: chunks until status_count symbols are known.
    symbols = bytearray()
    pos = 8
    while len(symbols) < status_count:
        if pos + 2 > size:
            raise ValueError(
                f"transport-cc packet chunks end after {len(symbols)} of {status_count} statuses"
            )
        chunk = (fci[pos] << 8) | fci[pos + 1]
        pos += 2
        left = status_count - len(symbols)
        if not chunk & 0x8000:  # §3.1.3 run length chunk
            symbol = (chunk >> 13) & 3
            run = min(chunk & _MAX_RUN_LENGTH, left)
            if symbol == SYMBOL_RESERVED and run:
                raise ValueError("transport-cc run length chunk with the reserved symbol 11")
            symbols += bytes((symbol,)) * run
        elif chunk & 0x4000:  # §3.1.4 status vector, 7 2-bit symbols
            for position in range(min(7, left)):
                symbol = (chunk >> (12 - 2 * position)) & 3
                if symbol == SYMBOL_RESERVED:
                    raise ValueError("transport-cc status vector with the reserved symbol 11")
                symbols.append(symbol)
        else:  # §3.1.4 status vector, 14 1-bit symbols: 0 not received, 1 received with a small delta
            for position in range(min(14, left)):
                symbols.append((chunk >> (13 - position)) & 1)

    # §3.1.5: one receive delta per received packet, in 250 µs units, cumulative from the reference time.
    packets: list[tuple[int, int | None]] = []
    append = packets.append
    ticks = 0
    seq = base_seq
    for symbol in symbols:
        if symbol == SYMBOL_NOT_RECEIVED:
            append((seq, None))
        elif symbol == SYMBOL_SMALL_DELTA:
            if pos >= size:
                raise ValueError(f"transport-cc receive deltas end before sequence number {seq}")
            ticks += fci[pos]
            pos += 1
            append((seq, ticks * DELTA_UNIT_US))
        else:
            if pos + 2 > size:
                raise ValueError(f"transport-cc receive deltas end before sequence number {seq}")
            ticks += _I16.unpack_from(fci, pos)[0]
            pos += 2
            append((seq, ticks * DELTA_UNIT_US))
        seq = (seq + 1) & 0xFFFF
    return TwccFeedback(base_seq, reference * REFERENCE_TIME_UNIT_US, word & 0xFF, packets)
