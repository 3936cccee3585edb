"""Picture size from a keyframe's first packet, without decoding: how simulcast layers are ordered.

Layers are ordered by what they carry, never by rid name (OBS calls its full-resolution layer "0", browsers
often call theirs "f"). VP8 states the size in its keyframe header; H.264 in its SPS. Other codecs return
None and layers fall back to ordering by measured bitrate.
"""

from __future__ import annotations

from typing import Optional, Union

Payload = Union[bytes, bytearray, memoryview]
Size = tuple[int, int]


def keyframe_size(codec: str, payload: Payload) -> Optional[Size]:
    try:
        if codec == "vp8":
            return _vp8_size(payload)
        if codec == "h264":
            return _h264_size(payload)
    except (IndexError, ValueError):
        return None
    return None


def _vp8_descriptor_length(p: Payload) -> int:
    """RFC 7741 §4.2 payload descriptor length."""
    n = 1
    if p[0] & 0x80:  # X
        x = p[1]
        n = 2
        if x & 0x80:  # I
            n += 2 if p[n] & 0x80 else 1
        if x & 0x40:  # L
            n += 1
        if x & 0x30:  # T or K
            n += 1
    return n


def _vp8_size(p: Payload) -> Optional[Size]:
    """RFC 6386 §9.1: a keyframe's 3-byte tag, start code 9d 01 2a, then 14-bit width and height."""
    h = _vp8_descriptor_length(p)
    if p[h] & 0x01 or p[h + 3 : h + 6] != b"\x9d\x01\x2a":
        return None
    width = (p[h + 6] | (p[h + 7] << 8)) & 0x3FFF
    height = (p[h + 8] | (p[h + 9] << 8)) & 0x3FFF
    return (width, height) if width and height else None


def _h264_size(p: Payload) -> Optional[Size]:
    """Find an SPS (RFC 6184 §5.6 single NAL or §5.7.1 STAP-A) and read its size (H.264 §7.3.2.1.1)."""
    nal_type = p[0] & 0x1F
    if nal_type == 7:
        return sps_size(bytes(p[1:]))
    if nal_type == 24:
        pos = 1
        while pos + 2 < len(p):
            size = (p[pos] << 8) | p[pos + 1]
            pos += 2
            if size and p[pos] & 0x1F == 7:
                return sps_size(bytes(p[pos + 1 : pos + size]))
            pos += size
    return None


class _Bits:
    def __init__(self, data: bytes) -> None:
        # Remove emulation prevention bytes (H.264 §7.4.1: 00 00 03 -> 00 00).
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def sps_size(rbsp: bytes) -> Optional[Size]:
    """Width and height of an SPS (the bytes after its NAL header), cropping applied."""
    b = _Bits(rbsp)
    profile_idc = b.u(8)
    b.u(16)  # constraint flags, level_idc
    b.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = b.ue()
        if chroma_format_idc == 3:
            b.u(1)  # separate_colour_plane_flag
        b.ue()  # bit_depth_luma_minus8
        b.ue()  # bit_depth_chroma_minus8
        b.u(1)  # qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if b.u(1):
                    last, next_ = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if next_:
                            next_ = (last + b.se() + 256) % 256
                        last = next_ or last
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()  # max_num_ref_frames
    b.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = b.ue() + 1
    height_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if b.u(1):
        crop_left, crop_right, crop_top, crop_bottom = b.ue(), b.ue(), b.ue(), b.ue()
    sub_width = 2 if chroma_format_idc in (1, 2) else 1
    sub_height = 2 if chroma_format_idc == 1 else 1
    width = width_mbs * 16 - sub_width * (crop_left + crop_right)
    height = (2 - frame_mbs_only) * height_units * 16 - sub_height * (2 - frame_mbs_only) * (crop_top + crop_bottom)
    return (width, height) if width > 0 and height > 0 else None
