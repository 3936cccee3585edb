"""What worker processes cost and where the CPU goes: whipgate with http.workers = 1 beside workers = N.

    python3 bench/workers.py                          # 600 kbit/s H.264 + Opus, 20 and 60 viewers, workers 1 and 2
    python3 bench/workers.py --viewers 10 --workers 2,4 --duration 4

Real peers as in bench/load.py (one publisher and N raw viewers in this process, ICE/DTLS/SRTP over loopback),
nothing pinned: the gateway's processes may use every core the machine has. For each setting it prints, side by
side with workers = 1 (the baseline: today's single process):

- packets the viewers received per second, and loss at the viewers (RTP sequence gaps);
- CPU of every gateway process (front and each worker; utime+stime from /proc) over the measuring window, in
  core-seconds per second ("busy"), and the total per received packet: what a packet costs all processes together,
  so the price of the extra hop (the owner worker sends each packet once more, to each other worker's pull) shows;
- time to first frame (p50) of the viewers.

On a machine whose cores are busy with other work the absolute figures move; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load import STREAM, Server, add_viewers, percentile  # noqa: E402
from bench.load_media import encode_clip  # noqa: E402
from bench.load_peers import Publisher, loss_between, proc_cpu_seconds, raise_fd_limit  # noqa: E402


class Gateway(Server):
    """`python -m gateway serve` with `http.workers` = workers (bench/load.py's Server, not pinned)."""

    stop_timeout = 20.0  # the front stops its workers first

    def __init__(self, workers: int, workdir: pathlib.Path) -> None:
        super().__init__("whipgate", workdir, core=None, name=f"workers{workers}", http_config=f"workers = {workers}\n")

    async def wait_healthy(self, http: httpx.AsyncClient, timeout: float = 90.0) -> None:  # type: ignore[override]
        await super().wait_healthy(timeout)

    async def pids(self, http: httpx.AsyncClient) -> list[tuple[str, int]]:
        """(name, pid) of every gateway process: the front and its workers, or the one process."""
        response = await http.get(self.base_url + "/api/workers")
        if response.status_code != 200:
            return [("gateway", self.proc.pid)]
        return [("front", self.proc.pid)] + [(f"w{w['worker']}", w["pid"]) for w in response.json()]


async def measure(workers: int, count: int, opts: argparse.Namespace, clip, workdir: pathlib.Path) -> dict:
    gateway = Gateway(workers, workdir)
    http = httpx.AsyncClient(trust_env=False, timeout=30)
    publisher = None
    viewers: list = []
    try:
        await gateway.wait_healthy(http)
        publisher = Publisher([clip], clip)
        await publisher.start(http, f"{gateway.base_url}/whip/{STREAM}")
        await asyncio.sleep(2.0)
        viewers, failed, error = await add_viewers(http, f"{gateway.base_url}/whep/{STREAM}", publisher, count, 8)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(v.first_frame_at is None for v in viewers):
            await asyncio.sleep(0.1)
        ttff = percentile([v.time_to_first_frame * 1000 for v in viewers if v.time_to_first_frame is not None], 0.5)
        await asyncio.sleep(opts.warmup)
        pids = await gateway.pids(http)
        before = [v.snapshot() for v in viewers]
        cpu0, t0 = [proc_cpu_seconds(pid) for _, pid in pids], time.monotonic()
        await asyncio.sleep(opts.duration)
        cpu1, t1 = [proc_cpu_seconds(pid) for _, pid in pids], time.monotonic()
        expected = received = 0
        for b, a in zip(before, [v.snapshot() for v in viewers]):
            e, r = loss_between(b, a)
            expected, received = expected + e, received + r
        window = t1 - t0
        busy = {name: (c1 - c0) / window for (name, _), c0, c1 in zip(pids, cpu0, cpu1)}
        return {
            "workers": workers, "viewers": len(viewers), "failed": failed, "error": error,
            "pps": received / window, "loss": 1 - received / expected if expected else 1.0,
            "busy": busy, "us_per_packet": sum(c1 - c0 for c0, c1 in zip(cpu0, cpu1)) * 1e6 / received if received else None,
            "ttff_ms": ttff,
        }
    finally:
        for v in viewers:
            try:
                await asyncio.wait_for(v.close(None), 5)
            except Exception:
                pass
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.close(http), 5)
            except Exception:
                pass
        await http.aclose()
        gateway.stop()


def fmt(row: dict) -> str:
    busy = " ".join(f"{name}={value:.2f}" for name, value in row["busy"].items())
    us = f"{row['us_per_packet']:.1f}" if row["us_per_packet"] else "-"
    ttff = f"{row['ttff_ms']:.0f}" if row["ttff_ms"] is not None else "-"
    note = f"  ({row['failed']} failed: {row['error']})" if row["failed"] else ""
    return (f"{row['viewers']:>7} {row['workers']:>7} {row['pps']:>9.0f} {row['loss'] * 100:>6.2f}% {us:>10} "
            f"{ttff:>8}  {busy}{note}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", default="20,60", help="viewer counts, comma-separated")
    parser.add_argument("--workers", default="2", help="worker counts to compare with workers = 1")
    parser.add_argument("--duration", type=float, default=6.0, help="measuring window, seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    opts = parser.parse_args()
    raise_fd_limit()
    clip = encode_clip(640, 360, 600)
    settings = [1] + [int(w) for w in opts.workers.split(",") if int(w) != 1]
    print(f"# 600 kbit/s 640x360 H.264 + Opus, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'viewers':>7} {'workers':>7} {'pkts/s':>9} {'loss':>7} {'µs/pkt':>10} {'ttff ms':>8}  busy (core-s/s)")
    with tempfile.TemporaryDirectory(prefix="whipgate-workers-") as tmp:
        for count in [int(n) for n in opts.viewers.split(",")]:
            for workers in settings:
                print(fmt(await measure(workers, count, opts, clip, pathlib.Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
