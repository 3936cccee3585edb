"""rtc.udp_port_min..udp_port_max: sessions with sockets of their own bind them in a configured range, real components.

An aiortc publisher and viewers against a gateway process whose range holds three ports: every answer offers a
port of the range, the viewers decode; a session that finds the range full gets 503 (and leaves nothing behind);
a port returns to the range when its session ends; and once every session has ended the gateway holds none.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time

import httpx

from clients import WhepViewer, loopback_only
from gateway.transport import PortRange
from test_media import STREAM, assert_live_numbered_frames, start_publisher, start_viewer, stop_all
from test_udp_port import candidate_ports

RANGE_SIZE = 3


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_range(size: int) -> int:
    """The first of `size` consecutive UDP ports free on 127.0.0.1, below Linux's ephemeral range (32768-60999) so
    that no other socket is handed one of them meanwhile."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20_000, 32_000 - size)
        if all(bindable(first + i) for i in range(size)):
            return first
    raise RuntimeError(f"no {size} consecutive free UDP ports found")


async def viewers_listed(gw) -> int:
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{gw.base_url}/api/streams/{STREAM}/viewers")).json()
    return len(listed)


async def test_sessions_take_their_ports_from_the_range_and_give_them_back(gateway_factory) -> None:
    first = free_port_range(RANGE_SIZE)
    ports = set(range(first, first + RANGE_SIZE))
    gw = gateway_factory({"rtc": {"udp_port_min": first, "udp_port_max": first + RANGE_SIZE - 1}})
    clients: list = []
    try:
        with loopback_only():
            pub = await start_publisher(gw, clients, video_codec="H264", width=640, height=480, fps=30)
            viewers = [await start_viewer(gw, clients) for _ in range(2)]
            await asyncio.gather(*(v.wait_frames(30, timeout=20) for v in viewers))
            for v in viewers:
                assert_live_numbered_frames(v, pub, (640, 480))
            taken = [candidate_ports(c.response.text) for c in (pub, *viewers)]
            assert all(len(p) == 1 for p in taken), taken
            assert set().union(*taken) == ports, f"answers offered {taken}, the range is {sorted(ports)}"
            assert not any(bindable(port) for port in ports), "the gateway does not hold the ports it offered"

            # The range is full: the next session is refused with 503 and leaves no session behind.
            rejected_before = gw.metric("whipgate_http_rejected_total", 'status="503"')
            refused = await start_viewer_expecting(gw, clients, 503)
            assert refused.response.headers.get("Retry-After") == "5"
            assert "udp_port_min..udp_port_max" in refused.response.json()["detail"], refused.response.text
            assert gw.metric("whipgate_http_rejected_total", 'status="503"') == rejected_before + 1
            assert await viewers_listed(gw) == 2
            assert "no free UDP port in rtc.udp_port_min..udp_port_max" in gw.log()

            # A viewer leaves: its port returns to the range, and the next viewer gets that one.
            leaving = viewers[0]
            freed = candidate_ports(leaving.response.text)
            await leaving.stop(delete=True)
            clients.remove(leaving)
            late = await start_viewer(gw, clients)
            assert candidate_ports(late.response.text) == freed
            await late.wait_frames(20, timeout=20)
            assert_live_numbered_frames(late, pub, (640, 480))
            assert await viewers_listed(gw) == 2
    finally:
        await stop_all(clients)

    # Every session ended: the gateway holds no port of the range any more.
    deadline = time.monotonic() + 10
    while not all(bindable(port) for port in ports) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert all(bindable(port) for port in ports), [port for port in ports if not bindable(port)]
    assert gw.codec_violations() == ""


async def start_viewer_expecting(gw, clients: list, status: int) -> WhepViewer:
    viewer = WhepViewer(gw.base_url, STREAM)
    clients.append(viewer)
    await viewer.start(expect_status=status)
    return viewer


def test_port_range_skips_taken_ports_wraps_around_and_reports_a_full_range() -> None:
    """The allocator on real sockets: it searches on from the port it handed out last, wraps at the range's end,
    skips a port somebody else holds, says None when none is free, and raises for an address not on this host."""
    first = free_port_range(3)
    ports = PortRange(first, first + 2)
    ports._next = first + 1  # start the search at the middle port
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", first + 2))
    held = []
    try:
        held.append(ports.bind("127.0.0.1"))
        held.append(ports.bind("127.0.0.1"))  # first + 2 is taken: wraps to the first port
        assert [s.getsockname()[1] for s in held] == [first + 1, first]
        assert all(not s.getblocking() for s in held)
        assert ports.bind("127.0.0.1") is None  # full
        held.pop().close()  # `first` is free again
        again = ports.bind("127.0.0.1")
        assert again is not None and again.getsockname()[1] == first
        held.append(again)
        try:
            ports.bind("192.0.2.1")  # TEST-NET-1: not an address of this host (EADDRNOTAVAIL)
        except OSError as exc:
            assert exc.errno not in (errno.EADDRINUSE, errno.EACCES)
        else:
            raise AssertionError("binding an address of another host did not fail")
    finally:
        squatter.close()
        for s in held:
            s.close()


async def test_worker_processes_share_the_range(gateway_factory) -> None:
    """http.workers = 2 on a 5-port range: the publisher on the stream's worker, one viewer on each worker, and the
    relay that carries the stream to the other worker (its pull there, its viewer session at the owner) take the
    five ports between them, each bound once; a sixth session finds the range full, whichever worker gets it."""
    first = free_port_range(5)
    ports = set(range(first, first + 5))
    gw = gateway_factory(
        {"http": {"workers": 2}, "rtc": {"udp_port_min": first, "udp_port_max": first + 4}}, startup_timeout=60.0
    )
    clients: list = []
    try:
        with loopback_only():
            pub = await start_publisher(gw, clients, video_codec="VP8", width=320, height=240, fps=30)
            viewers = [await start_viewer(gw, clients) for _ in range(2)]
            landed = sorted(v.location.rsplit("/", 1)[1].split(".", 1)[0] for v in viewers)
            assert landed == ["w0", "w1"], landed  # round robin: one on each worker, one of them relayed
            await asyncio.gather(*(v.wait_frames(30, timeout=30) for v in viewers))
            for v in viewers:
                assert_live_numbered_frames(v, pub, (320, 240))
            offered = set().union(*(candidate_ports(c.response.text) for c in (pub, *viewers)))
            assert offered < ports and len(offered) == 3, (offered, sorted(ports))
            assert not any(bindable(port) for port in ports), [p for p in ports if bindable(p)]
            refused = await start_viewer_expecting(gw, clients, 503)
            assert refused.response.headers.get("Retry-After") == "5"
    finally:
        await stop_all(clients)
    assert gw.codec_violations() == ""
