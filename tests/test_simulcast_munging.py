"""simulcast.rtp_munger, simulcast.vp8 and simulcast.vp9: one continuous stream per viewer across layer switches.

VP8 media is real libvpx output: two aiortc encoders (aiortc's own packetizer: 15-bit PictureID only) for the
spatial switching test, and two PyAV libvpx encoders with real temporal layers (FFmpeg `ts-parameters`, error
resilient) packetized here with every RFC 7741 §4.2 field (PictureID 15- and 7-bit, TL0PICIDX, TID/Y, KEYIDX)
for the temporal filter test. What the viewer receives is reassembled and decoded by aiortc's VP8 decoder
(libvpx) and compared pixel for pixel with each layer decoded on its own.

No VP9 encoder or packetizer is available here, so VP9 payloads are built byte by byte from RFC 9628 §4.2
(payload descriptor) and §4.2.1 (scalability structure), with filler bytes as frame data.
"""

from __future__ import annotations

import fractions
import random
from dataclasses import dataclass

import av
import numpy as np
import pytest
from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from simulcast import rtp_munger, vp8, vp9
from simulcast.rtp_munger import Origin, RtpMunger, SerialMunger

VP8_CODEC = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
FRAME_INTERVAL = 1 / 30
TICKS_PER_FRAME = 3000  # 90 kHz / 30 fps


def seq_diff(a: int, b: int) -> int:
    return (a - b) & 0xFFFF


def ts_newer(a: int, b: int) -> bool:
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


# =========================================================================================================
# RtpMunger
# =========================================================================================================


def test_first_switch_random_offsets_then_plain_offset() -> None:
    starts = set()
    for _ in range(20):
        m = RtpMunger()
        m.switch_to(1000, 5000, 0.0)
        starts.add(m.map(1000, 5000, 0.0))
    assert len(starts) > 15  # random initial sequence number and timestamp (RFC 3550 §5.1)
    m = RtpMunger()
    assert m.map(1, 1) is None  # nothing before the first switch
    m.switch_to(1000, 5000, 0.0)
    s0, t0 = m.map(1000, 5000, 0.0)
    assert m.map(1001, 5000, 0.0) == ((s0 + 1) & 0xFFFF, t0)
    assert m.map(1002, 8000, 0.03) == ((s0 + 2) & 0xFFFF, (t0 + 3000) & 0xFFFFFFFF)
    assert m.last_seq == (s0 + 2) & 0xFFFF and m.last_ts == (t0 + 3000) & 0xFFFFFFFF


def test_first_sequence_number_leaves_room_before_the_srtp_rollover() -> None:
    """RFC 3711 §3.3.1: a viewer's SRTP receiver starts its rollover counter at 0 with the first packet it decrypts.
    A random start just below 2**16 wraps before the viewer's keys are ready and every packet then fails
    authentication (bench/load.py saw it); starts stay below 2**15, ~32,000 packets (minutes of video) of room."""
    starts = []
    for _ in range(2000):
        m = RtpMunger()
        m.switch_to(1000, 5000, 0.0)
        starts.append(m.map(1000, 5000, 0.0)[0])
    assert max(starts) < 0x8000
    assert len(set(starts)) > 1900  # still random (RFC 3550 §5.1)


