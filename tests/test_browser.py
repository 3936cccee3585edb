"""Headless Chromium publishes with /publish (WHIP) and plays with /play (WHEP) through the gateway.

The gateway and Chromium both run inside a fresh network namespace that has only `lo`, so every ICE candidate
is 127.0.0.1 and nothing leaves the test. Needs root (for `ip netns`) and Debian's chromium.
"""

from __future__ import annotations

import contextlib

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time
from typing import Any, Iterator

import httpx
import pytest

from netlab import make_fake_video, wait_for
from conftest import Gateway, launch_gateway

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
NETNS_PORT = 18080  # launch_gateway's fixed port inside a namespace
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]
FAKE_VIDEO = {"width": 640, "height": 360, "fps": 30, "seconds": 3}
MEDIA_DEADLINE = 20.0  # seconds for frames to reach the player


# ----------------------------------------------------------------------------------------------- pages over HTTP


def test_pages_router_alone() -> None:
    """pages_router works in any Litestar app (no gateway core involved)."""
    from litestar import Litestar
    from litestar.testing import TestClient

    from gateway.pages import pages_router

    with TestClient(Litestar(route_handlers=[pages_router])) as client:
        for path in ("/", "/publish", "/play"):
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert client.get("/static/play.js").status_code == 200
        assert client.get("/static/..%2Fpages.py").status_code == 404  # no escape from gateway/static


