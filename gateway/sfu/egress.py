"""What one viewer's RTP headers look like: payload types, extension ids, its mid value, its transport-wide seq.

Viewers negotiate their own payload types and extension ids (RFC 8285 §5: the answer reuses the offer's ids),
so a publisher's packet is re-headed once per distinct EgressProfile and per incoming packet, as a Template:
(the fixed header's first 16 bits, the extension bytes in front of the transport-wide sequence number slot,
everything after that slot: other extensions and the payload). A profile without transport-wide congestion
control has an empty middle part. Each viewer then packs its own sequence number, timestamp, SSRC (and
transport-wide sequence number) in front of the shared bytes: one pack and one concatenation per viewer.
"""

from __future__ import annotations

import struct

from gateway.rtp import FIRST_WORD_SEQ_TS_SSRC, RtpPacket, build_header

Template = tuple[int, bytes, bytes]

# What a viewer's pacer charges a packet beyond len(template[2]): RTP fixed header + transport-cc extension + SRTP
# tag + IP/UDP (gateway/sfu/down_track.py and the C lanes, gateway/_srtp_send.c, charge the same).
PACED_HEADER_BYTES = 16 + 8 + 10 + 28

_WITH_TRANSPORT_SEQ = {n: struct.Struct(f"!HHII{n}sH") for n in (5, 6)}  # one-byte / two-byte extension forms


def assemble(template: Template, seq: int, timestamp: int, ssrc: int, transport_seq: int = 0) -> bytes:
    head = template[1]
    if not head:
        return FIRST_WORD_SEQ_TS_SSRC.pack(template[0], seq, timestamp, ssrc) + template[2]
    return _WITH_TRANSPORT_SEQ[len(head)].pack(template[0], seq, timestamp, ssrc, head, transport_seq) + template[2]


def payload_size(template: Template) -> int:
    """The payload bytes of a template (RFC 3550 §6.4.1 counts payload octets): `rest` less the end of the header
    extension block, whose length (RFC 8285 §4.2) the middle part carries when transport-cc is negotiated."""
    head, rest = template[1], template[2]
    if not head:
        first = template[0]
        if not first & 0x1000:  # X bit clear: no extension block
            return len(rest)
        return len(rest) - 4 - 4 * int.from_bytes(rest[2:4], "big")
    return len(rest) - (4 + 4 * int.from_bytes(head[2:4], "big") - len(head) - 2)


class EgressProfile:
    __slots__ = ("payload_type", "rtx_payload_type", "mid_id", "mid_value", "extension_map", "transport_cc_id", "rid", "key")

    def __init__(
        self,
        payload_type: int,
        rtx_payload_type: int | None,
        mid_id: int | None,
        mid_value: str,
        extension_map: tuple[tuple[int, int], ...],
        transport_cc_id: int | None = None,
        rid: tuple[int, str] | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.mid_id = mid_id
        self.mid_value = mid_value.encode()
        self.extension_map = extension_map  # (publisher's id, viewer's id) for passed-through extensions
        self.transport_cc_id = transport_cc_id  # draft-holmer-rmcat-transport-wide-cc-extensions-01 §2
        # (extension id, rid): a relay egress sending every layer writes each layer's rtp-stream-id (RFC 8852 §3.1)
        self.rid = (rid[0], rid[1].encode()) if rid is not None else None
        self.key = (payload_type, rtx_payload_type, mid_id, mid_value, extension_map, transport_cc_id, rid)

    def extensions(self, packet: RtpPacket | None) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self.transport_cc_id is not None:
            out.append((self.transport_cc_id, b"\x00\x00"))  # first: its slot is patched per viewer
        if self.mid_id is not None:
            out.append((self.mid_id, self.mid_value))
        if self.rid is not None:
            out.append(self.rid)
        if packet is not None:
            source = packet.extensions
            for source_id, out_id in self.extension_map:
                value = source.get(source_id)
                if value is not None:
                    out.append((out_id, value))
        return out

    def _template(self, first_word: int, header: bytearray, payload: bytes) -> Template:
        if self.transport_cc_id is None:
            return first_word, b"", bytes(header[12:]) + payload
        head = 5 if header[12:14] == b"\xbe\xde" else 6  # one-byte form: id/len byte; two-byte: id, len
        return first_word, bytes(header[12 : 12 + head]), bytes(header[12 + head + 2 :]) + payload

    def build(self, packet: RtpPacket) -> Template:
        """This profile's header and the payload, less the per-viewer fields."""
        header = build_header(packet.marker, self.payload_type, 0, 0, 0, self.extensions(packet))
        payload = packet.data[packet.payload_offset : packet.payload_end]
        return self._template((header[0] << 8) | header[1], header, payload)

    def as_rtx(self, template: Template, payload_size: int, original_seq: int) -> Template:
        """RFC 4588 §4: the RTX form of a template: RTX payload type, then the original sequence number and payload."""
        assert self.rtx_payload_type is not None
        first, head, rest = template
        split = len(rest) - payload_size
        first = (first & 0xFF80) | self.rtx_payload_type
        return first, head, rest[:split] + original_seq.to_bytes(2, "big") + rest[split:]

    def padding(self, size: int) -> Template:
        """A padding-only RTX packet for bandwidth probing (RFC 3550 §5.1 P bit; RFC 4588 allows RTX padding)."""
        assert self.rtx_payload_type is not None
        size = max(1, min(size, 255))
        header = build_header(False, self.rtx_payload_type, 0, 0, 0, self.extensions(None))
        header[0] |= 0x20  # P: the payload is padding, its last byte the padding length
        return self._template((header[0] << 8) | header[1], header, bytes(size - 1) + bytes([size]))
