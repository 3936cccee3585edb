"""RTCP parsing and building: RFC 3550 §6 reports, RFC 4585 / RFC 5104 feedback, REMB.

`parse_compound` turns one decrypted (compound) RTCP packet into a list of dataclasses; the `build_*`
functions return the wire bytes of one packet each, and a compound packet is their concatenation.
Nothing here touches sockets or SRTP. Parsing runs per packet, so it reads fields straight out of the
buffer with precompiled `struct.Struct`s and never copies more than the values it returns.

Reduced-size RTCP (RFC 5506) is allowed: a compound packet need not begin with an SR or RR.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

from gateway import metrics

__all__ = [
    "RtcpError",
    "ReportBlock",
    "SenderReport",
    "ReceiverReport",
    "SourceDescription",
    "Bye",
    "GenericNack",
    "PictureLossIndication",
    "FullIntraRequest",
    "Remb",
    "TransportCcFeedback",
    "UnknownRtcp",
    "RtcpPacket",
    "parse_compound",
    "build_sender_report",
    "build_receiver_report",
    "build_sdes_cname",
    "build_bye",
    "build_generic_nack",
    "build_pli",
    "build_fir",
    "build_remb",
    "ntp_now",
    "ntp_middle32",
    "PT_SR",
    "PT_RR",
    "PT_SDES",
    "PT_BYE",
    "PT_APP",
    "PT_RTPFB",
    "PT_PSFB",
    "PT_XR",
]

# Packet types: RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2.
PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
PT_XR = 207

# Feedback message types (the FMT field, RFC 4585 §6.1).
FMT_GENERIC_NACK = 1  # RTPFB, RFC 4585 §6.2.1
FMT_TRANSPORT_CC = 15  # RTPFB, draft-holmer-rmcat-transport-wide-cc-extensions §3.1
FMT_PLI = 1  # PSFB, RFC 4585 §6.3.1
FMT_FIR = 4  # PSFB, RFC 5104 §4.3.1
FMT_AFB = 15  # PSFB application layer feedback, RFC 4585 §6.4; REMB lives here

SDES_CNAME = 1  # RFC 3550 §6.5.1
SDES_END = 0  # the null item that ends a chunk, RFC 3550 §6.5

RTCP_VERSION = 2
MAX_COUNT = 31  # the 5-bit RC/SC field, RFC 3550 §6.4.1
REMB_IDENTIFIER = b"REMB"
REMB_MANTISSA_BITS = 18  # draft-alvestrand-rmcat-remb-03 §2.2
REMB_MAX_EXPONENT = 63
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_LOST_MIN = -(1 << 23)  # cumulative packets lost is a signed 24-bit field, RFC 3550 §6.4.1
_LOST_MAX = (1 << 23) - 1

_HEADER = struct.Struct("!BBH")  # V/P/count, packet type, length in 32-bit words minus one
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_TWO_U16 = struct.Struct("!HH")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC + RFC 3550 §6.4.1 sender info
_REPORT_BLOCK = struct.Struct("!IIIIII")  # RFC 3550 §6.4.1 report block
_FIR_ENTRY = struct.Struct("!IB3x")  # RFC 5104 §4.3.1.1: SSRC, Seq nr, reserved
_REMB_FIELDS = struct.Struct("!4sBBH")  # 'REMB', Num SSRC, BR Exp|Mantissa high bits, mantissa low
_SSRC_LISTS = [struct.Struct(f"!{n}I") for n in range(256)]  # BYE (≤31) and REMB (≤255) SSRC lists


class RtcpError(ValueError):
    """A datagram that is not a well-formed (compound) RTCP packet."""


@dataclass(slots=True)
class ReportBlock:
    """One reception report block, RFC 3550 §6.4.1. `packets_lost` is signed (duplicates can make it negative)."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass(slots=True)
