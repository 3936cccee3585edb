"""The codec guard the media tests rely on really traps decoder/encoder construction.

Each probe runs in a fresh interpreter (the guard monkeypatches aiortc and PyAV process-wide), installs the
guard exactly like tests/guarded_gateway.py does for the gateway, and tries one entry point. The probe must
raise RuntimeError and the guard log must name what was called. A control run without the guard proves the
same call works normally, so a passing test cannot come from an entry point that was broken anyway.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBES = {
    "aiortc.codecs.get_decoder": (
        "import aiortc.codecs\n"
        "from aiortc.rtcrtpparameters import RTCRtpCodecParameters\n"
        "aiortc.codecs.get_decoder(RTCRtpCodecParameters(mimeType='video/VP8', clockRate=90000, payloadType=96))"
    ),
    "aiortc.codecs.get_encoder": (
        "import aiortc.codecs\n"
        "from aiortc.rtcrtpparameters import RTCRtpCodecParameters\n"
        "aiortc.codecs.get_encoder(RTCRtpCodecParameters(mimeType='audio/opus', clockRate=48000, channels=2,"
        " payloadType=111))"
    ),
    "aiortc.codecs.vpx.Vp8Decoder": "import aiortc.codecs.vpx\naiortc.codecs.vpx.Vp8Decoder()",
    "aiortc.codecs.h264.H264Decoder": "import aiortc.codecs.h264\naiortc.codecs.h264.H264Decoder()",
    "aiortc.codecs.opus.OpusEncoder": "import aiortc.codecs.opus\naiortc.codecs.opus.OpusEncoder()",
    "av.CodecContext.create": "import av\nav.CodecContext.create('h264', 'r')",
}

RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    if {guarded!r}:
        from tests.guarded_gateway import install_guards
        install_guards()
    try:
        exec(compile({code!r}, "<probe>", "exec"))
    except BaseException as exc:
        print(json.dumps({{"raised": type(exc).__name__, "message": str(exc)}}))
    else:
        print(json.dumps({{"raised": None, "message": ""}}))
    """
)


def run_probe(code: str, guarded: bool, log: pathlib.Path) -> dict:
    env = dict(os.environ, WHIPGATE_CODEC_GUARD_LOG=str(log))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER.format(root=str(ROOT), guarded=guarded, code=code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(PROBES))
def test_guard_traps_codec_entry_point(name: str, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "guard.log"
    result = run_probe(PROBES[name], guarded=True, log=log)
    assert result["raised"] == "RuntimeError", result
    assert "must not run inside the gateway" in result["message"], result
    assert log.exists(), "the guard did not write its log"
    text = log.read_text()
    assert f"{name} was called" in text, text
    assert "<probe>" in text, "the log should hold the caller's stack"


@pytest.mark.parametrize("name", sorted(PROBES))
def test_entry_point_works_without_guard(name: str, tmp_path: pathlib.Path) -> None:
    """Control: the same call succeeds when the guard is not installed, and nothing is logged."""
    log = tmp_path / "guard.log"
    result = run_probe(PROBES[name], guarded=False, log=log)
    assert result["raised"] is None, result
    assert not log.exists()


def test_guard_lists_what_it_trapped() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.guarded_gateway import install_guards\n"
        "print('\\n'.join(install_guards()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    trapped = set(out.stdout.split())
    for name in ("av.CodecContext.create", "aiortc.codecs.get_decoder", "aiortc.codecs.get_encoder",
                 "aiortc.codecs.vpx.Vp8Decoder", "aiortc.codecs.vpx.Vp8Encoder",
                 "aiortc.codecs.h264.H264Decoder", "aiortc.codecs.h264.H264Encoder",
                 "aiortc.codecs.opus.OpusDecoder", "aiortc.codecs.opus.OpusEncoder"):
        assert name in trapped, f"{name} not trapped; trapped: {sorted(trapped)}"
