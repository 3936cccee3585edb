"""Stream and node registry: many gateways acting as one (origin and edge).

One interface (`Registry`), two backends:

- `InProcessRegistry`: the embedded default. No I/O; events go through asyncio queues. Several instances
  may share one `InProcessStore` to act as several nodes inside one process (the tests do this).
- `RedisRegistry(url, node, ttl=10.0, key_prefix="whipgate:")`: every gateway of a deployment points at one
  Redis (redis-py asyncio) and sees the others' nodes and streams.

What is tracked
---------------
- node: `NodeInfo(node_id, base_url, capacity, load, heartbeat)`; `capacity <= 0` means unlimited.
- stream: `StreamInfo(name, node_id, session_id, codecs, layers, started, viewers)`; each layer is a dict
  with `rid`, `width`, `height`, `bitrate`.

Both carry a TTL (`ttl` seconds) that this node's heartbeat renews. `start()` runs the heartbeat every
`heartbeat_interval` seconds (default `ttl / 3`; `0` = no loop, the caller calls `heartbeat(load)`), taking
the load from `load_fn()` when given. A node that dies stops renewing, so its node entry and its streams
disappear by themselves once the TTL runs out.

Redis key layout (`{p}` is `key_prefix`, default `whipgate:`)
-------------------------------------------------------------
| key | type | content |
| --- | --- | --- |
| `{p}node:{node_id}` | hash, PEXPIRE ttl | `node_id`, `base_url`, `capacity`, `load`, `heartbeat` (unix time) |
| `{p}stream:{name}` | hash, PEXPIRE ttl | `name`, `node_id`, `session_id`, `codecs` (JSON list), `layers` (JSON list), `started` (unix time), `viewers`, `token` (SHA-256 hex of the takeover token, or empty) |
| `{p}nodes` | sorted set | node ids, score = expiry deadline in ms (Redis clock): the index for listing and expiry sweeps |
| `{p}streams` | sorted set | stream names, score = expiry deadline in ms |
| `{p}stream_owners` | hash | stream name -> JSON `{"node_id", "session_id"}`, kept until the sweep so that an expired stream's `stream_stopped` event can still name its node |
| `{p}events` | stream (XADD MAXLEN ~ `events_maxlen`) | one entry per event: fields `kind`, `stream` (empty for node events), `node`, `data` (JSON) |

Every write is a Lua script, so each is atomic: `claim_stream` is check-and-set inside one script (no two
nodes or sessions can both win), and each write appends its event to `{p}events` in the same script, so an
event is never lost or duplicated relative to the change it describes. All keys share the prefix; with Redis
Cluster give the prefix a hash tag (e.g. `{whipgate}:`) so that they live in one slot (the sweep script
builds entry keys from the prefix).

Events
------
`RegistryEvent(kind, stream, node_id, data)` with kind one of:

- `node_up` (data: the node's fields) - registered, or rewritten after it had expired / Redis lost it;
- `node_down` (data: `reason` = `expired` | `closed`);
- `stream_started` (data: the stream's fields, plus `takeover: true` or `restored: true` when applicable);
- `stream_stopped` (data: `session_id`, `reason` = `released` | `expired` | `takeover` | `node_closed`);
- `layers_changed` (data: `session_id`, `layers`).

`events()` returns a subscription (async iterator) that receives every event published after the call, by
any node, including this node's own. Redis events go through a Redis *stream* rather than pub/sub: one
reader task per registry follows it with XREAD BLOCK from the last id it saw, so a short disconnection from
a Redis that stays up loses nothing (a restarted Redis without persistence has lost its history, of
course), and operators can read the recent history with XRANGE. A subscriber that falls more than
`event_queue_size` events behind loses the oldest ones (logged).

Detecting dead nodes
--------------------
By periodic sweeps, not keyspace notifications. Every heartbeat (of every node) also runs a sweep script
that looks in the `{p}nodes` / `{p}streams` indexes for deadlines in the past, checks whether the entry key
still exists, and if not removes the index entry and appends `stream_stopped` (reason `expired`) or
`node_down` (reason `expired`). Because the sweep is one atomic script, exactly one node emits each event,
whoever sweeps first. Keyspace notifications (`notify-keyspace-events Ex`) were not used: they need CONFIG
SET (often refused by managed Redis), they are fire-and-forget pub/sub (missed when no node happens to be
subscribed, duplicated when several are) and carry no data about the expired entry. A dead node's entries
are gone from reads after `ttl`; its events follow within one heartbeat interval of that.

When Redis is unreachable
-------------------------
No call hangs or raises because of Redis: each Redis operation is bounded by `op_timeout` (0.5 s default,
redis-py's retries disabled); a failure is logged (warning on the transition, debug after), sets
`healthy = False`, and the call answers from this node's local copy: its own node and the streams it owns
(`get_stream`/`list_streams`/`list_nodes`/`least_loaded_node` see only those). While unhealthy, calls do not
touch Redis at all (they answer locally at once); only the heartbeat probes it, every
`min(heartbeat_interval, 1 s)`. `claim_stream` while unhealthy decides against the local copy only and
accepts (availability first; `claim_when_unhealthy=False` refuses instead). When Redis answers again the
heartbeat rewrites this node's entries from the local copy: the node hash (emitting `node_up` if it had
vanished) and every stream it owns (`stream_started` with `restored: true` if missing, `layers_changed` if
the layers changed meanwhile). A normal heartbeat only renews TTLs and deadlines; it writes a stream's
fields in full when the entry is missing, after any failed Redis operation, or when a local change did not
reach Redis. A stream that another session claimed meanwhile is lost: it leaves the local copy and
`on_stream_lost(name, session_id)` is called so the caller can end that publisher. Until `start()` has
reached Redis once, `healthy` is False as well.

Takeover
--------
`claim_stream(info, takeover_token=...)` stores SHA-256(token) with the claim. A later claim of the same
stream that presents the same token replaces the existing claim whatever node holds it (a publisher
reconnecting with the same credentials, possibly to another gateway, before the old claim expired): the old
claim gets `stream_stopped` (reason `takeover`), the new one `stream_started` (`takeover: true`), and the
node that held the old claim learns it at its next heartbeat (`on_stream_lost`). Derive the token from the
publisher's credentials (e.g. an HMAC of its bearer token); a claim made without a token cannot be taken
over, only released or left to expire. A claim by the session that already holds the stream from this node
just refreshes it and returns True.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Optional

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EventKind = Literal["stream_started", "stream_stopped", "layers_changed", "node_up", "node_down"]
EVENT_KINDS: tuple[str, ...] = ("stream_started", "stream_stopped", "layers_changed", "node_up", "node_down")
UPDATABLE_FIELDS = frozenset({"viewers", "layers", "codecs"})

StreamLostCallback = Callable[[str, str], None]
"""`on_stream_lost(stream_name, session_id)`: this node's claim was replaced or is held by another session."""


