"""End-to-end media through a real gateway process: aiortc publishers encode, aiortc viewers decode.

The gateway runs under tests/guarded_gateway.py, where building any decoder or encoder raises and is logged,
so viewers that decode the publisher's numbered pictures while `codec_violations()` stays empty show the
gateway forwarded RTP without transcoding.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.clients import (
    WhepViewer,
    WhipPublisher,
    decode_failures,
    find_stream,
    get_metric,
    get_streams,
    http_client,
    loopback_only,
    wait_for,
    wait_stream,
)

STREAM = "live"
FORWARDED = "whipgate_rtp_packets_forwarded_total"
SESSIONS = "whipgate_sessions"


@pytest.fixture(autouse=True)
def _loopback_candidates():
    with loopback_only():
        yield


@pytest.fixture
def decode_errors():
    """aiortc's "failed to decode" warnings from this test's viewers; tests check it stays empty."""
    with decode_failures() as found:
        yield found


def assert_decoded_cleanly(found: list[str]) -> None:
    assert not found, (
        f"{len(found)} frames failed to decode at the viewers (undecodable data forwarded), first: {found[:3]}"
    )


@pytest.fixture(autouse=True)
def _gateway_log_on_teardown(gateway):
    """Print the end of the gateway's log at teardown (pytest shows it for failing tests)."""
    yield
    print(f"--- gateway log (last 6000 chars) ---\n{gateway.log()[-6000:]}")


async def stop_all(clients: list) -> None:
    for c in reversed(clients):
        if c is not None:
            try:
                await c.stop(delete=True)
            except Exception as exc:  # teardown must reach every client
                print(f"teardown of {type(c).__name__}: {exc!r}")


async def start_publisher(gateway, clients: list, **kwargs: Any) -> WhipPublisher:
    pub = WhipPublisher(gateway.base_url, STREAM, **kwargs)
    clients.append(pub)  # registered before start() so teardown closes it even if start() fails
    await pub.start()
    assert pub.location and pub.location.startswith(gateway.url(f"/whip/{STREAM}/")), pub.location
    assert pub.etag, "201 without ETag"
    assert pub.foreign_candidates == [], f"gateway offered non-loopback candidates: {pub.foreign_candidates}"
    await pub.wait_connected(10)
    await wait_stream(gateway.base_url, STREAM, lambda e: bool(e and e.get("publisher")), 10)
    return pub


async def start_viewer(gateway, clients: list) -> WhepViewer:
    viewer = WhepViewer(gateway.base_url, STREAM)
    clients.append(viewer)
    await viewer.start()
    assert viewer.location and viewer.location.startswith(gateway.url(f"/whep/{STREAM}/")), viewer.location
    assert viewer.foreign_candidates == [], viewer.foreign_candidates
    return viewer


def assert_live_numbered_frames(viewer: WhepViewer, pub: WhipPublisher, size: tuple[int, int]) -> None:
    """The decoded pictures are the publisher's: right size, frame numbers readable, in order, recent."""
    assert set(viewer.resolutions) == {size}, f"decoded sizes: {viewer.resolutions}"
    numbers = viewer.numbered_frames
    assert len(numbers) >= 0.9 * viewer.frames, (
        f"only {len(numbers)}/{viewer.frames} decoded frames carry a readable frame number"
    )
    assert all(a < b for a, b in zip(numbers, numbers[1:])), f"frame numbers out of order: {numbers}"
    lag = pub.frames_sent - numbers[-1]
    assert 0 <= lag < 45, f"viewer is {lag} frames behind the publisher (latest sent {pub.frames_sent})"


async def session_gauges(gateway) -> tuple[float, float]:
    return (
        await get_metric(gateway.base_url, SESSIONS, 'kind="publisher"'),
        await get_metric(gateway.base_url, SESSIONS, 'kind="viewer"'),
    )


