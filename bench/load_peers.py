"""Cheap real WebRTC peers for bench/load.py: ICE + DTLS from aiortc/aioice, media handled by hand.

A `RawPeer` is one ICE transport (aioice, host candidates on 127.0.0.1) and one DTLS-SRTP transport (aiortc)
with no RTCPeerConnection, no RTCRtpSender/Receiver and no codec. Many of them live in one asyncio process.

- `Publisher` replays a pre-encoded clip (bench/load_media.py): RTP headers packed here, SRTP protect and
  `sendto` on the nominated candidate pair (gateway.aiortc_adapter.PacketSender). Every video payload's send
  time (perf_counter and CLOCK_REALTIME, taken right before the protect + sendto) is kept by payload hash, which
  is how viewers measure the latency through the server.
- `Viewer` counts what arrives without decrypting it: the RTP header is in the clear in SRTP (RFC 3711 §3.1:
  the header is authenticated, not encrypted), so sequence numbers give loss. It unprotects every packet until
  its first complete keyframe (time to first frame), then one packet in `SAMPLE_EVERY` to check content
  (authentication passes, the payload is one the publisher sent) and to sample latency.
  Two receive paths: with a `Drain` (bench/load_drain.py, the default in bench/load.py) the socket is read and
  counted in C (bench/viewer_drain.c) and only STUN, the media before the first keyframe and the samples reach
  Python, the samples with their kernel receive time; without one (`--python-viewers`) every datagram goes
  through `on_datagram` in Python.

aiortc/aioice private names used here (bench is tooling, not the gateway; the gateway keeps its own in
gateway/aiortc_adapter.py, some of whose helpers are reused here):
- aioice `Connection.ice_controlling` set through `RTCIceTransport._connection` (the offerer controls, RFC 8445
  §6.1.1; RTCPeerConnection does the same internally);
- aioice `Connection.data_received` replaced per viewer instance once DTLS is up, so SRTP datagrams reach the
  viewer synchronously instead of aiortc's queue + unprotect-everything loop;
- aioice `Connection._queue`: datagrams that arrived between the end of the DTLS handshake and the switch above;
- aioice `Connection._protocols` and `StunProtocol.transport` (C viewers: the socket moves to the drain, aioice
  sends through a `SendOnlyTransport`);
- `RTCDtlsTransport._rx_srtp` (the viewer's SRTP receive session, for the sampled unprotects).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import urljoin

import httpx
import pylibsrtp
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
from aiortc.sdp import SessionDescription, candidate_to_sdp

from bench.load_media import VIDEO_CLOCK, OPUS_CLOCK, Clip, one_byte_extensions, payload_key, rtp_packet
from gateway.aiortc_adapter import (
    PacketSender,
    gather_host_candidates,
    hook_packets,
    set_dtls_role,
    stop_aioice_consent,
)
from gateway.rtcp import build_sender_report

if TYPE_CHECKING:
    from bench.load_drain import Drain

LOOPBACK = "127.0.0.1"
H264_PT = 102
OPUS_PT = 111
SAMPLE_EVERY = 50
EXT_MID = 1
EXT_RID = 2
URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_TRANSPORT_CC = 3
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
H264_FMTP = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)

_certificate: Optional[RTCCertificate] = None


def shared_certificate() -> RTCCertificate:
    """One DTLS certificate for every bench peer: key generation is not what we measure."""
    global _certificate
    if _certificate is None:
        _certificate = RTCCertificate.generateCertificate()
    return _certificate


SRTP_ERRORS: dict[str, int] = {}  # unprotect failures by libsrtp's message, over the whole run


class PeerFailed(RuntimeError):
    pass


class RawPeer:
    def __init__(self) -> None:
        self.gatherer = RTCIceGatherer(iceServers=[])
        self.ice = RTCIceTransport(self.gatherer)
        self.ice._connection.ice_controlling = True  # we send the offer (RFC 8445 §6.1.1)
        self.dtls = RTCDtlsTransport(self.ice, [shared_certificate()])
        self.location: Optional[str] = None
        self.answer: Optional[SessionDescription] = None

    async def gather(self) -> None:
        await gather_host_candidates(self.gatherer, [LOOPBACK])

    def transport_lines(self) -> list[str]:
        params = self.gatherer.getLocalParameters()
        fingerprint = self.dtls.getLocalParameters().fingerprints[-1]
        lines = [f"a=candidate:{candidate_to_sdp(c)}" for c in self.gatherer.getLocalCandidates()]
        return lines + [
            "a=end-of-candidates",
            f"a=ice-ufrag:{params.usernameFragment}",
            f"a=ice-pwd:{params.password}",
            f"a=fingerprint:{fingerprint.algorithm} {fingerprint.value}",
            "a=setup:actpass",
        ]

    async def negotiate(self, http: httpx.AsyncClient, url: str, offer: str) -> None:
        response = await http.post(url, content=offer.encode(), headers={"Content-Type": "application/sdp"})
        if response.status_code != 201:
            raise PeerFailed(f"POST {url} -> {response.status_code}: {response.text[:300]}")
        self.location = urljoin(url, response.headers.get("location", ""))
        self.answer = answer = SessionDescription.parse(response.text)
        media = answer.media[0]
        ice_params = media.ice or answer.ice  # type: ignore[attr-defined]
        dtls_params = media.dtls or answer.dtls  # type: ignore[attr-defined]
        for candidate in media.ice_candidates:
            if candidate.ip.startswith("127."):
                await self.ice.addRemoteCandidate(candidate)
        await self.ice.addRemoteCandidate(None)
        # a=setup in the answer: passive = the answerer is the DTLS server, so we are the client (RFC 8842 §5.1).
        set_dtls_role(self.dtls, "client" if dtls_params.role in ("server", "auto") else "server")
        await self.ice.start(ice_params)
        if self.ice.state != "completed":
            raise PeerFailed(f"ICE {self.ice.state}")
        await self.dtls.start(dtls_params)
        if self.dtls.state != "connected":
            raise PeerFailed(f"DTLS {self.dtls.state}")
        # aioice's own consent checks (RFC 7675) send one request and give up after 0.5 s, and close the
        # connection after six misses in a row; when the load core is busy (joins of hundreds of viewers),
        # this process answers late and the *bench* would kill its own publisher. The server still checks
        # consent towards these peers, which they answer.
        stop_aioice_consent(self.ice)

    async def close(self, http: Optional[httpx.AsyncClient] = None) -> None:
        if http is not None and self.location:
            try:
                await http.delete(self.location)
            except httpx.HTTPError:
                pass
        await self.dtls.stop()
        await self.ice.stop()


def _session_lines() -> list[str]:
    return ["v=0", f"o=- {secrets.randbits(62)} 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
            "a=msid-semantic:WMS *"]


def _media_head(kind: str, pt: int, mid: str, direction: str, transport: list[str]) -> list[str]:
    return [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", *transport,
            f"a=mid:{mid}", f"a={direction}", "a=rtcp-mux"]


def viewer_offer(transport: list[str], transport_cc: bool = False) -> str:
    """recvonly Opus + H.264 (packetization-mode 1), bundled; no RTX. It sends no feedback, so the server sends the
    top (only) layer as it is. With `transport_cc` it negotiates transport-wide congestion control as browsers do
    (the extension on both m-lines, `transport-cc` feedback): the server then stamps, logs and paces everything it
    sends it, and with no feedback ever coming its estimate stays at its start (1 Mbit/s: paced at 2.5 Mbit/s)."""
    twcc_ext = [f"a=extmap:{EXT_TRANSPORT_CC} {URI_TRANSPORT_CC}"] if transport_cc else []
    lines = _session_lines()
    lines += _media_head("audio", OPUS_PT, "0", "recvonly", transport)
    lines += [f"a=extmap:{EXT_MID} {URI_MID}", *twcc_ext, f"a=rtpmap:{OPUS_PT} opus/48000/2",
              *([f"a=rtcp-fb:{OPUS_PT} transport-cc"] if transport_cc else []),
              f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1"]
    lines += _media_head("video", H264_PT, "1", "recvonly", transport)
    lines += ["a=rtcp-rsize", f"a=extmap:{EXT_MID} {URI_MID}", *twcc_ext, f"a=rtpmap:{H264_PT} H264/90000",
              f"a=rtcp-fb:{H264_PT} nack", f"a=rtcp-fb:{H264_PT} nack pli",
              *([f"a=rtcp-fb:{H264_PT} transport-cc"] if transport_cc else []), f"a=fmtp:{H264_PT} {H264_FMTP}"]
    return "\r\n".join(lines) + "\r\n"


def publisher_offer(transport: list[str], audio_ssrc: int, video_ssrcs: list[int], rids: list[str]) -> str:
    """sendonly Opus + H.264; with `rids`, one video SSRC per RFC 8853 simulcast layer (rid + mid extensions)."""
    cname = secrets.token_hex(8)
    lines = _session_lines()
    lines += _media_head("audio", OPUS_PT, "0", "sendonly", transport)
    lines += [f"a=extmap:{EXT_MID} {URI_MID}", "a=msid:bench audio", f"a=rtpmap:{OPUS_PT} opus/48000/2",
              f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1", f"a=ssrc:{audio_ssrc} cname:{cname}"]
    lines += _media_head("video", H264_PT, "1", "sendonly", transport)
    lines += ["a=rtcp-rsize", f"a=extmap:{EXT_MID} {URI_MID}"]
    if rids:
        lines += [f"a=extmap:{EXT_RID} {URI_RID}"]
    lines += ["a=msid:bench video", f"a=rtpmap:{H264_PT} H264/90000", f"a=rtcp-fb:{H264_PT} nack",
              f"a=rtcp-fb:{H264_PT} nack pli", f"a=fmtp:{H264_PT} {H264_FMTP}"]
    if rids:
        lines += [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)]
    else:
        lines += [f"a=ssrc:{video_ssrcs[0]} cname:{cname}"]
    return "\r\n".join(lines) + "\r\n"


# ------------------------------------------------------------------------------------------------------------
# Publisher


@dataclass
class VideoLayer:
    clip: Clip
    ssrc: int
    rid: Optional[str]
    seq: int = field(default_factory=lambda: secrets.randbits(16))
    ts0: int = field(default_factory=lambda: secrets.randbits(32))


class Publisher:
    """Replays pre-encoded H.264 layers + Opus at their real frame rates and remembers when each video payload left
    (`sent_at`, by payload hash). By default a whole access unit leaves per frame tick, like an unpaced encoder
    (FFmpeg's WHIP muxer); with `pace_factor` the video leaves paced at that factor x the layers' total bitrate, as
    libwebrtc's pacer sends (browsers: 2.5, GCC §4), so a keyframe is spread over tens of milliseconds."""

    def __init__(self, layers: list[Clip], audio: Clip, rids: Optional[list[str]] = None,
                 pace_factor: float = 0.0) -> None:
        self.peer = RawPeer()
        total_kbps = sum(c.video_kbps for c in layers)
        self.pace_bytes_per_s = pace_factor * total_kbps * 1000 / 8 if pace_factor > 0 else 0.0
        self.rids = rids or []
        self.layers = [VideoLayer(c, secrets.randbits(32) or 1, rid) for c, rid in
                       zip(layers, self.rids or [None] * len(layers))]
        self.audio_clip = audio
        self.audio_ssrc = secrets.randbits(32) or 1
        self.audio_seq = secrets.randbits(16)
        self.audio_ts0 = secrets.randbits(32)
        self.sent_at: dict[bytes, tuple[float, float]] = {}  # payload hash -> (perf_counter, time.time) at send
        self.video_packets_sent = 0
        self.audio_packets_sent = 0
        self.keyframe_requests = 0
        self.keyframes_sent = 0
        self.unsent = 0  # packets PacketSender could not send (no nominated pair / transport closing)
        self._keyframe_wanted = False
        self._sender: Optional[PacketSender] = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, http: httpx.AsyncClient, url: str) -> None:
        await self.peer.gather()
        offer = publisher_offer(self.peer.transport_lines(), self.audio_ssrc, [l.ssrc for l in self.layers], self.rids)
        hook_packets(self.peer.dtls, lambda data, arrival: None, self._on_rtcp)
        await self.peer.negotiate(http, url, offer)
        self._sender = PacketSender(self.peer.ice, self.peer.dtls)
        self._tasks = [asyncio.ensure_future(self._run_video()), asyncio.ensure_future(self._run_audio()),
                       asyncio.ensure_future(self._run_sender_reports())]

    def _on_rtcp(self, data: bytes) -> None:
        """PLI (RFC 4585 §6.3.1) or FIR (RFC 5104 §4.3.1) from the server: start a new GOP at the next frame."""
        pos = 0
        while pos + 4 <= len(data):
            fmt, pt = data[pos] & 0x1F, data[pos + 1]
            if pt == 206 and fmt in (1, 4):
                self.keyframe_requests += 1
                self._keyframe_wanted = True
            pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])

    def _extensions(self, mid: str, rid: Optional[str]) -> bytes:
        if not self.rids:
            return b""
        items = [(EXT_MID, mid.encode())]
        if rid is not None:
            items.append((EXT_RID, rid.encode()))
        return one_byte_extensions(items)

    async def _run_video(self) -> None:
        fps = self.layers[0].clip.fps
        frames = len(self.layers[0].clip.video)
        keyframes = [i for i, f in enumerate(self.layers[0].clip.video) if f.keyframe]
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0  # frame clock
        position = 0  # frame of the clip to send next
        send = self._sender.send_rtp  # type: ignore[union-attr]
        sent_at = self.sent_at
        perf = time.perf_counter
        wall = time.time
        exts = {layer.ssrc: self._extensions("1", layer.rid) for layer in self.layers}
        pace = self.pace_bytes_per_s
        paced_until = 0.0  # loop time the pacer's last packet finished leaving
        while True:
            if self._keyframe_wanted:
                # Answer the request like an encoder would: the next frame sent is a keyframe (the clip skips
                # ahead to its next GOP start, so the bitstream stays valid). Every layer has its GOPs aligned.
                self._keyframe_wanted = False
                loop_start, index = position - position % frames, position % frames
                if not self.layers[0].clip.video[index].keyframe:
                    position = loop_start + next((k for k in keyframes if k > index), frames)
            if self.layers[0].clip.video[position % frames].keyframe:
                self.keyframes_sent += 1
            for layer in self.layers:
                frame = layer.clip.video[position % frames]
                ts = layer.ts0 + n * VIDEO_CLOCK // fps
                ext = exts[layer.ssrc]
                last = len(frame.payloads) - 1
                for i, payload in enumerate(frame.payloads):
                    packet = rtp_packet(H264_PT, layer.seq, ts, layer.ssrc, i == last, payload, ext)
                    layer.seq += 1
                    if pace:
                        now = loop.time()
                        if paced_until > now + 0.001:
                            await asyncio.sleep(paced_until - now)
                        paced_until = max(paced_until, now) + len(packet) / pace
                    sent_at[payload_key(payload)] = (perf(), wall())
                    if not send(packet):
                        self.unsent += 1
                    self.video_packets_sent += 1
            n += 1
            position += 1
            await asyncio.sleep(max(0.0, start + n / fps - loop.time()))

    async def _run_audio(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        packets = self.audio_clip.audio
        send = self._sender.send_rtp  # type: ignore[union-attr]
        ext = self._extensions("0", None)
        while True:
            payload = packets[n % len(packets)].payloads[0]
            send(rtp_packet(OPUS_PT, self.audio_seq, self.audio_ts0 + n * OPUS_CLOCK // 50, self.audio_ssrc,
                            False, payload, ext))
            self.audio_seq += 1
            self.audio_packets_sent += 1
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    async def _run_sender_reports(self) -> None:
        """SR (RFC 3550 §6.4.1) on every video SSRC each second and on the audio SSRC every 5 s, as libwebrtc sends
        them (its default RTCP intervals for video and audio): the gateway translates each one for every viewer of
        the layer, so a publisher without reports would leave that fan-out out of the figures."""
        send = self._sender.send_rtcp  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        start = loop.time()
        fps = self.layers[0].clip.fps
        tick = 0
        while True:
            await asyncio.sleep(max(0.0, start + tick + 1 - loop.time()))
            tick += 1
            elapsed = loop.time() - start
            ntp = int((time.time() + NTP_EPOCH_OFFSET) * (1 << 32))
            counts = (self.video_packets_sent & 0xFFFFFFFF, (self.video_packets_sent * 1000) & 0xFFFFFFFF)
            for layer in self.layers:
                send(build_sender_report(layer.ssrc, ntp, layer.ts0 + int(elapsed * fps) * VIDEO_CLOCK // fps,
                                         *counts))
            if tick % 5 == 0:
                send(build_sender_report(self.audio_ssrc, ntp, self.audio_ts0 + int(elapsed * OPUS_CLOCK),
                                         self.audio_packets_sent & 0xFFFFFFFF,
                                         (self.audio_packets_sent * 100) & 0xFFFFFFFF))

    def trouble(self) -> str:
        """Why the publisher might not be delivering, for the step's note ('' when all is well)."""
        problems = []
        if self.peer.ice.state != "completed" or self.peer.dtls.state != "connected":
            problems.append(f"publisher ICE {self.peer.ice.state} DTLS {self.peer.dtls.state}")
        if self.unsent:
            problems.append(f"publisher could not send {self.unsent} packets")
        if any(t.done() for t in self._tasks):
            problems.append("publisher send loop ended")
        return "; ".join(problems)

    async def close(self, http: httpx.AsyncClient) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peer.close(http)


# ------------------------------------------------------------------------------------------------------------
# Viewer


class SsrcCount:
    __slots__ = ("received", "highest", "cycles", "base", "video", "frames")

    def __init__(self, seq: int, video: bool) -> None:
        self.video = video
        self.frames = 0  # packets with the marker bit: the last packet of each video frame (RFC 6184 §5.1)
        self.received = 0
        self.highest = seq  # extended highest sequence number (RFC 3550 §A.1)
        self.cycles = 0
        self.base = seq


def _rtp_payload(packet: bytes) -> bytes:
    """Payload of a decrypted RTP packet: after CSRCs and the header extension, without padding."""
    cc = packet[0] & 0x0F
    offset = 12 + 4 * cc
    if packet[0] & 0x10:
        (words,) = struct.unpack_from("!H", packet, offset + 2)
        offset += 4 + 4 * words
    end = len(packet)
    if packet[0] & 0x20:
        end -= packet[-1]
    return packet[offset:end]


def h264_keyframe_start(payload: bytes) -> bool:
    """Does this RTP payload start an IDR picture or carry its parameter sets? (RFC 6184 §5.6-5.8)"""
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 28 and len(payload) > 1:  # FU-A: start bit and the fragmented NAL's type
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    if nal == 24:  # STAP-A: any aggregated IDR/SPS
        i = 1
        while i + 2 < len(payload):
            (size,) = struct.unpack_from("!H", payload, i)
            if payload[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
    return False


def take_queued(connection: object, handler: Callable[[bytes, int], None]) -> None:
    """Hand what aioice queued for aiortc's receive loop (which has not run yet) to `handler`, in order."""
    queue = connection._queue  # type: ignore[attr-defined]
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            handler(*item)


class Viewer:
    """One WHEP viewer: counts SRTP packets by reading their clear RTP headers (in C with a `Drain`, else here)."""

    def __init__(self, sent_at: dict[bytes, tuple[float, float]], video_pt: int = H264_PT,
                 drain: Optional["Drain"] = None, transport_cc: bool = False) -> None:
        self.peer = RawPeer()
        self.transport_cc = transport_cc
        self.sent_at = sent_at
        self.video_pt = video_pt
        self.drain = drain
        self.slot: Optional[int] = None
        self.counts: dict[int, SsrcCount] = {}
        self.packets = 0
        self.post_at = 0.0
        self.first_frame_at: Optional[float] = None
        self.latencies: list[float] = []  # publisher send -> this process's Python handling (perf_counter), s
        self.kernel_latencies: list[float] = []  # publisher send -> kernel receive on this socket (C viewers), s
        self.verified = 0
        self.unknown_payloads = 0
        self.auth_failures = 0
        self.rtcp_packets = 0
        self.rtcp_ssrc = secrets.randbits(32) or 1  # the SSRC of the feedback it sends
        self.feedback_unsent = 0
        self._feedback_sender: Optional[PacketSender] = None
        self._unprotect: Optional[Callable[[bytes], bytes]] = None
        self._keyframe_ts: Optional[int] = None
        self._keyframe_next_seq = 0
        self._stun_protocol = None

    async def start(self, http: httpx.AsyncClient, url: str) -> None:
        await self.peer.gather()
        offer = viewer_offer(self.peer.transport_lines(), self.transport_cc)
        self.post_at = time.perf_counter()
        await self.peer.negotiate(http, url, offer)
        self._unprotect = self.peer.dtls._rx_srtp.unprotect
        # From here on, datagrams of this connection come straight to on_datagram (STUN is still handled by
        # aioice). What arrived since the handshake ended (e.g. the server's replay of a held keyframe) is
        # still queued for aiortc's receive loop, which has not run yet: take it first.
        connection = self.peer.ice._connection
        if self.drain is not None:
            self._switch_to_drain(connection)
            return
        connection.data_received = self.on_datagram
        take_queued(connection, self.on_datagram)

    def _switch_to_drain(self, connection) -> None:
        """Move the socket from aioice's uvloop transport to the C drain (see bench/load_drain.py). Synchronous:
        nothing is read by anyone else between the steps."""
        from bench.load_drain import SendOnlyTransport

        drain = self.drain
        assert drain is not None
        self.slot = slot = drain.attach(self, self.video_pt, EXT_TRANSPORT_CC if self.transport_cc else 0)
        connection.data_received = self._on_aioice_datagram
        take_queued(connection, self._on_aioice_datagram)
        (protocol,) = connection._protocols  # one host candidate on 127.0.0.1
        self._stun_protocol = protocol
        transport = protocol.transport
        fd = os.dup(transport.get_extra_info("socket").fileno())
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        transport.set_protocol(asyncio.DatagramProtocol())  # its connection_lost must not reach aioice
        transport.close()  # uvloop stops polling and closes its fd; our dup keeps the socket

        def closed() -> None:
            drain.detach(slot)
            sock.close()
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)  # ends aioice's protocol.close()

        protocol.transport = SendOnlyTransport(sock, closed)
        drain.read_socket(slot, fd)
        self._feedback_sender = PacketSender(self.peer.ice, self.peer.dtls)

    def send_feedback(self, packet: bytes) -> None:
        """An RTCP packet the drain built (transport-wide feedback): SRTCP-protected and sent to the gateway."""
        if self._feedback_sender is None or not self._feedback_sender.send_rtcp(packet):
            self.feedback_unsent += 1

    def _on_aioice_datagram(self, data: bytes, component: int) -> None:
        """A non-STUN datagram aioice read before its transport closed: counted by the same C code."""
        kind = self.drain.process(self.slot, data)  # type: ignore[union-attr]
        if kind > 0:
            self.on_passed(kind, data, 0)

    def on_stun(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._stun_protocol is not None:
            self._stun_protocol.datagram_received(data, addr)

    def on_passed(self, kind: int, data: bytes, rx_ns: int) -> None:
        """A datagram the C drain hands back: 1 = media before the first keyframe, 2 = a sample."""
        if kind == 1:
            self._watch_first_keyframe(data, (data[2] << 8) | data[3])
            if self.first_frame_at is not None:
                self.drain.states[self.slot].pass_media = 0  # type: ignore[union-attr]
        else:
            self._sample(data, data[1] & 0x7F == self.video_pt, rx_ns)

    def on_datagram(self, data: bytes, component: int) -> None:
        if not 127 < data[0] < 192 or len(data) < 12:
            return  # DTLS after the handshake (e.g. close_notify): not counted
        pt_byte = data[1]
        if 192 <= pt_byte <= 223:  # RTCP (RFC 5761 §4): sender reports, BYE
            self.rtcp_packets += 1
            return
        seq = (data[2] << 8) | data[3]
        ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
        count = self.counts.get(ssrc)
        if count is None:
            count = self.counts[ssrc] = SsrcCount(seq, pt_byte & 0x7F == self.video_pt)
        count.received += 1
        if pt_byte & 0x80:
            count.frames += 1
        low = count.highest & 0xFFFF
        delta = (seq - low) & 0xFFFF
        if delta < 0x8000:
            if seq < low:
                count.cycles += 0x10000
            count.highest = count.cycles | seq
        self.packets += 1
        if self.first_frame_at is None:
            if pt_byte & 0x7F == self.video_pt:
                self._watch_first_keyframe(data, seq)
        elif self.packets % SAMPLE_EVERY == 0:
            self._sample(data, pt_byte & 0x7F == self.video_pt)

    def _decrypt(self, data: bytes) -> Optional[bytes]:
        try:
            return self._unprotect(data)  # type: ignore[misc]
        except pylibsrtp.Error as exc:
            # libsrtp's status in the message: 7 = authentication failed, 9/10 = replayed (a duplicate or a
            # packet older than the replay window): only the former means a corrupt packet.
            self.auth_failures += 1
            SRTP_ERRORS[str(exc)] = SRTP_ERRORS.get(str(exc), 0) + 1
            if os.environ.get("WHIPGATE_LOAD_DEBUG"):
                ssrc = int.from_bytes(data[8:12], "big")
                count = self.counts.get(ssrc)
                print("srtp fail", str(exc), "pt", data[1] & 0x7F, "m", data[1] >> 7, "seq", int.from_bytes(data[2:4], "big"),
                      "len", len(data), "ssrc", hex(ssrc), "highest", count.highest if count else None,
                      "received", count.received if count else None, "first_frame", self.first_frame_at is not None, flush=True)
            return None

    def _sample(self, data: bytes, video: bool, rx_ns: int = 0) -> None:
        now = time.perf_counter()
        packet = self._decrypt(data)
        if packet is None or not video:
            return
        sent = self.sent_at.get(payload_key(_rtp_payload(packet)))
        if sent is None:
            self.unknown_payloads += 1
            return
        self.verified += 1
        self.latencies.append(now - sent[0])
        if rx_ns:
            self.kernel_latencies.append(rx_ns / 1e9 - sent[1])

    def _watch_first_keyframe(self, data: bytes, seq: int) -> None:
        """First complete keyframe: an IDR start, then every packet of that timestamp up to the marker."""
        packet = self._decrypt(data)
        if packet is None:
            return
        ts = struct.unpack_from("!I", packet, 4)[0]
        payload = _rtp_payload(packet)
        if self._keyframe_ts is None or ts != self._keyframe_ts:
            if not (payload and h264_keyframe_start(payload)):
                self._keyframe_ts = None
                return
            self._keyframe_ts = ts
        elif seq != self._keyframe_next_seq:
            self._keyframe_ts = None  # a gap inside the keyframe: wait for the next one
            return
        self._keyframe_next_seq = (seq + 1) & 0xFFFF
        if packet[1] & 0x80:
            self.first_frame_at = time.perf_counter()

    def _ssrc_counts(self) -> list[tuple[int, int, int, bool, int]]:
        """(ssrc, received, extended highest seq, video, frames) per SSRC, from C or from this object."""
        if self.slot is not None:
            state = self.drain.states[self.slot]  # type: ignore[union-attr]
            return [(c.ssrc, c.received, c.highest, bool(c.video), c.frames)
                    for c in (state.ssrcs[i] for i in range(state.nssrc))]
        return [(ssrc, c.received, c.highest, c.video, c.frames) for ssrc, c in self.counts.items()]

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return {ssrc: (received, highest) for ssrc, received, highest, _, _ in self._ssrc_counts()}

    def video_received(self) -> tuple[int, int]:
        """(video packets, video frames ended by a marker) received so far."""
        video = [(received, frames) for _, received, _, is_video, frames in self._ssrc_counts() if is_video]
        return sum(r for r, _ in video), sum(f for _, f in video)

    @property
    def time_to_first_frame(self) -> Optional[float]:
        return None if self.first_frame_at is None else self.first_frame_at - self.post_at

    async def close(self, http: Optional[httpx.AsyncClient]) -> None:
        if self._feedback_sender is not None:
            self._feedback_sender.close()
        await self.peer.close(http)


def loss_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(expected, received) over a window, from two snapshots; SSRCs first seen inside the window are skipped."""
    expected = received = 0
    for ssrc, (recv_after, high_after) in after.items():
        if ssrc not in before:
            continue
        recv_before, high_before = before[ssrc]
        expected += high_after - high_before
        received += recv_after - recv_before
    return expected, received


def raise_fd_limit(wanted: int = 65536) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat, field 2):
    how much of the window another process had the core."""
    total = 0
    for stat in pathlib.Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def udp_receive_buffer_errors() -> int:
    """Machine-wide UDP datagrams dropped because a socket's receive buffer was full (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["RcvbufErrors"])


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