@dataclass
class NodeInfo:
    node_id: str
    base_url: str
    capacity: int = 0
    load: int = 0
    heartbeat: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "base_url": self.base_url, "capacity": self.capacity, "load": self.load,
                "heartbeat": self.heartbeat}


@dataclass
class StreamInfo:
    name: str
    node_id: str
    session_id: str
    codecs: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    viewers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "node_id": self.node_id, "session_id": self.session_id, "codecs": list(self.codecs),
                "layers": [dict(layer) for layer in self.layers], "started": self.started, "viewers": self.viewers}


@dataclass(frozen=True)
class RegistryEvent:
    kind: EventKind
    stream: Optional[str]
    node_id: str
    data: dict = field(default_factory=dict)


def _copy_stream(info: StreamInfo) -> StreamInfo:
    return StreamInfo(
        name=info.name,
        node_id=info.node_id,
        session_id=info.session_id,
        codecs=list(info.codecs),
        layers=[dict(layer) for layer in info.layers],
        started=float(info.started),
        viewers=int(info.viewers),
    )


def _copy_node(info: NodeInfo) -> NodeInfo:
    return dataclasses.replace(info)


def _hash_token(token: Optional[str]) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"update_stream: cannot update {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if "viewers" in fields:
        out["viewers"] = int(fields["viewers"])
    if "layers" in fields:
        out["layers"] = [dict(layer) for layer in fields["layers"]]
    if "codecs" in fields:
        out["codecs"] = [str(c) for c in fields["codecs"]]
    return out


def _pick_least_loaded(nodes: list[NodeInfo]) -> Optional[NodeInfo]:
    free = [n for n in nodes if n.capacity <= 0 or n.load < n.capacity]
    if not free:
        return None
    return min(free, key=lambda n: (n.load / n.capacity if n.capacity > 0 else 0.0, n.load, n.node_id))


class EventSubscription:
    """An async iterator over registry events; created by `Registry.events()`, subscribed at once."""

    def __init__(self, on_close: Callable[["EventSubscription"], None], maxsize: int) -> None:
        self._queue: asyncio.Queue[Optional[RegistryEvent]] = asyncio.Queue(maxsize=maxsize + 1)
        self._maxsize = maxsize
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    def _put(self, event: Optional[RegistryEvent]) -> None:
        if self._closed and event is not None:
            return
        if event is not None and self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("registry event subscriber is behind: %d events dropped", self.dropped)
        self._queue.put_nowait(event)

    def __aiter__(self) -> "EventSubscription":
        return self

    async def __anext__(self) -> RegistryEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._closed = True
            raise StopAsyncIteration
        return event

    async def get(self, timeout: Optional[float] = None) -> RegistryEvent:
        """The next event; raises TimeoutError after `timeout` s, StopAsyncIteration once closed."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._put(None)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> "EventSubscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Registry(abc.ABC):
    """The registry interface; see the module docstring for semantics."""

    @property
    @abc.abstractmethod
    def node(self) -> NodeInfo:
        """This node (a copy)."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False while the backend is unreachable (always True in-process)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Register this node, start the heartbeat loop (and the Redis event reader)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the loops, remove this node and the streams it owns, end all subscriptions."""

    @abc.abstractmethod
    async def register_node(self, info: NodeInfo) -> None:
        """(Re)write this node's entry; `info.node_id` must be this registry's node id."""

    @abc.abstractmethod
    async def heartbeat(self, load: Optional[int] = None) -> bool:
        """Renew this node and all its streams (rewriting them if missing), sweep expired entries.
        Returns `healthy` afterwards."""

    @abc.abstractmethod
    async def claim_stream(self, info: StreamInfo, takeover_token: Optional[str] = None) -> bool:
        """Claim `info.name` for `info.session_id` on this node; False if another claim holds it."""

    @abc.abstractmethod
    async def release_stream(self, name: str, session_id: str) -> bool:
        """Drop the claim if `session_id` still holds it; True if it did."""

    @abc.abstractmethod
    async def update_stream(self, name: str, **fields: Any) -> bool:
        """Update `viewers`, `layers` or `codecs` of a stream this node owns; False if it owns none by that name."""

    @abc.abstractmethod
    async def get_stream(self, name: str) -> Optional[StreamInfo]: ...

    @abc.abstractmethod
    async def list_streams(self) -> list[StreamInfo]: ...

    @abc.abstractmethod
    async def get_node(self, node_id: str) -> Optional[NodeInfo]: ...

    @abc.abstractmethod
    async def list_nodes(self) -> list[NodeInfo]: ...

    async def least_loaded_node(self) -> Optional[NodeInfo]:
        """The live node with the lowest load/capacity ratio that is below capacity, or None."""
        return _pick_least_loaded(await self.list_nodes())

    @abc.abstractmethod
    def events(self) -> EventSubscription:
        """Subscribe (at once) to events from every node; iterate with `async for`, end with `close()`."""


