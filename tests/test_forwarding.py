"""Pure-logic units of the forwarding path: RTP headers, egress templates, DownTrack, PublishedTrack."""

from __future__ import annotations

import random
import time

import pytest

from gateway.rtcp import GenericNack, PictureLossIndication, parse_compound
from gateway.rtp import RtpError, build_header, parse_rtp, seq_newer
from gateway.sdp import Codec
from gateway.sfu.down_track import DownTrack, RetransmissionBudget
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


def video_track(upstream: Wire, history: int = 64, rids=None) -> PublishedTrack:
    codec = Codec(96, "VP8", 90000, None, {}, ["nack", "nack pli", "ccm fir"])
    track = PublishedTrack(
        kind="video",
        mid="0",
        codec=codec,
        rtx_payload_type=97,
        extensions={"urn:3gpp:video-orientation": 3},
        feedback=codec.feedback,
        rids=rids,
        history_size=history,
        keyframe_interval=0.0,
        local_ssrc=0xAAAA,
        send_rtcp=upstream.send_rtcp,
    )
    for i, layer in enumerate(track.layers):
        layer.ssrc = 0x1234 + i
    return track


def viewer(track: PublishedTrack, wire: Wire, rtx: bool = True) -> DownTrack:
    profile = EgressProfile(100, 101 if rtx else None, 9, "v0", ((3, 5),))
    return DownTrack(track, profile, ssrc=0x5555, rtx_ssrc=0x6666 if rtx else None, cname="c", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp)


def feed(track: PublishedTrack, seq: int, payload: bytes, ts: int = 1000, layer: int = 0, now: float = 0.0, **kw) -> None:
    track.on_packet(track.layers[layer], parse_rtp(rtp(seq, payload, ts=ts, ssrc=0x1234 + layer, **kw)), now)


def test_viewer_starts_at_a_keyframe_and_gets_rewritten_headers() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    down = viewer(track, wire)
    down.start()  # no keyframe held yet: asks the publisher for one
    assert isinstance(parse_compound(upstream.rtcp[-1])[0], PictureLossIndication)
    feed(track, 10, VP8_DELTA, exts=[(3, b"\x01")])
    assert wire.rtp == []  # a delta frame before the first keyframe is useless to a new decoder
    feed(track, 11, VP8_KEY, ts=3000, exts=[(3, b"\x01")], marker=True, now=0.01)
    feed(track, 12, VP8_DELTA, ts=6000, exts=[(1, b"x"), (3, b"\x02")], now=0.02)
    first, second = (parse_rtp(p) for p in wire.rtp)
    assert (first.ssrc, first.payload_type) == (0x5555, 100)
    assert first.marker and first.payload == VP8_KEY
    assert first.extensions == {9: b"v0", 5: b"\x01"}  # our mid, orientation moved to the viewer's id
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 3000  # the publisher's spacing is kept
    assert second.extensions == {9: b"v0", 5: b"\x02"}  # unknown ext 1 dropped


def test_viewer_nack_is_answered_on_rtx_with_the_original_sequence_number() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    down = viewer(track, wire)
    down.start()
    for seq in range(20, 25):
        feed(track, seq, VP8_KEY if seq == 20 else VP8_DELTA, ts=seq * 3000, now=seq / 100)
    sent = [parse_rtp(p) for p in wire.rtp]
    wire.rtp.clear()
    down.on_nack([sent[2].sequence_number, (sent[0].sequence_number - 500) & 0xFFFF])  # the second was never sent
    (rtx,) = (parse_rtp(p) for p in wire.rtp)
    assert rtx.ssrc == 0x6666 and rtx.payload_type == 101 and rtx.timestamp == sent[2].timestamp
    assert rtx.payload[:2] == sent[2].sequence_number.to_bytes(2, "big") and rtx.payload[2:] == VP8_DELTA
    plain = Wire()
    no_rtx = viewer(video_track(Wire()), plain, rtx=False)
    no_rtx.start()
    feed(no_rtx.source, 5, VP8_KEY)
    first = parse_rtp(plain.rtp[-1])
    no_rtx.on_nack([first.sequence_number])
    again = parse_rtp(plain.rtp[-1])
    assert (again.sequence_number, again.ssrc, again.payload) == (first.sequence_number, 0x5555, VP8_KEY)