class SenderReport:
    """SR, RFC 3550 §6.4.1. `ntp_timestamp` is the full 64-bit NTP timestamp."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    """RR, RFC 3550 §6.4.2."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class SourceDescription:
    """SDES, RFC 3550 §6.5: one (ssrc, {item type: value}) tuple per chunk."""

    chunks: list[tuple[int, dict[int, bytes]]]


@dataclass(slots=True)
class Bye:
    """BYE, RFC 3550 §6.6. `reason` is None when the packet carries no reason for leaving."""

    ssrcs: list[int]
    reason: bytes | None = None


@dataclass(slots=True)
class GenericNack:
    """Generic NACK, RFC 4585 §6.2.1, with every PID+BLP item expanded to the lost sequence numbers."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int]


@dataclass(slots=True)
class PictureLossIndication:
    """PLI, RFC 4585 §6.3.1."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True)
class FullIntraRequest:
    """FIR, RFC 5104 §4.3.1: one (media ssrc, command sequence number) per FCI entry."""

    sender_ssrc: int
    entries: list[tuple[int, int]]


@dataclass(slots=True)
class Remb:
    """Receiver Estimated Max Bitrate, draft-alvestrand-rmcat-remb-03 §2.2. `bitrate` in bits per second."""

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int]


@dataclass(slots=True)
class TransportCcFeedback:
    """Transport-wide congestion control feedback (RTPFB FMT 15); `raw` is the unparsed FCI."""

    sender_ssrc: int
    media_ssrc: int
    raw: bytes


@dataclass(slots=True)
class UnknownRtcp:
    """Any other packet (APP, XR, unhandled FMT). `raw` is the whole packet, header and padding included,
    exactly as received, so it can be forwarded or parsed later. `fmt` is the 5-bit count/FMT field."""

    packet_type: int
    fmt: int
    raw: bytes


RtcpPacket = Union[
    SenderReport,
    ReceiverReport,
    SourceDescription,
    Bye,
    GenericNack,
    PictureLossIndication,
    FullIntraRequest,
    Remb,
    TransportCcFeedback,
    UnknownRtcp,
]