class _RegistryBase(Registry):
    """What both backends share: this node's local copy, subscriptions, the heartbeat loop."""

    def __init__(
        self,
        node: NodeInfo,
        ttl: float,
        heartbeat_interval: Optional[float],
        load_fn: Optional[Callable[[], int]],
        on_stream_lost: Optional[StreamLostCallback],
        event_queue_size: int,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._node = _copy_node(node)
        self._ttl = float(ttl)
        self._interval = ttl / 3 if heartbeat_interval is None else float(heartbeat_interval)
        if self._interval >= ttl:
            log.warning("registry: heartbeat interval %.2f s >= ttl %.2f s: entries will expire between beats",
                        self._interval, ttl)
        self._load_fn = load_fn
        self._on_stream_lost = on_stream_lost
        self._event_queue_size = event_queue_size
        self._owned: dict[str, StreamInfo] = {}
        self._tokens: dict[str, str] = {}
        self._subs: set[EventSubscription] = set()
        self._heartbeat_task: Optional[asyncio.Task] = None
        self._kick = asyncio.Event()
        self._started = False
        self._closed = False

    # -- shared plumbing -------------------------------------------------------------------------------------

    @property
    def node(self) -> NodeInfo:
        return _copy_node(self._node)

    @property
    def ttl(self) -> float:
        return self._ttl

    def owned_streams(self) -> list[StreamInfo]:
        """This node's local copy of the streams it owns."""
        return [_copy_stream(s) for s in self._owned.values()]

    def events(self) -> EventSubscription:
        sub = EventSubscription(self._subs.discard, self._event_queue_size)
        if self._closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def _deliver(self, event: RegistryEvent) -> None:
        for sub in list(self._subs):
            sub._put(event)

    def _close_subscriptions(self) -> None:
        for sub in list(self._subs):
            sub.close()

    def _check_node(self, info: NodeInfo) -> None:
        if info.node_id != self._node.node_id:
            raise ValueError(f"this registry is node {self._node.node_id!r}, not {info.node_id!r}")

    def _own(self, info: StreamInfo, token_hash: str) -> None:
        previous = self._owned.get(info.name)
        self._owned[info.name] = _copy_stream(info)
        self._tokens[info.name] = token_hash
        if previous is not None and previous.session_id != info.session_id:
            self._notify_lost(info.name, previous.session_id)

    def _disown(self, name: str) -> None:
        self._owned.pop(name, None)
        self._tokens.pop(name, None)

    def _lost(self, name: str) -> None:
        info = self._owned.get(name)
        if info is None:
            return
        log.warning("stream %r (session %s) is now held by another claim; dropping it", name, info.session_id)
        self._disown(name)
        self._notify_lost(name, info.session_id)

    def _notify_lost(self, name: str, session_id: str) -> None:
        if self._on_stream_lost is None:
            return

        def call() -> None:
            try:
                self._on_stream_lost(name, session_id)  # type: ignore[misc]
            except Exception:
                log.exception("on_stream_lost(%r, %r) failed", name, session_id)

        asyncio.get_running_loop().call_soon(call)

    def _current_load(self, load: Optional[int]) -> int:
        if load is not None:
            return int(load)
        if self._load_fn is not None:
            try:
                return int(self._load_fn())
            except Exception:
                log.exception("registry load_fn failed")
        return self._node.load

    def _start_heartbeat_loop(self) -> None:
        if self._interval > 0 and self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="registry-heartbeat")

    async def _stop_heartbeat_loop(self) -> None:
        task, self._heartbeat_task = self._heartbeat_task, None
        await _stop_task(task, 2.0)

    def _probe_interval(self) -> float:
        return self._interval if self.healthy else min(self._interval, 1.0)

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._kick.wait(), self._probe_interval())
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            if self._closed:
                break
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry heartbeat failed")


async def _stop_task(task: Optional[asyncio.Task], timeout: float) -> None:
    """Cancel `task` and wait at most `timeout` s for it to end.

    Never `await task` unbounded: on Python 3.11 a cancellation that arrives just as an inner
    `asyncio.wait_for` completes is swallowed (redis-py wraps its socket writes in one), so the task may go
    on; the loops therefore also check their `_closed` flag, and the Redis clients are closed afterwards.
    """
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("registry: task %s did not stop within %.1f s", task.get_name(), timeout)


# -------------------------------------------------------------------------------------------------------------
# In-process backend


@dataclass
class _StoredStream:
    info: StreamInfo
    token: str
    deadline: float