def test_publisher_losses_are_nacked_and_duplicates_dropped() -> None:
    upstream = Wire()
    track = video_track(upstream)
    feed(track, 100, VP8_KEY)
    feed(track, 104, VP8_DELTA, now=0.01)
    nack = parse_compound(upstream.rtcp[-1])[0]
    assert isinstance(nack, GenericNack) and nack.media_ssrc == 0x1234 and nack.lost == [101, 102, 103]
    feed(track, 102, VP8_DELTA, now=0.02)  # retransmission arrives
    track.layers[0].retry_nacks(0.5)
    assert parse_compound(upstream.rtcp[-1])[0].lost == [101, 103]
    packets = track.layers[0].packets
    feed(track, 104, VP8_DELTA, now=0.6)
    assert track.layers[0].packets == packets  # duplicate not counted nor forwarded


def test_late_joiner_is_replayed_everything_since_the_last_keyframe() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    now = time.monotonic()
    for seq in range(1, 6):
        feed(track, seq, VP8_KEY if seq == 3 else VP8_DELTA, ts=seq * 3000, now=now + seq / 30)
    down = viewer(track, wire)
    down.start()
    replayed = [parse_rtp(p) for p in wire.rtp]
    assert [p.payload for p in replayed] == [VP8_KEY, VP8_DELTA, VP8_DELTA]  # packets 3, 4 and 5
    s0 = replayed[0].sequence_number
    assert [p.sequence_number for p in replayed] == [s0, (s0 + 1) & 0xFFFF, (s0 + 2) & 0xFFFF]
    assert upstream.rtcp == []  # no keyframe request needed
    feed(track, 6, VP8_DELTA, ts=18000, now=now + 0.2)
    assert parse_rtp(wire.rtp[-1]).sequence_number == (s0 + 3) & 0xFFFF


def test_a_stale_keyframe_is_not_replayed_a_fresh_one_is_requested() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    old = time.monotonic() - 5.0  # the last keyframe arrived five seconds ago
    feed(track, 1, VP8_KEY, now=old)
    feed(track, 2, VP8_DELTA, ts=4000, now=old + 0.03)
    viewer(track, wire).start()
    assert wire.rtp == []  # no burst of old pictures
    assert isinstance(parse_compound(upstream.rtcp[-1])[0], PictureLossIndication)


def test_viewers_with_the_same_profile_share_one_template() -> None:
    track = video_track(Wire())
    a, b = viewer(track, Wire()), viewer(track, Wire())
    assert a.profile is b.profile


# ---- simulcast: one layer per viewer, switching at keyframes ---------------------------------------------
T0 = 0.0  # the simulcast scenarios start "one second ago" on the real clock (set per test below)


@pytest.fixture(autouse=True)
def _scenario_clock() -> None:
    global T0
    T0 = time.monotonic() - 1.0


def vp8_key(width: int, height: int) -> bytes:
    """A VP8 keyframe payload start stating its size (RFC 6386 §9.1), behind a minimal descriptor."""
    return bytes([0x10, 0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A]) + width.to_bytes(2, "little") + height.to_bytes(2, "little")


def simulcast_track(upstream: Wire) -> PublishedTrack:
    track = video_track(upstream, rids=["q", "h", "f"])
    sizes = [(320, 180), (640, 360), (1280, 720)]
    for i, size in enumerate(sizes):  # each layer sends a keyframe: sizes become known, layers alive
        feed(track, 100, vp8_key(*size), ts=9000, layer=i, now=T0 + 1.0)
    track.refresh(T0 + 1.0)
    return track


def test_layers_are_ordered_by_size_not_rid_and_viewer_gets_the_highest_alive() -> None:
    upstream, wire = Wire(), Wire()
    track = video_track(upstream, rids=["0", "1", "2"])  # OBS naming: "0" is the full resolution
    for i, size in enumerate([(1280, 720), (640, 360), (320, 180)]):
        feed(track, 100, vp8_key(*size), ts=9000, layer=i, now=T0 + 1.0)
    track.refresh(T0 + 1.0)
    assert [l.rid for l in track.ordered_layers] == ["2", "1", "0"]
    down = viewer(track, wire)
    down.start()
    assert down.current is track.by_rid["0"] and down.reason == "highest active layer"


