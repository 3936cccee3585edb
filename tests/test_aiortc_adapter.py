"""Fails loudly when an aiortc/aioice upgrade moves a private name gateway/aiortc_adapter.py relies on."""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import inspect
import os
import socket
from typing import Any, Optional

import aioice.ice
import aioice.stun
import pylibsrtp
import pytest
from aiortc import RTCDtlsTransport
from OpenSSL import SSL

from clients import wait_for
from gateway import aiortc_adapter as adapter


def test_pinned_versions_are_installed() -> None:
    assert importlib.metadata.version("aiortc") == "1.16.0"
    assert importlib.metadata.version("aioice") == "0.13.0"


def test_private_methods_exist_with_expected_signatures() -> None:
    rtp = RTCDtlsTransport._handle_rtp_data
    rtcp = RTCDtlsTransport._handle_rtcp_data
    assert inspect.iscoroutinefunction(rtp) and list(inspect.signature(rtp).parameters) == ["self", "data", "arrival_time_ms"]
    assert inspect.iscoroutinefunction(rtcp) and list(inspect.signature(rtcp).parameters) == ["self", "data"]
    assert list(inspect.signature(RTCDtlsTransport._set_role).parameters) == ["self", "role"]
    assert list(inspect.signature(aioice.ice.Connection.request_received).parameters)[:4] == [
        "self",
        "message",
        "addr",
        "protocol",
    ]
    assert list(inspect.signature(aioice.ice.Connection.build_request).parameters) == ["self", "pair", "nominate"]
    assert "self._query_consent_task = asyncio.create_task(" in inspect.getsource(aioice.ice.Connection.connect)
    # share_dtls_context replaces the certificate's context factory, which start() must still call per session.
    assert list(inspect.signature(adapter.RTCCertificate._create_ssl_context).parameters) == ["self", "srtp_profiles"]
    assert "._create_ssl_context(" in inspect.getsource(RTCDtlsTransport.start)
    # The receive loop must still call the hooks we replace.
    source = inspect.getsource(RTCDtlsTransport._recv_next)
    assert "self._handle_rtp_data(" in source and "self._handle_rtcp_data(" in source
    assert "get_component_candidates" in dir(aioice.ice.Connection)
    # The demultiplexer replaces StunProtocol.datagram_received per instance and relies on aioice passing media on.
    assert list(inspect.signature(aioice.ice.StunProtocol.datagram_received).parameters) == ["self", "data", "addr"]
    assert "self._protocols += host_protocols" in inspect.getsource(aioice.ice.Connection.get_component_candidates)
    # SharedUdpPort builds StunProtocols itself and closes them through their transport (connection_lost).
    assert list(inspect.signature(aioice.ice.StunProtocol.__init__).parameters) == ["self", "receiver"]
    assert "await self.__closed" in inspect.getsource(aioice.ice.StunProtocol.close)
    assert "self.receiver.protocol_lost(self)" in inspect.getsource(aioice.ice.StunProtocol.connection_lost)


async def test_private_attributes_exist_on_live_objects() -> None:
    """Build the objects the adapter touches and check every instance attribute it reads or writes."""
    gatherer = adapter.RTCIceGatherer(iceServers=[])
    connection = gatherer._connection
    for name in ("_local_candidates", "_local_candidates_start", "_local_candidates_end", "_nominated", "_query_consent_task", "_protocols"):
        assert hasattr(connection, name), f"aioice.Connection lost {name}"
    await adapter.gather_host_candidates(gatherer, ["127.0.0.1"])
    candidates = gatherer.getLocalCandidates()
    assert [c.ip for c in candidates] == ["127.0.0.1"]
    assert len(connection._protocols) == 1 and isinstance(connection._protocols[0], aioice.ice.StunProtocol)
    [sock] = adapter.own_sockets(gatherer)  # the socket aioice bound for the candidate
    assert sock.getsockname() == (candidates[0].ip, candidates[0].port)
    ice = adapter.RTCIceTransport(gatherer)
    assert ice._connection is connection and connection.ice_controlling is False
    adapter.set_ice_controlling(ice, True)  # an offerer (gateway/relay.py)
    assert connection.ice_controlling is True
    dtls = adapter.RTCDtlsTransport(ice, [adapter.RTCCertificate.generateCertificate()])
    assert hasattr(dtls, "_tx_srtp") and hasattr(dtls, "_rx_srtp")
    adapter.set_dtls_role(dtls, "server")
    assert dtls._role == "server"
    await ice.stop()


