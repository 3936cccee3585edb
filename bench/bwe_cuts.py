"""Repeated cuts on one shaped link: what the bottleneck drops before and after the gateway's decision.

bench/bwe.py runs one cut per lab and reads loss at the viewer only. This one keeps one lab (a Chromium publisher
with 3 VP8 simulcast layers, a Chromium viewer in its own namespace, tests/netlab.py) and cuts the viewer's link
from unlimited to 300 kbit/s `--cuts` times (each for ~6 s, then lifted until the viewer is back on 1280x720).
Per cut it polls the shaper's drop counter (`tc -s qdisc`, every few ms for 1.5 s) and prints: the gateway's
decision to move the viewer down (its log line choosing layer 0), the tbf drops before and after that decision,
the time until the viewer decodes the lower layer, the viewer's video packets lost over the ~6 s (its
`packetsLost`), what the gateway itself dropped meanwhile (whipgate_dropped_total by reason) and whether the
viewer's video waited on an early warning (its stats' `early_holds`, `early_holds_released`). Drops after the
decision are what the gateway itself sent into a full queue (a keyframe, a probe, retransmissions); drops
before it are what was on its way when the cut came.

    sudo python3 bench/bwe_cuts.py [--cuts 8] [--buffer-ms 100]   (root for namespaces; Debian chromium)
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bwe import CAP_KBIT, loss_between, video  # noqa: E402
from bench.load import parse_drops  # noqa: E402
from netlab import LabBrowsers, NetLab, lab_unavailable, make_fake_video, wait_for  # noqa: E402


def log_time(line: str) -> float | None:
    match = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+,\d+)", line)
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if match else None


def gateway_drops(gw) -> dict[str, int]:  # noqa: ANN001 (tests/netlab.py LabGateway)
    """The gateway's whipgate_dropped_total by reason (what it dropped on purpose, or refused: pacer, NACK budget)."""
    return {reason: int(count) for reason, count in parse_drops(gw.metrics()).items()}


def early_holds(gw) -> tuple[int, int]:  # noqa: ANN001 (tests/netlab.py LabGateway)
    """The viewer's early holds and those released unconfirmed (its video track's stats, viewer_bandwidth.py)."""
    status, body = gw.get("/api/streams/bench/viewers")
    tracks = [t for viewer in (json.loads(body) if status == 200 else []) for t in viewer.get("tracks", [])]
    return (sum(t.get("early_holds") or 0 for t in tracks), sum(t.get("early_holds_released") or 0 for t in tracks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, default=8)
    parser.add_argument("--buffer-ms", type=int, default=100, help="tbf latency: the shaped link's queue (ms)")
    parser.add_argument("--trace", action="store_true",
                        help="gateway at log level debug; print each feedback's estimator line from the cut to the decision")
    args = parser.parse_args()
    reason = lab_unavailable(browsers=True)
    if reason:
        print(f"cannot run: {reason}")
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp, NetLab() as lab:
        workdir = pathlib.Path(tmp)
        viewer_host = lab.add_host("viewer")
        fake = make_fake_video(workdir / "cam.y4m", width=1280, height=720, fps=30, seconds=4)
        with LabBrowsers(lab, workdir / "browsers", fake_video=fake) as browsers:
            config: dict = {"rtc": {"bandwidth_estimation": True}}
            if args.trace:
                config["log"] = {"level": "debug"}
            gw = lab.start_gateway(workdir / "gw", config)
            browsers.open_publisher(gw, "bench", simulcast=True, codec="VP8")
            page = browsers.open_viewer(viewer_host, gw, "bench")
            for cut in range(args.cuts):
                wait_for(lambda: video(page).get("frameWidth") == 1280, 60, "viewer never (re)reached 1280x720")
                time.sleep(4)
                before = video(page)
                dropped_before = gateway_drops(gw)
                holds_before = early_holds(gw)
                wall_cut, t_cut = time.time(), time.monotonic()
                viewer_host.shape(CAP_KBIT, latency_ms=args.buffer_ms)
                drops: list[tuple[float, int]] = []
                decoded = None
                while time.monotonic() - t_cut < 6:
                    if time.monotonic() - t_cut < 1.5:
                        drops.append((time.time(), viewer_host.qdisc_stats().get("drops") or 0))
                    else:
                        time.sleep(0.05)
                    if decoded is None and len(drops) % 5 == 0 and (video(page).get("frameWidth") or 9999) < 640:
                        decoded = time.monotonic() - t_cut
                after = video(page)
                dropped = {reason: n - dropped_before.get(reason, 0) for reason, n in gateway_drops(gw).items()}
                holds = [n - m for n, m in zip(early_holds(gw), holds_before)]
                total = viewer_host.qdisc_stats().get("drops") or 0
                viewer_host.shape(None)
                decided = next((t for line in gw.log().splitlines()
                                if " layer 0/" in line and (t := log_time(line)) is not None and t >= wall_cut), None)
                before_decision = max([d for t, d in drops if decided is not None and t <= decided] or [0])
                lost, received = loss_between(before, after)
                row = {
                    "decision_ms": None if decided is None else round(1000 * (decided - wall_cut)),
                    "decoded_s": None if decoded is None else round(decoded, 2),
                    "drops_before": before_decision,
                    "drops_after": total - before_decision,
                    "lost": lost,
                    "loss": lost / max(1, lost + received),
                    "gateway_drops": {reason: n for reason, n in dropped.items() if n},
                    "early_holds": holds[0],
                    "early_holds_released": holds[1],
                }
                rows.append(row)
                print(f"cut {cut}: decision {row['decision_ms']} ms, lower layer decoded after {row['decoded_s']} s, "
                      f"tbf drops before / after the decision {row['drops_before']} / {row['drops_after']}, "
                      f"video lost {lost} of {lost + received} ({row['loss']:.1%}); early holds {holds[0]} (released "
                      f"unconfirmed {holds[1]}); the gateway dropped {row['gateway_drops'] or 'nothing'}", flush=True)
                # The layer choices of the cut's first 1.5 s, with their reasons; with --trace each feedback's estimate
                # until the decision, or over the whole cut when the pacer dropped video (its queue overflowed).
                whole = args.trace and row["gateway_drops"].get("pacer_queue_full")
                for line in gw.log().splitlines():
                    t = log_time(line)
                    if t is None or not wall_cut <= t < wall_cut + (6 if whole else 1.5):
                        continue
                    if ": layer " in line:
                        print(f"    +{1000 * (t - wall_cut):.0f} ms {line.split(': layer ', 1)[1]}")
                    elif args.trace and ": estimate " in line and (whole or decided is None or t <= decided + 0.05):
                        print(f"    +{1000 * (t - wall_cut):.0f} ms feedback: {line.split(': estimate ', 1)[1]}")
                    elif args.trace and "early warning" in line and (whole or decided is None or t <= decided + 0.05):
                        print(f"    +{1000 * (t - wall_cut):.0f} ms {line.split('viewer_bandwidth: ', 1)[-1]}")
                time.sleep(6)
    print(f"\n{len(rows)} cuts to {CAP_KBIT} kbit/s, tbf queue {args.buffer_ms} ms: mean tbf drops before / after the "
          f"decision {statistics.mean(r['drops_before'] for r in rows):.1f} / "
          f"{statistics.mean(r['drops_after'] for r in rows):.1f}, mean video lost "
          f"{statistics.mean(r['lost'] for r in rows):.1f} packets ({statistics.mean(r['loss'] for r in rows):.1%}); "
          f"early holds in {sum(1 for r in rows if r['early_holds'])} of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
