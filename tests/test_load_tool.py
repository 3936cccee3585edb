"""bench/load.py at a tiny size: a real gateway, a real publisher, three real viewers (ICE, DTLS, SRTP on loopback).

This checks that the load tool measures something real, not how fast anything is (speed figures belong in
BENCHMARKS.md, printed beside the baseline): packets arrive at every viewer, loss is parsed from sequence
numbers, sampled packets authenticate and match what the publisher sent, latency and time to first keyframe
are present, and the printed table carries the step.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", [[], ["--transport-cc", "--viewer-feedback", "62", "--publisher-pacing", "2.5"],
                                   ["--workers", "2"]],
                         ids=["plain", "browser-like", "workers"])
def test_load_tool_tiny_run(tmp_path: pathlib.Path, extra: list[str]) -> None:
    """browser-like: the viewers negotiate transport-cc (the gateway stamps, logs and paces what it sends them) and
    send transport-wide feedback every 62 ms as Chromium does, which the gateway matches with what it sent (none
    unknown) and estimates from; the publisher paces its video as libwebrtc does; the same checks hold.
    workers: the gateway as deployed on a multi-core machine (a front and two workers; the viewers are spread over
    both, so one worker gets the stream relayed): its CPU is read from all three processes."""
    out_json = tmp_path / "steps.json"
    cmd = [sys.executable, str(ROOT / "bench" / "load.py"), "--viewers", "3", "--duration", "3", "--warmup", "1",
           "--no-baseline", "--profiles", "600k", "--json", str(out_json), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=str(ROOT))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    steps = json.loads(out_json.read_text())
    assert len(steps) == 1, steps
    step = steps[0]
    assert step["server"] == "whipgate" and step["viewers"] == 3, step
    assert step["connected"] == 3 and step["failed"] == 0, step
    # 600 kbit/s H.264 (~97 packets/s) + Opus (50 packets/s) to each of 3 viewers for ~3 s
    assert step["packets"] > 3 * 100 * 2, step
    assert step["expected"] >= step["packets"] > 0, step
    assert 0.0 <= step["loss"] < 0.05, step
    assert 60 <= step["video_pps_per_viewer"] <= 140, step
    assert step["silent_viewers"] == 0, step  # every viewer received video in the window
    assert step["server_cpu_s"] > 0 and step["us_per_packet"] > 0 and step["packets_per_core_s"] > 0, step
    assert step["latency_samples"] > 0, step
    assert 0 < step["latency_ms_p50"] <= step["latency_ms_p99"] < 2000, step
    assert step["kernel_latency_ms_p99"] <= step["kernel_latency_ms_p999"], step
    assert step["gateway_drops"] == {}, step  # /metrics read before and after the window; nothing dropped
    assert step["no_first_frame"] == 0 and 0 < step["ttff_ms_p50"] <= step["ttff_ms_p95"] < 10000, step
    assert step["verified"] > 0 and step["auth_failures"] == 0 and step["unknown_payloads"] == 0, step
    assert step["rss_per_viewer_kb"] is not None, step
    assert "| 3 | " in run.stdout and "## 600k" in run.stdout, run.stdout
    assert "loss" in run.stdout and "whipgate" in run.stdout, run.stdout
    assert step["server_processes"] == (3 if "--workers" in extra else 1), step
    if "--workers" in extra:
        assert "a front + 2 workers" in run.stdout and "highest N carried by 2 workers" in run.stdout, run.stdout
    if "--transport-cc" in extra:
        assert "viewers with transport-cc" in run.stdout and "publisher paced at 2.5x" in run.stdout, run.stdout
        assert 12 <= step["feedback_per_viewer_s"] <= 17, step  # one per 62 ms
        assert step["feedback_unknown"] == 0 and step["estimate_kbps_p50"] > 300, step
    else:
        assert step["feedback_per_viewer_s"] == 0 and step["estimate_kbps_p50"] is None, step


@pytest.mark.timeout(60)
def test_feedback_bench_runs() -> None:
    """bench/feedback.py: the gateway's own TWCC feedback of a 600 kbit/s stream, read back by a viewer's
    ViewerBandwidth through SRTCP and the RTCP parser, once with the Python matcher and once with the C one (when
    built): ~16 feedbacks per second at 62 ms, every one matching the send log (no unknown packets), an estimate
    from each, and their cost printed."""
    from gateway.aiortc_adapter import FeedbackMatcher

    cmd = [sys.executable, str(ROOT / "bench" / "feedback.py"), "--seconds", "3"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=str(ROOT))
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in run.stdout.splitlines() if line.startswith("| python ") or line.startswith("| c ")}
    assert set(rows) == ({"python", "c"} if FeedbackMatcher is not None else {"python"}), run.stdout
    for cells in rows.values():
        per_second, total_us, estimate = float(cells[0]), float(cells[5]), cells[-1]
        assert 15 <= per_second <= 17 and total_us > 0, run.stdout
        assert estimate.endswith("kbit/s") and "unknown" not in estimate and int(estimate.split()[0]) > 300, run.stdout


def test_a_step_with_a_silent_viewer_is_not_carried() -> None:
    """A step whose averages look fine but where one viewer received nothing in the window (its session ended, say)
    does not count as carried: the averages alone once read a 1,000-viewer step with 75% of its sessions ended as
    "0.00% loss"."""
    sys.path.insert(0, str(ROOT))
    from bench.load import Step, carried

    fine = Step(server="whipgate", profile="600k", viewers=10, connected=10, packets=10_000, expected=10_000,
                fps_per_viewer=30.0, kernel_latency_ms_p50=2.0)
    assert carried(fine)
    fine.silent_viewers = 1
    assert not carried(fine)