async def wait_gauges(gateway, publishers: float, viewers: float, timeout: float) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while True:
        gauges = await session_gauges(gateway)
        if gauges == (publishers, viewers) or time.monotonic() >= deadline:
            return gauges
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------------ (a) (b)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_publisher_to_two_viewers(gateway, decode_errors, codec: str) -> None:
    video_before = await get_metric(gateway.base_url, FORWARDED, 'kind="video"')
    audio_before = await get_metric(gateway.base_url, FORWARDED, 'kind="audio"')
    clients: list = []
    try:
        pub = await start_publisher(gateway, clients, video_codec=codec, width=640, height=480, fps=30)
        viewers = [await start_viewer(gateway, clients), await start_viewer(gateway, clients)]
        t0 = time.monotonic()
        await asyncio.gather(*(v.wait_frames(60, timeout=20) for v in viewers))
        took = time.monotonic() - t0
        await asyncio.gather(*(v.wait_audio(50, timeout=10) for v in viewers))

        for i, v in enumerate(viewers):
            print(
                f"{codec} viewer {i}: {v.frames} frames {dict(v.resolutions)}, first frame after "
                f"{v.time_to_first_frame:.2f}s, {v.fps():.1f} fps, audio frames {v.audio_frames} "
                f"(rms {v.audio_peak_rms:.3f})"
            )
            assert_live_numbered_frames(v, pub, (640, 480))
            assert v.audio_peak_rms > 0.02, f"audio decoded as silence (rms {v.audio_peak_rms})"
        print(f"{codec}: both viewers had 60 frames {took:.2f}s after joining")

        entry = await find_stream(gateway.base_url, STREAM)
        assert entry is not None and entry["publisher"] is True and entry["viewers"] == 2, entry
        kinds = {t["kind"]: t for t in entry["tracks"]}
        assert kinds["video"]["codec"].upper().replace(".", "") == codec, entry
        assert kinds["audio"]["codec"].lower() == "opus", entry
        assert await session_gauges(gateway) == (1.0, 2.0)

        # Each viewer's layer, reason and bandwidth estimate: over HTTP and, aggregated, in /metrics.
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{gateway.base_url}/api/streams/{STREAM}/viewers")).json()
            exposition = (await http.get(f"{gateway.base_url}/metrics")).text
        assert len(listed) == 2 and all(v["kind"] == "viewer" and v["connected"] for v in listed), listed
        for v in listed:
            video_stats = next(t for t in v["tracks"] if t["kind"] == "video")
            assert video_stats["packets_sent"] > 0 and video_stats["reason"], video_stats
            assert video_stats["estimate_bps"] > 0, video_stats
        # C lanes (gateway/_srtp_send.c): these viewers' Opus and video tracks (H.264 as it is, VP8 with its
        # picture ids continued in C) are forwarded by lanes. A lane that hands a packet back (NACK, lease) is
        # armed again by the next packet: poll briefly.
        want = {"audio": True, "video": True}
        lanes: list = []
        async with httpx.AsyncClient() as http:
            for _ in range(20):
                listed_now = (await http.get(f"{gateway.base_url}/api/streams/{STREAM}/viewers")).json()
                lanes = [{t["kind"]: t["lane"] for t in v["tracks"]} for v in listed_now]
                if lanes == [want, want]:
                    break
                await asyncio.sleep(0.05)
        assert lanes == [want, want], lanes
        assert "whipgate_viewer_estimate_bits_per_second_count 2.0" in exposition
        assert 'whipgate_viewers_by_layer{cause="highest active layer",layer="0"} 2.0' in exposition, [
            line for line in exposition.splitlines() if "by_layer" in line]

        video_after = await get_metric(gateway.base_url, FORWARDED, 'kind="video"')
        audio_after = await get_metric(gateway.base_url, FORWARDED, 'kind="audio"')
        # two viewers x >= 60 frames: at least one forwarded packet per decoded frame per viewer
        assert video_after - video_before >= 120, (video_before, video_after)
        assert audio_after - audio_before >= 100, (audio_before, audio_after)
        print(f"{codec}: forwarded video packets +{video_after - video_before:.0f}, "
              f"audio +{audio_after - audio_before:.0f}")
    finally:
        await stop_all(clients)
    assert_decoded_cleanly(decode_errors)
    assert gateway.codec_violations() == "", gateway.codec_violations()


# ------------------------------------------------------------------------------------------------ (c)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@pytest.mark.parametrize("join_after", [3.0, 10.0])
async def test_late_viewer_gets_a_picture_quickly(gateway, decode_errors, join_after: float, codec: str) -> None:
    """aiortc's publisher sends one keyframe at start and more only when asked (PLI/FIR), so a viewer
    joining later decodes nothing until the gateway gets it a keyframe: by replaying what it holds since the
    last keyframe, or by asking the publisher. After 10 s the run since the keyframe is long, which pushes a
    replaying gateway to ask the publisher instead."""
    clients: list = []
    try:
        pub = await start_publisher(gateway, clients, video_codec=codec)
        await asyncio.sleep(join_after)  # the publisher's only keyframe is long gone
        sent_at_join = pub.frames_sent
        assert sent_at_join >= 25 * join_after, f"publisher sent only {sent_at_join} frames in {join_after} s"
        viewer = await start_viewer(gateway, clients)
        await viewer.wait_frames(1, timeout=10)
        ttff = viewer.time_to_first_frame
        first = viewer.frame_numbers[0]
        first_age = (sent_at_join - first) / 30 if first is not None else float("nan")
        print(
            f"{codec} late viewer (joined after {join_after:.0f}s): first decoded frame {ttff:.3f}s after starting its "
            f"WHEP request (connected after {(viewer.connected_at or viewer.started_at) - viewer.started_at:.3f}s); "
            f"first frame number {first}, publisher had sent {sent_at_join} at join "
            f"(first picture {first_age:+.2f}s old at join)"
        )
        assert ttff < 3.0, f"first frame took {ttff:.2f}s"
        await viewer.wait_frames(30, timeout=10)
        assert_decoded_cleanly(decode_errors)  # e.g. a join that starts mid-keyframe
        # whatever the gateway started with, the viewer must be watching live pictures soon after
        t_live = time.monotonic()
        live = await wait_for(lambda: viewer.numbered_frames and pub.frames_sent - viewer.numbered_frames[-1] < 45, 5)
        print(f"late viewer live (< 1.5 s behind) {time.monotonic() - viewer.started_at:.2f}s after joining; "
              f"{viewer.frames} frames decoded")
        assert live, (f"viewer still {pub.frames_sent - viewer.numbered_frames[-1]} frames behind "
                      f"{time.monotonic() - t_live:.1f}s after its 30th frame")
        assert_live_numbered_frames(viewer, pub, (640, 480))
    finally:
        await stop_all(clients)
    assert_decoded_cleanly(decode_errors)
    assert gateway.codec_violations() == "", gateway.codec_violations()


