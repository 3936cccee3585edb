"""Fan-out micro-benchmark: CPU cost of forwarding one RTP packet to one viewer, ours vs a baseline.

Both sides do the real work of a forwarding SFU on this machine: rewrite the header for the viewer, SRTP-protect
with libsrtp (pylibsrtp, AES-CM-128-HMAC-SHA1-80), and send a UDP datagram over loopback (asyncio/uvloop
datagram transport) to a sink socket.

- whipgate: gateway.sfu PublishedTrack.on_packet -> DownTrack.forward, synchronous per incoming packet; once plain
  and once as browsers get it (+TWCC: a transport-wide sequence number stamped and logged for the estimator).
- baseline: what a Python developer would write with aiortc's own classes today: one asyncio task and queue
  per viewer (the shape of aiortc's RTCRtpSender), aiortc.rtp.RtpPacket parse/serialize per viewer.

It prints CPU microseconds per forwarded packet and packets per second per core, side by side. This measures
the fan-out step only (no ICE/DTLS set-up, no ingest); bench/ will grow the full load tool (issue 6).

    python3 bench/fanout.py [--packets 3000] [--viewers 1,10,100,500]
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

from gateway.rtp import build_header, parse_rtp  # noqa: E402
from gateway.sdp import Codec  # noqa: E402
from gateway.sfu.down_track import DownTrack  # noqa: E402
from gateway.sfu.egress import EgressProfile  # noqa: E402
from gateway.sfu.published_track import PublishedTrack  # noqa: E402
from simulcast.viewer_bandwidth import ViewerBandwidth  # noqa: E402

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
PAYLOAD = bytes([0x90, 0x80, 0x05, 0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + os.urandom(1091)  # 1100-byte VP8 keyframe-ish


def srtp_session() -> Session:
    return Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def incoming(n: int) -> list[bytes]:
    return [bytes(build_header(i % 30 == 29, 96, i & 0xFFFF, 3000 * (i // 30), 0x1234, [(9, b"0")])) + PAYLOAD for i in range(n)]


async def open_sink() -> tuple[socket.socket, tuple[str, int], asyncio.DatagramTransport]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return sink, sink.getsockname(), transport


async def run_whipgate(packets: list[bytes], viewers: int, transport_cc: bool = False) -> float:
    sink, addr, transport = await open_sink()
    codec = Codec(96, "VP8", 90000, None, {}, ["nack", "nack pli"])
    track = PublishedTrack(
        kind="video", mid="0", codec=codec, rtx_payload_type=None, extensions={MID: 9}, feedback=codec.feedback,
        rids=None, history_size=1024, keyframe_interval=1.0, local_ssrc=1, send_rtcp=lambda b: 0,
    )
    track.layers[0].ssrc = 0x1234
    for i in range(viewers):
        protect = srtp_session().protect

        def send(data: bytes, protect=protect) -> int:
            out = protect(data)
            transport.sendto(out, addr)
            return len(out)

        profile = EgressProfile(100, None, 1, "0", (), transport_cc_id=3 if transport_cc else None)
        down = DownTrack(track, profile, ssrc=1000 + i, rtx_ssrc=None, cname="b", send_rtp=send, send_rtcp=lambda b: 0)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--viewers", default="1,10,100,500")
    args = parser.parse_args()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    packets = incoming(args.packets)
    print(f"fan-out of {args.packets} x 1112-byte RTP packets, event loop: {loop_name}, python {sys.version.split()[0]}")
    print(f"{'viewers':>8} | {'whipgate us/pkt':>15} {'pkts/s/core':>12} | {'+TWCC us/pkt':>12} {'pkts/s/core':>12} | "
          f"{'baseline us/pkt':>15} {'pkts/s/core':>12} | {'speed-up':>8}")
    for viewers in [int(v) for v in args.viewers.split(",")]:
        ours = await run_whipgate(packets, viewers)
        twcc = await run_whipgate(packets, viewers, transport_cc=True)
        base = await run_baseline(packets, viewers)
        n = args.packets * viewers
        o_us, t_us, b_us = ours / n * 1e6, twcc / n * 1e6, base / n * 1e6
        print(f"{viewers:>8} | {o_us:>15.2f} {1e6 / o_us:>12,.0f} | {t_us:>12.2f} {1e6 / t_us:>12,.0f} | "
              f"{b_us:>15.2f} {1e6 / b_us:>12,.0f} | {b_us / t_us:>7.1f}x")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
