"""rtc.udp_receive_buffer: the kernel receive buffer of the gateway's UDP sockets (SO_RCVBUF), real sockets.

With rtc.udp_port one socket takes every viewer's RTCP and every publisher's media; with the kernel's default
buffer (~208 KiB) bench/load.py measured hundreds of datagrams dropped by the kernel at 500 viewers that send
feedback. These tests read the buffer back from the sockets the gateway really binds."""

from __future__ import annotations

import logging
import pathlib
import socket

import pytest

from gateway import aiortc_adapter as rtc
from gateway import transport as transport_module
from gateway.transport import PeerTransport, shared_ports

def rmem_max() -> int:
    return int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())


def peer(receive_buffer: int, udp_port: int = 0) -> PeerTransport:
    return PeerTransport(
        addresses=["127.0.0.1"],
        announced_ip=None,
        consent_interval=5.0,
        consent_failures=6,
        udp_port=udp_port,
        receive_buffer=receive_buffer,
        on_rtp=lambda data, arrival: None,
        on_rtcp=lambda data: None,
        on_connected=lambda: None,
        on_closed=lambda reason: None,
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_session_socket_gets_the_configured_buffer() -> None:
    asked = min(2 << 20, rmem_max())
    assert asked > 2 * 256 * 1024, "net.core.rmem_max is too low to tell a sized buffer from aioice's"
    sized, default = peer(asked), peer(0)
    try:
        await sized.gather()
        await default.gather()
        [sock] = rtc.own_sockets(sized._gatherer)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= asked
        [plain] = rtc.own_sockets(default._gatherer)  # 0 leaves it as bound (aioice asks 256 KiB)
        assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < asked
    finally:
        await sized.close("test")
        await default.close("test")


async def test_the_shared_port_gets_the_configured_buffer() -> None:
    asked = min(2 << 20, rmem_max())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < asked, "the kernel's default is that large"
    session = peer(asked, udp_port=free_udp_port())
    try:
        await session.gather()
        [port] = await shared_ports(["127.0.0.1"], session._udp_port)
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= asked
        assert rtc.own_sockets(session._gatherer) == []  # the session binds nothing of its own
    finally:
        await session.close("test")
        port.transport.close()


async def test_a_request_above_the_kernel_cap_is_logged_with_the_sysctl(monkeypatch, caplog) -> None:
    monkeypatch.setattr(transport_module, "_receive_buffer_warned", False)
    asked = rmem_max() * 4  # Linux grants at most twice rmem_max (bookkeeping included)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, caplog.at_level(logging.WARNING):
        granted = transport_module.set_receive_buffer(sock, asked)
        assert 0 < granted < asked
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert any("net.core.rmem_max" in r.getMessage() for r in caplog.records), caplog.text
