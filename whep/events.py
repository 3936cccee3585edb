"""WHEP Server Sent Events extension: per-viewer event streams and the HTTP helpers that serve them.

Followed: draft-ietf-wish-whep-02 (October 2024) §4.9 "Protocol extensions", §4.9.1 "Server Sent Events extension"
(`urn:ietf:params:whep:ext:core:server-sent-events`) and its event sections §4.9.1.1 active, §4.9.1.2 inactive,
§4.9.1.3 layers, §4.9.1.4 reconnect, §4.9.1.5 viewercount, §4.9.1.6 scte35. The text is the same in -00 and -01
and in the wish-wg "webrtc-http-egress-events" split-out document, which adds that clients ignore unknown fields.

The flow (§4.9.1): the 201 of the WHEP POST carries a Link to `{session}/sse` (see `extension_links`); the player
POSTs a JSON array of event names there and gets 201 + Location `{session}/sse/{id}`; a GET on that Location is the
"long pull": a `text/event-stream` of `event: <name>` / `data: <json on one line>` messages. Events generated while
no GET is connected are queued for the next one (§4.9.1: "enqueue it for delivering when an active long pull
request is available"). A DELETE on the Location destroys the stream and drops its queue; later GETs get 404.
All streams end when the viewer session ends (`ViewerEvents.close`).

Where the draft is loose, we chose (all reported to the lead):
- POST body (§4.9.1 "MAY contain ... a JSON array"): no body (or only whitespace) subscribes to every event we
  announce. A body that is not a JSON array of strings -> 400; a name the draft does not define -> 400. The
  draft-defined names we never produce ("reconnect", "scte35") are accepted and simply never delivered, because
  the draft's own example request lists "reconnect". Duplicates are ignored; `[]` is a valid (silent) stream.
  The Content-Type is not checked (the draft's own layer examples send "application/sjon").
- A new stream first gets the current state of each subscribed event: the latest of active/inactive (one
  publication state, never both), the latest layers and the latest viewercount, in the order they were published.
  reconnect/scte35 are one-shot and never replayed.
- Each stream's queue is bounded (64): on overflow the oldest queued event is dropped and counted.
- One reader per stream: a second GET on the same stream takes it over and the first response ends (EventSource
  reconnects after a network drop with a GET on the same URL).
- At most 8 streams per viewer: a 9th POST evicts the oldest stream (a client that re-POSTs on every reconnect
  keeps working; the evicted stream's reader ends and later GETs get 404).
- Keep-alive: an SSE comment (`: keep-alive`) after 15 s without an event.
- Only the event loop's thread may call `publish` (it is synchronous and never waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Optional

from litestar import Request
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from gateway.http_responses import cors, preflight_response, problem, read_body, respond
from whep.layer_request import LAYER_REL

if TYPE_CHECKING:
    from gateway.config import Config

SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
# Events we produce and announce in the Link header's events= attribute (§4.9.1).
EVENT_NAMES = ("active", "inactive", "layers", "viewercount")
# Defined by §4.9.1 but never produced here: accepted in a subscription, never delivered.
UNSUPPORTED_EVENT_NAMES = ("reconnect", "scte35")
DRAFT_EVENT_NAMES = EVENT_NAMES + UNSUPPORTED_EVENT_NAMES

QUEUE_SIZE = 64
KEEPALIVE_SECONDS = 15.0
MAX_STREAMS = 8
EVENT_STREAM = "text/event-stream"
KEEPALIVE_CHUNK = b": keep-alive\n\n"

# Events that describe a state a new stream should learn at once; active and inactive share one slot.
_STATE_SLOT = {"active": "publication", "inactive": "publication", "layers": "layers", "viewercount": "viewercount"}

Event = tuple[str, dict]


def extension_links(session_location: str) -> list[tuple[str, str]]:
    """The two Link headers for a WHEP 201 (§4.9, §4.9.1, §4.9.2): SSE with its events= list, and layer selection."""
    base = session_location.rstrip("/")
    return [
        ("Link", f'<{base}/sse>; rel="{SSE_REL}"; events="{",".join(EVENT_NAMES)}"'),
        ("Link", f'<{base}/layer>; rel="{LAYER_REL}"'),
    ]


class _EventStream:
    __slots__ = ("names", "queue", "wake", "dropped", "reader", "ended", "removed")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.dropped = 0
        self.reader: Optional[object] = None  # token of the GET currently reading
        self.ended = False  # viewer session ended: deliver what is queued, then end
        self.removed = False  # DELETEd or evicted: drop the queue, end now


def freeze(data: dict) -> dict:
    """An event's data copied through JSON (`ViewerEvents.publish`): it must be JSON-serialisable (TypeError
    otherwise), and later changes by the caller do not leak into queued events."""
    if not isinstance(data, dict):
        raise TypeError(f"event data must be a dict, got {type(data).__name__}")
    return json.loads(json.dumps(data))


class ViewerEvents:
    """The event streams of one viewer session (§4.9.1)."""

    def __init__(
        self, *, queue_size: int = QUEUE_SIZE, keepalive: float = KEEPALIVE_SECONDS, max_streams: int = MAX_STREAMS
    ) -> None:
        if queue_size < 1 or max_streams < 1 or keepalive <= 0:
            raise ValueError("queue_size and max_streams must be >= 1 and keepalive > 0")
        self.queue_size = queue_size
        self.keepalive = keepalive
        self.max_streams = max_streams
        self._streams: dict[str, _EventStream] = {}  # insertion order = age, for eviction
        self._state: dict[str, tuple[int, str, dict]] = {}  # slot -> (sequence, name, data)
        self._seq = 0
        self._closed = False
        self.dropped_total = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def subscribe(self, names: Iterable[str]) -> str:
        """A new event stream for these event names; returns its unguessable id. ValueError for unknown names,
        RuntimeError once closed. The stream starts with the current state of each subscribed event."""
        if self._closed:
            raise RuntimeError("the viewer session has ended")
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in DRAFT_EVENT_NAMES]
        if unknown:
            raise ValueError(f"unknown event names {unknown}; this server sends {list(EVENT_NAMES)}")
        while len(self._streams) >= self.max_streams:
            self.unsubscribe(next(iter(self._streams)))
        stream = _EventStream(frozenset(wanted))
        for _, name, data in sorted(self._state.values(), key=lambda entry: entry[0]):
            if name in stream.names:
                self._enqueue(stream, (name, data))
        stream_id = secrets.token_urlsafe(18)
        self._streams[stream_id] = stream
        return stream_id

    def unsubscribe(self, stream_id: str) -> bool:
        """Destroy one stream (DELETE, §4.9.1): its queue is dropped and its reader ends. False if unknown."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        stream.queue.clear()
        stream.removed = True
        stream.wake.set()
        return True

    def publish(self, name: str, data: dict) -> None:
        """Queue an event for every stream subscribed to `name`. Synchronous; never waits; no-op once closed.

        `data` is copied through JSON here, so it must be JSON-serialisable (TypeError otherwise) and later changes
        by the caller do not leak into queued events."""
        if name not in DRAFT_EVENT_NAMES:
            raise ValueError(f"unknown event name {name!r}")
        if not isinstance(data, dict):
            raise TypeError(f"event data must be a dict, got {type(data).__name__}")
        if self._closed:
            return
        self.publish_frozen(name, freeze(data))

    def publish_frozen(self, name: str, frozen: dict) -> None:
        """`publish` for data already copied by `freeze` and never changed after: one copy can then go to every
        viewer of a stream (the viewer count) without a JSON round trip per viewer."""
        if name not in DRAFT_EVENT_NAMES:
            raise ValueError(f"unknown event name {name!r}")
        if self._closed:
            return
        slot = _STATE_SLOT.get(name)
        if slot is not None:
            self._seq += 1
            self._state[slot] = (self._seq, name, frozen)
        for stream in self._streams.values():
            if name in stream.names:
                self._enqueue(stream, (name, frozen))

    def _enqueue(self, stream: _EventStream, event: Event) -> None:
        if len(stream.queue) >= self.queue_size:
            stream.queue.popleft()
            stream.dropped += 1
            self.dropped_total += 1
        stream.queue.append(event)
        stream.wake.set()

    def latest(self, name: str) -> Optional[dict]:
        """The data of the latest `name` event if it still describes the current state (for active/inactive: only
        the one published last); None otherwise (and always for one-shot events)."""
        slot = _STATE_SLOT.get(name)
        entry = self._state.get(slot) if slot is not None else None
        if entry is None or entry[1] != name:
            return None
        return entry[2]

    def dropped(self, stream_id: str) -> int:
        """Events dropped from this stream's full queue (KeyError for an unknown stream)."""
        return self._streams[stream_id].dropped

    def stream(self, stream_id: str) -> AsyncIterator[Optional[Event]]:
        """Read one stream (`async for item in events.stream(id)`): (name, data) per event, None when `keepalive`
        seconds passed without one.

        The stream is looked up and claimed at this call (KeyError for an unknown stream), so a stream that ends
        before the first read still delivers what was queued. The iterator ends when the viewer session ends (after
        delivering what was queued), when the stream is deleted or evicted, or when a later `stream()` call for the
        same id takes it over."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise KeyError(stream_id)
        token = object()
        stream.reader = token
        stream.wake.set()  # a previous reader wakes up and sees it has been replaced
        return self._read(stream, token)

    async def _read(self, stream: _EventStream, token: object) -> AsyncIterator[Optional[Event]]:
        try:
            while True:
                if stream.reader is not token or stream.removed:
                    return
                if stream.queue:
                    yield stream.queue.popleft()
                    continue
                if stream.ended:
                    return
                stream.wake.clear()
                try:
                    await asyncio.wait_for(stream.wake.wait(), self.keepalive)
                except asyncio.TimeoutError:
                    if stream.reader is token and not stream.removed and not stream.ended:
                        yield None
        finally:
            if stream.reader is token:
                stream.reader = None

    def close(self) -> None:
        """The viewer session ended (§4.9.1: all its event streams are destroyed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams.values():
            stream.ended = True
            stream.wake.set()
        self._streams.clear()
        self._state.clear()


def encode_event(name: str, data: Any) -> bytes:
    """One SSE message: the event name and the JSON data on a single `data` line (§4.9.1)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode("utf-8")


def parse_event_names(body: bytes) -> list[str]:
    """The event names POSTed to the SSE URL (§4.9.1); an empty body means every event we announce.
    ValueError with a message suitable for a 400."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8: {exc}") from None
    if not text.strip():
        return list(EVENT_NAMES)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ValueError('the body must be a JSON array of event names such as ["active","layers"]')
    if not all(isinstance(item, str) for item in value):
        raise ValueError("every element of the array must be a string (an event name)")
    unknown = [name for name in dict.fromkeys(value) if name not in DRAFT_EVENT_NAMES]
    if unknown:
        raise ValueError(f"unknown event names {unknown}; this server sends {list(EVENT_NAMES)}")
    return list(dict.fromkeys(value))


