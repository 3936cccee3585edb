"""Relay mode (cluster.viewer_mode = "relay"): an edge node pulls a stream once from its origin and fans it out.

Real components: a redis-server on a free port, two gateway processes sharing it (origin A, edge C in relay
mode), aiortc publishers and viewers over loopback ICE/DTLS/SRTP, frames decoded and counted at the viewers.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from urllib.parse import urljoin

import httpx

from clients import WhepViewer, find_stream, loopback_only
import pytest

from conftest import ROOT, deep_merge
from gateway.config import ConfigError, parse_config
from gateway.relay import relay_offer_media, relay_plan
from gateway.sdp import EXT_MID, EXT_RID, Codec, parse_offer, write_answer, write_offer
from gateway.sfu.published_track import PublishedTrack
from gateway.sfu.stream import Stream
from test_cluster import wait_until
from test_media import STREAM, start_publisher, stop_all
from test_registry import RedisServer  # noqa: F401  (the redis_server fixture comes with it)
from test_registry import redis_server  # noqa: F401
from simulcast_publisher import SimulcastPublisher
from test_whep_extensions import LAYER_REL, SSE_REL, links
from whep.offer_answer import negotiate_play

TTL = 2.0
GRACE = 1.0


def origin_config(redis_url: str) -> dict:
    return {"cluster": {"registry": redis_url, "node_id": "origin", "ttl": TTL}}


def edge_config(redis_url: str, **extra) -> dict:
    return {"cluster": {"registry": redis_url, "node_id": "edge", "ttl": TTL, "viewer_mode": "relay", "relay_grace": GRACE, **extra}}


async def viewer_count(base_url: str) -> int | None:
    entry = await find_stream(base_url, STREAM)
    return None if entry is None else entry["viewers"]


# ---- configuration ------------------------------------------------------------------------------------------
def test_relay_configuration_keys() -> None:
    config = parse_config({"cluster": {"viewer_mode": "relay", "relay_grace": 2, "relay_token": "edge-secret"}})
    assert (config.cluster.viewer_mode, config.cluster.relay_grace, config.cluster.relay_token) == ("relay", 2.0, "edge-secret")
    defaults = parse_config({}).cluster
    assert (defaults.viewer_mode, defaults.relay_grace, defaults.relay_token) == ("redirect", 5.0, None)
    for bad, key in (
        ({"viewer_mode": "proxy"}, "cluster.viewer_mode"),
        ({"relay_grace": 0}, "cluster.relay_grace"),
        ({"relay_token": "no spaces allowed"}, "cluster.relay_token"),
    ):
        with pytest.raises(ConfigError) as error:
            parse_config({"cluster": bad})
        assert error.value.key == key
    documented = (ROOT / "config.toml").read_text()
    assert all(f"\n{key} =" in documented for key in ("viewer_mode", "relay_grace", "relay_token"))


# ---- the offer an edge writes, and what an origin answers to it ----------------------------------------------
FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)


def relay_offer_text(rids: list[str]) -> str:
    return write_offer(
        relay_offer_media(rids),
        ice_ufrag="edgeufrag",
        ice_pwd="edgepassword0123456789ab",
        fingerprint=FINGERPRINT,
        candidates=["candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"],
        address="127.0.0.1",
        port=40000,
    )


def test_relay_offer_parses_back_as_a_simulcast_receive_offer() -> None:
    offer = parse_offer(relay_offer_text(["q", "h", "f"]))
    assert offer.setup == "actpass"  # RFC 8842 §5.2
    assert offer.bundle == ["0", "1"]
    assert offer.ice_ufrag == "edgeufrag" and offer.fingerprints == [("sha-256", FINGERPRINT.split()[1])]
    assert offer.candidates == ["candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"] and offer.end_of_candidates
    audio, video = offer.media
    assert (audio.kind, audio.direction, [c.name for c in audio.codecs]) == ("audio", "recvonly", ["OPUS"])
    assert video.kind == "video" and video.direction == "recvonly" and video.rtcp_mux
    assert {c.name for c in video.codecs} == {"VP8", "VP9", "H264", "AV1"}
    assert all("nack pli" in c.feedback for c in video.codecs)
    assert video.rids == [("q", "recv"), ("h", "recv"), ("f", "recv")]
    assert video.simulcast == "recv q;h;f"
    assert video.extensions[EXT_MID] == audio.extensions[EXT_MID] == 1 and EXT_RID in video.extensions
    plain = parse_offer(relay_offer_text([]))
    assert plain.media[1].rids == [] and plain.media[1].simulcast is None


def simulcast_stream(rids: list[str]) -> Stream:
    track = PublishedTrack(
        kind="video", mid="1", codec=Codec(96, "VP8", 90000, None, {}, ["nack", "nack pli"]), rtx_payload_type=97,
        extensions={EXT_MID: 4, EXT_RID: 5}, feedback=["nack", "nack pli"], rids=rids, history_size=64,
        keyframe_interval=0.5, local_ssrc=1, send_rtcp=lambda data: len(data),
    )
    stream = Stream("s")
    stream.publisher = SimpleNamespace(tracks={"1": track})  # type: ignore[assignment]
    return stream


def test_origin_answers_every_layer_and_the_edge_plans_them_as_a_publishers_layers() -> None:
    stream = simulcast_stream(["q", "h", "f"])
    offer = parse_offer(relay_offer_text(["f", "h", "q", "x"]))  # x: a layer the origin does not have
    plan = negotiate_play(offer, stream, "cname")
    assert [p.rid for p in plan.down_tracks] == ["f", "h", "q"]
    assert len({p.ssrc for p in plan.down_tracks}) == 3 and all(p.rtx_ssrc is None for p in plan.down_tracks)
    rid_id = offer.media[1].extensions[EXT_RID]
    assert [p.profile.rid for p in plan.down_tracks] == [(rid_id, b"f"), (rid_id, b"h"), (rid_id, b"q")]
    answer_text = write_answer(
        offer, plan.answer_media, ice_ufrag="u" * 8, ice_pwd="p" * 24, fingerprint=FINGERPRINT, setup="passive",
        candidates=["candidate:2 1 udp 2130706431 127.0.0.1 40001 typ host"], address="127.0.0.1", port=40001,
    )
    assert "a=simulcast:send f;h;q\r\n" in answer_text and "a=rid:f send\r\n" in answer_text
    assert "a=rid:x" not in answer_text and f"a=extmap:{rid_id} {EXT_RID}" in answer_text
    edge_plan = relay_plan(parse_offer(answer_text))
    [video] = edge_plan.tracks  # the stream has no audio: the origin answered that section inactive
    assert (video.kind, video.mid, video.codec.name, video.codec.payload_type) == ("video", "1", "VP8", 96)
    assert video.rids == ["f", "h", "q"] and video.extensions[EXT_RID] == rid_id
    assert "nack pli" in video.feedback
    # A normal viewer's offer is answered as before: one DownTrack that switches layers.
    normal = parse_offer(relay_offer_text([]))
    [down] = negotiate_play(normal, stream, "cname").down_tracks
    assert down.rid is None and down.profile.rid is None
    # A simulcast receive offer for a plain stream gets the plain answer, and the edge plans a plain track.
    plain_plan = negotiate_play(offer, simulcast_stream([]), "cname")
    assert [p.rid for p in plain_plan.down_tracks] == [None] and not any("simulcast" in l for m in plain_plan.answer_media for l in m.extra_lines)
    # Rids that are not RFC 8851 rid-ids are not written into a=simulcast.
    assert parse_offer(relay_offer_text(["a;b", "c"])).media[1].simulcast is None


# ---- two gateways: origin A, edge C in relay mode ------------------------------------------------------------
async def read_until(http: httpx.AsyncClient, url: str, wanted: str, timeout: float) -> list[str]:
    names: list[str] = []
    async with asyncio.timeout(timeout):
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    names.append(line[len("event: ") :])
                    if names[-1] == wanted:
                        return names
    return names


async def test_edge_pulls_once_for_many_viewers_ends_after_grace_and_follows_the_origin(gateway_factory, redis_server) -> None:
    a = gateway_factory(origin_config(redis_server.url))
    c = gateway_factory(edge_config(redis_server.url))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    try:
        with loopback_only():
            pub = await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            # Three viewers POST to the edge at once: they share ONE pull, i.e. one WHEP session on the origin.
            viewers = [WhepViewer(c.base_url, STREAM) for _ in range(3)]
            clients.extend(viewers)
            await asyncio.gather(*(v.start() for v in viewers))
            for v in viewers:
                assert v.location.startswith(c.url(f"/whep/{STREAM}/")), v.location  # served here, not redirected
            for v in viewers:
                await v.wait_frames(30, timeout=20)
                assert set(v.resolutions) == {(640, 480)}, v.resolutions
                await v.wait_audio(20, timeout=10)
            assert await viewer_count(a.base_url) == 1, await find_stream(a.base_url, STREAM)
            assert await viewer_count(c.base_url) == 3
            numbers = viewers[0].numbered_frames
            assert numbers and all(x < y for x, y in zip(numbers, numbers[1:]))
            assert 0 <= pub.frames_sent - numbers[-1] < 60
            # The edge claimed nothing: a second publisher on the edge is refused (the key is live), and the
            # registry still names the origin.
            entry = (await http.get(a.url("/api/streams"))).json()
            assert entry and entry[0]["stream"] == STREAM

            # The viewers leave; within the grace the pull stays, after it the origin's session is gone.
            await stop_all(viewers)
            for v in viewers:
                clients.remove(v)

            async def origin_released() -> bool:
                return await viewer_count(a.base_url) == 0

            left = time.monotonic()
            await wait_until(origin_released, GRACE + 8, "the edge's pull outlived its grace")
            waited = time.monotonic() - left
            assert waited >= GRACE * 0.8, f"the pull ended {waited:.1f} s after the last viewer (grace {GRACE} s)"
            assert await find_stream(c.base_url, STREAM) is None

            # A new viewer starts a new pull; the publisher leaving ends it with `inactive`.
            viewer = WhepViewer(c.base_url, STREAM)
            clients.append(viewer)
            await viewer.start()
            await viewer.wait_frames(20, timeout=20)
            assert await viewer_count(a.base_url) == 1
            sse = await http.post(links(viewer.response)[SSE_REL], content=b'["active", "inactive"]')
            assert sse.status_code == 201
            events_url = urljoin(links(viewer.response)[SSE_REL], sse.headers["location"])
            reader = asyncio.create_task(read_until(http, events_url, "inactive", 20))
            await asyncio.sleep(0.3)
            await pub.stop(delete=True)
            names = await reader
            assert names[-1] == "inactive", names
            await wait_until(lambda: _gone(c.base_url), 10, "the edge kept the stream after the origin ended it")
            assert (await http.delete(viewer.location)).status_code == 404  # the edge ended the viewer
    finally:
        await http.aclose()
        await stop_all(clients)
    assert a.codec_violations() == "" and c.codec_violations() == ""


async def _gone(base_url: str) -> bool:
    return await find_stream(base_url, STREAM) is None


async def recent_sizes(viewer: WhepViewer, size: tuple[int, int], frames: int, timeout: float) -> bool:
    """Wait until the viewer's last `frames` decoded pictures all have this size."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = viewer.frame_sizes[-frames:]
        if len(recent) == frames and set(recent) == {size}:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_every_simulcast_layer_crosses_the_relay_and_edge_viewers_pick_their_own(gateway_factory, redis_server) -> None:
    a = gateway_factory(origin_config(redis_server.url))
    c = gateway_factory(edge_config(redis_server.url))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    pub = SimulcastPublisher(a.base_url, STREAM, fps=15)
    try:
        with loopback_only():
            await pub.start()

            async def three_layers_live() -> bool:
                entry = await find_stream(a.base_url, STREAM)
                layers = entry["tracks"][0]["layers"] if entry and entry["tracks"] else []
                return len(layers) == 3 and all(layer["active"] and layer["width"] for layer in layers)

            await wait_until(three_layers_live, 15, "the publisher's three layers never went live on the origin")
            sizes = {layer.rid: layer.size for layer in pub.layers}
            viewers = {rid: WhepViewer(c.base_url, STREAM, audio=False) for rid in ("q", "h", "f", "auto")}
            clients.extend(viewers.values())
            await asyncio.gather(*(v.start() for v in viewers.values()))
            for rid, viewer in viewers.items():
                if rid != "auto":
                    pinned = await http.post(links(viewer.response)[LAYER_REL], json={"rid": rid})
                    assert pinned.status_code == 200, pinned.text
            for rid in ("q", "h", "f"):
                assert await recent_sizes(viewers[rid], sizes[rid], 10, 20), (rid, viewers[rid].resolutions)
            await viewers["auto"].wait_frames(20, timeout=15)
            assert set(viewers["auto"].resolutions) <= set(sizes.values())
            numbers = viewers["f"].numbered_frames
            assert numbers and all(x < y for x, y in zip(numbers, numbers[1:])), numbers[-20:]
            # One WHEP session on the origin for the four edge viewers; the edge sees all three layers.
            assert await viewer_count(a.base_url) == 1
            assert await viewer_count(c.base_url) == 4
            edge_layers = (await find_stream(c.base_url, STREAM))["tracks"][0]["layers"]
            assert sorted((l["rid"], l["width"], l["height"]) for l in edge_layers) == sorted(
                (rid, w, h) for rid, (w, h) in sizes.items()
            ), edge_layers
            # A late edge viewer pinned to the middle layer needs a fresh keyframe: the edge's PLI on that layer's
            # SSRC reaches the origin, which asks the publisher (its encoder makes keyframes only on request).
            await asyncio.sleep(1.5)  # older than any keyframe the edge may replay
            before = {layer.rid: layer.keyframe_requests for layer in pub.layers}
            late = WhepViewer(c.base_url, STREAM, audio=False)
            clients.append(late)
            await late.start()
            assert (await http.post(links(late.response)[LAYER_REL], json={"rid": "h"})).status_code == 200
            assert await recent_sizes(late, sizes["h"], 5, 20), late.resolutions
            after = {layer.rid: layer.keyframe_requests for layer in pub.layers}
            assert after["h"] > before["h"], (before, after)
            assert await viewer_count(a.base_url) == 1
    finally:
        await http.aclose()
        await stop_all(clients)
        await pub.stop()
    assert a.codec_violations() == "" and c.codec_violations() == ""


