"""Load with real peers: a real whipgate process, a real publisher and N real viewers (ICE, DTLS, SRTP) on loopback.

    python3 bench/load.py                                   # default steps, ~10 minutes
    python3 bench/load.py --viewers 3 --duration 3 --no-baseline --profiles 600k

The server under test runs pinned to one core (`taskset -c 1`); this process (publisher + every viewer, one
asyncio loop with uvloop) pins itself to the other (core 0). For each profile (600 kbit/s 640x360 or
2.5 Mbit/s 1280x720 H.264 + Opus, optionally three simulcast layers) and each viewer count N it prints:

- gateway CPU µs per forwarded packet: utime+stime of the server process (/proc/<pid>/stat, all threads) over
  the measuring window / packets the viewers received in it; and packets forwarded per CPU-second (per core);
- loss at the viewers, from RTP sequence gaps (read from the clear SRTP header, RFC 3711 §3.1);
- latency publisher send -> viewer receive for sampled video packets (p50/p99), matched by payload hash; this
  includes two kernel loopback hops and the time the load process takes to get to the datagram;
- time from the WHEP POST to the first complete keyframe received (p50/p95) for the viewers added in the step;
- server RSS growth per viewer since the publisher alone; the highest N one core carries with < 0.5% loss.

The baseline (bench/load_baseline.py: aiortc RTCPeerConnection + MediaRelay, decode + re-encode per viewer,
because aiortc has no forwarding path) is measured the same way in the same run, printed beside as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.load_media import Clip, encode_clip  # noqa: E402
from bench.load_peers import (  # noqa: E402
    Publisher,
    Viewer,
    loss_between,
    proc_cpu_seconds,
    proc_rss_bytes,
    proc_wait_seconds,
    udp_receive_buffer_errors,
    raise_fd_limit,
)

STREAM = "live"
LOSS_LIMIT = 0.005
FPS_CARRIED = 27.0  # of the 30 fps sent
# name -> simulcast layers as (width, height, kbit/s), top layer last
PROFILES: dict[str, list[tuple[int, int, int]]] = {
    "600k": [(640, 360, 600)],
    "2500k": [(1280, 720, 2500)],
    "simulcast3": [(320, 180, 150), (640, 360, 500), (1280, 720, 1500)],
}
SIMULCAST_RIDS = ["q", "h", "f"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


class Server:
    """A server process (whipgate or the baseline) pinned to `core`."""

    stop_timeout = 10.0  # seconds a SIGTERM may take before SIGKILL

    def __init__(self, kind: str, workdir: pathlib.Path, core: Optional[int], name: str = "", http_config: str = "") -> None:
        self.kind = kind
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{kind}{'-' + name if name else ''}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        if kind == "whipgate":
            config = workdir / f"whipgate{'-' + name if name else ''}.toml"
            config.write_text(
                f'[http]\nlisten = "127.0.0.1:{self.port}"\n{http_config}'
                '[rtc]\nice_addresses = ["127.0.0.1"]\nice_timeout = 30.0\n'
                '[log]\nlevel = "warning"\n'
            )
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        else:
            cmd = [sys.executable, str(ROOT / "bench" / "load_baseline.py"), "--listen", f"127.0.0.1:{self.port}"]
        if core is not None and have_taskset():
            cmd = ["taskset", "-c", str(core)] + cmd  # taskset execs the command: same pid
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    if (await http.get(self.base_url + "/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.kind} not healthy after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class Step:
    server: str
    profile: str
    viewers: int
    connected: int = 0
    failed: int = 0
    window_s: float = 0.0
    packets: int = 0
    expected: int = 0
    loss: float = 0.0
    server_cpu_s: float = 0.0
    server_core_busy: float = 0.0
    load_core_busy: float = 0.0
    us_per_packet: Optional[float] = None
    packets_per_core_s: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p99: Optional[float] = None
    latency_samples: int = 0
    video_pps_per_viewer: float = 0.0
    fps_per_viewer: float = 0.0
    server_waited: float = 0.0
    load_waited: float = 0.0
    udp_rcvbuf_drops: int = 0
    ttff_ms_p50: Optional[float] = None
    ttff_ms_p95: Optional[float] = None
    no_first_frame: int = 0
    rss_per_viewer_kb: Optional[float] = None
    verified: int = 0
    auth_failures: int = 0
    unknown_payloads: int = 0
    step_s: float = 0.0
    note: str = ""


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Options:
    viewers: list[int]
    duration: float
    warmup: float
    profiles: list[str]
    servers: list[str]
    connect_concurrency: int
    step_timeout: float
    first_frame_timeout: float
    workdir: pathlib.Path
    py_spy: Optional[pathlib.Path] = None
    clips: dict[str, list[Clip]] = field(default_factory=dict)
    audio: Optional[Clip] = None


async def add_viewers(http: httpx.AsyncClient, url: str, publisher: Publisher, count: int,
                      concurrency: int) -> tuple[list[Viewer], int, str]:
    semaphore = asyncio.Semaphore(concurrency)
    viewers: list[Viewer] = []
    errors: list[str] = []

    async def one() -> None:
        async with semaphore:
            viewer = Viewer(publisher.sent_at)
            try:
                await asyncio.wait_for(viewer.start(http, url), 30)
                viewers.append(viewer)
            except Exception as exc:  # a failed viewer is a figure, not a crash
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                try:
                    await viewer.close(None)
                except Exception:
                    pass

    await asyncio.gather(*(one() for _ in range(count)))
    return viewers, len(errors), errors[0] if errors else ""


async def run_profile(server_kind: str, profile: str, opts: Options) -> list[Step]:
    steps: list[Step] = []
    server = Server(server_kind, opts.workdir, core=1, name=profile)
    http = httpx.AsyncClient(trust_env=False, timeout=30, limits=httpx.Limits(max_connections=64))
    viewers: list[Viewer] = []
    publisher: Optional[Publisher] = None
    try:
        await server.wait_healthy()
        layers = opts.clips[profile]
        simulcast = len(layers) > 1
        publisher = Publisher(layers, opts.audio, SIMULCAST_RIDS[: len(layers)] if simulcast else None)
        await publisher.start(http, f"{server.base_url}/whip/{STREAM}")
        await asyncio.sleep(2.0)  # the server sees a keyframe (GOP 1 s) and the stream settles
        rss_alone = proc_rss_bytes(server.pid)
        for n in opts.viewers:
            step = Step(server_kind, profile, n)
            t_step = time.monotonic()
            added, failed, error = await add_viewers(http, f"{server.base_url}/whep/{STREAM}", publisher,
                                                     n - len(viewers), opts.connect_concurrency)
            viewers += added
            step.connected, step.failed = len(viewers), failed
            if error:
                step.note = f"{failed} failed: {error}"
            deadline = time.monotonic() + opts.first_frame_timeout
            while time.monotonic() < deadline and any(v.first_frame_at is None for v in added):
                await asyncio.sleep(0.1)
            ttffs = [v.time_to_first_frame * 1000 for v in added if v.time_to_first_frame is not None]
            step.no_first_frame = sum(1 for v in added if v.first_frame_at is None)
            step.ttff_ms_p50, step.ttff_ms_p95 = percentile(ttffs, 0.5), percentile(ttffs, 0.95)
            await asyncio.sleep(opts.warmup)

            marks = [len(v.latencies) for v in viewers]
            before = [v.snapshot() for v in viewers]
            video_before = [v.video_received() for v in viewers]
            counters_before = [(v.verified, v.auth_failures, v.unknown_payloads) for v in viewers]
            spy = start_py_spy(opts, server, profile, n)
            wait0, lwait0 = proc_wait_seconds(server.pid), proc_wait_seconds(os.getpid())
            rcvbuf0 = udp_receive_buffer_errors()
            cpu0, load0, t0 = proc_cpu_seconds(server.pid), proc_cpu_seconds(os.getpid()), time.monotonic()
            await asyncio.sleep(opts.duration)
            cpu1, load1, t1 = proc_cpu_seconds(server.pid), proc_cpu_seconds(os.getpid()), time.monotonic()
            step.udp_rcvbuf_drops = udp_receive_buffer_errors() - rcvbuf0
            step.server_waited = (proc_wait_seconds(server.pid) - wait0) / (t1 - t0)
            step.load_waited = (proc_wait_seconds(os.getpid()) - lwait0) / (t1 - t0)
            if spy is not None:
                await asyncio.get_running_loop().run_in_executor(None, spy.wait)
            after = [v.snapshot() for v in viewers]
            if viewers:
                video_after = [v.video_received() for v in viewers]
                per_viewer_s = len(viewers) * (t1 - t0)
                step.video_pps_per_viewer = sum(a[0] - b[0] for a, b in zip(video_after, video_before)) / per_viewer_s
                step.fps_per_viewer = sum(a[1] - b[1] for a, b in zip(video_after, video_before)) / per_viewer_s
            step.window_s = t1 - t0
            for b, a in zip(before, after):
                expected, received = loss_between(b, a)
                step.expected += expected
                step.packets += received
            step.loss = 1 - step.packets / step.expected if step.expected else 1.0
            step.server_cpu_s = cpu1 - cpu0
            step.server_core_busy = step.server_cpu_s / step.window_s
            step.load_core_busy = (load1 - load0) / step.window_s
            if step.packets:
                step.us_per_packet = step.server_cpu_s * 1e6 / step.packets
            if step.server_cpu_s > 0:
                step.packets_per_core_s = step.packets / step.server_cpu_s
            latencies = [x * 1000 for v, m in zip(viewers, marks) for x in v.latencies[m:]]
            step.latency_samples = len(latencies)
            step.latency_ms_p50, step.latency_ms_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            for v, (ver, auth, unk) in zip(viewers, counters_before):
                step.verified += v.verified - ver
                step.auth_failures += v.auth_failures - auth
                step.unknown_payloads += v.unknown_payloads - unk
            if viewers:
                step.rss_per_viewer_kb = (proc_rss_bytes(server.pid) - rss_alone) / len(viewers) / 1024
            step.step_s = time.monotonic() - t_step
            trouble = publisher.trouble()
            if trouble:
                step.note = (step.note + "; " if step.note else "") + trouble
            steps.append(step)
            print_step(step, flush=True)
            if server.proc.poll() is not None:
                step.note += f" server exited {server.proc.returncode}"
                break
            if not carried(step) or step.step_s > opts.step_timeout:
                break
    except Exception as exc:
        print(f"# {server_kind}/{profile}: aborted: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if not steps:
            steps.append(Step(server_kind, profile, 0, note=f"aborted: {exc}"[:200]))
    finally:
        async def close(v: Viewer) -> None:
            try:
                await asyncio.wait_for(v.close(None), 5)
            except Exception:
                pass

        for i in range(0, len(viewers), 100):
            await asyncio.gather(*(close(v) for v in viewers[i : i + 100]))
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.close(http), 5)
            except Exception:
                pass
        await http.aclose()
        server.stop()
    return steps


def start_py_spy(opts: Options, server: Server, profile: str, n: int) -> Optional[subprocess.Popen]:
    """py-spy record on the server for the measuring window (collapsed stacks; --nonblocking: the server is not
    paused to sample it, so its figures stay comparable)."""
    if opts.py_spy is None:
        return None
    opts.py_spy.mkdir(parents=True, exist_ok=True)
    out = opts.py_spy / f"{server.kind}-{profile}-{n}.txt"
    cmd = ["py-spy", "record", "--nonblocking", "--rate", "100", "--duration", str(max(1, int(opts.duration))),
           "--format", "raw", "--output", str(out), "--pid", str(server.pid)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_self_time(collapsed: pathlib.Path, count: int = 15) -> list[tuple[float, str]]:
    """Share of samples per innermost frame (self time) from py-spy's collapsed stacks."""
    totals: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])  # per function, not per line
        if leaf.startswith("Runner.run ") or leaf.startswith("run_forever "):
            leaf = "(event loop's C code: uvloop polling, socket reads, idle)"
        totals[leaf] = totals.get(leaf, 0) + int(n)
        samples += int(n)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:count]
    return [(100.0 * v / samples, k) for k, v in ranked] if samples else []


def fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def print_step(s: Step, flush: bool = False) -> None:
    print(
        f"# {s.server:8s} {s.profile:10s} N={s.viewers:<5d} pkts={s.packets:<8d} loss={s.loss * 100:.2f}% "
        f"video pkts/s/viewer={s.video_pps_per_viewer:.0f} fps/viewer={s.fps_per_viewer:.1f} µs/pkt={fmt(s.us_per_packet, '.2f')} pkts/s/core={fmt(s.packets_per_core_s, ',.0f')} "
        f"server busy/waiting={s.server_core_busy * 100:.0f}%/{s.server_waited * 100:.0f}% "
        f"load busy/waiting={s.load_core_busy * 100:.0f}%/{s.load_waited * 100:.0f}% "
        f"udp-rcvbuf-drops={s.udp_rcvbuf_drops} "
        f"lat p50/p99={fmt(s.latency_ms_p50, '.2f')}/{fmt(s.latency_ms_p99, '.2f')} ms ({s.latency_samples}) "
        f"ttff p50/p95={fmt(s.ttff_ms_p50, '.0f')}/{fmt(s.ttff_ms_p95, '.0f')} ms "
        f"rss/viewer={fmt(s.rss_per_viewer_kb, '.0f')} KiB verified={s.verified} auth-fail={s.auth_failures} "
        f"unknown={s.unknown_payloads} step={s.step_s:.1f}s {s.note}",
        flush=flush,
    )


