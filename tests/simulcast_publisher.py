"""A WHIP simulcast publisher for tests: real VP8 encodings of numbered pictures at several sizes, one per rid.

aiortc cannot send simulcast, so this client is built from whipgate's own offerer pieces (gateway/sdp.py
write_offer, gateway/transport.py PeerTransport as ICE controlling agent) and aiortc's VP8 encoder: the offer
has `a=rid:<r> send` per layer and `a=simulcast:send` (RFC 8853 §5.1), every packet carries the mid and
rtp-stream-id extensions (RFC 8852), each layer has its own SSRC, and a PLI/FIR for a layer's SSRC makes that
layer's next picture a keyframe. Pictures carry the frame number `clients.read_frame_number` reads.
"""

from __future__ import annotations

import asyncio
import fractions
import random
import time
from typing import Optional
from urllib.parse import urljoin

import httpx
from aiortc.codecs.vpx import Vp8Encoder

from clients import SyntheticVideoTrack
from gateway.rtcp import FullIntraRequest, PictureLossIndication, parse_or_count
from gateway.rtp import build_header
from gateway.sdp import EXT_MID, EXT_RID, Codec, OfferMediaSpec, parse_offer, write_offer
from gateway.transport import PeerTransport

DEFAULT_LAYERS = (("q", 160, 120, 150_000), ("h", 320, 240, 400_000), ("f", 640, 480, 1_000_000))
PAYLOAD_TYPE = 96
MID_ID, RID_ID = 1, 2


class _Layer:
    def __init__(self, rid: str, width: int, height: int, bitrate: int, fps: int) -> None:
        self.rid = rid
        self.size = (width, height)
        self.pictures = SyntheticVideoTrack(width, height, fps)
        self.encoder = Vp8Encoder()
        self.encoder.target_bitrate = bitrate
        self.ssrc = random.getrandbits(32) or 1
        self.seq = random.getrandbits(15)  # below 2**15 like libwebrtc: the SRTP receiver starts its ROC at 0 (RFC 3711 §3.3.1)
        self.keyframe_wanted = True
        self.keyframe_requests = 0


class SimulcastPublisher:
    def __init__(self, base_url: str, stream: str, layers=DEFAULT_LAYERS, fps: int = 15, token: Optional[str] = None) -> None:
        self.endpoint = f"{base_url}/whip/{stream}"
        self.fps = fps
        self.token = token
        self.layers = [_Layer(rid, w, h, rate, fps) for rid, w, h, rate in layers]
        self._by_ssrc = {layer.ssrc: layer for layer in self.layers}
        self.frames_sent = 0
        self.location: Optional[str] = None
        self._connected = asyncio.Event()
        self.transport = PeerTransport(
            addresses=["127.0.0.1"],
            announced_ip=None,
            consent_interval=0.5,
            consent_failures=6,
            on_rtp=lambda data, arrival: None,
            on_rtcp=self._on_rtcp,
            on_connected=self._connected.set,
            on_closed=lambda reason: None,
        )
        self.transport.set_offerer()  # ICE controlling from before the offer leaves (RFC 8445 §6.1.1)
        self._task: Optional[asyncio.Task[None]] = None
        self._http = httpx.AsyncClient(trust_env=False, timeout=10)

    async def start(self, timeout: float = 10.0) -> None:
        await self.transport.gather()
        rids = [layer.rid for layer in self.layers]
        candidates = self.transport.local_candidates()
        media = OfferMediaSpec(
            "video", "0", "sendonly",
            [Codec(PAYLOAD_TYPE, "VP8", 90000, None, {}, ["nack", "nack pli", "ccm fir"])],
            [(MID_ID, EXT_MID), (RID_ID, EXT_RID)],
            [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)],
        )
        offer = write_offer(
            [media], ice_ufrag=self.transport.ice_ufrag, ice_pwd=self.transport.ice_pwd,
            fingerprint=self.transport.fingerprint, candidates=[c.sdp() for c in candidates],
            address=candidates[0].ip, port=candidates[0].port,
        )
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = await self._http.post(self.endpoint, content=offer.encode(), headers=headers)
        assert response.status_code == 201, f"WHIP POST answered {response.status_code}: {response.text}"
        self.location = urljoin(self.endpoint, response.headers["location"])
        answer = parse_offer(response.text)
        assert "a=simulcast:recv " + ";".join(rids) in response.text, response.text
        self.transport.start(
            remote_ufrag=answer.ice_ufrag, remote_pwd=answer.ice_pwd, fingerprints=answer.fingerprints,
            dtls_role="server" if answer.setup == "active" else "client",  # RFC 8842 §5.3
            candidates=answer.candidates, end_of_candidates=answer.end_of_candidates, timeout=timeout,
        )
        async with asyncio.timeout(timeout):
            await self._connected.wait()
        self._task = asyncio.create_task(self._send_loop())

    def _on_rtcp(self, data: bytes) -> None:
        for packet in parse_or_count(data):
            ssrcs = []
            if isinstance(packet, PictureLossIndication):
                ssrcs = [packet.media_ssrc]
            elif isinstance(packet, FullIntraRequest):
                ssrcs = [ssrc for ssrc, _ in packet.entries]
            for ssrc in ssrcs:
                layer = self._by_ssrc.get(ssrc)
                if layer is not None:
                    layer.keyframe_wanted = True
                    layer.keyframe_requests += 1

    async def _send_loop(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            for layer in self.layers:
                frame = layer.pictures._draw(n)
                frame.pts = n * 90000 // self.fps
                frame.time_base = fractions.Fraction(1, 90000)
                keyframe, layer.keyframe_wanted = layer.keyframe_wanted, False
                payloads, timestamp = layer.encoder.encode(frame, keyframe)
                extensions = [(MID_ID, b"0"), (RID_ID, layer.rid.encode())]
                for i, payload in enumerate(payloads):
                    layer.seq = (layer.seq + 1) & 0xFFFF
                    header = build_header(i == len(payloads) - 1, PAYLOAD_TYPE, layer.seq, timestamp, layer.ssrc, extensions)
                    self.transport.send_rtp(bytes(header) + payload)
            n += 1
            self.frames_sent = n
            delay = start + n / self.fps - time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    async def stop(self, delete: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if delete and self.location:
            try:
                await self._http.delete(self.location)
            except httpx.HTTPError:
                pass
            self.location = None
        await self.transport.close("test publisher stopped")
        if not self._http.is_closed:
            await self._http.aclose()