async def test_two_transports_connect_and_exchange_srtp_through_the_adapter() -> None:
    """End to end over loopback: gather, ICE, DTLS, then PacketSender -> hook_packets delivers RTP and RTCP."""
    ia, da, ib, db = await connected_pair()
    got_rtp: list[bytes] = []
    got_rtcp: list[bytes] = []
    adapter.hook_packets(db, lambda data, t: got_rtp.append(data), got_rtcp.append)
    drops: list[str] = []
    demux = adapter.demultiplex(ib, lambda data, t: got_rtp.append(data), got_rtcp.append, drops.append)
    sender = adapter.PacketSender(ia, da)
    rtp = bytes([0x80, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 7]) + b"payload"
    rtcp = bytes([0x80, 201, 0, 1, 0, 0, 0, 7])  # empty receiver report
    assert sender.send_rtp(rtp) > len(rtp)  # SRTP adds its authentication tag
    assert sender.send_rtcp(rtcp) > len(rtcp)
    for _ in range(100):
        if got_rtp and got_rtcp:
            break
        await asyncio.sleep(0.02)
    assert got_rtp == [rtp]
    assert got_rtcp == [rtcp]
    # The synchronous path: once started, media is unprotected where the datagram arrives (no queue, no task).
    demux.start_media(db)
    protocol = ib._connection._protocols[0]
    sender.send_rtp(bytes([0x80, 96, 0, 2, 0, 0, 0, 9, 0, 0, 0, 7]) + b"second")
    for _ in range(100):
        if len(got_rtp) == 2:
            break
        await asyncio.sleep(0.02)
    assert got_rtp[-1].endswith(b"second")
    protocol.datagram_received(bytes([0x80, 96, 0, 3]) + bytes(30), ("127.0.0.1", 9))  # not SRTP: fails to auth
    assert drops == ["srtp_unprotect_failed"] and len(got_rtp) == 2
    protocol.datagram_received(bytes([0x80, 96]) + bytes(1698), ("127.0.0.1", 9))  # longer than any SRTP we take
    protocol.datagram_received(bytes([0x80, 200, 0, 6]) + bytes(30), ("127.0.0.1", 9))  # SRTCP-looking, forged
    assert drops == ["srtp_unprotect_failed"] * 3 and len(got_rtp) == 2 and got_rtcp == [rtcp]
    # A STUN-looking datagram whose attribute makes aioice's parser raise struct.error (not ValueError): dropped
    # and counted, and the socket keeps working.
    bad_stun = bytes.fromhex("000100042112a442" + "00" * 12 + "00030000")  # CHANGE-REQUEST with an empty value
    protocol.datagram_received(bad_stun, ("127.0.0.1", 9))
    assert drops[-1] == "stun_malformed", drops
    assert not protocol.transport.is_closing()
    adapter.stop_aioice_consent(ia)
    assert ia._connection._query_consent_task is None
    consent = adapter.ConsentChecks(ia)
    adapter.demultiplex(ia, lambda data, t: None, lambda data: None, drops.append, consent)
    assert consent.send() and await wait_for(lambda: consent.last_response is not None, 2.0)  # the peer answers
    await ib.stop()
    answered = consent.last_response
    assert consent.send() and not await wait_for(lambda: consent.last_response != answered, 1.0)  # ...not once gone
    for t in (da, db):
        await t.stop()
    await ia.stop()


