"""The ONE module that touches aiortc's and aioice's private names.

whipgate uses aiortc 1.16.0 / aioice 0.13.0 (pinned exactly in pyproject.toml) for SDP parsing, ICE, DTLS and
SRTP only; media never goes through aiortc's RTCRtpSender/Receiver (they decode, re-packetise and poll).
Every private attribute or function used is listed in PRIVATE_NAMES; tests/test_aiortc_adapter.py fails
loudly if an upgrade moves or renames any of them.

What is private and why:
- RTCDtlsTransport._handle_rtp_data / _handle_rtcp_data: the hooks where decrypted packets arrive. We replace
  them per transport instance to get raw bytes (the pattern aiortc's author uses in his own demos).
- RTCDtlsTransport._tx_srtp: the SRTP session; we protect packets with it and send them on the nominated
  candidate pair's datagram transport directly (no coroutine per packet).
- RTCDtlsTransport._set_role: the DTLS role comes from the SDP a=setup negotiation (RFC 8842 §5.1).
- RTCIceTransport._connection (.ice_controlling): when whipgate is the offerer (an edge pulling a stream from its
  origin, gateway/relay.py) it is the ICE controlling agent (RFC 8445 §6.1.1); aiortc sets this only inside
  RTCPeerConnection.
- RTCIceGatherer._connection, aioice Connection._local_candidates(_start/_end), _nominated: we gather host
  candidates only on configured addresses, and read the nominated pair to send on it.
- aioice Connection._query_consent_task, build_request: aioice ends a connection when its consent checks fail;
  FFmpeg 9 answers no STUN after its handshake, so whipgate runs the checks itself (check_consent) and
  decides liveness from consent *and* received media (gateway/transport.py).
- aioice Connection.request_received: a shim that tolerates STUN binding requests without PRIORITY
  (FFmpeg 8.0 sends them; aioice 0.13 raises KeyError while learning the peer-reflexive candidate).
- aioice Connection._protocols, StunProtocol.datagram_received, RTCDtlsTransport._rx_srtp: `demultiplex`
  takes each datagram where aioice's socket delivers it. SRTP/SRTCP (RFC 7983 §7: first byte 128-191) is
  unprotected and handed to our handlers right there, synchronously: aioice would first try to parse it as STUN,
  then queue it for aiortc's receive task (a queue hop and a coroutine per packet). Everything else (STUN, DTLS)
  goes the usual way, with malformed STUN that makes aioice raise something other than ValueError dropped
  instead of closing the socket.
- aioice StunProtocol (constructed here) and Connection._protocols / _local_candidates: `SharedUdpPort` gives
  every session's ICE connection a StunProtocol whose transport is a view of ONE socket (`rtc.udp_port`). The
  socket's datagrams go to the session whose local ufrag the first STUN check names (RFC 8445 §7.2.2: USERNAME is
  "receiver's ufrag:sender's ufrag"), then by remote address.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Callable, Optional

import pylibsrtp

import aioice.candidate
import aioice.ice
from aioice import stun
from aioice.candidate import candidate_priority
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, clock
from aiortc.rtcdtlstransport import RTCDtlsFingerprint, RTCDtlsParameters
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp, candidate_to_sdp

log = logging.getLogger(__name__)

__all__ = [
    "RTCCertificate",
    "RTCDtlsFingerprint",
    "RTCDtlsParameters",
    "RTCDtlsTransport",
    "RTCIceCandidate",
    "RTCIceGatherer",
    "RTCIceParameters",
    "RTCIceTransport",
    "SessionDescription",
    "candidate_from_sdp",
    "candidate_to_sdp",
    "PRIVATE_NAMES",
    "check_consent",
    "demultiplex",
    "SharedUdpPort",
    "gather_on_shared_port",
    "Demultiplexer",
    "stop_aioice_consent",
    "gather_host_candidates",
    "hook_packets",
    "install_shims",
    "PacketSender",
    "set_dtls_role",
    "set_ice_controlling",
]

# (owner, attribute name, what it must be): checked by tests/test_aiortc_adapter.py.
PRIVATE_NAMES: list[tuple[str, str, str]] = [
    ("aiortc.RTCDtlsTransport", "_handle_rtp_data", "coroutine function (self, data, arrival_time_ms)"),
    ("aiortc.RTCDtlsTransport", "_handle_rtcp_data", "coroutine function (self, data)"),
    ("aiortc.RTCDtlsTransport", "_set_role", "function (self, role)"),
    ("aiortc.RTCDtlsTransport instance", "_tx_srtp", "pylibsrtp.Session after DTLS connects"),
    ("aiortc.RTCIceGatherer instance", "_connection", "aioice.Connection"),
    ("aiortc.RTCIceTransport instance", "_connection", "aioice.Connection (the gatherer's), .ice_controlling"),
    ("aioice.Connection instance", "_local_candidates", "list"),
    ("aioice.Connection instance", "_local_candidates_start", "bool"),
    ("aioice.Connection instance", "_local_candidates_end", "bool"),
    ("aioice.Connection instance", "_nominated", "dict[int, CandidatePair]"),
    ("aioice.Connection", "request_received", "function (self, message, addr, protocol)"),
    ("aioice.Connection instance", "_query_consent_task", "asyncio.Task | None, set by connect()"),
    ("aioice.Connection", "build_request", "function (self, pair, nominate)"),
    ("aioice.ice.CandidatePair instance", "protocol.transport", "asyncio.DatagramTransport"),
    ("aioice.Connection instance", "_protocols", "list[StunProtocol] after gathering"),
    ("aioice.ice.StunProtocol", "datagram_received", "function (self, data, addr)"),
    ("aiortc.RTCDtlsTransport instance", "_rx_srtp", "pylibsrtp.Session after DTLS connects"),
    ("aioice.ice.StunProtocol", "__init__", "function (self, receiver: Connection); connection_made/lost"),
]

_shims_installed = False


def install_shims() -> None:
    """Process-wide fixes to aioice, installed once at start-up."""
    global _shims_installed
    if _shims_installed:
        return
    original = aioice.ice.Connection.request_received

    def request_received(self: Any, message: Any, addr: Any, protocol: Any) -> None:
        # RFC 8445 §7.1.1 makes PRIORITY mandatory, but FFmpeg 8.0 omits it; assume a peer-reflexive
        # priority (what the peer would have sent) instead of crashing aioice's check handling.
        if "PRIORITY" not in message.attributes and "USERNAME" in message.attributes:
            component = getattr(getattr(protocol, "local_candidate", None), "component", 1)
            message.attributes["PRIORITY"] = candidate_priority(component, "prflx")
        original(self, message, addr, protocol)

    aioice.ice.Connection.request_received = request_received  # type: ignore[method-assign]
    _shims_installed = True


def stop_aioice_consent(ice: RTCIceTransport) -> None:
    """Cancel aioice's own consent task (it would close the connection on failed checks; see check_consent)."""
    connection = ice._connection
    task = connection._query_consent_task
    if task is not None:
        task.cancel()
        connection._query_consent_task = None


