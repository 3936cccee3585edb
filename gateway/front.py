"""The front process of `http.workers` > 1: starts the workers, passes each HTTP request to one of them.

Routing (gateway/workers.py explains the worker model):
- POST /whip/{stream} (and its OPTIONS): the stream's owner worker (`owner_worker`).
- POST /whep/{stream}: the next worker in turn (round robin); a worker without the stream relays it from the owner.
- /whip|whep/{stream}/{session id}[/...] (PATCH, DELETE, OPTIONS, the SSE POST and its long-lived event stream GET,
  the layer POST): the worker named by the session id ("w<index>.").
- /api/streams: every worker's list merged (one entry per stream; `viewers` counts viewers, not the relay pulls
  between workers; `workers` gives each worker's count); /api/streams/{name}/viewers: every worker's viewers, each
  with its `worker`; /api/workers: each worker's index, URL, pid and streams.
- /metrics: every worker's samples with a `worker="<index>"` label added (sum over it for the gateway's total).
- /healthz: the front itself; /readyz: ready when every worker is (503 otherwise). Anything else: worker 0.

Requests and responses pass unchanged (status, body, Location, Link, ETag, Retry-After, CORS, Authorization,
Content-Type, If-Match), minus hop-by-hop headers (RFC 9110 §7.6.1); response bodies are streamed, so the SSE
event stream flows as it is written, and a client leaving closes the worker's side too. Workers write relative
Locations and Links; an absolute URL naming a worker's internal address is rewritten to the front's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Optional

import httpx

from gateway.config import Config
from gateway.http_responses import MAX_BODY
from gateway.workers import owner_worker, worker_count, worker_of_session

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# RFC 9110 §7.6.1: connection-specific fields are not forwarded.
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization",
}
STARTUP_TIMEOUT = 60.0  # seconds a worker may take to answer /healthz (importing aiortc on a loaded machine is slow)
STOP_TIMEOUT = 10.0  # seconds workers get to shut down after SIGTERM before SIGKILL
RESTART_PAUSE = 1.0  # seconds between a worker's death and its replacement
EVENT_STREAM_PATH = re.compile(r"^/whep/[^/]+/[^/]+/sse/[^/]+$")  # long-lived: no read timeout


# --------------------------------------------------------------------------------------------------------------
# The worker processes
# --------------------------------------------------------------------------------------------------------------


def _entry_command() -> list[str]:
    """How this program was started, to start the workers the same way (`python -m gateway`, the `whipgate`
    script, or a wrapper script such as tests/guarded_gateway.py)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    return [sys.executable, os.path.abspath(sys.argv[0])]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class WorkerPool:
    """The N worker processes: started with the front, restarted when one dies, stopped with the front."""

    def __init__(self, count: int, config_path: Optional[str], front_url: str) -> None:
        self.exiting: Callable[[], bool] = lambda: False  # the front is shutting down: no restarts
        self.ports = _free_ports(count)
        self.urls = tuple(f"http://127.0.0.1:{port}" for port in self.ports)
        self.config_path = os.path.abspath(config_path) if config_path else None
        self.front_url = front_url
        self.procs: list[Optional[subprocess.Popen]] = [None] * count
        self.restarts = [0] * count
        self.stopping = False

    def command(self, index: int) -> list[str]:
        cmd = _entry_command() + ["serve"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd + [
            "--listen", f"127.0.0.1:{self.ports[index]}",
            "--worker", str(index),
            "--worker-urls", ",".join(self.urls),
            "--front-url", self.front_url,
            "--front-pid", str(os.getpid()),
        ]

    def spawn(self, index: int) -> None:
        # stdout/stderr: the front's. Own process group: a terminal's Ctrl-C reaches the front only, which stops
        # the workers in order (and does not mistake them for crashed ones).
        self.procs[index] = subprocess.Popen(self.command(index), process_group=0)
        log.info("worker %d started (pid %d) on %s", index, self.procs[index].pid, self.urls[index])

    def start(self) -> bool:
        """Start every worker and wait until each answers /healthz; False (all stopped) when one cannot start."""
        for index in range(len(self.urls)):
            self.spawn(index)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            for index, url in enumerate(self.urls):
                while True:
                    proc = self.procs[index]
                    if proc is not None and proc.poll() is not None:
                        log.error("worker %d exited with %d while starting", index, proc.returncode)
                        self.stop()
                        return False
                    try:
                        if http.get(f"{url}/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        log.error("worker %d did not answer within %g s", index, STARTUP_TIMEOUT)
                        self.stop()
                        return False
                    time.sleep(0.1)
        return True

    async def supervise(self) -> None:
        """Replace a worker that died (its sessions are gone; new requests reach the new one)."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            for index, proc in enumerate(self.procs):
                if self.stopping or self.exiting() or proc is None or proc.poll() is None:
                    continue
                log.error("worker %d (pid %d) exited with %d; starting a new one", index, proc.pid, proc.returncode)
                self.restarts[index] += 1
                await asyncio.sleep(RESTART_PAUSE)
                if not (self.stopping or self.exiting()):
                    self.spawn(index)

    def stop(self) -> None:
        """SIGTERM every worker (each shuts down gracefully), SIGKILL what is left after STOP_TIMEOUT."""
        self.stopping = True
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait(5)


# --------------------------------------------------------------------------------------------------------------
# The HTTP front (an ASGI application run by uvicorn)
# --------------------------------------------------------------------------------------------------------------


def _json_response(body: Any, status: int = 200) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    data = json.dumps(body).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())], data


def label_samples(text: str, worker: int) -> dict[str, tuple[list[str], list[str]]]:
    """Prometheus text exposition: each family's comment lines and its samples with `worker="<index>"` added."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] = ([], [])
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], ([], []))
                if line not in current[0]:
                    current[0].append(line)
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            labelled = f'{line[:brace]}{{worker="{worker}",{line[brace + 1:]}'.replace(",}", "}")
        else:
            labelled = f'{line[:space]}{{worker="{worker}"}}{line[space:]}'
        current[1].append(labelled)
    return families


