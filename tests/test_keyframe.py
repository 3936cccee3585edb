"""simulcast.keyframe on real encoder output (VP8, H.264) and on hand-built payloads (VP9, AV1).

VP8 and H.264 payloads come from aiortc's own encoders and packetizers (libvpx / libx264 through PyAV), so
they are what a real publisher sends. No VP9 or AV1 RTP packetizer is available here, so those payloads are
built byte by byte from the bit layouts in RFC 9628 §4.2 (VP9) and the AV1 RTP specification §4.4.
"""

from __future__ import annotations

import fractions
import random
import struct

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from simulcast.keyframe import codec_key, is_keyframe_start

from fuzzing import damage

KEYFRAMES = (0, 4)  # frame indexes encoded with force_keyframe=True
FRAME_COUNT = 7


def encode(mime_type: str, width: int, height: int, *, noisy: bool) -> list[tuple[bool, list[bytes]]]:
    """Encode a moving pattern over noise (large frames) or a smooth gradient (small frames); return
    (forced keyframe?, RTP payloads) per frame."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime_type, clockRate=90000, payloadType=96))
    if noisy:
        background = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        background = np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()
    frames = []
    for index in range(FRAME_COUNT):
        image = np.roll(background, index * 8, axis=1)
        image[height // 4 : height // 2, index * 8 : index * 8 + 16] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        forced = index in KEYFRAMES
        payloads, _ = encoder.encode(frame, force_keyframe=forced)
        assert payloads, f"{mime_type} produced no packets for frame {index}"
        frames.append((forced, payloads))
    return frames


@pytest.fixture(scope="module")
def vp8_frames() -> list[tuple[bool, list[bytes]]]:
    return encode("video/VP8", 640, 480, noisy=True)


@pytest.fixture(scope="module")
def h264_small_frames() -> list[tuple[bool, list[bytes]]]:
    return encode("video/H264", 160, 120, noisy=False)


@pytest.fixture(scope="module")
def h264_large_frames() -> list[tuple[bool, list[bytes]]]:
    return encode("video/H264", 1280, 720, noisy=True)


def assert_only_keyframe_starts(codec: str, frames: list[tuple[bool, list[bytes]]]) -> None:
    for index, (forced, payloads) in enumerate(frames):
        flags = [is_keyframe_start(codec, p) for p in payloads]
        if forced:
            assert flags[0], f"{codec} keyframe {index} not detected on its first packet"
        else:
            assert not any(flags), f"{codec} delta frame {index} detected as keyframe at packets {flags}"


# --- VP8 (real libvpx output) -----------------------------------------------------------------------------


def test_vp8_real_encoder(vp8_frames) -> None:
    assert_only_keyframe_starts("vp8", vp8_frames)
    for forced, payloads in vp8_frames:
        if forced:
            assert len(payloads) > 1  # noise at 640x480 spans several packets
            # Continuation packets (S=0) do not start a frame.
            assert not any(is_keyframe_start("vp8", p) for p in payloads[1:])


def test_vp8_memoryview_and_case(vp8_frames) -> None:
    first = vp8_frames[0][1][0]
    assert is_keyframe_start("VP8", memoryview(first))
    assert is_keyframe_start("Vp8", bytearray(first))


def test_vp8_descriptor_variants() -> None:
    """Hand-built RFC 7741 §4.2 descriptors around a key frame header (P=0 + start code, RFC 6386 §9.1)."""
    key = b"\x50\x02\x00\x9d\x01\x2a" + bytes(8)
    delta = b"\x51\x02\x00" + bytes(8)
    assert is_keyframe_start("vp8", b"\x10" + key)  # no extensions
    assert is_keyframe_start("vp8", b"\x90\x80\x05" + key)  # I with 7-bit PictureID
    assert is_keyframe_start("vp8", b"\x90\x80\x85\x01" + key)  # I with 15-bit PictureID
    assert is_keyframe_start("vp8", b"\x90\xf0\x85\x01\x07\x20" + key)  # I, L, T and K
    assert is_keyframe_start("vp8", b"\x90\x40\x07" + key)  # L only
    assert is_keyframe_start("vp8", b"\x90\x10\x20" + key)  # K only
    assert not is_keyframe_start("vp8", b"\x10" + delta)
    assert not is_keyframe_start("vp8", b"\x00" + key)  # S=0: continuation
    assert not is_keyframe_start("vp8", b"\x11" + key)  # PID=1: not the first partition
    assert not is_keyframe_start("vp8", b"\x90\x80\x85\x01" + b"\x50\x02\x00\x00\x00\x00")  # no start code
    full = b"\x90\xf0\x85\x01\x07\x20" + key
    for cut in range(len(full) - len(key) + 6):
        assert not is_keyframe_start("vp8", full[:cut]), cut


# --- H.264 (real libx264 output, both packetizations) -----------------------------------------------------


def nal_type(payload: bytes) -> int:
    return payload[0] & 0x1F


def stap_a_units(payload: bytes) -> list[bytes]:
    units, pos = [], 1
    while pos < len(payload):
        (size,) = struct.unpack_from("!H", payload, pos)
        units.append(payload[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return units


def test_h264_small_frames_stap_a(h264_small_frames) -> None:
    assert_only_keyframe_starts("h264", h264_small_frames)
    for forced, payloads in h264_small_frames:
        if forced:
            first = payloads[0]
            assert nal_type(first) == 24  # STAP-A: SPS, PPS (and the IDR when it fits)
            assert [nal_type(u) for u in stap_a_units(first)][:2] == [7, 8]


def test_h264_single_nal_unit_packets(h264_small_frames) -> None:
    """The encoder's own NAL units, each sent as an RFC 6184 §5.6 single NAL unit packet."""
    units = {}
    for forced, payloads in h264_small_frames:
        for payload in payloads:
            for unit in stap_a_units(payload) if nal_type(payload) == 24 else [payload]:
                units.setdefault(nal_type(unit), unit)
    assert {1, 5, 7, 8} <= set(units), sorted(units)
    assert is_keyframe_start("h264", units[7])  # SPS
    assert is_keyframe_start("h264", units[5])  # IDR slice
    assert not is_keyframe_start("h264", units[8])  # PPS alone
    assert not is_keyframe_start("h264", units[1])  # non-IDR slice
    # A STAP-A holding only the non-IDR units stays a delta.
    delta_stap = bytes([0x78]) + b"".join(struct.pack("!H", len(u)) + u for u in (units[8], units[1]))
    assert not is_keyframe_start("h264", delta_stap)


