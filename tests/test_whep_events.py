"""whep/events.py: the WHEP Server Sent Events extension (draft-ietf-wish-whep-02 §4.9.1).

Pure units for ViewerEvents, then a tiny Litestar app built here (routes calling the helpers with one ViewerEvents)
served by uvicorn on 127.0.0.1 and read with httpx streaming.
"""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace
from typing import AsyncIterator, Optional

import httpx
import pytest
import uvicorn
from litestar import Litestar, Request, route
from litestar.response.base import ASGIResponse

from gateway.config import Config, HttpConfig
from whep.events import (
    EVENT_NAMES,
    KEEPALIVE_CHUNK,
    ViewerEvents,
    create_event_stream,
    delete_event_stream,
    encode_event,
    event_stream_response,
    extension_links,
    extension_options,
    parse_event_names,
)

ORIGIN = "https://player.example"
SESSION = "/whep/live/sess1"


# --- pure units ------------------------------------------------------------------------------------------------------


async def take(it: AsyncIterator, n: int, timeout: float = 2.0) -> list:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(it.__anext__(), timeout))
    return out


async def test_subscribe_publish_in_order_and_filtered():
    ev = ViewerEvents(keepalive=5)
    sid = ev.subscribe(["viewercount", "layers"])
    it = ev.stream(sid)
    ev.publish("viewercount", {"viewercount": 1})
    ev.publish("active", {})  # not subscribed
    ev.publish("layers", {"0": []})
    ev.publish("viewercount", {"viewercount": 2})
    assert await take(it, 3) == [
        ("viewercount", {"viewercount": 1}),
        ("layers", {"0": []}),
        ("viewercount", {"viewercount": 2}),
    ]
    await it.aclose()


async def test_stream_ids_are_unguessable_and_distinct():
    ev = ViewerEvents()
    ids = {ev.subscribe(["active"]) for _ in range(5)}
    assert len(ids) == 5 and all(len(i) >= 22 for i in ids)


async def test_new_stream_starts_with_current_state():
    ev = ViewerEvents(keepalive=5)
    ev.publish("active", {})
    ev.publish("viewercount", {"viewercount": 1})
    ev.publish("layers", {"0": [{"rid": "h"}]})
    ev.publish("viewercount", {"viewercount": 4})
    sid = ev.subscribe(list(EVENT_NAMES))
    it = ev.stream(sid)
    # latest per event, in publication order; no stale viewercount 1
    assert await take(it, 3) == [
        ("active", {}),
        ("layers", {"0": [{"rid": "h"}]}),
        ("viewercount", {"viewercount": 4}),
    ]
    await it.aclose()


async def test_active_and_inactive_are_one_state():
    ev = ViewerEvents(keepalive=5)
    ev.publish("active", {})
    assert ev.latest("active") == {} and ev.latest("inactive") is None
    ev.publish("inactive", {})
    assert ev.latest("active") is None and ev.latest("inactive") == {}
    sid = ev.subscribe(["active", "inactive"])
    it = ev.stream(sid)
    assert await take(it, 1) == [("inactive", {})]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(it.__anext__(), 0.1)


async def test_latest_and_unsubscribed_state():
    ev = ViewerEvents(keepalive=5)
    assert ev.latest("viewercount") is None
    ev.publish("viewercount", {"viewercount": 2})
    assert ev.latest("viewercount") == {"viewercount": 2}
    assert ev.latest("reconnect") is None
    sid = ev.subscribe(["layers"])  # viewercount state is not replayed to a layers-only stream
    it = ev.stream(sid)
    ev.publish("layers", {"0": []})
    assert await take(it, 1) == [("layers", {"0": []})]


async def test_published_data_is_copied():
    ev = ViewerEvents(keepalive=5)
    sid = ev.subscribe(["layers"])
    data = {"0": [{"rid": "h"}]}
    ev.publish("layers", data)
    data["0"].append({"rid": "f"})
    assert await take(ev.stream(sid), 1) == [("layers", {"0": [{"rid": "h"}]})]
    assert ev.latest("layers") == {"0": [{"rid": "h"}]}


