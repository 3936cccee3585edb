"""Real WebRTC test clients (aiortc) that talk WHIP / WHEP to the gateway over HTTP.

* `WhipPublisher` encodes and sends synthetic but real media: VP8 or H.264 video whose frames carry a
  machine-readable frame number (a row of black/white cells at the top), plus an Opus-encoded tone.
* `WhepViewer` receives, decodes and counts what the gateway forwards, reading back the frame numbers so a
  test can tell live, in-order pictures from anything else.

Network hygiene: every peer connection is built with `RTCConfiguration(iceServers=[])` (aiortc's default is
a public STUN host), host candidates are restricted to 127.0.0.1 while gathering (`loopback_only()`), remote
candidates outside 127.0.0.0/8 are removed from answers before aiortc sees them (and recorded in
`foreign_candidates`), and the HTTP client ignores proxy environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import logging
import math
import time
from collections import Counter
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urljoin

import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

LOOPBACK = "127.0.0.1"
SDP = "application/sdp"

# --------------------------------------------------------------------------------------------------------
# Network hygiene
# --------------------------------------------------------------------------------------------------------

_loopback_depth = 0
_original_get_host_addresses: Optional[Callable[..., list[str]]] = None


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    return [LOOPBACK] if use_ipv4 else []


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Make aioice gather host candidates on 127.0.0.1 only (re-entrant, safe for concurrent clients)."""
    global _loopback_depth, _original_get_host_addresses
    import aioice.ice

    if _loopback_depth == 0:
        _original_get_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _loopback_addresses
    _loopback_depth += 1
    try:
        yield
    finally:
        _loopback_depth -= 1
        if _loopback_depth == 0 and _original_get_host_addresses is not None:
            aioice.ice.get_host_addresses = _original_get_host_addresses
            _original_get_host_addresses = None


