"""Load with real peers: a real whipgate process, a real publisher and N real viewers (ICE, DTLS, SRTP) on loopback.

    python3 bench/load.py                                   # default steps, ~10 minutes
    python3 bench/load.py --viewers 3 --duration 3 --no-baseline --profiles 600k

The server under test runs pinned to one core (`taskset -c 1`); this process (publisher + every viewer, one
asyncio loop with uvloop) pins itself to the other (core 0). For each profile (600 kbit/s 640x360 or
2.5 Mbit/s 1280x720 H.264 + Opus, optionally three simulcast layers) and each viewer count N it prints:

- gateway CPU µs per forwarded packet: utime+stime of the server process (/proc/<pid>/stat, all threads) over
  the measuring window / packets the viewers received in it; and packets forwarded per CPU-second (per core);
- loss at the viewers, from RTP sequence gaps (read from the clear SRTP header, RFC 3711 §3.1);
- latency publisher send -> viewer socket's kernel receive time (SO_TIMESTAMPNS) for sampled video packets
  (p50/p99), matched by payload hash: on loopback the viewer's kernel receive time is the gateway's sendto, so
  this is the gateway's added latency (its ingest queueing, its work, two loopback hops) without this process's
  scheduling; the older figure, publisher send -> the viewer's Python handling of the packet, is printed beside
  ("py lat"); with --python-viewers only the older one exists;
- time from the WHEP POST to the first complete keyframe received (p50/p95) for the viewers added in the step;
- server RSS growth per viewer since the publisher alone; the highest N one core carries with < 0.5% loss.

Viewers (default): every viewer socket is read in C (bench/viewer_drain.c via bench/load_drain.py: recvmmsg,
RTP counted per SSRC in C, only STUN, media before the first keyframe and 1-in-50 samples reach Python);
--python-viewers: every datagram in Python as before; --compare-viewers: both, one after the other.
--rps: run the gateway and this process in a network namespace whose loopback steers receive processing (RPS)
to core 0, so the viewers' kernel receive work does not run on the gateway's core (as on a real network).
--workers N: the gateway as deployed on an N-core machine (`http.workers = N`: a front and N worker processes,
not pinned; WHEP POSTs go round robin over the workers, the stream is relayed once to each other worker). CPU,
CPU wait and RSS are then summed over the front and its workers; this process stays on core 0, so on a 2-core
machine one worker shares its core with the load.
--server-rt: the server's processes (whipgate's front and workers, or the baseline) run with SCHED_FIFO priority 1
(`chrt -f 1`; children inherit it), so on a machine whose cores it shares with this process the server runs whenever
it has a packet, as if the load ran on other machines. The latency is the viewers' kernel receive time, so this
process being held back does not enter it.

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

from bench.load_drain import Drain, compile_drain  # noqa: E402
from bench.proc_stats import cpu_busy_seconds, net_rx_softirqs, softirq_seconds  # noqa: E402
from bench.load_media import Clip, encode_clip  # noqa: E402
from bench.load_peers import (  # noqa: E402
    SAMPLE_EVERY,
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
LATENCY_CARRIED_MS = 100.0  # median publisher -> viewer latency: above it the server is falling behind
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


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


class Server:
    """A server process (whipgate or the baseline) pinned to `core`."""

    stop_timeout = 10.0  # seconds a SIGTERM may take before SIGKILL

    def __init__(self, kind: str, workdir: pathlib.Path, core: Optional[int], name: str = "", http_config: str = "",
                 rtc_config: str = "", realtime: bool = False) -> None:
        self.kind = kind
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{kind}{'-' + name if name else ''}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        if kind == "whipgate":
            config = workdir / f"whipgate{'-' + name if name else ''}.toml"
            # One process (what "per core" measures): the default, one worker per core, would be a front and N
            # workers wherever taskset cannot pin the server; bench/workers.py passes its own.
            workers = http_config or "workers = 1\n"
            config.write_text(
                f'[http]\nlisten = "127.0.0.1:{self.port}"\n{workers}'
                f'[rtc]\nice_addresses = ["127.0.0.1"]\nice_timeout = 30.0\n{rtc_config}'
                '[log]\nlevel = "warning"\n'
            )
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        else:
            cmd = [sys.executable, str(ROOT / "bench" / "load_baseline.py"), "--listen", f"127.0.0.1:{self.port}"]
        if have_taskset():
            # taskset execs the command: same pid. Not pinned = every core: this process may already have pinned
            # itself to core 0, and a child inherits that.
            cmd = ["taskset", "-c", str(core) if core is not None else f"0-{os.cpu_count() - 1}"] + cmd
        if realtime:
            # SCHED_FIFO, lowest real-time priority; children (the front's workers) inherit it. The kernel's RT
            # throttling (sched_rt_runtime_us) still leaves the other tasks 5% of each core.
            cmd = ["chrt", "-f", "1"] + cmd
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
    viewer_mode: str = "c"
    rps: bool = False
    connected: int = 0
    failed: int = 0
    window_s: float = 0.0
    packets: int = 0
    expected: int = 0
    loss: float = 0.0
    server_cpu_s: float = 0.0  # utime + stime over the window, summed over the gateway's processes
    server_processes: int = 1  # the gateway's processes measured (with --workers N: the front and its N workers)
    server_core_busy: float = 0.0
    load_core_busy: float = 0.0
    us_per_packet: Optional[float] = None
    packets_per_core_s: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p99: Optional[float] = None
    latency_samples: int = 0
    kernel_latency_ms_p50: Optional[float] = None
    kernel_latency_ms_p99: Optional[float] = None
    kernel_latency_ms_p999: Optional[float] = None  # p99.9: where event-loop stalls (full GC passes) show
    kernel_latency_samples: int = 0
    net_rx_per_s: list[float] = field(default_factory=list)  # NET_RX softirqs per CPU per second (machine-wide)
    softirq_share: list[float] = field(default_factory=list)  # per CPU: share of the window in softirq (/proc/stat)
    cpu_busy: list[float] = field(default_factory=list)  # per CPU: share of the window not idle (/proc/stat; all processes)
    drain_datagrams_per_call: Optional[float] = None
    drain_datagrams_per_read: Optional[float] = None
    stun_to_aioice: int = 0  # STUN datagrams (the server's consent checks, RFC 7675) the C viewers passed to aioice
    feedback_per_viewer_s: float = 0.0  # transport-wide feedback packets each viewer sent per second (--viewer-feedback)
    estimate_kbps_p50: Optional[float] = None  # the gateway's estimates of its video viewers, after the window
    feedback_unknown: int = 0  # feedback entries the gateway matched with nothing it sent (all viewers; should be 0)
    video_pps_per_viewer: float = 0.0
    fps_per_viewer: float = 0.0
    # Viewers that received no video at all in the window: a session the server ended (or never fed) shows here,
    # where the averages above only dip (a 1,000-viewer step once lost 75% of its sessions at "0.00% loss").
    silent_viewers: int = 0
    server_waited: float = 0.0
    load_waited: float = 0.0
    udp_rcvbuf_drops: int = 0
    gateway_drops: Optional[dict] = None  # whipgate_dropped_total by reason over the window (None: not read)
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
    viewer_mode: str = "c"
    rps: bool = False
    udp_port: bool = False
    transport_cc: bool = False
    publisher_pacing: float = 0.0
    drain_interval_ms: float = 10.0
    viewer_feedback_ms: float = 0.0
    workers: int = 1  # http.workers of the gateway: 1 = one process pinned to core 1 (what "per core" measures)
    server_rt: bool = False  # the server under test under SCHED_FIFO (--server-rt)
    clips: dict[str, list[Clip]] = field(default_factory=dict)
    audio: Optional[Clip] = None


async def add_viewers(http: httpx.AsyncClient, url: str, publisher: Publisher, count: int,
                      concurrency: int, drain: Optional[Drain] = None, transport_cc: bool = False
                      ) -> tuple[list[Viewer], int, str]:
    semaphore = asyncio.Semaphore(concurrency)
    viewers: list[Viewer] = []
    errors: list[str] = []

    async def one() -> None:
        async with semaphore:
            viewer = Viewer(publisher.sent_at, drain=drain, transport_cc=transport_cc)
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
    # --udp-port: every session on one gateway socket (rtc.udp_port), so a fan-out leaves in sendmmsg batches.
    rtc_config = f"udp_port = {free_udp_port()}\n" if opts.udp_port and server_kind == "whipgate" else ""
    workers = opts.workers if server_kind == "whipgate" else 1
    server = Server(server_kind, opts.workdir, core=1 if workers == 1 else None, name=profile,
                    http_config=f"workers = {workers}\n" if workers > 1 else "", rtc_config=rtc_config,
                    realtime=opts.server_rt)
    http = httpx.AsyncClient(trust_env=False, timeout=30, limits=httpx.Limits(max_connections=64))
    viewers: list[Viewer] = []
    publisher: Optional[Publisher] = None
    drain = Drain(sample_every=SAMPLE_EVERY, interval=opts.drain_interval_ms / 1000,
                  feedback_interval=opts.viewer_feedback_ms / 1000) \
        if opts.viewer_mode == "c" and server_kind == "whipgate" else None
    try:
        await server.wait_healthy(timeout=30.0 if workers == 1 else 90.0)
        pids = await server_pids(http, server) if workers > 1 else [server.pid]
        layers = opts.clips[profile]
        simulcast = len(layers) > 1
        publisher = Publisher(layers, opts.audio, SIMULCAST_RIDS[: len(layers)] if simulcast else None,
                              pace_factor=opts.publisher_pacing)
        await publisher.start(http, f"{server.base_url}/whip/{STREAM}")
        await asyncio.sleep(2.0)  # the server sees a keyframe (GOP 1 s) and the stream settles
        rss_alone = sum(map(proc_rss_bytes, pids))
        for n in opts.viewers:
            step = Step(server_kind, profile, n, viewer_mode="c" if drain is not None else "python", rps=opts.rps)
            t_step = time.monotonic()
            added, failed, error = await add_viewers(http, f"{server.base_url}/whep/{STREAM}", publisher,
                                                     n - len(viewers), opts.connect_concurrency, drain,
                                                     opts.transport_cc and server_kind == "whipgate")
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
            kmarks = [len(v.kernel_latencies) for v in viewers]
            drain0 = (drain.calls, drain.datagrams, drain_reads(drain, viewers), drain_stun(drain, viewers),
                      drain.feedback_sent()) if drain is not None else None
            softirq0, sitime0, busy0 = net_rx_softirqs(), softirq_seconds(), cpu_busy_seconds()
            before = [v.snapshot() for v in viewers]
            video_before = [v.video_received() for v in viewers]
            counters_before = [(v.verified, v.auth_failures, v.unknown_payloads) for v in viewers]
            spy = start_py_spy(opts, server, profile, n, pids[-1])
            wait0, lwait0 = sum(map(proc_wait_seconds, pids)), proc_wait_seconds(os.getpid())
            rcvbuf0 = udp_receive_buffer_errors()
            drops0 = await read_drops(http, server.base_url) if server_kind == "whipgate" else None
            cpu0, load0, t0 = sum(map(proc_cpu_seconds, pids)), proc_cpu_seconds(os.getpid()), time.monotonic()
            await asyncio.sleep(opts.duration)
            cpu1, load1, t1 = sum(map(proc_cpu_seconds, pids)), proc_cpu_seconds(os.getpid()), time.monotonic()
            step.net_rx_per_s = [(b - a) / (t1 - t0) for a, b in zip(softirq0, net_rx_softirqs())]
            step.softirq_share = [(b - a) / (t1 - t0) for a, b in zip(sitime0, softirq_seconds())]
            step.cpu_busy = [(b - a) / (t1 - t0) for a, b in zip(busy0, cpu_busy_seconds())]
            if drain is not None and drain0 is not None:
                calls, datagrams, reads = (drain.calls - drain0[0], drain.datagrams - drain0[1],
                                           drain_reads(drain, viewers) - drain0[2])
                step.drain_datagrams_per_call = datagrams / calls if calls else None
                step.drain_datagrams_per_read = datagrams / reads if reads else None
                step.stun_to_aioice = drain_stun(drain, viewers) - drain0[3]
                if viewers:
                    step.feedback_per_viewer_s = (drain.feedback_sent() - drain0[4]) / (len(viewers) * (t1 - t0))
            step.udp_rcvbuf_drops = udp_receive_buffer_errors() - rcvbuf0
            drops1 = await read_drops(http, server.base_url) if drops0 is not None else None
            if drops0 is not None and drops1 is not None:
                step.gateway_drops = {k: v - drops0.get(k, 0) for k, v in drops1.items() if v > drops0.get(k, 0)}
            if opts.viewer_feedback_ms and server_kind == "whipgate":
                await read_estimates(http, server.base_url, step)
            step.server_waited = (sum(map(proc_wait_seconds, pids)) - wait0) / (t1 - t0)
            step.load_waited = (proc_wait_seconds(os.getpid()) - lwait0) / (t1 - t0)
            if spy is not None:
                await asyncio.get_running_loop().run_in_executor(None, spy.wait)
            after = [v.snapshot() for v in viewers]
            if viewers:
                video_after = [v.video_received() for v in viewers]
                per_viewer_s = len(viewers) * (t1 - t0)
                step.video_pps_per_viewer = sum(a[0] - b[0] for a, b in zip(video_after, video_before)) / per_viewer_s
                step.fps_per_viewer = sum(a[1] - b[1] for a, b in zip(video_after, video_before)) / per_viewer_s
                step.silent_viewers = sum(1 for a, b in zip(video_after, video_before) if a[0] == b[0])
            step.window_s = t1 - t0
            for b, a in zip(before, after):
                expected, received = loss_between(b, a)
                step.expected += expected
                step.packets += received
            step.loss = 1 - step.packets / step.expected if step.expected else 1.0
            step.server_cpu_s = cpu1 - cpu0
            step.server_processes = len(pids)
            step.server_core_busy = step.server_cpu_s / step.window_s
            step.load_core_busy = (load1 - load0) / step.window_s
            if step.packets:
                step.us_per_packet = step.server_cpu_s * 1e6 / step.packets
            if step.server_cpu_s > 0:
                step.packets_per_core_s = step.packets / step.server_cpu_s
            latencies = [x * 1000 for v, m in zip(viewers, marks) for x in v.latencies[m:]]
            step.latency_samples = len(latencies)
            step.latency_ms_p50, step.latency_ms_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            klat = [x * 1000 for v, m in zip(viewers, kmarks) for x in v.kernel_latencies[m:]]
            step.kernel_latency_samples = len(klat)
            step.kernel_latency_ms_p50, step.kernel_latency_ms_p99 = percentile(klat, 0.5), percentile(klat, 0.99)
            step.kernel_latency_ms_p999 = percentile(klat, 0.999)
            for v, (ver, auth, unk) in zip(viewers, counters_before):
                step.verified += v.verified - ver
                step.auth_failures += v.auth_failures - auth
                step.unknown_payloads += v.unknown_payloads - unk
            if viewers:
                step.rss_per_viewer_kb = (sum(map(proc_rss_bytes, pids)) - rss_alone) / len(viewers) / 1024
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
        if drain is not None:
            drain.close()
    return steps


def drain_reads(drain: Drain, viewers: list[Viewer]) -> int:
    """recvmmsg calls that returned data, over the attached viewers."""
    return sum(drain.states[v.slot].reads for v in viewers if v.slot is not None)


async def read_estimates(http: httpx.AsyncClient, base_url: str, step: "Step") -> None:
    """The gateway's own view of its viewers' feedback (GET /api/streams/{stream}/viewers): the median estimate
    and the feedback entries it could not match (both show the feedback is real and parsed)."""
    try:
        response = await http.get(f"{base_url}/api/streams/{STREAM}/viewers")
        response.raise_for_status()
        tracks = [t for viewer in response.json() for t in viewer["tracks"] if t.get("kind") == "video"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        step.note += f" (viewer stats unavailable: {exc})"
        return
    estimates = [t["estimate_bps"] / 1000 for t in tracks if "estimate_bps" in t]
    step.estimate_kbps_p50 = percentile(estimates, 0.5)
    step.feedback_unknown = sum(t.get("feedback_unknown", 0) for t in tracks)


async def read_drops(http: httpx.AsyncClient, base_url: str) -> Optional[dict[str, float]]:
    """The gateway's own drop counters (whipgate_dropped_total by reason, /metrics): what it dropped and why, so
    a step's loss can be told apart from drops in the kernel (udp-rcvbuf-drops). None when /metrics is unreadable."""
    try:
        response = await http.get(f"{base_url}/metrics")
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_drops(response.text)