def test_h264_large_keyframe_fu_a(h264_large_frames) -> None:
    assert_only_keyframe_starts("h264", h264_large_frames)
    delta_fu_starts = 0
    for forced, payloads in h264_large_frames:
        fu_starts = [p for p in payloads if nal_type(p) == 28 and p[1] & 0x80]
        if forced:
            idr_starts = [p for p in fu_starts if p[1] & 0x1F == 5]
            assert idr_starts, "a 1280x720 IDR is fragmented into FU-A packets"
            assert all(is_keyframe_start("h264", p) for p in idr_starts)
            # FU-A middle and end fragments never count.
            assert not any(is_keyframe_start("h264", p) for p in payloads if nal_type(p) == 28 and not p[1] & 0x80)
        else:
            assert all(p[1] & 0x1F == 1 for p in fu_starts)
            delta_fu_starts += len(fu_starts)
    assert delta_fu_starts, "some delta frame was fragmented too (an FU-A start of a non-IDR slice)"


def test_h264_malformed() -> None:
    assert not is_keyframe_start("h264", b"")
    assert not is_keyframe_start("h264", b"\x67")  # SPS header with no body
    assert not is_keyframe_start("h264", b"\xe7\x42")  # forbidden_zero_bit set
    assert not is_keyframe_start("h264", b"\x7c\x85")  # FU-A with no fragment data
    assert not is_keyframe_start("h264", b"\x7c\xc5\x00")  # FU-A with S and E both set
    assert not is_keyframe_start("h264", b"\x78\x00\x05\x67\x42")  # STAP-A unit longer than the packet
    assert not is_keyframe_start("h264", b"\x78\x00\x00\x00\x02\x67\x42")  # zero-size unit
    assert is_keyframe_start("h264", b"\x78\x00\x02\x68\xce\x00\x02\x65\x88")  # PPS then IDR


# --- VP9 (hand-built, RFC 9628 §4.2) ----------------------------------------------------------------------


