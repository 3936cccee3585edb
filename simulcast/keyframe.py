"""Keyframe detection on a single RTP payload, without decoding.

`is_keyframe_start(codec, payload)` answers "may a receiver start decoding here?" for the packet that opens
a keyframe; the SFU uses it to switch simulcast layers and to end a viewer's freeze after a PLI. It reads a
few header bits only, runs on every video packet, and returns False (never raises) for truncated or
malformed payloads. `payload` may be bytes, bytearray or a memoryview of bytes.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["is_keyframe_start", "codec_key"]

Payload = bytes | bytearray | memoryview

# H.264 NAL unit types, RFC 6184 §5.2 / ITU-T H.264 Table 7-1.
H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28
_H264_KEY_TYPES = (1 << H264_IDR) | (1 << H264_SPS)  # bit mask: (mask >> type) & 1


def _vp8(payload: Payload) -> bool:
    # RFC 7741 §4.2 payload descriptor, first octet: |X|R|N|S|R| PID |
    size = len(payload)
    if size == 0:
        return False
    first = payload[0]
    if first & 0x17 != 0x10:  # the frame starts here: S=1 and partition index PID=0
        return False
    pos = 1
    if first & 0x80:  # X: extension octet |I|L|T|K| RSV |
        if size < 2:
            return False
        extension = payload[1]
        pos = 2
        if extension & 0x80:  # I: PictureID, 15 bits when its first bit M is set, else 7
            if pos >= size:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            pos += 1
        if extension & 0x30:  # T or K: one shared |TID|Y| KEYIDX | octet
            pos += 1
    # RFC 7741 §4.3 payload header |Size0|H| VER |P|: P is the inverse key frame flag. A key frame's
    # 3-byte frame tag is followed by the start code 9d 01 2a (RFC 6386 §9.1), checked to reject garbage.
    if pos + 6 > size or payload[pos] & 0x01:
        return False
    return payload[pos + 3] == 0x9D and payload[pos + 4] == 0x01 and payload[pos + 5] == 0x2A


def _vp9(payload: Payload) -> bool:
    # RFC 9628 §4.2 payload descriptor, first octet: |I|P|L|F|B|E|V|Z|
    size = len(payload)
    if size < 2:
        return False
    first = payload[0]
    if first & 0x48 != 0x08:  # B=1 (start of a frame) and P=0 (not inter-picture predicted)
        return False
    pos = 1
    if first & 0x80:  # I: picture ID, 15 bits when M (its first bit) is set, else 7
        pos += 2 if payload[pos] & 0x80 else 1
    if first & 0x20:  # L: layer indices |TID|U| SID |D|
        if pos >= size:
            return False
        if payload[pos] & 0x0F:  # a keyframe starts on the base layer: SID=0, no inter-layer dependency (D=0)
            return False
        pos += 1 if first & 0x10 else 2  # non-flexible mode (F=0) adds TL0PICIDX
    # Flexible mode carries P_DIFF octets only when P=1, which was excluded above.
    if first & 0x02:  # V: scalability structure, RFC 9628 §4.2.1: |N_S|Y|G|-|-|-|
        if pos >= size:
            return False
        structure = payload[pos]
        pos += 1
        if structure & 0x10:  # Y: WIDTH and HEIGHT (2 bytes each) for each of N_S + 1 spatial layers
            pos += 4 * ((structure >> 5) + 1)
        if structure & 0x08:  # G: N_G, then N_G pictures |TID|U| R |-|-| each followed by R P_DIFF octets
            if pos >= size:
                return False
            pictures = payload[pos]
            pos += 1
            for _ in range(pictures):
                if pos >= size:
                    return False
                pos += 1 + ((payload[pos] >> 2) & 0x03)
    return pos < size  # the descriptor is complete and some VP9 frame data follows


def _h264(payload: Payload) -> bool:
    # RFC 6184 §5.3 NAL unit header: |F|NRI| Type |; F (forbidden_zero_bit) set means a syntax violation.
    size = len(payload)
    if size < 2:
        return False
    header = payload[0]
    if header & 0x80:
        return False
    nal_type = header & 0x1F
    if nal_type == H264_FU_A:
        # RFC 6184 §5.8: FU header |S|E|R| Type |. S marks the first fragment; S and E together are invalid.
        if size < 3:
            return False
        fu_header = payload[1]
        return fu_header & 0xC0 == 0x80 and (_H264_KEY_TYPES >> (fu_header & 0x1F)) & 1 == 1
    if nal_type == H264_STAP_A:
        # RFC 6184 §5.7.1: repeated (16-bit NALU size, NAL unit); any IDR or SPS inside makes it a start.
        pos = 1
        while pos + 2 < size:
            nalu_size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if nalu_size == 0 or pos + nalu_size > size:
                return False
            if (_H264_KEY_TYPES >> (payload[pos] & 0x1F)) & 1:
                return True
            pos += nalu_size
        return False
    # RFC 6184 §5.6: a single NAL unit packet carries the NAL unit itself.
    return (_H264_KEY_TYPES >> nal_type) & 1 == 1


def _av1(payload: Payload) -> bool:
    # AV1 RTP payload format §4.4 aggregation header: |Z|Y| W |N|-|-|-|. N=1 marks the first packet of a
    # coded video sequence (a keyframe); Z=1 would mean the packet starts mid-OBU.
    size = len(payload)
    if size < 2:
        return False
    header = payload[0]
    if header & 0x88 != 0x08:
        return False
    pos = 1
    if (header >> 4) & 0x03 != 1:
        # §4.3: unless W=1, the first OBU element is preceded by its LEB128 length (AV1 spec §4.10.5).
        length = 0
        for shift in range(0, 56, 7):
            if pos >= size:
                return False
            byte = payload[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            return False
        if length == 0 or pos + length > size:
            return False
    # AV1 spec §5.3.1: the OBU header's forbidden bit must be zero.
    return pos < size and not payload[pos] & 0x80


_DETECTORS: dict[str, Callable[[Payload], bool]] = {"vp8": _vp8, "vp9": _vp9, "h264": _h264, "av1": _av1}


def is_keyframe_start(codec: str, payload: Payload) -> bool:
    """True when this RTP payload begins a keyframe (or, for an H.264 STAP-A, contains an IDR or SPS).

    `codec` is "vp8", "vp9", "h264" or "av1", in any case (see `codec_key`); other codecs give False.
    """
    detector = _DETECTORS.get(codec)
    if detector is None:
        detector = _DETECTORS.get(codec.lower())
        if detector is None:
            return False
    return detector(payload)


_CODEC_ALIASES = {"av1x": "av1"}  # the name early Chrome builds used for AV1


def codec_key(mime_type: str) -> str:
    """The detector key for a codec MIME type: "video/VP8" -> "vp8", "video/H264" -> "h264", ...

    Anything else maps to its lowercased subtype (the whole string when there is no "/").
    """
    subtype = mime_type.rpartition("/")[2].strip().lower()
    return _CODEC_ALIASES.get(subtype, subtype)
