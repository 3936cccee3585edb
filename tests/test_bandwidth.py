"""Per-viewer bandwidth estimation on real links: each viewer gets the simulcast layer its own path carries.

The gateway and a Chromium publisher (3 layers: 320x180 / 640x360 / 1280x720 at ~150 / 500 / 1500 kbps) sit in
one network namespace; each viewer is a Chromium /play page in its own namespace behind a veth link whose
gateway-side end is shaped with tc tbf (tests/netlab.py). Assertions are on what the viewer decodes.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import time
from typing import Any, Iterator

import pytest

from netlab import LabBrowsers, NetLab, decided_at, lab_unavailable, make_fake_video, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.netns]

SIZES = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
LIMITED_KBIT = 800  # a link that carries the middle layer and not the top one
# Issue #4 asks the tests to assert on loss. On a layer its link carries a viewer loses little: at most 5% over
# STEADY_SECONDS (seen in ten runs: 0 in most windows, at most 5 of 226 packets). A layer the link does not carry
# loses more: 12-36% per loss period at a 700 kbit/s viewer on the middle layer (BENCHMARKS.md), 77-84% for the
# top-layer-only baseline of bench/bwe.py. The loss of the downgrade itself is bench/bwe.py's figure (target < 2%), not asserted.
STEADY_SECONDS, STEADY_MAX_LOSS = 3.0, 0.05


@pytest.fixture
def lab() -> Any:
    reason = lab_unavailable(browsers=True)
    if reason:
        pytest.skip(reason)
    with NetLab() as lab:
        yield lab


def video(page: Any) -> dict:
    """Fresh inbound video stats (getStats now, not the page's once-a-second copy)."""
    return page.evaluate("window.whipgateVideoStats()") or {}


def size(page: Any) -> tuple[int, int]:
    v = video(page)
    return v.get("frameWidth") or 0, v.get("frameHeight") or 0


def decoding(page: Any, want: tuple[int, int], seconds: float = 1.0) -> bool:
    """The viewer shows `want` and its decoded frame count grows."""
    if size(page) != want:
        return False
    before = video(page).get("framesDecoded") or 0
    time.sleep(seconds)
    return size(page) == want and (video(page).get("framesDecoded") or 0) > before


def counts(page: Any) -> tuple[int, int]:
    """The viewer's video packets (lost, received) so far."""
    v = video(page)
    return v.get("packetsLost") or 0, v.get("packetsReceived") or 0


def loss_since(page: Any, before: tuple[int, int]) -> tuple[float, int, int]:
    """Video loss at the viewer since `before` (a `counts`): (fraction, lost, lost + received)."""
    lost, received = (now - then for now, then in zip(counts(page), before))
    return lost / max(1, lost + received), lost, lost + received


def report(gw: Any, pages: dict[str, Any]) -> str:
    lines = [f"{name}: {json.dumps(video(p))}" for name, p in pages.items()]
    status, streams = gw.get("/api/streams")
    names = [s["stream"] for s in json.loads(streams)] if status == 200 else []
    log = gw.log()
    warnings = [line for line in log.splitlines() if "early warning" in line][-5:]  # unconfirmed ones log at INFO
    viewers = [line for name in names for line in gateway_viewers(gw, name)]
    return "\n".join(lines + [f"streams: {streams}"] + viewers + warnings + [log[-3000:]])


def gateway_viewers(gw: Any, stream: str) -> list[str]:
    """The gateway's view of each viewer's video: layer, estimate, early holds (for failure reports)."""
    status, body = gw.get(f"/api/streams/{stream}/viewers")
    if status != 200:
        return [f"viewers: {status}"]
    keys = ("layer", "estimate_bps", "acknowledged_bps", "early_holds", "early_holds_released", "packets_sent")
    return [f"gateway viewer {v['id']}: " + json.dumps({k: t.get(k) for k in keys})
            for v in json.loads(body) for t in v["tracks"] if t["kind"] == "video"]


def early_holds(gw: Any, stream: str) -> tuple[int, int]:
    """Early holds (simulcast/viewer_bandwidth.py `_hold_early`) over all of a stream's viewers, and those released
    unconfirmed (a warning no capacity drop followed: video delayed for nothing)."""
    tracks = [t for v in json.loads(gw.get(f"/api/streams/{stream}/viewers")[1]) for t in v["tracks"]]
    return sum(t.get("early_holds") or 0 for t in tracks), sum(t.get("early_holds_released") or 0 for t in tracks)


def start(lab: NetLab, tmp_path: pathlib.Path, browsers: LabBrowsers) -> tuple[Any, Any]:
    gw = lab.start_gateway(tmp_path / "gw")
    # Chromium's encoder, starved of CPU (a publisher and three viewers on two cores), scales every layer down by
    # default: the top layer then ran at 960x540 and ~0.6 Mbit/s, which the 800 kbit/s viewer's link carried, and
    # the sizes below no longer named the layers. It drops frames instead with maintain-resolution.
    publisher = browsers.open_publisher(gw, "bwe", simulcast=True, codec="VP8",
                                        extra_query="&degradation=maintain-resolution")

    def top_layer_live() -> bool:
        status, body = gw.get("/api/streams")
        streams = json.loads(body) if status == 200 else []
        layers = [l for s in streams for t in s["tracks"] if t["kind"] == "video" for l in t["layers"]]
        return any(l["width"] == 1280 and l["active"] for l in layers) and len(layers) == 3

    wait_for(top_layer_live, 30, lambda: "publisher never sent its top layer\n" + report(gw, {"publisher": publisher}))
    degradation = publisher.evaluate("window.whipgatePublishStats.degradation")
    assert degradation == "maintain-resolution", f"the publisher's degradationPreference: {degradation}"
    return gw, publisher


def test_each_viewer_gets_the_layer_its_link_carries_and_follows_changes(lab: NetLab, tmp_path: pathlib.Path) -> None:
    free, limited, changing = lab.add_host("free"), lab.add_host("limited"), lab.add_host("changing")
    # 800 kbit/s, "about 700" as issue #4 puts it: the publisher's middle layer runs at 0.48-0.61 Mbit/s, and with
    # audio and the headers tbf counts it needs up to ~0.69 Mbit/s on the wire. At 700 kbit/s (before 2026-12-03)
    # that filled the link (650 kbit/s acknowledged, the 100 ms queue standing at 85-95 ms, 12-36% of each loss
    # period lost), so moving the viewer down was right and the test flaked (BENCHMARKS.md). The top layer (~1.5
    # Mbit/s) is far beyond 800.
    limited.shape(LIMITED_KBIT)
    fake = make_fake_video(tmp_path / "cam.y4m", width=1280, height=720, fps=30, seconds=4)
    with LabBrowsers(lab, tmp_path / "browsers", fake_video=fake) as browsers:
        gw, _ = start(lab, tmp_path, browsers)
        pages = {h.name: browsers.open_viewer(h, gw, "bwe") for h in (free, limited, changing)}
        # Unconstrained viewers reach the top layer; the 800 kbit/s one settles on the middle layer, at once.
        wait_for(lambda: decoding(pages["free"], SIZES["f"]), 40, lambda: "free viewer not on 720p\n" + report(gw, pages))
        wait_for(lambda: decoding(pages["changing"], SIZES["f"]), 40, lambda: "changing viewer not on 720p\n" + report(gw, pages))
        wait_for(lambda: decoding(pages["limited"], SIZES["h"], 2.0), 40, lambda: f"{LIMITED_KBIT} kbit viewer not on 360p\n" + report(gw, pages))
        # Settled, each viewer's layer fits its link: (almost) nothing lost.
        settled = {name: counts(page) for name, page in pages.items()}
        time.sleep(STEADY_SECONDS)
        steady = {name: loss_since(page, settled[name]) for name, page in pages.items()}
        for name, (loss, lost, sent) in steady.items():
            assert loss <= STEADY_MAX_LOSS, f"{name} viewer lost {lost} of {sent} on its layer\n" + report(gw, pages)
        # Nor does any viewer's video wait on an early warning of a drop while its link carries its layer: from the
        # joins on (each viewer's first keyframe, the probes and the keyframes of its switches up; the 800 kbit/s
        # one's keyframes queue at its bottleneck, but at the rate it carries: the warning's guard) to here. One is
        # let pass: a CI run (2026-12-04) had one, released unconfirmed, in the 3 s this check covered then. Two
        # more, logged (the INFO line of an unconfirmed warning), fired on a part that carried one audio packet,
        # while a viewer's browser started beside the others on this 2-core machine: most likely a receiver that
        # read its socket late, which looks like a queue to a delay-based estimator. Such parts no longer warn
        # (bwe.SUSPECT_MIN_BYTES); a stall that delays a video packet still can.
        settled_holds = early_holds(gw, "bwe")
        assert settled_holds[0] <= 1, (f"early holds on links that carry their layers: {settled_holds}\n"
                                       + report(gw, pages))
        # Cut one link to 300 kbit/s: that viewer moves down, the others stay where they are.
        before_cut = counts(pages["changing"])
        t_cut, wall_cut = time.monotonic(), time.time()
        changing.shape(300)
        wait_for(lambda: size(pages["changing"])[0] < 640, 20, lambda: "cut viewer did not move down\n" + report(gw, pages), 0.05)
        downgrade = time.monotonic() - t_cut
        decided = decided_at(gw.log(), wall_cut)
        wait_for(lambda: decoding(pages["changing"], SIZES["q"]), 20, lambda: "cut viewer not decoding 180p\n" + report(gw, pages))
        loss, lost, sent = loss_since(pages["changing"], before_cut)
        # Capped, on the lowest layer: (almost) nothing lost.
        on_lowest = counts(pages["changing"])
        time.sleep(STEADY_SECONDS)
        capped = loss_since(pages["changing"], on_lowest)
        assert size(pages["changing"]) == SIZES["q"], report(gw, pages)
        assert capped[0] <= STEADY_MAX_LOSS, f"cut viewer lost {capped[1]} of {capped[2]} on 180p\n" + report(gw, pages)
        # The others stay where they are (waiting out a moment where a CPU-starved publisher pauses its top layer).
        wait_for(lambda: decoding(pages["free"], SIZES["f"]), 15, lambda: "free viewer left 720p\n" + report(gw, pages))
        wait_for(lambda: decoding(pages["limited"], SIZES["h"]), 15, lambda: "limited viewer left 360p\n" + report(gw, pages))
        # Lift the cap: it climbs back (probing first).
        t_lift = time.monotonic()
        changing.shape(None)
        wait_for(lambda: size(pages["changing"]) == SIZES["f"], 40, lambda: "lifted viewer not back on 720p\n" + report(gw, pages), 0.05)
        upgrade = time.monotonic() - t_lift
        back_on_top = counts(pages["changing"])
        assert decoding(pages["changing"], SIZES["f"], STEADY_SECONDS), report(gw, pages)
        lifted = loss_since(pages["changing"], back_on_top)
        decision = f"{decided - wall_cut:.2f} s" if decided is not None else "not seen"
        holds, released = early_holds(gw, "bwe")
        print(f"\nloss on settled layers over {STEADY_SECONDS} s: "
              + ", ".join(f"{name} {l:.1%} ({n} of {t})" for name, (l, n, t) in steady.items())
              + f"\nearly holds over the whole test, all viewers: {holds} ({released} released unconfirmed)"
              + f"\ndowngrade after cut: decided after {decision} (gateway log), decoded at 320x180 after {downgrade:.2f} s; "
              f"loss from the cut until then {loss:.1%} ({lost} of {sent}); then capped on 180p {capped[0]:.1%} "
              f"({capped[1]} of {capped[2]})\nupgrade after lift: {upgrade:.1f} s; then on 720p {lifted[0]:.1%} "
              f"({lifted[1]} of {lifted[2]})")
        assert lifted[0] <= STEADY_MAX_LOSS, f"lifted viewer lost {lifted[1]} of {lifted[2]} on 720p\n" + report(gw, pages)
        assert gw.codec_violations() == ""


HIGH_KBIT = 8000  # one layer far above 2.5x the 1 Mbit/s every viewer's estimate starts at


@contextlib.contextmanager
def single_layer_viewer(lab: NetLab, tmp_path: pathlib.Path) -> Iterator[tuple[Any, Any, Any]]:
    """FFmpeg's WHIP muxer publishing one HIGH_KBIT H.264 layer (as OBS does at high quality), and a Chromium viewer
    in its own namespace on a free link, from its first decoded frame: (gateway, viewer page, viewer host). FFmpeg
    leaves (WHIP DELETE) at the end."""
    from test_ffmpeg import ffmpeg_whip_command

    host = lab.add_host("viewer")
    with LabBrowsers(lab, tmp_path / "browsers") as browsers, open(tmp_path / "ffmpeg.log", "wb") as ffmpeg_log:
        gw = lab.start_gateway(tmp_path / "gw")
        cmd = ffmpeg_whip_command(gw.url_for(None, "/whip/high"), None, 40, size="1280x720", gop=60, video_kbps=HIGH_KBIT)
        ffmpeg = lab.popen_in(lab.gateway_ns, cmd, stdout=ffmpeg_log, stderr=subprocess.STDOUT)
        try:
            def publishing_fast() -> bool:
                status, body = gw.get("/api/streams")
                streams = json.loads(body) if status == 200 else []
                rates = [l["bitrate"] for s in streams for t in s["tracks"] if t["kind"] == "video" for l in t["layers"]]
                return bool(rates) and max(rates) > 0.7 * HIGH_KBIT * 1000

            wait_for(publishing_fast, 20, lambda: "FFmpeg's layer never reached its bitrate\n" + report(gw, {}))
            page = browsers.open_viewer(host, gw, "high")
            wait_for(lambda: (video(page).get("framesDecoded") or 0) > 0, 20, lambda: "no frame decoded\n" + report(gw, {"viewer": page}))
            yield gw, page, host
        finally:
            ffmpeg.terminate()
            ffmpeg.wait(timeout=10)  # its WHIP DELETE reaches the gateway before the lab stops it


def single_layer_report(gw: Any, viewer: dict, viewers: str) -> str:
    return f"viewer: {json.dumps(viewer)}\ngateway's viewers before FFmpeg left: {viewers}\n" + report(gw, {})


def test_a_single_layer_stream_far_above_the_initial_estimate_plays_from_its_first_keyframe(
    lab: NetLab, tmp_path: pathlib.Path
) -> None:
    """FFmpeg publishes one 8 Mbit/s layer; a Chromium viewer on a free link watches it. The viewer's estimate starts
    at 1 Mbit/s, and a pacer at 2.5x that would queue the video, then drop it (ViewerBandwidth._pace). From its first
    decoded frame the viewer must get every frame at the full rate, lose nothing, and the gateway's pacer must drop
    nothing."""
    with single_layer_viewer(lab, tmp_path) as (gw, page, _):
        first = video(page)
        time.sleep(3)
        after = video(page)
        # The gateway's view of the viewer (estimate, estimator state and reason, pacer queue), while it lasts.
        viewers = gw.get("/api/streams/high/viewers")[1]
    seconds = (after["timestamp"] - first["timestamp"]) / 1000
    fps = (after["framesDecoded"] - first["framesDecoded"]) / seconds
    pacer_drops = gw.metric("whipgate_dropped_total", 'reason="pacer_queue_full"')
    print(f"\n{HIGH_KBIT} kbit/s single layer: {fps:.1f} fps over the {seconds:.1f} s after the first frame, "
          f"{after.get('packetsLost')} packets lost, {pacer_drops:.0f} pacer drops")
    why = lambda: single_layer_report(gw, after, viewers)  # noqa: E731
    assert pacer_drops == 0, why()
    assert (after.get("packetsLost") or 0) <= 2, why()
    assert fps >= 25, why()
    assert gw.codec_violations() == ""


DIP_KBIT, DIP_SECONDS, DIPS = 2000, 0.3, 3


def test_a_single_layer_viewer_whose_link_dips_loses_only_what_the_dip_drops(lab: NetLab, tmp_path: pathlib.Path) -> None:
    """The 8 Mbit/s single-layer viewer's link falls to 2 Mbit/s for 0.3 s, three times (Wi-Fi fading, say). Each
    dip reads as a capacity drop, and the drain that follows paces the held video at the estimate, ~1.5 Mbit/s:
    with nothing lower to move to, its queue grew at ~6.5 Mbit/s until the pacer's limit dropped its oldest packets,
    numbered for the viewer (before 2026-12-03: ~2,600 pacer drops and ~2,700 packets lost over five dips, where
    the dips themselves cost ~180). The drain now ends at that limit (ViewerBandwidth._end_drain): the pacer
    drops nothing, the viewer loses only part of what the dips could not carry, and it keeps playing."""
    with single_layer_viewer(lab, tmp_path) as (gw, page, host):
        time.sleep(1)
        first = video(page)
        for _ in range(DIPS):  # bounded
            host.shape(DIP_KBIT)
            time.sleep(DIP_SECONDS)
            host.shape(None)
            time.sleep(2)
        after = video(page)
        viewers = gw.get("/api/streams/high/viewers")[1]
    tracks = [t for v in json.loads(viewers) for t in v["tracks"] if t["kind"] == "video"]
    pacer_drops = gw.metric("whipgate_dropped_total", 'reason="pacer_queue_full"')
    lost = (after.get("packetsLost") or 0) - (first.get("packetsLost") or 0)
    received = (after.get("packetsReceived") or 0) - (first.get("packetsReceived") or 0)
    decoded = (after.get("framesDecoded") or 0) - (first.get("framesDecoded") or 0)
    seconds = (after["timestamp"] - first["timestamp"]) / 1000
    freezes = (after.get("freezeCount") or 0) - (first.get("freezeCount") or 0)
    frozen = (after.get("totalFreezesDuration") or 0) - (first.get("totalFreezesDuration") or 0)
    print(f"\n{DIPS} dips to {DIP_KBIT} kbit/s for {DIP_SECONDS} s: {lost} packets lost of {lost + received}, "
          f"{pacer_drops:.0f} pacer drops, {decoded / seconds:.1f} fps, freezes {freezes} ({frozen:.2f} s), "
          f"drains ended at the pacer's limit: {[t.get('drains_ended_at_pacer_limit') for t in tracks]}")
    why = lambda: single_layer_report(gw, after, viewers)  # noqa: E731
    assert pacer_drops == 0, why()
    # What 2 Mbit/s cannot carry of 8 for 0.3 s is ~190 packets of 1,200 bytes a dip. Sent on into the dips (no
    # drain, a scratch switch) the viewer lost 638-680 over three; with the drain's hold, 68-152 (BENCHMARKS.md).
    assert lost < DIPS * 190, why()
    assert decoded / seconds >= 10, why()
    assert gw.codec_violations() == ""
