"""The network lab itself (tests/netlab.py), without any bandwidth estimation in the gateway.

(a) a tbf on a viewer's link caps what reaches the viewer and drops the rest; an unshaped link carries 5 Mbps;
(b) the cap can be cut, changed and lifted mid-run and the receive rate follows within a second;
(c) Chromium in a viewer namespace loads the gateway's /play page across its (shaped) veth and reaches WHEP;
(d) closing a lab, also after a failure, kills its processes and leaves no namespace behind;
(e) real WebRTC through the lab: a publisher in the gateway namespace, a viewer in its own namespace.

Rates are UDP payload rates (1200-byte datagrams); tbf counts Ethernet frames, so the payload goodput of a
700 kbit cap is about 700 * 1200 / 1242 = 676 kbit/s.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from typing import Any, Iterator

import pytest

from netlab import (
    GATEWAY_PORT,
    SERVICE_IP,
    LabBrowsers,
    NetLab,
    UdpTrace,
    lab_unavailable,
    make_fake_video,
    udp_blast,
    wait_for,
)

pytestmark = pytest.mark.netns

BLAST_KBIT = 5000


def _listed_namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture
def lab() -> Iterator[NetLab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    with NetLab() as lab:
        yield lab
    assert lab.leftovers() == [], "the lab left namespaces behind"
    print(f"\nlab {lab.name}: setup {lab.setup_seconds:.2f} s ({len(lab.hosts)} hosts), "
          f"teardown {lab.teardown_seconds:.2f} s")  # fmt: skip


def _drops(stats: dict[str, Any]) -> int:
    return int(stats.get("drops", 0))


# ------------------------------------------------------------------------------------------ (a) a capped link


@pytest.mark.timeout(60)
def test_tbf_caps_the_link_towards_a_viewer(lab: NetLab) -> None:
    capped = lab.add_host("capped")
    free = lab.add_host("free")
    capped.shape(700)

    shaped = udp_blast(lab, lab.gateway_ns, capped.ns, capped.ip, rate_kbit=BLAST_KBIT, seconds=3)
    capped_stats = capped.qdisc_stats()
    unshaped = udp_blast(lab, lab.gateway_ns, free.ns, free.ip, rate_kbit=BLAST_KBIT, seconds=3)

    # Steady state: skip the first 0.5 s (the bucket and the 100 ms queue fill at line rate).
    s_rate = shaped.rate_kbit(shaped.started + 0.5, shaped.ended)
    s_wire = shaped.rate_kbit(shaped.started + 0.5, shaped.ended, wire=True)
    u_rate = unshaped.rate_kbit(unshaped.started + 0.5, unshaped.ended)
    sent_rate = shaped.sent_bytes * 8 / 1000 / (shaped.ended - shaped.started)
    lost = shaped.sent_packets - shaped.received_packets
    print(
        f"\n700 kbit cap: sent {shaped.sent_packets} pkts ({sent_rate:.0f} kbit/s payload), "
        f"received {shaped.received_packets} pkts, {s_rate:.0f} kbit/s payload ({s_wire:.0f} on the wire); "
        f"tbf drops {_drops(capped_stats)}, "
        f"qdisc {json.dumps({k: capped_stats.get(k) for k in ('bytes', 'packets', 'drops', 'overlimits')})}"
        f"\nunshaped: sent {unshaped.sent_packets}, received {unshaped.received_packets}, {u_rate:.0f} kbit/s"
    )  # fmt: skip

    assert sent_rate > 0.95 * BLAST_KBIT, f"the sender only managed {sent_rate:.0f} kbit/s"
    assert 600 <= s_rate <= 750, f"capped link received {s_rate:.0f} kbit/s"
    # The rest is dropped at the gateway-side tbf (and only there).
    assert lost > 0.8 * shaped.sent_packets
    assert abs(_drops(capped_stats) - lost) <= 0.02 * shaped.sent_packets, (lost, capped_stats)
    assert capped_stats.get("kind") == "tbf"

    assert u_rate > 4000, f"unshaped link received {u_rate:.0f} kbit/s"
    assert unshaped.received_packets >= 0.99 * unshaped.sent_packets
    assert free.qdisc_stats().get("kind") != "tbf"


# ---------------------------------------------------------------------------------- (b) reshaping mid-run


def _follow_time(trace: UdpTrace, start: float, end: float, lo: float, hi: float, window: float = 0.25) -> float:
    """Seconds after `start` from which every sliding window ending before `end` has a rate in [lo, hi]."""
    step = 0.05
    starts = [start + i * step for i in range(int((end - window - start) / step) + 1)]
    ok = [lo <= trace.rate_kbit(s, s + window) <= hi for s in starts]
    follow = None
    for i in range(len(starts) - 1, -1, -1):
        if not ok[i]:
            break
        follow = starts[i] - start
    return float("inf") if follow is None else follow


@pytest.mark.timeout(60)
def test_reshaping_mid_run_takes_effect_within_a_second(lab: NetLab) -> None:
    host = lab.add_host("viewer")
    # (time of change after t0, new cap, payload band the receiver must see after it)
    plan: list[tuple[float, int | None, tuple[float, float]]] = [
        (0.0, None, (4000, 5500)),
        (1.5, 300, (240, 330)),
        (3.5, 1000, (850, 1050)),
        (5.0, None, (4000, 5500)),
    ]
    seconds = 6.5
    # (monotonic time just before `tc` ran, just after it returned) per change: a segment is judged from
    # after its change to before the next one, so the time `tc` itself takes belongs to no segment.
    applied: list[tuple[float, float]] = []

    def during(t0: float) -> None:
        for at, rate, _ in plan:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            before = time.monotonic()
            host.shape(rate)
            applied.append((before, time.monotonic()))

    trace = udp_blast(lab, lab.gateway_ns, host.ns, host.ip, rate_kbit=BLAST_KBIT, seconds=seconds, during=during)

    lines = []
    for i, ((_, rate, (lo, hi)), (_, at)) in enumerate(zip(plan, applied)):
        end = applied[i + 1][0] if i + 1 < len(plan) else trace.ended
        settled = trace.rate_kbit(at + 1.0, end)
        follow = _follow_time(trace, at, end, lo, hi)
        lines.append((rate, settled, follow, lo, hi))
    print("\n" + "\n".join(
        f"cap {'none' if r is None else f'{r} kbit'}: {s:.0f} kbit/s from 1 s after the change, "
        f"in band from +{f:.2f} s" for r, s, f, _, _ in lines
    ))  # fmt: skip
    series = " ".join(f"{r:.0f}" for _, r in trace.series(step=0.25, window=0.25))
    for rate, settled, follow, lo, hi in lines:
        assert lo <= settled <= hi, f"cap {rate}: {settled:.0f} kbit/s not in [{lo}, {hi}]; 250 ms rates: {series}"
        assert follow <= 1.0, f"cap {rate}: rate only settled {follow:.2f} s after the change; 250 ms rates: {series}"
    assert host.rate_kbit is None and host.qdisc_stats().get("kind") != "tbf"


# ------------------------------------------------------------------------------- (c) Chromium across a veth


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_chromium_in_a_viewer_namespace_opens_play_page(lab: NetLab, tmp_path: pathlib.Path) -> None:
    if reason := lab_unavailable(browsers=True):
        pytest.skip(reason)
    gw = lab.start_gateway(tmp_path / "gw", {"whep": {"retry_after": 1}})
    host = lab.add_host("viewer1")  # added after the gateway started: SERVICE_IP is the candidate anyway
    host.shape(2000)
    # Nothing but the host's own link leads to the gateway: the viewer has no other route.
    routes = host.run(["ip", "route"]).stdout
    assert f"default via {host.gateway_ip}" in routes, routes

    with LabBrowsers(lab, tmp_path / "browsers") as browsers:
        page = browsers.open_viewer(host, gw, "nobody-here")
        assert page.url.startswith(f"http://{host.gateway_ip}:{GATEWAY_PORT}/play")
        stats = page.evaluate("window.whipgateStats")
        assert isinstance(stats, dict) and "state" in stats, stats
        # autostart POSTs the WHEP offer over the veth; no publisher, so the gateway answers 409 -> "waiting".
        wait_for(
            lambda: page.evaluate("window.whipgateStats.state") == "waiting",
            15,
            lambda: f"state {page.evaluate('window.whipgateStats')}\n{browsers.logs(page)}\n{gw.log()[-2000:]}",
        )
        # The page's own fetches go to the gateway across the link as well.
        streams = page.evaluate("fetch('/api/streams').then(r => r.json())")
        assert isinstance(streams, list)
        status, body = lab.fetch(host.ns, f"http://{SERVICE_IP}:{GATEWAY_PORT}/healthz")
        assert status == 200, body
    assert host.qdisc_stats().get("packets", 0) > 0  # the page came through the shaper
    assert gw.codec_violations() == ""
    lab.close()
    assert gw.gw.proc.poll() is not None, "the gateway outlived the lab"


# ------------------------------------------------------------------------------------------------ (d) cleanup


@pytest.mark.timeout(60)
def test_close_removes_everything_even_after_a_failure() -> None:
    if reason := lab_unavailable():
        pytest.skip(reason)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        with NetLab() as lab:
            hosts = [lab.add_host(f"h{i}") for i in range(4)]
            for h in hosts:
                h.shape(500)
            sleeper = hosts[0].popen(["sleep", "60"])
            ours = {ns for ns in _listed_namespaces() if ns.startswith(lab.name + "-")}
            assert ours == set(lab.namespaces) and len(ours) == 5, ours
            raise RuntimeError("boom")
    total = time.monotonic() - started
    print(f"\n4-host lab: setup {lab.setup_seconds:.2f} s, teardown {lab.teardown_seconds:.2f} s, total {total:.2f} s")
    assert sleeper.poll() is not None, "a process started in the lab survived close()"
    assert lab.leftovers() == []
    assert not set(lab.namespaces) & set(_listed_namespaces())
    with pytest.raises(RuntimeError):
        lab.add_host("late")  # a closed lab stays closed


def test_two_labs_do_not_collide() -> None:
    if reason := lab_unavailable():
        pytest.skip(reason)
    with NetLab() as one, NetLab() as two:
        a, b = one.add_host("viewer"), two.add_host("viewer")
        assert a.ns != b.ns and a.ip == b.ip  # same addresses, different namespaces
        a.shape(300)
        assert b.qdisc_stats().get("kind") != "tbf"
    assert one.leftovers() == [] and two.leftovers() == []


# ------------------------------------------------------------------------------------- (e) WebRTC through it


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_webrtc_viewer_across_a_shaped_link(lab: NetLab, tmp_path: pathlib.Path,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    """A publisher (gateway namespace, loopback) and a viewer (own namespace): media crosses the veth; a cap
    below the stream's bitrate makes the tbf drop (nothing adapts yet), lifting it lets the viewer recover."""
    if reason := lab_unavailable(browsers=True):
        pytest.skip(reason)
    clip = make_fake_video(tmp_path_factory.getbasetemp() / "netlab-media" / "testsrc2-720p30.y4m")
    gw = lab.start_gateway(tmp_path / "gw", {"whep": {"retry_after": 1}})
    host = lab.add_host("viewer")
    with LabBrowsers(lab, tmp_path / "browsers", fake_video=clip) as browsers:
        pub = browsers.open_publisher(gw, "lab", simulcast=True)
        view = browsers.open_viewer(host, gw, "lab")

        def video() -> dict[str, Any]:
            return view.evaluate("window.whipgateStats").get("video", {})

        def report(what: str) -> str:
            return (f"{what}\npublisher {json.dumps(pub.evaluate('window.whipgatePublishStats'))}\n"
                    f"viewer {json.dumps(view.evaluate('window.whipgateStats'))}\n"
                    f"{browsers.logs(pub)}\n{browsers.logs(view)}\n{gw.log()[-3000:]}")  # fmt: skip

        wait_for(lambda: video().get("framesDecoded", 0) > 60, 40, lambda: report("the viewer did not play"))
        before = video()
        time.sleep(3)
        free = video()
        free_fps = (free["framesDecoded"] - before["framesDecoded"]) / 3
        pub_kbit = (pub.evaluate("window.whipgatePublishStats").get("video", {}).get("bitrate") or 0) / 1000

        host.shape(150)
        time.sleep(5)
        capped = video()
        capped_stats = host.qdisc_stats()
        capped_fps = (capped["framesDecoded"] - free["framesDecoded"]) / 5
        capped_lost = capped.get("packetsLost", 0) - free.get("packetsLost", 0)
        rtx = gw.metric("whipgate_retransmissions_total")  # informative: nothing limits them yet

        host.shape(None)
        mark = video()
        wait_for(
            lambda: video().get("framesDecoded", 0) - mark.get("framesDecoded", 0) > 60,
            30,
            lambda: report("the viewer did not recover after the cap was lifted"),
        )
        print(
            f"\nunshaped: {free_fps:.1f} fps at {free.get('frameWidth')}x{free.get('frameHeight')} "
            f"(publisher reports {pub_kbit:.0f} kbit/s video)\n150 kbit cap for 5 s: {capped_fps:.1f} fps, "
            f"+{capped_lost} packets lost, tbf passed {capped_stats.get('packets')} pkts and dropped "
            f"{_drops(capped_stats)}, gateway retransmissions so far {rtx:.0f}\nafter lifting: playing again"
        )  # fmt: skip
        assert free_fps > 15, report(f"only {free_fps:.1f} fps unshaped")
        assert _drops(capped_stats) > 0, report("the 150 kbit cap dropped nothing")
    assert gw.codec_violations() == ""
