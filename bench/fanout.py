"""Fan-out micro-benchmark: CPU cost of forwarding one RTP packet to one viewer, ours vs a baseline.

Both sides do the real work of a forwarding SFU on this machine: rewrite the header for the viewer, SRTP-protect
with libsrtp (pylibsrtp, AES-CM-128-HMAC-SHA1-80), and send a UDP datagram over loopback (asyncio/uvloop
datagram transport) to a sink socket.

- whipgate: gateway.sfu PublishedTrack.on_packet -> DownTrack.forward, synchronous per incoming packet; once plain
  and once as browsers get it (+TWCC: a transport-wide sequence number stamped and logged for the estimator).
- baseline: what a Python developer would write with aiortc's own classes today: one asyncio task and queue
  per viewer (the shape of aiortc's RTCRtpSender), aiortc.rtp.RtpPacket parse/serialize per viewer.

whipgate's viewers send through gateway.aiortc_adapter.PacketSender (one per viewer, own SRTP session, on the
shared uvloop datagram transport), once per egress path, in the same run (issue #6):
- "pylibsrtp+uvloop": pylibsrtp's Session.protect + the transport's sendto (whipgate before issue #6);
- "python": libsrtp's srtp_protect through pylibsrtp's cffi lib on a reusable buffer + the transport's sendto;
- "fast path": gateway/_srtp_send.c (built by pip install): protect + sendto in one C call.

It prints CPU microseconds per forwarded packet and packets per second per core, side by side. This measures
the fan-out step only (no ingest); bench/load.py is the full load tool.

`--sender` first measures ONE protect+send per call on a real ICE+DTLS-connected pair of transports (loopback,
built with the adapter like the gateway does), each path in turn on the same SRTP session, plus its parts.

    python3 bench/fanout.py [--packets 3000] [--viewers 1,10,100,500] [--sender] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc.rtp import HeaderExtensionsMap, RtpPacket as AiortcRtpPacket  # noqa: E402
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters  # noqa: E402
from pylibsrtp import Policy, Session  # noqa: E402

from gateway import aiortc_adapter as rtc  # noqa: E402
from gateway.rtp import build_header, parse_rtp  # noqa: E402
from gateway.sdp import Codec  # noqa: E402
from gateway.sfu.down_track import DownTrack  # noqa: E402
from gateway.sfu.egress import EgressProfile  # noqa: E402
from gateway.sfu.published_track import PublishedTrack  # noqa: E402
from simulcast.viewer_bandwidth import ViewerBandwidth  # noqa: E402

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
BODY = os.urandom(1100)
PAYLOAD = BODY  # --sender: one protect+send of a 1112-byte packet (12-byte header, no extension)


def vp8_payload(i: int) -> bytes:
    """1100 bytes of VP8 as a browser sends it: RFC 7741 §4.2 descriptor with a 15-bit PictureID, TL0PICIDX and TID
    per frame of 30 packets (S on a frame's first packet), the first frame a key frame (RFC 6386 §9.1 start code)."""
    frame, first = i // 30, i % 30 == 0
    descriptor = bytes([0x90 if first else 0x80, 0xE0, 0x80 | (frame >> 8) & 0x7F, frame & 0xFF, frame & 0xFF, 0x00])
    if first:
        header = bytes([0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0x68, 0x01]) if i == 0 else bytes([0x01, 0, 0])
    else:
        header = b""
    return (descriptor + header + BODY)[:1100]


def srtp_session(profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80) -> Session:
    return Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))