def carried(s: Step) -> bool:
    """Every viewer connected, loss under 0.5%, and the source's frame rate delivered (a server that drops
    whole frames, as aiortc's relay does under load, loses no packets but does not carry the stream)."""
    return s.packets > 0 and s.failed == 0 and s.loss < LOSS_LIMIT and s.fps_per_viewer >= FPS_CARRIED


def max_viewers(steps: list[Step], server: str, profile: str) -> Optional[int]:
    ok = [s.viewers for s in steps if s.server == server and s.profile == profile and carried(s)]
    return max(ok) if ok else None


def ratio(base: Optional[float], ours: Optional[float]) -> str:
    if base is None or ours is None or ours == 0:
        return "—"
    return f"{base / ours:.1f}x"


def print_report(steps: list[Step], opts: Options) -> None:
    print()
    print("Load with real peers: server pinned to core 1, publisher + viewers on core 0; "
          f"window {opts.duration:.0f} s per step after {opts.warmup:.0f} s warm-up.")
    print("latency = publisher send -> viewer receive of sampled video packets (includes two kernel loopback hops "
          "and the load process's own scheduling); ttff = WHEP POST -> first complete keyframe received.")
    print("fps = video frames per second each viewer received (30 sent); CPU wait = share of the window the server "
          "was runnable but another process had its core (the machine is shared: figures with a high wait are "
          "contention, not capacity).")
    print("baseline = aiortc RTCPeerConnection + MediaRelay: aiortc decodes the publisher's media and re-encodes it "
          "per viewer (H.264 libx264 at aiortc's 1 Mbit/s default + Opus); it has no forwarding path.")
    for profile in opts.profiles:
        print()
        print(f"## {profile}")
        header = ("| N | whipgate µs/pkt | pkts/s/core | loss | fps | lat p50/p99 ms | ttff p50/p95 ms | KiB/viewer |"
                  " CPU wait | baseline µs/pkt | pkts/s/core | loss | fps | ttff p50/p95 ms | KiB/viewer | CPU wait |"
                  " µs/pkt base/ours |")
        print(header)
        print("|" + " ---: |" * (header.count("|") - 1))
        ours = {s.viewers: s for s in steps if s.server == "whipgate" and s.profile == profile}
        base = {s.viewers: s for s in steps if s.server == "baseline" and s.profile == profile}
        for n in sorted(set(ours) | set(base)):
            o, b = ours.get(n), base.get(n)

            def cols(s: Optional[Step], latency: bool) -> list[str]:
                if s is None:
                    return ["—"] * (8 if latency else 7)
                out = [fmt(s.us_per_packet, ".2f"), fmt(s.packets_per_core_s, ",.0f"), f"{s.loss * 100:.2f}%",
                       f"{s.fps_per_viewer:.1f}"]
                if latency:
                    out.append(f"{fmt(s.latency_ms_p50, '.2f')} / {fmt(s.latency_ms_p99, '.2f')}")
                out += [f"{fmt(s.ttff_ms_p50, '.0f')} / {fmt(s.ttff_ms_p95, '.0f')}", fmt(s.rss_per_viewer_kb, ".0f"),
                        f"{s.server_waited * 100:.0f}%"]
                return out

            row = [str(n)] + cols(o, True) + cols(b, False) + [
                ratio(b.us_per_packet if b else None, o.us_per_packet if o else None)]
            print("| " + " | ".join(row) + " |")
        mo, mb = max_viewers(steps, "whipgate", profile), max_viewers(steps, "baseline", profile)
        carried_ours = [s for s in ours.values() if carried(s) and s.us_per_packet]
        carried_base = [s for s in base.values() if carried(s) and s.us_per_packet]
        if carried_ours and carried_base:
            o, b = min(carried_ours, key=lambda s: s.viewers), max(carried_base, key=lambda s: s.viewers)
            print(f"µs per forwarded packet, baseline at N={b.viewers} / whipgate at N={o.viewers} (the two rarely "
                  f"carry the same N: the baseline saturates first): {ratio(b.us_per_packet, o.us_per_packet)};"
                  f" RSS per viewer {ratio(b.rss_per_viewer_kb, o.rss_per_viewer_kb)}")
        print(f"highest N carried on one core (< {LOSS_LIMIT * 100:.1f}% loss, >= {FPS_CARRIED:.0f} fps): whipgate {mo if mo is not None else '—'}"
              f" (of the N tried), baseline {mb if mb is not None else '—'}"
              + (f"; ratio {mo / mb:.0f}x" if mo and mb else ""))


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="whipgate load with real WebRTC peers, beside an aiortc baseline.")
    p.add_argument("--viewers", default="10,50,100,250,500,1000",
                   help="comma-separated viewer counts, in increasing order (stops at > 0.5%% loss)")
    p.add_argument("--baseline-viewers", default="1,2,5,10,50",
                   help="viewer counts for the baseline (it decodes and re-encodes, so it saturates early)")
    p.add_argument("--duration", type=float, default=8.0, help="measuring window per step, seconds")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds between the last join and the window")
    p.add_argument("--profiles", default="600k,2500k,simulcast3",
                   help=f"comma-separated, from {', '.join(PROFILES)}")
    p.add_argument("--kbps", type=int, default=None,
                   help="replace the single-layer profiles by one at this video bitrate (640x360 below 1500)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--connect-concurrency", type=int, default=16)
    p.add_argument("--step-timeout", type=float, default=120.0, help="stop increasing N after a step this long")
    p.add_argument("--first-frame-timeout", type=float, default=10.0)
    p.add_argument("--json", metavar="FILE", help="also write every step as JSON")
    p.add_argument("--py-spy", metavar="DIR", type=pathlib.Path,
                   help="record the server with py-spy during every window (collapsed stacks in DIR) and print the "
                        "top self-time frames of whipgate's largest step")
    return p.parse_args(argv)