def test_switch_happens_at_the_targets_keyframe_with_continuous_sequence_numbers() -> None:
    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    down = viewer(track, wire)
    down.start()  # replays the top layer's keyframe
    assert down.current is top
    feed(track, 101, VP8_DELTA, ts=12000, layer=2, now=T0 + 1.03)
    # The top layer dies (nothing since 1.03 s) while the others keep sending: the viewer targets the middle
    # one and asks it for a keyframe.
    mid.last_packet = low.last_packet = T0 + 1.55
    track.refresh(T0 + 1.6)
    assert not top.active and down.target is mid and down.current is top
    assert isinstance(parse_compound(upstream.rtcp[-1])[0], PictureLossIndication)
    assert parse_compound(upstream.rtcp[-1])[0].media_ssrc == mid.ssrc
    before = len(wire.rtp)
    feed(track, 200, VP8_DELTA, ts=15000, layer=1, now=T0 + 1.61)  # not a keyframe: no switch yet
    assert len(wire.rtp) == before
    feed(track, 201, vp8_key(640, 360), ts=18000, layer=1, now=T0 + 1.7)
    feed(track, 202, VP8_DELTA, ts=21000, layer=1, now=T0 + 1.73)
    out = [parse_rtp(p) for p in wire.rtp]
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]  # one continuous stream across the switch
    assert all(0 < (b.timestamp - a.timestamp) & 0xFFFFFFFF < 0x80000000 for a, b in zip(out, out[1:]))
    assert {p.ssrc for p in out} == {0x5555} and down.current is mid and down.switches == 1
    assert down not in top.subscribers  # the dead layer no longer costs this viewer anything


def send_for_a_second(track: PublishedTrack, fps: tuple[int, ...]) -> float:
    """Each layer sends `fps[i]` two-packet pictures a second from T0 + 1.0 (after `simulcast_track`'s keyframes, seq
    101 on) to T0 + 2.0, and a refresh measures their frame rates; returns that refresh's time."""
    for i, rate in enumerate(fps):
        for k in range(1, rate + 1):
            for part in range(2):
                feed(track, 100 + 2 * k - 1 + part, VP8_DELTA, ts=9000 + k * 90000 // rate, layer=i, now=T0 + 1.0 + k / rate)
    track.refresh(T0 + 2.05)
    return T0 + 2.05


def plis_sent(upstream: Wire) -> list[int]:
    """The media SSRCs of the PLIs sent since the last call."""
    sent = [p.media_ssrc for data in upstream.rtcp for p in parse_compound(data) if isinstance(p, PictureLossIndication)]
    upstream.rtcp.clear()
    return sent


def test_a_silent_layer_gets_a_keyframe_below_it_asked_for_and_its_viewer_switches_there_when_it_dies() -> None:
    """The top layer falls silent (a browser turned it off): after FALLBACK_KEYFRAME_SILENCE, once, the middle layer
    (the highest live one below) is asked for a keyframe; when the top layer is declared dead the viewer switches at
    that keyframe at once, replayed from the held packets, with no further request and no wait."""
    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    down = viewer(track, wire)
    down.start()
    assert down.current is top
    t = send_for_a_second(track, (30, 30, 30))  # the top layer's last packet at T0 + 2.0
    assert all(28 < l.frame_rate < 31 for l in track.layers)  # 30 pictures (+ the keyframe) in ~1.05 s
    plis_sent(upstream)
    for now in (t, T0 + 2.2):
        mid.last_packet = low.last_packet = now
        track.refresh(now)  # silent for 0.05, 0.2 s: nothing yet
    assert plis_sent(upstream) == []
    mid.last_packet = low.last_packet = T0 + 2.3
    track.refresh(T0 + 2.3)  # 0.3 s: the middle layer is asked, the top one still alive and forwarded
    assert plis_sent(upstream) == [mid.ssrc] and top.active and down.current is top and down.target is top
    track.refresh(T0 + 2.35)
    assert plis_sent(upstream) == []  # once per silence
    before = len(wire.rtp)
    feed(track, 300, vp8_key(640, 360), ts=300000, layer=1, now=T0 + 2.4)
    feed(track, 301, VP8_DELTA, ts=303000, layer=1, now=T0 + 2.43)
    assert len(wire.rtp) == before  # the viewer is still on the top layer: nothing of the middle one yet
    mid.last_packet = low.last_packet = T0 + 2.55
    track.refresh(T0 + 2.6)  # the top layer is dead: the viewer switches at the held keyframe
    assert not top.active and down.current is mid and down.switches == 1
    assert plis_sent(upstream) == []  # no request: the keyframe is here
    replayed = [parse_rtp(p) for p in wire.rtp[before:]]
    assert [p.payload for p in replayed] == [vp8_key(640, 360), VP8_DELTA]
    feed(track, 302, VP8_DELTA, ts=306000, layer=1, now=T0 + 2.63)
    out = [parse_rtp(p) for p in wire.rtp]
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]  # one continuous stream across the switch
    assert all(0 <= (b.timestamp - a.timestamp) & 0xFFFFFFFF < 0x80000000 for a, b in zip(out, out[1:]))
    assert 0 < (out[before].timestamp - out[before - 1].timestamp) & 0xFFFFFFFF < 0x80000000  # on, not back
    assert down not in top.subscribers and down not in track.switching


