"""A small network lab for tests: a gateway namespace plus one namespace per viewer, joined by shaped veth pairs.

Topology (one lab; every name carries a random run id, so concurrent runs never collide):

    gateway namespace  <lab>-gw                      viewer namespace  <lab>-<name>
      lo      127.0.0.1/8, SERVICE_IP/32
      vh<N>   10.213.<N>.1/30  ==== veth pair ====  eth0  10.213.<N>.2/30, default route via 10.213.<N>.1
              ^ `Host.shape()` puts a tbf here: it limits the traffic TOWARDS the viewer (gateway -> viewer);
                the viewer -> gateway direction (RTCP, STUN) is never shaped.

- The gateway namespace has no default route and IP forwarding stays off (the default in a new namespace), so
  nothing a test starts can leave the lab and viewers cannot reach each other.
- `SERVICE_IP` (10.213.0.1) sits on the gateway namespace's `lo`. Every viewer reaches it through its default
  route, i.e. through its own veth and its own shaper, so a gateway that listens on 0.0.0.0 and uses
  `rtc.ice_addresses = [SERVICE_IP]` has ONE host candidate that every viewer can reach, whatever the number
  of viewers and whenever they are added (also after the gateway started). A publisher in the gateway namespace
  reaches the same candidate locally (loopback speed, never shaped).
- IPv6 is disabled in every lab namespace, so Chromium only gathers the IPv4 candidate of each link.

Shaping (`Host.shape(rate_kbit)`): `tc qdisc replace dev vh<N> root tbf rate <R>kbit burst <B> latency <L>ms`.
- burst B = max(rate * BURST_MS, MIN_BURST_BYTES): 10 ms worth of tokens, but at least two full 1514-byte
  Ethernet frames (tbf drops any packet larger than its bucket; WebRTC packets are ~1.2 kB). At 700 kbit that
  is 3200 bytes (~2.6 RTP packets at line rate), at 5 Mbit 6250 bytes.
- latency L = DEFAULT_LATENCY_MS (100 ms): the queue holds at most 100 ms of traffic at the shaped rate (plus
  the bucket) and tail-drops the rest, like a modest access-link buffer. A delay-based estimator (GCC's
  trendline) sees up to ~100 ms of queuing delay grow before the first loss; unpaced keyframe bursts larger
  than that queue lose packets, as they would on such a link.
- tbf counts Ethernet frame bytes (payload + 8 UDP + 20 IP + 14 Ethernet), so with 1200-byte UDP payloads the
  payload goodput is 1200/1242 = 96.6 % of the configured rate.
- `shape(None)` deletes the qdisc (back to veth's default noqueue: line rate, no drops). `shape()` may be
  called any number of times mid-test; `tbf` changes in place (`replace`), so the new rate applies at once.

Processes started through the lab (`popen_in`, `start_gateway`) are killed and every namespace is deleted by
`NetLab.close()` (also run by `__exit__`, even when the body raised).

Chromium (`LabBrowsers`): one headless Chromium per namespace, each started through a wrapper script
`exec ip netns exec <ns> chromium "$@"` given to Playwright as `executable_path` (same flags as
tests/test_browser.py, plus `--disable-features=WebRtcHideLocalIpsWithMdns` so a viewer offers its real
10.213.N.2 host candidate instead of an mDNS name the gateway cannot resolve).

Needs root, iproute2 (`ip`, `tc`) and, for browsers, Debian's chromium and the playwright package.
"""

from __future__ import annotations

import ctypes
import datetime
import http.client
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from conftest import Gateway, deep_merge, launch_gateway

T = TypeVar("T")

SERVICE_IP = "10.213.0.1"  # on the gateway namespace's lo; reachable from every viewer through its own link
SUBNET_BASE = "10.213"  # host N uses 10.213.N.0/30: .1 on the gateway side, .2 in the viewer namespace
MAX_HOSTS = 250
GATEWAY_PORT = 18080  # launch_gateway's fixed port inside a namespace
BURST_MS = 10
MIN_BURST_BYTES = 3200
DEFAULT_LATENCY_MS = 100
ETH_IP_UDP_OVERHEAD = 14 + 20 + 8  # bytes tbf counts on top of a UDP payload

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")
_CLONE_NEWNET = 0x40000000


