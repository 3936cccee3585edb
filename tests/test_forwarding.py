"""Pure-logic units of the forwarding path: RTP headers, egress templates, DownTrack, PublishedTrack."""

from __future__ import annotations

import random
import time

import pytest

from gateway.rtcp import GenericNack, PictureLossIndication, parse_compound
from gateway.rtp import RtpError, build_header, parse_rtp, seq_newer
from gateway.sdp import Codec
from gateway.sfu.down_track import DownTrack
from gateway.sfu.egress import EgressProfile
from gateway.sfu.published_track import PublishedTrack

VP8_KEY = bytes([0x90, 0x80, 0x05, 0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])  # S=1, PID 0, key
VP8_DELTA = bytes([0x90, 0x80, 0x06, 0x11, 0x02, 0x00, 0x00])


def rtp(seq: int, payload: bytes, ts: int = 1000, ssrc: int = 0x1234, pt: int = 96, exts=(), marker=False) -> bytes:
    return bytes(build_header(marker, pt, seq, ts, ssrc, list(exts))) + payload


def test_parse_and_build_round_trip_one_and_two_byte_extensions() -> None:
    one = parse_rtp(rtp(7, b"abc", exts=[(1, b"0"), (3, b"\x01\x02")], marker=True))
    assert (one.sequence_number, one.timestamp, one.ssrc, one.payload_type, one.marker) == (7, 1000, 0x1234, 96, True)
    assert one.extensions == {1: b"0", 3: b"\x01\x02"} and one.payload == b"abc"
    two = parse_rtp(rtp(8, b"xyz", exts=[(20, b"long" * 5)]))  # id > 14 and 20 bytes: two-byte form
    assert two.extensions == {20: b"long" * 5} and two.payload == b"xyz"
    padded = bytearray(rtp(9, b"data" + bytes([0, 0, 3])))
    padded[0] |= 0x20
    assert parse_rtp(bytes(padded)).payload == b"data"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80" * 11, bytes([0x40]) + bytes(11), bytes([0x90, 96]) + bytes(10) + b"\xbe\xde\x00\x05", bytes([0xA0, 96]) + bytes(10) + b"\x00"],
    ids=["empty", "short", "version1", "ext-overflow", "bad-padding"],
)
def test_malformed_rtp_raises_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_random_bytes_never_raise_anything_but_rtp_error() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        try:
            parse_rtp(data)
        except RtpError:
            pass


def test_seq_newer_wraps() -> None:
    assert seq_newer(1, 65535) and not seq_newer(65535, 1) and not seq_newer(5, 5)