def test_a_layer_of_few_pictures_a_second_is_not_suspected_between_them() -> None:
    """A top layer at 5 pictures a second (a screen share of still content) with a viewer on it: 0.45 s without a
    packet is ~2 of its picture intervals, not an encoder that stopped: nothing is asked of the layer below."""
    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    down = viewer(track, wire)
    down.start()
    send_for_a_second(track, (30, 30, 5))
    assert 4 < top.frame_rate < 6.5 and down.current is top
    plis_sent(upstream)
    for now in (T0 + 2.3, T0 + 2.4, T0 + 2.45):
        mid.last_packet = low.last_packet = now
        track.refresh(now)
    assert top.active and plis_sent(upstream) == []


def test_a_silent_layer_nobody_receives_asks_for_nothing() -> None:
    upstream = Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    send_for_a_second(track, (30, 30, 30))
    plis_sent(upstream)
    mid.last_packet = low.last_packet = T0 + 2.3
    track.refresh(T0 + 2.3)  # the top layer silent for 0.3 s, but no viewer on it
    assert top.active and plis_sent(upstream) == []


def test_pinned_layer_and_return_to_automatic() -> None:
    from whep.layer_request import LayerRequest

    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    down = viewer(track, wire)
    down.start()
    down.pin(LayerRequest(max_width=700))
    assert down.target is mid and down.reason == "pinned by the viewer"
    down.pin(LayerRequest(rid="q"))
    assert down.target is low
    down.pin(LayerRequest())
    assert down.target is top and down.reason == "highest active layer"


def test_nack_after_a_switch_resends_the_new_layer_and_drops_what_came_before() -> None:
    """A packet sent before a switch is useless to the viewer (its decoder restarts at the new layer's keyframe),
    so its NACK is dropped and counted; packets after the switch map back to the new layer."""
    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    down = viewer(track, wire)
    down.start()
    from whep.layer_request import LayerRequest

    down.pin(LayerRequest(rid="q"))
    feed(track, 300, vp8_key(320, 180), ts=30000, layer=0, now=T0 + 1.1)
    feed(track, 301, b"\x10\x00\x00low-delta", ts=33000, layer=0, now=T0 + 1.13)
    sent = [parse_rtp(p) for p in wire.rtp]
    wire.rtp.clear()
    before = drops("nack_before_switch")
    down.on_nack([sent[0].sequence_number, sent[-1].sequence_number])  # one from the top layer, one from the low
    resent = [parse_rtp(p).payload[2:] for p in wire.rtp]  # RTX: original sequence number first
    assert resent == [b"\x10\x00\x00low-delta"]
    assert drops("nack_before_switch") == before + 1