def vp9_descriptor(
    *,
    p: int = 0,
    b: int = 1,
    picture_id: int | None = 0x1234,
    layer: tuple[int, int, int, int] | None = None,  # (TID, U, SID, D)
    flexible: bool = False,
    tl0picidx: int = 5,
    ss: bytes | None = None,
) -> bytes:
    first = (
        (0x80 if picture_id is not None else 0)
        | p << 6
        | (0x20 if layer is not None else 0)
        | (0x10 if flexible else 0)
        | b << 3
        | (0x02 if ss is not None else 0)
    )
    out = bytes([first])
    if picture_id is not None:
        out += struct.pack("!H", 0x8000 | picture_id) if picture_id > 0x7F else bytes([picture_id])
    if layer is not None:
        tid, u, sid, d = layer
        out += bytes([tid << 5 | u << 4 | sid << 1 | d])
        if not flexible:
            out += bytes([tl0picidx])
    if p and flexible:
        out += b"\x03"  # one P_DIFF, N=0
    if ss is not None:
        out += ss
    return out


# N_S=2 (three spatial layers), Y=1 with three WIDTH/HEIGHT pairs, G=1 with two pictures (R=1 and R=2).
SCALABILITY_STRUCTURE = (
    bytes([2 << 5 | 0x10 | 0x08])
    + struct.pack("!HHHHHH", 320, 180, 640, 360, 1280, 720)
    + bytes([2, 0 << 5 | 1 << 4 | 1 << 2, 4, 1 << 5 | 1 << 4 | 2 << 2, 1, 2])
)
FRAME_DATA = b"\x82\x49\x83\x42\x00"  # start of a VP9 uncompressed header (frame marker, profile 0, key frame)


def test_vp9_keyframe_with_scalability_structure() -> None:
    payload = vp9_descriptor(layer=(0, 0, 0, 0), ss=SCALABILITY_STRUCTURE) + FRAME_DATA
    assert is_keyframe_start("vp9", payload)
    assert is_keyframe_start("VP9", memoryview(payload))
    descriptor_size = len(payload) - len(FRAME_DATA)
    for cut in range(descriptor_size + 1):  # any truncation inside the descriptor (or no frame data)
        assert not is_keyframe_start("vp9", payload[:cut]), cut


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, True),  # 15-bit picture ID, no layers
        ({"picture_id": 5}, True),  # 7-bit picture ID
        ({"picture_id": None}, True),
        ({"layer": (0, 0, 0, 0)}, True),  # non-flexible: layer byte + TL0PICIDX
        ({"layer": (2, 1, 0, 0), "flexible": True}, True),  # flexible: layer byte only
        ({"layer": (0, 0, 0, 0), "ss": bytes([0])}, True),  # minimal SS: N_S=0, Y=0, G=0
        ({"ss": bytes([0x08, 0])}, True),  # G=1 with N_G=0
        ({"p": 1}, False),  # inter-picture predicted
        ({"p": 1, "flexible": True, "layer": (0, 0, 0, 0)}, False),
        ({"b": 0}, False),  # not the start of the frame
        ({"layer": (0, 0, 1, 0)}, False),  # spatial layer 1 of a keyframe is not the start
        ({"layer": (0, 0, 1, 1), "flexible": True}, False),
        ({"layer": (0, 0, 0, 1)}, False),  # D=1 on SID 0 is invalid
    ],
)
def test_vp9_descriptor_variants(fields: dict, expected: bool) -> None:
    assert is_keyframe_start("vp9", vp9_descriptor(**fields) + FRAME_DATA) is expected


def test_vp9_truncated_scalability_structure() -> None:
    ss = SCALABILITY_STRUCTURE
    # Y says three resolutions follow but the packet ends inside them.
    assert not is_keyframe_start("vp9", vp9_descriptor(ss=ss[:5]))
    # G says two pictures, the second claims R=2 P_DIFFs beyond the end.
    assert not is_keyframe_start("vp9", vp9_descriptor(ss=ss[:-2]))


# --- AV1 (hand-built, AV1 RTP specification §4.4) ---------------------------------------------------------

SEQUENCE_HEADER_OBU = bytes([0b0_0001_0_0_0]) + bytes(11)  # obu_type 1, no extension, no size field
FRAME_OBU = bytes([0b0_0110_0_0_0]) + bytes(20)  # obu_type 6


