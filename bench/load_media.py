"""Pre-encoded media for bench/load.py: FFmpeg encodes a short clip once, the publisher replays its packets.

Encoding once and replaying keeps the publisher's per-packet cost at a header pack, an SRTP protect and a
`sendto`, so the load process (publisher + viewers on one core) has room for the viewers. The video is H.264
Constrained Baseline (libx264, zerolatency, no B-frames, a keyframe every `gop` frames) at a target bitrate;
the audio is real Opus (libopus, 20 ms frames) so that a decoding server (the aiortc baseline) can decode both.

H.264 is packetised per RFC 6184: one NAL unit per packet when it fits (§5.6), FU-A fragments otherwise
(§5.8); the marker bit is set on the last packet of an access unit (§5.1).
"""

from __future__ import annotations

import hashlib
import pathlib
import struct
import subprocess
from dataclasses import dataclass

import imageio_ffmpeg

MAX_RTP_PAYLOAD = 1200
VIDEO_CLOCK = 90000
OPUS_CLOCK = 48000
CACHE = pathlib.Path("/tmp/whipgate-load-media")


@dataclass(frozen=True)
class Frame:
    """One access unit (video) or one Opus packet (audio): its RTP payloads and whether it is a keyframe."""

    payloads: tuple[bytes, ...]
    keyframe: bool


@dataclass(frozen=True)
class Clip:
    video: tuple[Frame, ...]
    audio: tuple[Frame, ...]
    fps: int
    width: int
    height: int
    video_kbps: int

    @property
    def video_packets_per_second(self) -> float:
        return sum(len(f.payloads) for f in self.video) * self.fps / len(self.video)


def _ffmpeg(args: list[str]) -> None:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, timeout=300)


def encode_clip(width: int, height: int, kbps: int, seconds: int = 10, fps: int = 30, gop: int = 30) -> Clip:
    """Encode (or reuse from /tmp) `seconds` of testsrc2 video at `kbps` plus an Opus tone; packetise both."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = CACHE / f"v{width}x{height}-{kbps}k-{seconds}s-{fps}fps-g{gop}"
    h264, ogg = stem.with_suffix(".h264"), CACHE / f"tone-{seconds}s.ogg"
    if not h264.exists():
        tmp = h264.with_suffix(".tmp.h264")
        _ffmpeg([
            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds),
            "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast", "-tune", "zerolatency",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p",
            "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps // 2}k",
            "-x264-params", "aud=1:repeat-headers=1", "-f", "h264", str(tmp),
        ])
        tmp.rename(h264)
    if not ogg.exists():
        tmp = ogg.with_suffix(".tmp.ogg")
        _ffmpeg([
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
            "-c:a", "libopus", "-b:a", "64k", "-frame_duration", "20", "-ac", "2", "-f", "ogg", str(tmp),
        ])
        tmp.rename(ogg)
    video = tuple(_packetise_access_unit(au) for au in split_access_units(h264.read_bytes()))
    audio = tuple(Frame((p,), False) for p in ogg_opus_packets(ogg.read_bytes()))
    return Clip(video, audio, fps, width, height, kbps)


def nal_units(annexb: bytes) -> list[bytes]:
    """Split an Annex-B byte stream at start codes (00 00 01 / 00 00 00 01)."""
    out, i, n = [], 0, len(annexb)
    starts = []
    while True:
        j = annexb.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        nal = annexb[s:end]
        while nal.endswith(b"\x00"):  # the leading zero of a 4-byte start code, or trailing zeros
            nal = nal[:-1]
        if nal:
            out.append(nal)
    return out


def split_access_units(annexb: bytes) -> list[list[bytes]]:
    """Group NAL units into access units at access unit delimiters (type 9), which are dropped."""
    units: list[list[bytes]] = []
    for nal in nal_units(annexb):
        if nal[0] & 0x1F == 9:
            units.append([])
        elif units:
            units[-1].append(nal)
    return [u for u in units if u]


def _packetise_access_unit(nals: list[bytes]) -> Frame:
    payloads: list[bytes] = []
    keyframe = any(n[0] & 0x1F == 5 for n in nals)
    for nal in nals:
        if nal[0] & 0x1F in (6,):  # SEI: not needed on the wire
            continue
        if len(nal) <= MAX_RTP_PAYLOAD:
            payloads.append(nal)
            continue
        header, body = nal[0], nal[1:]
        indicator = (header & 0xE0) | 28  # FU-A, RFC 6184 §5.8
        chunks = [body[i : i + MAX_RTP_PAYLOAD - 2] for i in range(0, len(body), MAX_RTP_PAYLOAD - 2)]
        for k, chunk in enumerate(chunks):
            fu = (header & 0x1F) | (0x80 if k == 0 else 0) | (0x40 if k == len(chunks) - 1 else 0)
            payloads.append(bytes((indicator, fu)) + chunk)
    return Frame(tuple(payloads), keyframe)


def ogg_opus_packets(data: bytes) -> list[bytes]:
    """Opus packets from an Ogg stream (RFC 7845), without the two header packets (OpusHead, OpusTags)."""
    packets: list[bytes] = []
    pending = b""
    pos = 0
    while pos + 27 <= len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        segments = data[pos + 26]
        table = data[pos + 27 : pos + 27 + segments]
        pos += 27 + segments
        for lacing in table:
            pending += data[pos : pos + lacing]
            pos += lacing
            if lacing < 255:
                packets.append(pending)
                pending = b""
    return [p for p in packets if not p.startswith((b"OpusHead", b"OpusTags"))]


RTP_HEADER = struct.Struct("!BBHII")


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes, extension: bytes = b"") -> bytes:
    """An RTP packet (RFC 3550 §5.1); `extension` is a complete RFC 8285 one-byte header extension block."""
    first = 0x90 if extension else 0x80
    return RTP_HEADER.pack(first, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + extension + payload


def one_byte_extensions(items: list[tuple[int, bytes]]) -> bytes:
    """RFC 8285 §4.2 one-byte-header extension block (0xBEDE), padded to 32-bit words."""
    body = b"".join(bytes(((ext_id << 4) | (len(value) - 1),)) + value for ext_id, value in items)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def payload_key(payload: bytes) -> bytes:
    """What the latency sampler matches on: a short hash of an RTP payload (forwarded unchanged for H.264/Opus)."""
    return hashlib.blake2b(payload, digest_size=8).digest()
