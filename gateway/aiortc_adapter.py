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
  candidates only on configured addresses, and read the nominated pair to send on it. With a port range
  (`rtc.udp_port_min..udp_port_max`) we bind the sockets ourselves and hand each to a StunProtocol of the
  connection (Connection._protocols), as aioice's own gathering does with port 0.
- aioice Connection._query_consent_task, build_request: aioice ends a connection when its consent checks fail;
  FFmpeg 9 answers no STUN after its handshake, so whipgate runs the checks itself (ConsentChecks) and
  decides liveness from consent *and* received media (gateway/transport.py).
- aioice Connection.request_received: a shim that tolerates STUN binding requests without PRIORITY
  (FFmpeg 8.0 sends them; aioice 0.13 raises KeyError while learning the peer-reflexive candidate).
- aioice Connection._protocols, StunProtocol.datagram_received, RTCDtlsTransport._rx_srtp: `demultiplex`
  takes each datagram where aioice's socket delivers it. SRTP/SRTCP (RFC 7983 §7: first byte 128-191) is
  unprotected and handed to our handlers right there, synchronously: aioice would first try to parse it as STUN,
  then queue it for aiortc's receive task (a queue hop and a coroutine per packet). Everything else (STUN, DTLS)
  goes the usual way, with malformed STUN that makes aioice raise something other than ValueError dropped
  instead of closing the socket.
- pylibsrtp (aiortc's SRTP binding) _binding.ffi / _binding.lib.srtp_protect(_rtcp), Session._srtp: PacketSender
  calls libsrtp's protect itself (no per-packet wrapper work) or hands those addresses to the optional compiled
  helper gateway/_srtp_send.c (protect + sendto in one C call); see "egress" below. Likewise
  _binding.lib.srtp_unprotect(_rtcp): the demultiplexer unprotects with the compiled `Unprotector` when built.
- aioice StunProtocol (constructed here) and Connection._protocols / _local_candidates: `SharedUdpPort` gives
  every session's ICE connection a StunProtocol whose transport is a view of ONE socket (`rtc.udp_port`). The
  socket's datagrams go to the session whose local ufrag the first STUN check names (RFC 8445 §7.2.2: USERNAME is
  "receiver's ufrag:sender's ufrag"), then by remote address.
- aioice Connection._protocols (StunProtocol.transport): `own_sockets` gives the sockets aioice bound for a
  session, so the gateway can size their receive buffers (`rtc.udp_receive_buffer`).
- RTCCertificate._create_ssl_context: aiortc builds an OpenSSL context per DTLS session; `share_dtls_context`
  gives every session of the process's one certificate the same context (see there).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Optional

import pylibsrtp
from OpenSSL import SSL
from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib

import aioice.candidate
import aioice.ice
import aioice.turn
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
    "ConsentChecks",
    "demultiplex",
    "SharedUdpPort",
    "gather_on_shared_port",
    "Demultiplexer",
    "stop_aioice_consent",
    "gather_host_candidates",
    "hook_packets",
    "install_shims",
    "PacketSender",
    "EGRESS_PATH",
    "LaneGroup",
    "TransportWide",
    "FeedbackMatcher",
    "set_dtls_role",
    "set_ice_controlling",
    "share_dtls_context",
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
    ("aioice.ice.StunProtocol", "send_stun", "function (self, message, addr): one datagram, no transaction"),
    ("aioice.ice.CandidatePair instance", "protocol.transport", "asyncio.DatagramTransport"),
    ("aioice.Connection instance", "_protocols", "list[StunProtocol] after gathering"),
    ("aioice.ice.StunProtocol", "datagram_received", "function (self, data, addr)"),
    ("aiortc.RTCDtlsTransport instance", "_rx_srtp", "pylibsrtp.Session after DTLS connects"),
    ("aioice.ice.StunProtocol", "__init__", "function (self, receiver: Connection); connection_made/lost"),
    ("pylibsrtp", "_binding.ffi", "cffi.FFI of pylibsrtp's extension module"),
    ("pylibsrtp", "_binding.lib.srtp_protect", "cffi function, libsrtp 2: srtp_err_status_t(*)(srtp_t, void *, int *)"),
    ("pylibsrtp", "_binding.lib.srtp_protect_rtcp", "cffi function, same signature as srtp_protect"),
    ("pylibsrtp", "_binding.lib.srtp_unprotect", "cffi function, same signature as srtp_protect"),
    ("pylibsrtp", "_binding.lib.srtp_unprotect_rtcp", "cffi function, same signature as srtp_protect"),
    ("pylibsrtp.Session instance", "_srtp", "cffi srtp_t * (ffi.gc-owned by the Session)"),
    ("aiortc.RTCCertificate", "_create_ssl_context", "function (self, srtp_profiles) -> OpenSSL.SSL.Context, called by "
     "RTCDtlsTransport.start once per session"),
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
    """Cancel aioice's own consent task (it would close the connection on failed checks; see ConsentChecks)."""
    connection = ice._connection
    task = connection._query_consent_task
    if task is not None:
        task.cancel()
        connection._query_consent_task = None


