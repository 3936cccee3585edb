"""One peer's ICE + DTLS + SRTP transport (aiortc objects, driven through gateway.aiortc_adapter).

A PeerTransport is created on the HTTP POST: it gathers host candidates on the configured addresses, gives
the answer its ICE credentials, candidates and DTLS fingerprint, then connects in the background. Decrypted
RTP/RTCP reach the owner's synchronous `on_rtp` / `on_rtcp`; `send_rtp` / `send_rtcp` protect and send at
once. When ICE or DTLS fails, the peer goes silent (below) or connecting takes longer than `ice_timeout`,
the transport closes itself and calls `on_closed` once.

Liveness: we send RFC 7675 consent checks every `consent_interval` (randomised, §5.1), and end the session
when for `consent_interval * consent_failures` seconds neither a check was answered nor an authenticated
SRTP/SRTCP packet arrived. Received media counts because FFmpeg 9's WHIP muxer answers no STUN after its
handshake: a consent-only rule would drop every FFmpeg publisher after 30 s while its media still flows.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import aioice.ice

from gateway import aiortc_adapter as rtc
from gateway import metrics

log = logging.getLogger(__name__)

_certificate: Optional[rtc.RTCCertificate] = None


def certificate() -> rtc.RTCCertificate:
    """One DTLS certificate per process (RFC 8827 §6.5 allows reuse; peers pin it by fingerprint)."""
    global _certificate
    if _certificate is None:
        _certificate = rtc.share_dtls_context(rtc.RTCCertificate.generateCertificate())
    return _certificate


_shared_ports: dict[tuple[str, int], rtc.SharedUdpPort] = {}
_shared_ports_lock: Optional[asyncio.Lock] = None
_receive_buffer_warned = False


def set_receive_buffer(sock: Any, size: int) -> int:
    """Ask for a `size`-byte kernel receive buffer (SO_RCVBUF; 0: leave the default) and return what the socket has.
    A socket that many peers send to (`rtc.udp_port`: every viewer's RTCP, every publisher's media) fills the
    default ~208 KiB in a few ms of a busy event loop, and the kernel then drops datagrams; a publisher's packet dropped
    there is lost for every viewer. Linux caps the request at net.core.rmem_max (and reports twice what it grants, the
    bookkeeping included); a cap below `size` is logged once."""
    global _receive_buffer_warned
    if size <= 0:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.warning("rtc.udp_receive_buffer: could not set SO_RCVBUF to %d bytes: %s", size, exc)
        return 0
    if granted < size and not _receive_buffer_warned:
        _receive_buffer_warned = True
        log.warning(
            "rtc.udp_receive_buffer asks %d bytes, the kernel granted %d (net.core.rmem_max caps it; raise it with "
            "`sysctl -w net.core.rmem_max=%d`)", size, granted, size,
        )
    return granted


async def shared_ports(addresses: list[str], port: int, receive_buffer: int = 0) -> list[rtc.SharedUdpPort]:
    """The process's one socket per address for `rtc.udp_port`, opened on first use and kept for its lifetime."""
    global _shared_ports_lock
    if _shared_ports_lock is None:
        _shared_ports_lock = asyncio.Lock()
    async with _shared_ports_lock:
        out = []
        for address in addresses:
            shared = _shared_ports.get((address, port))
            if shared is None or shared.transport is None or shared.transport.is_closing():
                shared = rtc.SharedUdpPort(address, port, metrics.count_drop)
                await shared.open()
                set_receive_buffer(shared.socket, receive_buffer)
                _shared_ports[(address, port)] = shared
            out.append(shared)
        return out


class PortRangeExhausted(OSError):
    """No port of `rtc.udp_port_min..udp_port_max` was free on any host address: the session gets a 503."""