class InProcessStore:
    """Shared state of in-process registries: one per process normally; share one between several
    `InProcessRegistry` instances to run several nodes in one process. Uses `time.monotonic` deadlines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.nodes: dict[str, tuple[NodeInfo, float]] = {}
        self.streams: dict[str, _StoredStream] = {}
        self.registries: set["InProcessRegistry"] = set()

    def publish(self, kind: str, stream: Optional[str], node_id: str, data: dict) -> None:
        event = RegistryEvent(kind, stream, node_id, json.loads(json.dumps(data)))  # type: ignore[arg-type]
        for reg in list(self.registries):
            reg._deliver(event)

    def sweep(self) -> None:
        now = self.clock()
        for name, entry in list(self.streams.items()):
            if entry.deadline <= now:
                del self.streams[name]
                self.publish(
                    "stream_stopped", name, entry.info.node_id, {"session_id": entry.info.session_id, "reason": "expired"}
                )
        for node_id, (_, deadline) in list(self.nodes.items()):
            if deadline <= now:
                del self.nodes[node_id]
                self.publish("node_down", None, node_id, {"reason": "expired"})


class InProcessRegistry(_RegistryBase):
    """The embedded registry (one node, no I/O). Pass a shared `store` to simulate several nodes."""

    def __init__(
        self,
        node: Optional[NodeInfo] = None,
        ttl: float = 10.0,
        *,
        store: Optional[InProcessStore] = None,
        heartbeat_interval: Optional[float] = None,
        load_fn: Optional[Callable[[], int]] = None,
        on_stream_lost: Optional[StreamLostCallback] = None,
        event_queue_size: int = 1000,
    ) -> None:
        super().__init__(
            node or NodeInfo("local", ""), ttl, heartbeat_interval, load_fn, on_stream_lost, event_queue_size
        )
        self.store = store or InProcessStore()

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.store.registries.add(self)
        await self.register_node(self._node)
        self._start_heartbeat_loop()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_heartbeat_loop()
        store = self.store
        for name, info in list(self._owned.items()):
            entry = store.streams.get(name)
            if entry is not None and entry.info.session_id == info.session_id:
                del store.streams[name]
                store.publish("stream_stopped", name, self._node.node_id, {"session_id": info.session_id, "reason": "node_closed"})
        self._owned.clear()
        self._tokens.clear()
        if store.nodes.pop(self._node.node_id, None) is not None:
            store.publish("node_down", None, self._node.node_id, {"reason": "closed"})
        store.registries.discard(self)
        self._close_subscriptions()

    def _deadline(self) -> float:
        return self.store.clock() + self._ttl

    def _write_node(self) -> None:
        existed = self._node.node_id in self.store.nodes
        self.store.nodes[self._node.node_id] = (_copy_node(self._node), self._deadline())
        if not existed:
            self.store.publish("node_up", None, self._node.node_id, self._node.to_dict())

    async def register_node(self, info: NodeInfo) -> None:
        self._check_node(info)
        self._node = _copy_node(info)
        self._node.heartbeat = time.time()
        self.store.sweep()
        self._write_node()

    async def heartbeat(self, load: Optional[int] = None) -> bool:
        self._node.load = self._current_load(load)
        self._node.heartbeat = time.time()
        store = self.store
        store.sweep()
        self._write_node()
        for name, info in list(self._owned.items()):
            entry = store.streams.get(name)
            if entry is not None and entry.info.session_id != info.session_id:
                self._lost(name)
                continue
            store.streams[name] = _StoredStream(_copy_stream(info), self._tokens.get(name, ""), self._deadline())
            if entry is None:
                store.publish("stream_started", name, info.node_id, {**info.to_dict(), "restored": True})
        return True

    async def claim_stream(self, info: StreamInfo, takeover_token: Optional[str] = None) -> bool:
        info = _copy_stream(info)
        info.node_id = self._node.node_id
        token = _hash_token(takeover_token)
        store = self.store
        store.sweep()
        entry = store.streams.get(info.name)
        takeover = False
        if entry is not None:
            if entry.info.session_id == info.session_id:
                if entry.info.node_id == info.node_id:
                    entry.info, entry.token, entry.deadline = _copy_stream(info), token, self._deadline()
                    self._own(info, token)
                    return True
            if not (token and entry.token == token):
                return False
            takeover = True
            store.publish(
                "stream_stopped", info.name, entry.info.node_id, {"session_id": entry.info.session_id, "reason": "takeover"}
            )
        store.streams[info.name] = _StoredStream(_copy_stream(info), token, self._deadline())
        self._own(info, token)
        data = info.to_dict()
        if takeover:
            data["takeover"] = True
        store.publish("stream_started", info.name, info.node_id, data)
        return True

    async def release_stream(self, name: str, session_id: str) -> bool:
        local = self._owned.get(name)
        if local is not None and local.session_id == session_id:
            self._disown(name)
        entry = self.store.streams.get(name)
        if entry is None or entry.info.session_id != session_id:
            return False
        del self.store.streams[name]
        self.store.publish("stream_stopped", name, entry.info.node_id, {"session_id": session_id, "reason": "released"})
        return True

    async def update_stream(self, name: str, **fields: Any) -> bool:
        changes = _check_fields(fields)
        local = self._owned.get(name)
        if local is None:
            return False
        layers_changed = "layers" in changes and changes["layers"] != local.layers
        for key, value in changes.items():
            setattr(local, key, value)
        entry = self.store.streams.get(name)
        if entry is None or entry.info.session_id != local.session_id:
            return True  # the next heartbeat restores it or finds it lost
        entry.info = _copy_stream(local)
        if layers_changed:
            self.store.publish(
                "layers_changed", name, local.node_id, {"session_id": local.session_id, "layers": local.layers}
            )
        return True

    async def get_stream(self, name: str) -> Optional[StreamInfo]:
        self.store.sweep()
        entry = self.store.streams.get(name)
        return _copy_stream(entry.info) if entry is not None else None

    async def list_streams(self) -> list[StreamInfo]:
        self.store.sweep()
        return [_copy_stream(e.info) for _, e in sorted(self.store.streams.items())]

    async def get_node(self, node_id: str) -> Optional[NodeInfo]:
        self.store.sweep()
        entry = self.store.nodes.get(node_id)
        return _copy_node(entry[0]) if entry is not None else None

    async def list_nodes(self) -> list[NodeInfo]:
        self.store.sweep()
        return [_copy_node(n) for _, (n, _) in sorted(self.store.nodes.items())]


# -------------------------------------------------------------------------------------------------------------
# Redis backend

_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function xadd(events, maxlen, kind, stream, node, data)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'kind', kind, 'stream', stream, 'node', node, 'data', data)
end
local function hset_map(key, map)
  local args = {}
  for k, v in pairs(map) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  redis.call('HSET', key, unpack(args))
end
"""