def test_publish_rejects_unknown_and_bad_data():
    ev = ViewerEvents()
    with pytest.raises(ValueError):
        ev.publish("nonsense", {})
    with pytest.raises(TypeError):
        ev.publish("layers", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ev.publish("layers", {"x": object()})


def test_subscribe_rejects_unknown_names():
    ev = ViewerEvents()
    with pytest.raises(ValueError, match="unknown event names"):
        ev.subscribe(["active", "bogus"])


async def test_keepalive_tick():
    ev = ViewerEvents(keepalive=0.05)
    sid = ev.subscribe(["active"])
    it = ev.stream(sid)
    assert await take(it, 2) == [None, None]
    ev.publish("active", {})
    assert await take(it, 1) == [("active", {})]
    await it.aclose()


async def test_overflow_drops_oldest_and_counts():
    ev = ViewerEvents(queue_size=4, keepalive=5)
    sid = ev.subscribe(["viewercount"])
    for n in range(10):
        ev.publish("viewercount", {"viewercount": n})
    assert ev.dropped(sid) == 6 and ev.dropped_total == 6
    got = await take(ev.stream(sid), 4)
    assert [d["viewercount"] for _, d in got] == [6, 7, 8, 9]


async def test_close_delivers_queued_then_ends():
    ev = ViewerEvents(keepalive=5)
    sid = ev.subscribe(["inactive", "viewercount"])
    it = ev.stream(sid)
    ev.publish("viewercount", {"viewercount": 0})
    ev.publish("inactive", {})
    ev.close()
    assert [item async for item in it] == [("viewercount", {"viewercount": 0}), ("inactive", {})]
    assert ev.closed and not ev.has_stream(sid)
    ev.publish("active", {})  # no-op once closed
    with pytest.raises(RuntimeError):
        ev.subscribe(["active"])
    ev.close()  # idempotent


async def test_close_wakes_a_waiting_reader():
    ev = ViewerEvents(keepalive=30)
    sid = ev.subscribe(["active"])
    reader = asyncio.ensure_future(take(ev.stream(sid), 1, timeout=5))
    await asyncio.sleep(0.05)
    ev.close()
    with pytest.raises(StopAsyncIteration):
        await reader


async def test_unsubscribe_drops_queue_and_ends_reader():
    ev = ViewerEvents(keepalive=5)
    sid = ev.subscribe(["viewercount"])
    it = ev.stream(sid)
    ev.publish("viewercount", {"viewercount": 1})
    assert await take(it, 1) == [("viewercount", {"viewercount": 1})]
    ev.publish("viewercount", {"viewercount": 2})
    assert ev.unsubscribe(sid) is True
    assert [item async for item in it] == []
    assert ev.unsubscribe(sid) is False
    with pytest.raises(KeyError):
        ev.stream(sid)


async def test_second_reader_takes_over():
    ev = ViewerEvents(keepalive=30)
    sid = ev.subscribe(["viewercount"])
    first = ev.stream(sid)
    first_task = asyncio.ensure_future(take(first, 1, timeout=5))
    await asyncio.sleep(0.05)
    second = ev.stream(sid)
    ev.publish("viewercount", {"viewercount": 7})
    assert await take(second, 1) == [("viewercount", {"viewercount": 7})]
    with pytest.raises(StopAsyncIteration):
        await first_task


async def test_too_many_streams_evicts_the_oldest():
    ev = ViewerEvents(max_streams=2)
    a = ev.subscribe(["active"])
    b = ev.subscribe(["active"])
    c = ev.subscribe(["active"])
    assert not ev.has_stream(a) and ev.has_stream(b) and ev.has_stream(c) and ev.stream_count == 2


def test_encode_event_single_data_line():
    assert encode_event("viewercount", {"viewercount": 3}) == b'event: viewercount\ndata: {"viewercount":3}\n\n'
    raw = encode_event("layers", {"reason": "line1\nline2", "name": "café"})
    assert raw.count(b"\n") == 3 and "café".encode() in raw


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"", list(EVENT_NAMES)),
        (b"  \n", list(EVENT_NAMES)),
        (b"[]", []),
        (b'["layers","active","layers"]', ["layers", "active"]),
        # the draft's own example lists "reconnect", which we accept but never send
        (b'["active","inactive","layers","reconnect","viewercount"]', 
         ["active", "inactive", "layers", "reconnect", "viewercount"]),
    ],
)
def test_parse_event_names(body, expected):
    assert parse_event_names(body) == expected


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{}", "JSON array"),
        (b'"active"', "JSON array"),
        (b"[1]", "string"),
        (b'["active", null]', "string"),
        (b'["active", "bogus"]', "unknown event names ['bogus']"),
        (b"[", "not valid JSON"),
        (b"\xff", "UTF-8"),
    ],
)
def test_parse_event_names_rejects(body, words):
    with pytest.raises(ValueError) as info:
        parse_event_names(body)
    assert words in str(info.value)