def test_switch_continues_sequence_and_paces_timestamp() -> None:
    m = RtpMunger()
    m.switch_to(100, 1_000_000, 10.0, layer=0)
    out = [m.map(100 + i, 1_000_000 + 3000 * (i // 2), 10.0 + (i // 2) / 30) for i in range(10)]
    last_seq, last_ts = out[-1]
    # Layer 1 has unrelated numbering; its keyframe arrives 50 ms after the last forwarded frame started.
    m.switch_to(40_000, 777, 10.0 + 4 / 30 + 0.05, layer=1)
    assert m.layer == 1
    s, t = m.map(40_000, 777)
    assert s == (last_seq + 1) & 0xFFFF
    assert (t - last_ts) & 0xFFFFFFFF == 4500  # 0.05 s at 90 kHz
    assert m.map(40_001, 777 + 3000) == ((s + 1) & 0xFFFF, (t + 3000) & 0xFFFFFFFF)
    # A switch with no time elapsed (or a clock going backwards) still advances the timestamp by one tick.
    m.switch_to(9, 9, 0.0, layer=2)
    assert m.map(9, 9) == ((s + 2) & 0xFFFF, (t + 3001) & 0xFFFFFFFF)


def test_gaps_stay_gaps_and_old_packets_are_refused() -> None:
    m = RtpMunger()
    m.switch_to(500, 0, 0.0, layer=7)
    s0, _ = m.map(500, 0)
    assert m.map(499, 0) is None  # older than the switch point
    assert m.map(502, 0)[0] == (s0 + 2) & 0xFFFF  # 501 lost: the gap stays
    assert m.unmap((s0 + 1) & 0xFFFF) == Origin(7, 501, m.ts_offset)  # the viewer's NACK finds 501
    assert m.map(501, 0)[0] == (s0 + 1) & 0xFFFF  # ... and 501 fills it when it comes
    assert m.unmap((s0 + 3) & 0xFFFF) is None  # never sent
    assert m.unmap((s0 - 1) & 0xFFFF) is None  # before anything this munger sent


def test_drop_closes_newest_only() -> None:
    m = RtpMunger()
    m.switch_to(10, 0, 0.0, layer=1)
    o = m.map(10, 0)[0]
    m.drop(11)  # newest: closed
    m.drop(12)  # newest again
    assert m.map(13, 0)[0] == (o + 1) & 0xFFFF
    assert m.map(11, 0) is None and m.map(12, 0) is None  # dropped and closed: their numbers are taken
    assert m.unmap((o + 1) & 0xFFFF) == Origin(1, 13, m.ts_offset)
    # 14 lost, 15 dropped: the gap before 15 stays (14 may come late), 15 itself is closed.
    m.drop(15)
    assert m.map(16, 0)[0] == (o + 3) & 0xFFFF
    assert m.unmap((o + 2) & 0xFFFF).seq == 14
    assert m.map(14, 0)[0] == (o + 2) & 0xFFFF
    # A packet older than the newest is dropped: its gap stays (later packets already went out).
    assert m.map(18, 0)[0] == (o + 5) & 0xFFFF
    m.drop(17)
    assert m.map(19, 0)[0] == (o + 6) & 0xFFFF
    assert m.unmap((o + 4) & 0xFFFF).seq == 17


def test_unsend_hands_never_sent_numbers_to_the_next_layer(monkeypatch) -> None:
    """A pacer dropped the newest mapped packets before they left (gateway/sfu/down_track.py `_unsend`): the next
    switch continues right after the last one sent, across the wrap, and segments opened among the unsent
    numbers (a `drop` closing a gap) are forgotten with them. Numbers never handed out are left alone."""
    monkeypatch.setattr(rtp_munger, "initial_sequence_number", lambda: 65_530)
    m = RtpMunger()
    m.switch_to(100, 0, 0.0, layer=0)
    outs = [m.map(100 + i, 3000 * i, i / 30)[0] for i in range(4)]  # 65,530 .. 65,533 sent
    m.drop(104)  # closed: 105 takes 65,534 in a new segment
    unsent = [m.map(105 + i, 20_000, 0.2)[0] for i in range(4)]
    assert unsent == [65_534, 65_535, 0, 1]
    m.unsend(unsent[0])
    assert m.last_seq == outs[-1]
    m.switch_to(7000, 500, 0.3, layer=1)
    assert [m.map(7000 + i, 500, 0.3)[0] for i in range(3)] == [65_534, 65_535, 0]
    assert m.unmap(65_535)[:2] == (1, 7001)  # the new layer, not the packet that never left
    assert m.unmap(outs[1])[:2] == (0, 101)
    assert m.map(106, 20_000) is None  # the old layer's numbers are gone
    before = m.last_seq
    m.unsend((before + 1) & 0xFFFF)  # after the newest: nothing was handed out, nothing changes
    assert m.last_seq == before
    m.switch_to(9000, 900, 0.4, layer=2)
    assert m.map(9000, 900)[0] == (before + 1) & 0xFFFF


def test_unmap_across_layers_and_time() -> None:
    m = RtpMunger()
    m.switch_to(60_000, 100, 0.0, layer=0)
    sent = {}
    for i in range(20):
        sent[m.map(60_000 + i, 100 + 3000 * i, i / 30)[0]] = (0, 60_000 + i, m.ts_offset)
    m.switch_to(3, 50, 1.0, layer=2)
    for i in range(20):
        sent[m.map(3 + i, 50 + 3000 * i, 1 + i / 30)[0]] = (2, 3 + i, m.ts_offset)
    m.switch_to(60_100, 5, 2.0, layer=0)
    for i in range(20):
        sent[m.map(60_100 + i, 5 + 3000 * i, 2 + i / 30)[0]] = (0, 60_100 + i, m.ts_offset)
    assert len(sent) == 60
    outs = sorted(sent, key=lambda s: seq_diff(s, min(sent)))
    assert all(seq_diff(b, a) == 1 for a, b in zip(outs, outs[1:]))
    for out_seq, origin in sent.items():
        assert m.unmap(out_seq) == origin


def test_wraparound_of_every_counter(monkeypatch) -> None:
    # Outgoing values start 3 below the wrap; the incoming ones wrap too.
    monkeypatch.setattr(rtp_munger.random, "getrandbits", lambda bits: (1 << bits) - 3)
    monkeypatch.setattr(rtp_munger, "initial_sequence_number", lambda: 65_533)  # the mapping must wrap anywhere
    m = RtpMunger()
    m.switch_to(65_534, 0xFFFF_FF00, 0.0, layer=0)
    got = [m.map((65_534 + i) & 0xFFFF, (0xFFFF_FF00 + 3000 * i) & 0xFFFFFFFF, i / 30) for i in range(6)]
    assert [s for s, _ in got] == [65_533, 65_534, 65_535, 0, 1, 2]
    assert [t for _, t in got] == [(0xFFFF_FFFD + 3000 * i) & 0xFFFFFFFF for i in range(6)]
    assert m.unmap(65_535) == Origin(0, 0, (0xFFFF_FFFD - 0xFFFF_FF00) & 0xFFFFFFFF)
    assert m.map(65_533, 0) is None  # older than the switch point, across the wrap
    m.drop(4)
    m.switch_to(65_535, 10, 6 / 30, layer=1)
    assert m.map(65_535, 10)[0] == 3
    assert m.map(0, 10)[0] == 4
    assert m.unmap(2) == Origin(0, 3, (0xFFFF_FFFD - 0xFFFF_FF00) & 0xFFFFFFFF)


def test_long_run_through_many_wraps() -> None:
    """70,000 packets, switching among three layers every 997 packets, dropping every 7th (newest) packet."""
    m = RtpMunger()
    seqs = [65_000, 12, 40_000]
    previous = None
    now = 0.0
    layer = 0
    m.switch_to(seqs[0], 0, now, layer=0)
    for n in range(70_000):
        now += 0.001
        if n % 997 == 996:
            layer = (layer + 1) % 3
            m.switch_to(seqs[layer], 0, now, layer=layer)
        seq = seqs[layer]
        seqs[layer] = (seq + 1) & 0xFFFF
        if n % 7 == 3 and n % 997 != 996:
            m.drop(seq)
            continue
        out, _ = m.map(seq, 0, now)
        if previous is not None:
            assert seq_diff(out, previous) == 1, n
        previous = out


@pytest.mark.parametrize("seed", range(6))
def test_random_loss_reorder_drop_switch(seed: int) -> None:
    """Random loss, reordering, drops and switches: outgoing numbers are never reused, NACKs map back to the
    exact packet, and newer incoming packets of a layer run get newer outgoing numbers."""
    rng = random.Random(seed)
    m = RtpMunger()
    next_seq = [rng.getrandbits(16) for _ in range(3)]
    owner: dict[int, tuple[int, int]] = {}  # out seq -> (layer, seq)
    history: list[int] = []
    layer = 0
    held: list[tuple[int, int]] = []
    now = 0.0
    m.switch_to(next_seq[0], 0, now, layer=0)
    for step in range(6000):
        now += 0.002
        if rng.random() < 0.004:
            layer = rng.randrange(3)
            held.clear()  # packets of the old layer are no longer routed here
            m.switch_to(next_seq[layer], 0, now, layer=layer)
        seq = next_seq[layer]
        next_seq[layer] = (seq + 1) & 0xFFFF
        roll = rng.random()
        if roll < 0.05:
            continue  # lost upstream
        if roll < 0.12:
            held.append((layer, seq))  # arrives later
            continue
        deliveries = [(layer, seq)]
        if held and rng.random() < 0.3:
            deliveries.insert(rng.randrange(2), held.pop(rng.randrange(len(held))))
        for lay, s in deliveries:
            if lay != m.layer:
                continue
            if rng.random() < 0.1:
                m.drop(s)
                continue
            mapped = m.map(s, 0, now)
            if mapped is None:
                continue
            out = mapped[0]
            assert owner.get(out, (lay, s)) == (lay, s), (step, out)
            owner[out] = (lay, s)
            history.append(out)
    assert len(owner) > 4000
    # Exact for what the kept segments cover (256: here about the last 2,000 packets), None beyond, never wrong.
    for n, out in enumerate(reversed(history)):
        origin = m.unmap(out)
        if n < 1000:
            assert origin is not None
        assert origin is None or (origin.layer, origin.seq) == owner[out]


def test_reordering_without_loss_leaves_no_holes() -> None:
    """Reordered delivery plus drops of the newest packet: the outgoing numbers form one gapless range."""
    rng = random.Random(5)
    m = RtpMunger()
    m.switch_to(65_000, 0, 0.0)
    outs = []
    pending = list(range(65_000, 65_000 + 3000))
    position = 0
    window: list[int] = []
    newest = 64_999
    while position < len(pending) or window:
        while position < len(pending) and len(window) < 4:
            window.append(pending[position] & 0xFFFF)
            position += 1
        seq = window.pop(rng.randrange(len(window)) if rng.random() < 0.2 else 0)
        if seq_diff(seq, newest) < 0x8000 and seq != newest and rng.random() < 0.15:
            m.drop(seq)  # the newest packet is padding: its number is reused
        else:
            result = m.map(seq, 0)
            assert result is not None
            outs.append(result[0])
        if 0 < seq_diff(seq, newest) < 0x8000:
            newest = seq
    assert len(set(outs)) == len(outs)
    relative = [((s - outs[0] + 0x8000) & 0xFFFF) - 0x8000 for s in outs]
    span = {r - min(relative) for r in relative}
    assert span == set(range(len(outs)))


def test_serial_munger_seven_bits_and_ring_overflow() -> None:
    pids = SerialMunger(7, segments=4)
    assert pids.switch_to(120) == 120
    for pid in range(120, 140):
        if pid % 2:
            pids.drop(pid & 0x7F)
        else:
            assert pids.map(pid & 0x7F) == (120 + (pid - 120) // 2) & 0x7F
    # Only the 4 newest segments are kept: a very late picture is refused rather than mapped wrongly.
    assert pids.map(120) is None
    assert pids.lookup(138 & 0x7F) == (120 + 9) & 0x7F
    assert pids.switch_to(3) == (pids.last + 1) & 0x7F


def test_segments_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError):
        RtpMunger(segments=48)


# =========================================================================================================
# VP8: descriptor parsing
# =========================================================================================================

KEY_HEADER = b"\x50\x02\x00\x9d\x01\x2a" + (320).to_bytes(2, "little") + (180).to_bytes(2, "little") + bytes(4)


def test_vp8_parse_every_field() -> None:
    d = vp8.parse_descriptor(b"\xb0\xf0\xab\xcd\x7e\xb5" + KEY_HEADER)  # X, N, S; I(M), L, T, K
    assert (d.x, d.n, d.s, d.partition_index) == (True, True, True, 0)
    assert (d.i, d.l, d.t, d.k, d.m) == (True, True, True, True, True)
    assert d.picture_id == 0x2BCD and d.tl0picidx == 0x7E
    assert (d.tid, d.y, d.keyidx) == (2, True, 0x15)
    assert d.size == 6 and d.keyframe and (d.width, d.height) == (320, 180)
    assert (d.picture_id_offset, d.tl0picidx_offset, d.tk_offset) == (2, 4, 5)

    d = vp8.parse_descriptor(b"\x83\x80\x05" + b"\x01\x02")  # 7-bit id, partition 3, S=0
    assert (d.s, d.partition_index, d.m, d.picture_id, d.size) == (False, 3, False, 5, 3)
    assert d.tl0picidx is None and d.tid is None and d.keyidx is None and not d.keyframe

    d = vp8.parse_descriptor(b"\x90\x10\x3f" + KEY_HEADER)  # K only: TID absent, KEYIDX 31
    assert d.tid is None and d.keyidx == 31 and vp8.temporal_id(d) == 0
    d = vp8.parse_descriptor(b"\x90\x20\xc0" + KEY_HEADER)  # T only
    assert d.tid == 3 and d.keyidx is None and vp8.temporal_id(d) == 3
    d = vp8.parse_descriptor(b"\x10" + KEY_HEADER)  # no extension
    assert d.size == 1 and not d.x and d.picture_id is None and d.keyframe
    assert not vp8.parse_descriptor(b"\x10\x51\x02\x00\x9d\x01\x2a" + bytes(4)).keyframe  # P=1: delta frame

    full = b"\x90\xf0\xab\xcd\x7e\xb5"
    for cut in range(len(full) + 1):
        assert vp8.parse_descriptor(full[:cut]) is None, cut  # truncated, or no VP8 data
    assert vp8.parse_descriptor(memoryview(full + b"\x00")).picture_id == 0x2BCD
    assert vp8.parse_descriptor(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [vp8, vp9], ids=["vp8", "vp9"])
def test_parsers_never_raise_on_random_bytes(module) -> None:
    rng = random.Random(1234)
    munger = module.Vp8Munger() if module is vp8 else module.Vp9Munger()
    parsed = 0
    for n in range(40_000):
        payload = rng.randbytes(rng.randrange(0, 24))
        d = module.parse_descriptor(payload)
        if d is None:
            continue
        parsed += 1
        assert 1 <= d.size < len(payload)
        if n % 50 == 0 or d.keyframe:
            munger.switch_to(d)
        out = munger.rewrite(payload, d)
        assert out is None or len(out) == len(payload)
    assert parsed > 10_000


# =========================================================================================================
# VP8: the viewer's stream, built from real encoder output
# =========================================================================================================


@dataclass
class Sent:
    seq: int
    ts: int
    payload: bytes
    layer: int
    tick: int
    source_seq: int
    source_ts: int


class Viewer:
    """How a down track uses the API: forward the current layer, switch at the target layer's key frame."""

    def __init__(self, codec_munger, parse) -> None:
        self.rtp = RtpMunger()
        self.codec = codec_munger
        self.parse = parse
        self.layer: int | None = None
        self.target = 0
        self.sent: list[Sent] = []

    def on_packet(self, layer: int, seq: int, ts: int, payload: bytes, now: float, tick: int) -> None:
        d = self.parse(payload)
        assert d is not None
        if layer != self.layer:
            if layer != self.target or not d.keyframe:
                return
            self.rtp.switch_to(seq, ts, now, layer)
            self.codec.switch_to(d, layer)
            self.layer = layer
        out = self.codec.rewrite(payload, d)
        if out is None:
            self.rtp.drop(seq)
            return
        mapped = self.rtp.map(seq, ts, now)
        assert mapped is not None
        self.sent.append(Sent(mapped[0], mapped[1], bytes(out), layer, tick, seq, ts))


def frames_of(sent: list[Sent]) -> list[list[Sent]]:
    frames: list[list[Sent]] = []
    for packet in sent:
        if frames and frames[-1][-1].ts == packet.ts:
            frames[-1].append(packet)
        else:
            frames.append([packet])
    return frames


def image(tick: int, width: int, height: int) -> av.VideoFrame:
    rng = np.random.default_rng(tick // 8)  # a new scene every 8 frames, a moving bar in between
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = (tick * 6) % (width - 16)
    pixels[height // 4 : height // 2, x : x + 16] = 255
    return av.VideoFrame.from_ndarray(pixels, format="rgb24")


def decode_all(frames: list[tuple[bytes, int]]) -> list[av.VideoFrame]:
    """Decode (VP8 frame, timestamp) pairs with aiortc's libvpx decoder; each must give exactly one picture."""
    decoder = get_decoder(VP8_CODEC)
    pictures = []
    for data, ts in frames:
        out = decoder.decode(JitterFrame(data=data, timestamp=ts))
        assert len(out) == 1
        pictures.append(out[0])
    return pictures


def check_viewer_stream(sent: list[Sent], references: dict[int, dict[int, av.VideoFrame]], sizes) -> list:
    """Consecutive sequence numbers, increasing timestamps, whole frames that decode to what each layer's own
    decoder shows for that tick. Returns the frames (lists of Sent)."""
    assert all(seq_diff(b.seq, a.seq) == 1 for a, b in zip(sent, sent[1:]))
    frames = frames_of(sent)
    assert all(ts_newer(b[0].ts, a[0].ts) for a, b in zip(frames, frames[1:]))
    reassembled = []
    for frame in frames:
        descriptors = [vp8.parse_descriptor(p.payload) for p in frame]
        assert descriptors[0].s and descriptors[0].partition_index == 0
        assert not any(d.s for d in descriptors[1:])
        assert len({p.tick for p in frame}) == 1 and len({p.layer for p in frame}) == 1
        data = b"".join(p.payload[d.size :] for p, d in zip(frame, descriptors))
        reassembled.append((data, frame[0].ts))
    pictures = decode_all(reassembled)
    for frame, picture in zip(frames, pictures):
        layer, tick = frame[0].layer, frame[0].tick
        assert (picture.width, picture.height) == sizes[layer]
        expected = references[layer][tick]
        assert np.array_equal(picture.to_ndarray(), expected.to_ndarray()), (layer, tick)
    return frames


def aiortc_layers(ticks: int, sizes: dict[int, tuple[int, int]], keyframes: dict[int, set[int]], first_pid):
    """Encode every tick on every layer with aiortc's Vp8Encoder; (tick, layer, payloads, timestamp)."""
    encoders = {}
    for layer in sizes:
        encoders[layer] = get_encoder(VP8_CODEC)
        encoders[layer].picture_id = first_pid[layer]  # near the 15-bit wrap for the test
    out = []
    for tick in range(ticks):
        for layer, (w, h) in sizes.items():
            frame = image(tick, w, h)
            frame.pts = tick * TICKS_PER_FRAME
            frame.time_base = fractions.Fraction(1, 90000)
            payloads, timestamp = encoders[layer].encode(frame, force_keyframe=tick in keyframes[layer])
            out.append((tick, layer, payloads, timestamp))
    return out


def reference_pictures(encoded, layer: int) -> dict[int, av.VideoFrame]:
    frames = [(tick, b"".join(p[vp8.parse_descriptor(p).size :] for p in payloads), ts)
              for tick, lay, payloads, ts in encoded if lay == layer]
    pictures = decode_all([(data, ts) for _, data, ts in frames])
    return {tick: picture for (tick, _, _), picture in zip(frames, pictures)}


def test_vp8_spatial_switches_real_encoder(monkeypatch) -> None:
    monkeypatch.setattr(rtp_munger.random, "getrandbits", lambda bits: (1 << bits) - 4)  # viewer wraps early
    monkeypatch.setattr(rtp_munger, "initial_sequence_number", lambda: 65_532)
    sizes = {0: (320, 240), 1: (160, 120)}
    keyframes = {0: {0, 26}, 1: {0, 12}}  # the PLI-triggered key frames each switch waits for
    encoded = aiortc_layers(36, sizes, keyframes, first_pid={0: 32_760, 1: 1_000})
    assert max(len(p) for _, lay, p, _ in encoded if lay == 0) > 1  # key frames span several packets

    seq_base = {0: 65_530, 1: 20_000}
    ts_base = {0: 0xFFFF_0000, 1: 123_456}
    viewer = Viewer(vp8.Vp8Munger(), vp8.parse_descriptor)
    counters = dict(seq_base)
    for tick, layer, payloads, timestamp in encoded:
        if tick == 10:
            viewer.target = 1
        if tick == 24:
            viewer.target = 0
        for n, payload in enumerate(payloads):
            now = tick * FRAME_INTERVAL + layer * 0.004 + n * 0.0005
            ts = (timestamp + ts_base[layer]) & 0xFFFFFFFF
            viewer.on_packet(layer, counters[layer], ts, payload, now, tick)
            counters[layer] = (counters[layer] + 1) & 0xFFFF

    references = {layer: reference_pictures(encoded, layer) for layer in sizes}
    frames = check_viewer_stream(viewer.sent, references, sizes)
    shown = [(f[0].layer, f[0].tick) for f in frames]
    assert shown == [(0, t) for t in range(13)] + [(1, t) for t in range(12, 26)] + [(0, t) for t in range(26, 36)]
    pids = [vp8.parse_descriptor(f[0].payload).picture_id for f in frames]
    assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:]))
    assert pids[0] == 32_760 and pids[8] == 0  # the publisher's ids first, wrapping at 2**15
    assert viewer.sent[0].seq == 65_532 and any(p.seq == 0 for p in viewer.sent)
    # Every packet the viewer got can be found again for its NACK, with the timestamp it carried.
    for p in viewer.sent:
        origin = viewer.rtp.unmap(p.seq)
        assert (origin.layer, origin.seq) == (p.layer, p.source_seq)
        assert (p.source_ts + origin.ts_offset) & 0xFFFFFFFF == p.ts
    # At each switch the timestamp advanced by the wall-clock gap (layer 1's packets come 4 ms later).
    for a, b in zip(frames, frames[1:]):
        gap = (b[0].ts - a[0].ts) & 0xFFFFFFFF
        if a[0].layer == b[0].layer:
            assert abs(gap - 3000) <= 1  # the publisher's own spacing (aiortc rounds 1/30 s to 2999..3001)
        else:
            assert gap == round((b[0].tick - a[0].tick) * 3000 + (b[0].layer - a[0].layer) * 360), gap


def libvpx_temporal_layers(ticks: int, size: tuple[int, int], keyframes: set[int]) -> list[bytes]:
    """Real VP8 temporal scalability: 3 layers in the 4-frame pattern TID 0,2,1,2 (FFmpeg ts_layering_mode 3),
    error resilient so frames of a dropped layer leave no trace in the others."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = size
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = 600_000
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {
        "deadline": "realtime",
        "lag-in-frames": "0",
        "cpu-used": "-6",
        "error-resilient": "default",
        "ts-parameters": "ts_number_layers=3:ts_target_bitrate=250,400,600:ts_rate_decimator=4,2,1:"
        "ts_periodicity=4:ts_layer_id=0,2,1,2:ts_layering_mode=3",
    }
    frames = []
    for tick in range(ticks):
        frame = image(tick, *size).reformat(format="yuv420p")
        frame.pts = tick
        if tick in keyframes:
            frame.pict_type = av.video.frame.PictureType.I
        frames.append(b"".join(bytes(p) for p in codec.encode(frame)))
    return frames


PATTERN = (0, 2, 1, 2)
SYNC = (False, True, True, False)  # which frames of the pattern refer to base-layer frames only


def packetize_vp8(frame: bytes, *, pid: int, long_pid: bool, tl0: int, tid: int, y: bool, keyidx: int) -> list[bytes]:
    """RFC 7741 §4.2 descriptor with I, L, T and K on every packet, 120-byte fragments."""
    fields = bytes([0x80 | (pid >> 8), pid & 0xFF]) if long_pid else bytes([pid])
    fields += bytes([tl0, (tid << 6) | (0x20 if y else 0) | keyidx])
    return [
        bytes([0x90 if pos == 0 else 0x80, 0xF0]) + fields + frame[pos : pos + 120]
        for pos in range(0, len(frame), 120)
    ]


def test_vp8_temporal_filter_and_switches_real_encoder(monkeypatch) -> None:
    monkeypatch.setattr(rtp_munger.random, "getrandbits", lambda bits: (1 << bits) - 2)
    ticks = 48
    sizes = {0: (320, 240), 1: (160, 120)}
    keyframes = {0: {0, 28}, 1: {0, 12}}
    raw = {layer: libvpx_temporal_layers(ticks, sizes[layer], keyframes[layer]) for layer in sizes}
    references = {
        layer: dict(zip(range(ticks), decode_all([(f, t * TICKS_PER_FRAME) for t, f in enumerate(raw[layer])])))
        for layer in sizes
    }
    # The encoder really produced the assumed layers: dropping TID 2, or TID >= 1, changes no other picture,
    # and the frames marked Y decode from base-layer frames alone.
    for layer in sizes:
        for top in (0, 1):
            kept = [t for t in range(ticks) if PATTERN[t % 4] <= top]
            pictures = decode_all([(raw[layer][t], t) for t in kept])
            for t, picture in zip(kept, pictures):
                assert np.array_equal(picture.to_ndarray(), references[layer][t].to_ndarray())
        for t in range(ticks):
            if SYNC[t % 4]:
                kept = [k for k in range(t) if PATTERN[k % 4] == 0] + [t]
                last = decode_all([(raw[layer][k], k) for k in kept])[-1]
                assert np.array_equal(last.to_ndarray(), references[layer][t].to_ndarray())

    # The publisher's numbering: layer 0 has 15-bit ids, layer 1 7-bit ids (wrapping at tick 18, while it is
    # forwarded); the viewer's ids wrap at 2**7 while layer 1 is shown and at 2**15 just before layer 0 returns.
    pid = {0: 32_750, 1: 110}
    tl0 = {0: 253, 1: 9}
    keyidx = {0: 30, 1: 3}
    seq = {0: 65_500, 1: 100}
    viewer = Viewer(vp8.Vp8Munger(target_temporal=2), vp8.parse_descriptor)
    for tick in range(ticks):
        if tick == 8:
            viewer.target = 1
        if tick == 16:
            viewer.codec.target_temporal = 0  # the viewer's bandwidth drops: base layer only
        if tick == 24:
            viewer.target = 0
        if tick == 32:
            viewer.codec.target_temporal = 2  # room again: up at the next sync frames
        for layer in sizes:
            tid = PATTERN[tick % 4]
            if tick and tick in keyframes[layer]:
                keyidx[layer] = (keyidx[layer] + 1) & 0x1F  # KEYIDX counts key frames
            if tick and tid == 0:
                tl0[layer] = (tl0[layer] + 1) & 0xFF  # TL0PICIDX counts base-layer frames
            payloads = packetize_vp8(
                raw[layer][tick], pid=pid[layer], long_pid=layer == 0, tl0=tl0[layer], tid=tid,
                y=SYNC[tick % 4], keyidx=keyidx[layer],
            )
            for n, payload in enumerate(payloads):
                now = tick * FRAME_INTERVAL + layer * 0.003 + n * 0.0002
                ts = (tick * TICKS_PER_FRAME + layer * 777_777) & 0xFFFFFFFF
                viewer.on_packet(layer, seq[layer], ts, payload, now, tick)
                seq[layer] = (seq[layer] + 1) & 0xFFFF
            pid[layer] = (pid[layer] + 1) & (0x7FFF if layer == 0 else 0x7F)

    frames = check_viewer_stream(viewer.sent, references, sizes)
    shown = [(f[0].layer, f[0].tick) for f in frames]
    expected = (
        [(0, t) for t in range(13)]
        + [(1, t) for t in (12, 13, 14, 15, 16, 20, 24)]  # target TID 0 from tick 16
        + [(0, t) for t in (28, 32, 34, 36)]  # up to TID 1 at tick 34 (Y), tick 35 (TID 2, no Y) still dropped
        + [(0, t) for t in range(37, 48)]  # up to TID 2 at tick 37 (Y)
    )
    assert shown == expected
    descriptors = [vp8.parse_descriptor(f[0].payload) for f in frames]
    assert [d.m for d in descriptors] == [f[0].layer == 0 for f in frames]  # the input's PictureID width
    pids = [d.picture_id for d in descriptors]
    assert all((b - a) & 0x7F == 1 for a, b in zip(pids, pids[1:]))
    assert pids[:13] == list(range(32_750, 32_763))  # the publisher's ids until the first switch
    assert pids[13:20] == [123, 124, 125, 126, 127, 0, 1]  # 7 bits wide on layer 1, wrapping
    assert pids[20] == 2  # 15 bits wide again: the viewer's counter wrapped at 2**15 meanwhile
    for (da, fa), (db, fb) in zip(zip(descriptors, frames), zip(descriptors[1:], frames[1:])):
        tl0_step = (db.tl0picidx - da.tl0picidx) & 0xFF
        assert tl0_step == (1 if db.tid == 0 else 0), (fa[0].tick, fb[0].tick)
        assert (db.keyidx - da.keyidx) & 0x1F == (1 if db.keyframe else 0)
        if fa[0].layer == fb[0].layer == 0:
            assert (db.picture_id - da.picture_id) & 0x7FFF == 1
    assert any(d.tl0picidx == 0 for d in descriptors)  # TL0PICIDX wrapped
    # Every packet of a frame carries the frame's rewritten fields.
    for frame in frames:
        heads = {p.payload[: vp8.parse_descriptor(p.payload).size][2:] for p in frame}
        assert len(heads) == 1


def test_vp8_rewrite_keeps_payload_when_nothing_changes() -> None:
    payload = b"\x90\xe0\x80\x05\x07\x40" + KEY_HEADER
    munger = vp8.Vp8Munger()
    d = vp8.parse_descriptor(payload)
    assert munger.rewrite(payload, d) is None  # nothing before the first switch
    munger.switch_to(d)
    assert munger.rewrite(payload, d) is payload  # first layer keeps the publisher's values: no copy


def test_vp8_picture_without_id_is_filtered_by_tid() -> None:
    munger = vp8.Vp8Munger(target_temporal=0)
    key = vp8.parse_descriptor(b"\x90\x20\x00" + KEY_HEADER)
    munger.switch_to(key)
    assert munger.rewrite(b"\x90\x20\x00" + KEY_HEADER, key) is not None
    upper = b"\x90\x20\x80" + b"\x01\x02\x03"
    assert munger.rewrite(upper, vp8.parse_descriptor(upper)) is None


# =========================================================================================================
# VP9 (hand-built from RFC 9628 §4.2, no encoder available)
# =========================================================================================================


def vp9_payload(
    *,
    pid: int | None = None,
    long_pid: bool = True,
    p: bool = False,
    b: bool = True,
    e: bool = True,
    flexible: bool = False,
    layer: tuple[int, bool, int, bool] | None = None,  # (TID, U, SID, D)
    tl0: int | None = None,
    p_diffs: tuple[int, ...] = (),
    ss: bytes = b"",
    z: bool = False,
    data: bytes = b"\xa5" * 6,
) -> bytes:
    first = (
        (0x80 if pid is not None else 0) | (0x40 if p else 0) | (0x20 if layer else 0) | (0x10 if flexible else 0)
        | (0x08 if b else 0) | (0x04 if e else 0) | (0x02 if ss else 0) | (0x01 if z else 0)
    )
    out = bytes([first])
    if pid is not None:
        out += bytes([0x80 | (pid >> 8), pid & 0xFF]) if long_pid else bytes([pid])
    if layer:
        tid, u, sid, d = layer
        out += bytes([(tid << 5) | (0x10 if u else 0) | (sid << 1) | (1 if d else 0)])
        if not flexible:
            out += bytes([tl0 or 0])
    for n, diff in enumerate(p_diffs):
        out += bytes([(diff << 1) | (1 if n < len(p_diffs) - 1 else 0)])
    return out + ss + data


def scalability_structure(sizes: list[tuple[int, int]], group: list[tuple[int, bool, tuple[int, ...]]]) -> bytes:
    """RFC 9628 §4.2.1: |N_S|Y|G|-|-|-|, WIDTH/HEIGHT per spatial layer, N_G, |TID|U| R |-|-| + P_DIFFs."""
    out = bytes([((len(sizes) - 1) << 5) | 0x10 | (0x08 if group else 0)])
    for w, h in sizes:
        out += w.to_bytes(2, "big") + h.to_bytes(2, "big")
    if group:
        out += bytes([len(group)])
        for tid, u, diffs in group:
            out += bytes([(tid << 5) | (0x10 if u else 0) | (len(diffs) << 2)]) + bytes(diffs)
    return out


def test_vp9_parse_every_field() -> None:
    group = [(0, False, (4,)), (2, True, (1,)), (1, True, (2,)), (2, True, (1, 3))]
    ss = scalability_structure([(320, 180), (640, 360)], group)
    payload = vp9_payload(pid=0x1234, layer=(0, False, 0, False), tl0=200, ss=ss)
    d = vp9.parse_descriptor(payload)
    assert (d.i, d.p, d.l, d.f, d.b, d.e, d.v, d.z, d.m) == (True, False, True, False, True, True, True, False, True)
    assert (d.picture_id, d.tid, d.u, d.sid, d.d, d.tl0picidx) == (0x1234, 0, False, 0, False, 200)
    assert d.spatial_layers == 2 and d.resolutions == ((320, 180), (640, 360))
    assert d.keyframe and d.size == len(payload) - 6
    assert (d.picture_id_offset, d.tl0picidx_offset) == (1, 4)

    d = vp9.parse_descriptor(
        vp9_payload(
            pid=77, long_pid=False, p=True, flexible=True, layer=(3, True, 2, True), p_diffs=(1, 5, 127), z=True
        )
    )
    assert (d.m, d.picture_id, d.f, d.tid, d.u, d.sid, d.d, d.z) == (False, 77, True, 3, True, 2, True, True)
    assert d.tl0picidx is None and d.p_diffs == (1, 5, 127) and d.p_diff_offset == 3 and not d.keyframe
    assert vp9.temporal_id(d) == 3

    assert vp9.parse_descriptor(vp9_payload(pid=5, layer=(0, False, 1, False), tl0=1)).keyframe is False  # SID 1
    assert vp9.parse_descriptor(vp9_payload(pid=5, b=False)).keyframe is False  # not the frame's start
    assert vp9.parse_descriptor(vp9_payload()).size == 1 and vp9.temporal_id(vp9.parse_descriptor(vp9_payload())) == 0

    four = vp9_payload(pid=1, p=True, flexible=True, layer=(0, False, 0, False), p_diffs=(1, 1, 1, 1))
    assert vp9.parse_descriptor(four) is None  # at most 3 P_DIFFs
    for full in (payload, vp9_payload(pid=9, p=True, flexible=True, layer=(1, False, 0, False), p_diffs=(2, 3))):
        descriptor_size = vp9.parse_descriptor(full).size
        for cut in range(descriptor_size + 1):
            assert vp9.parse_descriptor(full[:cut]) is None, cut


def run_vp9(munger: vp9.Vp9Munger, pictures: list[tuple[int, bytes]]) -> list[tuple[int, vp9.Vp9Descriptor]]:
    """Feed (layer, payload) pairs through a viewer that switches at key pictures; (layer, out descriptor)."""
    out = []
    current = None
    for layer, payload in pictures:
        d = vp9.parse_descriptor(payload)
        if layer != current:
            if not d.keyframe:
                continue
            munger.switch_to(d, layer)
            current = layer
        rewritten = munger.rewrite(payload, d)
        if rewritten is not None:
            assert len(rewritten) == len(payload)
            out.append((layer, vp9.parse_descriptor(rewritten)))
    return out


# P_DIFFs per position in the TID 0,2,1,2 pattern: TID 0 refers to the previous TID 0, TID 1 to the TID 0
# before it, the first TID 2 to the TID 0 before it, the second TID 2 to the TID 1 and the TID 0 before it.
VP9_REFS = {0: (4,), 1: (1,), 2: (2,), 3: (1, 3)}


def vp9_layer_pictures(first_pid: int, long_pid: bool, first_tl0: int, count: int, *, key_at=(0,), flexible=False):
    """A non-flexible (or flexible) single-spatial-layer stream in the 4-picture pattern TID 0,2,1,2."""
    pictures = []
    pid, tl0 = first_pid, first_tl0
    mask = 0x7FFF if long_pid else 0x7F
    for n in range(count):
        tid = PATTERN[n % 4]
        key = n in key_at
        if tid == 0 and n:
            tl0 = (tl0 + 1) & 0xFF
        u = tid > 0  # every non-base picture is a switching-up point in this pattern
        diffs = () if key or not flexible else VP9_REFS[n % 4]
        for fragment in range(2):
            pictures.append(
                vp9_payload(
                    pid=pid, long_pid=long_pid, p=not key, b=fragment == 0, e=fragment == 1, flexible=flexible,
                    layer=(tid, u, 0, False), tl0=None if flexible else tl0, p_diffs=diffs,
                    ss=scalability_structure([(640, 360)], []) if key and fragment == 0 else b"",
                )
            )
        pid = (pid + 1) & mask
    return pictures


def test_vp9_switch_continuity_with_wraps() -> None:
    a = vp9_layer_pictures(32_760, True, 254, 24, key_at=(0, 16))
    b = vp9_layer_pictures(120, False, 7, 24, key_at=(0, 8))
    # Interleave picture by picture: A for 8 pictures, then B (its key picture at 8), then A again at 16.
    stream = []
    for n in range(24):
        for layer, pictures in ((0, a), (1, b)):
            if (layer == 0) == (n < 8 or n >= 16):
                stream += [(layer, p) for p in pictures[2 * n : 2 * n + 2]]
    out = run_vp9(vp9.Vp9Munger(), stream)
    assert len(out) == 48
    pids = [d.picture_id for _, d in out[::2]]
    widths = [d.m for _, d in out[::2]]
    assert widths == [True] * 8 + [False] * 8 + [True] * 8
    assert all((y - x) & 0x7F == 1 for x, y in zip(pids, pids[1:]))
    assert pids[:8] == [(32_760 + n) & 0x7FFF for n in range(8)]  # publisher's ids first, wrapping
    assert all((y - x) & 0x7FFF == 1 for x, y in zip(pids[16:], pids[17:]))
    tl0s = [(d.tl0picidx, d.tid) for _, d in out[::2]]
    for (t0, _), (t1, tid) in zip(tl0s, tl0s[1:]):
        assert (t1 - t0) & 0xFF == (1 if tid == 0 else 0)
    assert any(t == 0 for t, _ in tl0s)  # TL0PICIDX wrapped


def test_vp9_temporal_filter_non_flexible_leaves_gaps() -> None:
    munger = vp9.Vp9Munger(target_temporal=0)
    out = run_vp9(munger, [(0, p) for p in vp9_layer_pictures(100, True, 0, 16)])
    assert [d.tid for _, d in out[::2]] == [0] * 4
    # RFC 9628 §4.2.1 group P_DIFFs are picture id differences: ids keep their spacing in non-flexible mode.
    assert [d.picture_id for _, d in out[::2]] == [100, 104, 108, 112]
    assert [d.tl0picidx for _, d in out[::2]] == [0, 1, 2, 3]


def test_vp9_flexible_mode_closes_gaps_and_rewrites_references() -> None:
    for target in (0, 1, 2):
        stream = vp9_layer_pictures(32_700, True, 0, 40, flexible=True)
        munger = vp9.Vp9Munger(target_temporal=target)
        out = run_vp9(munger, [(0, p) for p in stream])
        kept = [n for n in range(40) if PATTERN[n % 4] <= target]
        pids = [d.picture_id for _, d in out[::2]]
        assert len(pids) == len(kept)
        assert all((y - x) & 0x7FFF == 1 for x, y in zip(pids, pids[1:]))  # no gaps in what is sent
        out_of = dict(zip(kept, pids))
        for (n, (_, d)) in zip(kept, out[::2]):
            refs = VP9_REFS[n % 4] if n else ()
            assert len(d.p_diffs) == len(refs)
            for old, new in zip(refs, d.p_diffs):
                assert (d.picture_id - new) & 0x7FFF == out_of[n - old]  # still the same reference picture


def test_vp9_raising_waits_for_switching_up_point() -> None:
    munger = vp9.Vp9Munger(target_temporal=0)
    pictures = []
    for n in range(12):
        tid = PATTERN[n % 4]
        u = n == 4  # only picture 4 (TID 0) announces a switching-up point
        pictures.append(vp9_payload(pid=n, p=n > 0, layer=(tid, u, 0, False), tl0=n // 4))
    d0 = vp9.parse_descriptor(pictures[0])
    munger.switch_to(d0)
    forwarded = []
    for n, payload in enumerate(pictures):
        if n == 2:
            munger.target_temporal = 2
        if munger.rewrite(payload, vp9.parse_descriptor(payload)) is not None:
            forwarded.append(n)
    assert forwarded == [0, 4, 5, 6, 7, 8, 9, 10, 11]
    assert munger.temporal == 2


def test_vp9_late_and_older_pictures() -> None:
    munger = vp9.Vp9Munger()
    key = vp9_payload(pid=500, layer=(0, False, 0, False), tl0=3)
    munger.switch_to(vp9.parse_descriptor(key))
    before = vp9_payload(pid=499, p=True, layer=(0, False, 0, False), tl0=2)
    assert munger.rewrite(before, vp9.parse_descriptor(before)) is None  # older than the switch point
    assert munger.rewrite(key, vp9.parse_descriptor(key)) is key


def test_vp9_flexible_picture_referring_to_an_unsent_picture_is_refused() -> None:
    munger = vp9.Vp9Munger(target_temporal=1)
    key = vp9_payload(pid=10, flexible=True, layer=(0, False, 0, False))
    munger.switch_to(vp9.parse_descriptor(key))
    assert munger.rewrite(key, vp9.parse_descriptor(key)) is key
    upper = vp9_payload(pid=11, p=True, flexible=True, layer=(2, False, 0, False), p_diffs=(1,))
    assert munger.rewrite(upper, vp9.parse_descriptor(upper)) is None  # TID 2 > target: dropped
    # TID 1 referring to the dropped TID 2 picture (a malformed layering): the viewer could not decode it.
    bad = vp9_payload(pid=12, p=True, flexible=True, layer=(1, False, 0, False), p_diffs=(1,))
    assert munger.rewrite(bad, vp9.parse_descriptor(bad)) is None
    good = vp9_payload(pid=13, p=True, flexible=True, layer=(0, False, 0, False), p_diffs=(3,))
    out = vp9.parse_descriptor(munger.rewrite(good, vp9.parse_descriptor(good)))
    assert out.p_diffs == (1,) and (out.picture_id - 1) & 0x7FFF == 10


def test_vp8_picture_ids_appearing_after_the_switch() -> None:
    munger = vp8.Vp8Munger()
    key = b"\x10" + KEY_HEADER  # no extension at the switch point
    munger.switch_to(vp8.parse_descriptor(key))
    assert munger.rewrite(key, vp8.parse_descriptor(key)) is key
    later = b"\x90\x80\x81\x00\x01"
    assert munger.rewrite(later, vp8.parse_descriptor(later)) is later  # ids start here, as sent