# KEYS: stream key, streams zset, owners hash, events
# ARGV: ttl_ms, node_id, session_id, token hash, fields JSON, started JSON, started (takeover) JSON, maxlen, name
_CLAIM = _LUA_HELPERS + """
local ttl = tonumber(ARGV[1])
local held = redis.call('HMGET', KEYS[1], 'session_id', 'token', 'node_id')
local code = 1
if held[1] then
  if held[1] == ARGV[3] and held[3] == ARGV[2] then
    code = 3
  elseif ARGV[4] ~= '' and held[2] == ARGV[4] then
    code = 2
    xadd(KEYS[4], ARGV[8], 'stream_stopped', ARGV[9], held[3],
         cjson.encode({session_id = held[1], reason = 'takeover'}))
  else
    return {0, held[3] or '', held[1]}
  end
end
redis.call('DEL', KEYS[1])
hset_map(KEYS[1], cjson.decode(ARGV[5]))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now_ms() + ttl, ARGV[9])
redis.call('HSET', KEYS[3], ARGV[9], cjson.encode({node_id = ARGV[2], session_id = ARGV[3]}))
if code == 1 then
  xadd(KEYS[4], ARGV[8], 'stream_started', ARGV[9], ARGV[2], ARGV[6])
elseif code == 2 then
  xadd(KEYS[4], ARGV[8], 'stream_started', ARGV[9], ARGV[2], ARGV[7])
end
return {code, held[3] or '', held[1] or ''}
"""

# KEYS: stream key, streams zset, owners hash, events
# ARGV: session_id, name, reason, maxlen
_RELEASE = _LUA_HELPERS + """
local held = redis.call('HMGET', KEYS[1], 'session_id', 'node_id')
if held[1] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
xadd(KEYS[4], ARGV[4], 'stream_stopped', ARGV[2], held[2] or '', cjson.encode({session_id = ARGV[1], reason = ARGV[3]}))
return 1
"""

# KEYS: stream key, events
# ARGV: session_id, fields JSON, layers_changed JSON or '', name, node_id, maxlen
_UPDATE = _LUA_HELPERS + """
if redis.call('HGET', KEYS[1], 'session_id') ~= ARGV[1] then
  return 0
end
hset_map(KEYS[1], cjson.decode(ARGV[2]))
if ARGV[3] ~= '' then
  xadd(KEYS[2], ARGV[6], 'layers_changed', ARGV[4], ARGV[5], ARGV[3])
end
return 1
"""

# KEYS: node key, nodes zset, streams zset, owners hash, events, then one stream key per stream
# ARGV: ttl_ms, node_id, node fields JSON, node_up JSON, maxlen, streams JSON
#   (list of {name, session_id, dirty, fields, restored: JSON, layers: JSON or ''}; the fields are written
#   only when the entry is missing or dirty, otherwise the entry's TTL and deadline are just renewed)
# Returns {node_was_missing, {lost names}, {restored names}}
_HEARTBEAT = _LUA_HELPERS + """
local ttl = tonumber(ARGV[1])
local deadline = now_ms() + ttl
local missing = 1 - redis.call('EXISTS', KEYS[1])
hset_map(KEYS[1], cjson.decode(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], deadline, ARGV[2])
if missing == 1 then
  xadd(KEYS[5], ARGV[5], 'node_up', '', ARGV[2], ARGV[4])
end
local lost, restored = {}, {}
for i, s in ipairs(cjson.decode(ARGV[6])) do
  local key = KEYS[5 + i]
  local held = redis.call('HGET', key, 'session_id')
  if held and held ~= s.session_id then
    lost[#lost + 1] = s.name
  else
    if not held or s.dirty then
      hset_map(key, s.fields)
      redis.call('HSET', KEYS[4], s.name, cjson.encode({node_id = ARGV[2], session_id = s.session_id}))
    end
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', KEYS[3], deadline, s.name)
    if not held then
      restored[#restored + 1] = s.name
      xadd(KEYS[5], ARGV[5], 'stream_started', s.name, ARGV[2], s.restored)
    elseif s.layers ~= '' then
      xadd(KEYS[5], ARGV[5], 'layers_changed', s.name, ARGV[2], s.layers)
    end
  end
end
return {missing, lost, restored}
"""

# KEYS: nodes zset, streams zset, owners hash, events
# ARGV: key prefix, maxlen, ttl_ms (for an entry found without TTL), limit per call
_SWEEP = _LUA_HELPERS + """
local now = now_ms()
local limit = tonumber(ARGV[4])
local gone = 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)) do
  local pttl = redis.call('PTTL', ARGV[1] .. 'stream:' .. name)
  if pttl == -2 then
    redis.call('ZREM', KEYS[2], name)
    local owner = redis.call('HGET', KEYS[3], name)
    redis.call('HDEL', KEYS[3], name)
    local node, session = '', ''
    if owner then
      local o = cjson.decode(owner)
      node, session = o.node_id, o.session_id
    end
    xadd(KEYS[4], ARGV[2], 'stream_stopped', name, node, cjson.encode({session_id = session, reason = 'expired'}))
    gone = gone + 1
  else
    if pttl < 0 then pttl = tonumber(ARGV[3]) end
    redis.call('ZADD', KEYS[2], now + pttl, name)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  local pttl = redis.call('PTTL', ARGV[1] .. 'node:' .. id)
  if pttl == -2 then
    redis.call('ZREM', KEYS[1], id)
    xadd(KEYS[4], ARGV[2], 'node_down', '', id, cjson.encode({reason = 'expired'}))
    gone = gone + 1
  else
    if pttl < 0 then pttl = tonumber(ARGV[3]) end
    redis.call('ZADD', KEYS[1], now + pttl, id)
  end
end
return gone
"""