async def test_a_consent_response_that_comes_late_still_counts() -> None:
    """RFC 7675 §5.1: a check is sent once and "a response might be for a previous request". The peer answers each
    check 1.2 s late (a gateway whose event loop is behind reads it that late): aioice's transaction, which the
    gateway used until now, gave up after 0.5 s, so no check ever counted; ConsentChecks counts the response when it
    comes, for an earlier check too, but not one with a bad MESSAGE-INTEGRITY, from another address, or twice."""
    ia, da, ib, db = await connected_pair()
    try:
        adapter.stop_aioice_consent(ia)
        adapter.stop_aioice_consent(ib)
        consent = adapter.ConsentChecks(ia)
        adapter.demultiplex(ia, lambda data, t: None, lambda data: None, lambda reason: None, consent)
        loop = asyncio.get_running_loop()
        [protocol_b] = ib._connection._protocols
        send_b = protocol_b.transport.sendto
        answered: list[bytes] = []

        def late_sendto(data: bytes, addr: Any = None) -> None:
            if data[:2] == b"\x01\x01":  # B's binding success responses leave 1.2 s late
                answered.append(data)
                loop.call_later(1.2, send_b, data, addr)
            else:
                send_b(data, addr)

        protocol_b.transport.sendto = late_sendto  # type: ignore[method-assign]
        pair = ia._connection._nominated[1]
        # What aioice's own check did: one transaction of 0.5 s, no retransmission. It times out.
        with pytest.raises(aioice.stun.TransactionTimeout):
            request = ia._connection.build_request(pair, nominate=False)
            await pair.protocol.request(request, pair.remote_addr,
                                        integrity_key=ia._connection.remote_password.encode(), retransmissions=0)
        assert consent.send()
        await asyncio.sleep(0.3)
        assert consent.send()  # a second check before the first one's answer: both answers count when they come
        assert await wait_for(lambda: consent.last_response is not None, 2.0) and len(answered) >= 3
        first = consent.last_response
        assert await wait_for(lambda: consent.last_response != first, 1.0)  # the second check's answer, later still

        # A replayed answer, one from another address, one with a bad MESSAGE-INTEGRITY: none counts.
        late = answered[-1]
        assert not consent.on_response(late, pair.remote_addr)  # already counted
        assert consent.send()
        [txid] = [consent._sent[-1]]
        response = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                       message_class=aioice.stun.Class.RESPONSE, transaction_id=txid)
        response.add_message_integrity(b"not the password")
        assert not consent.on_response(bytes(response), pair.remote_addr)
        response.add_message_integrity(ia._connection.remote_password.encode())
        assert not consent.on_response(bytes(response), ("127.0.0.1", 9))
        assert consent.on_response(bytes(response), pair.remote_addr)
    finally:
        for t in (da, db):
            await t.stop()
        await ia.stop()
        await ib.stop()


async def connected_pair(certificate_b: Optional[adapter.RTCCertificate] = None) -> tuple:
    """Two adapter-built transports on loopback, ICE + DTLS connected (A is ICE controlling and DTLS client);
    B uses `certificate_b` when given (a gateway's one certificate), else its own."""
    adapter.install_shims()

    async def side(certificate=None):
        gatherer = adapter.RTCIceGatherer(iceServers=[])
        await adapter.gather_host_candidates(gatherer, ["127.0.0.1"])
        ice = adapter.RTCIceTransport(gatherer)
        dtls = adapter.RTCDtlsTransport(ice, [certificate or adapter.RTCCertificate.generateCertificate()])
        return gatherer, ice, dtls

    (ga, ia, da), (gb, ib, db) = await side(), await side(certificate_b)
    adapter.set_ice_controlling(ia, True)
    adapter.set_dtls_role(da, "client")
    adapter.set_dtls_role(db, "server")
    for c in gb.getLocalCandidates():
        await ia.addRemoteCandidate(c)
    await ia.addRemoteCandidate(None)
    await asyncio.wait_for(asyncio.gather(ia.start(gb.getLocalParameters()), ib.start(ga.getLocalParameters())), 10)
    await asyncio.wait_for(asyncio.gather(da.start(db.getLocalParameters()), db.start(da.getLocalParameters())), 10)
    assert da.state == db.state == "connected"
    return ia, da, ib, db