def test_extension_links():
    assert extension_links("/whep/live/abc") == [
        (
            "Link",
            '</whep/live/abc/sse>; rel="urn:ietf:params:whep:ext:core:server-sent-events"; '
            'events="active,inactive,layers,viewercount"',
        ),
        ("Link", '</whep/live/abc/layer>; rel="urn:ietf:params:whep:ext:core:layer"'),
    ]


# --- over HTTP: a tiny Litestar app on uvicorn ------------------------------------------------------------------


class Served(SimpleNamespace):
    events: ViewerEvents
    client: httpx.AsyncClient


def build_app(events: ViewerEvents) -> Litestar:
    @route(f"{SESSION}/sse", http_method=["POST", "OPTIONS"], status_code=201)
    async def sse_endpoint(request: Request) -> ASGIResponse:
        if request.method == "OPTIONS":
            return extension_options(request, "POST, OPTIONS")
        return await create_event_stream(request, events, SESSION)

    @route(f"{SESSION}/sse/{{stream_id:str}}", http_method=["GET", "DELETE"], status_code=200)
    async def sse_stream(request: Request) -> ASGIResponse:
        stream_id = request.path_params["stream_id"]
        if request.method == "DELETE":
            return delete_event_stream(request, events, stream_id)
        return event_stream_response(events, stream_id, request.app.state.manager.config)

    app = Litestar(route_handlers=[sse_endpoint, sse_stream])
    app.state.manager = SimpleNamespace(config=Config(http=HttpConfig(cors_allow_origin=ORIGIN)))
    return app


async def serve(events: ViewerEvents) -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_app(events), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    )
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield Served(events=events, client=client)
    finally:
        events.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def served():
    async for s in serve(ViewerEvents(keepalive=0.3, queue_size=8)):
        yield s


