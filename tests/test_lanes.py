"""C lanes (gateway/_srtp_send.c LaneGroup): an armed viewer gets exactly the bytes the Python path would send.

Two viewers of one track receive the same packets, one through the Python path and one armed in a C lane, each
with its own real libsrtp session; what reaches their sockets is unprotected and compared header by header and
payload by payload (sequence numbers and timestamps relative to each viewer's random start). Then the cases
where a lane must hand a packet back to Python: a packet older than its segment, the lease running out, a NACK,
a layer switch, a closed sender.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session

from gateway import aiortc_adapter as rtc
from gateway.rtp import build_header, parse_rtp
from gateway.sdp import Codec
from gateway.sfu import down_track as down_track_module
from gateway.sfu.down_track import DownTrack
from gateway.sfu.egress import EgressProfile
from gateway.sfu.published_track import PublishedTrack
from simulcast import rtp_munger as rtp_munger_module
from simulcast import vp8
from simulcast.viewer_bandwidth import ViewerBandwidth

pytestmark = pytest.mark.skipif(rtc.LaneGroup is None, reason="the compiled egress path is not built")

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
BODY = os.urandom(900)


def packet(seq: int, ts: int, keyframe: bool = False, marker: bool = False, ssrc: int = 0x1234) -> bytes:
    nal = b"\x65" if keyframe else b"\x41"  # H.264 IDR / non-IDR slice
    return bytes(build_header(marker, 96, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, [(9, b"0")])) + nal + (seq & 0xFFFF).to_bytes(2, "big") + BODY


class Viewer:
    """One viewer's socket and SRTP receive session; its sender (PacketSender on a shared datagram transport)."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        key = os.urandom(30)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sink.setblocking(False)
        profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        policy.allow_repeat_tx = True  # as aiortc's sessions: a NACK without RTX resends the same index
        tx = Session(policy)
        self.rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
        self.sender = rtc.PacketSender.on_transport(transport, self.sink.getsockname(), tx, path="native")

    def received(self) -> list[bytes | None]:
        out = []
        while True:
            try:
                data = self.sink.recv(2048)
            except BlockingIOError:
                return out
            try:
                out.append(self.rx.unprotect(data))
            except pylibsrtp.Error as exc:  # a resend of the same index (a NACK without RTX) is a replay to libsrtp
                assert "replay" in str(exc), exc
                out.append(None)

    def close(self) -> None:
        self.sender.close()
        self.sink.close()


def relative(packets: list[bytes | None]) -> list[tuple]:
    """(marker+pt, seq - first seq, ts - first ts, rest) per packet: comparable across random starts; a replayed
    index is ("replayed",)."""
    first = next((p for p in packets if p is not None), None)
    if first is None:
        return [("replayed",)] * len(packets)
    seq0, ts0 = struct.unpack_from("!HI", first, 2)
    out = []
    for p in packets:
        if p is None:
            out.append(("replayed",))
            continue
        seq, ts = struct.unpack_from("!HI", p, 2)
        out.append((p[1], (seq - seq0) & 0xFFFF, (ts - ts0) & 0xFFFFFFFF, p[12:]))
    return out


def make_track(codec_name: str = "H264", ssrc: int = 0x1234, transport_cc: bool = False) -> PublishedTrack:
    """A single-layer video track of a publisher whose packets carry SSRC `ssrc` (mid extension id 9)."""
    codec = Codec(96, codec_name, 90000, None, {}, ["nack", "nack pli"] + (["transport-cc"] if transport_cc else []))
    track = PublishedTrack(
        kind="video", mid="0", codec=codec, rtx_payload_type=None, extensions={MID: 9}, feedback=codec.feedback,
        rids=None, history_size=1024, keyframe_interval=1.0, local_ssrc=1, send_rtcp=lambda b: 0,
    )
    track.layers[0].ssrc = ssrc
    return track


def start_downs(track: PublishedTrack, viewers: list[Viewer], *, ssrc_base: int = 0xA000,
                first_transport_seq: int | None = None) -> list[DownTrack]:
    """A viewer forwarded the Python way and one armed in lanes, started on `track`. With `first_transport_seq`
    both negotiate transport-cc, their ViewerBandwidths starting at that transport-wide sequence number (so their
    packets compare byte for byte)."""
    downs = []
    for i, (viewer, lanes) in enumerate(zip(viewers, (False, True))):
        transport_cc_id = 3 if first_transport_seq is not None else None
        profile = EgressProfile(100, None, 1, "0", (), transport_cc_id=transport_cc_id)
        down = DownTrack(track, profile, ssrc=ssrc_base + i, rtx_ssrc=None, cname="c", send_rtp=viewer.sender.send_rtp,
                         send_rtcp=lambda b: 0, native_sender=viewer.sender.native_route if lanes else None)
        if first_transport_seq is not None:
            down.bandwidth = ViewerBandwidth(transport_cc=True)
            down.bandwidth.counters[0] = first_transport_seq
        down.start()
        downs.append(down)
    return downs


