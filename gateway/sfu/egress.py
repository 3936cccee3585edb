"""What one viewer's RTP headers look like: payload types, extension ids and its mid value.

Viewers negotiate their own payload types and extension ids (RFC 8285 §5: the answer reuses the offer's ids),
so a publisher's packet is re-headed once per distinct EgressProfile and per incoming packet, as a Template:
the fixed header's first 16 bits plus everything after the 12-byte fixed header. Each viewer then packs its own
sequence number, timestamp and SSRC in front of the shared tail: one allocation per viewer (see DownTrack.forward).
"""

from __future__ import annotations

from gateway.rtp import FIRST_WORD_SEQ_TS_SSRC, RtpPacket, build_header

Template = tuple[int, bytes]  # (first 16 bits of the header, bytes after the fixed header incl. payload)


def assemble(template: Template, seq: int, timestamp: int, ssrc: int) -> bytes:
    return FIRST_WORD_SEQ_TS_SSRC.pack(template[0], seq, timestamp, ssrc) + template[1]


class EgressProfile:
    __slots__ = ("payload_type", "rtx_payload_type", "mid_id", "mid_value", "extension_map", "key")

    def __init__(
        self,
        payload_type: int,
        rtx_payload_type: int | None,
        mid_id: int | None,
        mid_value: str,
        extension_map: tuple[tuple[int, int], ...],
    ) -> None:
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.mid_id = mid_id
        self.mid_value = mid_value.encode()
        self.extension_map = extension_map  # (publisher's id, viewer's id) for passed-through extensions
        self.key = (payload_type, rtx_payload_type, mid_id, mid_value, extension_map)

    def extensions(self, packet: RtpPacket) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self.mid_id is not None:
            out.append((self.mid_id, self.mid_value))
        source = packet.extensions
        for source_id, out_id in self.extension_map:
            value = source.get(source_id)
            if value is not None:
                out.append((out_id, value))
        return out

    def build(self, packet: RtpPacket) -> Template:
        """This profile's header and the payload, less sequence number, timestamp and SSRC."""
        header = build_header(packet.marker, self.payload_type, 0, 0, 0, self.extensions(packet))
        return (header[0] << 8) | header[1], bytes(header[12:]) + packet.data[packet.payload_offset : packet.payload_end]

    def as_rtx(self, template: Template, payload_size: int, original_seq: int) -> Template:
        """RFC 4588 §4: the RTX form of a template: RTX payload type, then the original sequence number and payload."""
        assert self.rtx_payload_type is not None
        first, tail = template
        split = len(tail) - payload_size
        first = (first & 0xFF80) | self.rtx_payload_type
        return first, tail[:split] + original_seq.to_bytes(2, "big") + tail[split:]