async def test_sessions_of_one_certificate_share_one_dtls_context() -> None:
    """share_dtls_context (what the gateway does with its one certificate): two sessions handshake on the same
    OpenSSL context, which keeps no session cache, each with its own peer certificate and SRTP keys; media flows on
    both, and on one after the other has closed. (Its mode, SSL_MODE_RELEASE_BUFFERS, cannot be read back: pyOpenSSL
    has no getter and refuses set_mode on a context in use.)"""
    certificate = adapter.share_dtls_context(adapter.RTCCertificate.generateCertificate())
    first, second = await connected_pair(certificate), await connected_pair(certificate)
    try:
        context = first[3]._ssl.get_context()
        assert second[3]._ssl.get_context() is context
        assert first[1]._ssl.get_context() is not context  # the peers' own certificates: contexts of their own
        assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
        assert first[3]._ssl.get_peer_certificate().digest("sha256") != second[3]._ssl.get_peer_certificate().digest("sha256")
        assert first[3]._rx_srtp is not second[3]._rx_srtp

        async def exchange(pair: tuple, seq: int) -> list[bytes]:
            ia, da, ib, db = pair
            got: list[bytes] = []
            adapter.hook_packets(db, lambda data, t: got.append(data), lambda data: None)
            await deliver([adapter.PacketSender(ia, da)], [rtp_packet(seq)], got)
            return got

        assert await exchange(first, 1) == [rtp_packet(1)]
        assert await exchange(second, 2) == [rtp_packet(2)]
        await close_pair(*first)
        assert await exchange(second, 3) == [rtp_packet(3)]
    finally:
        await close_pair(*second)
        await close_pair(*first)


async def close_pair(ia, da, ib, db) -> None:
    for t in (da, db):
        await t.stop()
    for t in (ia, ib):
        await t.stop()


def rtp_packet(seq: int, ssrc: int = 0x01020304) -> bytes:
    payload = seq.to_bytes(4, "big") * 50  # 200 bytes that say which packet this is
    return bytes([0x80, 96]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 3000 & 0xFFFFFFFF).to_bytes(4, "big") + \
        ssrc.to_bytes(4, "big") + payload


async def deliver(senders: list, packets: list[bytes], got: list[bytes]) -> None:
    """Send in bursts of 32, round-robin over `senders`, letting the receiver read between bursts (bounded)."""
    expected = len(got) + len(packets)
    for index, packet in enumerate(packets):
        # The tag of the DTLS-SRTP profile aiortc negotiated: 10 bytes (AES_CM_128_HMAC_SHA1_80, RFC 3711 §4.2) or
        # 16 (AEAD_AES_128_GCM, RFC 7714 §8.1; aiortc 1.16 prefers it).
        assert senders[index % len(senders)].send_rtp(packet) - len(packet) in (10, 16)
        if index % 32 == 31:
            await asyncio.sleep(0.002)
    for _ in range(250):
        if len(got) >= expected:
            break
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("path", ["native", "python", "pylibsrtp"])
async def test_packet_sender_paths_are_unprotected_by_the_peers_real_srtp_session_across_the_seq_wrap(path) -> None:
    """Both egress paths, end to end: the peer's real SRTP receive session (aiortc's, keyed from DTLS-SRTP)
    authenticates and decrypts every packet, also after the 16-bit sequence number wraps (the rollover counter
    moves to 1, RFC 3711 §3.3.1: a wrong ROC changes the keystream and the auth tag), and SRTCP."""
    if path == "native" and adapter.EGRESS_PATH != "native":
        pytest.fail("the compiled egress path is not built (pip install -e . builds gateway/_srtp_send.c)")
    ia, da, ib, db = await connected_pair()
    got_rtp: list[bytes] = []
    got_rtcp: list[bytes] = []
    drops: list[str] = []
    demux = adapter.demultiplex(ib, lambda data, t: got_rtp.append(data), got_rtcp.append, drops.append)
    demux.start_media(db)  # unprotect with db's _rx_srtp where each datagram arrives
    try:
        sender = adapter.PacketSender(ia, da, path=path, on_drop=drops.append)
        packets = [rtp_packet(seq) for seq in range(65536 - 600, 65536 + 700)]  # 1,300 packets, wrap in the middle
        await deliver([sender], packets, got_rtp)
        assert sender.path == path
        assert drops == [] and len(got_rtp) == len(packets)
        assert got_rtp == packets
        reports = [bytes([0x80, 201, 0, 1]) + i.to_bytes(4, "big") for i in range(40)]  # empty receiver reports
        for report in reports:
            assert sender.send_rtcp(report) - len(report) in (4 + 10, 4 + 16)  # SRTCP: E flag + index, the tag
        for _ in range(250):
            if len(got_rtcp) == len(reports):
                break
            await asyncio.sleep(0.02)
        assert got_rtcp == reports
    finally:
        await close_pair(ia, da, ib, db)