def incoming(n: int, plain: bool = False) -> list[bytes]:
    """n packets of video, 30 per frame: VP8 (as browsers publish), or with `plain` H.264 (an IDR, then non-IDR
    slices)."""
    def payload(i: int) -> bytes:
        return vp8_payload(i) if not plain else (b"\x65" if i == 0 else b"\x41") + BODY[1:]
    return [bytes(build_header(i % 30 == 29, 96, i & 0xFFFF, 3000 * (i // 30), 0x1234, [(9, b"0")])) + payload(i)
            for i in range(n)]


async def open_sink() -> tuple[socket.socket, tuple[str, int], asyncio.DatagramTransport]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return sink, sink.getsockname(), transport


PATHS = {"pylibsrtp": "pylibsrtp+uvloop", "python": "python", "native": "fast path"}
# The fan-out table adds "lanes": the fast path's sender with viewers armed in C lane groups (DownTrack._arm),
# the default in the gateway for viewers of a codec without a VP8/VP9 picture id rewrite (H.264, Opus), with or
# without transport-cc.
FANOUT_PATHS = {**PATHS, "lanes": "C lanes"}


SRTP_PROFILES = {"sha1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80, "gcm": Policy.SRTP_PROFILE_AEAD_AES_128_GCM}


async def run_whipgate(packets: list[bytes], viewers: int, transport_cc: bool = False, path: str = "pylibsrtp",
                       srtp_profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80, codec_name: str = "H264") -> float:
    sink, addr, transport = await open_sink()
    codec = Codec(96, codec_name, 90000, None, {}, ["nack", "nack pli"])
    track = PublishedTrack(
        kind="video", mid="0", codec=codec, rtx_payload_type=None, extensions={MID: 9}, feedback=codec.feedback,
        rids=None, history_size=1024, keyframe_interval=1.0, local_ssrc=1, send_rtcp=lambda b: 0,
    )
    track.layers[0].ssrc = 0x1234
    senders = []
    lanes = path == "lanes"
    for i in range(viewers):
        sender = rtc.PacketSender.on_transport(transport, addr, srtp_session(srtp_profile), path="native" if lanes else path)
        senders.append(sender)
        send = sender.send_rtp
        profile = EgressProfile(100, None, 1, "0", (), transport_cc_id=3 if transport_cc else None)
        down = DownTrack(track, profile, ssrc=1000 + i, rtx_ssrc=None, cname="b", send_rtp=send, send_rtcp=lambda b: 0,
                         native_sender=sender.native_route if lanes else None)
        if transport_cc:
            down.bandwidth = ViewerBandwidth(transport_cc=True)
            # A viewer whose estimate is far above the stream: the pacer's budget check runs per packet, but
            # nothing waits in its queue (a queued packet would leave after the measurement, uncounted).
            down.bandwidth.pacer.set_estimate(10_000_000_000)
        down.start()
    layer = track.layers[0]
    start = time.process_time()
    for data in packets:
        track.on_packet(layer, parse_rtp(data), 0.0)
    cpu = time.process_time() - start
    forwarded = sum(d.packets_sent for d in track.down_tracks)
    assert forwarded >= (len(packets) - 1) * viewers, f"{path}: {forwarded} of {len(packets) * viewers} forwarded"
    for sender in senders:
        sender.close()
    transport.close()
    sink.close()
    return cpu


async def run_baseline(packets: list[bytes], viewers: int) -> float:
    sink, addr, transport = await open_sink()
    ext_in = HeaderExtensionsMap()
    ext_in.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=9, uri=MID)]))
    ext_out = HeaderExtensionsMap()
    ext_out.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=MID)]))
    queues: list[asyncio.Queue] = []
    done = asyncio.Event()
    remaining = [viewers]

    async def viewer_task(index: int, queue: asyncio.Queue) -> None:
        protect = srtp_session().protect
        seq = 0
        while True:
            data = await queue.get()
            if data is None:
                break
            packet = AiortcRtpPacket.parse(data, ext_in)
            packet.ssrc = 1000 + index
            packet.payload_type = 100
            packet.sequence_number = seq
            seq = (seq + 1) & 0xFFFF
            transport.sendto(protect(packet.serialize(ext_out)), addr)
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    tasks = []
    for i in range(viewers):
        q: asyncio.Queue = asyncio.Queue()
        queues.append(q)
        tasks.append(asyncio.create_task(viewer_task(i, q)))
    await asyncio.sleep(0)
    start = time.process_time()
    for data in packets:
        for q in queues:
            q.put_nowait(data)
        await asyncio.sleep(0)  # let the viewer tasks run, as arriving packets would
    for q in queues:
        q.put_nowait(None)
    await done.wait()
    cpu = time.process_time() - start
    transport.close()
    sink.close()
    return cpu


