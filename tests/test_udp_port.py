"""rtc.udp_port: every session's ICE, DTLS and SRTP on ONE UDP port (operators open one port), real components.

An aiortc publisher and three viewers against a gateway process with a fixed udp_port: every answer offers that
port only, all decode, sessions ending and starting again keep working, and a datagram from a sender that never
did an ICE check with us is dropped and counted.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from clients import get_metric, loopback_only
from test_media import STREAM, assert_live_numbered_frames, start_publisher, start_viewer, stop_all

DROPPED = "whipgate_dropped_total"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def candidate_ports(sdp: str) -> set[int]:
    ports = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            ports.add(int(line.split()[5]))
    return ports


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_every_session_shares_one_udp_port(gateway_factory, codec: str) -> None:
    """With H.264 the viewers' video and audio are forwarded by C lanes, whose datagrams to viewers on one socket
    leave in one sendmmsg per packet; with VP8 the audio is."""
    port = free_udp_port()
    gw = gateway_factory({"rtc": {"udp_port": port}})
    clients: list = []
    try:
        with loopback_only():
            pub = await start_publisher(gw, clients, video_codec=codec, width=640, height=480, fps=30)
            viewers = [await start_viewer(gw, clients) for _ in range(3)]
            await asyncio.gather(*(v.wait_frames(30, timeout=20) for v in viewers))
            await asyncio.gather(*(v.wait_audio(25, timeout=10) for v in viewers))
            for v in viewers:
                assert_live_numbered_frames(v, pub, (640, 480))
                assert v.audio_peak_rms > 0.02, f"audio decoded as silence (rms {v.audio_peak_rms})"
            answers = [pub.response.text] + [v.response.text for v in viewers]
            assert all(candidate_ports(sdp) == {port} for sdp in answers), [candidate_ports(sdp) for sdp in answers]

            # A viewer leaves and another joins on the same port: the port outlives its sessions.
            await viewers[0].stop()
            clients.remove(viewers[0])
            late = await start_viewer(gw, clients)
            await late.wait_frames(20, timeout=20)
            assert candidate_ports(late.response.text) == {port}
            assert_live_numbered_frames(late, pub, (640, 480))

            # Somebody who never did an ICE check with us: dropped and counted, nobody's media disturbed.
            before = await get_metric(gw.base_url, DROPPED, 'reason="udp_port_unknown_sender"')
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                for _ in range(5):
                    stranger.sendto(b"\x80\x60" + bytes(40), ("127.0.0.1", port))
            await asyncio.sleep(0.3)
            after = await get_metric(gw.base_url, DROPPED, 'reason="udp_port_unknown_sender"')
            assert after - before == 5
            frames = late.frames
            await late.wait_frames(frames + 20, timeout=10)
    finally:
        await stop_all(clients)
    assert gw.codec_violations() == ""