# ------------------------------------------------------------------------------------------------ (d)


async def test_publisher_delete_ends_viewers_media(gateway, decode_errors) -> None:
    clients: list = []
    try:
        pub = await start_publisher(gateway, clients, video_codec="VP8")
        viewers = [await start_viewer(gateway, clients), await start_viewer(gateway, clients)]
        await asyncio.gather(*(v.wait_frames(30, timeout=20) for v in viewers))
        assert await session_gauges(gateway) == (1.0, 2.0)

        # DELETE over HTTP while the publisher's peer connection keeps sending: only the gateway can stop
        # the media now.
        resp = await pub.delete()
        assert resp.status_code == 200, (resp.status_code, resp.text)
        t_delete = time.monotonic()
        for i, v in enumerate(viewers):
            how = await v.wait_media_end(timeout=5, quiet=1.5)
            print(f"viewer {i}: media ended ({how}) {time.monotonic() - t_delete:.2f}s after DELETE; "
                  f"states {v.connection_states}")
        frames_after = [v.frames for v in viewers]
        forwarded = await get_metric(gateway.base_url, FORWARDED)
        await asyncio.sleep(1.5)
        print(f"publisher pc after its DELETE: {pub.connection_states}")
        assert [v.frames for v in viewers] == frames_after, "frames still arrive after the publisher's DELETE"
        assert await get_metric(gateway.base_url, FORWARDED) == forwarded, "gateway still forwards"

        assert await find_stream(gateway.base_url, STREAM) is None, await get_streams(gateway.base_url)
        publishers, _ = await session_gauges(gateway)
        assert publishers == 0.0
        async with http_client() as c:
            again = await c.delete(pub.location)
        assert again.status_code == 404, "a deleted publisher session must be gone"

        for v in viewers:
            r = await v.delete()
            # 404 is fine when the gateway already ended the viewer sessions along with the publisher's
            assert r.status_code in (200, 404), (r.status_code, r.text)
            print(f"viewer DELETE after publisher DELETE: {r.status_code}")
        assert await wait_gauges(gateway, 0.0, 0.0, timeout=2) == (0.0, 0.0)
        assert await find_stream(gateway.base_url, STREAM) is None
    finally:
        await stop_all(clients)
    assert_decoded_cleanly(decode_errors)
    assert gateway.codec_violations() == "", gateway.codec_violations()


# ------------------------------------------------------------------------------------------------ (e)


@pytest.mark.parametrize("how", ["close", "vanish"])
async def test_vanished_publisher_is_cleaned_up(gateway, decode_errors, how: str) -> None:
    """`close`: the publisher's peer connection is closed (aiortc sends a DTLS close_notify) but no DELETE.
    `vanish`: its ICE sockets close first, so nothing at all reaches the gateway: only consent freshness
    (test config: 0.5 s interval, 4 failures) can notice."""
    clients: list = []
    try:
        pub = await start_publisher(gateway, clients, video_codec="VP8")
        viewer = await start_viewer(gateway, clients)
        await viewer.wait_frames(30, timeout=20)
        assert await session_gauges(gateway) == (1.0, 1.0)

        t0 = time.monotonic()
        if how == "close":
            await pub.stop(delete=False)
        else:
            await pub.vanish()
        gone = False
        deadline = t0 + 10
        while time.monotonic() < deadline:
            gone = await find_stream(gateway.base_url, STREAM) is None and await session_gauges(gateway) == (0, 0)
            if gone:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - t0
        streams = await get_streams(gateway.base_url)
        gauges = await session_gauges(gateway)
        print(f"publisher {how}: cleaned up after {took:.2f}s (streams {streams}, gauges {gauges}); "
              f"viewer states {viewer.connection_states}, ended {sorted(viewer.ended)}")
        assert gone, f"after {took:.1f}s: /api/streams {streams}, session gauges {gauges}\n{gateway.log()[-3000:]}"

        r = await viewer.delete()
        assert r.status_code == 404, f"viewer session should have been ended by the gateway: {r.status_code}"
        async with http_client() as c:
            r = await c.delete(pub.location)
        assert r.status_code == 404, f"vanished publisher's session still exists: {r.status_code}"
        await viewer.wait_media_end(timeout=5, quiet=1.0)
    finally:
        await stop_all(clients)
    assert_decoded_cleanly(decode_errors)
    assert gateway.codec_violations() == "", gateway.codec_violations()
