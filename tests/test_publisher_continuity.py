"""Viewers outlive their publisher: a grace period to wait for the next one, and takeover by the same credentials.

Real gateway processes, aiortc publishers that encode and aiortc viewers that decode. When a publisher leaves
and another publishes the same stream key, the same viewer session (same peer connection, same SSRC) decodes the
new publisher's numbered pictures, and aiortc's RFC 3550 receive statistics of that one SSRC show no jump in the
sequence numbers (a jump counts as thousands of lost packets, or negative loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Optional

import pytest

from tests.clients import (
    WhepViewer,
    WhipPublisher,
    decode_failures,
    find_stream,
    get_metric,
    http_client,
    loopback_only,
    wait_for,
)

STREAM = "live"
SESSIONS = "whipgate_sessions"
TOKEN = "publisher-secret"


@pytest.fixture(autouse=True)
def _loopback_candidates():
    with loopback_only():
        yield


class Events:
    """One viewer's WHEP server-sent events (draft-ietf-wish-whep-02 §4.9.1), collected in the background."""

    def __init__(self, viewer: WhepViewer) -> None:
        self.viewer = viewer
        self.seen: list[tuple[str, dict]] = []
        self._task: Optional[asyncio.Task] = None
        self._client = http_client(timeout=60)

    async def start(self) -> None:
        r = await self._client.post(
            f"{self.viewer.location}/sse", content=json.dumps(["active", "inactive"]).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text
        location = r.headers["location"]
        url = location if location.startswith("http") else self.viewer.base_url + location
        self._task = asyncio.ensure_future(self._read(url))

    async def _read(self, url: str) -> None:
        async with self._client.stream("GET", url) as r:
            buffer = b""
            async for chunk in r.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if not line.startswith(":"))
                    if "event" in fields:
                        self.seen.append((fields["event"], json.loads(fields.get("data", "{}"))))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    async def wait(self, name: str, count: int, timeout: float) -> None:
        ok = await wait_for(lambda: self.names().count(name) >= count, timeout)
        assert ok, f"no {count}x {name!r} event within {timeout} s; events: {self.names()}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._client.aclose()


async def stop_all(clients: list) -> None:
    for c in reversed(clients):
        try:
            await c.stop() if isinstance(c, Events) else await c.stop(delete=True)
        except Exception as exc:  # teardown must reach every client
            print(f"teardown of {type(c).__name__}: {exc!r}")


async def publish(gateway, clients: list, codec: str = "VP8", token: Optional[str] = None) -> WhipPublisher:
    pub = WhipPublisher(gateway.base_url, STREAM, token=token, video_codec=codec)
    clients.append(pub)
    await pub.start()
    await pub.wait_connected(10)
    return pub


async def play(gateway, clients: list) -> tuple[WhepViewer, Events]:
    viewer = WhepViewer(gateway.base_url, STREAM)
    clients.append(viewer)
    await viewer.start()
    events = Events(viewer)
    clients.append(events)
    await events.start()
    return viewer, events


async def gauges(gateway) -> tuple[float, float]:
    return (
        await get_metric(gateway.base_url, SESSIONS, 'kind="publisher"'),
        await get_metric(gateway.base_url, SESSIONS, 'kind="viewer"'),
    )


async def video_stream(viewer: WhepViewer) -> tuple[int, int, int]:
    streams = await viewer.rtp_stats("video")
    assert len(streams) == 1, f"the viewer should receive ONE video RTP stream (one SSRC), got {streams}"
    return streams[0]


def assert_follows(viewer: WhepViewer, pub: WhipPublisher, since: int, size=(640, 480)) -> None:
    """The frames decoded since index `since` are `pub`'s pictures: right size, numbered, in order, live."""
    sizes = set(viewer.frame_sizes[since:])
    numbers = [n for n in viewer.frame_numbers[since:] if n is not None]
    assert sizes == {size}, sizes
    assert len(numbers) >= 0.9 * (viewer.frames - since), f"{len(numbers)} numbered of {viewer.frames - since}"
    assert all(a < b for a, b in zip(numbers, numbers[1:])), f"out of order: {numbers}"
    lag = pub.frames_sent - numbers[-1]
    assert 0 <= lag < 45, f"viewer {lag} frames behind the new publisher (it sent {pub.frames_sent})"