async def test_edge_authenticates_with_its_relay_token_and_ends_its_viewers_when_the_origin_dies(gateway_factory, redis_server) -> None:
    # The origin lets WHEP clients in with "edge-secret" only; the edge's own viewers use their own token.
    a = gateway_factory(deep_merge(origin_config(redis_server.url), {"streams": {STREAM: {"play_token": "edge-secret"}}}))
    c = gateway_factory(deep_merge(edge_config(redis_server.url, relay_token="edge-secret"),
                                   {"streams": {STREAM: {"play_token": "viewer-token"}}}))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    try:
        with loopback_only():
            await start_publisher(a, clients, video_codec="VP8", width=320, height=240, fps=30)
            refused = WhepViewer(c.base_url, STREAM, token="edge-secret")  # the edge checks its own viewers
            clients.append(refused)
            assert (await refused.start(expect_status=401)).status_code == 401
            viewer = WhepViewer(c.base_url, STREAM, token="viewer-token")
            clients.append(viewer)
            await viewer.start()
            await viewer.wait_frames(20, timeout=20)
            assert set(viewer.resolutions) == {(320, 240)}
            assert await viewer_count(a.base_url) == 1
            sse = await http.post(links(viewer.response)[SSE_REL], content=b'["inactive"]',
                                  headers={"Authorization": "Bearer viewer-token"})
            assert sse.status_code == 201, sse.text
            events_url = urljoin(links(viewer.response)[SSE_REL], sse.headers["location"])
            reader = asyncio.create_task(read_until(http, events_url, "inactive", 30))
            await asyncio.sleep(0.3)
            a.proc.kill()  # no DTLS close, no DELETE: the edge finds out through consent (RFC 7675) and silence
            a.proc.wait(5)
            killed = time.monotonic()
            assert (await reader)[-1] == "inactive"
            print(f"\nedge viewer ended {time.monotonic() - killed:.1f} s after the origin died")
            await wait_until(lambda: _gone(c.base_url), 10, "the edge kept a stream whose origin died")
    finally:
        await http.aclose()
        await stop_all(clients)