@pytest.mark.parametrize("path", ["/", "/publish", "/play"])
def test_pages_are_html(gateway: Gateway, path: str) -> None:
    r = httpx.get(gateway.url(path), timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in r.text.lower()
    assert "https://" not in r.text  # no external CDN: the gateway may run without internet


def test_index_links_to_pages(gateway: Gateway) -> None:
    text = httpx.get(gateway.url("/"), timeout=5).text
    assert 'href="/publish"' in text and 'href="/play"' in text


@pytest.mark.parametrize(
    "asset, media_type",
    [
        ("common.js", "text/javascript"),
        ("publish.js", "text/javascript"),
        ("play.js", "text/javascript"),
        ("style.css", "text/css"),
    ],
)
def test_static_assets(gateway: Gateway, asset: str, media_type: str) -> None:
    r = httpx.get(gateway.url(f"/static/{asset}"), timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    assert httpx.get(gateway.url("/static/no-such-file.js"), timeout=5).status_code == 404


# ------------------------------------------------------------------------------------- namespace and browser setup


def _netns_unavailable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to create a network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"whipgate-br-{secrets.token_hex(4)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace: {e.stderr.decode(errors='replace').strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture(scope="session")
def fake_video(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A short y4m clip for Chromium's fake camera: 30 fps instead of the built-in device's 20."""
    v = FAKE_VIDEO
    path = tmp_path_factory.mktemp("media") / "testsrc2.y4m"
    return make_fake_video(path, width=v["width"], height=v["height"], fps=v["fps"], seconds=v["seconds"])


def _wait_ready_in_netns(gw: Gateway, ns: str, timeout: float = 20.0) -> None:
    probe = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{NETNS_PORT}/healthz', timeout=1)\n"
        "    sys.exit(0 if r.status == 200 else 1)\n"
        "except Exception:\n"
        "    sys.exit(1)\n"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.proc.returncode}:\n{gw.log()}")
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"gateway did not become healthy inside {ns}:\n{gw.log()}")


@pytest.fixture
def gateway_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra gateway config; a test sets it with @pytest.mark.parametrize(..., indirect=True)."""
    return getattr(request, "param", {})


@contextlib.contextmanager
def gateway_in_netns(netns: str, workdir: pathlib.Path, config: dict[str, Any]) -> Iterator[Gateway]:
    """A gateway inside the namespace, ready, stopped on exit. A short Retry-After so players retry quickly."""
    gw = launch_gateway(workdir, {"whep": {"retry_after": 1}, **config}, netns=netns)
    try:
        _wait_ready_in_netns(gw, netns)
        yield gw
    finally:
        gw.stop()


@contextlib.contextmanager
def chromium_in_netns(netns: str, workdir: pathlib.Path, fake_video: pathlib.Path) -> Iterator[Any]:
    """Debian chromium inside the namespace (through a wrapper script), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    wrapper = workdir / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(wrapper),
            args=CHROMIUM_FLAGS + [f"--use-file-for-fake-video-capture={fake_video}"],
            timeout=60_000,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def netns_gateway(netns: str, tmp_path: pathlib.Path, gateway_config: dict[str, Any]) -> Iterator[Gateway]:
    with gateway_in_netns(netns, tmp_path / "gw", gateway_config) as gw:
        yield gw


@pytest.fixture
def browser(netns: str, tmp_path: pathlib.Path, fake_video: pathlib.Path) -> Iterator[Any]:
    with chromium_in_netns(netns, tmp_path, fake_video) as b:
        yield b


class PageLog:
    """Console messages and page errors of one page, for failure messages."""

    def __init__(self, page: Any, label: str) -> None:
        self.lines: list[str] = []
        page.on("console", lambda m: self.lines.append(f"[{label}] {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.lines.append(f"[{label}] pageerror: {e}"))

    def __str__(self) -> str:
        return "\n".join(self.lines[-40:])


# ----------------------------------------------------------------------------------------------------- media test


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_publish_page_to_play_page(netns_gateway: Gateway, browser: Any, codec: str) -> None:
    gw = netns_gateway
    base = f"http://127.0.0.1:{NETNS_PORT}"
    stream = f"br-{codec.lower()}"
    context = browser.new_context()
    publisher = context.new_page()
    player = context.new_page()
    logs = [PageLog(publisher, "publish"), PageLog(player, "play")]

    def pub_stats() -> dict[str, Any]:
        return publisher.evaluate("window.whipgatePublishStats")

    def play_stats() -> dict[str, Any]:
        return player.evaluate("window.whipgateStats")

    def report(what: str) -> str:
        return (
            f"{what}\npublisher: {json.dumps(pub_stats())}\nplayer: {json.dumps(play_stats())}\n"
            + "\n".join(map(str, logs))
            + f"\n--- gateway log (tail) ---\n{gw.log()[-4000:]}"
        )

    publisher.goto(f"{base}/publish?stream={stream}&codec={codec}&autostart=1")
    wait_for(
        lambda: (s := pub_stats())["state"] == "live" and s["video"].get("framesSent", 0) > 0,
        MEDIA_DEADLINE,
        lambda: report(f"the publish page did not go live with {codec}"),
    )
    sent_codec = pub_stats()["video"]["codec"]
    assert sent_codec and sent_codec.lower() == f"video/{codec.lower()}", report("publisher sends another codec")

    player.goto(f"{base}/play?stream={stream}&autostart=1")

    def playing() -> bool:
        pub, got = pub_stats()["video"], play_stats()
        v, a = got["video"], got["audio"]
        return (
            got["state"] == "live"
            and v.get("framesDecoded", 0) > 60
            and v.get("frameWidth") == pub.get("frameWidth")
            and v.get("frameHeight") == pub.get("frameHeight")
            and a.get("packetsReceived", 0) > 0
        )

    wait_for(playing, MEDIA_DEADLINE, lambda: report(f"the player did not play the {codec} stream"))
    got = play_stats()
    print(f"{codec}: publisher {json.dumps(pub_stats())}\nplayer {json.dumps(got)}")
    assert got["video"]["codec"].lower() == f"video/{codec.lower()}", report("player receives another codec")
    assert got["video"]["frameWidth"] > 0 and got["video"]["frameHeight"] > 0

    # Frames keep arriving at the live rate (not just a burst replayed at join): the publisher sends 30 fps,
    # so 3 s must add well over 45 decoded frames, and audio keeps flowing too.
    time.sleep(3)
    later = play_stats()
    decoded = later["video"]["framesDecoded"] - got["video"]["framesDecoded"]
    audio_packets = later["audio"]["packetsReceived"] - got["audio"]["packetsReceived"]
    assert decoded >= 45 and audio_packets >= 50, report(
        f"media stalled: +{decoded} frames, +{audio_packets} audio packets in 3 s"
    )
    assert later["video"]["packetsLost"] <= 5, report("video packets were lost on loopback")

    # The gateway's side of this viewer (Chromium negotiates transport-cc): Opus and the video ride C lanes, which
    # stamp the transport-wide seq and log what they send (and continue VP8 picture ids); the estimator matched
    # Chromium's feedback to that log (acknowledged rate) and the viewer decoded it all (above). A lane that
    # handed a packet back (NACK, lease) is armed again by the next packet: poll briefly.
    want = {"audio": True, "video": True}
    tracks: list = []
    for _ in range(40):
        viewers = player.evaluate(f"fetch('/api/streams/{stream}/viewers').then(r => r.json())")
        tracks = [t for v in viewers for t in v["tracks"]]
        if {t["kind"]: t["lane"] for t in tracks} == want:
            break
        time.sleep(0.05)
    assert {t["kind"]: t["lane"] for t in tracks} == want, tracks
    video_stats = next(t for t in tracks if t["kind"] == "video")
    assert video_stats["transport_cc"] and video_stats["acknowledged_bps"] > 50_000, video_stats
    assert video_stats["feedback_unknown"] <= 5, video_stats  # Chromium's feedback is about what the lanes logged

    # The gateway lists the stream with one viewer while both pages run.
    streams = player.evaluate("fetch('/api/streams').then(r => r.json())")
    entry = next((s for s in streams if s["stream"] == stream), None)
    assert entry is not None and entry["publisher"] and entry["viewers"] == 1, streams

    # Stop buttons DELETE the sessions; the stream then disappears from the list.
    player.click("#stop")
    publisher.click("#stop")
    wait_for(
        lambda: play_stats()["state"] == "stopped" and pub_stats()["state"] == "stopped",
        5,
        lambda: report("the pages did not stop"),
    )
    wait_for(
        lambda: not any(
            s["stream"] == stream for s in player.evaluate("fetch('/api/streams').then(r => r.json())")
        ),
        5,
        lambda: report("the stream is still listed after both pages stopped"),
    )
    context.close()
    assert gw.codec_violations() == ""


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_player_waits_for_publisher(netns_gateway: Gateway, browser: Any) -> None:
    """The player shows that the stream is not live (WHEP 409) and starts once a publisher arrives."""
    gw = netns_gateway
    base = f"http://127.0.0.1:{NETNS_PORT}"
    context = browser.new_context()
    player = context.new_page()
    logs = [PageLog(player, "play")]
    player.goto(f"{base}/play?stream=later&autostart=1")

    def report(what: str) -> str:
        return f"{what}\nplayer: {json.dumps(player.evaluate('window.whipgateStats'))}\n{logs[0]}\n{gw.log()[-3000:]}"

    wait_for(
        lambda: player.evaluate("window.whipgateStats")["state"] == "waiting",
        10,
        lambda: report("the player did not report a stream that is not live"),
    )
    assert "not live" in player.inner_text("#status")

    publisher = context.new_page()
    logs.append(PageLog(publisher, "publish"))
    publisher.goto(f"{base}/publish?stream=later&autostart=1")
    wait_for(
        lambda: (s := player.evaluate("window.whipgateStats"))["state"] == "live"
        and s["video"].get("framesDecoded", 0) > 10,
        MEDIA_DEADLINE + 10,
        lambda: report("the player did not start after the publisher arrived"),
    )
    context.close()
    assert gw.codec_violations() == ""


SECURE_STREAM = {"streams": {"secure": {"publish_token": "pub-secret", "play_token": "play-secret"}}}


@pytest.mark.netns
@pytest.mark.timeout(90)
@pytest.mark.parametrize("gateway_config", [SECURE_STREAM], indirect=True)
def test_pages_send_bearer_tokens(netns_gateway: Gateway, browser: Any) -> None:
    """The token field travels as `Authorization: Bearer`; a wrong one shows the 401 on the page."""
    gw = netns_gateway
    base = f"http://127.0.0.1:{NETNS_PORT}"
    context = browser.new_context()
    publisher = context.new_page()
    player = context.new_page()
    logs = [PageLog(publisher, "publish"), PageLog(player, "play")]

    def pub_stats() -> dict[str, Any]:
        return publisher.evaluate("window.whipgatePublishStats")

    def play_stats() -> dict[str, Any]:
        return player.evaluate("window.whipgateStats")

    def report(what: str) -> str:
        pages = f"publisher: {json.dumps(pub_stats())}\nplayer: {json.dumps(play_stats())}\n"
        return f"{what}\n{pages}" + "\n".join(map(str, logs)) + f"\n{gw.log()[-3000:]}"

    publisher.goto(f"{base}/publish?stream=secure&token=wrong&autostart=1")
    wait_for(lambda: pub_stats()["state"] == "error", 10, lambda: report("the wrong token gave no error"))
    assert "401" in publisher.inner_text("#status")

    publisher.goto(f"{base}/publish?stream=secure&token=pub-secret&autostart=1")
    wait_for(lambda: pub_stats()["state"] == "live", MEDIA_DEADLINE, lambda: report("publisher not live"))

    player.goto(f"{base}/play?stream=secure&autostart=1")  # no token
    wait_for(lambda: play_stats()["state"] == "error", 10, lambda: report("playing without a token gave no error"))
    assert "401" in player.inner_text("#status")

    player.goto(f"{base}/play?stream=secure&token=play-secret&autostart=1")
    wait_for(
        lambda: (s := play_stats())["state"] == "live" and s["video"].get("framesDecoded", 0) > 10,
        MEDIA_DEADLINE,
        lambda: report("the player with the right token did not play"),
    )
    context.close()
    assert gw.codec_violations() == ""


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_publish_page_sets_the_degradation_preference(netns_gateway: Gateway, browser: Any) -> None:
    """?degradation= reaches the video sender (RTCRtpSendParameters.degradationPreference); a value the WebRTC
    enum does not have stops the page with an error, before it captures or connects anything."""
    base = f"http://127.0.0.1:{NETNS_PORT}"
    context = browser.new_context()
    publisher = context.new_page()
    log = PageLog(publisher, "publish")

    def pub_stats() -> dict[str, Any]:
        return publisher.evaluate("window.whipgatePublishStats")

    def report(what: str) -> str:
        return f"{what}\npublisher: {json.dumps(pub_stats())}\n{log}\n{netns_gateway.log()[-3000:]}"

    publisher.goto(f"{base}/publish?stream=degradation&autostart=1&degradation=sharpest")
    wait_for(lambda: pub_stats()["state"] == "error", 10, lambda: report("an unknown preference gave no error"))
    assert "degradation= must be one of" in publisher.inner_text("#status")

    publisher.goto(f"{base}/publish?stream=degradation&autostart=1&simulcast=1&degradation=maintain-resolution")
    wait_for(lambda: pub_stats()["state"] == "live", MEDIA_DEADLINE, lambda: report("publisher not live"))
    assert pub_stats()["degradation"] == "maintain-resolution", report("preference not kept")
    context.close()
