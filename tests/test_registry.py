"""gateway/registry.py: the same behaviour from InProcessRegistry (nodes sharing one InProcessStore) and
RedisRegistry (nodes sharing one real redis-server that each test starts on a free port), then Redis faults:
the server killed and restarted, frozen (SIGSTOP), and one node cut off by a TCP proxy.

Every wait is bounded; the module timeout is a backstop.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import time
import uuid
from typing import Any, Awaitable, Callable, Optional

import pytest
import redis.asyncio as aioredis

from gateway.registry import (
    InProcessRegistry,
    InProcessStore,
    NodeInfo,
    RedisRegistry,
    Registry,
    RegistryEvent,
    StreamInfo,
)

pytestmark = pytest.mark.timeout(25)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
LAYERS = [
    {"rid": "h", "width": 1280, "height": 720, "bitrate": 2_500_000},
    {"rid": "l", "width": 320, "height": 180, "bitrate": 150_000},
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server: own port, own temp dir, no persistence."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-run, losing everything (no persistence)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: pathlib.Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Cluster:
    """Makes started registries ("nodes") of one backend that see each other; closes them all at the end."""

    def __init__(self, backend: str, url: Optional[str]) -> None:
        self.backend = backend
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex[:8]}:"
        self.store = InProcessStore()
        self.registries: list[Registry] = []

    async def node(self, node_id: str, *, ttl: float = 5.0, capacity: int = 100, load: int = 0,
                   url: Optional[str] = None, start: bool = True, **kw: Any) -> Registry:
        info = NodeInfo(node_id, f"http://10.0.0.{len(self.registries) + 1}:8080", capacity, load)
        reg: Registry
        if self.backend == "inprocess":
            reg = InProcessRegistry(info, ttl, store=self.store, **kw)
        else:
            reg = RedisRegistry(url or self.url, info, ttl, self.prefix, **kw)  # type: ignore[arg-type]
        self.registries.append(reg)
        if start:
            await reg.start()
        return reg

    async def close(self) -> None:
        for reg in reversed(self.registries):
            await asyncio.wait_for(reg.close(), 5)


@pytest.fixture(params=["inprocess", "redis"])
async def cluster(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()
    c = Cluster(request.param, server.url if server else None)
    try:
        yield c
    finally:
        try:
            await c.close()
        finally:
            if server is not None:
                server.stop()


@pytest.fixture
async def redis_cluster(redis_server: RedisServer):
    c = Cluster("redis", redis_server.url)
    c.server = redis_server  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        await c.close()


def stream(name: str, session: str, **kw: Any) -> StreamInfo:
    return StreamInfo(name=name, node_id="", session_id=session, codecs=kw.pop("codecs", ["opus", "h264"]), **kw)


async def next_event(sub, match: Callable[[RegistryEvent], bool], timeout: float = 5.0) -> RegistryEvent:
    """The first event satisfying `match` within `timeout` seconds (others are skipped)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching event within {timeout} s; saw {seen}")
        try:
            event = await sub.get(remaining)
        except asyncio.TimeoutError:
            continue
        if match(event):
            return event
        seen.append(event)


async def all_events(sub, *matchers: Callable[[RegistryEvent], bool], timeout: float = 5.0) -> list[RegistryEvent]:
    """Wait until every matcher has matched some event (in any order); the matching events, in matcher order."""
    found: dict[int, RegistryEvent] = {}
    deadline = time.monotonic() + timeout
    seen = []
    while len(found) < len(matchers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(found)}/{len(matchers)} events within {timeout} s; saw {seen}")
        try:
            event = await sub.get(remaining)
        except asyncio.TimeoutError:
            continue
        seen.append(event)
        for i, match in enumerate(matchers):
            if i not in found and match(event):
                found[i] = event
                break
    return [found[i] for i in range(len(matchers))]


def is_event(kind: str, stream: Optional[str] = None, node: Optional[str] = None, **data: Any):
    def match(e: RegistryEvent) -> bool:
        return (e.kind == kind and (stream is None or e.stream == stream) and (node is None or e.node_id == node)
                and all(e.data.get(k) == v for k, v in data.items()))
    return match


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.05)