def parse_drops(metrics_text: str) -> dict[str, float]:
    """whipgate_dropped_total by reason, from the text of /metrics (also bench/bwe_cuts.py's)."""
    return {match.group(1): float(match.group(2))
            for match in re.finditer(r'^whipgate_dropped_total\{reason="([^"]+)"\} (\S+)$', metrics_text, re.M)}


def drain_stun(drain: Drain, viewers: list[Viewer]) -> int:
    return sum(drain.states[v.slot].stun for v in viewers if v.slot is not None)


async def server_pids(http: httpx.AsyncClient, server: Server) -> list[int]:
    """The front's pid and its workers' (GET /api/workers), for a gateway with http.workers > 1."""
    response = await http.get(server.base_url + "/api/workers")
    response.raise_for_status()
    return [server.pid] + [int(w["pid"]) for w in response.json()]


def start_py_spy(opts: Options, server: Server, profile: str, n: int, pid: int) -> Optional[subprocess.Popen]:
    """py-spy record on the server (`pid`: with workers, the last one) for the measuring window (collapsed stacks;
    --nonblocking: the server is not paused to sample it, so its figures stay comparable)."""
    if opts.py_spy is None:
        return None
    opts.py_spy.mkdir(parents=True, exist_ok=True)
    out = opts.py_spy / f"{server.kind}-{profile}-{n}.txt"
    cmd = ["py-spy", "record", "--nonblocking", "--rate", "100", "--duration", str(max(1, int(opts.duration))),
           "--format", "raw", "--output", str(out), "--pid", str(pid)]
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