def av1_packet(z: int, y: int, w: int, n: int, elements: list[bytes]) -> bytes:
    out = bytes([z << 7 | y << 6 | w << 4 | n << 3])
    for index, element in enumerate(elements):
        if w == 0 or index < len(elements) - 1:  # W=0: every element has a length; else all but the last
            out += leb128(len(element))
        out += element
    return out


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_av1_keyframe_start() -> None:
    assert is_keyframe_start("av1", av1_packet(0, 0, 1, 1, [SEQUENCE_HEADER_OBU]))
    assert is_keyframe_start("av1", av1_packet(0, 1, 2, 1, [SEQUENCE_HEADER_OBU, FRAME_OBU]))
    assert is_keyframe_start("av1", av1_packet(0, 0, 0, 1, [SEQUENCE_HEADER_OBU, FRAME_OBU]))
    big = bytes([0b0_0001_0_0_0]) + bytes(300)  # two-byte LEB128 length
    assert is_keyframe_start("AV1", av1_packet(0, 0, 2, 1, [big, FRAME_OBU]))


def test_av1_not_keyframe_start() -> None:
    assert not is_keyframe_start("av1", av1_packet(0, 0, 1, 0, [FRAME_OBU]))  # N=0
    assert not is_keyframe_start("av1", av1_packet(1, 0, 1, 1, [SEQUENCE_HEADER_OBU]))  # Z=1: continuation
    assert not is_keyframe_start("av1", b"\x18")  # aggregation header only
    assert not is_keyframe_start("av1", b"\x18\x80")  # forbidden bit in the OBU header
    assert not is_keyframe_start("av1", b"\x08\x80\x80")  # LEB128 never ends
    assert not is_keyframe_start("av1", b"\x08" + b"\xff" * 8 + b"\x01")  # LEB128 longer than 8 bytes
    assert not is_keyframe_start("av1", b"\x08\x05\x08\x00")  # element length past the end
    assert not is_keyframe_start("av1", b"\x08\x00\x08")  # zero-length element


# --- dispatch, codec names, robustness --------------------------------------------------------------------


def test_unknown_codec_and_empty_payloads() -> None:
    assert not is_keyframe_start("h265", b"\x26\x01\xaf")
    assert not is_keyframe_start("opus", b"\x10\x50")
    for codec in ("vp8", "vp9", "h264", "av1"):
        assert not is_keyframe_start(codec, b"")
        assert not is_keyframe_start(codec, memoryview(b""))


@pytest.mark.parametrize(
    ("mime_type", "key"),
    [
        ("video/VP8", "vp8"),
        ("video/H264", "h264"),
        ("video/VP9", "vp9"),
        ("video/AV1", "av1"),
        ("VIDEO/av1x", "av1"),
        ("video/H265", "h265"),
        ("audio/opus", "opus"),
        ("vp8", "vp8"),
    ],
)
def test_codec_key(mime_type: str, key: str) -> None:
    assert codec_key(mime_type) == key


def test_fuzz_never_raises() -> None:
    """Random and bit-flipped payloads (fixed seed) give a bool for every codec, never an exception."""
    rng = random.Random(0x5EED)
    seeds = [
        b"\x90\xf0\x85\x01\x07\x20\x50\x02\x00\x9d\x01\x2a" + bytes(4),
        vp9_descriptor(layer=(0, 0, 0, 0), ss=SCALABILITY_STRUCTURE) + FRAME_DATA,
        b"\x78\x00\x02\x68\xce\x00\x02\x65\x88",
        b"\x7c\x85\x00\x01",
        av1_packet(0, 0, 0, 1, [SEQUENCE_HEADER_OBU, FRAME_OBU]),
    ]
    hits = 0
    for i in range(4000):
        if i % 2:
            data = bytearray(rng.randbytes(rng.randrange(0, 40)))
        else:
            data = damage(rng, rng.choice(seeds), rng.randrange(1, 4))
        for codec in ("vp8", "vp9", "h264", "av1"):
            result = is_keyframe_start(codec, memoryview(data) if i % 3 == 0 else bytes(data))
            assert result is True or result is False
            hits += result
    assert hits > 0