CONSENT_CHECKS_KEPT = 8  # recent consent checks whose response still counts (8 x the 5 s default: 40 s)


class ConsentChecks:
    """RFC 7675 §5.1 consent freshness on the nominated pair, as the RFC has it: each check is one STUN binding
    request with a new transaction id, sent once and never retransmitted, and "a response might be for a previous
    request (rather than for the most recently sent request)": an authenticated binding success response from the
    checked address to any of the last CONSENT_CHECKS_KEPT checks refreshes consent (`last_response`).

    The gateway used to run each check as an aioice STUN transaction, which gives up after 0.5 s and forgets its
    transaction id, so a response that took longer was dropped. A gateway whose event loop is behind reads responses
    late: with `rtc.udp_port`, 1,000 viewers joining a saturated core had their responses read 0.6-1.9 s (median)
    after the check left, 59-73% of the checks failed, and 62-87% of the viewers were ended as gone while they
    answered every check (bench/load.py, 8 runs; BENCHMARKS.md). Responses reach `on_response` from the
    Demultiplexer before aioice sees them."""

    __slots__ = ("_ice", "_sent", "last_response")

    def __init__(self, ice: RTCIceTransport) -> None:
        self._ice = ice
        self._sent: deque[bytes] = deque(maxlen=CONSENT_CHECKS_KEPT)
        self.last_response: Optional[float] = None  # time.monotonic() of the last response that counted

    def send(self) -> bool:
        """Send one check; False when there is no nominated pair or remote password yet (nothing sent)."""
        connection = self._ice._connection
        pair = connection._nominated.get(1)
        if pair is None or connection.remote_password is None:
            return False
        request = connection.build_request(pair, nominate=False)
        request.add_message_integrity(connection.remote_password.encode("utf8"))  # + FINGERPRINT
        self._sent.append(request.transaction_id)
        try:
            pair.protocol.send_stun(request, pair.remote_addr)
        except OSError:
            return False
        return True

    def on_response(self, data: bytes, addr: Any) -> bool:
        """A STUN binding success response arrived: True when it answers one of our recent checks and counts."""
        transaction_id = data[8:20]
        if transaction_id not in self._sent:
            return False
        connection = self._ice._connection
        pair = connection._nominated.get(1)
        if pair is None or connection.remote_password is None or (addr[0], addr[1]) != (pair.remote_addr[0], pair.remote_addr[1]):
            return False  # consent is per address pair (RFC 7675 §5.1)
        try:
            message = stun.parse_message(data)
        except (ValueError, *STUN_PARSE_ESCAPES):
            return False
        if message.message_class != stun.Class.RESPONSE or not message.check_message_integrity(
            connection.remote_password.encode("utf8")
        ):
            return False
        self._sent.remove(transaction_id)
        self.last_response = time.monotonic()
        return True


