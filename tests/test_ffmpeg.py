"""FFmpeg 9's WHIP muxer as a publisher: H.264 (libx264) + Opus (libopus) from lavfi test sources.

FFmpeg's offer carries no candidates and says `a=setup:passive`, so the gateway must learn FFmpeg's address
from incoming connectivity checks (peer-reflexive candidate) and act as the DTLS client.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import time
from typing import Iterator, Optional

import imageio_ffmpeg
import pytest

from tests.clients import (
    WhepViewer,
    decode_failures,
    find_stream,
    get_metric,
    get_streams,
    loopback_only,
    wait_stream,
)

STREAM = "live"
TOKEN = "ffmpeg-publish-token-7f3c"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(autouse=True)
def _loopback_candidates():
    with loopback_only():
        yield


def ffmpeg_whip_command(url: str, token: Optional[str], seconds: int = 20, *, size: str = "640x360", gop: int = 30,
                        video_kbps: Optional[int] = None) -> list[str]:
    """FFmpeg's WHIP muxer publishing H.264 (libx264) from testsrc2 at 30 fps + Opus; `video_kbps`: a constant
    video rate (-b:v = -maxrate), else libx264's own."""
    rate = ["-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{video_kbps // 2}k"] if video_kbps else []
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info",
        "-re", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast", "-tune", "zerolatency", *rate,
        "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p",
        "-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "64k",
        "-f", "whip",
    ]
    if token is not None:
        cmd += ["-authorization", token]
    return cmd + [url]


