"""Bandwidth estimation on a real shaped link: whipgate's per-viewer estimator vs always-the-top-layer.

One Chromium publisher (3 simulcast layers, ~150 / 500 / 1500 kbit/s) and one Chromium viewer in its own network
namespace behind a veth link shaped with tc tbf (tests/netlab.py). The viewer's link is unlimited, then cut to
300 kbit/s for 15 s, then lifted. Run once with `rtc.bandwidth_estimation = true` and once with `false` (the
baseline: the highest layer alive, as without estimation), and print side by side:
time from the cut to the gateway's decision (its log) and to the first decoded frame of the lower
layer, loss in the first 5 s after the cut, from the cut until the viewer decodes the lower layer (whipgate only:
the baseline never does) and over the whole capped period (also as a packet count), time to upgrade after the
lift, and the share of the 300 kbit/s the viewer actually received (goodput) while capped. The JSON also lists
the gateway's layer decisions and switches relative to the cut (`layer_log`).

    sudo python3 bench/bwe.py [--buffer-ms 100]   (root for network namespaces; Debian chromium; ~2 minutes)

--buffer-ms is tbf's `latency`: how much queue the shaped link holds (100 ms: a shallow buffer, where loss
starts ~25 ms after the cut; home routers often hold several hundred ms, where delay rises before loss).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from netlab import LabBrowsers, NetLab, decided_at, lab_unavailable, make_fake_video, wait_for  # noqa: E402

CAP_KBIT = 300
CAPPED_SECONDS = 15.0


def video(page) -> dict:
    """Fresh inbound video stats (getStats now, not the page's once-a-second copy)."""
    return page.evaluate("window.whipgateVideoStats()") or {}


def loss_between(a: dict, b: dict) -> tuple[int, int]:
    lost = (b.get("packetsLost") or 0) - (a.get("packetsLost") or 0)
    received = (b.get("packetsReceived") or 0) - (a.get("packetsReceived") or 0)
    return lost, received


def layer_log(gateway_log: str, since: float, until: float) -> list[str]:
    """The gateway's layer decisions and switches (its INFO lines) between two wall-clock times, as
    "+0.123 s <line>" relative to `since` (the cut): how the run went, for the JSON."""
    out = []
    for line in gateway_log.splitlines():
        match = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+,\d+) \S+ whep\.session: viewer \S+ (.*)", line)
        if not match or not ("layer" in match.group(2)):
            continue
        when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if since - 1 <= when <= until:
            out.append(f"{when - since:+.3f} s {match.group(2)[:160]}")
    return out


def run(estimation: bool, workdir: pathlib.Path, buffer_ms: int) -> dict:
    with NetLab() as lab:
        viewer_host = lab.add_host("viewer")
        fake = make_fake_video(workdir / "cam.y4m", width=1280, height=720, fps=30, seconds=4)
        with LabBrowsers(lab, workdir / "browsers", fake_video=fake) as browsers:
            gw = lab.start_gateway(workdir / "gw", {"rtc": {"bandwidth_estimation": estimation}})
            browsers.open_publisher(gw, "bench", simulcast=True, codec="VP8")
            page = browsers.open_viewer(viewer_host, gw, "bench")
            wait_for(lambda: video(page).get("frameWidth") == 1280, 60, "viewer never reached 1280x720")
            time.sleep(3)
            before = video(page)
            t_cut, wall_cut = time.monotonic(), time.time()
            viewer_host.shape(CAP_KBIT, latency_ms=buffer_ms)
            downgrade = None
            first_5s = None
            to_downgrade = None  # (lost, received) from the cut until the viewer decodes the lower layer
            while time.monotonic() - t_cut < CAPPED_SECONDS:
                stats = video(page)
                if downgrade is None and (stats.get("frameWidth") or 9999) < 640:
                    downgrade = time.monotonic() - t_cut
                    to_downgrade = loss_between(before, stats)
                if first_5s is None and time.monotonic() - t_cut >= 5:
                    first_5s = loss_between(before, stats)
                time.sleep(0.05)
            after = video(page)
            capped = time.monotonic() - t_cut
            decided = decided_at(gw.log(), wall_cut) if estimation else None
            lost, received = loss_between(before, after)
            lost_5s, received_5s = first_5s or (lost, received)
            lost_down, received_down = to_downgrade or (lost, received)
            goodput_kbit = ((after.get("bytesReceived") or 0) - (before.get("bytesReceived") or 0)) * 8 / capped / 1000
            t_lift = time.monotonic()
            viewer_host.shape(None)
            upgrade = None
            while time.monotonic() - t_lift < 30:
                if (video(page).get("frameWidth") or 0) == 1280:
                    upgrade = time.monotonic() - t_lift
                    break
                time.sleep(0.1)
            return {
                "decision_s": decided - wall_cut if decided is not None else None,
                "downgrade_s": downgrade,
                "loss_5s": lost_5s / max(1, lost_5s + received_5s),
                "lost_5s": lost_5s,
                "loss_to_downgrade": lost_down / max(1, lost_down + received_down),
                "lost_to_downgrade": lost_down,
                "loss": lost / max(1, lost + received),
                "lost": lost,
                "upgrade_s": upgrade,
                "goodput_share": goodput_kbit / CAP_KBIT,
                "frames_while_capped": (after.get("framesDecoded") or 0) - (before.get("framesDecoded") or 0),
                "layer_log": layer_log(gw.log(), wall_cut, wall_cut + CAPPED_SECONDS + (upgrade or 30) + 1),
            }


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "never"
    return f"{value:.1f}{unit}" if unit == " s" else f"{value:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--buffer-ms", type=int, default=100, help="tbf latency: the shaped link's queue (ms)")
    args = parser.parse_args()
    reason = lab_unavailable(browsers=True)
    if reason:
        print(f"cannot run: {reason}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ours = run(True, pathlib.Path(tmp) / "ours", args.buffer_ms)
        base = run(False, pathlib.Path(tmp) / "base", args.buffer_ms)
    print(json.dumps({"whipgate": ours, "baseline": base}, indent=1))
    print(f"\nlink cut from unlimited to {CAP_KBIT} kbit/s (tbf, {args.buffer_ms} ms queue) for {CAPPED_SECONDS:g} s, then lifted")
    print(f"{'':36} | {'whipgate':>10} | {'top layer only':>14}")
    rows = [
        ("decision to move down (log)", fmt(ours["decision_s"], " s"), "-"),
        ("time to downgrade (decoded size)", fmt(ours["downgrade_s"], " s"), fmt(base["downgrade_s"], " s")),
        ("loss, first 5 s after the cut", fmt(ours["loss_5s"]), fmt(base["loss_5s"])),
        ("loss, cut until lower layer decoded", fmt(ours["loss_to_downgrade"]), "-"),
        ("loss while capped", fmt(ours["loss"]), fmt(base["loss"])),
        ("packets lost while capped", str(ours["lost"]), str(base["lost"])),
        ("time to upgrade after lift", fmt(ours["upgrade_s"], " s"), fmt(base["upgrade_s"], " s")),
        ("goodput / capacity (capped)", fmt(ours["goodput_share"]), fmt(base["goodput_share"])),
        ("frames decoded while capped", str(ours["frames_while_capped"]), str(base["frames_while_capped"])),
    ]
    for name, a, b in rows:
        print(f"{name:36} | {a:>10} | {b:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
