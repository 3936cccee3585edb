"""Bandwidth estimation on a real shaped link: whipgate's per-viewer estimator vs always-the-top-layer.

One Chromium publisher (3 simulcast layers, ~150 / 500 / 1500 kbit/s) and one Chromium viewer in its own network
namespace behind a veth link shaped with tc tbf (tests/netlab.py). The viewer's link is unlimited, then cut to
300 kbit/s for 15 s, then lifted. Run once with `rtc.bandwidth_estimation = true` and once with `false` (the
baseline: the highest layer alive, as without estimation), and print side by side:
time to downgrade after the cut (decoded size drops), loss while capped, time to upgrade after the lift, and the
share of the 300 kbit/s the viewer actually received (goodput) while capped.

    sudo python3 bench/bwe.py        (needs root for network namespaces; Debian chromium; about 2 minutes)
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from netlab import LabBrowsers, NetLab, lab_unavailable, make_fake_video, wait_for  # noqa: E402

CAP_KBIT = 300
CAPPED_SECONDS = 15.0


def video(page) -> dict:
    return (page.evaluate("window.whipgateStats") or {}).get("video") or {}


def run(estimation: bool, workdir: pathlib.Path) -> dict:
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
            t_cut = time.monotonic()
            viewer_host.shape(CAP_KBIT)
            downgrade = None
            while time.monotonic() - t_cut < CAPPED_SECONDS:
                if downgrade is None and (video(page).get("frameWidth") or 9999) < 640:
                    downgrade = time.monotonic() - t_cut
                time.sleep(0.1)
            after = video(page)
            capped = time.monotonic() - t_cut
            lost = (after.get("packetsLost") or 0) - (before.get("packetsLost") or 0)
            received = (after.get("packetsReceived") or 0) - (before.get("packetsReceived") or 0)
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
                "downgrade_s": downgrade,
                "loss": lost / max(1, lost + received),
                "upgrade_s": upgrade,
                "goodput_share": goodput_kbit / CAP_KBIT,
                "frames_while_capped": (after.get("framesDecoded") or 0) - (before.get("framesDecoded") or 0),
            }


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "never"
    return f"{value:.1f}{unit}" if unit == " s" else f"{value:.1%}"


def main() -> int:
    reason = lab_unavailable(browsers=True)
    if reason:
        print(f"cannot run: {reason}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ours = run(True, pathlib.Path(tmp) / "ours")
        base = run(False, pathlib.Path(tmp) / "base")
    print(json.dumps({"whipgate": ours, "baseline": base}, indent=1))
    print(f"\nlink cut from unlimited to {CAP_KBIT} kbit/s for {CAPPED_SECONDS:g} s, then lifted")
    print(f"{'':28} | {'whipgate':>10} | {'top layer only':>14}")
    rows = [
        ("time to downgrade", fmt(ours["downgrade_s"], " s"), fmt(base["downgrade_s"], " s")),
        ("loss while capped", fmt(ours["loss"]), fmt(base["loss"])),
        ("time to upgrade after lift", fmt(ours["upgrade_s"], " s"), fmt(base["upgrade_s"], " s")),
        ("goodput / capacity (capped)", fmt(ours["goodput_share"]), fmt(base["goodput_share"])),
        ("frames decoded while capped", str(ours["frames_while_capped"]), str(base["frames_while_capped"])),
    ]
    for name, a, b in rows:
        print(f"{name:28} | {a:>10} | {b:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
