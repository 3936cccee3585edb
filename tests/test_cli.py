"""The `whipgate` command line, run as a real process."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
APP_MODULE = ROOT / "gateway" / "app.py"


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def whipgate_command() -> list[str]:
    """The installed console script when it belongs to this interpreter, else the same entry point via -m."""
    script = shutil.which("whipgate", path=sysconfig.get_path("scripts"))
    return [script] if script else [sys.executable, "-m", "gateway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_config_exits_2_with_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[rtc]\nice_timeout = -1\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == f"whipgate: {config}: rtc.ice_timeout: must be a number > 0, got -1"
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"whipgate: {tmp_path / 'nope.toml'}: cannot read the file")


def test_bad_listen_exits_2():
    result = run_cli("serve", "--listen", "::1:8080")
    assert result.returncode == 2
    assert result.stderr.startswith("whipgate: command line: --listen: an IPv6 address must be in brackets")


def test_no_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    assert "serve" in result.stderr


def test_serve_help():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "--config FILE" in result.stdout and "--listen HOST:PORT" in result.stdout


@pytest.mark.skipif(not APP_MODULE.exists(), reason="gateway/app.py (create_app) is not in the repository yet")
def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[rtc]\nice_addresses = ["127.0.0.1"]\n')
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*whipgate_command(), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        deadline = time.monotonic() + 20
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if response.status_code == 200:
                    healthy = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert healthy, f"gateway never answered /healthz (exit code {proc.poll()}):\n{log_path.read_text()}"
        # The default is one worker per core this process may use: with more than one, a front answers and counts them.
        cores = len(os.sched_getaffinity(0))
        assert response.json() == ({"status": "ok", "workers": cores} if cores > 1 else {"status": "ok"})

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