async def connected_pair() -> tuple:
    """Two transports ICE+DTLS-connected on loopback through the adapter, as the gateway builds them."""
    rtc.install_shims()

    async def side():
        gatherer = rtc.RTCIceGatherer(iceServers=[])
        await rtc.gather_host_candidates(gatherer, ["127.0.0.1"])
        ice = rtc.RTCIceTransport(gatherer)
        return gatherer, ice, rtc.RTCDtlsTransport(ice, [rtc.RTCCertificate.generateCertificate()])

    (ga, ia, da), (gb, ib, db) = await side(), await side()
    rtc.set_ice_controlling(ia, True)
    rtc.set_dtls_role(da, "client")
    rtc.set_dtls_role(db, "server")
    for c in gb.getLocalCandidates():
        await ia.addRemoteCandidate(c)
    await ia.addRemoteCandidate(None)
    await asyncio.wait_for(asyncio.gather(ia.start(gb.getLocalParameters()), ib.start(ga.getLocalParameters())), 10)
    await asyncio.wait_for(asyncio.gather(da.start(db.getLocalParameters()), db.start(da.getLocalParameters())), 10)
    return ia, da, ib, db


def timed(function, items: list) -> float:
    """CPU µs per call of `function` over `items`."""
    start = time.process_time()
    for item in items:
        function(item)
    return (time.process_time() - start) / len(items) * 1e6