class FFmpegProcess:
    def __init__(self, cmd: list[str], log: pathlib.Path) -> None:
        self.cmd = cmd
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def interrupt(self, timeout: float = 10) -> Optional[int]:
        """Ask FFmpeg to finish like Ctrl-C would (it then DELETEs its WHIP session)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def ffmpeg_runner(tmp_path: pathlib.Path) -> Iterator:
    started: list[FFmpegProcess] = []

    def run(url: str, token: Optional[str], seconds: int = 20) -> FFmpegProcess:
        p = FFmpegProcess(ffmpeg_whip_command(url, token, seconds), tmp_path / f"ffmpeg{len(started)}.log")
        started.append(p)
        return p

    yield run
    for p in started:
        p.kill()


def test_ffmpeg_has_whip_muxer_with_authorization_option() -> None:
    out = subprocess.run([FFMPEG, "-hide_banner", "-h", "muxer=whip"], capture_output=True, text=True, timeout=30)
    assert "-authorization" in out.stdout, out.stdout + out.stderr


async def test_ffmpeg_publishes_h264_opus_to_whep_viewer(gateway_factory, ffmpeg_runner) -> None:
    gw = gateway_factory({"streams": {STREAM: {"publish_token": TOKEN}}})
    video_before = await get_metric(gw.base_url, "whipgate_rtp_packets_forwarded_total", 'kind="video"')
    ff = ffmpeg_runner(gw.url(f"/whip/{STREAM}"), TOKEN, seconds=20)
    viewer = None
    try:
        t0 = time.monotonic()
        try:
            entry = await wait_stream(gw.base_url, STREAM, lambda e: bool(e and e.get("publisher")), timeout=10)
        except AssertionError:
            raise AssertionError(
                f"FFmpeg did not become a publisher (exit {ff.proc.poll()}):\n{ff.output()[-4000:]}\n"
                f"--- gateway log ---\n{gw.log()[-4000:]}"
            )
        print(f"FFmpeg listed as publisher {time.monotonic() - t0:.2f}s after launch: {entry}")
        kinds = {t["kind"]: t["codec"] for t in entry["tracks"]}
        assert kinds.get("video", "").upper() == "H264" and kinds.get("audio", "").lower() == "opus", entry

        await asyncio.sleep(2.5)  # join mid-GOP (-g 30: a keyframe every second), as a real viewer would
        viewer = WhepViewer(gw.base_url, STREAM)
        with decode_failures() as failures:
            await viewer.start()
            assert viewer.foreign_candidates == [], viewer.foreign_candidates
            try:
                await viewer.wait_frames(60, timeout=20)
                await viewer.wait_audio(50, timeout=10)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n--- ffmpeg ---\n{ff.output()[-3000:]}\n--- gateway ---\n{gw.log()[-3000:]}"
                )
        print(
            f"FFmpeg -> viewer: {viewer.frames} frames {dict(viewer.resolutions)}, first frame "
            f"{viewer.time_to_first_frame:.2f}s after WHEP start, {viewer.fps():.1f} fps, "
            f"audio frames {viewer.audio_frames} (rms {viewer.audio_peak_rms:.3f})"
        )
        assert viewer.time_to_first_frame < 3.0, f"first frame took {viewer.time_to_first_frame:.2f}s"
        assert not failures, f"{len(failures)} frames failed to decode at the viewer, first: {failures[:3]}"
        assert set(viewer.resolutions) == {(640, 360)}, viewer.resolutions
        assert viewer.audio_peak_rms > 0.02, f"audio decoded as silence (rms {viewer.audio_peak_rms})"
        assert 20 <= viewer.fps(30) <= 40, f"decoded {viewer.fps(30):.1f} fps from a 30 fps source"
        assert ff.proc.poll() is None, f"FFmpeg exited early:\n{ff.output()[-3000:]}"
        video_after = await get_metric(gw.base_url, "whipgate_rtp_packets_forwarded_total", 'kind="video"')
        assert video_after - video_before >= 60, (video_before, video_after)

        # Ctrl-C: FFmpeg DELETEs its session; the stream must go away.
        rc = ff.interrupt(timeout=10)
        print(f"FFmpeg after SIGINT: exit {rc}")
        await wait_stream(gw.base_url, STREAM, lambda e: e is None, timeout=5)
    finally:
        if viewer is not None:
            await viewer.stop(delete=True)
        ff.kill()
    assert gw.codec_violations() == "", gw.codec_violations()


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong-token", "no-token"])
async def test_ffmpeg_with_bad_token_is_refused(gateway_factory, ffmpeg_runner, token: Optional[str]) -> None:
    gw = gateway_factory({"streams": {STREAM: {"publish_token": TOKEN}}})
    ff = ffmpeg_runner(gw.url(f"/whip/{STREAM}"), token, seconds=5)
    try:
        rc = ff.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"FFmpeg still running 30 s after a refused publish:\n{ff.output()[-3000:]}")
    out = ff.output()
    assert rc != 0, out[-3000:]
    assert "401" in out, out[-3000:]
    assert await find_stream(gw.base_url, STREAM) is None, await get_streams(gw.base_url)
    assert await get_metric(gw.base_url, "whipgate_sessions", 'kind="publisher"') == 0


async def test_ffmpeg_publisher_outlives_consent_expiry(gateway_factory, ffmpeg_runner) -> None:
    """FFmpeg keeps sending media for 20 s; its session must stay up all along. The test gateway expires ICE
    consent after about 2 s of unanswered checks (0.5 s x 4), so a gateway that judges a publisher's
    liveness by consent alone would drop a peer that streams but does not answer consent checks."""
    gw = gateway_factory({"streams": {STREAM: {"publish_token": TOKEN}}})
    ff = ffmpeg_runner(gw.url(f"/whip/{STREAM}"), TOKEN, seconds=20)
    await wait_stream(gw.base_url, STREAM, lambda e: bool(e and e.get("publisher")), timeout=10)
    t0 = time.monotonic()
    gauges = []
    while time.monotonic() - t0 < 8.0:
        entry = await find_stream(gw.base_url, STREAM)
        if entry is None or ff.proc.poll() is not None:
            raise AssertionError(
                f"FFmpeg's session ended {time.monotonic() - t0:.2f}s after it was listed while FFmpeg was "
                f"{'running' if ff.proc.poll() is None else f'exited ({ff.proc.poll()})'}\n"
                f"--- gateway ---\n{gw.log()[-2500:]}\n--- ffmpeg ---\n{ff.output()[-1500:]}"
            )
        gauges.append(await get_metric(gw.base_url, "whipgate_sessions", 'kind="publisher"'))
        await asyncio.sleep(0.25)
    assert all(g == 1.0 for g in gauges), gauges
    print(f"FFmpeg publisher still up {time.monotonic() - t0:.1f}s after it was listed")
