"""Issue #5's scenario end to end: three gateway processes and a real redis-server (started on a free port).

Publish to A; a viewer arriving at B is redirected to A, two viewers on C (relay mode) are served from ONE pull of
A; A's publisher stops and a new one publishes within A's publisher_grace: every viewer resumes in its session;
Redis stops mid-stream: A keeps playing and reports degraded readiness, its entries return with Redis; A is killed:
its entries expire within the TTL and C's viewers get `inactive`.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urljoin

import httpx
import redis.asyncio

from clients import WhepViewer, find_stream, loopback_only
from test_cluster import wait_until
from test_media import STREAM, start_publisher, stop_all
from test_registry import RedisServer  # noqa: F401  (the redis_server fixture comes with it)
from test_registry import redis_server  # noqa: F401
from test_whep_extensions import SSE_REL, links

TTL = 1.5
SDP = {"content-type": "application/sdp"}


def node(redis_url: str, name: str, **cluster) -> dict:
    return {"cluster": {"registry": redis_url, "node_id": name, "ttl": TTL, **cluster}, "whep": {"publisher_grace": 15}}


READERS: list[asyncio.Task] = []


async def events(http: httpx.AsyncClient, viewer: WhepViewer) -> asyncio.Queue:
    """Subscribe to the viewer's active/inactive events; names arrive on the returned queue."""
    sse_link = links(viewer.response)[SSE_REL]
    created = await http.post(sse_link, content=b'["active", "inactive"]')
    assert created.status_code == 201
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        async with http.stream("GET", urljoin(sse_link, created.headers["location"]), timeout=None) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    queue.put_nowait(line[len("event: ") :])

    READERS.append(asyncio.get_running_loop().create_task(read()))
    return queue


async def next_event(queue: asyncio.Queue, wanted: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await queue.get() != wanted:
            pass


async def test_origin_redirect_and_relay_nodes_through_publisher_restart_redis_outage_and_origin_death(
    gateway_factory, redis_server
) -> None:
    a = gateway_factory(node(redis_server.url, "a"))
    b = gateway_factory(node(redis_server.url, "b"))
    c = gateway_factory(node(redis_server.url, "c", viewer_mode="relay", relay_grace=3.0))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=5)
    try:
        with loopback_only():
            first = await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            # B redirects (307) to A; the viewer plays from A.
            moved = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers=SDP)
            assert moved.status_code == 307 and moved.headers["location"] == a.url(f"/whep/{STREAM}"), moved.text
            via_b = WhepViewer(a.base_url, STREAM)
            # C relays: two viewers, one pull.
            on_c = [WhepViewer(c.base_url, STREAM), WhepViewer(c.base_url, STREAM)]
            viewers = [via_b, *on_c]
            clients.extend(viewers)
            await asyncio.gather(*(v.start() for v in viewers))
            await asyncio.gather(*(v.wait_frames(30, timeout=20) for v in viewers))
            assert all(set(v.resolutions) == {(640, 480)} for v in viewers)
            entry = await find_stream(a.base_url, STREAM)
            assert entry is not None and entry["viewers"] == 2, entry  # B's viewer + C's single pull

            # What Redis holds for the stream: owner, session, codecs, its layer with size and bitrate, viewer
            # count; and the events other nodes and operators read.
            store = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)

            async def registry_complete() -> bool:
                fields = await store.hgetall(f"whipgate:stream:{STREAM}")
                layers = json.loads(fields.get("layers") or "[]")
                return (fields.get("node_id") == "a" and fields.get("viewers") == "2"
                        and any(l["width"] == 640 and l["height"] == 480 and l["bitrate"] > 0 for l in layers))

            await wait_until(registry_complete, 10, "the registry never held the stream's layers and viewers")
            fields = await store.hgetall(f"whipgate:stream:{STREAM}")
            assert {"VP8", "OPUS"} <= {c.upper() for c in json.loads(fields["codecs"])}, fields
            kinds = [entry[1]["kind"] for entry in await store.xrange("whipgate:events")]
            assert "stream_started" in kinds and "layers_changed" in kinds, kinds
            await store.aclose()

            # A's publisher stops and another publishes the key: everyone resumes in the same session.
            queues = [await events(http, v) for v in viewers]
            await asyncio.sleep(0.3)
            await first.stop(delete=True)
            clients.remove(first)
            await asyncio.gather(*(next_event(q, "inactive", 15) for q in queues))
            before = [v.frames for v in viewers]
            second = await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            await asyncio.gather(*(next_event(q, "active", 15) for q in queues))
            await asyncio.gather(*(v.wait_frames(n + 30, timeout=20) for v, n in zip(viewers, before)))
            for v in viewers:
                tail = v.numbered_frames[-10:]
                assert tail and 0 <= second.frames_sent - tail[-1] < 60, (second.frames_sent, tail)

            # Redis stops: A keeps playing, readiness degraded; its entries come back with Redis.
            redis_server.kill()

            async def degraded() -> bool:
                return (await http.get(a.url("/readyz"))).status_code == 503

            await wait_until(degraded, 10, "A never reported degraded readiness")
            await asyncio.gather(*(v.wait_frames(v.frames + 30, timeout=10) for v in viewers))
            redis_server.start()

            async def restored() -> bool:
                r = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers=SDP)
                return r.status_code == 307 and (await http.get(a.url("/readyz"))).status_code == 200

            await wait_until(restored, 15, "the registry was not rewritten after Redis came back")

            # A dies: C's viewers get `inactive` (their pull is gone), A's entries expire within the TTL.
            a.proc.kill()
            a.proc.wait(5)
            t0 = time.monotonic()
            await asyncio.gather(*(next_event(q, "inactive", 15) for q in queues[1:]))
            told = time.monotonic() - t0

            async def forgotten() -> bool:
                r = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers=SDP)
                return r.status_code == 400  # no owner: B parses the (empty) offer itself

            await wait_until(forgotten, TTL * 4 + 5, "the dead origin's stream stayed in the registry")
            print(f"\norigin killed: C's viewers told after {told:.1f} s, entries gone after {time.monotonic() - t0:.1f} s (ttl {TTL} s)")
            assert await find_stream(c.base_url, STREAM) is None  # C cleaned up
    finally:
        for reader in READERS:
            reader.cancel()
        READERS.clear()
        await http.aclose()
        await stop_all(clients)
    for gw in (b, c):
        assert gw.codec_violations() == ""
