"""Two gateway processes and a real redis-server: takeover by the same credentials across nodes, and where a
publisher goes when a node is full (cluster.max_publishers: 503 + Retry-After, or 307 to the other node).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from clients import WhepViewer, WhipPublisher, get_metric, loopback_only
from test_cluster import cluster, open_offer, wait_until
from test_media import stop_all
from test_registry import RedisServer  # noqa: F401  (the redis_server fixture comes with it)
from test_registry import redis_server  # noqa: F401

STREAM = "live"
TOKEN = "publisher-secret"
SDP = {"content-type": "application/sdp"}


def node(redis_url: str, name: str, **extra) -> dict:
    config = cluster(redis_url, name)
    for table, values in extra.items():
        config.setdefault(table, {}).update(values)
    return config


async def publish(base_url: str, clients: list, stream: str = STREAM, token: str | None = None) -> WhipPublisher:
    pub = WhipPublisher(base_url, stream, token=token)
    clients.append(pub)
    await pub.start()
    await pub.wait_connected(10)
    return pub


async def test_takeover_across_nodes_with_the_same_token(gateway_factory, redis_server) -> None:
    takeover = {"whip": {"takeover": True}, "streams": {STREAM: {"publish_token": TOKEN}}}
    a = gateway_factory(node(redis_server.url, "a", **takeover))
    b = gateway_factory(node(redis_server.url, "b", **takeover))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=5)
    try:
        with loopback_only():
            first = await publish(a.base_url, clients, token=TOKEN)
            viewer = WhepViewer(a.base_url, STREAM)
            clients.append(viewer)
            await viewer.start()
            await viewer.wait_frames(20, timeout=15)
            # Another token is not even authorized; the right one on B takes the key over from A.
            wrong = await http.post(b.url(f"/whip/{STREAM}"), content=open_offer(), headers={**SDP, "authorization": "Bearer nope"})
            assert wrong.status_code == 401, wrong.text
            t0 = time.monotonic()
            second = await publish(b.base_url, clients, token=TOKEN)

            async def old_publisher_gone() -> bool:
                return await get_metric(a.base_url, "whipgate_sessions", 'kind="publisher"') == 0

            await wait_until(old_publisher_gone, 10, "A kept the taken-over publisher")
            print(f"\nA ended its publisher {time.monotonic() - t0:.2f} s after the takeover on B")
            gone = await http.delete(first.location, headers={"authorization": f"Bearer {TOKEN}"})
            assert gone.status_code == 404, f"the taken-over session must be gone: DELETE -> {gone.status_code}"
            assert "the stream key was claimed by another node" in a.log()
            # A's viewers end with it (the stream lives on B now); new viewers at A are sent to B and decode.
            await viewer.wait_media_end(timeout=10, quiet=1.0)

            async def a_empty() -> bool:
                return await get_metric(a.base_url, "whipgate_sessions") == 0

            await wait_until(a_empty, 10, "A still has sessions")
            moved = await http.post(a.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers=SDP)
            assert moved.status_code == 307 and moved.headers["location"] == b.url(f"/whep/{STREAM}"), moved
            fresh = WhepViewer(b.base_url, STREAM)
            clients.append(fresh)
            await fresh.start()
            await fresh.wait_frames(20, timeout=15)
            lag = second.frames_sent - fresh.numbered_frames[-1]
            assert 0 <= lag < 45, lag
    finally:
        await http.aclose()
        await stop_all(clients)


async def test_no_takeover_across_nodes_without_a_token(gateway_factory, redis_server) -> None:
    a = gateway_factory(node(redis_server.url, "a", whip={"takeover": True}))
    b = gateway_factory(node(redis_server.url, "b", whip={"takeover": True}))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=5)
    try:
        with loopback_only():
            first = await publish(a.base_url, clients)
            second = await http.post(b.url(f"/whip/{STREAM}"), content=open_offer(), headers=SDP)
            assert second.status_code == 409, second.text
            await asyncio.sleep(1.0)  # a heartbeat or two: A keeps its publisher
            assert first.connection_state == "connected"
            assert await get_metric(a.base_url, "whipgate_sessions", 'kind="publisher"') == 1
    finally:
        await http.aclose()
        await stop_all(clients)


async def test_a_full_node_rejects_or_redirects_publishers(gateway_factory, redis_server) -> None:
    a = gateway_factory(node(redis_server.url, "a", cluster={"max_publishers": 1, "over_capacity": "redirect"}))
    b = gateway_factory(node(redis_server.url, "b", cluster={"max_publishers": 1, "over_capacity": "reject"}))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=5)
    try:
        with loopback_only():
            await publish(a.base_url, clients, "one")
            # A is full: 307 to B (RFC 9725 §4.5), and the publisher's offer, re-POSTed there, is taken.
            moved = await http.post(a.url("/whip/two"), content=open_offer(), headers=SDP)
            assert moved.status_code == 307, moved.text
            assert moved.headers["location"] == b.url("/whip/two")
            await publish(moved.headers["location"].rsplit("/whip/", 1)[0], clients, "two")
            # B is full too and rejects: 503 with Retry-After.
            full = await http.post(b.url("/whip/three"), content=open_offer(), headers=SDP)
            assert full.status_code == 503 and full.headers.get("retry-after") == "5", (full.status_code, full.headers)

            # Once B's heartbeat reports its load, A no longer sends publishers to a node no less loaded than
            # itself: 503 rather than a redirect B would bounce.
            async def a_refuses() -> bool:
                r = await http.post(a.url("/whip/three"), content=open_offer(), headers=SDP)
                assert r.status_code in (307, 503), r.text
                return r.status_code == 503 and r.headers.get("retry-after") == "5"

            await wait_until(a_refuses, 5, "A kept redirecting to a node as loaded as itself")
            assert await get_metric(a.base_url, "whipgate_sessions", 'kind="publisher"') == 1
            assert await get_metric(b.base_url, "whipgate_sessions", 'kind="publisher"') == 1
    finally:
        await http.aclose()
        await stop_all(clients)