def drops(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("whipgate_dropped_total", {"reason": reason}) or 0.0


def vp8_temporal(picture_id: int, tl0: int, tid: int, key: bool = False, sync: bool = False) -> bytes:
    """A VP8 payload with the full descriptor (RFC 7741 §4.2): X, S, 15-bit picture id, TL0PICIDX, TID/Y."""
    descriptor = bytes(
        [0x90, 0xE0, 0x80 | (picture_id >> 8), picture_id & 0xFF, tl0 & 0xFF, (tid << 6) | (0x20 if sync else 0)]
    )
    header = bytes([0x10, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) if key else bytes([0x11, 0x00, 0x00])
    return descriptor + header + b"frame"


def test_pinning_a_temporal_layer_lowers_the_frame_rate_with_continuous_ids() -> None:
    from simulcast.vp8 import parse_descriptor
    from whep.layer_request import LayerRequest

    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    down = viewer(track, wire)
    down.start()
    pattern = [0, 2, 1, 2]  # L1T3
    now = time.monotonic()
    feed(track, 1, vp8_temporal(100, 10, 0, key=True), ts=3000, now=now)
    down.pin(LayerRequest(temporal_layer_id=0))
    tl0 = 10
    for i in range(1, 12):
        tid = pattern[i % 4]
        tl0 += tid == 0
        feed(track, 1 + i, vp8_temporal(100 + i, tl0, tid), ts=3000 * (i + 1), now=now + i / 30)
    out = [parse_rtp(p) for p in wire.rtp]
    descriptors = [parse_descriptor(p.payload) for p in out]
    assert [d.tid for d in descriptors] == [0, 0, 0]  # the keyframe and the two later base-layer frames
    assert [p.sequence_number for p in out] == [(out[0].sequence_number + i) & 0xFFFF for i in range(3)]
    pids = [d.picture_id for d in descriptors]
    assert pids == [pids[0], pids[0] + 1, pids[0] + 2]  # no gap where frames were left out
    assert down.temporal_layer == 0
    down.pin(LayerRequest())  # back to every temporal layer (raising waits for a sync frame or keyframe)
    assert down.codec_munger.target_temporal == 3


def keyframe_throttled_viewer(upstream: Wire, wire: Wire) -> tuple[PublishedTrack, DownTrack]:
    """A simulcast track whose layers ask for keyframes at most every 0.5 s (the default interval), and a started
    viewer of it."""
    track = simulcast_track(upstream)
    for layer in track.layers:
        layer._keyframe_interval = 0.5
    down = viewer(track, wire)
    down.start()
    return track, down


def test_a_pending_switch_asks_again_until_the_keyframe_comes() -> None:
    """Chromium ignores a second keyframe request within 300 ms: the gateway repeats it (rate limited)."""
    from whep.layer_request import LayerRequest

    upstream, wire = Wire(), Wire()
    track, down = keyframe_throttled_viewer(upstream, wire)
    low, mid, top = track.ordered_layers
    down.pin(LayerRequest(rid="h"))
    plis = lambda: [p for p in upstream.rtcp if isinstance(parse_compound(p)[0], PictureLossIndication) and parse_compound(p)[0].media_ssrc == mid.ssrc]
    first = len(plis())
    assert first == 1 and down in track.switching
    for layer in track.layers:
        layer.last_packet = T0 + 2.0
    track.refresh(T0 + 2.0)  # about 1 s after the pin's request (T0 is a second ago): asked again
    track.refresh(T0 + 2.1)  # 100 ms later: within the 0.5 s rate limit, not asked
    assert len(plis()) == first + 1
    feed(track, 400, vp8_key(640, 360), ts=90000, layer=1, now=T0 + 2.2)
    assert down.current is mid and down not in track.switching
    track.refresh(T0 + 3.0)
    assert len(plis()) == first + 1  # switched: no more requests


# ---- transport-wide congestion control towards viewers -----------------------------------------------------
def test_every_packet_to_a_viewer_carries_the_next_transport_wide_sequence_number() -> None:
    from simulcast.viewer_bandwidth import ViewerBandwidth

    upstream, wire = Wire(), Wire()
    track = video_track(upstream)
    audio_codec = Codec(111, "OPUS", 48000, 2, {}, [])
    audio = PublishedTrack(
        kind="audio", mid="1", codec=audio_codec, rtx_payload_type=None, extensions={}, feedback=[], rids=None,
        history_size=64, keyframe_interval=0.5, local_ssrc=1, send_rtcp=upstream.send_rtcp,
    )
    audio.layers[0].ssrc = 0x7777
    bandwidth = ViewerBandwidth(transport_cc=True)
    video_down = DownTrack(track, EgressProfile(100, 101, 9, "0", (), transport_cc_id=4), ssrc=0x5555, rtx_ssrc=0x6666,
                           cname="c", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp)
    audio_down = DownTrack(audio, EgressProfile(111, None, 9, "1", (), transport_cc_id=4), ssrc=0x8888, rtx_ssrc=None,
                           cname="c", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp)
    for down in (video_down, audio_down):
        down.bandwidth = bandwidth
        down.start()
    now = time.monotonic()
    feed(track, 1, VP8_KEY, now=now)
    audio.on_packet(audio.layers[0], parse_rtp(rtp(50, b"opus", ssrc=0x7777, pt=111)), now)
    feed(track, 2, VP8_DELTA, ts=4000, now=now)
    cluster = bandwidth.prober.start(1_000_000, time.monotonic_ns() // 1000)  # padding goes out for a probe cluster
    assert video_down.send_padding(600) > 600  # three padding packets on RTX
    sent = [parse_rtp(p) for p in wire.rtp]
    seqs = [int.from_bytes(p.extensions[4], "big") for p in sent]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(sent))]  # one sequence across audio, video, RTX
    assert [p.ssrc for p in sent] == [0x5555, 0x8888, 0x5555, 0x6666, 0x6666, 0x6666]
    padding = [p for p in sent if p.ssrc == 0x6666]
    assert all(p.payload == b"" and p.data[0] & 0x20 for p in padding)  # padding only: P bit, nothing to decode
    for seq, packet in zip(seqs, sent):  # every packet is in the send log with its size, for the estimator
        logged = bandwidth.log.lookup(seq)
        assert logged is not None and logged[1] == len(packet.data)  # what send_rtp reported on the wire
        # logged as the cluster's padding (the loss controller leaves it out), the media before it outside any cluster
        assert bandwidth.log.is_padding(seq) == (packet.ssrc == 0x6666)
        assert logged[2] == (cluster if packet.ssrc == 0x6666 else None)


def test_repeated_nacks_are_answered_once_per_interval_and_within_a_budget() -> None:
    """A congested viewer re-NACKs the same packets; resending all of them would flood its link further."""
    upstream, wire = Wire(), Wire()
    track = video_track(upstream, history=1024)
    down = viewer(track, wire)
    down.start()
    big = VP8_KEY + bytes(1100)
    now = time.monotonic()
    for seq in range(1, 201):
        feed(track, seq, big if seq == 1 else VP8_DELTA + bytes(1100), ts=seq * 3000, now=now)
    out = [parse_rtp(p).sequence_number for p in wire.rtp]
    wire.rtp.clear()
    down._budget._refilled -= 1.0  # a second has passed: the bucket is full
    assert not down._budget._seq  # no NACK yet: the per-packet slots are not allocated
    down.on_nack(out[:2])  # two 1.1 kB packets fit the floor's 250 ms burst (3,125 bytes)
    down.on_nack(out[:2])  # the same packets again at once: not resent
    assert len(wire.rtp) == 2
    wire.rtp.clear()
    down._budget._refilled -= 1.0
    down.on_nack(out[3:200])  # 197 packets (~230 kB) at once: only the budget's worth goes out
    # At most a 250 ms burst at 25% of what was sent in the last second (here never measured: the floor).
    budget_bytes = RetransmissionBudget.FLOOR_BPS / 8 * 0.25
    assert 0 < len(wire.rtp) <= budget_bytes / 1100 + 1


def test_a_keyframe_burst_to_a_viewer_leaves_at_the_pacing_rate_in_order() -> None:
    """GCC §4 pacer: 40 packets of a keyframe arrive at once; the viewer gets them at the pacing rate, paced by one
    timer (no task per packet), with transport-wide sequence numbers in send order and nothing lost. It is the
    viewer's first keyframe, i.e. a switch's: 1.2x the estimate (ViewerBandwidth.on_switch; 2.5x otherwise)."""
    import asyncio

    from simulcast.viewer_bandwidth import CONGESTED_PACING_FACTOR, ViewerBandwidth

    async def run() -> tuple[list[tuple[float, bytes]], ViewerBandwidth]:
        upstream, wire = Wire(), Wire()
        sent: list[tuple[float, bytes]] = []

        def send_rtp(packet: bytes) -> int:
            sent.append((time.monotonic(), packet))
            return len(packet)

        track = video_track(upstream, history=256)
        bandwidth = ViewerBandwidth(transport_cc=True)
        assert bandwidth.estimator.estimate_bps == 1_000_000  # the initial estimate: 1.2 Mbit/s after the switch
        down = DownTrack(track, EgressProfile(100, 101, 9, "0", (), transport_cc_id=4), ssrc=0x5555,
                         rtx_ssrc=0x6666, cname="c", send_rtp=send_rtp, send_rtcp=wire.send_rtcp)
        down.bandwidth = bandwidth
        down.start()
        now = time.monotonic()
        for seq in range(1, 41):
            feed(track, seq, (VP8_KEY if seq == 1 else VP8_DELTA) + bytes(1100), ts=3000, now=now)
        assert len(sent) < 5  # the burst allowance only; the rest waits in the pacer
        for _ in range(100):
            if len(sent) == 40:
                break
            await asyncio.sleep(0.01)
        bandwidth.close()
        return sent, bandwidth

    sent, bandwidth = asyncio.run(run())
    assert len(sent) == 40 and bandwidth.pacer.dropped == 0
    packets = [parse_rtp(p) for _, p in sent]
    assert [p.sequence_number for p in packets] == [(packets[0].sequence_number + i) & 0xFFFF for i in range(40)]
    twcc = [int.from_bytes(p.extensions[4], "big") for p in packets]
    assert twcc == [(twcc[0] + i) & 0xFFFF for i in range(40)]
    duration = sent[-1][0] - sent[0][0]
    rate = sum(len(p) for _, p in sent[:-1]) * 8 / duration
    target = CONGESTED_PACING_FACTOR * 1e6
    print(f"\n[pacer] 40 x ~1.1 kB keyframe: {duration * 1000:.0f} ms, {rate / 1e6:.2f} Mbit/s (target {target / 1e6} Mbit/s)")
    assert 0.5 * target <= rate <= 1.3 * target  # timer granularity on a loaded machine


def _sender_reports(wire: Wire) -> list:
    return [p for data in wire.rtcp for p in parse_compound(data) if type(p).__name__ == "SenderReport"]


async def test_publisher_sender_reports_reach_each_viewer_translated_a_slice_per_loop_turn() -> None:
    """RFC 3550 §6.4.1: each viewer gets the publisher's NTP time with the RTP timestamp moved into its own timestamp
    space and its own packet and octet counts; many viewers are reached SR_SLICE per event-loop turn, so the fan-out
    does not hold up the packets arriving meanwhile (the newest SR's pair is the one sent)."""
    import asyncio

    from gateway.sfu.published_track import SR_SLICE

    upstream = Wire()
    track = video_track(upstream)
    wires = [Wire() for _ in range(2 * SR_SLICE + 5)]
    downs = [viewer(track, w) for w in wires]
    for down in downs:
        down.start()
    feed(track, 11, VP8_KEY, ts=3000, marker=True)
    silent_wire = Wire()
    silent = viewer(track, silent_wire)  # joined after the keyframe: has sent nothing, so no SR (§6.4: SR is for senders)
    silent.start()
    track.on_sender_report(track.layers[0], 0x1122334455667788, 3000 + 90_000, 0.0)
    assert sum(len(_sender_reports(w)) for w in wires) == SR_SLICE  # the first slice now, the rest in later turns
    downs[-1].stop()  # left meanwhile: not reported to
    for _ in range(3):
        await asyncio.sleep(0)
    for down, wire in zip(downs, wires):
        reports = _sender_reports(wire)
        if down is downs[-1]:
            assert reports == []
            continue
        (sr,) = reports
        first = parse_rtp(wire.rtp[0])
        assert sr.ssrc == 0x5555 and sr.ntp_timestamp == 0x1122334455667788
        assert (sr.rtp_timestamp - first.timestamp) & 0xFFFFFFFF == 90_000  # one second after the keyframe
        assert (sr.packet_count, sr.octet_count) == (1, len(VP8_KEY))
    assert _sender_reports(silent_wire) == []


def test_a_keyframe_request_the_publisher_ignored_is_repeated_after_its_gap() -> None:
    """A viewer targets the middle layer, then 0.2 s later the lowest (two steps down after a cut): libwebrtc drops
    the second request (one keyframe per 300 ms for all layers), so once that gap has passed the gateway asks the
    lowest layer again, once, without waiting for its own keyframe_request_interval (0.5 s here)."""
    upstream, wire = Wire(), Wire()
    track, down = keyframe_throttled_viewer(upstream, wire)
    low, mid, top = track.ordered_layers
    assert down.current is top

    def plis(now: float) -> list[int]:
        """The PLIs sent so far (by SSRC); the layers are kept alive up to `now`."""
        for layer in track.layers:
            layer.last_packet = now
        return plis_sent(upstream)

    t = T0 + 2.0
    plis(t)
    down.target, down.target_since = mid, t  # what retarget does when the estimate falls (no switch yet)
    track.switching.add(down)
    assert mid.request_keyframe(t)
    assert plis(t) == [mid.ssrc]
    down.target = low
    assert low.request_keyframe(t + 0.2)  # sent, but within the publisher's gap after the middle layer's
    assert plis(t + 0.2) == [low.ssrc]
    plis(t + 0.3)
    track.refresh(t + 0.3)
    assert plis(t + 0.3) == []  # still inside the gap: asking again would be dropped as well
    plis(t + 0.36)
    track.refresh(t + 0.36)
    assert plis(t + 0.36) == [low.ssrc]  # the gap has passed: once more
    for step in (0.4, 0.5, 0.65):
        plis(t + step)
        track.refresh(t + step)
        assert plis(t + step) == [], step  # and then only at the usual interval
    plis(t + 0.87)
    track.refresh(t + 0.87)
    assert plis(t + 0.87) == [low.ssrc]


async def test_a_switch_while_a_capacity_drop_drains_leaves_no_gap_for_what_never_left() -> None:
    """After a capacity drop the pacer holds video (ViewerBandwidth._drain_queue); the viewer then switches to the
    lowest layer at its keyframe. The top layer's packets still queued are dropped, and the keyframe takes their
    sequence numbers: the viewer gets one gapless sequence (a gap would read as loss in its packetsLost and draw
    NACKs for packets that never existed for it), and its sender report counts only what went out."""
    import asyncio

    from simulcast.viewer_bandwidth import CONGESTED_PACING_FACTOR, DRAIN_PACING_FACTOR, ViewerBandwidth, now_us
    from whep.layer_request import LayerRequest

    upstream, wire = Wire(), Wire()
    track = simulcast_track(upstream)
    low, mid, top = track.ordered_layers
    bandwidth = ViewerBandwidth(transport_cc=True)
    down = DownTrack(track, EgressProfile(100, 101, 9, "0", (), transport_cc_id=4), ssrc=0x5555, rtx_ssrc=0x6666,
                     cname="c", send_rtp=wire.send_rtp, send_rtcp=wire.send_rtcp)
    down.bandwidth = bandwidth
    down.start()  # the top layer's keyframe goes out
    assert bandwidth._switch_paced_until > 0  # the first layer's keyframe is paced gently (ViewerBandwidth.on_switch)
    feed(track, 101, VP8_DELTA, ts=12000, layer=2, now=T0 + 1.03)
    on_wire = len(wire.rtp)
    assert on_wire == 2
    bandwidth._draining_since = now_us()  # what a capacity drop's feedback does (see test_bwe for that part)
    bandwidth.pacer.hold(now_us() + 10_000_000)
    for seq in range(102, 105):
        feed(track, seq, VP8_DELTA + bytes(900), ts=15000, layer=2, now=T0 + 1.06)
    assert len(wire.rtp) == on_wire and bandwidth.pacer.queued_packets == 3  # held
    down.on_nack([parse_rtp(wire.rtp[-1]).sequence_number])  # the viewer lost packet 101: its RTX waits there too
    assert len(wire.rtp) == on_wire and bandwidth.pacer.queued_packets == 4
    before = drops("pacer_before_switch")
    down.pin(LayerRequest(rid="q"))
    feed(track, 300, vp8_key(320, 180), ts=30000, layer=0, now=T0 + 1.1)  # the switch
    feed(track, 301, b"\x10\x00\x00low-delta", ts=33000, layer=0, now=T0 + 1.13)
    assert down.current is low and drops("pacer_before_switch") == before + 4  # the RTX of the old layer too
    assert bandwidth.pacer.factor == DRAIN_PACING_FACTOR  # the drain's pacing wins over the switch's
    bandwidth.pacer.release(now_us())
    bandwidth._send_due(asyncio.get_running_loop())
    bandwidth.close()
    out = [parse_rtp(p) for p in wire.rtp]
    assert {p.ssrc for p in out} == {0x5555}  # no retransmission of the layer left behind
    assert [p.payload[:3] for p in out[on_wire:]] == [vp8_key(320, 180)[:3], b"\x10\x00\x00"]
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(out))]  # no gap where the dropped packets were
    twcc = [int.from_bytes(p.extensions[4], "big") for p in out]
    assert twcc == [(twcc[0] + i) & 0xFFFF for i in range(len(out))]
    assert down.packets_sent == len(out)
    assert down.octets_sent == sum(len(p.payload) for p in out)  # RFC 3550 §6.4.1: payload octets
    # An ordinary switch (no drain): the new layer's keyframe is paced at 1.2x the estimate.
    bandwidth._draining_since = None
    bandwidth._switch_paced_until = 0
    down.pin(LayerRequest(rid="h"))
    feed(track, 400, vp8_key(640, 360), ts=40000, layer=1, now=T0 + 1.2)
    bandwidth.close()
    assert down.current is track.ordered_layers[1] and bandwidth._switch_paced_until > 0
    assert bandwidth.pacer.factor == CONGESTED_PACING_FACTOR