def _config(request: Request) -> "Config":
    return request.app.state.manager.config


async def create_event_stream(request: Request, events: ViewerEvents, session_location: str) -> ASGIResponse:
    """POST {session}/sse: 201 + Location {session}/sse/{id}; 400 for a bad body; 404 once the session has ended."""
    config = _config(request)
    try:
        names = parse_event_names(await read_body(request))
    except ValueError as exc:
        return problem(config, 400, "Bad Request", str(exc))
    if events.closed:
        return problem(config, 404, "Not Found", "the viewer session has ended")
    stream_id = events.subscribe(names)
    location = f"{session_location.rstrip('/')}/sse/{stream_id}"
    return respond(config, 201, headers=[("Location", location)])


def event_stream_response(events: ViewerEvents, stream_id: str, config: "Config") -> ASGIResponse:
    """GET {session}/sse/{id}: the text/event-stream (an ASGIStreamingResponse), or a 404 problem (§4.9.1) for an
    unknown, deleted or ended stream. `config` (request.app.state.manager.config) gives the CORS origin."""
    try:
        reader = events.stream(stream_id)
    except KeyError:
        return problem(config, 404, "Not Found", "no such event stream")

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(reader) as items:
            async for item in items:
                yield KEEPALIVE_CHUNK if item is None else encode_event(*item)

    headers = dict(cors(config))
    headers["Cache-Control"] = "no-cache, no-store"
    headers["X-Accel-Buffering"] = "no"  # nginx and friends: do not buffer the stream
    return ASGIStreamingResponse(iterator=body(), media_type=EVENT_STREAM, headers=headers, status_code=200)


def delete_event_stream(request: Request, events: ViewerEvents, stream_id: str) -> ASGIResponse:
    """DELETE {session}/sse/{id} (§4.9.1): 200 and the stream is gone (its queue dropped); 404 if unknown."""
    config = _config(request)
    if not events.unsubscribe(stream_id):
        return problem(config, 404, "Not Found", "no such event stream")
    return respond(config, 200)


def extension_options(request: Request, methods: str) -> ASGIResponse:
    """OPTIONS / CORS preflight for the extension URLs: e.g. methods "POST, OPTIONS" for {session}/sse and
    {session}/layer, "GET, DELETE, OPTIONS" for {session}/sse/{id}. (A browser POSTing application/json preflights.)"""
    return preflight_response(_config(request), methods)