def first_picture_of_new_publisher(viewer: WhepViewer, since: int) -> int:
    """Index of the first decoded frame of a new publisher (it numbers its pictures from 0 again); the old one's
    last picture may be decoded only when the next packets arrive (the receiver's jitter buffer)."""
    numbers = viewer.frame_numbers
    last_old = max(n for n in numbers[:since] if n is not None)
    return next(i for i in range(since, len(numbers)) if numbers[i] is not None and numbers[i] < last_old)


async def assert_session_gone(viewer: WhepViewer) -> None:
    async with http_client() as c:
        r = await c.delete(viewer.location)
    assert r.status_code == 404, f"the viewer session should be gone: DELETE -> {r.status_code}"


# ---------------------------------------------------------------------------------------------------------------
# publisher gap (whep.publisher_grace)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_viewer_waits_for_the_next_publisher_and_decodes_on(gateway_factory, codec: str) -> None:
    gateway = gateway_factory({"whep": {"publisher_grace": 20}})
    clients: list = []
    with decode_failures() as decode_errors:
        try:
            first = await publish(gateway, clients, codec)
            viewer, events = await play(gateway, clients)
            await viewer.wait_frames(30, timeout=20)
            await events.wait("active", 1, 5)
            ssrc, received_before, lost_before = await video_stream(viewer)

            assert (await first.delete()).status_code == 200
            await events.wait("inactive", 1, 5)
            t_left = time.monotonic()
            await viewer.wait_media_end(timeout=5, quiet=1.0)
            # The viewer waits: its session and peer connection stay, the stream is not live (a new viewer: 409).
            assert await gauges(gateway) == (0.0, 1.0)
            assert await find_stream(gateway.base_url, STREAM) is None
            late = WhepViewer(gateway.base_url, STREAM)
            clients.append(late)
            r = await late.start(expect_status=409)
            assert r.headers.get("retry-after") == "5", r.headers
            assert viewer.connection_state == "connected", viewer.connection_states
            await first.stop(delete=False)
            await asyncio.sleep(1.0)
            frames_at_gap = viewer.frames

            second = await publish(gateway, clients, codec)
            await events.wait("active", 2, 10)
            await viewer.wait_frames(frames_at_gap + 45, timeout=20)
            switch = first_picture_of_new_publisher(viewer, frames_at_gap)
            assert switch <= frames_at_gap + 1, viewer.frame_numbers[frames_at_gap - 2 :]
            took = viewer.frame_times[switch] - t_left
            assert_follows(viewer, second, switch)
            ssrc_after, received_after, lost_after = await video_stream(viewer)
            print(
                f"{codec}: viewer decoded the new publisher {took:.2f} s after the old one left; "
                f"RTP ssrc {ssrc:#x} -> {ssrc_after:#x}, received {received_before} -> {received_after}, "
                f"lost {lost_before} -> {lost_after}; events {events.names()}"
            )
            assert ssrc_after == ssrc, "the viewer's SSRC must not change"
            assert received_after > received_before + 40
            # Continuous sequence numbers: the gap costs no sequence numbers at all (loopback: no real loss).
            assert 0 <= lost_after - lost_before <= 10, (lost_before, lost_after)
            assert await gauges(gateway) == (1.0, 1.0)
            assert events.names()[-2:] == ["inactive", "active"], events.names()
        finally:
            await stop_all(clients)
    assert not decode_errors, decode_errors[:3]
    assert gateway.codec_violations() == ""


async def test_grace_expiry_ends_the_viewer(gateway_factory) -> None:
    gateway = gateway_factory({"whep": {"publisher_grace": 2}})
    clients: list = []
    try:
        first = await publish(gateway, clients)
        viewer, events = await play(gateway, clients)
        await viewer.wait_frames(20, timeout=20)
        await first.stop(delete=True)
        t_left = time.monotonic()
        await events.wait("inactive", 1, 5)
        assert await gauges(gateway) == (0.0, 1.0), "the viewer must wait during the grace period"
        gone = await wait_for(lambda: False, 1.0)  # still there after 1 s of the 2 s
        assert not gone
        assert await gauges(gateway) == (0.0, 1.0)
        ok = False
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not ok:
            ok = await gauges(gateway) == (0.0, 0.0)
            await asyncio.sleep(0.1)
        took = time.monotonic() - t_left
        print(f"viewer ended {took:.2f} s after its publisher left (grace 2 s)")
        assert ok and took >= 1.9, f"viewer not ended at grace expiry ({took:.2f} s)"
        await assert_session_gone(viewer)
        assert "no publisher came back within 2 s" in gateway.log()
        await viewer.wait_media_end(timeout=5, quiet=1.0)
    finally:
        await stop_all(clients)


