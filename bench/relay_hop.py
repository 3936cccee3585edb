"""What one relay hop costs: publisher -> A -> viewer  vs  publisher -> A -> C -> viewer (C in relay mode).

Real processes over loopback: a redis-server, gateway A (the origin) and gateway C (an edge with
`cluster.viewer_mode = "relay"`), started as the tests start them. One publisher sends real VP8 (640x480, 30 fps,
about 1 Mbit/s; pictures encoded once by aiortc's VP8 encoder in this process, then looped) to A. Each packet's
last 8 payload bytes are replaced by a marker (magic + counter); nobody decodes, the gateways only forward. Raw
WHEP viewers (whipgate's own offerer transport, no decoder) note when each marker arrives, so the latency of a
packet is its receive time minus its send time on this process's monotonic clock.

Two phases, same publisher, N viewers each:
- direct: the viewers play from A;
- relay:  the viewers play from C, which pulls the stream once from A.
Printed side by side: per-packet latency (p50 / p95 / max) and the CPU each gateway process used (utime + stime
from /proc/<pid>/stat over the measured window, as % of one core).

    python3 bench/relay_hop.py [--seconds 8] [--viewers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import struct
import sys
import tempfile
import time
from typing import Optional
from urllib.parse import urljoin

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fractions  # noqa: E402

import httpx  # noqa: E402
from aiortc.codecs.vpx import Vp8Encoder  # noqa: E402

from clients import SyntheticVideoTrack  # noqa: E402
from conftest import launch_gateway  # noqa: E402
from gateway.relay import relay_offer_media  # noqa: E402
from gateway.rtcp import parse_or_count  # noqa: E402
from gateway.rtp import RtpError, build_header, parse_rtp  # noqa: E402
from gateway.sdp import EXT_MID, Codec, OfferMediaSpec, parse_offer, write_offer  # noqa: E402
from gateway.transport import PeerTransport  # noqa: E402
from test_registry import RedisServer  # noqa: E402

STREAM = "bench"
MAGIC = b"WGMK"
FPS = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of proc(5))


def encode_loop(frames: int = 60) -> list[list[bytes]]:
    """VP8 payloads per picture; a keyframe every second so a joining viewer starts within one."""
    encoder = Vp8Encoder()
    encoder.target_bitrate = 1_000_000
    pictures = SyntheticVideoTrack(640, 480, FPS)
    out = []
    for n in range(frames):
        frame = pictures._draw(n)
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, n % FPS == 0)
        out.append(payloads)
    return out


def new_transport(on_rtp, on_rtcp, connected: asyncio.Event) -> PeerTransport:
    transport = PeerTransport(
        addresses=["127.0.0.1"], announced_ip=None, consent_interval=1.0, consent_failures=10,
        on_rtp=on_rtp, on_rtcp=on_rtcp, on_connected=connected.set, on_closed=lambda reason: None,
    )
    transport.set_offerer()
    return transport


async def negotiate(http: httpx.AsyncClient, url: str, transport: PeerTransport, media: list[OfferMediaSpec]) -> str:
    await transport.gather()
    candidates = transport.local_candidates()
    offer = write_offer(media, ice_ufrag=transport.ice_ufrag, ice_pwd=transport.ice_pwd, fingerprint=transport.fingerprint,
                        candidates=[c.sdp() for c in candidates], address=candidates[0].ip, port=candidates[0].port)
    response = await http.post(url, content=offer.encode(), headers={"Content-Type": "application/sdp"})
    if response.status_code != 201:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text}")
    answer = parse_offer(response.text)
    transport.start(remote_ufrag=answer.ice_ufrag, remote_pwd=answer.ice_pwd, fingerprints=answer.fingerprints,
                    dtls_role="server" if answer.setup == "active" else "client", candidates=answer.candidates,
                    end_of_candidates=answer.end_of_candidates, timeout=10)
    return urljoin(str(response.url), response.headers["location"])


class MarkedPublisher:
    def __init__(self, pictures: list[list[bytes]]) -> None:
        self.pictures = pictures
        self.sent: dict[int, float] = {}
        self.counter = 0
        self.bytes_sent = 0
        self.connected = asyncio.Event()
        self.transport = new_transport(lambda data, arrival: None, self._on_rtcp, self.connected)
        self.task: Optional[asyncio.Task] = None

    def _on_rtcp(self, data: bytes) -> None:
        parse_or_count(data)  # PLIs ignored: the loop has a keyframe every second

    async def start(self, http: httpx.AsyncClient, base_url: str) -> None:
        codec = Codec(96, "VP8", 90000, None, {}, ["nack", "nack pli"])
        await negotiate(http, f"{base_url}/whip/{STREAM}", self.transport, [OfferMediaSpec("video", "0", "sendonly", [codec], [(1, EXT_MID)])])
        await asyncio.wait_for(self.connected.wait(), 10)
        self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        seq, start, n = 0, time.monotonic(), 0
        while True:
            payloads = self.pictures[n % len(self.pictures)]
            for i, payload in enumerate(payloads):
                if payload[0] & 0x80 and payload[1] & 0x80 and payload[2] & 0x80:
                    # RFC 7741 §4.2: a continuous 15-bit picture id across the loop (receivers drop older ones)
                    payload = payload[:2] + struct.pack("!H", 0x8000 | (n & 0x7FFF)) + payload[4:]
                seq = (seq + 1) & 0xFFFF
                if len(payload) > 40:
                    self.counter += 1
                    payload = payload[:-8] + MAGIC + struct.pack("!I", self.counter)
                    self.sent[self.counter] = time.monotonic()
                header = build_header(i == len(payloads) - 1, 96, seq, (n * 3000) & 0xFFFFFFFF, 0x5EED, [(1, b"0")])
                self.bytes_sent += len(payload)
                self.transport.send_rtp(bytes(header) + payload)
            n += 1
            await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))


class MarkerViewer:
    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.connected = asyncio.Event()
        self.transport = new_transport(self._on_rtp, lambda data: None, self.connected)
        self.location: Optional[str] = None

    def _on_rtp(self, data: bytes, arrival: int) -> None:
        now = time.monotonic()
        try:
            packet = parse_rtp(data)
        except RtpError:
            return
        tail = packet.data[packet.payload_end - 8 : packet.payload_end]
        if tail[:4] == MAGIC:
            self.received.setdefault(struct.unpack("!I", tail[4:])[0], now)

    async def start(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.location = await negotiate(http, f"{base_url}/whep/{STREAM}", self.transport, relay_offer_media([]))
        await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self, http: httpx.AsyncClient) -> None:
        if self.location:
            await http.delete(self.location)
        await self.transport.close("bench done")


async def phase(http, publisher: MarkedPublisher, base_url: str, viewers: int, seconds: float, pids: dict[str, int]) -> dict:
    group = [MarkerViewer() for _ in range(viewers)]
    for viewer in group:
        await viewer.start(http, base_url)
    deadline = time.monotonic() + 10
    while not all(v.received for v in group) and time.monotonic() < deadline:  # wait for the first keyframe
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    first = publisher.counter + 1
    bytes0 = publisher.bytes_sent
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu = {name: 100 * (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
    last = publisher.counter
    kbps = (publisher.bytes_sent - bytes0) * 8 / elapsed / 1000
    await asyncio.sleep(0.5)  # stragglers
    latencies, lost = [], 0
    for viewer in group:
        for marker in range(first, last + 1):
            got = viewer.received.get(marker)
            if got is None:
                lost += 1
            else:
                latencies.append(1000 * (got - publisher.sent[marker]))
    for viewer in group:
        await viewer.stop(http)
    latencies.sort()
    if os.environ.get("RELAY_HOP_DEBUG"):
        missing = [m for m in range(first, last + 1) if m not in group[0].received]
        print("window", first, last, "received", len(group[0].received), "missing", missing[:40], file=sys.stderr)
    return {
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
        "packets": len(latencies),
        "lost": lost,
        "cpu": cpu,
        "kbps": kbps,
        "marked_per_s": (last - first + 1) / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--viewers", type=int, default=1)
    args = parser.parse_args()
    pictures = encode_loop()
    with tempfile.TemporaryDirectory(prefix="relay-hop-") as tmp:
        work = pathlib.Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        gateways = []
        http = httpx.AsyncClient(trust_env=False, timeout=10)
        publisher: Optional[MarkedPublisher] = None
        try:
            cluster = {"registry": redis.url, "ttl": 5.0}
            a = launch_gateway(work / "a", {"cluster": {**cluster, "node_id": "a"}, "log": {"level": "warning"}}, name="a")
            gateways.append(a)
            c = launch_gateway(work / "c", {"cluster": {**cluster, "node_id": "c", "viewer_mode": "relay", "relay_grace": 1.0},
                                            "log": {"level": "warning"}}, name="c")
            gateways.append(c)
            pids = {"A": a.proc.pid, "C": c.proc.pid}
            publisher = MarkedPublisher(pictures)
            await publisher.start(http, a.base_url)
            await asyncio.sleep(1.0)
            direct = await phase(http, publisher, a.base_url, args.viewers, args.seconds, pids)
            await asyncio.sleep(2.5)  # C's pull (none here) / A's viewers gone
            relay = await phase(http, publisher, c.base_url, args.viewers, args.seconds, pids)
        finally:
            if publisher is not None:
                if publisher.task:
                    publisher.task.cancel()
                await publisher.transport.close("bench done")
            await http.aclose()
            for gw in gateways:
                gw.stop()
            redis.stop()
    print(f"\none relay hop, {args.viewers} viewer(s) per phase, {args.seconds:g} s measured per phase; publisher: 640x480 VP8, "
          f"{direct['kbps']:.0f} kbit/s, {direct['marked_per_s']:.0f} marked packets/s")
    print(f"{'':28}{'publisher->A->viewer':>24}{'publisher->A->C->viewer':>26}")
    for key in ("p50", "p95", "max"):
        print(f"{'latency ' + key + ' (ms)':28}{direct[key]:>24.2f}{relay[key]:>26.2f}")
    print(f"{'packets received / lost':28}{str(direct['packets']) + ' / ' + str(direct['lost']):>24}{str(relay['packets']) + ' / ' + str(relay['lost']):>26}")
    for name in ("A", "C"):
        print(f"{'gateway ' + name + ' CPU (% of a core)':28}{direct['cpu'][name]:>24.1f}{relay['cpu'][name]:>26.1f}")
    total_direct = direct["cpu"]["A"] + direct["cpu"]["C"]
    total_relay = relay["cpu"]["A"] + relay["cpu"]["C"]
    print(f"{'gateways together':28}{total_direct:>24.1f}{total_relay:>26.1f}")
    print(f"added by the hop: {relay['p50'] - direct['p50']:+.2f} ms at p50, {relay['p95'] - direct['p95']:+.2f} ms at p95, "
          f"{total_relay - total_direct:+.1f} % of a core")


if __name__ == "__main__":
    asyncio.run(main())