async def test_both_paths_share_one_srtp_context_and_a_socket_error_is_dropped_and_counted() -> None:
    """The compiled, the Python and the pylibsrtp path protect with one libsrtp context: interleaved packet by packet
    across the wrap, the peer still authenticates all of them (one rollover counter per stream). A datagram the
    socket refuses is dropped and counted by the compiled path, never raised into the forwarding path."""
    if adapter.EGRESS_PATH != "native":
        pytest.fail("the compiled egress path is not built (pip install -e . builds gateway/_srtp_send.c)")
    ia, da, ib, db = await connected_pair()
    got_rtp: list[bytes] = []
    drops: list[str] = []
    got_rtcp: list[bytes] = []
    demux = adapter.demultiplex(ib, lambda data, t: got_rtp.append(data), got_rtcp.append, drops.append)
    demux.start_media(db)
    try:
        native = adapter.PacketSender(ia, da, path="native", on_drop=drops.append)
        python = adapter.PacketSender(ia, da, path="python")
        reference = adapter.PacketSender(ia, da, path="pylibsrtp")
        packets = [rtp_packet(seq, ssrc=0x0A0B0C0D) for seq in range(65536 - 300, 65536 + 300)]
        await deliver([native, python, reference], packets, got_rtp)
        assert drops == [] and got_rtp == packets
        # SRTCP carries its index in the packet (RFC 3711 §3.4) and the receiver's replay list rejects a repeated
        # one: interleaved reports all arrive only if the three paths count one index.
        senders = [native, python, reference]
        reports = [bytes([0x80, 201, 0, 1]) + i.to_bytes(4, "big") for i in range(30)]
        for index, report in enumerate(reports):
            assert senders[index % 3].send_rtcp(report) > len(report)
        for _ in range(250):
            if len(got_rtcp) + len(drops) >= len(reports):
                break
            await asyncio.sleep(0.02)
        assert drops == [] and got_rtcp == reports
        # SHUT_WR on the pair's socket makes every send fail with EPIPE (Linux sets the flag on UDP too).
        fd = ia._connection._nominated[1].protocol.transport.get_extra_info("socket").fileno()
        probe = socket.socket(fileno=os.dup(fd))
        try:
            probe.shutdown(socket.SHUT_WR)
        except OSError as exc:
            assert exc.errno == errno.ENOTCONN  # unconnected UDP: reported, but the flag is set
        finally:
            probe.close()
        assert native.send_rtp(rtp_packet(301, ssrc=0x0A0B0C0D)) == 0
        assert native.dropped == 1 and drops == ["egress_send_failed"]
        native.close()
        assert native.send_rtp(rtp_packet(302, ssrc=0x0A0B0C0D)) == 0  # route taken again: still refused
        assert native.dropped == 1 and drops == ["egress_send_failed"] * 2
    finally:
        await close_pair(ia, da, ib, db)


def test_the_compiled_path_calls_the_libsrtp_2_api_it_was_written_for() -> None:
    """gateway/_srtp_send.c calls pylibsrtp's srtp_protect by address with libsrtp 2's signature."""
    from pylibsrtp._binding import ffi, lib

    for name in ("srtp_protect", "srtp_protect_rtcp", "srtp_unprotect", "srtp_unprotect_rtcp"):
        assert ffi.typeof(getattr(lib, name)).cname == adapter.LIBSRTP2_PROTECT_CTYPE
    session = pylibsrtp.Session()
    assert ffi.typeof(session._srtp).cname == "struct srtp_ctx_t_ * *"
    assert adapter.EGRESS_PATH == "native", "gateway/_srtp_send.c was not built or not importable"


