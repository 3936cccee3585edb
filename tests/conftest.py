"""Shared fixtures: a real gateway process per test, free ports, TOML config writing."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES_SDP = SHARED / "fixtures" / "sdp"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Write a two-level config dict (tables, arrays of tables, nested tables) as TOML."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_array(v)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)
            elif _is_table_array(v):
                for item in v:
                    lines.append(f"[[{prefix + '.' if prefix else ''}{_key(k)}]]")
                    for ik, iv in item.items():
                        lines.append(f"{_key(ik)} = {_toml_value(iv)}")

    table("", config)
    return "\n".join(lines) + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Gateway:
    base_url: str
    host: str
    port: int
    proc: subprocess.Popen
    log_path: pathlib.Path
    guard_log: pathlib.Path
    config_path: pathlib.Path
    stopped: bool = field(default=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def codec_violations(self) -> str:
        """What the codec guard recorded: empty when nothing tried to decode or encode."""
        return self.guard_log.read_text() if self.guard_log.exists() else ""

    def metrics(self) -> str:
        return httpx.get(self.url("/metrics"), timeout=5).text

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of one Prometheus metric, optionally filtered by a label substring."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# Defaults for gateways in tests: loopback candidates only, fast consent expiry so a vanished peer is
# detected in about two seconds instead of RFC 7675's thirty.
TEST_CONFIG: dict[str, Any] = {
    "rtc": {
        "ice_addresses": ["127.0.0.1"],
        "consent_interval": 0.5,
        "consent_failures": 4,
        "ice_timeout": 10.0,
    },
    # Tests that a publisher's end ends its viewers run without the 10 s default wait for a returning publisher;
    # tests/test_publisher_continuity.py sets its own.
    "whep": {"publisher_grace": 0},
    # One process (the default is one worker per core): tests look at one gateway's logs, metrics and sessions;
    # tests/test_workers.py runs the front and its workers.
    "http": {"workers": 1},
}


def launch_gateway(
    workdir: pathlib.Path,
    config: dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
    name: str = "gw",
    startup_timeout: float = 20,
) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(host) if netns is None else 18080
    merged = deep_merge(TEST_CONFIG, {"http": {"listen": f"{host}:{port}"}, "rtc": {"ice_addresses": [host]}})
    merged = deep_merge(merged, config or {})
    config_path = workdir / f"{name}.toml"
    config_path.write_text(to_toml(merged))
    log_path = workdir / f"{name}.log"
    guard_log = workdir / f"{name}.codec-guard.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", WHIPGATE_CODEC_GUARD_LOG=str(guard_log))
    cmd = [sys.executable, str(ROOT / "tests" / "guarded_gateway.py"), "serve", "--config", str(config_path)]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    logf = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    gw = Gateway(f"http://{host}:{port}", host, port, proc, log_path, guard_log, config_path)
    if netns is None:
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
            try:
                if httpx.get(gw.url("/healthz"), timeout=1).status_code == 200:
                    return gw
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        gw.stop()
        raise RuntimeError(f"gateway did not become healthy:\n{gw.log()}")
    return gw


@pytest.fixture
def gateway_factory(tmp_path: pathlib.Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: dict[str, Any] | None = None, **kwargs: Any) -> Gateway:
        gw = launch_gateway(tmp_path / f"gw{len(started)}", config, name=f"gw{len(started)}", **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A gateway with the test defaults and no stream tokens."""
    return gateway_factory()