# KEYS: node key, nodes zset, streams zset, owners hash, events, then one stream key per stream
# ARGV: node_id, maxlen, then name, session_id pairs
_DEREGISTER = _LUA_HELPERS + """
local n = 0
for i = 3, #ARGV, 2 do
  n = n + 1
  local key = KEYS[5 + n]
  if redis.call('HGET', key, 'session_id') == ARGV[i + 1] then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    xadd(KEYS[5], ARGV[2], 'stream_stopped', ARGV[i], ARGV[1],
         cjson.encode({session_id = ARGV[i + 1], reason = 'node_closed'}))
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('DEL', KEYS[1]) == 1 then
  xadd(KEYS[5], ARGV[2], 'node_down', '', ARGV[1], cjson.encode({reason = 'closed'}))
end
return 1
"""

_FAILED = object()


async def _bounded(coro: Awaitable[Any], timeout: float, orphans: set[asyncio.Task]) -> Any:
    """Await `coro` for at most `timeout` s, then raise TimeoutError without waiting for it to unwind.

    Unlike `asyncio.wait_for`, this never blocks past `timeout`: on Python 3.11 `wait_for` waits for the
    cancelled operation to finish, and redis-py's own inner `wait_for` can swallow that cancellation. A timed
    out operation is cancelled and left to end by itself (bounded by the socket timeouts); it is kept in
    `orphans` until then so that its result or exception is collected.
    """
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        _orphan(task, orphans)
        raise
    if not done:
        _orphan(task, orphans)
        raise asyncio.TimeoutError(f"no answer within {timeout} s")
    return task.result()


def _orphan(task: asyncio.Task, orphans: set[asyncio.Task]) -> None:
    task.cancel()
    orphans.add(task)

    def collect(t: asyncio.Task) -> None:
        orphans.discard(t)
        if not t.cancelled():
            t.exception()

    task.add_done_callback(collect)


def _stream_fields(info: StreamInfo, token_hash: str) -> dict[str, str]:
    return {
        "name": info.name,
        "node_id": info.node_id,
        "session_id": info.session_id,
        "codecs": json.dumps(info.codecs),
        "layers": json.dumps(info.layers),
        "started": repr(float(info.started)),
        "viewers": str(int(info.viewers)),
        "token": token_hash,
    }


def _stream_from_hash(h: dict[str, str]) -> Optional[StreamInfo]:
    if not h or "session_id" not in h:
        return None
    try:
        return StreamInfo(
            name=h["name"],
            node_id=h.get("node_id", ""),
            session_id=h["session_id"],
            codecs=list(json.loads(h.get("codecs") or "[]")),
            layers=list(json.loads(h.get("layers") or "[]")),
            started=float(h.get("started") or 0.0),
            viewers=int(h.get("viewers") or 0),
        )
    except (KeyError, ValueError, TypeError):
        log.warning("ignoring malformed stream entry %r", h)
        return None


def _node_fields(info: NodeInfo) -> dict[str, str]:
    return {
        "node_id": info.node_id,
        "base_url": info.base_url,
        "capacity": str(int(info.capacity)),
        "load": str(int(info.load)),
        "heartbeat": repr(float(info.heartbeat)),
    }


def _node_from_hash(h: dict[str, str]) -> Optional[NodeInfo]:
    if not h or "node_id" not in h:
        return None
    try:
        return NodeInfo(
            node_id=h["node_id"],
            base_url=h.get("base_url", ""),
            capacity=int(h.get("capacity") or 0),
            load=int(h.get("load") or 0),
            heartbeat=float(h.get("heartbeat") or 0.0),
        )
    except (ValueError, TypeError):
        log.warning("ignoring malformed node entry %r", h)
        return None