class FrontApp:
    """The front's ASGI application: routes each request to a worker and streams the answer back."""

    def __init__(self, config: Config, pool: WorkerPool) -> None:
        self.config = config
        self.pool = pool
        self.count = len(pool.urls)
        self._next_viewer_worker = itertools.cycle(range(self.count))
        self.http: Optional[httpx.AsyncClient] = None
        self._supervisor: Optional[asyncio.Task[None]] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Worker-to-worker and front-to-worker traffic: no proxy from the environment.
                # No cap on connections: each open SSE event stream holds one to its worker.
                self.http = httpx.AsyncClient(
                    trust_env=False,
                    timeout=httpx.Timeout(60.0, connect=5.0),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                )
                self._supervisor = asyncio.create_task(self.pool.supervise())
                log.info("whipgate front listening on %s, %d workers", self.pool.front_url, self.count)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.stopping = True
                if self._supervisor is not None:
                    self._supervisor.cancel()
                if self.http is not None:
                    await self.http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- routing ----------------------------------------------------------------------------------------------
    def route(self, method: str, path: str) -> int:
        """The worker index a request goes to."""
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] in ("whip", "whep") and parts[1]:
            if len(parts) == 2:
                if parts[0] == "whep" and method == "POST":
                    return next(self._next_viewer_worker)
                return owner_worker(parts[1], self.count)
            owner = worker_of_session(parts[2], self.count)
            return owner if owner is not None else owner_worker(parts[1], self.count)
        return 0

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:  # the workers refuse bodies above MAX_BODY anyway; do not buffer more
                status, headers, data = _json_response({"title": "Content Too Large", "status": 413,
                                                        "detail": f"body larger than {MAX_BODY} bytes"}, 413)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        local = await self._local(method, path)
        if local is not None:
            status, headers, data = local
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await self._proxy(self.route(method, path), scope, body, receive, send)

    async def _local(self, method: str, path: str) -> Optional[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        """What the front answers itself: health, and the merged views of the workers."""
        if method != "GET":
            return None
        if path == "/healthz":
            return _json_response({"status": "ok", "workers": self.count})
        if path == "/readyz":
            return await self._readyz()
        if path == "/metrics":
            return await self._metrics()
        if path == "/api/workers":
            return _json_response(await self._workers())
        if path == "/api/streams":
            return _json_response(await self._streams())
        match = re.fullmatch(r"/api/streams/([^/]+)/viewers", path)
        if match:
            return _json_response(await self._viewers(match.group(1)))
        return None

    async def _get_json(self, index: int, path: str) -> Any:
        assert self.http is not None
        try:
            response = await self.http.get(self.pool.urls[index] + path, timeout=5.0)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def _each(self, path: str) -> list[Any]:
        return list(await asyncio.gather(*(self._get_json(i, path) for i in range(self.count))))

    async def _workers(self) -> list[dict]:
        streams = await self._each("/api/streams")
        out = []
        for index, listed in enumerate(streams):
            proc = self.pool.procs[index]
            out.append({
                "worker": index,
                "url": self.pool.urls[index],
                "pid": proc.pid if proc is not None else None,
                "alive": listed is not None,
                "restarts": self.pool.restarts[index],
                "streams": listed or [],
            })
        return out

    async def _streams(self) -> list[dict]:
        """One entry per stream: the owner worker's, with `viewers` = the viewers on every worker (an owner's
        relay sessions to the other workers not counted) and `workers` = each worker's local count."""
        by_name: dict[str, dict[int, dict]] = {}
        for index, listed in enumerate(await self._each("/api/streams")):
            for entry in listed or []:
                by_name.setdefault(entry["stream"], {})[index] = entry
        merged = []
        for name, entries in by_name.items():
            owner = owner_worker(name, self.count)
            entry = dict(entries.get(owner) or next(iter(entries.values())))
            relays = len(entries) - 1 if owner in entries else 0  # each other worker listing it pulls it once
            counts = {str(i): e["viewers"] - (relays if i == owner else 0) for i, e in entries.items()}
            entry["viewers"] = sum(counts.values())
            entry["workers"] = counts
            merged.append(entry)
        return merged

    async def _viewers(self, name: str) -> list[dict]:
        out = []
        for index, listed in enumerate(await self._each(f"/api/streams/{name}/viewers")):
            out += [dict(viewer, worker=index) for viewer in listed or []]
        return out

    async def _readyz(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        answers = await self._each("/readyz")
        ready = all(a is not None and a.get("status") == "ready" for a in answers)
        body = {"status": "ready" if ready else "degraded", "workers": [a or {"status": "unreachable"} for a in answers]}
        return _json_response(body, 200 if ready else 503)

    async def _metrics(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.http is not None
        families: dict[str, tuple[list[str], list[str]]] = {}
        content_type = b"text/plain; version=0.0.4; charset=utf-8"
        for index, url in enumerate(self.pool.urls):
            try:
                response = await self.http.get(f"{url}/metrics", timeout=5.0)
            except httpx.HTTPError:
                continue
            content_type = response.headers.get("content-type", content_type.decode()).encode()
            for name, (comments, samples) in label_samples(response.text, index).items():
                merged = families.setdefault(name, ([], []))
                merged[0].extend(c for c in comments if c not in merged[0])
                merged[1].extend(samples)
        text = "".join("\n".join(comments + samples) + "\n" for comments, samples in families.values())
        data = text.encode()
        return 200, [(b"content-type", content_type), (b"content-length", str(len(data)).encode())], data

    # ---- proxying ---------------------------------------------------------------------------------------------
    async def _proxy(self, index: int, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        assert self.http is not None
        base = self.pool.urls[index]
        url = base + scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP and k.lower() not in (b"host", b"content-length")]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))
        front_base = self._front_base(scope)
        timeout = httpx.Timeout(60.0, connect=5.0, read=None) if EVENT_STREAM_PATH.match(scope["path"]) else None
        request = self.http.build_request(scope["method"], url, headers=headers, content=body, **({"timeout": timeout} if timeout else {}))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("worker %d did not answer %s %s: %s", index, scope["method"], scope["path"], exc)
            detail = json.dumps({"title": "Service Unavailable", "status": 503, "detail": f"worker {index} is unavailable"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/problem+json"), (b"retry-after", b"2"),
                (b"content-length", str(len(detail)).encode()),
            ]})
            await send({"type": "http.response.body", "body": detail})
            return
        try:
            out_headers = []
            for key, value in response.headers.raw:
                if key.lower() in HOP_BY_HOP:
                    continue
                if key.lower() in (b"location", b"link", b"content-location"):
                    value = self._rewrite(value, front_base)
                out_headers.append((key, value))
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            pump = asyncio.create_task(self._pump(response, send))
            leaving = asyncio.create_task(self._client_gone(receive))
            done, pending = await asyncio.wait({pump, leaving}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if pump in done:
                pump.result()
        except httpx.HTTPError as exc:  # the worker went away mid-body: the client sees the body end
            log.info("worker %d ended %s %s early: %s", index, scope["method"], scope["path"], exc)
        finally:
            await response.aclose()

    @staticmethod
    async def _pump(response: httpx.Response, send: Send) -> None:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _client_gone(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _front_base(self, scope: Scope) -> bytes:
        host = dict(scope["headers"]).get(b"host")
        if host:
            return scope.get("scheme", "http").encode() + b"://" + host
        return self.pool.front_url.encode()

    def _rewrite(self, value: bytes, front_base: bytes) -> bytes:
        for url in self.pool.urls:
            value = value.replace(url.encode(), front_base)
        return value


# --------------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_front(config: Config, config_path: Optional[str], loop: str, run: Callable[..., int]) -> int:
    """Bind the public port, start the workers, serve until SIGTERM/SIGINT, then stop the workers."""
    import uvicorn

    count = worker_count(config)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))  # one line per request else
    try:
        sock = _bind(config.http.host, config.http.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.http.host, config.http.port, exc)
        return 1
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if config.http.host in ("0.0.0.0", "::", "") else config.http.host
    front_url = config.cluster.public_url or (f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}")
    pool = WorkerPool(count, config_path, front_url)
    # A SIGTERM/SIGINT while the workers start stops them too.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = pool.start()
    except KeyboardInterrupt:
        pool.stop()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not started:
        sock.close()
        return 1
    server = uvicorn.Server(
        # The workers' Date and Server headers pass through; uvicorn adds none of its own.
        uvicorn.Config(FrontApp(config, pool), loop=loop, log_level=config.log_level, lifespan="on", server_header=False, date_header=False)
    )
    pool.exiting = lambda: server.should_exit
    try:
        return run(server, sockets=[sock])
    finally:
        pool.stop()
        sock.close()
