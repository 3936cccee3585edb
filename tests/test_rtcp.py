"""gateway.rtcp: builders round-trip through parse_compound, agree with aiortc's independent RTCP code, and
malformed input only ever raises RtcpError."""

from __future__ import annotations

import random
import struct
import time

import pytest
from aiortc import rtp as aiortc_rtp

from gateway.rtcp import (
    Bye,
    FullIntraRequest,
    GenericNack,
    PictureLossIndication,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpError,
    SenderReport,
    SourceDescription,
    TransportCcFeedback,
    UnknownRtcp,
    build_bye,
    build_fir,
    build_generic_nack,
    build_pli,
    build_receiver_report,
    build_remb,
    build_sdes_cname,
    build_sender_report,
    lone_transport_cc_fci,
    ntp_middle32,
    ntp_now,
    parse_compound,
)

BLOCK_A = ReportBlock(0x11111111, 25, 1234, 0x0001FFFF, 42, 0xDEADBEEF, 65536)
BLOCK_B = ReportBlock(0x22222222, 255, -3, 7, 0, 0, 0)  # negative cumulative loss (duplicates, RFC 3550 §6.4.1)


def header(first: int, packet_type: int, body: bytes) -> bytes:
    return struct.pack("!BBH", first, packet_type, len(body) // 4) + body


def block(i: int) -> ReportBlock:
    return ReportBlock(1000 + i, i, i * 10, 50_000 + i, i * 3, i * 7, i * 11)


# --- round trips ------------------------------------------------------------------------------------------


def test_sender_report_round_trip() -> None:
    data = build_sender_report(0xCAFEBABE, 0x0123456789ABCDEF, 0xFFFFFFFF, 12, 3400, [BLOCK_A, BLOCK_B])
    assert len(data) == 4 + 24 + 2 * 24
    assert parse_compound(data) == [
        SenderReport(0xCAFEBABE, 0x0123456789ABCDEF, 0xFFFFFFFF, 12, 3400, [BLOCK_A, BLOCK_B])
    ]


def test_sender_report_counters_wrap() -> None:
    (sr,) = parse_compound(build_sender_report(1, 1 << 64 | 5, (1 << 32) + 9, (1 << 32) + 1, (1 << 33) + 2))
    assert (sr.ntp_timestamp, sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (5, 9, 1, 2)


def test_sender_report_with_many_blocks_spills_into_receiver_report() -> None:
    blocks = [block(i) for i in range(35)]
    sr, rr = parse_compound(build_sender_report(7, 1, 2, 3, 4, blocks))
    assert isinstance(sr, SenderReport) and sr.reports == blocks[:31]
    assert rr == ReceiverReport(7, blocks[31:])


def test_receiver_report_round_trip() -> None:
    assert parse_compound(build_receiver_report(0xABCDEF01, [BLOCK_A])) == [ReceiverReport(0xABCDEF01, [BLOCK_A])]
    assert parse_compound(build_receiver_report(5, [])) == [ReceiverReport(5, [])]
    blocks = [block(i) for i in range(70)]
    packets = parse_compound(build_receiver_report(5, blocks))
    assert [len(p.reports) for p in packets] == [31, 31, 8]
    assert [b for p in packets for b in p.reports] == blocks


def test_packets_lost_is_clamped_to_24_bit_signed() -> None:
    blocks = [ReportBlock(1, 0, 10**9, 0, 0, 0, 0), ReportBlock(2, 0, -(10**9), 0, 0, 0, 0)]
    (rr,) = parse_compound(build_receiver_report(1, blocks))
    assert [b.packets_lost for b in rr.reports] == [(1 << 23) - 1, -(1 << 23)]


@pytest.mark.parametrize("cname", ["a", "ab", "abc", "abcd", "{3f2a-cname}", "caméra", "x" * 255])
def test_sdes_cname_round_trip(cname: str) -> None:
    data = build_sdes_cname(0x01020304, cname)
    assert len(data) % 4 == 0
    assert parse_compound(data) == [SourceDescription([(0x01020304, {1: cname.encode()})])]


def test_sdes_cname_too_long() -> None:
    with pytest.raises(ValueError):
        build_sdes_cname(1, "x" * 256)


def test_sdes_multiple_chunks_and_items() -> None:
    chunk1 = struct.pack("!I", 1) + b"\x01\x03abc" + b"\x02\x02no" + b"\x00\x00\x00"  # 4 + 5 + 4 + 3 = 16
    chunk2 = struct.pack("!I", 2) + b"\x01\x02zz" + b"\x00\x00"  # 4 + 4 + 2 = 10 -> pad to 12
    data = header(0x82, 202, chunk1 + chunk2 + b"\x00\x00")
    assert parse_compound(data) == [SourceDescription([(1, {1: b"abc", 2: b"no"}), (2, {1: b"zz"})])]


def test_bye_round_trip() -> None:
    assert parse_compound(build_bye([1, 0xFFFFFFFF])) == [Bye([1, 0xFFFFFFFF], None)]
    assert parse_compound(build_bye([9], reason="going away")) == [Bye([9], b"going away")]
    assert parse_compound(build_bye([9], reason=b"abc")) == [Bye([9], b"abc")]
    assert parse_compound(build_bye([])) == [Bye([], None)]
    with pytest.raises(ValueError):
        build_bye(range(32))


def test_generic_nack_round_trip() -> None:
    data = build_generic_nack(0xAAAA, 0xBBBB, [100])
    assert parse_compound(data) == [GenericNack(0xAAAA, 0xBBBB, [100])]
    with pytest.raises(ValueError):
        build_generic_nack(1, 2, [])


def test_generic_nack_packs_across_wrap_into_fewest_items() -> None:
    lost = [1, 2, 3, 17, 18, 65535, 0]
    data = build_generic_nack(1, 2, lost)
    # 65535 covers 0..15 via BLP (0, 1, 2, 3); 17 is 18 past 65535 so needs its own item with 18.
    assert len(data) == 12 + 2 * 4
    assert struct.unpack_from("!HHHH", data, 12) == (65535, 0b1111, 17, 0b1)
    (nack,) = parse_compound(data)
    assert nack.lost == [65535, 0, 1, 2, 3, 17, 18]


@pytest.mark.parametrize(
    ("lost", "items"),
    [
        (range(0, 17), 1),  # PID + 16 bits
        (range(0, 18), 2),
        (range(65530, 65530 + 17), 1),  # the same run straddling the wrap
        ([5, 5, 5 + 65536], 1),  # duplicates and extended sequence numbers collapse
        ([0, 100, 200, 300], 4),
        ([65535, 15], 1),  # 15 is PID + 16, the last bit of BLP
        ([65535, 16], 2),
    ],
)
def test_generic_nack_item_counts(lost, items: int) -> None:
    data = build_generic_nack(1, 2, lost)
    assert (len(data) - 12) // 4 == items
    (nack,) = parse_compound(data)
    assert sorted(nack.lost) == sorted({s & 0xFFFF for s in lost})


def test_generic_nack_random_sets_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(300):
        base = rng.randrange(65536)
        lost = {(base + rng.randrange(400)) & 0xFFFF for _ in range(rng.randrange(1, 60))}
        (nack,) = parse_compound(build_generic_nack(3, 4, lost))
        assert sorted(nack.lost) == sorted(lost) and len(nack.lost) == len(lost)


def test_pli_round_trip() -> None:
    data = build_pli(0x12345678, 0x9ABCDEF0)
    assert len(data) == 12
    assert parse_compound(data) == [PictureLossIndication(0x12345678, 0x9ABCDEF0)]


def test_fir_round_trip() -> None:
    data = build_fir(0x10, 0x20, 257)
    assert len(data) == 20
    assert struct.unpack_from("!I", data, 8)[0] == 0  # RFC 5104 §4.3.1.2: header media SSRC is 0
    assert parse_compound(data) == [FullIntraRequest(0x10, [(0x20, 1)])]


def test_fir_with_several_entries() -> None:
    body = struct.pack("!II", 5, 0) + struct.pack("!IB3x", 6, 1) + struct.pack("!IB3x", 7, 200)
    assert parse_compound(header(0x84, 206, body)) == [FullIntraRequest(5, [(6, 1), (7, 200)])]


@pytest.mark.parametrize("bitrate", [0, 1, 150_000, (1 << 18) - 1, 2_500_000, 50_000_000, 10**12])
def test_remb_round_trip_within_rounding(bitrate: int) -> None:
    (remb,) = parse_compound(build_remb(0x42, bitrate, [0xA, 0xB]))
    assert isinstance(remb, Remb) and remb.sender_ssrc == 0x42 and remb.ssrcs == [0xA, 0xB]
    assert remb.bitrate <= bitrate
    assert bitrate - remb.bitrate <= bitrate / (1 << 17)  # 18-bit mantissa, rounded down
    if bitrate < 1 << 18:
        assert remb.bitrate == bitrate


def test_remb_exponent_and_mantissa_fields() -> None:
    data = build_remb(1, 2_500_000, [])
    assert data[12:16] == b"REMB" and data[16] == 0
    exponent, mantissa = data[17] >> 2, ((data[17] & 3) << 16) | (data[18] << 8) | data[19]
    assert (exponent, mantissa) == (4, 2_500_000 >> 4)  # 2.5e6 needs 22 bits: shift by 4
    data = build_remb(1, 50_000_000, [])
    exponent, mantissa = data[17] >> 2, ((data[17] & 3) << 16) | (data[18] << 8) | data[19]
    assert (exponent, mantissa) == (8, 50_000_000 >> 8)
    with pytest.raises(ValueError):
        build_remb(1, -1, [])


def test_compound_sender_report_and_sdes() -> None:
    data = build_sender_report(0x1234, ntp_now(), 90000, 10, 12000, [BLOCK_A]) + build_sdes_cname(0x1234, "cn")
    sr, sdes = parse_compound(data)
    assert isinstance(sr, SenderReport) and sr.ssrc == 0x1234 and sr.reports == [BLOCK_A]
    assert sdes == SourceDescription([(0x1234, {1: b"cn"})])


def test_compound_of_every_builder() -> None:
    parts = [
        build_receiver_report(1, [BLOCK_B]),
        build_sdes_cname(1, "c"),
        build_generic_nack(1, 2, [10, 12]),
        build_pli(1, 2),
        build_fir(1, 2, 3),
        build_remb(1, 1_000_000, [2]),
        build_bye([1]),
    ]
    types = [type(p) for p in parse_compound(b"".join(parts))]
    assert types == [
        ReceiverReport, SourceDescription, GenericNack, PictureLossIndication, FullIntraRequest, Remb, Bye
    ]


def test_accepts_bytearray_and_memoryview() -> None:
    data = build_pli(1, 2)
    assert parse_compound(bytearray(data)) == parse_compound(memoryview(data)) == parse_compound(data)


# --- packets we do not model ------------------------------------------------------------------------------


def test_transport_cc_keeps_fci_and_is_not_a_nack() -> None:
    fci = bytes(range(1, 13))
    data = header(0x8F, 205, struct.pack("!II", 1, 2) + fci)
    assert parse_compound(data) == [TransportCcFeedback(1, 2, fci)]


@pytest.mark.parametrize(
    "packet",
    [
        header(0x80, 204, struct.pack("!I", 1) + b"NAME" + b"data"),  # APP
        header(0x80, 207, struct.pack("!I", 1) + bytes(8)),  # XR
        header(0x83, 205, struct.pack("!III", 1, 2, 3)),  # RTPFB fmt 3 (TMMBR)
        header(0x8F, 206, struct.pack("!II", 1, 0) + b"ABCD"),  # AFB that is not REMB
        header(0x8F, 206, struct.pack("!II", 1, 0)),  # AFB with no FCI
        header(0xAF, 206, struct.pack("!II", 1, 0) + b"RE\x00\x02"),  # 'RE' + padding is not 'REMB'
        header(0x82, 206, struct.pack("!II", 1, 2) + bytes(4)),  # PSFB fmt 2 (SLI)
        header(0x80, 195, b""),  # header-only packet of an unassigned type
    ],
)
def test_unknown_packets_keep_their_raw_bytes(packet: bytes) -> None:
    (unknown,) = parse_compound(packet + build_pli(1, 2))[:1]
    assert unknown == UnknownRtcp(packet[1], packet[0] & 0x1F, packet)


def test_padding_is_stripped() -> None:
    body = struct.pack("!I", 77) + b"\x00\x00\x00\x04"  # RR with RC=0, then 4 padding octets
    assert parse_compound(header(0xA0, 201, body)) == [ReceiverReport(77, [])]
    bye = struct.pack("!I", 5) + b"\x03abc" + b"\x00\x00\x00\x04"
    assert parse_compound(header(0xA1, 203, bye)) == [Bye([5], b"abc")]


def test_profile_specific_extension_after_report_blocks_is_ignored() -> None:
    data = build_receiver_report(1, [BLOCK_A])
    extended = header(data[0], 201, data[4:] + b"EXT!")
    assert parse_compound(extended) == [ReceiverReport(1, [BLOCK_A])]


# --- independent cross-check against aiortc.rtp.RtcpPacket.parse ------------------------------------------


def test_aiortc_parses_our_sender_report_and_sdes() -> None:
    data = build_sender_report(0x1234, 0x0102030405060708, 90000, 10, 12000, [BLOCK_A, BLOCK_B])
    data += build_sdes_cname(0x1234, "whipgate")
    sr, sdes = aiortc_rtp.RtcpPacket.parse(data)
    assert sr.ssrc == 0x1234
    info = sr.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count) == (
        0x0102030405060708,
        90000,
        10,
        12000,
    )
    def fields(b):
        return (b.ssrc, b.fraction_lost, b.packets_lost, b.highest_sequence, b.jitter, b.lsr, b.dlsr)

    assert [fields(r) for r in sr.reports] == [fields(b) for b in (BLOCK_A, BLOCK_B)]
    assert [(c.ssrc, c.items) for c in sdes.chunks] == [(0x1234, [(1, b"whipgate")])]


def test_aiortc_parses_our_feedback() -> None:
    data = (
        build_receiver_report(9, [BLOCK_B])
        + build_generic_nack(1, 2, [1, 2, 3, 17, 18, 65535, 0])
        + build_pli(3, 4)
        + build_fir(5, 6, 7)
        + build_remb(8, 2_500_000, [6, 7])
        + build_bye([9, 10])
    )
    rr, nack, pli, fir, remb, bye = aiortc_rtp.RtcpPacket.parse(data)
    assert rr.ssrc == 9 and rr.reports[0].packets_lost == -3
    assert (nack.fmt, nack.ssrc, nack.media_ssrc) == (1, 1, 2)
    assert sorted(s & 0xFFFF for s in nack.lost) == [0, 1, 2, 3, 17, 18, 65535]  # aiortc does not wrap PID+i
    assert (pli.fmt, pli.ssrc, pli.media_ssrc, pli.fci) == (1, 3, 4, b"")
    assert (fir.fmt, fir.ssrc, fir.media_ssrc) == (4, 5, 0) and struct.unpack("!IB3x", fir.fci) == (6, 7)
    assert remb.fmt == 15 and aiortc_rtp.unpack_remb_fci(remb.fci) == (2_500_000 >> 4 << 4, [6, 7])
    assert bye.sources == [9, 10]


def test_we_parse_aiortc_packets() -> None:
    sender_info = aiortc_rtp.RtcpSenderInfo(
        ntp_timestamp=0xAABBCCDD11223344, rtp_timestamp=123, packet_count=4, octet_count=5
    )
    receiver_info = aiortc_rtp.RtcpReceiverInfo(
        ssrc=3, fraction_lost=9, packets_lost=-7, highest_sequence=70000, jitter=11, lsr=12, dlsr=13
    )
    packets = [
        aiortc_rtp.RtcpSrPacket(ssrc=1, sender_info=sender_info, reports=[receiver_info]),
        aiortc_rtp.RtcpRrPacket(ssrc=2, reports=[receiver_info]),
        aiortc_rtp.RtcpSdesPacket(chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])]),
        aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[10, 11, 30, 31, 47]),
        aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2),
        aiortc_rtp.RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=aiortc_rtp.pack_remb_fci(50_000_000, [2])),
        aiortc_rtp.RtcpByePacket(sources=[1, 2]),
    ]
    parsed = parse_compound(b"".join(bytes(p) for p in packets))
    block = ReportBlock(3, 9, -7, 70000, 11, 12, 13)
    assert parsed == [
        SenderReport(1, 0xAABBCCDD11223344, 123, 4, 5, [block]),
        ReceiverReport(2, [block]),
        SourceDescription([(1, {1: b"cname"})]),
        GenericNack(1, 2, [10, 11, 30, 31, 47]),
        PictureLossIndication(1, 2),
        Remb(1, 50_000_000 >> 8 << 8, [2]),
        Bye([1, 2], None),
    ]