@pytest.fixture
async def pair():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    track = make_track()
    viewers = [Viewer(transport), Viewer(transport)]
    downs = start_downs(track, viewers)
    yield track, viewers, downs
    for v in viewers:
        v.close()
    transport.close()


def feed(track: PublishedTrack, packets: list[bytes]) -> None:
    layer = track.layers[0]
    for data in packets:
        track.on_packet(layer, parse_rtp(data), time.monotonic())  # a held keyframe is replayed while < 1 s old


async def drained(viewers: list[Viewer]) -> tuple[list[tuple], list[tuple]]:
    await asyncio.sleep(0.05)
    python_side, lane_side = (relative(v.received()) for v in viewers)
    return python_side, lane_side


async def test_armed_viewer_gets_the_python_paths_bytes(pair) -> None:
    track, viewers, (python_down, lane_down) = pair
    stream = [packet(100 + i, 3000 * (i // 3), keyframe=i < 3, marker=i % 3 == 2) for i in range(300)]
    feed(track, stream)
    assert lane_down.armed_in is not None and python_down.armed_in is None
    python_side, lane_side = await drained(viewers)
    assert len(python_side) == 300
    assert lane_side == python_side
    assert lane_down.packets_sent == python_down.packets_sent == 300
    assert lane_down.octets_sent == python_down.octets_sent
    # The lane moved the munger on: settled, it maps the next packet as the Python viewer's munger does.
    lane_down.settle()
    assert lane_down.armed_in is None
    assert lane_down.munger.lane_state()[3:5] == (399 & 0xFFFF, lane_down.munger.last_seq)
    assert (lane_down.munger.last_seq - python_down.munger.last_seq) & 0xFFFF == (
        lane_down.munger.lane_state()[1] - python_down.munger.lane_state()[1]) & 0xFFFF


async def test_reordering_lease_and_sequence_wrap(pair, monkeypatch) -> None:
    monkeypatch.setattr(down_track_module, "LANE_LEASE", 7)  # the lane hands back every 7 packets
    track, viewers, (python_down, lane_down) = pair
    seqs = list(range(65500, 65600))  # the publisher's sequence number wraps
    seqs[10], seqs[11] = seqs[11], seqs[10]  # reordered inside the segment
    stream = [packet(s, 90 * i, keyframe=i == 0) for i, s in enumerate(seqs)]
    stream.insert(50, packet(65400, 0))  # older than the lane's segment start: Python's _map_older drops it
    layer = track.layers[0]
    changes = []
    lane_changed = track.lane_changed
    monkeypatch.setattr(track, "lane_changed", lambda down: (changes.append(down), lane_changed(down)))
    for data in stream:  # the unarmed viewers the track keeps track of are always exactly the unarmed ones
        feed(track, [data])
        assert track._python_subscribers(layer) == tuple(d for d in layer.subscribers if d.armed_in is None)
    assert len(changes) >= 20 and set(changes) == {lane_down}  # each lease ran out: left the lane, armed again
    python_side, lane_side = await drained(viewers)
    assert len(python_side) == 100
    assert lane_side == python_side
    assert lane_down.packets_sent == python_down.packets_sent == 100


async def test_nack_settles_the_lane(pair) -> None:
    track, viewers, (python_down, lane_down) = pair
    feed(track, [packet(1000 + i, 90 * i, keyframe=i == 0) for i in range(40)])
    assert lane_down.armed_in is not None
    await asyncio.sleep(0.05)
    raw = [v.received() for v in viewers]
    assert relative(raw[0]) == relative(raw[1]) and len(raw[0]) == 40
    # Each viewer NACKs the 30th packet it received (its own sequence numbers): both resend the same packet.
    for down, got in zip((python_down, lane_down), raw):
        down.on_nack([struct.unpack_from("!H", got[29], 2)[0]])
    assert lane_down.armed_in is None  # on_nack took the lane's state back (unmap needs the newest outgoing seq)
    assert lane_down.retransmissions == python_down.retransmissions == 1
    feed(track, [packet(1040 + i, 90 * (40 + i)) for i in range(20)])
    assert lane_down.armed_in is not None  # armed again by the next packet
    python_side, lane_side = await drained(viewers)
    assert lane_side == python_side and len(python_side) == 21 and python_side[0] == ("replayed",)


async def test_closed_sender_hands_back_to_python(pair) -> None:
    track, viewers, (python_down, lane_down) = pair
    feed(track, [packet(5 + i, 90 * i, keyframe=i == 0) for i in range(10)])
    group = lane_down.armed_in
    assert group is not None and len(group) == 1
    viewers[1].sender.close()  # what PeerTransport.close does; the next send re-routes (on_transport: same pair)
    feed(track, [packet(15 + i, 90 * (10 + i)) for i in range(10)])
    assert len(group) == 1  # it left before the first packet after the close and was armed again on a new route
    python_side, lane_side = await drained(viewers)
    assert lane_side == python_side and len(lane_side) == 20
    lane_down.stop()
    assert len(group) == 0 and lane_down.armed_in is None


async def test_late_joiner_armed_after_keyframe_replay(pair, monkeypatch) -> None:
    """start() replays the held keyframe run through forward() and arms the lane once, after the last packet (not
    after each one, with a settle before the next: two lane changes per replayed packet), and the lane goes on
    from the replay's state."""
    track, viewers, _ = pair
    feed(track, [packet(200 + i, 3000 * (i // 5), keyframe=i < 5, marker=i % 5 == 4) for i in range(12)])
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    late = [Viewer(transport), Viewer(transport)]
    lane_changes = []
    lane_changed = track.lane_changed
    monkeypatch.setattr(track, "lane_changed", lambda down: (lane_changes.append(down.armed_in), lane_changed(down)))
    downs = start_downs(track, late, ssrc_base=0xB000)  # start() replays what was held since the keyframe (12 packets)
    assert downs[1].armed_in is not None
    assert lane_changes == [downs[1].armed_in], f"{len(lane_changes)} lane changes for one replay"
    feed(track, [packet(212 + i, 3000 * ((12 + i) // 5)) for i in range(30)])
    python_side, lane_side = await drained(late)
    assert len(python_side) == 42 and lane_side == python_side
    assert downs[1].packets_sent == 42
    for v in late:
        v.close()
    transport.close()


async def test_a_packet_the_lanes_refuse_leaves_nobody_stale(pair) -> None:
    """An RTP packet longer than 1,500 bytes: LaneGroup.send raises, every lane goes back to Python (which refuses
    it as well: counted as forward_error); the next packet reaches both viewers alike, and the lane is armed again."""
    track, viewers, (python_down, lane_down) = pair
    feed(track, [packet(7 + i, 90 * i, keyframe=i == 0) for i in range(10)])
    assert lane_down.armed_in is not None
    oversized = bytes(build_header(False, 96, 17, 900, 0x1234, [(9, b"0")])) + b"\x41" + os.urandom(1500)
    feed(track, [oversized])
    assert lane_down.armed_in is None and len(track.down_tracks) == 2
    feed(track, [packet(18 + i, 90 * (11 + i)) for i in range(5)])
    assert lane_down.armed_in is not None
    python_side, lane_side = await drained(viewers)
    assert lane_side == python_side and len(lane_side) == 15
    assert lane_down.packets_sent == python_down.packets_sent == 15


# ---- transport-cc viewers (browsers): transport-wide seq, send log and pacer on the lane ----------------------

@pytest.fixture
async def twcc_pair():
    """Two transport-cc viewers (one Python, one lane), their ViewerBandwidths starting at the same
    transport-wide sequence number so their packets compare byte for byte."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    track = make_track(transport_cc=True)
    viewers = [Viewer(transport), Viewer(transport)]
    downs = start_downs(track, viewers, first_transport_seq=65000)  # the transport-wide seq wraps during the tests
    yield track, viewers, downs
    for down in downs:
        down.bandwidth.close()
    for v in viewers:
        v.close()
    transport.close()


async def drained_pacers(downs: list[DownTrack], viewers: list[Viewer]) -> tuple[list[tuple], list[tuple]]:
    for _ in range(300):  # bounded: at most 3 s for the pacers' timers to send what they hold
        if all(d.bandwidth.pacer.queued_packets == 0 for d in downs):
            break
        await asyncio.sleep(0.01)
    assert all(d.bandwidth.pacer.queued_packets == 0 for d in downs)
    return await drained(viewers)


def transport_seq(packet: bytes) -> int:
    """The transport-wide sequence number: the first one-byte extension element (id 3, 2 bytes) after BEDE."""
    assert packet[12:14] == b"\xbe\xde" and packet[16] == (3 << 4) | 1
    return struct.unpack_from("!H", packet, 17)[0]


def rows_as_packets(side: list[tuple]) -> list[bytes]:
    """relative() rows back to header-less packets with a dummy 12-byte header, for transport_seq()."""
    return [bytes(12) + row[3] for row in side]


async def test_transport_cc_lane_stamps_logs_and_paces_like_python(twcc_pair) -> None:
    track, viewers, (python_down, lane_down) = twcc_pair
    for down in (python_down, lane_down):
        # An estimate of 20 Mbit/s: the first keyframe's switch paces at 1.2x (24 Mbit/s, ViewerBandwidth.on_switch),
        # and the burst below still outruns that.
        estimator = down.bandwidth.estimator
        estimator._delay_bps = estimator._loss_bps = 20_000_000.0
        down.bandwidth._pace()
    stream = [packet(100 + i, 3000 * (i // 3), keyframe=i < 3, marker=i % 3 == 2) for i in range(300)]
    feed(track, stream)
    assert lane_down.armed_in is not None and lane_down._lane_counts()[0] > 0  # the lane sent part of them
    python_side, lane_side = await drained_pacers([python_down, lane_down], viewers)
    assert len(python_side) == 300
    assert lane_side == python_side  # headers, transport-wide seqs (wrapping at 65536) and payloads
    assert lane_down.packets_sent == python_down.packets_sent == 300
    assert lane_down.octets_sent == python_down.octets_sent
    # Both send logs hold every packet with its size on the wire, sent within the last second.
    now = time.monotonic_ns() // 1000
    for seq in range(65000, 65000 + 300):
        python_entry, lane_entry = python_down.bandwidth.log.lookup(seq & 0xFFFF), lane_down.bandwidth.log.lookup(seq & 0xFFFF)
        assert python_entry is not None and lane_entry is not None, seq
        assert lane_entry[1] == python_entry[1] == 12 + 4 + 8 + 1 + 2 + 900 + 10  # header, extension block, NAL + seq + body, tag
        assert now - 1_000_000 < lane_entry[0] <= now and lane_entry[2] is None
    assert lane_down.bandwidth.next_seq() == python_down.bandwidth.next_seq() == (65000 + 300) & 0xFFFF


async def test_the_pacer_holds_back_what_the_lane_would_send(twcc_pair) -> None:
    """At 2.5 Mbit/s pacing (a 1.5 kB burst) most of a 20-packet burst must wait in the pacer: the lane defers it
    there and stays armed; the pacer's timer sends it at its rate, stamped in order."""
    track, viewers, (python_down, lane_down) = twcc_pair
    feed(track, [packet(100 + i, 90 * i, keyframe=i == 0) for i in range(3)])
    await drained_pacers([python_down, lane_down], viewers)
    assert lane_down.armed_in is not None
    sent_by_lane = lane_down._lane_counts()[0]
    started = time.monotonic()
    feed(track, [packet(103 + i, 90 * (3 + i)) for i in range(20)])
    assert lane_down.armed_in is not None
    assert lane_down.bandwidth.pacer.queued_packets >= 15
    assert lane_down.bandwidth.pacer.queued_packets == python_down.bandwidth.pacer.queued_packets
    assert lane_down._lane_counts()[0] - sent_by_lane <= 2
    python_side, lane_side = await drained_pacers([python_down, lane_down], viewers)
    assert time.monotonic() - started > 0.04  # 20 x 962 bytes at 2.5 Mbit/s: about 60 ms
    assert lane_side == python_side and len(lane_side) == 20
    seqs = [transport_seq(p) for p in rows_as_packets(lane_side)]
    assert seqs == [(65003 + i) & 0xFFFF for i in range(20)]


async def test_a_held_pacer_holds_the_lane_too(twcc_pair) -> None:
    """After a capacity drop the viewer's pacer is held (ViewerBandwidth._drain_queue): the lane must send nothing
    either, but defer every packet to the pacer, as the Python path queues them; released, both send the same."""
    track, viewers, (python_down, lane_down) = twcc_pair
    feed(track, [packet(100 + i, 90 * i, keyframe=i == 0) for i in range(3)])
    await drained_pacers([python_down, lane_down], viewers)
    assert lane_down.armed_in is not None
    sent_by_lane = lane_down._lane_counts()[0]
    now = time.monotonic_ns() // 1000
    for down in (python_down, lane_down):
        down.bandwidth.pacer.set_estimate(20_000_000)  # no pacing limit: only the hold keeps them back
        down.bandwidth.pacer.hold(now + 10_000_000)
    feed(track, [packet(103 + i, 90 * (3 + i)) for i in range(5)])
    assert lane_down.armed_in is not None and lane_down._lane_counts()[0] == sent_by_lane
    assert lane_down.bandwidth.pacer.queued_packets == python_down.bandwidth.pacer.queued_packets == 5
    await asyncio.sleep(0.05)
    assert lane_down.bandwidth.pacer.queued_packets == 5  # the pacer's timer waits for the hold's end
    for down in (python_down, lane_down):
        down.bandwidth.pacer.release(time.monotonic_ns() // 1000)
        down.bandwidth._drain.cancel()
        down.bandwidth._send_due(asyncio.get_running_loop())
    python_side, lane_side = await drained_pacers([python_down, lane_down], viewers)
    assert lane_side == python_side and len(lane_side) == 5


async def test_a_probe_cluster_sends_the_python_way(twcc_pair) -> None:
    """While a probe cluster sends, every packet must be counted in it (the prober measures the cluster): the
    lane leaves at once and is not armed again until the cluster is over."""
    track, viewers, (python_down, lane_down) = twcc_pair
    feed(track, [packet(100 + i, 90 * i, keyframe=i == 0) for i in range(3)])
    assert lane_down.armed_in is not None
    bandwidth = lane_down.bandwidth
    bandwidth.prober.start(3_000_000, time.monotonic_ns() // 1000)
    bandwidth.counters[1] = 1  # what ViewerBandwidth.select does when it starts a cluster
    cluster = bandwidth.prober.active_cluster
    before = bandwidth.next_seq()
    bandwidth.counters[0] = before  # (next_seq moved it; put it back)
    feed(track, [packet(103 + i, 90 * (3 + i)) for i in range(3)])
    assert lane_down.armed_in is None
    await drained_pacers([python_down, lane_down], viewers)
    assert [bandwidth.log.lookup((before + i) & 0xFFFF)[2] for i in range(3)] == [cluster] * 3
    await asyncio.sleep(0.1)  # past the cluster's 60 ms
    assert bandwidth.padding_needed() == 0 and not bandwidth.probing and bandwidth.counters[1] == 0
    feed(track, [packet(106, 90 * 6)])
    assert lane_down.armed_in is not None


# ---- VP8 viewers: picture id, TL0PICIDX and KEYIDX continued on the lane ----------------------------------------

def vp8_frames(count: int, *, first_pid: int, long_pid: bool, first_tl0: int, keyidx: int) -> list[list[bytes]]:
    """`count` VP8 frames of 3 packets (payloads): TID pattern 0,2,1,2 (Y on the frames that refer to the base
    layer only), TL0PICIDX counting base-layer frames, a key frame first (RFC 7741 §4.2-4.3, RFC 6386 §9.1)."""
    frames = []
    tl0 = first_tl0 - 1
    for n in range(count):
        tid, y = (0, False, 2, True, 1, True, 2, False)[2 * (n % 4): 2 * (n % 4) + 2]
        if tid == 0:
            tl0 += 1
        pid = (first_pid + n) & (0x7FFF if long_pid else 0x7F)
        fields = bytes([0x80 | (pid >> 8), pid & 0xFF]) if long_pid else bytes([pid])
        fields += bytes([tl0 & 0xFF, (tid << 6) | (0x20 if y else 0) | keyidx])
        if n == 0:  # key frame: P=0, start code, 320x180
            vp8_data = bytes([0x50, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xB4, 0x00]) + os.urandom(700)
        else:
            vp8_data = bytes([0x51, 0x00, 0x00]) + os.urandom(707)
        frames.append([bytes([0x90 if i == 0 else 0x80, 0xF0]) + fields + vp8_data[i * 237 : (i + 1) * 237]
                       for i in range(3)])
    return frames


class StepClock:
    """time.monotonic for the mungers (a layer switch advances the timestamp by the time since the last packet):
    moved by the test only, so the Python viewer and the lane switch at the same instant."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def feed_vp8(track: PublishedTrack, frames: list[list[bytes]], first_seq: int, ssrc: int,
             swap: tuple[int, int] | None = None, clock: StepClock | None = None) -> None:
    packets = []
    for n, frame in enumerate(frames):
        for i, payload in enumerate(frame):
            seq = (first_seq + 3 * n + i) & 0xFFFF
            packets.append(bytes(build_header(i == 2, 96, seq, (3000 * n) & 0xFFFFFFFF, ssrc, [(9, b"0")])) + payload)
    if swap is not None:  # packets of two frames interleaved (a late one)
        a, b = swap
        packets[a], packets[b] = packets[b], packets[a]
    layer = track.layers[0]
    for data in packets:
        if clock is not None:
            clock.now += 0.011
        track.on_packet(layer, parse_rtp(data), clock.now if clock is not None else time.monotonic())


@pytest.mark.parametrize("transport_cc", [False, True], ids=["plain", "transport-cc"])
async def test_vp8_lane_continues_picture_ids_like_python(transport_cc: bool, monkeypatch) -> None:
    """Two VP8 viewers, Python and lane, through a publisher change (`rebind`: picture id, TL0PICIDX and KEYIDX
    continue from the previous publisher's, so every packet's descriptor is rewritten), a 15-bit and a 7-bit
    picture id wrap, interleaved frames, then a lower temporal layer (the lane leaves for TID 2 frames). With
    transport-cc the viewers' pacers (at the 1 Mbit/s start: 2.5 Mbit/s) hold most packets back, rewritten."""
    clock = StepClock()
    monkeypatch.setattr(rtp_munger_module, "time", clock)
    monkeypatch.setattr(down_track_module, "time", clock)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    first = make_track("VP8", 0x1111, transport_cc=True)
    second = make_track("VP8", 0x2222, transport_cc=True)
    viewers = [Viewer(transport), Viewer(transport)]
    downs = start_downs(first, viewers, first_transport_seq=7 if transport_cc else None)
    python_down, lane_down = downs
    try:
        feed_vp8(first, vp8_frames(20, first_pid=32_760, long_pid=True, first_tl0=250, keyidx=3), 100, 0x1111, clock=clock)
        assert lane_down.armed_in is not None
        if not transport_cc:
            assert lane_down._lane_counts()[0] > 50
        for down in downs:
            down.rebind(second)  # the next publisher: its own picture ids, 7 bits
        frames = vp8_frames(30, first_pid=100, long_pid=False, first_tl0=17, keyidx=20)
        feed_vp8(second, frames, 5000, 0x2222, swap=(40, 43), clock=clock)
        assert lane_down.armed_in is not None
        lane_count = lane_down._lane_counts()[0]
        if transport_cc:  # most of them wait in the pacers, the lane's rewritten like Python's
            queued = [d.bandwidth.pacer.queued_packets for d in downs]
            assert min(queued) > 100, queued
        for down in downs:
            down.set_temporal_target(1)  # half the frame rate: TID 2 frames are not sent
        assert lane_down.armed_in is None
        feed_vp8(second, vp8_frames(12, first_pid=(100 + 30) & 0x7F, long_pid=False, first_tl0=17 + 15, keyidx=20)[1:],
                 5000 + 90 + 3, 0x2222, clock=clock)  # (without their key frame)
        python_side, lane_side = await drained_pacers(downs, viewers) if transport_cc else await drained(viewers)
        assert len(python_side) == 60 + 90 + 3 * 5  # of the last 11 frames, the 6 of TID 2 are not sent
        assert lane_side == python_side  # headers (transport-wide seq too) and every rewritten descriptor
        assert lane_down.packets_sent == python_down.packets_sent
        # One lane forwarded all but the first of the second publisher's 90 packets (the rewrite ran in C; the
        # interleaved frames did not send it back to Python) ...
        assert lane_count == 89 or transport_cc
        # ... and the ids the viewer saw continue across the publisher change: 15-bit 32760.. -> 7-bit.
        pids = [vp8.parse_descriptor(row[3][12:] if transport_cc else row[3][8:]).picture_id for row in lane_side]
        assert pids[57:63:3] == [(32_760 + 19) & 0x7FFF, (32_760 + 20) & 0x7F]
    finally:
        for down in downs:
            down.stop()
            if down.bandwidth is not None:
                down.bandwidth.close()
        for v in viewers:
            v.close()
        transport.close()