async def subscribe(s: Served, names: Optional[list[str]]) -> str:
    body = b"" if names is None else json.dumps(names).encode()
    r = await s.client.post(f"{SESSION}/sse", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    assert location.startswith(f"{SESSION}/sse/")
    return location


class SseReader:
    """Parses an SSE byte stream into ("event", name, data) and ("comment", text) items."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.aiter_raw()
        self.buffer = b""

    async def next(self, timeout: float = 3.0):
        while b"\n\n" not in self.buffer:
            self.buffer += await asyncio.wait_for(self.chunks.__anext__(), timeout)
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        lines = block.decode().split("\n")
        if lines[0].startswith(":"):
            return ("comment", lines[0][1:].strip())
        fields = dict(line.split(": ", 1) for line in lines)
        assert set(fields) == {"event", "data"}, lines  # one event line, ONE data line (§4.9.1)
        return ("event", fields["event"], json.loads(fields["data"]))

    async def next_event(self, timeout: float = 3.0):
        while True:
            item = await self.next(timeout)
            if item[0] == "event":
                return item[1:]

    async def at_end(self, timeout: float = 3.0) -> bool:
        try:
            while True:
                chunk = await asyncio.wait_for(self.chunks.__anext__(), timeout)
                self.buffer += chunk
        except StopAsyncIteration:
            return True


async def test_http_subscribe_and_receive_in_order(served: Served):
    served.events.publish("active", {})
    location = await subscribe(served, ["active", "layers", "viewercount"])
    async with served.client.stream("GET", location) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "no-cache" in r.headers["cache-control"]
        reader = SseReader(r)
        assert await reader.next_event() == ("active", {})  # current state first
        served.events.publish("viewercount", {"viewercount": 3})
        served.events.publish("inactive", {})  # not subscribed
        served.events.publish("layers", {"0": [{"rid": "h", "spatialLayerId": 1}]})
        assert await reader.next_event() == ("viewercount", {"viewercount": 3})
        assert await reader.next_event() == ("layers", {"0": [{"rid": "h", "spatialLayerId": 1}]})


async def test_http_raw_wire_format(served: Served):
    location = await subscribe(served, ["viewercount"])
    async with served.client.stream("GET", location) as r:
        served.events.publish("viewercount", {"viewercount": 3})
        reader = SseReader(r)
        while b"\n\n" not in reader.buffer:
            reader.buffer += await asyncio.wait_for(reader.chunks.__anext__(), 3)
        assert reader.buffer.startswith(b'event: viewercount\ndata: {"viewercount":3}\n\n')


async def test_http_empty_body_subscribes_to_all(served: Served):
    location = await subscribe(served, None)
    served.events.publish("inactive", {})
    async with served.client.stream("GET", location) as r:
        assert await SseReader(r).next_event() == ("inactive", {})


async def test_http_keepalive_comment(served: Served):
    location = await subscribe(served, ["layers"])
    async with served.client.stream("GET", location) as r:
        reader = SseReader(r)
        assert await reader.next(timeout=3) == ("comment", "keep-alive")
        served.events.publish("layers", {"0": []})
        assert await reader.next_event() == ("layers", {"0": []})
    assert KEEPALIVE_CHUNK == b": keep-alive\n\n"


async def test_http_events_queued_between_long_pulls(served: Served):
    location = await subscribe(served, ["viewercount"])
    served.events.publish("viewercount", {"viewercount": 1})
    served.events.publish("viewercount", {"viewercount": 2})
    async with served.client.stream("GET", location) as r:
        reader = SseReader(r)
        assert await reader.next_event() == ("viewercount", {"viewercount": 1})
        assert await reader.next_event() == ("viewercount", {"viewercount": 2})
    await asyncio.sleep(0.1)  # the server notices the disconnect
    served.events.publish("viewercount", {"viewercount": 3})
    async with served.client.stream("GET", location) as r:
        assert await SseReader(r).next_event() == ("viewercount", {"viewercount": 3})


async def test_http_overflow_drops_oldest(served: Served):
    location = await subscribe(served, ["viewercount"])
    stream_id = location.rsplit("/", 1)[1]
    for n in range(20):  # queue_size=8 in the fixture
        served.events.publish("viewercount", {"viewercount": n})
    assert served.events.dropped(stream_id) == 12
    async with served.client.stream("GET", location) as r:
        reader = SseReader(r)
        got = [(await reader.next_event())[1]["viewercount"] for _ in range(8)]
    assert got == list(range(12, 20))


async def test_http_close_ends_stream_then_404(served: Served):
    location = await subscribe(served, ["inactive"])
    async with served.client.stream("GET", location) as r:
        reader = SseReader(r)
        await asyncio.sleep(0.05)
        served.events.publish("inactive", {})
        served.events.close()
        assert await reader.next_event() == ("inactive", {})
        assert await reader.at_end()
    r = await served.client.get(location)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await served.client.post(f"{SESSION}/sse", content=b'["active"]')
    assert r.status_code == 404


async def test_http_delete_stream(served: Served):
    location = await subscribe(served, ["viewercount"])
    async with served.client.stream("GET", location) as r:
        reader = SseReader(r)
        await asyncio.sleep(0.05)
        d = await served.client.delete(location)
        assert d.status_code == 200
        assert await reader.at_end()
    assert (await served.client.get(location)).status_code == 404
    assert (await served.client.delete(location)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [b"{}", b'"active"', b"[1, 2]", b'["active", "bogus"]', b"not json", b'{"events": ["active"]}'],
)
async def test_http_bad_subscription_400(served: Served, body: bytes):
    r = await served.client.post(f"{SESSION}/sse", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    problem = r.json()
    assert problem["status"] == 400 and problem["detail"]
    assert served.events.stream_count == 0


async def test_http_unknown_stream_404(served: Served):
    r = await served.client.get(f"{SESSION}/sse/nope")
    assert r.status_code == 404
    assert r.json()["detail"] == "no such event stream"


async def test_http_created_response_headers(served: Served):
    r = await served.client.post(f"{SESSION}/sse", content=b'["layers"]')
    assert r.status_code == 201 and r.content == b""
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "Location" in r.headers["access-control-expose-headers"]


async def test_http_preflight(served: Served):
    r = await served.client.options(
        f"{SESSION}/sse", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert "Content-Type" in r.headers["access-control-allow-headers"]


async def test_http_two_streams_get_their_own_events(served: Served):
    a = await subscribe(served, ["viewercount"])
    b = await subscribe(served, ["layers"])
    async with served.client.stream("GET", a) as ra, served.client.stream("GET", b) as rb:
        served.events.publish("layers", {"0": []})
        served.events.publish("viewercount", {"viewercount": 9})
        assert await SseReader(ra).next_event() == ("viewercount", {"viewercount": 9})
        assert await SseReader(rb).next_event() == ("layers", {"0": []})