class PortRange:
    """Ports of sessions with sockets of their own from `rtc.udp_port_min..udp_port_max`, so that operators open
    that range in their firewall instead of every ephemeral port (what mediasoup's rtcMinPort/rtcMaxPort and
    Janus's rtp_port_range do). The kernel is the allocator: a port is free when bind() succeeds, so a session's
    port returns to the range when its socket closes, and worker processes (http.workers) share the range
    without talking to each other. The search starts after the port handed out last (from a random place at start),
    so a port just freed is not reused at once while its old peer may still send to it."""

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self._next = random.randint(first, last)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def bind(self, address: str) -> Optional[socket.socket]:
        """A non-blocking UDP socket bound on `address` at a free port of the range, or None when every port is
        taken. Raises OSError for anything else (the address is not this host's, say)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        size = self.size
        for step in range(size):
            port = self.first + (self._next - self.first + step) % size
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._next = self.first + (port + 1 - self.first) % size
            sock.setblocking(False)
            return sock
        return None


_port_ranges: dict[tuple[int, int], PortRange] = {}


def port_range(first: int, last: int) -> PortRange:
    """The process's allocator for this range (its search position is shared by every session)."""
    found = _port_ranges.get((first, last))
    if found is None:
        found = _port_ranges[(first, last)] = PortRange(first, last)
    return found


def host_addresses(configured: tuple[str, ...]) -> list[str]:
    """The addresses host candidates are gathered on: the configured ones, else every non-loopback IPv4."""
    if configured:
        return list(configured)
    found = [a for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) if not ipaddress.ip_address(a).is_loopback]
    return found or ["127.0.0.1"]


@dataclass(frozen=True)
class LocalCandidate:
    foundation: str
    priority: int
    ip: str
    port: int

    def sdp(self) -> str:
        # RFC 8839 §5.1 candidate-attribute
        return f"candidate:{self.foundation} 1 udp {self.priority} {self.ip} {self.port} typ host"


