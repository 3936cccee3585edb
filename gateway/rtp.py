"""RTP header parsing and building (RFC 3550 §5.1, header extensions RFC 8285).

The forwarding path parses each incoming packet once, then builds one outgoing header per egress profile
and patches sequence number, timestamp and SSRC per viewer in place. Nothing here decodes media.
"""

from __future__ import annotations

import struct

FIXED_HEADER = struct.Struct("!BBHII")
FIRST_WORD_SEQ_TS_SSRC = struct.Struct("!HHII")  # the 12-byte fixed header as (V/P/X/CC/M/PT, seq, ts, ssrc)
EXTENSION_HEADER = struct.Struct("!HH")

ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 §4.2
TWO_BYTE_PROFILE = 0x1000  # RFC 8285 §4.3 (low 4 bits are "appbits")


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


class RtpPacket:
    """One parsed RTP packet. `extensions` maps the sender's extension ids to their bytes."""

    __slots__ = (
        "data",
        "marker",
        "payload_type",
        "sequence_number",
        "timestamp",
        "ssrc",
        "extensions",
        "payload_offset",
        "payload_end",
    )

    def __init__(
        self,
        data: bytes,
        marker: bool,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        extensions: dict[int, bytes],
        payload_offset: int,
        payload_end: int,
    ) -> None:
        self.data = data
        self.marker = marker
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.extensions = extensions
        self.payload_offset = payload_offset
        self.payload_end = payload_end

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_offset : self.payload_end]

    @property
    def payload_size(self) -> int:
        return self.payload_end - self.payload_offset


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse a decrypted RTP packet; raise RtpError on anything malformed."""
    size = len(data)
    if size < 12:
        raise RtpError("RTP packet shorter than its 12-byte fixed header")
    b0, b1, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError("RTP version is not 2")
    offset = 12 + 4 * (b0 & 0x0F)
    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        if offset + 4 > size:
            raise RtpError("RTP header extension truncated")
        profile, words = EXTENSION_HEADER.unpack_from(data, offset)
        start = offset + 4
        end = start + 4 * words
        if end > size:
            raise RtpError("RTP header extension longer than the packet")
        if profile == ONE_BYTE_PROFILE:
            _parse_one_byte(data, start, end, extensions)
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            _parse_two_byte(data, start, end, extensions)
        offset = end
    payload_end = size
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or offset + padding > size:
            raise RtpError("RTP padding length is invalid")
        payload_end = size - padding
    if offset > payload_end:
        raise RtpError("RTP header longer than the packet")
    return RtpPacket(data, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, extensions, offset, payload_end)


def _parse_one_byte(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos < end:
        byte = data[pos]
        if byte == 0:  # padding between elements
            pos += 1
            continue
        ext_id = byte >> 4
        if ext_id == 15:  # RFC 8285 §4.2: stop processing
            return
        length = (byte & 0x0F) + 1
        pos += 1
        if pos + length > end:
            raise RtpError("RTP one-byte header extension element truncated")
        out[ext_id] = data[pos : pos + length]
        pos += length


def _parse_two_byte(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos < end:
        ext_id = data[pos]
        if ext_id == 0:
            pos += 1
            continue
        if pos + 2 > end:
            raise RtpError("RTP two-byte header extension element truncated")
        length = data[pos + 1]
        pos += 2
        if pos + length > end:
            raise RtpError("RTP two-byte header extension element truncated")
        out[ext_id] = data[pos : pos + length]
        pos += length


def build_header(
    marker: bool,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    extensions: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
) -> bytearray:
    """An RTP header (no CSRCs) with the given extensions, one-byte form when every element fits it."""
    header = bytearray(FIXED_HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, sequence_number, timestamp, ssrc))
    if not extensions:
        return header
    one_byte = all(0 < i < 15 and 0 < len(v) <= 16 for i, v in extensions)
    body = bytearray()
    if one_byte:
        for ext_id, value in extensions:
            body.append((ext_id << 4) | (len(value) - 1))
            body += value
        profile = ONE_BYTE_PROFILE
    else:
        for ext_id, value in extensions:
            body.append(ext_id)
            body.append(len(value))
            body += value
        profile = TWO_BYTE_PROFILE
    body += bytes(-len(body) % 4)
    header[0] |= 0x10
    header += EXTENSION_HEADER.pack(profile, len(body) // 4)
    header += body
    return header


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number a comes after b (RFC 3550 §A.1 wrap-around)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: RTCP packet types 192-223 share the second byte's range with RTP payload types."""
    return len(data) >= 2 and 192 <= data[1] <= 223