def lab_unavailable(*, browsers: bool = False) -> str | None:
    """Why a lab cannot run here (a pytest skip reason), or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to create network namespaces (ip netns)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"iproute2 (`{tool}`) is not installed"
    if browsers:
        if not os.path.exists(CHROMIUM):
            return f"{CHROMIUM} is not installed"
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return "the playwright Python package is not installed"
    return None


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def tbf_burst_bytes(rate_kbit: int) -> int:
    """The bucket `Host.shape` uses for a rate: BURST_MS of tokens, at least MIN_BURST_BYTES."""
    return max(math.ceil(rate_kbit * 1000 / 8 * BURST_MS / 1000), MIN_BURST_BYTES)


# ------------------------------------------------------------------------------------------------------ hosts


@dataclass
class Host:
    """One viewer namespace and its link to the gateway namespace."""

    lab: "NetLab"
    name: str
    index: int
    ns: str
    ip: str  # the viewer's address (eth0 in its namespace)
    gateway_ip: str  # the gateway-side veth address of this link
    gateway_dev: str  # the gateway-side veth (in the gateway namespace), where the shaper sits
    dev: str = "eth0"
    rate_kbit: int | None = field(default=None)  # the current cap towards the viewer, None = unshaped

    def shape(
        self, rate_kbit: int | None, *, latency_ms: int = DEFAULT_LATENCY_MS, burst_bytes: int | None = None
    ) -> None:
        """Cap gateway -> viewer traffic at rate_kbit (tbf, replaced in place), or lift the cap with None."""
        gw_ns = self.lab.gateway_ns
        if rate_kbit is None:
            if self.rate_kbit is not None:
                _run(["tc", "-n", gw_ns, "qdisc", "del", "dev", self.gateway_dev, "root"])
            self.rate_kbit = None
            return
        if rate_kbit <= 0:
            raise ValueError(f"rate_kbit must be positive or None, got {rate_kbit}")
        burst = burst_bytes if burst_bytes is not None else tbf_burst_bytes(rate_kbit)
        _run([
            "tc", "-n", gw_ns, "qdisc", "replace", "dev", self.gateway_dev, "root",
            "tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst), "latency", f"{latency_ms}ms",
        ])  # fmt: skip
        self.rate_kbit = rate_kbit

    def qdisc_stats(self) -> dict[str, Any]:
        """`tc -s` counters of the gateway-side root qdisc: kind, bytes, packets, drops, overlimits, backlog."""
        out = _run(["tc", "-n", self.lab.gateway_ns, "-s", "-j", "qdisc", "show", "dev", self.gateway_dev]).stdout
        for q in json.loads(out or "[]"):
            if q.get("root"):
                return q
        return {}

    def run(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.lab.run_in(self.ns, cmd, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        return self.lab.popen_in(self.ns, cmd, **kwargs)


# -------------------------------------------------------------------------------------------------------- lab


class NetLab:
    """Gateway namespace + viewer namespaces. Use as a context manager; `close()` undoes everything."""

    def __init__(self, prefix: str = "wgl") -> None:
        if not re.fullmatch(r"[a-z0-9-]{1,12}", prefix):
            raise ValueError(f"bad lab prefix {prefix!r}")
        self.run_id = secrets.token_hex(4)
        self.name = f"{prefix}-{self.run_id}"
        self.gateway_ns = f"{self.name}-gw"
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []  # every namespace this lab created, gateway first
        self._procs: list[subprocess.Popen] = []
        self._gateways: list[LabGateway] = []
        self._closed = False
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0

    # -- lifecycle

    def __enter__(self) -> "NetLab":
        started = time.monotonic()
        try:
            self._add_ns(self.gateway_ns)
            _run(["ip", "-n", self.gateway_ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.gateway_ns, "addr", "add", f"{SERVICE_IP}/32", "dev", "lo"])
        except BaseException:
            self.close()
            raise
        self.setup_seconds += time.monotonic() - started
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        # IPv4 only: no link-local IPv6 candidates, no DAD, no router solicitations.
        self.run_in(ns, ["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                                     "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"])  # fmt: skip

    def add_host(self, name: str) -> Host:
        """A viewer namespace `<lab>-<name>` linked to the gateway namespace by its own veth pair."""
        if self._closed:
            raise RuntimeError("the lab is closed")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"host name must match {_NAME_RE.pattern}, got {name!r}")
        if name in self.hosts or name == "gw":
            raise ValueError(f"host {name!r} exists already")
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts")
        started = time.monotonic()
        ns = f"{self.name}-{name}"
        gw_dev = f"vh{index}"
        gw_ip, host_ip = f"{SUBNET_BASE}.{index}.1", f"{SUBNET_BASE}.{index}.2"
        self._add_ns(ns)
        gns = self.gateway_ns
        # Created inside the gateway namespace with the peer end directly in the viewer namespace: the names
        # never exist in the root namespace, so concurrent labs cannot clash on them.
        _run(["ip", "-n", gns, "link", "add", gw_dev, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", gns, "addr", "add", f"{gw_ip}/30", "dev", gw_dev])
        _run(["ip", "-n", gns, "link", "set", gw_dev, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{host_ip}/30", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", gw_ip])
        host = Host(self, name, index, ns, host_ip, gw_ip, gw_dev)
        self.hosts[name] = host
        self.setup_seconds += time.monotonic() - started
        return host

    def gateway_ip_for(self, host: Host | str) -> str:
        """The gateway-side address of a host's link (SERVICE_IP works as well, over the same link)."""
        return (self.hosts[host] if isinstance(host, str) else host).gateway_ip

    def close(self) -> None:
        """Stop gateways, kill processes, delete namespaces. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        for gw in self._gateways:
            try:
                gw.stop()
            except Exception:
                pass
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                    proc.wait(5)
                except Exception:
                    pass
        # A namespace whose processes are gone disappears with `ip netns del` (its veths go with it).
        for ns in reversed(self.namespaces):
            for _ in range(3):
                try:
                    if _run(["ip", "netns", "del", ns], check=False).returncode == 0 or not self._ns_exists(ns):
                        break
                except Exception:
                    pass
                time.sleep(0.2)
        self.teardown_seconds = time.monotonic() - started

    @staticmethod
    def _ns_exists(ns: str) -> bool:
        return os.path.exists(f"/run/netns/{ns}")

    def leftovers(self) -> list[str]:
        """This lab's namespaces that `ip netns list` still shows (empty after close())."""
        listed = _run(["ip", "netns", "list"]).stdout.split()
        return [ns for ns in listed if ns.startswith(self.name + "-")]

    # -- running things in a namespace

    def run_in(self, ns: str, cmd: Sequence[str], *, check: bool = True, timeout: float = 30,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a command to completion inside a namespace (text output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, **kwargs)

    def popen_in(self, ns: str, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start a background command inside a namespace; close() kills it."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def call_in(self, ns: str, fn: Callable[[], T], *, timeout: float = 30) -> T:
        """Call fn() in this process, on a fresh thread that joined the namespace (setns(2) is per thread).

        Sockets created inside fn belong to that namespace and keep working from any thread afterwards.
        """
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{ns}", "rb") as f:
                    if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({ns}): {os.strerror(err)}")
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e

        thread = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in {ns} did not finish in {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def socket_in(self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in the namespace (usable from any thread of this process)."""
        return self.call_in(ns, lambda: socket.socket(family, kind))

    def fetch(self, ns: str, url: str, *, method: str = "GET", body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:  # fmt: skip
        """An HTTP request made from inside a namespace (no proxies): (status, body)."""
        m = re.fullmatch(r"http://([^/:]+):(\d+)(/.*)?", url)
        if not m:
            raise ValueError(f"fetch takes http://HOST:PORT/path URLs, got {url!r}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"

        def request() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        return self.call_in(ns, request, timeout=timeout + 5)

    # -- the gateway

    def start_gateway(self, workdir: pathlib.Path, config: dict[str, Any] | None = None, *,
                      ice_addresses: Sequence[str] | None = None, name: str = "gw",
                      ready_timeout: float = 20) -> "LabGateway":  # fmt: skip
        """Start a gateway (tests/guarded_gateway.py) in the gateway namespace, listening on 0.0.0.0:18080.

        rtc.ice_addresses defaults to [SERVICE_IP] (one candidate every viewer and the local publisher reach);
        `config` is deep-merged over conftest.TEST_CONFIG and that. Returns once /healthz answers 200.
        """
        ice = list(ice_addresses) if ice_addresses is not None else [SERVICE_IP]
        merged = deep_merge({"rtc": {"ice_addresses": ice}}, config or {})
        gw = launch_gateway(workdir, merged, host="0.0.0.0", netns=self.gateway_ns, name=name)
        lab_gw = LabGateway(self, gw, GATEWAY_PORT)
        self._gateways.append(lab_gw)
        deadline = time.monotonic() + ready_timeout
        while True:
            if gw.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {gw.proc.returncode}:\n{gw.log()}")
            try:
                if lab_gw.get("/healthz")[0] == 200:
                    return lab_gw
            except (OSError, TimeoutError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                lab_gw.stop()
                raise RuntimeError(f"gateway did not become healthy in {self.gateway_ns}:\n{gw.log()}")
            time.sleep(0.1)


@dataclass
class LabGateway:
    """A gateway running in the lab's gateway namespace."""

    lab: NetLab
    gw: Gateway
    port: int

    @property
    def loopback_url(self) -> str:
        """Base URL for clients in the gateway namespace (the publisher)."""
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, host: Host | None, path: str = "") -> str:
        """Base URL + path as seen from a host (over its own link), or from the gateway namespace (None)."""
        base = self.loopback_url if host is None else f"http://{self.lab.gateway_ip_for(host)}:{self.port}"
        return base + path

    def get(self, path: str, *, timeout: float = 5) -> tuple[int, str]:
        status, body = self.lab.fetch(self.lab.gateway_ns, self.loopback_url + path, timeout=timeout)
        return status, body.decode(errors="replace")

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of one Prometheus metric's samples, optionally filtered by a label substring."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and line[len(name)] in " {" and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.gw.log()

    def codec_violations(self) -> str:
        return self.gw.codec_violations()

    def stop(self) -> None:
        self.gw.stop()


# --------------------------------------------------------------------------------------------- UDP measurements


@dataclass
class UdpTrace:
    """What a udp_blast receiver saw: arrival times (time.monotonic()) and payload sizes."""

    sent_packets: int
    sent_bytes: int
    arrivals: list[tuple[float, int]]
    started: float
    ended: float

    @property
    def received_packets(self) -> int:
        return len(self.arrivals)

    def rate_kbit(self, start: float, end: float, *, wire: bool = False) -> float:
        """Receive rate in [start, end) (monotonic times): UDP payload, or Ethernet frame bytes with wire=True."""
        extra = ETH_IP_UDP_OVERHEAD if wire else 0
        total = sum(n + extra for t, n in self.arrivals if start <= t < end)
        return total * 8 / 1000 / (end - start)

    def series(self, step: float = 0.1, window: float = 0.5) -> list[tuple[float, float]]:
        """(window start, payload kbit/s) for sliding windows over the run."""
        out, t = [], self.started
        while t + window <= self.ended + 1e-9:
            out.append((t, self.rate_kbit(t, t + window)))
            t += step
        return out


def udp_blast(lab: NetLab, src_ns: str, dst_ns: str, dst_ip: str, *, rate_kbit: float, seconds: float,
              payload: int = 1200, port: int = 40000,
              during: Callable[[float], None] | None = None) -> UdpTrace:  # fmt: skip
    """Send UDP at a constant payload rate from src_ns to dst_ip:port (a socket in dst_ns) and record arrivals.

    `during(t0)` runs on the calling thread while traffic flows (e.g. to reshape the link at given times);
    sender and receiver are threads of this process whose sockets live in the two namespaces.
    """
    rx = lab.socket_in(dst_ns)
    tx = lab.socket_in(src_ns)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind((dst_ip, port))
        rx.settimeout(0.1)
        interval = payload * 8 / (rate_kbit * 1000)
        arrivals: list[tuple[float, int]] = []
        sent = [0]
        stop = threading.Event()
        t0 = time.monotonic() + 0.05
        end = t0 + seconds

        def receive() -> None:
            while not stop.is_set():
                try:
                    data = rx.recv(65536)
                except socket.timeout:
                    continue
                arrivals.append((time.monotonic(), len(data)))

        def send() -> None:
            data = bytearray(payload)
            n = 0
            while True:
                due = t0 + n * interval
                if due >= end:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                data[0:4] = n.to_bytes(4, "big")
                tx.sendto(data, (dst_ip, port))
                n += 1
            sent[0] = n

        receiver = threading.Thread(target=receive, daemon=True)
        sender = threading.Thread(target=send, daemon=True)
        receiver.start()
        sender.start()
        try:
            if during is not None:
                during(t0)
        finally:
            sender.join(seconds + 10)
            time.sleep(0.3)  # the shaper's queue (<= 100 ms) drains
            stop.set()
            receiver.join(5)
        return UdpTrace(sent[0], sent[0] * payload, arrivals, t0, end)
    finally:
        rx.close()
        tx.close()


# ------------------------------------------------------------------------------------------------------ browsers


def make_fake_video(path: pathlib.Path, *, width: int = 1280, height: int = 720, fps: int = 30,
                    seconds: int = 4) -> pathlib.Path:  # fmt: skip
    """A testsrc2 y4m clip for Chromium's fake camera (it loops). 1280x720 lets /publish?simulcast=1 send 3 layers."""
    import imageio_ffmpeg

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
                "-t", str(seconds), "-pix_fmt", "yuv420p", str(path),
            ],
            check=True,
            timeout=120,
        )  # fmt: skip
    return path


class LabBrowsers:
    """One headless Chromium per namespace (lazily started), each page in its own browser context.

        with LabBrowsers(lab, tmp_path, fake_video=clip) as browsers:
            pub = browsers.open_publisher(gw, "s1", simulcast=True)    # gateway namespace, 127.0.0.1
            view = browsers.open_viewer(host, gw, "s1")                 # host namespace, across its veth
            browsers.logs(view)                                          # console lines, for failure messages
    """

    def __init__(self, lab: NetLab, workdir: pathlib.Path, *, fake_video: pathlib.Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        self.lab = lab
        self.workdir = workdir
        self.fake_video = fake_video
        self.extra_args = list(extra_args)
        self._pw: Any = None
        self._browsers: dict[str, Any] = {}
        self._logs: dict[int, list[str]] = {}

    def __enter__(self) -> "LabBrowsers":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for b in self._browsers.values():
            try:
                b.close()
            except Exception:
                pass
        self._browsers.clear()
        if self._pw is not None:
            try:
                self._pw.stop()
            finally:
                self._pw = None

    def browser(self, ns: str) -> Any:
        """The Chromium of a namespace, started on first use through a wrapper script."""
        if ns not in self._browsers:
            if ns not in self.lab.namespaces:
                raise ValueError(f"{ns} is not a namespace of this lab")
            self.workdir.mkdir(parents=True, exist_ok=True)
            wrapper = self.workdir / f"chromium-in-{ns}"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
            wrapper.chmod(0o755)
            args = CHROMIUM_FLAGS + self.extra_args
            if self.fake_video is not None:
                args = args + [f"--use-file-for-fake-video-capture={self.fake_video}"]
            self._browsers[ns] = self._pw.chromium.launch(executable_path=str(wrapper), args=args, timeout=60_000)
        return self._browsers[ns]

    def new_page(self, where: Host | str | None, label: str = "") -> Any:
        """A page in its own context in a host's namespace, a namespace by name, or the gateway namespace (None)."""
        ns = self.lab.gateway_ns if where is None else (where.ns if isinstance(where, Host) else where)
        page = self.browser(ns).new_context().new_page()
        lines: list[str] = []
        tag = label or ns
        page.on("console", lambda m: lines.append(f"[{tag}] {m.type}: {m.text}"))
        page.on("pageerror", lambda e: lines.append(f"[{tag}] pageerror: {e}"))
        self._logs[id(page)] = lines
        return page

    def logs(self, page: Any, last: int = 40) -> str:
        return "\n".join(self._logs.get(id(page), [])[-last:])

    def open_publisher(self, gw: LabGateway, stream: str, *, simulcast: bool = True, codec: str = "VP8",
                       extra_query: str = "") -> Any:  # fmt: skip
        """/publish in the gateway namespace over loopback, autostarted.

        simulcast=True adds `simulcast=1` (3 layers q/h/f: 320x180 / 640x360 / 1280x720 at 150/500/1500 kbps
        from a 1280x720 fake camera). Pages without simulcast support ignore the parameter and send one layer.
        """
        query = f"stream={stream}&codec={codec}&autostart=1" + ("&simulcast=1" if simulcast else "") + extra_query
        page = self.new_page(None, f"publish:{stream}")
        page.goto(gw.url_for(None, f"/publish?{query}"))
        return page

    def open_viewer(self, host: Host, gw: LabGateway, stream: str, *, autostart: bool = True,
                    extra_query: str = "") -> Any:  # fmt: skip
        """/play in the host's namespace, loaded across its (possibly shaped) link."""
        query = f"stream={stream}" + ("&autostart=1" if autostart else "") + extra_query
        page = self.new_page(host, f"play:{host.name}")
        page.goto(gw.url_for(host, f"/play?{query}"))
        return page


def decided_at(gateway_log: str, since: float) -> float | None:
    """Wall-clock time of the gateway's first decision after `since` to move the viewer to the lowest layer (its
    log line "viewer ...: layer 0/..."; same machine clock). The SSE event would arrive later: it crosses the
    congested link."""
    for line in gateway_log.splitlines():
        match = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+,\d+) \S+ whep\.session: viewer \S+ layer 0/", line)
        if match:
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if when >= since:
                return when
    return None


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str] = "condition",
             interval: float = 0.25) -> Any:  # fmt: skip
    """Poll until condition() is truthy (returns it) or raise AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


__all__ = [
    "CHROMIUM", "CHROMIUM_FLAGS", "DEFAULT_LATENCY_MS", "GATEWAY_PORT", "SERVICE_IP", "Host", "LabBrowsers",
    "LabGateway", "NetLab", "UdpTrace", "decided_at", "lab_unavailable", "make_fake_video", "tbf_burst_bytes", "udp_blast",
    "wait_for",
]