# --- malformed input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x80\xc9\x00", "truncated RTCP header"),
        (b"\x40\xc9\x00\x00", "version 1"),
        (b"\x00\x00\x00\x00", "version 0"),
        (b"\x80\xc9\x00\x01\x00\x00", "claims 8 bytes"),  # length field past the end
        (build_pli(1, 2) + b"\x80", "truncated RTCP header"),  # trailing garbage after a valid packet
        (build_pli(1, 2) + b"\x81\xce\x00\x09" + bytes(8), "claims 40 bytes"),
        (header(0xA0, 201, struct.pack("!I", 1) + b"\x00\x00\x00\x00"), "padding count 0"),
        (header(0xA0, 201, struct.pack("!I", 1) + b"\x00\x00\x00\x09"), "padding count 9"),
        (b"\xa0\xc8\x00\x00", "padding count"),  # padded header-only packet
        (header(0x80, 200, bytes(20)), "SR with 0 report blocks"),
        (header(0x81, 200, bytes(24)), "SR with 1 report blocks"),
        (header(0x81, 201, bytes(4)), "RR with 1 report blocks"),
        (header(0x81, 202, b""), "SDES chunk truncated"),
        (header(0x81, 202, struct.pack("!I", 1) + b"\x01\x02ab"), "not terminated"),
        (header(0x81, 202, struct.pack("!I", 1) + b"\x01\x09abc\x00"), "runs past"),
        (header(0x82, 203, struct.pack("!I", 1)), "BYE with 2 sources"),
        (header(0x81, 203, struct.pack("!I", 1) + b"\x09abc"), "BYE reason"),
        (header(0x81, 205, bytes(4)), "RTPFB needs 8"),
        (header(0x81, 205, bytes(8)), "generic NACK FCI of 0 bytes"),
        (header(0x81, 206, bytes(4)), "PSFB needs 8"),
        (header(0x84, 206, bytes(12)), "FIR FCI of 4 bytes"),
        (header(0x8F, 206, struct.pack("!II", 1, 0) + b"REMB"), "REMB truncated"),
        (header(0x8F, 206, struct.pack("!II", 1, 0) + b"REMB\x02\x00\x01\x00" + bytes(4)), "REMB lists 2 SSRCs"),
    ],
)
def test_malformed_input_raises_rtcp_error(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_generic_nack_with_partial_item() -> None:
    item = struct.pack("!HH", 1, 0)
    assert parse_compound(header(0x81, 205, struct.pack("!II", 1, 2) + item)) == [GenericNack(1, 2, [1])]
    # The same 16 bytes with the padding bit set and a padding count of 2 leave a 2-byte FCI.
    padded = header(0xA1, 205, struct.pack("!II", 1, 2) + item[:3] + b"\x02")
    with pytest.raises(RtcpError, match="not one or more 4-byte items"):
        parse_compound(padded)


def test_fuzz_only_rtcp_error_escapes() -> None:
    """3000 random and mutated inputs (fixed seed): parse_compound returns a list or raises RtcpError."""
    rng = random.Random(0xC0FFEE)
    seeds = [
        build_sender_report(1, ntp_now(), 2, 3, 4, [BLOCK_A]) + build_sdes_cname(1, "fuzz"),
        build_receiver_report(1, [BLOCK_A, BLOCK_B]) + build_generic_nack(1, 2, [1, 5, 40, 41]),
        build_pli(1, 2) + build_fir(1, 2, 3) + build_remb(1, 10**7, [1, 2, 3]),
        build_bye([1, 2], "bye") + header(0x8F, 205, bytes(16)) + header(0x80, 204, bytes(12)),
    ]
    outcomes = {"parsed": 0, "rejected": 0}
    for i in range(3000):
        kind = i % 4
        if kind == 0:  # random bytes, half of them with a valid version
            data = bytearray(rng.randbytes(rng.randrange(0, 96)))
            if data and rng.random() < 0.5:
                data[0] = 0x80 | (data[0] & 0x3F)
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(5)
                if op == 0 and data:  # flip a bit
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                elif op == 1:  # truncate
                    del data[rng.randrange(len(data) + 1) :]
                elif op == 2 and data:  # overwrite a byte
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op == 3:  # insert random bytes
                    pos = rng.randrange(len(data) + 1)
                    data[pos:pos] = rng.randbytes(rng.randrange(1, 9))
                elif op == 4 and len(data) >= 4:  # rewrite a packet header: count, type or length
                    pos = rng.randrange(0, len(data) - 3) & ~3
                    data[pos] = 0x80 | rng.randrange(64)
                    data[pos + 1] = rng.choice((200, 201, 202, 203, 204, 205, 206, 207))
                    data[pos + 3] = rng.randrange(12)
        try:
            result = parse_compound(bytes(data))
        except RtcpError:
            outcomes["rejected"] += 1
        else:
            assert isinstance(result, list)
            outcomes["parsed"] += 1
    assert outcomes["parsed"] > 100 and outcomes["rejected"] > 100  # both paths were exercised


# --- NTP helpers ------------------------------------------------------------------------------------------


def test_ntp_now_and_middle32() -> None:
    before = time.time()
    ntp = ntp_now()
    after = time.time()
    seconds = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32 - 2_208_988_800
    assert before - 0.001 <= seconds <= after + 0.001
    assert ntp < 1 << 64
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB


def test_lone_transport_cc_fast_path_agrees_with_parse_compound() -> None:
    """The receive path's shortcut for a browser's feedback on its own (padded to a word, as libwebrtc and
    TwccRecorder send it, or not): it takes exactly the datagrams parse_compound reads as one transport-wide
    feedback, with the same FCI; compounds, other packet types and anything malformed (bit flips, truncations, a
    length field or padding count off) go the full way."""
    from simulcast.twcc import TwccRecorder

    rng = random.Random(11)
    recorder = TwccRecorder()
    for seq in range(300):
        if rng.random() > 0.1:
            recorder.record(seq, 1_000_000 + seq * 3_000 + rng.randrange(2_000))
    lone = recorder.build_feedback(0x1234, 0x5678)
    assert lone and all(lone_transport_cc_fci(packet) == parse_compound(packet)[0].raw for packet in lone)
    seeds = lone + [build_receiver_report(1, [BLOCK_A]) + lone[0], lone[0] + build_pli(1, 2), build_pli(1, 2),
                    build_generic_nack(1, 2, [5, 6])]
    taken = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(0, 3)):
            choice = rng.random()
            if choice < 0.5 and data:
                data[rng.randrange(min(len(data), 24))] ^= 1 << rng.randrange(8)  # mostly the headers
            elif choice < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += bytes(rng.randrange(1, 5))
        data = bytes(data)
        fci = lone_transport_cc_fci(data)
        try:
            packets = parse_compound(data)
        except RtcpError:
            assert fci is None, data.hex()
            continue
        alone = len(packets) == 1 and isinstance(packets[0], TransportCcFeedback)
        assert (fci is not None) == alone, data.hex()
        if fci is not None:
            assert fci == packets[0].raw
            taken += 1
    assert taken > 1_000, taken  # the shortcut was exercised, not only refused