def format_drops(drops: Optional[dict]) -> str:
    if drops is None:
        return "unread"
    return ",".join(f"{reason}:{count:.0f}" for reason, count in sorted(drops.items())) or "0"


def print_step(s: Step, flush: bool = False) -> None:
    print(
        f"# {s.server:8s} {s.profile:10s} {s.viewer_mode + '-viewers':14s} rps={'on' if s.rps else 'off'} "
        f"N={s.viewers:<5d} pkts={s.packets:<8d} loss={s.loss * 100:.2f}% "
        f"video pkts/s/viewer={s.video_pps_per_viewer:.0f} fps/viewer={s.fps_per_viewer:.1f} "
        f"silent viewers={s.silent_viewers} µs/pkt={fmt(s.us_per_packet, '.2f')} pkts/s/core={fmt(s.packets_per_core_s, ',.0f')} "
        f"server busy/waiting={s.server_core_busy * 100:.0f}%/{s.server_waited * 100:.0f}% "
        f"load busy/waiting={s.load_core_busy * 100:.0f}%/{s.load_waited * 100:.0f}% "
        f"udp-rcvbuf-drops={s.udp_rcvbuf_drops} "
        f"gateway-drops={format_drops(s.gateway_drops)} "
        f"lat(kernel rx) p50/p99/p99.9={fmt(s.kernel_latency_ms_p50, '.2f')}/{fmt(s.kernel_latency_ms_p99, '.2f')}/"
        f"{fmt(s.kernel_latency_ms_p999, '.2f')} ms "
        f"({s.kernel_latency_samples}) "
        f"lat(python) p50/p99={fmt(s.latency_ms_p50, '.2f')}/{fmt(s.latency_ms_p99, '.2f')} ms ({s.latency_samples}) "
        f"NET_RX/s per cpu={'/'.join(f'{x:,.0f}' for x in s.net_rx_per_s)} "
        f"softirq per cpu={'/'.join(f'{x * 100:.0f}%' for x in s.softirq_share)} "
        f"busy per cpu={'/'.join(f'{x * 100:.0f}%' for x in s.cpu_busy)} "
        + (f"datagrams per drain call/recvmmsg={fmt(s.drain_datagrams_per_call)}/{fmt(s.drain_datagrams_per_read)} "
           f"stun->aioice={s.stun_to_aioice} feedback/s/viewer={s.feedback_per_viewer_s:.1f} "
           f"estimate p50={fmt(s.estimate_kbps_p50, '.0f')} kbit/s feedback-unknown={s.feedback_unknown} "
           if s.drain_datagrams_per_call is not None else "") +
        f"ttff p50/p95={fmt(s.ttff_ms_p50, '.0f')}/{fmt(s.ttff_ms_p95, '.0f')} ms "
        f"rss/viewer={fmt(s.rss_per_viewer_kb, '.0f')} KiB verified={s.verified} auth-fail={s.auth_failures} "
        f"unknown={s.unknown_payloads} step={s.step_s:.1f}s {s.note}",
        flush=flush,
    )