async def test_codec_change_ends_the_viewer(gateway_factory) -> None:
    gateway = gateway_factory({"whep": {"publisher_grace": 20}})
    clients: list = []
    try:
        first = await publish(gateway, clients, "VP8")
        viewer, events = await play(gateway, clients)
        await viewer.wait_frames(20, timeout=20)
        await first.stop(delete=True)
        await events.wait("inactive", 1, 5)
        await publish(gateway, clients, "H264")
        ended = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not ended:
            ended = await gauges(gateway) == (1.0, 0.0)
            await asyncio.sleep(0.1)
        assert ended, await gauges(gateway)
        await assert_session_gone(viewer)
        log = gateway.log()
        assert "the new publisher sends video H264, this viewer negotiated VP8 and cannot decode it" in log, log[-3000:]
        # A new viewer of the H.264 publisher is fine.
        fresh, _ = await play(gateway, clients)
        await fresh.wait_frames(20, timeout=20)
    finally:
        await stop_all(clients)


# ---------------------------------------------------------------------------------------------------------------
# takeover by the same credentials (whip.takeover)
# ---------------------------------------------------------------------------------------------------------------


def takeover_config(takeover: bool = True, token: Optional[str] = TOKEN) -> dict:
    config: dict = {"whip": {"takeover": takeover}}
    if token is not None:
        config["streams"] = {STREAM: {"publish_token": token}}
    return config


async def test_takeover_with_the_same_token_keeps_viewers_decoding(gateway_factory) -> None:
    gateway = gateway_factory(takeover_config())
    clients: list = []
    with decode_failures() as decode_errors:
        try:
            first = await publish(gateway, clients, token=TOKEN)
            viewer, events = await play(gateway, clients)
            await viewer.wait_frames(30, timeout=20)
            ssrc, received_before, lost_before = await video_stream(viewer)
            frames_before = viewer.frames

            # The encoder "reconnects" (a new session, same token) while the old one is still live.
            t0 = time.monotonic()
            second = await publish(gateway, clients, token=TOKEN)
            async with http_client() as c:
                r = await c.delete(first.location, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 404, f"the taken-over session must be gone: DELETE -> {r.status_code}"
            await viewer.wait_frames(frames_before + 45, timeout=20)
            switch = first_picture_of_new_publisher(viewer, frames_before)
            assert_follows(viewer, second, switch)
            ssrc_after, received_after, lost_after = await video_stream(viewer)
            print(f"takeover: viewer on the new publisher {viewer.frame_times[switch] - t0:.2f} s after its POST; "
                  f"lost {lost_before} -> {lost_after}, events {events.names()}")
            assert ssrc_after == ssrc
            assert 0 <= lost_after - lost_before <= 10, (lost_before, lost_after)
            assert await gauges(gateway) == (1.0, 1.0)
            assert "inactive" not in events.names(), "a takeover leaves no gap to announce"
            assert "takes over stream live" in gateway.log()
        finally:
            await stop_all(clients)
    assert not decode_errors, decode_errors[:3]


@pytest.mark.parametrize(
    "config, second_token, status",
    [
        (takeover_config(takeover=False), TOKEN, 409),  # takeover off: 409 as ever
        (takeover_config(token=None), None, 409),  # no token configured: nothing proves the credentials
        (takeover_config(), "another-token", 401),  # not the stream's token: not even authorized
    ],
    ids=["takeover-off", "no-token-configured", "wrong-token"],
)
async def test_no_takeover_without_the_same_credentials(gateway_factory, config, second_token, status) -> None:
    gateway = gateway_factory(config)
    clients: list = []
    try:
        first_token = TOKEN if "streams" in config else None
        first = await publish(gateway, clients, token=first_token)
        viewer, _ = await play(gateway, clients)
        await viewer.wait_frames(10, timeout=20)
        intruder = WhipPublisher(gateway.base_url, STREAM, token=second_token)
        clients.append(intruder)
        await intruder.start(expect_status=status)
        frames = viewer.frames
        await viewer.wait_frames(frames + 15, timeout=10)  # the first publisher still plays
        assert first.connection_state == "connected"
        assert await gauges(gateway) == (1.0, 1.0)
    finally:
        await stop_all(clients)