async def check_consent(ice: RTCIceTransport) -> bool:
    """One RFC 7675 §5.1 consent check (a STUN binding request) on the nominated pair; True if answered."""
    connection = ice._connection
    pair = connection._nominated.get(1)
    if pair is None or connection.remote_password is None:
        return False
    request = connection.build_request(pair, nominate=False)
    try:
        await pair.protocol.request(
            request, pair.remote_addr, integrity_key=connection.remote_password.encode("utf8"), retransmissions=0
        )
    except (stun.TransactionError, ConnectionError, OSError):
        return False
    return True


async def gather_host_candidates(gatherer: RTCIceGatherer, addresses: list[str]) -> None:
    """Gather host candidates on exactly these addresses (no STUN, no interface discovery)."""
    connection = gatherer._connection
    connection._local_candidates_start = True
    connection._local_candidates += await connection.get_component_candidates(component=1, addresses=addresses)
    connection._local_candidates_end = True


def set_dtls_role(dtls: RTCDtlsTransport, role: str) -> None:
    """role is "server" (we answered a=setup:passive) or "client" (a=setup:active)."""
    dtls._set_role(role)


def set_ice_controlling(ice: RTCIceTransport, controlling: bool) -> None:
    """RFC 8445 §6.1.1: the offerer (a full agent) is controlling; the answerer controlled (aiortc's default)."""
    ice._connection.ice_controlling = controlling