def carried(s: Step) -> bool:
    """Every viewer connected and receiving (none silent through the window), loss under 0.5%, the source's frame
    rate delivered (a server that drops whole
    frames, as aiortc's relay does under load, loses no packets but does not carry the stream), and the server
    keeping up: median latency under LATENCY_CARRIED_MS (a saturated server that loses nothing yet, because
    socket buffers hold its backlog, shows latency growing to seconds; kernel-time latency with C viewers, the
    Python-side figure otherwise; the baseline has none, its frame rate shows its backlog)."""
    latency = s.kernel_latency_ms_p50 if s.kernel_latency_ms_p50 is not None else s.latency_ms_p50
    keeping_up = latency is None or latency < LATENCY_CARRIED_MS
    return (s.packets > 0 and s.failed == 0 and s.silent_viewers == 0 and s.loss < LOSS_LIMIT
            and s.fps_per_viewer >= FPS_CARRIED and keeping_up)


def max_viewers(steps: list[Step], server: str, profile: str) -> Optional[int]:
    ok = [s.viewers for s in steps if s.server == server and s.profile == profile and carried(s)]
    return max(ok) if ok else None


def ratio(base: Optional[float], ours: Optional[float]) -> str:
    if base is None or ours is None or ours == 0:
        return "—"
    return f"{base / ours:.1f}x"