# ---------------------------------------------------------------------------------------------------------
# Parsing. Each body parser gets the buffer, the body's [pos, stop) range (after the 4-byte header, before any
# padding) and the header's count/FMT field. It returns a packet, or None for "not a message we model", which
# the caller wraps in UnknownRtcp.


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse every packet of a decrypted compound RTCP packet (RFC 3550 §6.1).

    Raises RtcpError, and nothing else, for any malformed input: empty, truncated header, version other
    than 2, a length field that runs past the end, a bad padding count, or a body too short for its type.
    """
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end == 0:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < end:
        if end - offset < 4:
            raise RtcpError(f"truncated RTCP header at offset {offset}: {end - offset} bytes left, need 4")
        first, packet_type, length_words = _HEADER.unpack_from(data, offset)
        if first >> 6 != RTCP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6} at offset {offset}, expected 2")
        # RFC 3550 §6.4.1: length is in 32-bit words minus one, header and padding included.
        packet_end = offset + (length_words + 1) * 4
        if packet_end > end:
            raise RtcpError(
                f"RTCP packet at offset {offset} claims {(length_words + 1) * 4} bytes, only {end - offset} left"
            )
        body_end = packet_end
        if first & 0x20:
            # RFC 3550 §6.4.1: the last padding octet counts the padding octets, itself included. The rule
            # that only the last packet of a compound may be padded is not enforced: lengths stay unambiguous.
            padding = data[packet_end - 1]
            if padding == 0 or padding > packet_end - offset - 4:
                raise RtcpError(f"RTCP padding count {padding} invalid at offset {offset}")
            body_end -= padding
        count = first & 0x1F
        parser = _BODY_PARSERS.get(packet_type)
        packet = parser(data, offset + 4, body_end, count) if parser is not None else None
        if packet is None:
            packet = UnknownRtcp(packet_type, count, data[offset:packet_end])
        packets.append(packet)
        offset = packet_end
    return packets


def lone_transport_cc_fci(data: bytes) -> bytes | None:
    """The FCI when `data` is one transport-wide feedback packet (RTPFB FMT 15, RFC 4585 §6.1) and nothing else;
    else None. What browsers send most (reduced-size RTCP, RFC 5506: ~16 a second per viewer; libwebrtc pads it to
    a word with the padding bit, RFC 3550 §6.4.1), so the receive path takes it without parse_compound's objects.
    Takes exactly the datagrams parse_compound reads as one TransportCcFeedback, with the same FCI
    (tests/test_rtcp.py compares the two)."""
    size = len(data)
    if size < 12 or data[1] != PT_RTPFB or ((data[2] << 8 | data[3]) + 1) * 4 != size:
        return None
    first = data[0]
    if first == 0x8F:  # V=2, no padding, FMT 15
        return data[12:]
    if first == 0xAF:  # V=2, padded, FMT 15
        padding = data[size - 1]
        if 0 < padding <= size - 4 and size - padding >= 12:
            return data[12 : size - padding]
    return None


def parse_or_count(data: bytes) -> list[RtcpPacket]:
    """parse_compound for the receive path: a malformed compound is dropped and counted, never raised."""
    try:
        return parse_compound(data)
    except RtcpError:
        metrics.count_drop("rtcp_malformed")
        return []


def _parse_report_blocks(data: bytes, pos: int, count: int) -> list[ReportBlock]:
    blocks = []
    unpack_from = _REPORT_BLOCK.unpack_from
    for _ in range(count):
        ssrc, loss, highest, jitter, lsr, dlsr = unpack_from(data, pos)
        lost = loss & 0xFFFFFF
        if lost & 0x800000:  # sign-extend the 24-bit cumulative number of packets lost
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, loss >> 24, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return blocks


def _parse_sr(data: bytes, pos: int, stop: int, count: int) -> SenderReport:
    # RFC 3550 §6.4.1: SSRC + 20 bytes of sender info + RC report blocks; anything after is a
    # profile-specific extension, which is ignored.
    need = 24 + 24 * count
    if stop - pos < need:
        raise RtcpError(f"SR with {count} report blocks needs {need} body bytes, has {stop - pos}")
    ssrc, ntp, rtp_ts, packet_count, octet_count = _SENDER_INFO.unpack_from(data, pos)
    return SenderReport(
        ssrc, ntp, rtp_ts, packet_count, octet_count, _parse_report_blocks(data, pos + 24, count)
    )


def _parse_rr(data: bytes, pos: int, stop: int, count: int) -> ReceiverReport:
    # RFC 3550 §6.4.2: SSRC + RC report blocks (+ ignored profile-specific extension).
    need = 4 + 24 * count
    if stop - pos < need:
        raise RtcpError(f"RR with {count} report blocks needs {need} body bytes, has {stop - pos}")
    return ReceiverReport(_U32.unpack_from(data, pos)[0], _parse_report_blocks(data, pos + 4, count))


def _parse_sdes(data: bytes, pos: int, stop: int, count: int) -> SourceDescription:
    # RFC 3550 §6.5: SC chunks, each an SSRC then items (type, length, text) ended by one or more null
    # octets up to the next 32-bit boundary.
    chunks = []
    for _ in range(count):
        if stop - pos < 4:
            raise RtcpError("SDES chunk truncated before its SSRC")
        ssrc = _U32.unpack_from(data, pos)[0]
        pos += 4
        items: dict[int, bytes] = {}
        while True:
            if pos >= stop:
                raise RtcpError(f"SDES chunk for SSRC {ssrc:#010x} is not terminated by a null item")
            item_type = data[pos]
            if item_type == SDES_END:
                # Compound packets start 32-bit aligned, so absolute alignment is chunk alignment.
                pos = (pos + 4) & ~3
                break
            if pos + 2 > stop:
                raise RtcpError("SDES item truncated before its length")
            value_end = pos + 2 + data[pos + 1]
            if value_end > stop:
                raise RtcpError(f"SDES item type {item_type} runs past the end of the packet")
            items[item_type] = data[pos + 2 : value_end]
            pos = value_end
        chunks.append((ssrc, items))
    return SourceDescription(chunks)


def _parse_bye(data: bytes, pos: int, stop: int, count: int) -> Bye:
    # RFC 3550 §6.6: SC SSRC/CSRCs, then an optional length-prefixed reason.
    need = 4 * count
    if stop - pos < need:
        raise RtcpError(f"BYE with {count} sources needs {need} body bytes, has {stop - pos}")
    ssrcs = list(_SSRC_LISTS[count].unpack_from(data, pos))
    pos += need
    reason = None
    if pos < stop:
        reason_end = pos + 1 + data[pos]
        if reason_end > stop:
            raise RtcpError("BYE reason runs past the end of the packet")
        reason = data[pos + 1 : reason_end]
    return Bye(ssrcs, reason)


def _parse_rtpfb(data: bytes, pos: int, stop: int, fmt: int) -> RtcpPacket | None:
    # RFC 4585 §6.1: sender SSRC, media source SSRC, FCI.
    if stop - pos < 8:
        raise RtcpError(f"RTPFB needs 8 body bytes, has {stop - pos}")
    sender_ssrc, media_ssrc = _TWO_U32.unpack_from(data, pos)
    fci = pos + 8
    if fmt == FMT_GENERIC_NACK:
        # RFC 4585 §6.2.1: one or more 32-bit PID+BLP items. Bit i of BLP reports PID + i + 1 lost.
        if fci == stop or (stop - fci) & 3:
            raise RtcpError(f"generic NACK FCI of {stop - fci} bytes is not one or more 4-byte items")
        lost = []
        unpack_from = _TWO_U16.unpack_from
        for item in range(fci, stop, 4):
            pid, blp = unpack_from(data, item)
            lost.append(pid)
            while blp:
                lowest = blp & -blp
                lost.append((pid + lowest.bit_length()) & 0xFFFF)
                blp ^= lowest
        return GenericNack(sender_ssrc, media_ssrc, lost)
    if fmt == FMT_TRANSPORT_CC:
        return TransportCcFeedback(sender_ssrc, media_ssrc, data[fci:stop])
    return None


def _parse_psfb(data: bytes, pos: int, stop: int, fmt: int) -> RtcpPacket | None:
    # RFC 4585 §6.1: sender SSRC, media source SSRC, FCI.
    if stop - pos < 8:
        raise RtcpError(f"PSFB needs 8 body bytes, has {stop - pos}")
    sender_ssrc, media_ssrc = _TWO_U32.unpack_from(data, pos)
    fci = pos + 8
    if fmt == FMT_PLI:
        return PictureLossIndication(sender_ssrc, media_ssrc)  # RFC 4585 §6.3.1: no FCI
    if fmt == FMT_FIR:
        # RFC 5104 §4.3.1.1: one or more 8-byte entries; the header's media SSRC is unused (zero).
        if fci == stop or (stop - fci) & 7:
            raise RtcpError(f"FIR FCI of {stop - fci} bytes is not one or more 8-byte entries")
        unpack_from = _FIR_ENTRY.unpack_from
        return FullIntraRequest(sender_ssrc, [unpack_from(data, entry) for entry in range(fci, stop, 8)])
    if fmt == FMT_AFB and data.startswith(REMB_IDENTIFIER, fci, stop):
        # draft-alvestrand-rmcat-remb-03 §2.2: 'REMB', Num SSRC, BR Exp (6 bits), BR Mantissa (18 bits),
        # then Num SSRC SSRCs.
        if stop - fci < 8:
            raise RtcpError("REMB truncated before its bitrate")
        _, num_ssrc, exp_mantissa, mantissa_low = _REMB_FIELDS.unpack_from(data, fci)
        if stop - fci < 8 + 4 * num_ssrc:
            raise RtcpError(f"REMB lists {num_ssrc} SSRCs but has room for {(stop - fci - 8) // 4}")
        mantissa = ((exp_mantissa & 0x03) << 16) | mantissa_low
        ssrcs = list(_SSRC_LISTS[num_ssrc].unpack_from(data, fci + 8))
        return Remb(sender_ssrc, mantissa << (exp_mantissa >> 2), ssrcs)
    return None


_BODY_PARSERS = {
    PT_SR: _parse_sr,
    PT_RR: _parse_rr,
    PT_SDES: _parse_sdes,
    PT_BYE: _parse_bye,
    PT_RTPFB: _parse_rtpfb,
    PT_PSFB: _parse_psfb,
}


# ---------------------------------------------------------------------------------------------------------
# Building. Bodies are always a multiple of 4 bytes, so no builder ever sets the padding bit.


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    # RFC 3550 §6.4.1: length = packet size in 32-bit words minus one = body words (header is one word).
    return _HEADER.pack(0x80 | count, packet_type, len(body) >> 2) + body


def _pack_report_block(block: ReportBlock) -> bytes:
    lost = min(max(block.packets_lost, _LOST_MIN), _LOST_MAX) & 0xFFFFFF
    return _REPORT_BLOCK.pack(
        block.ssrc,
        ((block.fraction_lost & 0xFF) << 24) | lost,
        block.highest_sequence & _MASK32,
        block.jitter & _MASK32,
        block.lsr & _MASK32,
        block.dlsr & _MASK32,
    )


def build_sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Iterable[ReportBlock] = (),
) -> bytes:
    """SR (RFC 3550 §6.4.1). More than 31 report blocks spill into RR packets after it (§6.4.2).

    Timestamps and counters are reduced modulo their field width (the counters wrap by definition).
    """
    blocks = list(reports)
    body = _SENDER_INFO.pack(
        ssrc, ntp_timestamp & _MASK64, rtp_timestamp & _MASK32, packet_count & _MASK32, octet_count & _MASK32
    ) + b"".join(map(_pack_report_block, blocks[:MAX_COUNT]))
    packet = _packet(PT_SR, min(len(blocks), MAX_COUNT), body)
    if len(blocks) > MAX_COUNT:
        packet += build_receiver_report(ssrc, blocks[MAX_COUNT:])
    return packet


def build_receiver_report(ssrc: int, reports: Iterable[ReportBlock] = ()) -> bytes:
    """RR (RFC 3550 §6.4.2); an empty one when there is nothing to report, and one RR per 31 blocks."""
    blocks = list(reports)
    ssrc_bytes = _U32.pack(ssrc)
    packets = []
    for start in range(0, max(len(blocks), 1), MAX_COUNT):
        chunk = blocks[start : start + MAX_COUNT]
        packets.append(_packet(PT_RR, len(chunk), ssrc_bytes + b"".join(map(_pack_report_block, chunk))))
    return b"".join(packets)


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """SDES with one chunk holding a CNAME item (RFC 3550 §6.5.1)."""
    text = cname.encode("utf-8")
    if len(text) > 255:
        raise ValueError(f"CNAME is {len(text)} bytes in UTF-8, at most 255 fit")
    # The chunk ends with 1 to 4 null octets up to the next 32-bit boundary (§6.5).
    item_size = 2 + len(text)
    body = _U32.pack(ssrc) + bytes((SDES_CNAME, len(text))) + text + bytes(4 - (item_size & 3))
    return _packet(PT_SDES, 1, body)


def build_bye(ssrcs: Iterable[int], reason: bytes | str | None = None) -> bytes:
    """BYE (RFC 3550 §6.6) for up to 31 sources, with an optional reason for leaving."""
    sources = list(ssrcs)
    if len(sources) > MAX_COUNT:
        raise ValueError(f"a BYE carries at most {MAX_COUNT} sources, got {len(sources)}")
    body = _SSRC_LISTS[len(sources)].pack(*sources)
    if reason is not None:
        text = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason)
        if len(text) > 255:
            raise ValueError(f"BYE reason is {len(text)} bytes, at most 255 fit")
        body += bytes((len(text),)) + text + bytes(-(1 + len(text)) & 3)
    return _packet(PT_BYE, len(sources), body)


def _nack_items(lost: Iterable[int]) -> list[tuple[int, int]]:
    """Pack sequence numbers into the fewest PID+BLP items (RFC 4585 §6.2.1).

    Each item covers PID and the 16 numbers after it. Numbers are taken modulo 2^16 and ordered as a circle
    starting right after its widest gap, so a run across 65535 -> 0 stays together. Greedy covering from
    that start is optimal whenever the widest gap exceeds 16 (always the case for a realistic loss window).
    """
    seqs = sorted({seq & 0xFFFF for seq in lost})
    if not seqs:
        raise ValueError("a generic NACK needs at least one lost sequence number")
    if len(seqs) > 1:
        widest = seqs[0] + 0x10000 - seqs[-1]  # the gap that wraps from the largest back to the smallest
        start = 0
        previous = seqs[0]
        for index in range(1, len(seqs)):
            current = seqs[index]
            if current - previous > widest:
                widest = current - previous
                start = index
            previous = current
        if start:
            seqs = seqs[start:] + seqs[:start]
    items = []
    pid = seqs[0]
    blp = 0
    for seq in seqs[1:]:
        distance = (seq - pid - 1) & 0xFFFF
        if distance < 16:
            blp |= 1 << distance
        else:
            items.append((pid, blp))
            pid = seq
            blp = 0
    items.append((pid, blp))
    return items


def build_generic_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1) for the given sequence numbers, packed into as few items as possible."""
    pack = _TWO_U16.pack
    body = _TWO_U32.pack(sender_ssrc, media_ssrc) + b"".join(
        [pack(pid, blp) for pid, blp in _nack_items(lost)]
    )
    return _packet(PT_RTPFB, FMT_GENERIC_NACK, body)


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture Loss Indication (RFC 4585 §6.3.1)."""
    return _packet(PT_PSFB, FMT_PLI, _TWO_U32.pack(sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """Full Intra Request (RFC 5104 §4.3.1) asking `media_ssrc` for a decoder refresh point.

    The header's media source field SHALL be 0 (§4.3.1.2); the target goes in the FCI entry. `seq_nr` is
    the command sequence number, incremented by the caller for each new request (§4.3.1.1), modulo 256.
    """
    body = _TWO_U32.pack(sender_ssrc, 0) + _FIR_ENTRY.pack(media_ssrc, seq_nr & 0xFF)
    return _packet(PT_PSFB, FMT_FIR, body)


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Iterable[int]) -> bytes:
    """REMB (draft-alvestrand-rmcat-remb-03 §2.2): bitrate = mantissa * 2^exp, rounded down.

    The smallest exponent that fits the 18-bit mantissa is used, so the result is exact below 2^18 bps and
    within a relative 2^-17 above.
    """
    media = list(ssrcs)
    if len(media) > 255:
        raise ValueError(f"a REMB lists at most 255 SSRCs, got {len(media)}")
    bitrate = int(bitrate)
    exponent = max(bitrate.bit_length() - REMB_MANTISSA_BITS, 0)
    if bitrate < 0 or exponent > REMB_MAX_EXPONENT:
        raise ValueError(f"REMB bitrate {bitrate} out of range")
    mantissa = bitrate >> exponent
    body = (
        _TWO_U32.pack(sender_ssrc, 0)  # media source SSRC is always 0 (§2.2)
        + _REMB_FIELDS.pack(REMB_IDENTIFIER, len(media), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF)
        + _SSRC_LISTS[len(media)].pack(*media)
    )
    return _packet(PT_PSFB, FMT_AFB, body)


def ntp_now() -> int:
    """The current wall-clock time as a 64-bit NTP timestamp (RFC 3550 §4): 32.32 fixed-point seconds
    since 1900, wrapping at the era boundary in 2036."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return (((seconds + NTP_UNIX_OFFSET) & _MASK32) << 32) | ((nanoseconds << 32) // 1_000_000_000)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp, as used in an SR's LSR field (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & _MASK32
