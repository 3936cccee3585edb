"""What a browser viewer's congestion feedback costs the gateway, beside what forwarding to it costs.

bench/load.py's viewers send no RTCP, so its figures hold the forwarding only. A real browser with transport-cc
sends transport-wide CC feedback (RTPFB FMT 15) every ~50-100 ms (Chromium: ~62 ms measured at these rates in
bench/bwe.py runs). Per feedback the gateway runs, synchronously in its event loop (whep/session.py
`ViewerSession.on_rtcp`): SRTCP unprotect (libsrtp through pylibsrtp, in the adapter's demultiplexer), the compound
RTCP parse (`gateway.rtcp.parse_or_count`), `ViewerBandwidth.on_feedback` (TWCC parse + the GCC-style estimator)
and `ViewerBandwidth.select` (layer choice; only for simulcast streams). This bench times those steps on feedback
built by the gateway's own `TwccRecorder` (what the gateway sends its publishers) from the arrivals of a 600
kbit/s video + Opus stream sent through a `ViewerBandwidth`, at the feedback interval given, and prints the cost
per viewer-second next to the forwarding cost per viewer-second that bench/load.py measured.

    taskset -c 1 python3 bench/feedback.py [--interval-ms 62] [--seconds 20] [--forward-us 5.9]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pylibsrtp import Policy, Session  # noqa: E402

from gateway.aiortc_adapter import FeedbackMatcher  # noqa: E402
from gateway.rtcp import TransportCcFeedback, parse_or_count  # noqa: E402
from simulcast.twcc import TwccRecorder  # noqa: E402
from simulcast.viewer_bandwidth import ViewerBandwidth  # noqa: E402


class FakeLayer:
    """What `ViewerBandwidth.select` reads of a simulcast layer."""

    def __init__(self, spatial_id: int, bitrate: int) -> None:
        self.spatial_id = spatial_id
        self.bitrate = bitrate
        self.active = True

    def settled(self, now: float) -> bool:
        return True  # alive for longer than simulcast/layer.py LAYER_SETTLE


def stream(seconds: float, video_pps: int = 81, audio_pps: int = 50) -> list[tuple[int, int]]:
    """(send time µs, size bytes) of a 600 kbit/s video (~81 packets/s in frames of 2-3) + Opus stream."""
    out = []
    for k in range(int(seconds * 30)):  # 30 frames/s
        t = k * 33_333
        for i in range(video_pps // 30 + (1 if k % 3 < video_pps % 30 / 10 else 0)):
            out.append((t + i * 200, 1200))
    out += [(k * 20_000, 120) for k in range(int(seconds * audio_pps))]
    out.sort()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-ms", type=float, default=62.0, help="feedback interval of the viewer")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of stream to replay")
    parser.add_argument("--forward-us", type=float, default=5.9,
                        help="gateway CPU µs per forwarded packet for the comparison (bench/load.py --transport-cc)")
    args = parser.parse_args()

    packets = stream(args.seconds)
    results = {}
    paths = ["python", "c"] if FeedbackMatcher is not None else ["python"]
    for path in paths:  # the same stream and feedback through each path
        results[path] = replay(packets, args.interval_ms, compiled=path == "c")
    forward_us_s = args.forward_us * len(packets) / args.seconds
    print(f"{len(packets) / args.seconds:.0f} media packets/s per viewer, feedback every {args.interval_ms:g} ms; "
          f"forwarding {forward_us_s:.0f} µs per viewer-second ({args.forward_us:g} µs x "
          f"{len(packets) / args.seconds:.0f} packets)")
    print("| match | feedbacks/s | unprotect | parse | on_feedback | select | total µs | µs per viewer-s "
          "| + forwarding | viewers/core, feedback alone | with forwarding | estimate at end |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path, (reports, per_report, estimate, unknown) in results.items():
        total = sum(per_report.values())
        per_second = reports / args.seconds
        feedback_us_s = total * per_second
        print(f"| {path} | {per_second:.1f} | " + " | ".join(f"{v:.1f}" for v in per_report.values())
              + f" | {total:.1f} | {feedback_us_s:.0f} | {feedback_us_s / forward_us_s:+.0%} "
              f"| {1e6 / feedback_us_s:,.0f} | {1e6 / (feedback_us_s + forward_us_s):,.0f} "
              f"| {estimate // 1000} kbit/s{f', {unknown} unknown' if unknown else ''} |")


def replay(packets: list[tuple[int, int]], interval_ms: float, *, compiled: bool
           ) -> tuple[int, dict[str, float], int, int]:
    """Send `packets` through a ViewerBandwidth and time what each feedback costs; `compiled`: with the C matcher
    (gateway/_srtp_send.c FeedbackMatcher) when built, else SendSideEstimator._match_feedback in Python."""
    key = os.urandom(30)
    profile = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    viewer_tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    gateway_rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))

    bandwidth = ViewerBandwidth(transport_cc=True)
    if not compiled:
        bandwidth.estimator._native = bandwidth.estimator._native_match = None  # the Python matcher and filter
    recorder = TwccRecorder()
    layers = [FakeLayer(0, 150_000), FakeLayer(1, 500_000), FakeLayer(2, 1_500_000)]
    rng = random.Random(1)
    base = time.monotonic_ns() // 1000
    interval = int(interval_ms * 1000)
    next_feedback = interval
    timings = {"unprotect": 0.0, "parse": 0.0, "on_feedback": 0.0, "select": 0.0}
    reports = 0
    for send, size in packets:
        seq = bandwidth.next_seq()
        bandwidth.log.record(seq, size, base + send)
        recorder.record(seq, send + 20_000 + rng.randrange(0, 2_000))  # 20 ms one way, up to 2 ms of jitter
        if send >= next_feedback:
            next_feedback += interval
            for fb in recorder.build_feedback(0x1111, 0x2222):
                wire = viewer_tx.protect_rtcp(fb)
                t0 = time.perf_counter()
                clear = gateway_rx.unprotect_rtcp(wire)
                t1 = time.perf_counter()
                parsed = parse_or_count(clear)
                t2 = time.perf_counter()
                for packet in parsed:
                    if isinstance(packet, TransportCcFeedback):
                        bandwidth.on_feedback(packet.raw)
                t3 = time.perf_counter()
                bandwidth.select(layers)
                t4 = time.perf_counter()
                timings["unprotect"] += t1 - t0
                timings["parse"] += t2 - t1
                timings["on_feedback"] += t3 - t2
                timings["select"] += t4 - t3
                reports += 1
    per_report = {k: v / reports * 1e6 for k, v in timings.items()}
    return reports, per_report, bandwidth.estimator.estimate_bps, bandwidth.estimator.unknown_packets


if __name__ == "__main__":
    main()