def test_link_with_rel_finds_the_events_link_in_any_parameter_order() -> None:
    from gateway.relay import SSE_REL, link_with_rel

    headers = [
        '<stun:127.0.0.1:3478>; rel="ice-server"',
        '</whep/s/1/sse>; events="active,inactive"; rel="urn:ietf:params:whep:ext:core:server-sent-events", '
        '</whep/s/1/layer>; rel="urn:ietf:params:whep:ext:core:layer"',
    ]
    assert link_with_rel(headers, SSE_REL) == "/whep/s/1/sse"
    assert link_with_rel(headers, "urn:ietf:params:whep:ext:core:layer") == "/whep/s/1/layer"
    assert link_with_rel(headers[:1], SSE_REL) is None


async def test_edge_viewers_wait_through_an_origin_publisher_gap_and_resume(gateway_factory, redis_server) -> None:
    """The origin's publisher leaves and a new one publishes the key within the origin's publisher_grace: the
    origin keeps the edge's pull and moves it to the new publisher; the edge passes the origin's `inactive` and
    `active` events on, and its viewer stays connected and decodes the new publisher's frames."""
    a = gateway_factory(deep_merge(origin_config(redis_server.url), {"whep": {"publisher_grace": 15}}))
    c = gateway_factory(edge_config(redis_server.url, relay_grace=5.0))
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    try:
        with loopback_only():
            first = await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            viewer = WhepViewer(c.base_url, STREAM)
            clients.append(viewer)
            await viewer.start()
            await viewer.wait_frames(30, timeout=20)
            sse = await http.post(links(viewer.response)[SSE_REL], content=b'["active", "inactive"]')
            assert sse.status_code == 201
            events_url = urljoin(links(viewer.response)[SSE_REL], sse.headers["location"])
            gone = asyncio.create_task(read_until(http, events_url, "inactive", 20))
            await asyncio.sleep(0.3)
            await first.stop(delete=True)
            clients.remove(first)
            assert (await gone)[-1] == "inactive"
            decoded_before = viewer.frames
            await asyncio.sleep(1.0)
            assert viewer.frames - decoded_before < 5  # nothing to decode meanwhile
            back = asyncio.create_task(read_until(http, events_url, "active", 30))
            await asyncio.sleep(0.3)
            second = await start_publisher(a, clients, video_codec="VP8", width=640, height=480, fps=30)
            assert (await back)[-1] == "active"
            await viewer.wait_frames(decoded_before + 30, timeout=20)
            tail = viewer.numbered_frames[-20:]
            assert tail and all(x < y for x, y in zip(tail, tail[1:])), tail
            assert 0 <= second.frames_sent - tail[-1] < 60, (second.frames_sent, tail[-1])  # the new publisher's
            assert await viewer_count(a.base_url) == 1  # still the one pull
            assert (await http.delete(viewer.location)).status_code == 200  # the same session all along
            clients.remove(viewer)
    finally:
        await http.aclose()
        await stop_all(clients)
    assert a.codec_violations() == "" and c.codec_violations() == ""