class _DecodeFailures(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "failed to decode" in message:
            self.sink.append(message)


@contextlib.contextmanager
def decode_failures() -> Iterator[list[str]]:
    """Collect aiortc's "failed to decode" warnings raised in this process (i.e. by our viewers' decoders)
    while the block runs. A correct forwarder never hands a viewer undecodable data (loopback loses nothing
    NACK cannot repair), so tests expect this list to stay empty."""
    found: list[str] = []
    handler = _DecodeFailures(found)
    logger = logging.getLogger("aiortc.rtcrtpreceiver")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def new_peer_connection(bundle_policy: RTCBundlePolicy = RTCBundlePolicy.MAX_BUNDLE) -> RTCPeerConnection:
    """No ICE servers at all (aiortc's default is a public STUN host); max-bundle like WHIP clients should
    (RFC 9725 section 4.2): one transport, one UDP port, for every m-section."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=bundle_policy))


def http_client(timeout: float = 10.0) -> httpx.AsyncClient:
    # trust_env=False: never route the test's requests through an HTTP(S)_PROXY from the environment.
    return httpx.AsyncClient(timeout=timeout, trust_env=False)


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False  # hostnames, mDNS names: not provably loopback


def candidate_addresses(sdp: str) -> list[str]:
    """Connection addresses of every `a=candidate` line in an SDP."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) >= 5:
                out.append(parts[4])
    return out


def keep_loopback_candidates(sdp: str) -> tuple[str, list[str]]:
    """Drop remote candidates outside 127.0.0.0/8; return the new SDP and the dropped candidate lines."""
    kept, dropped = [], []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 5 or not _is_loopback(parts[4]):
                dropped.append(line)
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", dropped


# --------------------------------------------------------------------------------------------------------
# Synthetic media with a readable frame number
# --------------------------------------------------------------------------------------------------------

MARK_CELLS = 32  # cells across the top stripe: 4 sync + 24 counter bits + 4 checksum bits
MARK_SYNC = (1, 0, 1, 0)
MARK_BITS = 24


def _mark_bits(number: int) -> list[int]:
    bits = [(number >> (MARK_BITS - 1 - i)) & 1 for i in range(MARK_BITS)]
    check = sum(bits) & 0xF
    return list(MARK_SYNC) + bits + [(check >> (3 - i)) & 1 for i in range(4)]


def mark_stripe_height(height: int) -> int:
    return max(16, (height // 24) & ~1)


def read_frame_number(frame: VideoFrame) -> Optional[int]:
    """Decode the frame number drawn by `SyntheticVideoTrack`, or None if the stripe is not readable."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12"):
        frame = frame.reformat(format="yuv420p")
    w, h = frame.width, frame.height
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
    stripe = mark_stripe_height(h)
    cell = w // MARK_CELLS
    if cell < 4:
        return None
    rows = luma[stripe // 4 : stripe - stripe // 4]
    bits = []
    for i in range(MARK_CELLS):
        value = rows[:, i * cell + cell // 4 : (i + 1) * cell - cell // 4].mean()
        if 40 < value < 215:  # neither clearly black nor clearly white
            return None
        bits.append(1 if value >= 128 else 0)
    if tuple(bits[:4]) != MARK_SYNC:
        return None
    counter = bits[4 : 4 + MARK_BITS]
    check = int("".join(map(str, bits[4 + MARK_BITS :])), 2)
    if sum(counter) & 0xF != check:
        return None
    return int("".join(map(str, counter)), 2)


class SyntheticVideoTrack(MediaStreamTrack):
    """Changing 4:2:0 pictures at a fixed size and rate: a moving bar over a gradient, hue drifting over time,
    and the frame number written as black/white cells across the top stripe."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("width and height must be even for 4:2:0")
        self.width, self.height, self.fps = width, height, fps
        self.frames_sent = 0
        self._start: Optional[float] = None
        self._clock = 90000
        gx = np.linspace(40, 200, width, dtype=np.float32)
        gy = np.linspace(0, 40, height, dtype=np.float32)[:, None]
        self._background = (gx[None, :] + gy).astype(np.uint8)
        self._stripe = mark_stripe_height(height)
        self._cell = width // MARK_CELLS

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.frames_sent
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + n / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = self._draw(n)
        frame.pts = int(n * self._clock / self.fps)
        frame.time_base = fractions.Fraction(1, self._clock)
        self.frames_sent += 1
        return frame

    def _draw(self, n: int) -> VideoFrame:
        w, h = self.width, self.height
        y = self._background.copy()
        bar_w = max(8, w // 16)
        x0 = (n * max(2, w // 80)) % (w - bar_w)
        y[:, x0 : x0 + bar_w] = 235
        # a second, vertical mover so consecutive frames differ everywhere
        y0 = (n * max(2, h // 60)) % (h - bar_w)
        y[y0 : y0 + bar_w // 2, :] = 16
        y[: self._stripe, :] = 0
        for i, bit in enumerate(_mark_bits(n)):
            if bit:
                y[: self._stripe, i * self._cell : (i + 1) * self._cell] = 255
        u = np.full((h // 2, w // 2), int(128 + 60 * math.sin(n / 20)), np.uint8)
        v = np.full((h // 2, w // 2), int(128 + 60 * math.cos(n / 27)), np.uint8)
        u[: self._stripe // 2, :] = 128
        v[: self._stripe // 2, :] = 128
        frame = VideoFrame(width=w, height=h, format="yuv420p")
        for plane, data in zip(frame.planes, (y, u, v)):
            rows, cols = data.shape
            buf = np.zeros((rows, plane.line_size), np.uint8)
            buf[:, :cols] = data
            plane.update(buf.tobytes())
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """48 kHz mono s16 tones in 20 ms frames; the pitch steps every half second."""

    kind = "audio"

    def __init__(self, sample_rate: int = 48000, amplitude: float = 0.4) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // 50
        self.amplitude = amplitude
        self.frames_sent = 0
        self._start: Optional[float] = None
        self._phase = 0.0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.frames_sent
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + n * self.samples_per_frame / self.sample_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        freq = (440.0, 554.37, 659.25, 880.0)[(n // 25) % 4]
        step = 2 * math.pi * freq / self.sample_rate
        phases = self._phase + step * np.arange(self.samples_per_frame)
        self._phase = float((phases[-1] + step) % (2 * math.pi))
        samples = (np.sin(phases) * self.amplitude * 32767).astype("<i2")
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples_per_frame)
        frame.planes[0].update(samples.tobytes())
        frame.pts = n * self.samples_per_frame
        frame.sample_rate = self.sample_rate
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self.frames_sent += 1
        return frame


def codec_preferences(kind: str, codec: str) -> list:
    """aiortc capabilities for one codec (all its profiles) plus RTX for video."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in caps if c.mimeType.lower() == f"{kind}/{codec.lower()}"]
    if not wanted:
        raise ValueError(f"aiortc cannot send {kind} codec {codec}")
    if kind == "video":
        wanted += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return wanted


# --------------------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------------------


def _headers(token: Optional[str], content_type: Optional[str] = None, extra: Optional[dict] = None) -> dict:
    h = {}
    if content_type:
        h["Content-Type"] = content_type
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if extra:
        h.update(extra)
    return h


async def post_offer(
    url: str,
    sdp: str,
    token: Optional[str] = None,
    content_type: str = SDP,
    headers: Optional[dict] = None,
    client: Optional[httpx.AsyncClient] = None,
) -> httpx.Response:
    """POST an SDP offer (or anything else, for protocol tests) to a WHIP/WHEP endpoint URL."""
    body = sdp.encode() if isinstance(sdp, str) else sdp
    if client is not None:
        return await client.post(url, content=body, headers=_headers(token, content_type, headers))
    async with http_client() as c:
        return await c.post(url, content=body, headers=_headers(token, content_type, headers))


async def make_offer(
    video: bool = True,
    audio: bool = True,
    direction: str = "sendonly",
    video_codec: Optional[str] = None,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer (candidates gathered on 127.0.0.1) for protocol tests. Close the pc when done."""
    pc = new_peer_connection()
    for kind, wanted in (("audio", audio), ("video", video)):
        if not wanted:
            continue
        if direction in ("sendonly", "sendrecv"):
            track = SyntheticVideoTrack(width, height, fps) if kind == "video" else ToneAudioTrack()
            t = pc.addTransceiver(track, direction=direction)
        else:
            t = pc.addTransceiver(kind, direction=direction)
        if kind == "video" and video_codec:
            t.setCodecPreferences(codec_preferences("video", video_codec))
    with loopback_only():
        await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until truthy or timeout; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


class HttpError(AssertionError):
    def __init__(self, what: str, response: httpx.Response) -> None:
        super().__init__(
            f"{what}: {response.request.method} {response.request.url} -> {response.status_code}\n"
            f"{dict(response.headers)}\n{response.text[:2000]}"
        )
        self.response = response


# --------------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------------


class _Session:
    """What WHIP and WHEP clients share: POST the offer, apply the answer, DELETE the resource."""

    endpoint = ""

    def __init__(self, base_url: str, stream: str, token: Optional[str]) -> None:
        self.base_url = base_url.rstrip("/")
        self.stream = stream
        self.token = token
        self.pc: Optional[RTCPeerConnection] = None
        self.http = http_client()
        self.response: Optional[httpx.Response] = None
        self.delete_response: Optional[httpx.Response] = None
        self.location: Optional[str] = None
        self.etag: Optional[str] = None
        self.offer_sdp = ""
        self.answer_sdp = ""
        self.foreign_candidates: list[str] = []
        self.started_at: Optional[float] = None
        self.connected_at: Optional[float] = None
        self.connection_states: list[str] = []
        self._closed = False

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/{self.endpoint}/{self.stream}"

    def _build(self, pc: RTCPeerConnection) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def start(self, expect_status: int = 201) -> httpx.Response:
        """Create the offer, POST it, apply the answer. Raises HttpError if the status is not expected."""
        self.started_at = time.monotonic()
        self.pc = pc = new_peer_connection()

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            self.connection_states.append(pc.connectionState)
            if pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

        self._build(pc)
        with loopback_only():
            await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers before returning
        self.offer_sdp = pc.localDescription.sdp
        resp = await post_offer(self.endpoint_url, self.offer_sdp, self.token, client=self.http)
        self.response = resp
        if resp.status_code != expect_status:
            raise HttpError(f"{self.endpoint.upper()} POST expected {expect_status}", resp)
        if resp.status_code != 201:
            return resp
        if not resp.headers.get("content-type", "").startswith(SDP):
            raise HttpError("answer is not application/sdp", resp)
        loc = resp.headers.get("location")
        if not loc:
            raise HttpError("201 without Location", resp)
        self.location = urljoin(self.endpoint_url, loc)
        self.etag = resp.headers.get("etag")
        self.answer_sdp, self.foreign_candidates = keep_loopback_candidates(resp.text)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
        return resp

    async def wait_connected(self, timeout: float = 10.0) -> None:
        ok = await wait_for(lambda: self.pc is not None and self.pc.connectionState == "connected", timeout)
        if not ok:
            raise AssertionError(
                f"{type(self).__name__} not connected after {timeout}s; states: {self.connection_states}"
            )

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState if self.pc else "new"

    async def delete(self) -> httpx.Response:
        """DELETE the session resource (without closing the peer connection)."""
        assert self.location, "no session to delete"
        self.delete_response = await self.http.delete(self.location, headers=_headers(self.token))
        return self.delete_response

    async def patch(self, body: str, content_type: str = "application/trickle-ice-sdpfrag",
                    headers: Optional[dict] = None) -> httpx.Response:
        assert self.location, "no session to patch"
        return await self.http.patch(
            self.location, content=body.encode(), headers=_headers(self.token, content_type, headers)
        )

    async def _close_pc(self) -> None:
        if self.pc is not None:
            await self.pc.close()

    async def stop(self, delete: bool = True) -> Optional[httpx.Response]:
        """End the session: DELETE it (if `delete` and started), then close the peer connection.

        With delete=False the peer connection is closed without telling the gateway over HTTP (aiortc still
        sends a DTLS close_notify); see `vanish()` for a peer that disappears without a word."""
        if self._closed:
            return self.delete_response
        self._closed = True
        resp = None
        try:
            if delete and self.location:
                resp = await self.delete()
        finally:
            await self._close_pc()
            await self.http.aclose()
        return resp

    async def vanish(self) -> None:
        """Disappear like a crashed peer: stop ICE first (closing the sockets, so no DTLS close_notify and no
        RTCP BYE can reach the gateway), then tear the rest down. No HTTP DELETE."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.pc is not None:
                ice_transports = {
                    t.sender.transport.transport
                    for t in self.pc.getTransceivers()
                    if t.sender.transport is not None
                }
                for ice in ice_transports:
                    await ice.stop()  # RTCIceTransport.stop(): public ORTC API, closes the UDP sockets
                await self.pc.close()
        finally:
            await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop(delete=True)


class WhipPublisher(_Session):
    """Publishes synthetic VP8/H.264 video and Opus audio to `POST {base}/whip/{stream}`."""

    endpoint = "whip"

    def __init__(
        self,
        base_url: str,
        stream: str,
        token: Optional[str] = None,
        video: bool = True,
        audio: bool = True,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        video_codec: str = "VP8",
    ) -> None:
        super().__init__(base_url, stream, token)
        self.video_codec = video_codec
        self.video_track = SyntheticVideoTrack(width, height, fps) if video else None
        self.audio_track = ToneAudioTrack() if audio else None

    def _build(self, pc: RTCPeerConnection) -> None:
        if self.audio_track is not None:
            t = pc.addTransceiver(self.audio_track, direction="sendonly")
            t.setCodecPreferences(codec_preferences("audio", "opus"))
        if self.video_track is not None:
            t = pc.addTransceiver(self.video_track, direction="sendonly")
            t.setCodecPreferences(codec_preferences("video", self.video_codec))

    @property
    def frames_sent(self) -> int:
        return self.video_track.frames_sent if self.video_track else 0

    async def _close_pc(self) -> None:
        for track in (self.video_track, self.audio_track):
            if track is not None:
                track.stop()
        await super()._close_pc()


class WhepViewer(_Session):
    """Plays `POST {base}/whep/{stream}` with recvonly video+audio and decodes everything it receives."""

    endpoint = "whep"

    def __init__(self, base_url: str, stream: str, token: Optional[str] = None,
                 video: bool = True, audio: bool = True) -> None:
        super().__init__(base_url, stream, token)
        self.want_video, self.want_audio = video, audio
        self.frame_sizes: list[tuple[int, int]] = []
        self.frame_numbers: list[Optional[int]] = []
        self.frame_times: list[float] = []
        self.first_frame_at: Optional[float] = None
        self.audio_frames = 0
        self.audio_samples = 0
        self.audio_peak_rms = 0.0
        self.audio_rates: Counter = Counter()
        self.ended: dict[str, float] = {}  # kind -> monotonic time its track ended
        self.tracks: dict[str, MediaStreamTrack] = {}
        self._tasks: list[asyncio.Task] = []
        self._frame_event = asyncio.Event()

    def _build(self, pc: RTCPeerConnection) -> None:
        if self.want_audio:
            pc.addTransceiver("audio", direction="recvonly")
        if self.want_video:
            pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = track
            consume = self._consume_video if track.kind == "video" else self._consume_audio
            self._tasks.append(asyncio.ensure_future(consume(track)))

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if self.first_frame_at is None:
                    self.first_frame_at = now
                self.frame_sizes.append((frame.width, frame.height))
                self.frame_times.append(now)
                try:
                    self.frame_numbers.append(read_frame_number(frame))
                except Exception:  # unusual pixel formats: the frame still counts
                    self.frame_numbers.append(None)
                self._frame_event.set()
        except MediaStreamError:
            self.ended["video"] = time.monotonic()
            self._frame_event.set()

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.audio_frames += 1
                self.audio_samples += frame.samples
                self.audio_rates[frame.sample_rate] += 1
                pcm = frame.to_ndarray().astype(np.float64)
                if pcm.size:
                    rms = float(np.sqrt(np.mean(pcm * pcm))) / 32768.0
                    self.audio_peak_rms = max(self.audio_peak_rms, rms)
        except MediaStreamError:
            self.ended["audio"] = time.monotonic()

    # ---- what tests look at ----
    @property
    def frames(self) -> int:
        return len(self.frame_sizes)

    @property
    def resolutions(self) -> Counter:
        """Decoded frame sizes -> how many frames had that size."""
        return Counter(self.frame_sizes)

    @property
    def time_to_first_frame(self) -> Optional[float]:
        if self.first_frame_at is None or self.started_at is None:
            return None
        return self.first_frame_at - self.started_at

    @property
    def numbered_frames(self) -> list[int]:
        return [n for n in self.frame_numbers if n is not None]

    def fps(self, last: int = 30) -> float:
        """Decoded frame rate over the last `last` frames."""
        t = self.frame_times[-last:]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    async def wait_frames(self, n: int, timeout: float = 15.0) -> int:
        """Wait until `n` video frames were decoded; raise AssertionError with diagnostics on timeout."""
        deadline = time.monotonic() + timeout
        while self.frames < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or "video" in self.ended:
                raise AssertionError(
                    f"viewer decoded {self.frames}/{n} frames in {timeout}s (ended: {self.ended}, "
                    f"states: {self.connection_states}, audio frames: {self.audio_frames})"
                )
            self._frame_event.clear()
            try:
                await asyncio.wait_for(self._frame_event.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return self.frames

    async def wait_audio(self, n: int, timeout: float = 10.0) -> int:
        if not await wait_for(lambda: self.audio_frames >= n, timeout):
            raise AssertionError(f"viewer decoded {self.audio_frames}/{n} audio frames in {timeout}s")
        return self.audio_frames

    async def wait_media_end(self, timeout: float = 10.0, quiet: float = 1.5) -> str:
        """Wait until the media visibly ended: a track ended, the connection failed/closed, or no video frame
        arrived for `quiet` seconds. Returns which of those happened; raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ended:
                return "track-ended"
            if self.connection_state in ("failed", "closed"):
                return f"connection-{self.connection_state}"
            last = self.frame_times[-1] if self.frame_times else self.started_at or 0
            if time.monotonic() - last >= quiet:
                return "frames-stopped"
            await asyncio.sleep(0.05)
        raise AssertionError(f"viewer media still flowing after {timeout}s ({self.frames} frames)")

    async def rtp_stats(self, kind: str = "video") -> list[tuple[int, int, int]]:
        """(ssrc, packets received, packets lost) per RTP stream of `kind` received, from aiortc's RTCP receive
        statistics (RFC 3550 A.3: lost = extended highest sequence number - first + 1 - received, so a jump in
        the sequence numbers shows up as loss, and a jump backwards as negative loss)."""
        out = []
        for receiver in self.pc.getReceivers() if self.pc is not None else []:
            if receiver.track is None or receiver.track.kind != kind:
                continue
            for stats in (await receiver.getStats()).values():
                if getattr(stats, "type", "") == "inbound-rtp":
                    out.append((stats.ssrc, stats.packetsReceived, stats.packetsLost))
        return out

    async def _close_pc(self) -> None:
        await super()._close_pc()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --------------------------------------------------------------------------------------------------------
# Gateway observation (async, so the test's event loop keeps running aiortc's media tasks)
# --------------------------------------------------------------------------------------------------------


def parse_metric(text: str, name: str, labels: str = "") -> float:
    """Sum of one Prometheus metric's samples, optionally only those whose line contains `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def get_metric(base_url: str, name: str, labels: str = "") -> float:
    async with http_client() as c:
        r = await c.get(base_url.rstrip("/") + "/metrics")
    assert r.status_code == 200, r.text
    return parse_metric(r.text, name, labels)


async def get_streams(base_url: str) -> list[dict]:
    async with http_client() as c:
        r = await c.get(base_url.rstrip("/") + "/api/streams")
    assert r.status_code == 200, r.text
    return r.json()


async def find_stream(base_url: str, stream: str) -> Optional[dict]:
    for entry in await get_streams(base_url):
        if entry.get("stream") == stream:
            return entry
    return None


async def wait_stream(base_url: str, stream: str, predicate: Callable[[Optional[dict]], bool],
                      timeout: float = 10.0) -> Optional[dict]:
    """Poll /api/streams until `predicate(entry or None)` holds; return the entry; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        entry = await find_stream(base_url, stream)
        if predicate(entry):
            return entry
        if time.monotonic() >= deadline:
            raise AssertionError(f"/api/streams entry for {stream!r} after {timeout}s: {entry}")
        await asyncio.sleep(0.1)
