"""Several gateways as one, through a real redis-server started by the test on a free port.

Publish to A; a viewer arriving at B is redirected (307) to A and decodes; a second publisher anywhere gets 409;
Redis stopped mid-stream: A keeps playing and reports degraded readiness, and its entries return with Redis;
A killed: its entries expire within the TTL and B no longer redirects to it.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from clients import WhepViewer, loopback_only
from test_media import STREAM, start_publisher, stop_all
from test_registry import RedisServer  # noqa: F401  (the redis_server fixture comes with it)
from test_registry import redis_server  # noqa: F401

TTL = 1.5


def cluster(redis_url: str, node: str) -> dict:
    return {"cluster": {"registry": redis_url, "node_id": node, "ttl": TTL}}


async def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def test_viewers_on_another_node_are_redirected_and_one_publisher_per_key(gateway_factory, redis_server) -> None:
    a = gateway_factory(cluster(redis_server.url, "a"))
    b = gateway_factory(cluster(redis_server.url, "b"))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=5)
    try:
        with loopback_only():
            await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            offer = (await http.post(a.url(f"/whep/{STREAM}"), content=b"")).status_code  # any POST: not a redirect
            assert offer in (400, 415)
            # A viewer arriving at B: 307 to A's WHEP endpoint (RFC 9725 §4.5), then it plays from A.
            viewer = WhepViewer(b.base_url, STREAM)
            clients.append(viewer)
            moved = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers={"content-type": "application/sdp"})
            assert moved.status_code == 307, moved.text
            assert moved.headers["location"] == a.url(f"/whep/{STREAM}")
            viewer = WhepViewer(moved.headers["location"].rsplit(f"/whep/{STREAM}", 1)[0], STREAM)
            clients.append(viewer)
            await viewer.start()
            await viewer.wait_frames(30, timeout=15)
            # One publisher per stream key across the cluster: B refuses a second one.
            second = await http.post(
                b.url(f"/whep/{STREAM}".replace("/whep/", "/whip/")),
                content=open_offer(),
                headers={"content-type": "application/sdp"},
            )
            assert second.status_code == 409, second.text
            # Redis goes away: A keeps serving, says it is degraded, and its entries come back with Redis.
            assert (await http.get(a.url("/readyz"))).status_code == 200
            redis_server.kill()

            async def degraded() -> bool:
                return (await http.get(a.url("/readyz"))).status_code == 503

            await wait_until(degraded, 10, "A never reported degraded readiness")
            frames = viewer.frames
            await viewer.wait_frames(frames + 30, timeout=10)  # playback on A continues
            redis_server.start()

            async def redirected_again() -> bool:
                r = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers={"content-type": "application/sdp"})
                return r.status_code == 307 and (await http.get(a.url("/readyz"))).status_code == 200

            await wait_until(redirected_again, 15, "the registry was not rewritten after Redis came back")
            # A dies without cleaning up: its entries expire within the TTL, B stops redirecting to it.
            a.proc.kill()
            a.proc.wait(5)
            t0 = time.monotonic()

            answers = []

            async def forgotten() -> bool:
                r = await http.post(b.url(f"/whep/{STREAM}"), content=b"v=0\r\n", headers={"content-type": "application/sdp"})
                answers.append(r.status_code)
                # No owner any more: B parses the (deliberately empty) offer itself instead of redirecting.
                return r.status_code == 400

            await wait_until(forgotten, TTL * 4 + 5, f"a dead node's stream stayed in the registry: {answers[-3:]}")
            print(f"\ndead node's stream expired after {time.monotonic() - t0:.1f} s (ttl {TTL} s)")
    finally:
        await http.aclose()
        await stop_all(clients)


def open_offer() -> bytes:
    from conftest import FIXTURES_SDP

    return (FIXTURES_SDP / "ffmpeg9-whip-h264-opus.sdp").read_bytes()
