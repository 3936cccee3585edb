"""What one viewer's RTP headers look like: payload types, extension ids and its mid value.

Viewers negotiate their own payload types and extension ids (RFC 8285 §5: the answer reuses the offer's ids),
so a publisher's packet is re-headed once per distinct EgressProfile and per incoming packet; each viewer then
only patches sequence number, timestamp and SSRC into its copy (see DownTrack.forward).
"""

from __future__ import annotations

from gateway.rtp import RtpPacket, build_header


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

    def build(self, packet: RtpPacket) -> bytearray:
        """Header + payload for this profile, with sequence number, timestamp and SSRC left zero."""
        data = build_header(packet.marker, self.payload_type, 0, 0, 0, self.extensions(packet))
        data += packet.data[packet.payload_offset : packet.payload_end]
        return data