async def gather_host_candidates(
    gatherer: RTCIceGatherer, addresses: list[str], bind: Optional[Callable[[str], Optional[socket.socket]]] = None
) -> None:
    """Gather host candidates on exactly these addresses (no STUN, no interface discovery).

    `bind(address)`: a UDP socket bound on `address` (`rtc.udp_port_min..udp_port_max`), or None when it has no
    free port; aioice then gets the socket instead of binding port 0 itself. An address without a socket (None, or
    OSError from `bind`) gets no candidate, as aioice skips an address it cannot bind."""
    connection = gatherer._connection
    connection._local_candidates_start = True
    if bind is None:
        connection._local_candidates += await connection.get_component_candidates(component=1, addresses=addresses)
    else:
        loop = asyncio.get_running_loop()
        for address in addresses:
            try:
                sock = bind(address)
            except OSError as exc:  # not an address of this host, say: skipped, as aioice skips it
                log.info("could not bind a UDP socket on %s: %s", address, exc)
                continue
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)  # as aioice
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(connection), sock=sock
                )
            except OSError:
                sock.close()
                raise
            # Appended at once: the connection's close() closes what it lists, whatever happens next.
            connection._protocols.append(protocol)
            protocol.local_candidate = host_candidate(address, sock.getsockname()[1])
            connection._local_candidates.append(protocol.local_candidate)
    connection._local_candidates_end = True


def host_candidate(address: str, port: int) -> aioice.candidate.Candidate:
    """The host candidate aioice gives a socket of its own on (address, port) (RFC 8445 §5.1.1.1, §5.1.2)."""
    return aioice.candidate.Candidate(
        foundation=aioice.candidate.candidate_foundation("host", "udp", address),
        component=1,
        transport="udp",
        priority=candidate_priority(1, "host"),
        host=address,
        port=port,
        type="host",
    )


def own_sockets(gatherer: RTCIceGatherer) -> list[Any]:
    """The UDP sockets aioice bound for this session (`gather_host_candidates`); none on a shared port, whose
    one socket `SharedUdpPort.socket` gives."""
    sockets = []
    for protocol in gatherer._connection._protocols:
        transport = getattr(protocol, "transport", None)  # a uvloop UDPTransport is no asyncio.DatagramTransport
        if transport is not None and not isinstance(transport, _PortView) and hasattr(transport, "get_extra_info"):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sockets.append(sock)
    return sockets


def share_dtls_context(certificate: RTCCertificate) -> RTCCertificate:
    """Make every DTLS session of `certificate` use one OpenSSL context (per SRTP profile list), and return it.

    aiortc builds a context per session (`RTCDtlsTransport.start` -> `_create_ssl_context`): the same certificate,
    key, cipher list and SRTP profiles each time, ~18 KiB of a viewer's memory and an SSL_CTX set-up per join.
    OpenSSL contexts are made to be shared by connections; what is per session (the handshake, the peer's
    certificate, the exported SRTP keys) lives in the connection. On the shared context:
    - no server-side session cache: WebRTC peers do not resume DTLS sessions, and a shared cache would keep every
      finished session (and its peer certificate) until it timed out;
    - SSL_MODE_RELEASE_BUFFERS: a connection frees its record buffers while idle; after the handshake DTLS only
      carries a close_notify (SRTP is demultiplexed before OpenSSL), so they are idle for the whole session.
    """
    create = certificate._create_ssl_context
    contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def shared_context(srtp_profiles: list) -> SSL.Context:
        key = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = contexts.get(key)
        if context is None:
            context = create(srtp_profiles=srtp_profiles)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            contexts[key] = context
        return context

    certificate._create_ssl_context = shared_context  # type: ignore[method-assign]
    return certificate


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


# What aioice 0.13's stun.parse_message raises on malformed attributes besides its ValueError (found by fuzzing it;
# e.g. an empty CHANGE-REQUEST value gives struct.error).
STUN_PARSE_ESCAPES = (struct.error, IndexError, KeyError, UnicodeDecodeError)