async def amain(argv: Optional[list[str]] = None) -> list[Step]:
    args = parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if args.kbps:
        size = (640, 360) if args.kbps < 1500 else (1280, 720)
        PROFILES[f"{args.kbps}k"] = [(size[0], size[1], args.kbps)]
        profiles = [f"{args.kbps}k"] + [p for p in profiles if len(PROFILES[p]) > 1]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise SystemExit(f"unknown profile(s) {unknown}; known: {list(PROFILES)}")
    fds = raise_fd_limit()
    if have_taskset():
        os.sched_setaffinity(0, {0})
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="whipgate-load-"))
    opts = Options(
        viewers=[int(x) for x in args.viewers.split(",")], duration=args.duration, warmup=args.warmup,
        profiles=profiles, servers=["whipgate"] + (["baseline"] if args.baseline else []),
        connect_concurrency=args.connect_concurrency, step_timeout=args.step_timeout,
        first_frame_timeout=args.first_frame_timeout, workdir=workdir, py_spy=args.py_spy,
    )
    print(f"# open files limit {fds}; logs in {workdir}; cores: server 1, load 0"
          f"{'' if have_taskset() else ' (taskset unavailable: not pinned)'}", flush=True)
    for name in profiles:
        opts.clips[name] = [encode_clip(w, h, kbps) for w, h, kbps in PROFILES[name]]
    opts.audio = opts.clips[profiles[0]][0]
    baseline_viewers = [int(x) for x in args.baseline_viewers.split(",")]
    steps: list[Step] = []
    for profile in profiles:
        for server in opts.servers:
            if server == "baseline" and len(PROFILES[profile]) > 1:
                print(f"# baseline/{profile}: skipped (aiortc's receiver cannot take simulcast: one SSRC per "
                      "track, no rid routing)", flush=True)
                continue
            if server == "baseline":
                opts_b = Options(**{**asdict_shallow(opts), "viewers": baseline_viewers})
                steps += await run_profile(server, profile, opts_b)
            else:
                steps += await run_profile(server, profile, opts)
    print_report(steps, opts)
    if opts.py_spy is not None:
        ours = [s for s in steps if s.server == "whipgate" and s.packets]
        if ours:
            largest = max(ours, key=lambda s: (s.viewers, s.packets))
            path = opts.py_spy / f"whipgate-{largest.profile}-{largest.viewers}.txt"
            if path.exists():
                print(f"\npy-spy, whipgate {largest.profile} N={largest.viewers}: top self time (% of samples)")
                for share, frame in top_self_time(path):
                    print(f"  {share:5.1f}%  {frame}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([asdict(s) for s in steps], indent=1))
    return steps


def asdict_shallow(opts: Options) -> dict:
    return {f: getattr(opts, f) for f in opts.__dataclass_fields__}


def main(argv: Optional[list[str]] = None) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(amain(argv))
    from bench.load_peers import SRTP_ERRORS

    if SRTP_ERRORS:
        print("sampled SRTP unprotect failures by libsrtp message:", json.dumps(SRTP_ERRORS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