def print_report(steps: list[Step], opts: Options) -> None:
    print()
    server = ("server pinned to core 1" if opts.workers == 1 else
              f"server a front + {opts.workers} workers on every core (CPU summed over them)")
    if opts.server_rt:
        server += " under SCHED_FIFO"
    print(f"Load with real peers: {server}, publisher + viewers on core 0; "
          f"window {opts.duration:.0f} s per step after {opts.warmup:.0f} s warm-up; "
          f"RPS {'on: the loopback of a bench network namespace steers receive processing to core 0' if opts.rps else 'off: receive processing runs on the sender core (the gateway pays its viewers kernel receive side)'}.")
    print("viewers: c = socket read + RTP counted in C (recvmmsg), Python sees STUN, media before the first "
          "keyframe and 1 in 50 samples; python = every datagram in Python.")
    print("lat (kernel) = publisher send (CLOCK_REALTIME before protect + sendto) -> kernel receive time at the viewer "
          "socket (SO_TIMESTAMPNS) of sampled video packets: the gateway's added latency incl. ingest queueing and two "
          "loopback hops, without the load process's scheduling (c viewers only); lat (python) = publisher send -> "
          "the viewer's Python handling (includes the load process's own scheduling); ttff = WHEP POST -> first "
          "complete keyframe received.")
    print("fps = video frames per second each viewer received (30 sent); load busy = CPU of this process (publisher + "
          "viewers) / window (in brackets: core 0's whole non-idle share, softirqs included); CPU wait = share of the window the server was runnable but another process had its "
          "core (the machine is shared: figures with a high wait are contention, not capacity).")
    if "baseline" in opts.servers:
        print("baseline = aiortc RTCPeerConnection + MediaRelay: aiortc decodes the publisher's media and re-encodes "
              "it per viewer (H.264 libx264 at aiortc's 1 Mbit/s default + Opus); it has no forwarding path.")
    for profile in opts.profiles:
        print()
        print(f"## {profile}")
        with_base = "baseline" in opts.servers
        header = ("| viewers | N | whipgate µs/pkt | pkts/s/core | loss | fps | lat (kernel) p50/p99 ms |"
                  " lat (python) p50/p99 ms | load busy | ttff p50/p95 ms | KiB/viewer | CPU wait |"
                  + (" baseline µs/pkt | pkts/s/core | loss | fps | ttff p50/p95 ms | KiB/viewer | CPU wait |"
                     " µs/pkt base/ours |" if with_base else ""))
        print(header)
        print("| --- |" + " ---: |" * (header.count("|") - 2))
        modes = [m for m in ("c", "python") if any(s.viewer_mode == m and s.server == "whipgate" for s in steps)]
        base = {s.viewers: s for s in steps if s.server == "baseline" and s.profile == profile}

        def cols(s: Optional[Step], ours: bool) -> list[str]:
            if s is None:
                return ["—"] * (10 if ours else 7)
            out = [fmt(s.us_per_packet, ".2f"), fmt(s.packets_per_core_s, ",.0f"), f"{s.loss * 100:.2f}%",
                   f"{s.fps_per_viewer:.1f}" + (f" ({s.silent_viewers} silent)" if s.silent_viewers else "")]
            if ours:
                out += [f"{fmt(s.kernel_latency_ms_p50, '.2f')} / {fmt(s.kernel_latency_ms_p99, '.2f')}",
                        f"{fmt(s.latency_ms_p50, '.2f')} / {fmt(s.latency_ms_p99, '.2f')}",
                        f"{s.load_core_busy * 100:.0f}%"
                        + (f" ({s.cpu_busy[0] * 100:.0f}%)" if s.cpu_busy else "")]
            out += [f"{fmt(s.ttff_ms_p50, '.0f')} / {fmt(s.ttff_ms_p95, '.0f')}", fmt(s.rss_per_viewer_kb, ".0f"),
                    f"{s.server_waited * 100:.0f}%"]
            return out

        for i, mode in enumerate(modes or ["c"]):
            ours = {s.viewers: s for s in steps if s.server == "whipgate" and s.profile == profile
                    and s.viewer_mode == mode}
            for n in sorted(set(ours) | (set(base) if i == 0 else set())):
                o, b = ours.get(n), base.get(n) if i == 0 else None
                row = [mode, str(n)] + cols(o, True)
                if with_base:
                    row += cols(b, False) + [ratio(b.us_per_packet if b else None, o.us_per_packet if o else None)]
                print("| " + " | ".join(row) + " |")
        for mode in modes:
            ours_m = [s for s in steps if s.server == "whipgate" and s.profile == profile and s.viewer_mode == mode]
            mo = max((s.viewers for s in ours_m if carried(s)), default=None)
            mb = max_viewers(steps, "baseline", profile)
            carried_ours = [s for s in ours_m if carried(s) and s.us_per_packet]
            carried_base = [s for s in base.values() if carried(s) and s.us_per_packet]
            if carried_ours and carried_base:
                o, b = min(carried_ours, key=lambda s: s.viewers), max(carried_base, key=lambda s: s.viewers)
                print(f"µs per forwarded packet, baseline at N={b.viewers} / whipgate at N={o.viewers} (the two rarely "
                      f"carry the same N: the baseline saturates first): {ratio(b.us_per_packet, o.us_per_packet)};"
                      f" RSS per viewer {ratio(b.rss_per_viewer_kb, o.rss_per_viewer_kb)}")
            where = "on one core" if opts.workers == 1 else f"by {opts.workers} workers"
            print(f"highest N carried {where} (< {LOSS_LIMIT * 100:.1f}% loss, >= {FPS_CARRIED:.0f} fps, "
                  f"median latency < {LATENCY_CARRIED_MS:.0f} ms), "
                  f"{mode} viewers: whipgate {mo if mo is not None else '—'} (of the N tried)"
                  + (f", baseline {mb if mb is not None else '—'}" if base else "")
                  + (f"; ratio {mo / mb:.0f}x" if mo and mb and opts.workers == 1 else ""))  # the baseline has one core


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
    viewers = p.add_mutually_exclusive_group()
    viewers.add_argument("--python-viewers", action="store_true",
                         help="viewers handle every datagram in Python (the fallback; no kernel-time latency)")
    viewers.add_argument("--compare-viewers", action="store_true",
                         help="each profile twice: C viewers, then Python viewers")
    p.add_argument("--drain-interval-ms", type=float, default=10.0,
                   help="C viewers: after reading, wait this long before watching the sockets again (bigger "
                        "recvmmsg batches, far fewer wake-ups; 0 = read whenever readable)")
    p.add_argument("--rps", action="store_true",
                   help="run the gateway and the load in a new network namespace whose loopback has RPS steering "
                        "receive processing to core 0 (the load's core), as a real network would keep the viewers' "
                        "kernel receive work off the gateway's core; needs root and `ip`")
    p.add_argument("--udp-port", action="store_true",
                   help="whipgate with rtc.udp_port: every session on one UDP socket (C lanes then send each fan-out "
                        "in sendmmsg batches); default: a socket per session")
    p.add_argument("--transport-cc", action="store_true",
                   help="viewers negotiate transport-wide congestion control as browsers do (the gateway stamps a "
                        "transport-wide seq on, logs and paces all they get); they send no feedback, so each one's "
                        "estimate stays at its 1 Mbit/s start and video is paced at 2.5 Mbit/s")
    p.add_argument("--viewer-feedback", type=float, default=0.0, metavar="MS",
                   help="with --transport-cc: the C viewers send transport-wide feedback every MS ms, built in C from "
                        "what they received, as browsers do (Chromium: ~62 ms), so the gateway runs its estimator "
                        "for each; default 0: no feedback")
    p.add_argument("--publisher-pacing", type=float, default=0.0, metavar="FACTOR",
                   help="the publisher paces its video at FACTOR x its bitrate, as browsers (libwebrtc, 2.5) do; "
                        "default 0: a whole frame at once, as FFmpeg's WHIP muxer sends (a keyframe is one burst)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="whipgate with http.workers = N (a front and N worker processes, unpinned: the default "
                        "deployment on an N-core machine); CPU, wait and RSS summed over them; default 1: one "
                        "process pinned to core 1")
    p.add_argument("--server-rt", action="store_true",
                   help="run the server's processes (whipgate's, the baseline's) under SCHED_FIFO priority 1 (chrt; "
                        "root): on a machine whose cores it shares with this process the server then runs whenever "
                        "it has work, as if the load ran elsewhere")
    p.add_argument("--in-netns", metavar="NAME", help=argparse.SUPPRESS)  # set by --rps for the re-run inside
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
        rps=bool(args.in_netns), drain_interval_ms=args.drain_interval_ms, udp_port=args.udp_port,
        transport_cc=args.transport_cc, publisher_pacing=args.publisher_pacing, viewer_feedback_ms=args.viewer_feedback,
        workers=args.workers, server_rt=args.server_rt,
    )
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.viewer_feedback and (not args.transport_cc or args.python_viewers):
        raise SystemExit("--viewer-feedback needs --transport-cc and the C viewers")
    modes = ["python"] if args.python_viewers else ["c", "python"] if args.compare_viewers else ["c"]
    if "c" in modes:
        compile_drain()  # fails now, with a clear message, when there is no C compiler
    print(f"# gateway sockets: {'one (rtc.udp_port)' if args.udp_port else 'one per session'}; viewers "
          + (f"with transport-cc (stamped, logged, paced; feedback every {args.viewer_feedback:g} ms)"
             if args.transport_cc and args.viewer_feedback else
             "with transport-cc (stamped, logged, paced; no feedback)" if args.transport_cc else "without transport-cc")
          + f"; publisher {f'paced at {args.publisher_pacing:g}x its bitrate' if args.publisher_pacing else 'unpaced (a frame at once)'}")
    print(f"# viewers: {' then '.join(modes)}"
          + (f" (C drain interval {args.drain_interval_ms:g} ms)" if "c" in modes else "")
          + f"; RPS: {rps_description(args.in_netns)}", flush=True)
    server_cores = "server 1" if args.workers == 1 else f"server: a front + {args.workers} workers, not pinned"
    if args.server_rt:
        if shutil.which("chrt") is None or subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode:
            raise SystemExit("--server-rt needs util-linux's chrt and the right to use SCHED_FIFO (root)")
        server_cores += " (SCHED_FIFO 1)"
    print(f"# open files limit {fds}; logs in {workdir}; cores: {server_cores}, load 0"
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
                for mode in modes:
                    steps += await run_profile(server, profile, Options(**{**asdict_shallow(opts), "viewer_mode": mode}))
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


def rps_description(netns: Optional[str]) -> str:
    try:
        mask = pathlib.Path("/sys/class/net/lo/queues/rx-0/rps_cpus").read_text().strip()
    except OSError:
        mask = "?"
    if netns:
        return f"on (network namespace {netns}, its lo rps_cpus={mask})"
    return f"off (lo rps_cpus={mask})"


def run_in_rps_namespace(argv: list[str]) -> int:
    """--rps: a fresh network namespace whose lo steers receive processing to CPU 0 (rps_cpus mask 1); this script
    runs again inside it (gateway and load both), then the namespace is deleted. The host's lo is not touched."""
    if shutil.which("ip") is None:
        raise SystemExit("--rps needs iproute2's `ip` (and root)")
    name = f"whipgate-rps-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        # ip netns exec mounts the namespace's own /sys, so this is the namespace's lo
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        "echo 1 > /sys/class/net/lo/queues/rx-0/rps_cpus"], check=True)
        shown = subprocess.run(["ip", "netns", "exec", name, "cat", "/sys/class/net/lo/queues/rx-0/rps_cpus"],
                               capture_output=True, text=True).stdout.strip()
        host = pathlib.Path("/sys/class/net/lo/queues/rx-0/rps_cpus").read_text().strip()
        print(f"# --rps: namespace {name}: lo rps_cpus={shown} (host lo stays {host})", flush=True)
        args = [a for a in argv if a != "--rps"]
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, str(pathlib.Path(__file__).resolve()),
                               *args, "--in-netns", name]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name])


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--rps" in argv and not any(a.startswith("--in-netns") for a in argv):
        parse_args(argv)  # --help and errors before anything is created
        return run_in_rps_namespace(argv)
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