class RedisRegistry(_RegistryBase):
    """The registry on a shared Redis; see the module docstring for keys, events and fault behaviour."""

    def __init__(
        self,
        url: str,
        node: NodeInfo,
        ttl: float = 10.0,
        key_prefix: str = "whipgate:",
        *,
        op_timeout: float = 0.5,
        heartbeat_interval: Optional[float] = None,
        load_fn: Optional[Callable[[], int]] = None,
        on_stream_lost: Optional[StreamLostCallback] = None,
        claim_when_unhealthy: bool = True,
        events_maxlen: int = 10000,
        event_block: float = 1.0,
        event_queue_size: int = 1000,
        sweep_limit: int = 100,
    ) -> None:
        super().__init__(node, ttl, heartbeat_interval, load_fn, on_stream_lost, event_queue_size)
        self._url = url
        self._prefix = key_prefix
        self._op_timeout = float(op_timeout)
        self._claim_when_unhealthy = claim_when_unhealthy
        self._maxlen = int(events_maxlen)
        self._event_block = float(event_block)
        self._sweep_limit = int(sweep_limit)
        self._healthy = False
        self._ever_connected = False
        self._failures = 0
        self._layers_dirty: set[str] = set()  # layers changed but no layers_changed event written yet
        self._dirty: set[str] = set()  # local fields newer than Redis's copy
        self._node_written = False
        self._rewrite_all = True  # after a failure: the next heartbeat rewrites every owned stream in full
        self._last_event_id: Optional[str] = None
        self._reader_task: Optional[asyncio.Task] = None
        self._orphans: set[asyncio.Task] = set()
        self._redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=self._op_timeout,
            socket_connect_timeout=self._op_timeout,
            retry=Retry(NoBackoff(), 0),
            protocol=2,  # plain RESP2 reply shapes, any Redis >= 5
        )
        self._reader = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=self._event_block + max(self._op_timeout, 1.0),
            socket_connect_timeout=self._op_timeout,
            retry=Retry(NoBackoff(), 0),
            protocol=2,  # plain RESP2 reply shapes, any Redis >= 5
        )
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        self._update_script = self._redis.register_script(_UPDATE)
        self._heartbeat_script = self._redis.register_script(_HEARTBEAT)
        self._sweep_script = self._redis.register_script(_SWEEP)
        self._deregister_script = self._redis.register_script(_DEREGISTER)

    # -- keys ------------------------------------------------------------------------------------------------

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    def _stream_key(self, name: str) -> str:
        return f"{self._prefix}stream:{name}"

    @property
    def _nodes_key(self) -> str:
        return f"{self._prefix}nodes"

    @property
    def _streams_key(self) -> str:
        return f"{self._prefix}streams"

    @property
    def _owners_key(self) -> str:
        return f"{self._prefix}stream_owners"

    @property
    def _events_key(self) -> str:
        return f"{self._prefix}events"

    # -- health ----------------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def _op(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis operation bounded by op_timeout; _FAILED (and unhealthy) on any Redis failure."""
        try:
            result = await _bounded(fn(), self._op_timeout, self._orphans)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failures += 1
            if self._healthy or not self._ever_connected and self._failures == 1:
                log.warning("registry: Redis unreachable (%s: %s: %s); using the local copy", what, type(exc).__name__, exc)
            else:
                log.debug("registry: Redis still unreachable (%s: %s)", what, exc)
            self._rewrite_all = True
            if self._healthy:
                self._healthy = False
                self._kick.set()
            return _FAILED
        if not self._healthy:
            if self._ever_connected:
                log.info("registry: Redis reachable again after %d failed operations", self._failures)
            self._healthy = True
            self._ever_connected = True
            self._failures = 0
            if what != "heartbeat":
                self._kick.set()  # rewrite this node's entries now
        return result

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        last = await self._op("start", lambda: self._redis.xrevrange(self._events_key, count=1))
        if last is not _FAILED:
            self._last_event_id = last[0][0] if last else "0-0"
        self._reader_task = asyncio.create_task(self._read_events(), name="registry-events")
        await self.register_node(self._node)
        self._start_heartbeat_loop()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_heartbeat_loop()
        if self._healthy:
            streams = list(self._owned.values())
            args: list[Any] = [self._node.node_id, self._maxlen]
            for s in streams:
                args += [s.name, s.session_id]
            await self._op(
                "close",
                lambda: self._deregister_script(
                    keys=[self._node_key(self._node.node_id), self._nodes_key, self._streams_key, self._owners_key,
                          self._events_key, *(self._stream_key(s.name) for s in streams)],
                    args=args,
                ),
            )
        self._owned.clear()
        self._tokens.clear()
        task, self._reader_task = self._reader_task, None
        await _stop_task(task, self._op_timeout)
        self._close_subscriptions()
        for client in (self._redis, self._reader):
            try:
                await _bounded(client.aclose(), self._op_timeout, self._orphans)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass
        await _stop_task(task, self._op_timeout)  # a reader that swallowed its cancellation ends with its client

    # -- events ----------------------------------------------------------------------------------------------

    async def _read_events(self) -> None:
        """Follow `{p}events` and hand every entry to this registry's subscribers."""
        failing = False
        while not self._closed:
            try:
                if self._last_event_id is None:
                    last = await self._reader.xrevrange(self._events_key, count=1)
                    self._last_event_id = last[0][0] if last else "0-0"
                reply = await self._reader.xread(
                    {self._events_key: self._last_event_id}, count=500, block=int(self._event_block * 1000)
                )
                failing = False
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if not failing:
                    log.debug("registry: event reader disconnected (%s); retrying", exc)
                failing = True
                await asyncio.sleep(min(0.5, self._event_block))
                continue
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_event_id = entry_id
                    event = self._decode_event(fields)
                    if event is not None:
                        self._deliver(event)

    @staticmethod
    def _decode_event(fields: dict[str, str]) -> Optional[RegistryEvent]:
        kind = fields.get("kind", "")
        if kind not in EVENT_KINDS:
            return None
        try:
            data = json.loads(fields.get("data") or "{}")
        except ValueError:
            data = {}
        return RegistryEvent(kind, fields.get("stream") or None, fields.get("node", ""), data)  # type: ignore[arg-type]

    # -- nodes -----------------------------------------------------------------------------------------------

    async def register_node(self, info: NodeInfo) -> None:
        self._check_node(info)
        load = info.load
        self._node = _copy_node(info)
        await self.heartbeat(load)

    async def heartbeat(self, load: Optional[int] = None) -> bool:
        self._node.load = self._current_load(load)
        self._node.heartbeat = time.time()
        streams = list(self._owned.values())
        dirty = set(self._layers_dirty)
        rewrite_all = self._rewrite_all
        stale = set(self._dirty)
        payload = []
        for s in streams:
            payload.append({
                "name": s.name,
                "session_id": s.session_id,
                "dirty": rewrite_all or s.name in stale or s.name in dirty,
                "fields": _stream_fields(s, self._tokens.get(s.name, "")),
                "restored": json.dumps({**s.to_dict(), "restored": True}),
                "layers": json.dumps({"session_id": s.session_id, "layers": s.layers}) if s.name in dirty else "",
            })
        ttl_ms = max(1, int(self._ttl * 1000))
        reply = await self._op(
            "heartbeat",
            lambda: self._heartbeat_script(
                keys=[self._node_key(self._node.node_id), self._nodes_key, self._streams_key, self._owners_key,
                      self._events_key, *(self._stream_key(s.name) for s in streams)],
                args=[ttl_ms, self._node.node_id, json.dumps(_node_fields(self._node)),
                      json.dumps(self._node.to_dict()), self._maxlen, json.dumps(payload)],
            ),
        )
        if reply is _FAILED:
            return False
        self._layers_dirty -= dirty
        self._dirty -= stale
        if rewrite_all and self._healthy:
            self._rewrite_all = False
        node_missing, lost, restored = int(reply[0]), list(reply[1]), list(reply[2])
        if node_missing and self._node_written:
            log.info("registry: node %s rewritten (it had expired or Redis lost it)", self._node.node_id)
        self._node_written = True
        if restored:
            log.info("registry: rewrote %d stream(s): %s", len(restored), ", ".join(restored))
        for name in lost:
            current = self._owned.get(name)
            sent = next((s for s in streams if s.name == name), None)
            if current is not None and sent is not None and current.session_id == sent.session_id:
                self._lost(name)
        await self._op(
            "sweep",
            lambda: self._sweep_script(
                keys=[self._nodes_key, self._streams_key, self._owners_key, self._events_key],
                args=[self._prefix, self._maxlen, ttl_ms, self._sweep_limit],
            ),
        )
        return self._healthy

    async def get_node(self, node_id: str) -> Optional[NodeInfo]:
        if self._healthy:
            h = await self._op("get_node", lambda: self._redis.hgetall(self._node_key(node_id)))
            if h is not _FAILED:
                return _node_from_hash(h)
        return self.node if node_id == self._node.node_id else None

    async def list_nodes(self) -> list[NodeInfo]:
        if self._healthy:
            hashes = await self._op("list_nodes", lambda: self._fetch_all(self._nodes_key, self._node_key))
            if hashes is not _FAILED:
                return [n for n in map(_node_from_hash, hashes) if n is not None]
        return [self.node]

    async def _fetch_all(self, index: str, key: Callable[[str], str]) -> list[dict[str, str]]:
        members = await self._redis.zrange(index, 0, -1)
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for m in sorted(members):
                pipe.hgetall(key(m))
            return await pipe.execute()

    # -- streams ---------------------------------------------------------------------------------------------

    async def claim_stream(self, info: StreamInfo, takeover_token: Optional[str] = None) -> bool:
        info = _copy_stream(info)
        info.node_id = self._node.node_id
        token = _hash_token(takeover_token)
        if self._healthy:
            data = info.to_dict()
            ttl_ms = max(1, int(self._ttl * 1000))
            reply = await self._op(
                "claim",
                lambda: self._claim_script(
                    keys=[self._stream_key(info.name), self._streams_key, self._owners_key, self._events_key],
                    args=[ttl_ms, info.node_id, info.session_id, token, json.dumps(_stream_fields(info, token)),
                          json.dumps(data), json.dumps({**data, "takeover": True}), self._maxlen, info.name],
                ),
            )
            if reply is not _FAILED:
                if int(reply[0]) == 0:
                    return False
                self._layers_dirty.discard(info.name)
                self._dirty.discard(info.name)
                self._own(info, token)
                return True
        # Redis unreachable: decide against the local copy; the heartbeat reconciles when Redis returns.
        local = self._owned.get(info.name)
        if local is not None and local.session_id != info.session_id and not (token and self._tokens.get(info.name) == token):
            return False
        if not self._claim_when_unhealthy:
            return False
        log.info("registry: claimed %r locally while Redis is unreachable", info.name)
        self._own(info, token)
        return True

    async def release_stream(self, name: str, session_id: str) -> bool:
        local = self._owned.get(name)
        mine = local is not None and local.session_id == session_id
        if mine:
            self._disown(name)
            self._layers_dirty.discard(name)
            self._dirty.discard(name)
        if self._healthy:
            reply = await self._op(
                "release",
                lambda: self._release_script(
                    keys=[self._stream_key(name), self._streams_key, self._owners_key, self._events_key],
                    args=[session_id, name, "released", self._maxlen],
                ),
            )
            if reply is not _FAILED:
                return bool(int(reply)) or mine
        # Unreachable: the entry (if Redis still has it) expires after the TTL, since nobody renews it.
        return mine

    async def update_stream(self, name: str, **fields: Any) -> bool:
        changes = _check_fields(fields)
        local = self._owned.get(name)
        if local is None:
            return False
        layers_changed = "layers" in changes and changes["layers"] != local.layers
        for key, value in changes.items():
            setattr(local, key, value)
        if not changes:
            return True
        if layers_changed:
            self._layers_dirty.add(name)
        if self._healthy:
            all_fields = _stream_fields(local, self._tokens.get(name, ""))
            sent = {k: all_fields[k] for k in changes}
            event = json.dumps({"session_id": local.session_id, "layers": local.layers}) if name in self._layers_dirty else ""
            reply = await self._op(
                "update",
                lambda: self._update_script(
                    keys=[self._stream_key(name), self._events_key],
                    args=[local.session_id, json.dumps(sent), event, name, self._node.node_id, self._maxlen],
                ),
            )
            if reply is not _FAILED and int(reply) == 1:
                self._layers_dirty.discard(name)
                return True
        self._dirty.add(name)
        return True

    async def get_stream(self, name: str) -> Optional[StreamInfo]:
        if self._healthy:
            h = await self._op("get_stream", lambda: self._redis.hgetall(self._stream_key(name)))
            if h is not _FAILED:
                return _stream_from_hash(h)
        local = self._owned.get(name)
        return _copy_stream(local) if local is not None else None

    async def list_streams(self) -> list[StreamInfo]:
        if self._healthy:
            hashes = await self._op("list_streams", lambda: self._fetch_all(self._streams_key, self._stream_key))
            if hashes is not _FAILED:
                return [s for s in map(_stream_from_hash, hashes) if s is not None]
        return sorted(self.owned_streams(), key=lambda s: s.name)


__all__ = [
    "EVENT_KINDS",
    "EventSubscription",
    "InProcessRegistry",
    "InProcessStore",
    "NodeInfo",
    "RedisRegistry",
    "Registry",
    "RegistryEvent",
    "StreamInfo",
]
