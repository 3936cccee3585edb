"""Worker processes (`http.workers`, issue #6): a front process and N workers, each owning its own viewers.

Real components: `whipgate serve` with workers = 2 (a front process and two worker processes, all under the codec
guard), aiortc publishers and viewers over loopback ICE/DTLS/SRTP talking HTTP to the front only, frames decoded
and counted at the viewers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from urllib.parse import urljoin

import httpx
import pytest

from clients import WhepViewer, WhipPublisher, find_stream, loopback_only, wait_stream
from conftest import deep_merge
from test_cluster import wait_until
from gateway.config import ConfigError, parse_config
from gateway.front import label_samples
from gateway.workers import owner_worker, worker_count, worker_of_session
from test_media import STREAM, start_publisher, stop_all
from test_protocol import recvonly_offer, sendonly_offer
from test_registry import RedisServer  # noqa: F401  (the redis_server fixture comes with it)
from test_registry import redis_server  # noqa: F401
from simulcast_publisher import SimulcastPublisher
from test_relay import read_until, recent_sizes
from test_whep_extensions import LAYER_REL, SSE_REL, links

WORKERS = {"http": {"workers": 2}}
STARTUP = 60.0  # seconds: three processes import the gateway on a shared, loaded machine


# ---- configuration and the routing rules ---------------------------------------------------------------------
def test_workers_configuration() -> None:
    assert parse_config({}).http.workers == 0  # one worker per core (issue #6)
    assert parse_config({"http": {"workers": 1}}).http.workers == 1
    assert parse_config({"http": {"workers": 0}}).http.workers == 0
    assert parse_config({"http": {"workers": 4}}).http.workers == 4
    assert worker_count(parse_config({"http": {"workers": 3}})) == 3
    assert worker_count(parse_config({"http": {"workers": 0}})) == len(os.sched_getaffinity(0))
    for bad, problem in ((-1, "between 0 and 256"), (257, "between 0 and 256"), ("2", "must be an integer"),
                         (True, "must be an integer"), (1.5, "must be an integer")):
        with pytest.raises(ConfigError) as error:
            parse_config({"http": {"workers": bad}})
        assert error.value.key == "http.workers" and problem in str(error.value), str(error.value)


def test_stream_owner_and_session_worker_rules() -> None:
    owners = {owner_worker(f"stream{i}", 4) for i in range(64)}
    assert owners == {0, 1, 2, 3}  # keys spread over every worker
    assert owner_worker("live", 4) == owner_worker("live", 4)  # stable (CRC-32, not the salted hash())
    assert worker_of_session("w1.AbCd-_x", 2) == 1
    assert worker_of_session("w7.AbCd", 2) is None  # no such worker
    assert worker_of_session("AbCd", 2) is None  # a single process's id


def test_metrics_of_each_worker_get_its_label() -> None:
    text = '# HELP m A metric\n# TYPE m gauge\nm{kind="viewer"} 2.0\nm 1.0\n'
    [(name, (comments, samples))] = label_samples(text, 3).items()
    assert name == "m" and comments == ["# HELP m A metric", "# TYPE m gauge"]
    assert samples == ['m{worker="3",kind="viewer"} 2.0', 'm{worker="3"} 1.0']


# ---- a front and two workers ---------------------------------------------------------------------------------
def worker_pids(gateway) -> list[int]:
    return [w["pid"] for w in httpx.get(gateway.url("/api/workers"), timeout=5).json()]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


async def test_viewers_spread_over_workers_and_the_stream_crosses_once_per_worker(gateway_factory) -> None:
    gw = gateway_factory(WORKERS, startup_timeout=STARTUP)
    workers = httpx.get(gw.url("/api/workers"), timeout=5).json()
    assert [w["worker"] for w in workers] == [0, 1] and all(w["alive"] for w in workers), workers
    owner = owner_worker(STREAM, 2)
    other = 1 - owner
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    try:
        with loopback_only():
            # No publisher yet: each worker (round robin) answers 409 + Retry-After through the front.
            offer = (await recvonly_offer()).encode()
            for _ in range(2):
                early = await http.post(gw.url(f"/whep/{STREAM}"), content=offer, headers={"Content-Type": "application/sdp"})
                assert early.status_code == 409 and early.headers.get("retry-after") == "5", (early.status_code, early.text)
                assert early.headers.get("access-control-allow-origin") == "*"

            pub = await start_publisher(gw, clients, video_codec="VP8", width=320, height=240, fps=30)
            assert pub.location.startswith(gw.url(f"/whip/{STREAM}/w{owner}.")), pub.location  # the owner holds it
            second = await http.post(gw.url(f"/whip/{STREAM}"), content=(await sendonly_offer()).encode(),
                                     headers={"Content-Type": "application/sdp"})
            assert second.status_code == 409, second.text  # the owner worker has the publisher

            # Four viewers POST to the front one after the other: round robin puts two on each worker.
            viewers = []
            for _ in range(4):
                viewer = WhepViewer(gw.base_url, STREAM)
                clients.append(viewer)
                await viewer.start()
                assert viewer.location.startswith(gw.url(f"/whep/{STREAM}/")), viewer.location  # the front's URL
                viewers.append(viewer)
            landed = sorted(int(v.location.rsplit("/", 1)[1].split(".", 1)[0][1:]) for v in viewers)
            assert landed == [0, 0, 1, 1], [v.location for v in viewers]
            for viewer in viewers:
                await viewer.wait_frames(30, timeout=30)
                assert set(viewer.resolutions) == {(320, 240)}, viewer.resolutions
                await viewer.wait_audio(20, timeout=15)
                numbers = viewer.numbered_frames
                assert numbers and all(a < b for a, b in zip(numbers, numbers[1:])), numbers[-10:]
                assert 0 <= pub.frames_sent - numbers[-1] < 60

            # The front's merged view: 4 viewers, 2 per worker (the relay between the workers not counted).
            entry = await wait_stream(gw.base_url, STREAM, lambda e: bool(e and e["viewers"] == 4), 10)
            assert entry["workers"] == {"0": 2, "1": 2}, entry
            # The owner worker holds ONE relay session, for the other worker, besides its own two viewers; the
            # other worker's viewers are its own, fed by that one pull.
            everyone = (await http.get(gw.url(f"/api/streams/{STREAM}/viewers"))).json()
            on_owner = [v for v in everyone if v["worker"] == owner]
            on_other = [v for v in everyone if v["worker"] == other]
            assert sorted(str(v["relay_for"]) for v in on_owner) == ["None", "None", f"worker {other}"], on_owner
            assert [v["relay_for"] for v in on_other] == [None, None], on_other
            metrics = (await http.get(gw.url("/metrics"))).text
            assert f'whipgate_sessions{{worker="{other}",kind="relay"}} 1.0' in metrics
            assert f'whipgate_sessions{{worker="{owner}",kind="relay"}} 0.0' in metrics

            # The SSE extension through the front, on a viewer of the other (relaying) worker.
            relayed = next(v for v in viewers if f"/w{other}." in v.location)
            sse = await http.post(links(relayed.response)[SSE_REL], content=b'["active", "inactive", "viewercount"]')
            assert sse.status_code == 201, sse.text
            events_url = urljoin(links(relayed.response)[SSE_REL], sse.headers["location"])
            reader = asyncio.create_task(read_until(http, events_url, "inactive", 30))

            # Trickle ICE PATCH through the front: If-Match and ETag reach the worker (RFC 9725 §4.3.1).
            fragment = b"a=end-of-candidates\r\n"
            trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}
            stale = await http.patch(relayed.location, content=fragment, headers={**trickle, "If-Match": '"stale"'})
            assert stale.status_code == 412, stale.text
            fresh = await http.patch(relayed.location, content=fragment, headers={**trickle, "If-Match": relayed.etag})
            assert fresh.status_code == 204, fresh.text

            # DELETE through the front reaches the worker holding the session; the others keep playing.
            leaving = next(v for v in viewers if f"/w{owner}." in v.location)
            deleted = await http.delete(leaving.location)
            assert deleted.status_code == 200, deleted.text
            assert (await http.delete(leaving.location)).status_code == 404
            await leaving.stop(delete=False)
            clients.remove(leaving)
            await wait_stream(gw.base_url, STREAM, lambda e: bool(e and e["viewers"] == 3), 10)
            before = [v.frames for v in viewers if v is not leaving]
            await asyncio.sleep(1.0)
            assert all(v.frames > n for v, n in zip([v for v in viewers if v is not leaving], before))

            # The publisher leaves: the relayed viewer hears `inactive` through the front's event stream.
            await asyncio.sleep(0.5)
            await pub.stop(delete=True)
            names = await reader
            assert "active" in names and names[-1] == "inactive", names
    finally:
        await http.aclose()
        await stop_all(clients)
    assert gw.codec_violations() == ""


def test_workers_stop_with_the_front(gateway_factory) -> None:
    gw = gateway_factory(WORKERS, startup_timeout=STARTUP)
    pids = worker_pids(gw)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    gw.stop()  # SIGTERM to the front: it stops its workers and exits 0
    assert gw.proc.returncode == 0, gw.log()[-3000:]
    assert wait_gone(pids, 15) == [], gw.log()[-3000:]

    gw = gateway_factory(WORKERS, startup_timeout=STARTUP)
    pids = worker_pids(gw)
    gw.proc.send_signal(signal.SIGKILL)  # the front dies without a word: the workers must not live on
    gw.proc.wait(5)
    assert wait_gone(pids, 15) == [], gw.log()[-3000:]


def test_a_dead_worker_is_replaced(gateway_factory) -> None:
    gw = gateway_factory(WORKERS, startup_timeout=STARTUP)
    first = worker_pids(gw)
    os.kill(first[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = httpx.get(gw.url("/api/workers"), timeout=5).json()
        if workers[1]["pid"] != first[1] and workers[1]["alive"]:
            break
        time.sleep(0.2)
    assert workers[1]["restarts"] == 1 and workers[1]["alive"], workers
    assert workers[0]["pid"] == first[0]
    assert httpx.get(gw.url("/readyz"), timeout=5).status_code == 200


async def test_simulcast_layers_cross_between_workers_and_viewers_pin_theirs_through_the_front(gateway_factory) -> None:
    gw = gateway_factory(WORKERS, startup_timeout=STARTUP)
    owner = owner_worker(STREAM, 2)
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    pub = SimulcastPublisher(gw.base_url, STREAM, fps=15)
    try:
        with loopback_only():
            await pub.start()

            async def three_layers_live() -> bool:
                entry = await find_stream(gw.base_url, STREAM)
                layers = entry["tracks"][0]["layers"] if entry and entry["tracks"] else []
                return len(layers) == 3 and all(layer["active"] and layer["width"] for layer in layers)

            await wait_until(three_layers_live, 20, "the publisher's three layers never went live")
            sizes = {layer.rid: layer.size for layer in pub.layers}
            # Six viewers, three per worker: each worker has one pinned to every layer (the layer POST goes
            # through the front to the worker named in the session id).
            viewers = []
            for rid in ("q", "q", "h", "h", "f", "f"):
                viewer = WhepViewer(gw.base_url, STREAM, audio=False)
                clients.append(viewer)
                await viewer.start()
                viewers.append((rid, viewer))
                pinned = await http.post(links(viewer.response)[LAYER_REL], json={"rid": rid})
                assert pinned.status_code == 200, pinned.text
            assert {v.location.split(f"/whep/{STREAM}/", 1)[1][:3] for _, v in viewers} == {"w0.", "w1."}
            for rid, viewer in viewers:
                assert await recent_sizes(viewer, sizes[rid], 10, 30), (rid, viewer.location, viewer.resolutions)
            # The worker without the publisher received all three layers over its one pull.
            workers = (await http.get(gw.url("/api/workers"))).json()
            [relayed] = [s for s in workers[1 - owner]["streams"] if s["stream"] == STREAM]
            assert sorted((l["rid"], l["width"], l["height"]) for l in relayed["tracks"][0]["layers"]) == sorted(
                (rid, w, h) for rid, (w, h) in sizes.items()
            ), relayed
            everyone = (await http.get(gw.url(f"/api/streams/{STREAM}/viewers"))).json()
            assert [v["relay_for"] for v in everyone if v["relay_for"]] == [f"worker {1 - owner}"], everyone
    finally:
        await http.aclose()
        await stop_all(clients)
        await pub.stop()
    assert gw.codec_violations() == ""


async def test_workers_are_nodes_of_a_redis_cluster_behind_their_front(gateway_factory, redis_server) -> None:
    """With a Redis registry every worker is a node ("<node_id>.w<K>") whose public URL is the front's: another
    node redirects viewers to the front, and the front's workers redirect viewers of a stream held elsewhere."""
    ttl = 2.0
    front = gateway_factory(deep_merge(WORKERS, {"cluster": {"registry": redis_server.url, "node_id": "f", "ttl": ttl}}),
                            startup_timeout=STARTUP)
    other = gateway_factory({"cluster": {"registry": redis_server.url, "node_id": "b", "ttl": ttl}})
    owner = owner_worker(STREAM, 2)
    clients: list = []
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    sdp = {"Content-Type": "application/sdp"}
    try:
        with loopback_only():
            await start_publisher(front, clients, video_codec="VP8", width=320, height=240, fps=30)
            # The other node knows the stream by the owner worker's registry entry, reached through the front.
            moved = await http.post(other.url(f"/whep/{STREAM}"), content=(await recvonly_offer()).encode(), headers=sdp)
            assert moved.status_code == 307 and moved.headers["location"] == front.url(f"/whep/{STREAM}"), moved.headers
            assert (await http.post(other.url(f"/whip/{STREAM}"), content=(await sendonly_offer()).encode(),
                                    headers=sdp)).status_code == 409  # one publisher per key, cluster-wide
            viewers = [WhepViewer(front.base_url, STREAM) for _ in range(2)]  # one on each worker
            clients.extend(viewers)
            for viewer in viewers:
                await viewer.start()
            for viewer in viewers:
                await viewer.wait_frames(20, timeout=30)
            # A stream published on the other node: both workers send its viewers there (307 to node b).
            elsewhere = WhipPublisher(other.base_url, "elsewhere", video_codec="VP8", width=320, height=240, fps=30)
            clients.append(elsewhere)
            await elsewhere.start()
            await elsewhere.wait_connected(10)
            await wait_stream(other.base_url, "elsewhere", lambda e: bool(e and e.get("publisher")), 10)
            for _ in range(2):  # round robin: the owner of "elsewhere" and the other worker
                r = await http.post(front.url("/whep/elsewhere"), content=(await recvonly_offer()).encode(), headers=sdp)
                assert r.status_code == 307 and r.headers["location"] == other.url("/whep/elsewhere"), (r.status_code, r.text)
        ids = sorted(w["streams"][0]["stream"] for w in (await http.get(front.url("/api/workers"))).json() if w["streams"])
        assert ids == [STREAM, STREAM]  # the owner's publisher and the other worker's relay of it
        assert f"w{owner}." in clients[0].location
    finally:
        await http.aclose()
        await stop_all(clients)
    assert front.codec_violations() == ""