class Wire:
    """Collects what a DownTrack or PublishedTrack would put on the wire."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, data: bytes) -> int:
        self.rtp.append(data)
        return len(data)

    def send_rtcp(self, data: bytes) -> int:
        self.rtcp.append(data)
        return len(data)


def video_track(upstream: Wire, history: int = 64) -> PublishedTrack:
    codec = Codec(96, "VP8", 90000, None, {}, ["nack", "nack pli", "ccm fir"])
    track = PublishedTrack(
        kind="video",
        mid="0",
        codec=codec,
        rtx_payload_type=97,
        extensions={"urn:3gpp:video-orientation": 3},
        feedback=codec.feedback,
        history_size=history,
        keyframe_interval=0.5,
        local_ssrc=0xAAAA,
        send_rtcp=upstream.send_rtcp,
    )
    track.ssrc = 0x1234
    return track


def viewer(track: PublishedTrack, wire: Wire, rtx: bool = True) -> DownTrack:
    profile = EgressProfile(100, 101 if rtx else None, 9, "v0", ((3, 5),))
    down = DownTrack(track, profile, ssrc=0x5555, rtx_ssrc=0x6666 if rtx else None, cname="c", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp)
    down.seq_offset, down.ts_offset = 1000, 500
    return down


def test_viewer_starts_at_a_keyframe_and_gets_rewritten_headers() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    down = viewer(track, wire)
    down.start()  # no keyframe held yet: asks the publisher for one
    assert isinstance(parse_compound(upstream.rtcp[-1])[0], PictureLossIndication)
    track.on_packet(parse_rtp(rtp(10, VP8_DELTA, exts=[(3, b"\x01")])), 0.0)
    assert wire.rtp == []  # a delta frame before the first keyframe is useless to a new decoder
    track.on_packet(parse_rtp(rtp(11, VP8_KEY, ts=3000, exts=[(3, b"\x01")], marker=True)), 0.01)
    track.on_packet(parse_rtp(rtp(12, VP8_DELTA, ts=6000, exts=[(1, b"x"), (3, b"\x02")])), 0.02)
    first, second = (parse_rtp(p) for p in wire.rtp)
    assert (first.sequence_number, first.timestamp, first.ssrc, first.payload_type) == (1011, 3500, 0x5555, 100)
    assert first.marker and first.payload == VP8_KEY
    assert first.extensions == {9: b"v0", 5: b"\x01"}  # our mid, orientation moved to the viewer's id
    assert second.sequence_number == 1012 and second.extensions == {9: b"v0", 5: b"\x02"}  # unknown ext 1 dropped


def test_viewer_nack_is_answered_on_rtx_with_the_original_sequence_number() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    down = viewer(track, wire)
    down.start()
    for seq in range(20, 25):
        track.on_packet(parse_rtp(rtp(seq, VP8_KEY if seq == 20 else VP8_DELTA, ts=seq * 3000)), seq / 100)
    wire.rtp.clear()
    down.on_nack([1022, 999])  # 999 maps to a packet never held
    (rtx,) = (parse_rtp(p) for p in wire.rtp)
    assert rtx.ssrc == 0x6666 and rtx.payload_type == 101 and rtx.timestamp == 22 * 3000 + 500
    assert rtx.payload[:2] == (1022).to_bytes(2, "big") and rtx.payload[2:] == VP8_DELTA
    plain = Wire()
    no_rtx = viewer(video_track(Wire()), plain, rtx=False)
    no_rtx.source.on_packet(parse_rtp(rtp(5, VP8_KEY)), 0.0)
    no_rtx.on_nack([1005])
    again = parse_rtp(plain.rtp[-1])
    assert again.sequence_number == 1005 and again.ssrc == 0x5555 and again.payload == VP8_KEY


def test_publisher_losses_are_nacked_and_duplicates_dropped() -> None:
    upstream = Wire()
    track = video_track(upstream)
    track.on_packet(parse_rtp(rtp(100, VP8_KEY)), 0.0)
    track.on_packet(parse_rtp(rtp(104, VP8_DELTA)), 0.01)
    nack = parse_compound(upstream.rtcp[-1])[0]
    assert isinstance(nack, GenericNack) and nack.media_ssrc == 0x1234 and nack.lost == [101, 102, 103]
    track.on_packet(parse_rtp(rtp(102, VP8_DELTA)), 0.02)  # retransmission arrives
    track.retry_nacks(0.5)
    assert parse_compound(upstream.rtcp[-1])[0].lost == [101, 103]
    packets = track.packets
    track.on_packet(parse_rtp(rtp(104, VP8_DELTA)), 0.6)
    assert track.packets == packets  # duplicate not counted nor forwarded


def test_late_joiner_is_replayed_everything_since_the_last_keyframe() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    now = time.monotonic()
    for seq in range(1, 6):
        track.on_packet(parse_rtp(rtp(seq, VP8_KEY if seq == 3 else VP8_DELTA, ts=seq * 3000)), now + seq / 30)
    down = viewer(track, wire)
    down.start()
    assert [parse_rtp(p).sequence_number for p in wire.rtp] == [1003, 1004, 1005]
    assert upstream.rtcp == []  # no keyframe request needed
    track.on_packet(parse_rtp(rtp(6, VP8_DELTA, ts=18000)), now + 0.2)
    assert parse_rtp(wire.rtp[-1]).sequence_number == 1006


def test_a_stale_keyframe_is_not_replayed_a_fresh_one_is_requested() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    old = time.monotonic() - 5.0  # the last keyframe arrived five seconds ago
    track.on_packet(parse_rtp(rtp(1, VP8_KEY)), old)
    track.on_packet(parse_rtp(rtp(2, VP8_DELTA, ts=4000)), old + 0.03)
    viewer(track, wire).start()
    assert wire.rtp == []  # no burst of old pictures
    assert isinstance(parse_compound(upstream.rtcp[-1])[0], PictureLossIndication)


def test_viewers_with_the_same_profile_share_one_template() -> None:
    track = video_track(Wire())
    a, b = viewer(track, Wire()), viewer(track, Wire())
    assert a.profile is b.profile