async def timed(coro: Awaitable[Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = await asyncio.wait_for(coro, 5)
    return result, time.perf_counter() - t0


# -- both backends ---------------------------------------------------------------------------------------------


async def test_nodes_are_listed_and_least_loaded_is_chosen(cluster: Cluster) -> None:
    a = await cluster.node("a", capacity=10, load=5)
    b = await cluster.node("b", capacity=10, load=2)
    c = await cluster.node("c", capacity=4, load=4)  # full
    assert a.healthy and b.healthy and c.healthy
    nodes = await a.list_nodes()
    assert [n.node_id for n in nodes] == ["a", "b", "c"]
    got = await b.get_node("a")
    assert got is not None and got.base_url == "http://10.0.0.1:8080" and got.capacity == 10 and got.load == 5
    assert got.heartbeat == pytest.approx(time.time(), abs=5)
    assert await a.get_node("nope") is None
    assert (await a.least_loaded_node()).node_id == "b"  # type: ignore[union-attr]
    await b.heartbeat(9)
    assert (await c.get_node("b")).load == 9  # type: ignore[union-attr]
    assert (await a.least_loaded_node()).node_id == "a"  # type: ignore[union-attr]
    await a.heartbeat(10)
    await b.heartbeat(10)
    assert await c.least_loaded_node() is None


async def test_claim_get_update_release(cluster: Cluster) -> None:
    a = await cluster.node("a")
    b = await cluster.node("b")
    assert await a.claim_stream(stream("live", "s1", layers=LAYERS))
    got = await b.get_stream("live")
    assert got is not None
    assert (got.name, got.node_id, got.session_id, got.codecs, got.layers, got.viewers) == (
        "live", "a", "s1", ["opus", "h264"], LAYERS, 0)
    assert got.started == pytest.approx(time.time(), abs=5)
    assert await a.claim_stream(stream("live", "s1")), "the holding session re-claims (refresh)"
    assert not await b.claim_stream(stream("live", "s2"))
    assert not await a.claim_stream(stream("live", "s3")), "another session on the same node"
    assert await b.claim_stream(stream("other", "s9"))
    assert [s.name for s in await a.list_streams()] == ["live", "other"]

    assert await a.update_stream("live", viewers=7)
    assert (await b.get_stream("live")).viewers == 7  # type: ignore[union-attr]
    assert not await b.update_stream("live", viewers=1), "only the owner updates"
    with pytest.raises(ValueError):
        await a.update_stream("live", node_id="b")

    assert not await a.release_stream("live", "wrong-session")
    assert await b.get_stream("live") is not None
    assert await a.release_stream("live", "s1")
    assert await b.get_stream("live") is None
    assert not await a.release_stream("live", "s1")
    assert await b.claim_stream(stream("live", "s2")), "free again"
    assert (await a.get_stream("live")).node_id == "b"  # type: ignore[union-attr]


async def test_concurrent_claims_exactly_one_wins(cluster: Cluster) -> None:
    nodes = [await cluster.node(f"n{i}") for i in range(3)]
    for round_ in range(30):
        name = f"race-{round_}"
        results = await asyncio.gather(*(
            reg.claim_stream(stream(name, f"{reg.node.node_id}-{round_}-{k}")) for k in range(2) for reg in nodes
        ))
        assert sum(results) == 1, (name, results)
        winner = [i for i, ok in enumerate(results) if ok][0]
        holder = await nodes[0].get_stream(name)
        assert holder is not None and holder.node_id == nodes[winner % 3].node.node_id
        assert holder.session_id == f"{holder.node_id}-{round_}-{winner // 3}"


async def test_events_are_delivered_across_nodes(cluster: Cluster) -> None:
    a = await cluster.node("a")
    watch = a.events()
    b = await cluster.node("b")
    sub = b.events()
    up = await next_event(watch, is_event("node_up", node="b"))
    assert up.stream is None and up.data["base_url"] == "http://10.0.0.2:8080"

    assert await a.claim_stream(stream("cam", "s1", layers=LAYERS[:1]))
    started = await next_event(sub, is_event("stream_started", "cam", "a"))
    assert started.data["session_id"] == "s1" and started.data["layers"] == LAYERS[:1]

    assert await a.update_stream("cam", viewers=3)  # no event for viewer counts
    assert await a.update_stream("cam", layers=LAYERS)
    changed = await next_event(sub, lambda e: e.kind != "stream_started")
    assert (changed.kind, changed.stream, changed.node_id) == ("layers_changed", "cam", "a")
    assert changed.data == {"session_id": "s1", "layers": LAYERS}
    assert await a.update_stream("cam", layers=LAYERS)  # unchanged: no event

    assert await a.release_stream("cam", "s1")
    stopped = await next_event(sub, lambda e: e.kind != "stream_started")
    assert (stopped.kind, stopped.stream, stopped.node_id) == ("stream_stopped", "cam", "a")
    assert stopped.data == {"session_id": "s1", "reason": "released"}

    assert await a.claim_stream(stream("cam2", "s2"))
    await next_event(sub, is_event("stream_started", "cam2"))
    await a.close()
    await next_event(sub, is_event("stream_stopped", "cam2", "a", reason="node_closed"))
    await next_event(sub, is_event("node_down", None, "a", reason="closed"))
    assert await b.get_node("a") is None and await b.get_stream("cam2") is None

    seen = []
    async for event in watch:  # a closed: its subscription ends
        seen.append(event)
    assert len(seen) < 100
    sub.close()


async def test_takeover_with_the_same_token(cluster: Cluster) -> None:
    lost: list[tuple[str, str]] = []
    a = await cluster.node("a", heartbeat_interval=0, on_stream_lost=lambda n, s: lost.append((n, s)))
    b = await cluster.node("b")
    sub = b.events()
    assert await a.claim_stream(stream("live", "old"), takeover_token="secret")
    assert not await b.claim_stream(stream("live", "new"))
    assert not await b.claim_stream(stream("live", "new"), takeover_token="guess")
    assert await b.claim_stream(stream("live", "new"), takeover_token="secret")
    holder = await a.get_stream("live")
    assert holder is not None and (holder.node_id, holder.session_id) == ("b", "new")
    await next_event(sub, is_event("stream_stopped", "live", "a", session_id="old", reason="takeover"))
    await next_event(sub, is_event("stream_started", "live", "b", session_id="new", takeover=True))

    assert await a.heartbeat()  # a learns that its claim is gone, and does not overwrite b's
    await until(lambda: _async(lost == [("live", "old")]), 2, "on_stream_lost")
    assert [s.name for s in a.owned_streams()] == []  # type: ignore[attr-defined]
    assert (await a.get_stream("live")).session_id == "new"  # type: ignore[union-attr]
    assert not await a.release_stream("live", "old")
    assert (await b.get_stream("live")).session_id == "new"  # type: ignore[union-attr]

    # A claim without a token cannot be taken over.
    assert await a.claim_stream(stream("plain", "p1"))
    assert not await b.claim_stream(stream("plain", "p2"), takeover_token="secret")


async def _async(value: bool) -> bool:
    return value


async def test_dead_node_expires_and_others_see_it(cluster: Cluster) -> None:
    """`a` heartbeats by hand and then stops (as if it died); `b` runs its own loop (ttl 1 s -> every 0.33 s),
    whose sweeps remove a's entries and emit stream_stopped/node_down. Then `a` comes back."""
    a = await cluster.node("a", ttl=1.0, heartbeat_interval=0)
    b = await cluster.node("b", ttl=1.0)
    sub = b.events()
    assert await a.claim_stream(stream("doomed", "s1"))
    for _ in range(3):  # alive while it heartbeats
        await asyncio.sleep(0.4)
        assert await a.heartbeat()
    assert await b.get_stream("doomed") is not None
    t0 = time.monotonic()
    # a stops heartbeating here.
    stopped, _ = await all_events(sub, is_event("stream_stopped", "doomed"),
                                  is_event("node_down", None, "a", reason="expired"), timeout=5)
    assert stopped.node_id == "a" and stopped.data == {"session_id": "s1", "reason": "expired"}
    detected = time.monotonic() - t0
    assert 0.5 < detected < 4.0, detected
    assert await b.get_stream("doomed") is None
    assert await b.get_node("a") is None
    assert [n.node_id for n in await b.list_nodes()] == ["b"]
    assert (await b.least_loaded_node()).node_id == "b"  # type: ignore[union-attr]
    assert await b.get_node("b") is not None, "b's own heartbeat keeps it alive"

    # a was only paused: its next heartbeat rewrites its node and the stream it still owns.
    assert await a.heartbeat()
    _, restored = await all_events(sub, is_event("node_up", None, "a"), is_event("stream_started", "doomed", "a"))
    assert restored.data["restored"] is True and restored.data["session_id"] == "s1"
    assert (await b.get_stream("doomed")).session_id == "s1"  # type: ignore[union-attr]


async def test_expired_stream_can_be_claimed_by_another_node(cluster: Cluster) -> None:
    lost: list[tuple[str, str]] = []
    a = await cluster.node("a", ttl=1.0, heartbeat_interval=0, on_stream_lost=lambda n, s: lost.append((n, s)))
    b = await cluster.node("b", ttl=1.0)
    assert await a.claim_stream(stream("live", "s1"))
    assert not await b.claim_stream(stream("live", "s2"))
    await until(lambda: b.claim_stream(stream("live", "s2")), 4, "b's claim after a's TTL")
    assert await a.heartbeat()
    await until(lambda: _async(lost == [("live", "s1")]), 2, "on_stream_lost")
    assert (await a.get_stream("live")).node_id == "b"  # type: ignore[union-attr]


async def test_closed_subscription_stops_receiving(cluster: Cluster) -> None:
    a = await cluster.node("a")
    sub = a.events()
    sub.close()
    assert await a.claim_stream(stream("x", "s"))
    with pytest.raises(StopAsyncIteration):
        await sub.get(1)
    async with a.events() as live:
        assert await a.claim_stream(stream("y", "s"))
        await next_event(live, is_event("stream_started", "y"))


async def test_embedded_default_is_one_local_node() -> None:
    reg = InProcessRegistry()
    await reg.start()
    try:
        assert reg.healthy and reg.node.node_id == "local"
        assert [n.node_id for n in await reg.list_nodes()] == ["local"]
        assert (await reg.least_loaded_node()).node_id == "local"  # type: ignore[union-attr]
        assert await reg.claim_stream(stream("live", "s1"))
        assert not await reg.claim_stream(stream("live", "s2"))
        assert (await reg.get_stream("live")).node_id == "local"  # type: ignore[union-attr]
    finally:
        await reg.close()
    assert await reg.list_streams() == [] and await reg.list_nodes() == []


# -- Redis only -----------------------------------------------------------------------------------------------


async def test_redis_key_layout(redis_cluster: Cluster) -> None:
    a = await redis_cluster.node("a", ttl=5.0)
    assert await a.claim_stream(stream("live", "s1", layers=LAYERS), takeover_token="tok")
    p = redis_cluster.prefix
    r = aioredis.from_url(redis_cluster.url, decode_responses=True)
    try:
        assert await r.type(f"{p}node:a") == "hash"
        assert 0 < await r.pttl(f"{p}node:a") <= 5000
        node = await r.hgetall(f"{p}node:a")
        assert node["base_url"] == "http://10.0.0.1:8080" and node["capacity"] == "100"
        assert await r.type(f"{p}stream:live") == "hash"
        assert 0 < await r.pttl(f"{p}stream:live") <= 5000
        h = await r.hgetall(f"{p}stream:live")
        assert h["node_id"] == "a" and h["session_id"] == "s1" and h["codecs"] == '["opus", "h264"]'
        assert len(h["token"]) == 64 and "tok" not in h["token"]
        assert await r.zrange(f"{p}nodes", 0, -1) == ["a"]
        assert await r.zrange(f"{p}streams", 0, -1) == ["live"]
        assert await r.type(f"{p}events") == "stream"
        kinds = [fields["kind"] for _, fields in await r.xrange(f"{p}events")]
        assert kinds == ["node_up", "stream_started"]
    finally:
        await r.aclose()


async def test_redis_killed_then_restarted(redis_cluster: Cluster) -> None:
    server: RedisServer = redis_cluster.server  # type: ignore[attr-defined]
    a = await redis_cluster.node("a", ttl=2.0)  # heartbeat every 0.67 s
    assert await a.claim_stream(stream("live", "s1", layers=LAYERS))
    assert a.healthy

    server.kill()
    # The first call after the kill notices at once (connection refused) or within op_timeout.
    ok, took = await timed(a.claim_stream(stream("during", "s2")))
    assert ok and took < 1.0, took
    await until(lambda: _async(not a.healthy), 3, "healthy=False")
    for call in (a.heartbeat(3), a.get_stream("live"), a.list_streams(), a.list_nodes(), a.get_node("a"),
                 a.update_stream("live", viewers=4, layers=LAYERS[:1]), a.least_loaded_node(),
                 a.claim_stream(stream("late", "s3")), a.release_stream("late", "s3")):
        _, took = await timed(call)
        assert took < 1.0, (call, took)
    assert not a.healthy
    local = await a.get_stream("live")
    assert local is not None and local.viewers == 4 and local.layers == LAYERS[:1]
    assert [s.name for s in await a.list_streams()] == ["during", "live"]
    assert [n.node_id for n in await a.list_nodes()] == ["a"]

    server.start()  # same port, empty
    await until(lambda: _async(a.healthy), 5, "healthy again")
    b = await redis_cluster.node("b", ttl=2.0)

    async def rewritten() -> bool:
        return {s.name for s in await b.list_streams()} == {"live", "during"} and await b.get_node("a") is not None
    await until(rewritten, 5, "a's entries rewritten")
    live = await b.get_stream("live")
    assert live is not None and (live.node_id, live.session_id, live.viewers, live.layers) == ("a", "s1", 4, LAYERS[:1])
    assert (await b.get_node("a")).load == 3, "the load given during the outage is written"  # type: ignore[union-attr]
    assert not await b.claim_stream(stream("live", "x"))
    assert await b.get_stream("late") is None


async def test_redis_restart_events(redis_cluster: Cluster) -> None:
    """Events resume after a restart: node_up/stream_started(restored) appear for the rewritten entries."""
    server: RedisServer = redis_cluster.server  # type: ignore[attr-defined]
    a = await redis_cluster.node("a", ttl=2.0)
    b = await redis_cluster.node("b", ttl=2.0)
    sub = b.events()
    assert await a.claim_stream(stream("live", "s1"))
    await next_event(sub, is_event("stream_started", "live"))
    server.kill()
    await until(lambda: _async(not a.healthy and not b.healthy), 3, "both unhealthy")
    server.start()
    await all_events(sub, is_event("stream_started", "live", "a", restored=True), is_event("node_up", None, "a"),
                     is_event("node_up", None, "b"), timeout=6)
    await until(lambda: _async(a.healthy and b.healthy), 3, "both healthy")


async def test_redis_frozen_calls_time_out_quickly(redis_cluster: Cluster) -> None:
    """SIGSTOP: the socket stays open but nothing answers; each call is bounded by op_timeout (0.5 s)."""
    server: RedisServer = redis_cluster.server  # type: ignore[attr-defined]
    a = await redis_cluster.node("a", ttl=3.0, heartbeat_interval=0)
    assert await a.claim_stream(stream("live", "s1"))
    server.pause()
    try:
        got, took = await timed(a.get_stream("live"))
        assert 0.3 < took < 1.0, took
        assert got is not None and got.session_id == "s1"  # local copy
        assert not a.healthy
        ok, took = await timed(a.heartbeat(1))
        assert not ok and took < 1.0
        _, took = await timed(a.claim_stream(stream("x", "s2")))
        assert took < 0.1, "while unhealthy, calls answer locally without waiting on Redis"
    finally:
        server.resume()
    assert await asyncio.wait_for(a.heartbeat(1), 2)
    assert a.healthy
    assert {s.name for s in await a.list_streams()} == {"live", "x"}


class TcpProxy:
    """A byte pipe to Redis that the test can cut (close everything, refuse new connections) and heal."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self._server: Optional[asyncio.base_events.Server] = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}

    def partition(self) -> None:
        self.cut = True
        for w in list(self._writers):
            w.close()

    def heal(self) -> None:
        self.cut = False

    async def close(self) -> None:
        self.partition()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_partitioned_node_loses_a_stream_claimed_meanwhile(redis_cluster: Cluster) -> None:
    """Only `a` loses Redis (through a proxy): its streams expire, `b` claims one of them, `a` keeps serving from
    its local copy and even claims a new stream locally; when `a` reconnects it rewrites what is still its own and
    learns (on_stream_lost) that the other is now b's."""
    proxy = TcpProxy(redis_cluster.server.port)  # type: ignore[attr-defined]
    await proxy.start()
    lost: list[tuple[str, str]] = []
    try:
        a = await redis_cluster.node("a", ttl=1.0, url=proxy.url, on_stream_lost=lambda n, s: lost.append((n, s)))
        b = await redis_cluster.node("b", ttl=1.0)
        sub = b.events()
        assert await a.claim_stream(stream("contested", "a1"))
        assert await a.claim_stream(stream("kept", "a2"))
        proxy.partition()
        await next_event(sub, is_event("node_down", None, "a", reason="expired"), timeout=5)
        assert not a.healthy
        assert await b.claim_stream(stream("contested", "b1"))
        assert await a.claim_stream(stream("offline", "a3")), "accepted locally while Redis is unreachable"
        assert (await a.get_stream("contested")).session_id == "a1"  # type: ignore[union-attr]
        proxy.heal()
        await until(lambda: _async(lost == [("contested", "a1")]), 5, "on_stream_lost")
        assert a.healthy
        assert {s.name for s in a.owned_streams()} == {"kept", "offline"}  # type: ignore[attr-defined]
        assert (await b.get_stream("contested")).session_id == "b1"  # type: ignore[union-attr]
        assert (await b.get_stream("kept")).node_id == "a"  # type: ignore[union-attr]
        assert (await b.get_stream("offline")).node_id == "a"  # type: ignore[union-attr]
        assert await b.get_node("a") is not None
    finally:
        await proxy.close()


async def test_redis_latency(redis_cluster: Cluster, capsys: pytest.CaptureFixture) -> None:
    """Measures claim/heartbeat/get round trips against the local Redis (printed; loose bounds asserted)."""
    a = await redis_cluster.node("a", ttl=10.0, heartbeat_interval=0)
    for i in range(10):
        assert await a.claim_stream(stream(f"warm{i}", "w"))
    claims, beats, gets = [], [], []
    for i in range(300):
        _, t = await timed(a.claim_stream(stream(f"s{i}", f"sess{i}", layers=LAYERS)))
        claims.append(t)
    for _ in range(100):
        _, t = await timed(a.heartbeat(1))
        beats.append(t)
    for i in range(300):
        _, t = await timed(a.get_stream(f"s{i}"))
        gets.append(t)

    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"median {statistics.median(xs) * 1000:.2f} ms, p99 {xs[int(len(xs) * 0.99) - 1] * 1000:.2f} ms"

    with capsys.disabled():
        print(f"\n[registry latency, local redis] claim: {ms(claims)}; heartbeat (310 streams + sweep): "
              f"{ms(beats)}; get_stream: {ms(gets)}")
    assert statistics.median(claims) < 0.05
    assert statistics.median(beats) < 0.2