def hook_packets(
    dtls: RTCDtlsTransport,
    on_rtp: Callable[[bytes, int], None],
    on_rtcp: Callable[[bytes], None],
) -> None:
    """Route decrypted RTP/RTCP of this transport to synchronous handlers instead of aiortc's router."""

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        on_rtp(data, arrival_time_ms)

    async def handle_rtcp_data(data: bytes) -> None:
        on_rtcp(data)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


class Demultiplexer:
    """Per-socket datagram demultiplexing (RFC 7983 §7) in front of aioice; see the module docstring.

    Created after gathering (every datagram of the connection passes through it: malformed STUN is dropped and
    counted through `on_drop`); `start_media(dtls)` once DTLS has connected switches SRTP/SRTCP to the
    synchronous path."""

    __slots__ = ("_on_rtp", "_on_rtcp", "_on_drop", "_unprotect", "_unprotect_rtcp")

    def __init__(self, ice: RTCIceTransport, on_rtp: Callable[[bytes, int], None], on_rtcp: Callable[[bytes], None],
                 on_drop: Callable[[str], None]) -> None:
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_drop = on_drop
        self._unprotect: Optional[Callable[[bytes], bytes]] = None
        self._unprotect_rtcp: Optional[Callable[[bytes], bytes]] = None
        for protocol in ice._connection._protocols:
            protocol.datagram_received = self._wrap(protocol.datagram_received)  # instance attribute

    def start_media(self, dtls: RTCDtlsTransport) -> None:
        srtp = dtls._rx_srtp
        self._unprotect = srtp.unprotect
        self._unprotect_rtcp = srtp.unprotect_rtcp

    def _wrap(self, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            unprotect = self._unprotect
            if unprotect is not None and len(data) >= 12 and 127 < data[0] < 192:
                try:
                    if 191 < data[1] < 224:  # RFC 5761 §4: RTCP packet types 192-223
                        self._on_rtcp(self._unprotect_rtcp(data))  # type: ignore[misc]
                    else:
                        self._on_rtp(unprotect(data), clock.current_ms())
                except pylibsrtp.Error:
                    self._on_drop("srtp_unprotect_failed")
                return
            try:
                original(data, addr)
            except (struct.error, IndexError, KeyError, UnicodeDecodeError):  # aioice 0.13 lets these escape
                self._on_drop("stun_malformed")

        return datagram_received


def demultiplex(ice: RTCIceTransport, on_rtp: Callable[[bytes, int], None], on_rtcp: Callable[[bytes], None],
                on_drop: Callable[[str], None]) -> Demultiplexer:
    return Demultiplexer(ice, on_rtp, on_rtcp, on_drop)


class PacketSender:
    """Synchronous SRTP protect + send on the nominated ICE candidate pair: no coroutine per packet."""

    __slots__ = ("_nominated", "_protect", "_protect_rtcp", "_pair", "_sendto", "_addr")

    def __init__(self, ice: RTCIceTransport, dtls: RTCDtlsTransport) -> None:
        self._nominated = ice._connection._nominated
        srtp = dtls._tx_srtp
        self._protect = srtp.protect
        self._protect_rtcp = srtp.protect_rtcp
        self._pair: Any = None  # the nominated pair the route below was taken from
        self._sendto: Optional[Callable[[bytes, Any], None]] = None
        self._addr: Any = None

    def _route(self) -> bool:
        """Follow the nominated pair (the peer may nominate another one); per packet only an identity check."""
        pair = self._nominated.get(1)
        if pair is self._pair:
            return self._sendto is not None
        self._pair = pair
        transport = pair.protocol.transport if pair is not None else None
        if transport is None or transport.is_closing():
            self._sendto = None
            return False
        self._sendto = transport.sendto
        self._addr = pair.remote_addr
        return True

    def send_rtp(self, packet: bytes) -> int:
        """Protect and send one RTP packet; return the bytes put on the wire (0 if not connected)."""
        if self._nominated.get(1) is not self._pair or self._sendto is None:
            if not self._route():
                return 0
        data = self._protect(packet)
        self._sendto(data, self._addr)  # type: ignore[misc]
        return len(data)

    def send_rtcp(self, packet: bytes) -> int:
        if not self._route():
            return 0
        data = self._protect_rtcp(packet)
        self._sendto(data, self._addr)  # type: ignore[misc]
        return len(data)


class _PortView:
    """What one session's aioice StunProtocol sees of the shared socket: an asyncio.DatagramTransport look-alike."""

    def __init__(self, port: "SharedUdpPort", protocol: Any) -> None:
        self._port = port
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._closed or self._port.transport is None:
            return
        self._port.learn(addr, self._protocol)  # a reply from there is ours (our checks go out first when controlling)
        self._port.transport.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._port.address, self._port.port)
        if self._port.transport is None:
            return default
        return self._port.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._port.forget(self._protocol)
            self._protocol.connection_lost(None)  # what aioice's StunProtocol.close() waits for