class PeerTransport:
    def __init__(
        self,
        *,
        addresses: list[str],
        announced_ip: Optional[str],
        consent_interval: float,
        consent_failures: int,
        udp_port: int = 0,
        port_range: Optional[tuple[int, int]] = None,
        receive_buffer: int = 0,
        on_rtp: Callable[[bytes, int], None],
        on_rtcp: Callable[[bytes], None],
        on_connected: Callable[[], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self._addresses = addresses
        self._udp_port = udp_port  # one shared socket per address for every session; 0: sockets of our own
        self._port_range = port_range  # (first, last) ports of our own sockets; None: any free port
        self._receive_buffer = receive_buffer  # SO_RCVBUF bytes for our sockets (rtc.udp_receive_buffer); 0: default
        self._announced_ip = announced_ip
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._consent_interval = consent_interval
        self._consent_failures = consent_failures
        self._liveness_task: Optional[asyncio.Task[None]] = None
        self.last_received = time.monotonic()
        self._gatherer = rtc.RTCIceGatherer(iceServers=[])  # never a default STUN server
        self._ice = rtc.RTCIceTransport(self._gatherer)
        self._consent = rtc.ConsentChecks(self._ice)  # RFC 7675 consent freshness, once connected (_watch_liveness)
        self._dtls = rtc.RTCDtlsTransport(self._ice, [certificate()])
        self._handle_rtp, self._handle_rtcp = self._guard(on_rtp), self._guard(on_rtcp)
        rtc.hook_packets(self._dtls, self._handle_rtp, self._handle_rtcp)
        self._demux: Optional[rtc.Demultiplexer] = None
        self._sender: Optional[rtc.PacketSender] = None
        self._connect_task: Optional[asyncio.Task[None]] = None
        self._closing = False
        self.closed = asyncio.Event()
        self.connected = False
        self.remote_ufrag: Optional[str] = None

    def _guard(self, handler: Callable[..., None]) -> Callable[..., None]:
        """No packet may stop this transport's receive loop: a handler error is counted, logged once, dropped."""
        logged = False

        def guarded(*args: object) -> None:
            nonlocal logged
            self.last_received = time.monotonic()
            try:
                handler(*args)
            except Exception:
                metrics.count_drop("handler_error")
                if not logged:
                    logged = True
                    log.exception("packet handler failed; further failures of this transport are only counted")

        return guarded

    def set_offerer(self) -> None:
        """We write the offer: ICE controlling (RFC 8445 §6.1.1). Before the offer leaves, since the answerer
        starts its checks as soon as it has our candidates, possibly before its answer reaches us; answering
        those as controlled first and switching later ends in a role conflict neither side resolves."""
        rtc.set_ice_controlling(self._ice, True)

    # ---- local description -------------------------------------------------------------------------
    async def gather(self) -> None:
        if self._udp_port:
            ports = await shared_ports(self._addresses, self._udp_port, self._receive_buffer)
            rtc.gather_on_shared_port(self._gatherer, ports)
        else:
            allocator = port_range(*self._port_range) if self._port_range else None
            full: list[str] = []  # addresses on which every port of the range was taken

            def bind(address: str) -> Optional[socket.socket]:
                sock = allocator.bind(address)  # type: ignore[union-attr]
                if sock is None:
                    full.append(address)
                return sock

            await rtc.gather_host_candidates(self._gatherer, self._addresses, bind if allocator else None)
            for sock in rtc.own_sockets(self._gatherer):
                set_receive_buffer(sock, self._receive_buffer)
            if full and allocator is not None and not self._gatherer.getLocalCandidates():
                raise PortRangeExhausted(
                    f"no free UDP port in rtc.udp_port_min..udp_port_max ({allocator.first}-{allocator.last}) on "
                    f"{', '.join(full)}: every one of its {allocator.size} ports is in use"
                )
        if not self._gatherer.getLocalCandidates():
            raise OSError(f"could not bind a UDP socket on any of {self._addresses}")
        # Every datagram of our sockets passes our demultiplexer: media straight to the handlers once DTLS is up.
        self._demux = rtc.demultiplex(self._ice, self._handle_rtp, self._handle_rtcp, metrics.count_drop, self._consent)

    @property
    def ice_ufrag(self) -> str:
        return self._gatherer.getLocalParameters().usernameFragment  # type: ignore[return-value]

    @property
    def ice_pwd(self) -> str:
        return self._gatherer.getLocalParameters().password  # type: ignore[return-value]

    @property
    def fingerprint(self) -> str:
        fp = next(f for f in self._dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256")
        return f"{fp.algorithm} {fp.value}"

    def local_candidates(self) -> list[LocalCandidate]:
        """Host candidates; with an announced IP (1:1 NAT) it comes first, on the same ports."""
        gathered = [
            LocalCandidate(c.foundation, c.priority, c.ip, c.port) for c in self._gatherer.getLocalCandidates()
        ]
        if not self._announced_ip:
            return gathered
        announced = [
            LocalCandidate(secrets.token_hex(4), c.priority + 1, self._announced_ip, c.port) for c in gathered
        ]
        return announced + gathered

    # ---- connecting --------------------------------------------------------------------------------
    def start(
        self,
        *,
        remote_ufrag: str,
        remote_pwd: str,
        fingerprints: list[tuple[str, str]],
        dtls_role: str,
        candidates: list[str],
        end_of_candidates: bool,
        timeout: float,
    ) -> None:
        """Begin ICE and DTLS in the background. dtls_role: "server" or "client"."""
        self.remote_ufrag = remote_ufrag
        rtc.set_dtls_role(self._dtls, dtls_role)
        remote_ice = rtc.RTCIceParameters(usernameFragment=remote_ufrag, password=remote_pwd)
        remote_dtls = rtc.RTCDtlsParameters(
            fingerprints=[rtc.RTCDtlsFingerprint(algorithm=a, value=v) for a, v in fingerprints]
        )
        self._ice.on("statechange", self._ice_state_changed)
        self._dtls.on("statechange", self._dtls_state_changed)
        self._connect_task = asyncio.create_task(
            self._connect(remote_ice, remote_dtls, candidates, end_of_candidates, timeout)
        )

    async def _connect(
        self,
        remote_ice: rtc.RTCIceParameters,
        remote_dtls: rtc.RTCDtlsParameters,
        candidates: list[str],
        end_of_candidates: bool,
        timeout: float,
    ) -> None:
        try:
            for line in candidates:
                await self.add_remote_candidate(line)
            if end_of_candidates:
                await self._ice.addRemoteCandidate(None)
            async with asyncio.timeout(timeout):
                await self._ice.start(remote_ice)
                if self._ice.state != "completed":
                    raise ConnectionError(f"ICE {self._ice.state}")
                await self._dtls.start(remote_dtls)
                if self._dtls.state != "connected":
                    raise ConnectionError(f"DTLS {self._dtls.state}")
        except TimeoutError:
            await self.close(f"ICE/DTLS not connected within {timeout:g} s")
            return
        except (ConnectionError, OSError, ValueError) as exc:
            await self.close(f"connect failed: {exc}")
            return
        self._sender = rtc.PacketSender(self._ice, self._dtls, on_drop=metrics.count_drop)
        if self._demux is not None:
            self._demux.start_media(self._dtls)
        self.connected = True
        rtc.stop_aioice_consent(self._ice)
        self._liveness_task = asyncio.create_task(self._watch_liveness())
        self._on_connected()

    async def _watch_liveness(self) -> None:
        timeout = self._consent_interval * self._consent_failures
        connected_at = time.monotonic()
        consent = self._consent
        while not self._closing:
            await asyncio.sleep(self._consent_interval * (0.8 + 0.4 * random.random()))  # RFC 7675 §5.1
            consent.send()  # its response, whenever it comes, refreshes consent (ConsentChecks)
            silent = time.monotonic() - max(consent.last_response or connected_at, self.last_received)
            if silent > timeout and not self._closing:
                await self.close(f"peer gone: no consent response and no packets for {silent:.1f} s (RFC 7675)")
                return

    async def add_remote_candidate(self, line: str) -> bool:
        """Add one `candidate:...` attribute value; False for ones we cannot use (TCP, mDNS names)."""
        value = line[len("a=") :] if line.startswith("a=") else line
        value = value[len("candidate:") :] if value.startswith("candidate:") else value
        candidate = rtc.candidate_from_sdp(value)  # raises ValueError/IndexError on garbage
        if candidate.protocol.lower() != "udp":
            return False  # aioice has no ICE-TCP
        try:
            ipaddress.ip_address(candidate.ip)
        except ValueError:
            # An mDNS name (RFC 8838 obfuscation): resolving it means multicast on the operator's LAN;
            # the peer's own checks teach us its address as peer-reflexive anyway (RFC 8445 §7.3.1.3).
            return False
        candidate.sdpMid = None
        await self._ice.addRemoteCandidate(candidate)
        return True

    async def end_of_candidates(self) -> None:
        await self._ice.addRemoteCandidate(None)

    def _ice_state_changed(self) -> None:
        if self._ice.state in ("failed", "closed") and not self._closing:
            asyncio.ensure_future(self.close(f"ICE {self._ice.state} (consent expired or peer gone)"))

    def _dtls_state_changed(self) -> None:
        if self._dtls.state in ("failed", "closed") and not self._closing:
            asyncio.ensure_future(self.close(f"DTLS {self._dtls.state}"))

    # ---- sending -----------------------------------------------------------------------------------
    def send_rtp(self, packet: bytes) -> int:
        sender = self._sender
        if sender is None:
            return 0
        return sender.send_rtp(packet)

    def native_sender(self) -> Any:
        """The compiled sender of the nominated pair (gateway/sfu/down_track.py arms C lanes on it), or None."""
        sender = self._sender
        return sender.native_route() if sender is not None else None

    def send_rtcp(self, packet: bytes) -> int:
        sender = self._sender
        if sender is None:
            return 0
        return sender.send_rtcp(packet)

    # ---- closing -----------------------------------------------------------------------------------
    async def close(self, reason: str = "closed") -> None:
        """Stop ICE (which revokes consent: we stop answering checks, RFC 7675 §5.2) and DTLS. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._sender is not None:
            self._sender.close()  # the compiled egress path's duplicate of the socket
        self._sender = None
        self.connected = False
        for task in (self._connect_task, self._liveness_task):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        try:
            await self._dtls.stop()
        except Exception:  # pragma: no cover - teardown must go on whatever aiortc raises
            log.debug("DTLS stop failed", exc_info=True)
        try:
            await self._ice.stop()
        except Exception:  # pragma: no cover
            log.debug("ICE stop failed", exc_info=True)
        self.closed.set()
        try:
            self._on_closed(reason)
        except Exception:  # pragma: no cover
            log.exception("on_closed handler failed")