async def run_sender(count: int, rounds: int) -> None:
    """µs per ONE protect+send on a real connected pair, each path in turn on one SRTP session (same SSRC, the
    sequence number running on), `rounds` times; and the parts of the pylibsrtp+uvloop path."""
    # The peer reads only between cells, so of each cell it gets what fits its receive buffer: the first packets.
    # Cells of at most 30,000 keep the jump between them below 2^15, which RFC 3711 §3.3.1's index estimate needs.
    count = min(count, 30000)
    ia, da, ib, db = await connected_pair()
    received = [0]
    failed: list[str] = []
    demux = rtc.demultiplex(ib, lambda data, t: received.__setitem__(0, received[0] + 1), lambda data: None,
                            failed.append)
    demux.start_media(db)  # the peer unprotects what arrives between rounds (not timed)
    paths = [p for p in PATHS if p != "native" or rtc.EGRESS_PATH == "native"]
    senders = {p: rtc.PacketSender(ia, da, path=p) for p in paths}
    seq = [0]
    sent = [0]

    def batch() -> list[bytes]:
        out = [bytes(build_header(False, 96, (seq[0] + i) & 0xFFFF, 0, 0x5151, [])) + PAYLOAD for i in range(count)]
        seq[0] += count
        return out

    def protect_batch() -> list[bytes]:  # for the other session: must not move the pair's sequence numbers
        return [bytes(build_header(False, 96, i & 0xFFFF, 0, 0x5151, [])) + PAYLOAD for i in range(count)]

    # The parts, on their own: pylibsrtp's protect (own session) and the datagram transport's sendto.
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    # The SRTP profile aiortc negotiated, from the tag length: 16 = AEAD_AES_128_GCM (RFC 7714), 10 = SHA1_80.
    tag = senders[paths[0]].send_rtp(batch()[0]) - 12 - len(PAYLOAD)
    profile = Policy.SRTP_PROFILE_AEAD_AES_128_GCM if tag == 16 else Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    sent[0] += 1
    wire = bytes(len(PAYLOAD) + 12 + tag)
    columns = [PATHS[p] for p in paths] + ["Session.protect", "uvloop sendto", "socket.sendto"]
    print(f"one protect+send of a {12 + len(PAYLOAD)}-byte RTP packet, CPU us per call ({count} calls per cell, "
          f"real ICE+DTLS pair on loopback, SRTP {'AEAD_AES_128_GCM' if tag == 16 else 'AES_CM_128_HMAC_SHA1_80'} "
          "as aiortc negotiated)")
    print(" | ".join(f"{c:>16}" for c in ["round"] + columns))
    results: dict[str, list[float]] = {c: [] for c in columns}
    for r in range(rounds):
        order = paths if r % 2 == 0 else paths[::-1]
        for p in order:
            results[PATHS[p]].append(timed(senders[p].send_rtp, batch()))
            sent[0] += count
            await asyncio.sleep(0.05)  # let the peer read (and unprotect) what arrived
        protect = srtp_session(profile).protect
        results["Session.protect"].append(timed(protect, protect_batch()))
        results["uvloop sendto"].append(timed(lambda d: transport.sendto(d, sink.getsockname()), [wire] * count))

        def raw_send(d: bytes) -> None:
            try:
                raw.sendto(d, sink.getsockname())
            except BlockingIOError:
                pass
        results["socket.sendto"].append(timed(raw_send, [wire] * count))
        print(" | ".join([f"{r + 1:>16}"] + [f"{results[c][-1]:>16.2f}" for c in columns]))
    print(" | ".join([f"{'min':>16}"] + [f"{min(results[c]):>16.2f}" for c in columns]))
    print(" | ".join([f"{'max':>16}"] + [f"{max(results[c]):>16.2f}" for c in columns]))
    await asyncio.sleep(0.2)
    assert not failed, f"the peer could not unprotect {len(failed)} packets: {set(failed)}"
    print(f"the peer authenticated {received[0]} of {sent[0]} path packets, none failed "
          f"(the rest: loopback receive buffer overflow while the sender loop held the event loop)\n")
    for sender in senders.values():
        sender.close()
    transport.close()
    sink.close()
    raw.close()
    for t in (da, db):
        await t.stop()
    for t in (ia, ib):
        await t.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--viewers", default="1,10,100,500")
    parser.add_argument("--sender", action="store_true", help="first time one protect+send per path on a real pair")
    parser.add_argument("--sender-calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of --sender / runs of the fan-out table")
    parser.add_argument("--no-fanout", action="store_true")
    parser.add_argument("--srtp", choices=list(SRTP_PROFILES), default="sha1_80",
                        help="whipgate viewers' SRTP profile in the fan-out table (the baseline keeps sha1_80)")
    parser.add_argument("--viewers-kind", choices=["twcc", "twcc-h264", "plain"], default="twcc",
                        help="twcc: VP8 viewers with a transport-wide seq stamped, logged and paced (browsers watching "
                             "a browser); twcc-h264: the same for H.264 (browsers watching OBS / FFmpeg); plain: H.264 "
                             "viewers without transport-cc (players, relays, bench/load.py's viewers). H.264 viewers "
                             "ride the C lanes: the table gets a 'C lanes' column")
    args = parser.parse_args()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"event loop: {loop_name}, python {sys.version.split()[0]}, default egress path: {rtc.EGRESS_PATH}")
    if args.sender:
        await run_sender(args.sender_calls, max(args.repeat, 3))
    if args.no_fanout:
        return
    twcc = args.viewers_kind != "plain"
    vp8 = args.viewers_kind == "twcc"
    paths = [p for p in FANOUT_PATHS if p in ("pylibsrtp", "python") or rtc.EGRESS_PATH == "native"]
    packets = incoming(args.packets, plain=not vp8)
    kind = {"twcc": "+TWCC VP8 (browsers watching a browser)", "twcc-h264": "+TWCC H.264 (browsers watching OBS/FFmpeg)",
            "plain": "plain H.264 (no transport-cc)"}[args.viewers_kind]
    print(f"fan-out of {args.packets} x {len(packets[0])}-byte RTP packets, CPU us per packet per viewer, {kind}, SRTP {args.srtp}")
    head = [f"{('+TWCC ' if twcc else '') + FANOUT_PATHS[p]:>22}" for p in paths]
    print(f"{'run':>3} {'viewers':>7} | {' | '.join(head)} | {'pkts/s/core':>11} | {'before/fast':>11} | "
          f"{'baseline':>8} | {'baseline/fast':>13}")
    for run in range(args.repeat):
        for viewers in [int(v) for v in args.viewers.split(",")]:
            n = args.packets * viewers
            us = {}
            for p in (paths if run % 2 == 0 else paths[::-1]):
                us[p] = await run_whipgate(packets, viewers, twcc, p, SRTP_PROFILES[args.srtp],
                                           "VP8" if vp8 else "H264") / n * 1e6
            base = await run_baseline(packets, viewers) / n * 1e6
            fast = us[paths[-1]]
            cells = " | ".join(f"{us[p]:>22.2f}" for p in paths)
            print(f"{run + 1:>3} {viewers:>7} | {cells} | {1e6 / fast:>11,.0f} | {us['pylibsrtp'] / fast:>10.2f}x | "
                  f"{base:>8.2f} | {base / fast:>12.1f}x")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