class Demultiplexer:
    """Per-socket datagram demultiplexing (RFC 7983 §7) in front of aioice; see the module docstring.

    Created after gathering (every datagram of the connection passes through it: malformed STUN is dropped and
    counted through `on_drop`); `start_media(dtls)` once DTLS has connected switches SRTP/SRTCP to the
    synchronous path."""

    __slots__ = ("_on_rtp", "_on_rtcp", "_on_drop", "_unprotect", "_unprotect_rtcp", "_consent")

    def __init__(self, ice: RTCIceTransport, on_rtp: Callable[[bytes, int], None], on_rtcp: Callable[[bytes], None],
                 on_drop: Callable[[str], None], consent: Optional[ConsentChecks] = None) -> None:
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_drop = on_drop
        self._consent = consent  # binding success responses go to it first (its checks' late answers count)
        self._unprotect: Optional[Callable[[bytes], bytes]] = None
        self._unprotect_rtcp: Optional[Callable[[bytes], bytes]] = None
        for protocol in ice._connection._protocols:
            protocol.datagram_received = self._wrap(protocol.datagram_received)  # instance attribute

    def start_media(self, dtls: RTCDtlsTransport) -> None:
        srtp = dtls._rx_srtp
        self._unprotect = unprotector(srtp, rtcp=False)
        self._unprotect_rtcp = unprotector(srtp, rtcp=True)

    def _wrap(self, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            unprotect = self._unprotect
            if unprotect is not None and len(data) >= 12 and 127 < data[0] < 192:
                try:
                    if 191 < data[1] < 224:  # RFC 5761 §4: RTCP packet types 192-223
                        self._on_rtcp(self._unprotect_rtcp(data))  # type: ignore[misc]
                    else:
                        self._on_rtp(unprotect(data), clock.current_ms())
                except (pylibsrtp.Error, ValueError):  # refused; ValueError: pylibsrtp's own > 1,500 bytes
                    self._on_drop("srtp_unprotect_failed")
                return
            consent = self._consent
            if consent is not None and data[:2] == b"\x01\x01" and len(data) >= 20:  # a binding success response
                consent.on_response(data, addr)
            try:
                original(data, addr)
            except STUN_PARSE_ESCAPES:
                self._on_drop("stun_malformed")

        return datagram_received


def demultiplex(ice: RTCIceTransport, on_rtp: Callable[[bytes, int], None], on_rtcp: Callable[[bytes], None],
                on_drop: Callable[[str], None], consent: Optional[ConsentChecks] = None) -> Demultiplexer:
    return Demultiplexer(ice, on_rtp, on_rtcp, on_drop, consent)


# ---- egress: SRTP protect + send (issue #6 fast path) ---------------------------------------------------------
# pylibsrtp 1.0.0 wraps libsrtp2 2.7.0 (linked statically into its cffi module) and adds per packet a bounds check,
# an `int *` allocation, two copies and an exception check in Python (~1 µs of the ~5 µs protect). We call its cffi
# `lib.srtp_protect` ourselves on a per-sender buffer (pure Python), or hand the function's address and the
# session's srtp_t to gateway/_srtp_send.c, an optional C extension built by `pip install` (setup.py), which
# protects and sends in one call. Both use the session aiortc keyed from DTLS-SRTP (RFC 5764 §4.2), so the
# rollover counter and SRTCP index (RFC 3711 §3.3.1, §3.4) are one per stream whichever path protects.
LIBSRTP2_PROTECT_CTYPE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"  # libsrtp 2.x signature
MAX_PACKET = 1500  # RTP/RTCP bytes before protection (the MTU-sized packets we forward)
_SRTP_MAX_TRAILER = 148  # MKI + tag (+ SRTCP index): what protect may append


def _load_native() -> Any:
    """The compiled fast path, or None (not built, or pylibsrtp's libsrtp is not the 2.x API it calls)."""
    try:
        from gateway import _srtp_send
    except ImportError:
        return None
    for name in ("srtp_protect", "srtp_protect_rtcp", "srtp_unprotect", "srtp_unprotect_rtcp"):
        if _srtp_ffi.typeof(getattr(_srtp_lib, name)).cname != LIBSRTP2_PROTECT_CTYPE:
            log.warning("pylibsrtp's %s is not libsrtp 2's; using the pure-Python SRTP paths", name)
            return None
    return _srtp_send


def _address(cdata: Any) -> int:
    return int(_srtp_ffi.cast("uintptr_t", cdata))


_native = _load_native()
EGRESS_PATH = "native" if _native is not None else "python"  # what PacketSender uses by default
# The compiled fan-out of armed viewers (gateway/sfu/down_track.py lanes), or None without the extension.
LaneGroup: Any = _native.LaneGroup if _native is not None else None
# A transport-cc viewer's shared counters, send log and pacer bucket, as its lanes see them (viewer_bandwidth.py).
TransportWide: Any = _native.TransportWide if _native is not None else None
# A viewer's transport-cc feedback parsed and matched with its send log in C (SendSideEstimator.use_matcher).
FeedbackMatcher: Any = _native.FeedbackMatcher if _native is not None else None


def unprotector(srtp: pylibsrtp.Session, *, rtcp: bool) -> Callable[[bytes], bytes]:
    """SRTP (or SRTCP) unprotect on `srtp` as one call: the compiled `Unprotector` (libsrtp's own function on the
    session's srtp_t, without pylibsrtp's per-packet Python: 4.2 -> 2.4 µs per feedback in place, BENCHMARKS.md), else
    pylibsrtp's method. Both raise pylibsrtp.Error for a packet libsrtp refuses; the compiled one also for a length
    outside [12 (RTP) / 8 (RTCP), MAX_PACKET + trailer], where pylibsrtp raises ValueError above 1,500 bytes."""
    if _native is None:
        return srtp.unprotect_rtcp if rtcp else srtp.unprotect
    function = _srtp_lib.srtp_unprotect_rtcp if rtcp else _srtp_lib.srtp_unprotect
    native = _native.Unprotector(_address(function), _address(srtp._srtp[0]), srtp, pylibsrtp.Error,
                                 8 if rtcp else 12)
    return native.unprotect  # type: ignore[no-any-return]


def _python_path(srtp: pylibsrtp.Session, function: Any, sendto: Callable[[Any, Any], None], addr: Any
                 ) -> Callable[[bytes], int]:
    """protect (libsrtp via cffi, no pylibsrtp wrapper) + the asyncio transport's sendto, as one closure."""
    ctx = srtp._srtp[0]
    cdata = _srtp_ffi.new("unsigned char[]", MAX_PACKET + _SRTP_MAX_TRAILER)
    packet_view = _srtp_ffi.buffer(cdata, MAX_PACKET)  # a longer packet fails to fit: ValueError, as in pylibsrtp
    wire_view = _srtp_ffi.buffer(cdata)
    length = _srtp_ffi.new("int *")

    def send(packet: bytes) -> int:
        n = len(packet)
        packet_view[0:n] = packet
        length[0] = n
        status = function(ctx, cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp protect failed (libsrtp status {status})")
        n = length[0]
        sendto(wire_view[0:n], addr)  # a full socket buffer: uvloop/asyncio queue it (transport write buffer)
        return n

    return send


def _pylibsrtp_path(protect: Callable[[bytes], bytes], sendto: Callable[[Any, Any], None], addr: Any
                    ) -> Callable[[bytes], int]:
    def send(packet: bytes) -> int:
        data = protect(packet)
        sendto(data, addr)
        return len(data)

    return send


class _FixedPair:
    """Stands for a nominated candidate pair in PacketSender.on_transport."""

    __slots__ = ("protocol", "transport", "remote_addr")

    def __init__(self, transport: Any, addr: Any) -> None:
        self.protocol = self  # pair.protocol.transport
        self.transport = transport
        self.remote_addr = addr


class PacketSender:
    """Synchronous SRTP protect + send on the nominated ICE candidate pair: no coroutine per packet.

    send_rtp / send_rtcp return the bytes put on the wire, 0 when not connected or when the socket did not take the
    datagram (native path: sent with MSG_DONTWAIT, a full buffer drops it; counted through `on_drop`).
    `path`: None = EGRESS_PATH (the compiled path when it was built); "native" = compiled or raise; "python" =
    libsrtp through cffi + the transport's sendto; "pylibsrtp" = pylibsrtp's Session.protect + the transport's
    sendto (what whipgate did before issue #6; kept as the benchmarks' reference)."""

    __slots__ = ("_nominated", "_srtp", "_pair", "_send_rtp", "_send_rtcp", "_native", "_on_drop", "path")

    def __init__(self, ice: RTCIceTransport, dtls: RTCDtlsTransport, *, path: Optional[str] = None,
                 on_drop: Optional[Callable[[str], None]] = None) -> None:
        self._setup(ice._connection._nominated, dtls._tx_srtp, path, on_drop)

    @classmethod
    def on_transport(cls, transport: Any, addr: Any, srtp: pylibsrtp.Session, *, path: Optional[str] = None,
                     on_drop: Optional[Callable[[str], None]] = None) -> "PacketSender":
        """A sender on a plain asyncio datagram transport with a fixed peer address (bench/fanout.py)."""
        self = cls.__new__(cls)
        self._setup({1: _FixedPair(transport, addr)}, srtp, path, on_drop)
        return self

    def _setup(self, nominated: dict[int, Any], srtp: pylibsrtp.Session, path: Optional[str],
               on_drop: Optional[Callable[[str], None]]) -> None:
        path = path or EGRESS_PATH
        if path not in ("native", "python", "pylibsrtp"):
            raise ValueError(f"unknown egress path {path!r}")
        if path == "native" and _native is None:
            raise RuntimeError("the compiled egress path (gateway/_srtp_send.c) is not built")
        self._nominated = nominated
        self._srtp = srtp
        self._pair: Any = None  # the nominated pair the route below was taken from
        self._send_rtp: Optional[Callable[[bytes], int]] = None
        self._send_rtcp: Optional[Callable[[bytes], int]] = None
        self._native: Any = None  # the _srtp_send.Sender of the current route
        self._on_drop = on_drop
        self.path = path

    def _route(self) -> bool:
        """Follow the nominated pair (the peer may nominate another one); per packet only an identity check."""
        pair = self._nominated.get(1)
        if pair is self._pair:
            return self._send_rtp is not None
        self.close()
        self._pair = pair
        transport = pair.protocol.transport if pair is not None else None
        if transport is None or transport.is_closing():
            return False
        addr = pair.remote_addr
        if self.path == "native":
            sock = transport.get_extra_info("socket")
            try:
                self._native = _native.Sender(
                    sock.fileno(), addr[0], addr[1], _address(_srtp_lib.srtp_protect),
                    _address(_srtp_lib.srtp_protect_rtcp), _address(self._srtp._srtp[0]), self._srtp, pylibsrtp.Error,
                )
            except (OSError, ValueError, AttributeError) as exc:  # an IPv6 scope the C side cannot parse, no socket
                log.debug("compiled egress path unavailable for %s: %s", addr, exc)
            else:
                self._send_rtp = self._native.send_rtp
                self._send_rtcp = self._native.send_rtcp
                return True
        if self.path == "pylibsrtp":
            self._send_rtp = _pylibsrtp_path(self._srtp.protect, transport.sendto, addr)
            self._send_rtcp = _pylibsrtp_path(self._srtp.protect_rtcp, transport.sendto, addr)
            return True
        self._send_rtp = _python_path(self._srtp, _srtp_lib.srtp_protect, transport.sendto, addr)
        self._send_rtcp = _python_path(self._srtp, _srtp_lib.srtp_protect_rtcp, transport.sendto, addr)
        return True

    def send_rtp(self, packet: bytes) -> int:
        """Protect and send one RTP packet; return the bytes put on the wire (0 if not connected or dropped)."""
        if self._nominated.get(1) is not self._pair or self._send_rtp is None:
            if not self._route():
                return 0
        n = self._send_rtp(packet)  # type: ignore[misc]
        if n:
            return n
        self._dropped()
        return 0

    def native_route(self) -> Any:
        """The compiled Sender of the current route, for a LaneGroup lane; None on the Python paths or when
        not connected. The lane keeps it until it leaves its group (at the latest after its lease)."""
        if self._nominated.get(1) is not self._pair or self._send_rtp is None:
            if not self._route():
                return None
        return self._native

    def send_rtcp(self, packet: bytes) -> int:
        if not self._route():
            return 0
        n = self._send_rtcp(packet)  # type: ignore[misc]
        if n:
            return n
        self._dropped()
        return 0

    def _dropped(self) -> None:
        if self._on_drop is not None:
            last = self._native.last_errno if self._native is not None else 0
            full = last in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
            self._on_drop("egress_socket_full" if full else "egress_send_failed")

    @property
    def dropped(self) -> int:
        """Datagrams the socket did not take on the current route (native path only)."""
        return self._native.dropped if self._native is not None else 0

    def close(self) -> None:
        """Release the route (the native path's duplicate of the socket); the next send takes it again."""
        if self._native is not None:
            self._native.close()
            self._native = None
        self._pair = None
        self._send_rtp = self._send_rtcp = None


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

    @property
    def socket(self) -> Any:
        return self.transport.get_extra_info("socket") if self.transport is not None else None

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
        except (ValueError, *STUN_PARSE_ESCAPES):
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
        protocol.local_candidate = host_candidate(self.address, self.port)
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