@pytest.mark.parametrize("profile", ["AEAD_AES_128_GCM", "AES128_CM_SHA1_80"])
def test_the_compiled_unprotect_agrees_with_pylibsrtp_on_one_session(profile: str) -> None:
    """The compiled unprotect (what the demultiplexer uses for every SRTP/SRTCP datagram a peer sends) and
    pylibsrtp's, taking turns on one receive session: the same clear packets, one replay list (RFC 3711 §3.3.2: a
    packet one path took is a replay to the other), and a tampered, replayed, truncated or oversized packet is
    pylibsrtp.Error from the compiled one, which the demultiplexer counts and drops."""
    from pylibsrtp import Policy, Session

    assert adapter.EGRESS_PATH == "native", "gateway/_srtp_send.c was not built or not importable"
    kind = getattr(Policy, f"SRTP_PROFILE_{profile}")
    key = bytes(range(28 if profile.startswith("AEAD") else 30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=kind))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=kind))
    for rtcp in (False, True):
        compiled = adapter.unprotector(rx, rtcp=rtcp)
        assert compiled is not rx.unprotect and compiled is not rx.unprotect_rtcp
        reference = rx.unprotect_rtcp if rtcp else rx.unprotect
        protect = tx.protect_rtcp if rtcp else tx.protect
        if rtcp:
            clear = [bytes([0x80, 201, 0, 1]) + (0x1234 + i).to_bytes(4, "big") for i in range(20)]
        else:
            clear = [rtp_packet(65530 + i, ssrc=0x0A0B0C0D) for i in range(20)]  # across the wrap
        protected = [protect(packet) for packet in clear]
        got = [(compiled if i % 2 else reference)(packet) for i, packet in enumerate(protected)]
        assert got == clear
        for unprotect in (compiled, reference):
            with pytest.raises(pylibsrtp.Error):
                unprotect(protected[4])  # taken already, by the other path: a replay
        later = bytes([0x80, 201, 0, 1, 0, 0, 0x99, 0x99]) if rtcp else rtp_packet(30, ssrc=0x0A0B0C0D)
        fresh = protect(later)
        tampered = bytearray(fresh)
        tampered[-1] ^= 1
        with pytest.raises(pylibsrtp.Error):
            compiled(bytes(tampered))
        assert compiled(fresh) == later  # the untouched packet still authenticates after the forgery
        for bad in (b"", b"\x80", fresh[:7], bytes(1700)):
            with pytest.raises(pylibsrtp.Error):
                compiled(bad)
        with pytest.raises(TypeError):
            compiled(bytearray(fresh))


async def test_priority_shim_answers_checks_without_priority() -> None:
    """FFmpeg 8.0 omits STUN PRIORITY; with the shim aioice answers and learns the peer-reflexive candidate.

    A raw UDP socket on loopback plays the client: it sends a binding request with USERNAME and
    MESSAGE-INTEGRITY but no PRIORITY, and must get a success response.
    """
    import socket

    from aioice import stun

    adapter.install_shims()
    gatherer = adapter.RTCIceGatherer(iceServers=[])
    await adapter.gather_host_candidates(gatherer, ["127.0.0.1"])
    connection = gatherer._connection
    connection.remote_username = "peer"
    connection.remote_password = "peerpasswordpeerpassword"
    connection._early_checks_done = True  # as after connect(): handle checks at once
    local = gatherer.getLocalCandidates()[0]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{connection.local_username}:peer"
        request.attributes["ICE-CONTROLLING"] = 1
        request.add_message_integrity(connection.local_password.encode())
        assert "PRIORITY" not in request.attributes
        client.sendto(bytes(request), (local.ip, local.port))
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
        response = stun.parse_message(data)
        assert response.message_class == stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert [c.type for c in connection.remote_candidates] == ["prflx"]
    finally:
        client.close()
        await connection.close()


@pytest.mark.parametrize("entry", adapter.PRIVATE_NAMES, ids=lambda e: f"{e[0]}.{e[1]}")
def test_every_private_name_is_documented_and_referenced(entry: tuple[str, str, str]) -> None:
    owner, name, _ = entry
    source = inspect.getsource(adapter)
    assert name.split(".")[0] in source, f"{owner}.{name} is listed but not used by the adapter"
