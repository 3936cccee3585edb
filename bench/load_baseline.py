"""The baseline for bench/load.py: the WHIP/WHEP server a Python developer would write today with aiortc.

One `RTCPeerConnection` per publisher and per viewer (aiortc's server example), the publisher's tracks fanned out
with `aiortc.contrib.media.MediaRelay`, served by Litestar + uvicorn (uvloop when installed, like whipgate).

aiortc cannot forward without decoding: its `RTCRtpReceiver` decodes incoming RTP into frames, `MediaRelay`
hands those frames to every subscriber, and each viewer's `RTCRtpSender` encodes them again (H.264 via libx264,
Opus via libopus) at aiortc's own bitrate (1 Mbit/s video by default; these viewers send no REMB). That is
what people deploy with aiortc, and what this baseline measures: decode once + encode per viewer.

    python3 bench/load_baseline.py --listen 127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aioice.ice  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.contrib.media import MediaRelay  # noqa: E402
from litestar import Litestar, Request, Response, delete, get, post  # noqa: E402

SDP = "application/sdp"


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    return ["127.0.0.1"]


# Host candidates on loopback only (aioice would otherwise offer every interface address).
aioice.ice.get_host_addresses = _loopback_addresses


class Streams:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, dict[str, Any]] = {}  # stream -> kind -> publisher's remote track
        self.peers: dict[str, RTCPeerConnection] = {}
        self.ids = itertools.count(1)

    def keep(self, pc: RTCPeerConnection) -> str:
        session = f"s{next(self.ids)}"
        self.peers[session] = pc

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.peers.pop(session, None)
                await pc.close()

        return session


streams = Streams()


async def _answer(pc: RTCPeerConnection, offer: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


@post("/whip/{stream:str}")
async def whip(stream: str, request: Request) -> Response:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks = streams.tracks.setdefault(stream, {})

    @pc.on("track")
    def _track(track: Any) -> None:
        tracks[track.kind] = track

    answer = await _answer(pc, (await request.body()).decode())
    session = streams.keep(pc)
    return Response(answer, status_code=201, media_type=SDP, headers={"Location": f"/whip/{stream}/{session}"})


@post("/whep/{stream:str}")
async def whep(stream: str, request: Request) -> Response:
    tracks = streams.tracks.get(stream)
    if not tracks:
        return Response("no publisher", status_code=409)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=(await request.body()).decode(), type="offer"))
    for track in tracks.values():
        pc.addTrack(streams.relay.subscribe(track))
    await pc.setLocalDescription(await pc.createAnswer())
    session = streams.keep(pc)
    return Response(pc.localDescription.sdp, status_code=201, media_type=SDP,
                    headers={"Location": f"/whep/{stream}/{session}"})


async def _delete(session: str) -> Response:
    pc = streams.peers.pop(session, None)
    if pc is not None:
        await pc.close()
    return Response("", status_code=200)


@delete("/whip/{stream:str}/{session:str}", status_code=200)
async def whip_delete(stream: str, session: str) -> Response:
    return await _delete(session)


@delete("/whep/{stream:str}/{session:str}", status_code=200)
async def whep_delete(stream: str, session: str) -> Response:
    return await _delete(session)


@get("/healthz")
async def healthz() -> str:
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8090")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    logging.basicConfig(level=logging.WARNING)
    import uvicorn

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    app = Litestar(route_handlers=[whip, whep, whip_delete, whep_delete, healthz])
    uvicorn.run(app, host=host, port=int(port), loop=loop, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