class SharedUdpPort(asyncio.DatagramProtocol):
    """One UDP socket carrying every session's ICE, DTLS and SRTP (`rtc.udp_port`)."""

    def __init__(self, address: str, port: int, on_drop: Callable[[str], None]) -> None:
        self.address = address
        self.port = port
        self._on_drop = on_drop
        self.transport: Optional[asyncio.DatagramTransport] = None
        self._by_ufrag: dict[str, Any] = {}
        self._by_addr: dict[tuple[str, int], Any] = {}
        self._addrs: dict[int, set[tuple[str, int]]] = {}  # id(protocol) -> its remote addresses

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.address, self.port))
        self.port = self.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        protocol = self._by_addr.get(addr)
        if protocol is None:
            protocol = self._from_stun_username(data, addr)
            if protocol is None:
                self._on_drop("udp_port_unknown_sender")
                return
        protocol.datagram_received(data, addr)

    def _from_stun_username(self, data: bytes, addr: tuple[str, int]) -> Any:
        if len(data) < 20 or data[0] > 3:  # RFC 7983 §7: STUN starts with 0-3
            return None
        try:
            message = stun.parse_message(data)
        except (ValueError, struct.error, IndexError, KeyError, UnicodeDecodeError):
            return None
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str) or ":" not in username:
            return None
        protocol = self._by_ufrag.get(username.split(":", 1)[0])
        if protocol is not None:
            self.learn(addr, protocol)
        return protocol

    def learn(self, addr: Any, protocol: Any) -> None:
        addr = (addr[0], addr[1])
        if addr not in self._by_addr:
            self._by_addr[addr] = protocol
            self._addrs.setdefault(id(protocol), set()).add(addr)

    def attach(self, connection: Any, local_ufrag: str) -> Any:
        """A StunProtocol of `connection` on this port; datagrams naming `local_ufrag` reach it."""
        protocol = aioice.ice.StunProtocol(connection)
        protocol.connection_made(_PortView(self, protocol))
        self._by_ufrag[local_ufrag] = protocol
        protocol.local_candidate = aioice.candidate.Candidate(
            foundation=aioice.candidate.candidate_foundation("host", "udp", self.address),
            component=1,
            transport="udp",
            priority=candidate_priority(1, "host"),
            host=self.address,
            port=self.port,
            type="host",
        )
        return protocol

    def forget(self, protocol: Any) -> None:
        for ufrag in [u for u, p in self._by_ufrag.items() if p is protocol]:
            del self._by_ufrag[ufrag]
        for addr in self._addrs.pop(id(protocol), set()):
            if self._by_addr.get(addr) is protocol:
                del self._by_addr[addr]

    @property
    def sessions(self) -> int:
        return len(self._by_ufrag)


def gather_on_shared_port(gatherer: RTCIceGatherer, ports: list[SharedUdpPort]) -> None:
    """Host candidates of this session on the shared ports (instead of sockets of its own)."""
    connection = gatherer._connection
    ufrag = gatherer.getLocalParameters().usernameFragment
    connection._local_candidates_start = True
    for port in ports:
        protocol = port.attach(connection, ufrag)
        connection._protocols.append(protocol)
        connection._local_candidates.append(protocol.local_candidate)
    connection._local_candidates_end = True

