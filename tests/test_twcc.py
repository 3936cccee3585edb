"""Transport-wide congestion control feedback (simulcast/twcc.py): TwccRecorder -> RTCP bytes ->
gateway.rtcp.parse_compound -> parse_feedback round trips, a hand-assembled packet, fuzzing and timing.

Section numbers refer to draft-holmer-rmcat-transport-wide-cc-extensions-01.
"""

from __future__ import annotations

import random
import struct
import time

import pytest

from gateway.rtcp import TransportCcFeedback, parse_compound
from simulcast.twcc import (
    LATE_WINDOW,
    MAX_FEEDBACK_SIZE,
    RESYNC_AFTER,
    REFERENCE_TIME_WRAP_US,
    TwccFeedback,
    TwccRecorder,
    parse_feedback,
)

from fuzzing import damage

SENDER = 0x11223344
MEDIA = 0x55667788
T0 = 1_234_567_890  # an arbitrary monotonic clock reading in µs


# ---------------------------------------------------------------------------------------------------------
# Helpers


def build_and_parse(recorder: TwccRecorder) -> list[TwccFeedback]:
    """build_feedback, check every packet's RTCP framing, run it through parse_compound and parse_feedback."""
    packets = recorder.build_feedback(SENDER, MEDIA)
    feedbacks = []
    for packet in packets:
        assert len(packet) % 4 == 0 and 24 <= len(packet) <= MAX_FEEDBACK_SIZE
        assert packet[0] >> 6 == 2, "V=2"
        assert packet[0] & 0x1F == 15, "FMT=15"
        assert packet[1] == 205, "PT=RTPFB"
        assert (struct.unpack_from("!H", packet, 2)[0] + 1) * 4 == len(packet)
        if packet[0] & 0x20:  # padding: last octet counts the padding octets (RFC 3550 §6.4.1)
            assert 1 <= packet[-1] <= 3 and packet[-packet[-1] : -1] == bytes(packet[-1] - 1)
        parsed = parse_compound(packet)
        assert len(parsed) == 1 and isinstance(parsed[0], TransportCcFeedback)
        assert (parsed[0].sender_ssrc, parsed[0].media_ssrc) == (SENDER, MEDIA)
        feedbacks.append(parse_feedback(parsed[0].raw))
    if packets:  # several feedback packets also make one valid compound packet
        assert len(parse_compound(b"".join(packets))) == len(packets)
    return feedbacks


def absolute(feedback: TwccFeedback) -> list[tuple[int, int | None]]:
    return [(seq, None if rel is None else feedback.reference_time_us + rel) for seq, rel in feedback.packets]


def flatten(feedbacks: list[TwccFeedback]) -> list[tuple[int, int | None]]:
    return [entry for feedback in feedbacks for entry in absolute(feedback)]


def assert_time(got_us: int | None, want_us: int) -> None:
    """Arrival times come back to 250 µs resolution (±125 µs), modulo the reference time wrap."""
    assert got_us is not None
    diff = (got_us - want_us) % REFERENCE_TIME_WRAP_US
    assert min(diff, REFERENCE_TIME_WRAP_US - diff) <= 125, (got_us, want_us)


def check_contiguous(feedbacks: list[TwccFeedback]) -> None:
    """Packets of one build cover consecutive ranges, and feedback counts go up by one."""
    for previous, current in zip(feedbacks, feedbacks[1:]):
        assert current.base_seq == (previous.base_seq + len(previous.packets)) & 0xFFFF
        assert current.feedback_count == (previous.feedback_count + 1) & 0xFF


def chunks_of(packet: bytes) -> list[tuple]:
    """Decode just the packet chunks of one feedback packet into ('run', symbol, length), ('v1', symbols)
    and ('v2', symbols) (§3.1.3, §3.1.4), to check which kinds the encoder chose."""
    fci = parse_compound(packet)[0].raw
    count = struct.unpack_from("!H", fci, 2)[0]
    pos, seen, result = 8, 0, []
    while seen < count:
        (word,) = struct.unpack_from("!H", fci, pos)
        pos += 2
        if word >> 15 == 0:
            result.append(("run", (word >> 13) & 3, word & 0x1FFF))
            seen += word & 0x1FFF
        elif (word >> 14) & 1 == 0:
            result.append(("v1", [(word >> (13 - i)) & 1 for i in range(14)]))
            seen += 14
        else:
            result.append(("v2", [(word >> (12 - 2 * i)) & 3 for i in range(7)]))
            seen += 7
    return result


# ---------------------------------------------------------------------------------------------------------
# Exact bytes and a hand-assembled packet (independent of the encoder)


def test_encoder_output_bytes_exact():
    recorder = TwccRecorder()
    for i in range(4):  # seq 10..13 at 320 ms + 0, 1, 2, 3 ms
        recorder.record(10 + i, 5 * 64_000 + 1000 * i)
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    expected = (
        bytes([0b1010_1111, 205]) + struct.pack("!H", 6)  # V=2, P=1, FMT=15; PT=205; 7 words
        + struct.pack("!II", SENDER, MEDIA)
        + struct.pack("!HH", 10, 4)  # base sequence number, packet status count
        + bytes([0, 0, 5, 0])  # reference time 5 * 64 ms, feedback packet count 0
        + struct.pack("!H", 0b0_01_0000000000100)  # run length chunk: "received, small delta" x 4
        + bytes([0, 4, 4, 4])  # receive deltas: 0, 1, 1, 1 ms in 250 µs units
        + bytes([0, 2])  # 2 padding octets, the last one counting them
    )
    assert packet == expected


def handmade_packet(sender: int, media: int, fci: bytes) -> bytes:
    """RTCP header (§3.1) + SSRCs + FCI, padded with the RFC 3550 padding bit."""
    body = struct.pack("!II", sender, media) + fci
    padding = -len(body) & 3
    words = (4 + len(body) + padding) // 4 - 1
    packet = bytes([0x80 | (0x20 if padding else 0) | 15, 205]) + struct.pack("!H", words) + body
    return packet + (bytes(padding - 1) + bytes([padding]) if padding else b"")


def test_handmade_packet_from_draft_bit_layout():
    # 23 statuses from base 65534 (wrapping to 0), built bit by bit from §3.1 - §3.1.5.
    chunk_1 = int("1" "0" "01111100011100", 2)  # §3.1.4 Example 1: 1-bit vector, 14 symbols
    chunk_2 = int("1" "1" "01" "10" "00" "01" "01" "00" "00", 2)  # 2-bit vector, 7 symbols
    chunk_3 = int("0" "01" "0000000000010", 2)  # §3.1.3 run: "received, small delta" x 2
    assert chunk_1 == 0x9F1C  # the draft's Example 1 bit pattern
    deltas = bytes([4, 1, 2, 3, 4, 10, 20, 30, 40]) + struct.pack("!h", -8) + bytes([255, 6, 7, 8])
    fci = (
        struct.pack("!HH", 65534, 23)  # base sequence number, packet status count
        + bytes([0xFF, 0xFF, 0xFE, 42])  # reference time -2 (24-bit signed) x 64 ms, fb pkt count 42
        + struct.pack("!HHH", chunk_1, chunk_2, chunk_3)
        + deltas
    )
    (parsed,) = parse_compound(handmade_packet(7, 9, fci))
    assert isinstance(parsed, TransportCcFeedback) and parsed.raw == fci
    feedback = parse_feedback(parsed.raw)
    assert feedback.base_seq == 65534
    assert feedback.reference_time_us == -128_000
    assert feedback.feedback_count == 42
    # Cumulative deltas x 250 µs; the large one (-8 ticks) goes back 2 ms.
    times = [1000, 1250, 1750, 2500, 3500, 6000, 11000, 18500, 28500, 26500, 90250, 91750, 93500, 95500]
    statuses = [0] + [1] * 5 + [0] * 3 + [1] * 3 + [0] * 2 + [1, 1, 0, 1, 1, 0, 0] + [1] * 2
    expected = [((65534 + i) & 0xFFFF, times.pop(0) if status else None) for i, status in enumerate(statuses)]
    assert feedback.packets == expected
    assert [seq for seq, _ in feedback.packets][:3] == [65534, 65535, 0]


def test_handmade_last_chunk_partly_used():
    # The status count ends inside the last chunk: the vector's remaining symbols are ignored (§3.1).
    chunk = int("1" "0" "110" "11111111111", 2)  # 1-bit vector: received, received, not received, ...
    fci = struct.pack("!HH", 100, 3) + bytes([0, 0, 1, 0]) + struct.pack("!H", chunk) + bytes([8, 4])
    feedback = parse_feedback(fci)
    assert feedback.reference_time_us == 64_000
    assert feedback.packets == [(100, 2000), (101, 3000), (102, None)]
    # A run longer than the status count is cut at the count as well.
    fci = struct.pack("!HH", 7, 2) + bytes(4) + struct.pack("!H", 0x2000 | 500) + bytes([1, 1])
    assert parse_feedback(fci).packets == [(7, 250), (8, 500)]


# ---------------------------------------------------------------------------------------------------------
# Round trips


def test_roundtrip_in_order():
    recorder = TwccRecorder()
    arrivals = {seq: T0 + 1000 * seq + (seq * 37) % 400 for seq in range(100)}
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    assert recorder.pending == 100
    feedbacks = build_and_parse(recorder)
    assert recorder.pending == 0
    assert len(feedbacks) == 1
    (feedback,) = feedbacks
    assert feedback.base_seq == 0 and len(feedback.packets) == 100
    assert feedback.reference_time_us == (arrivals[0] // 64_000) * 64_000  # §3.1: first packet, 64 ms units
    for seq, arrival in flatten(feedbacks):
        assert_time(arrival, arrivals[seq])
    assert recorder.build_feedback(SENDER, MEDIA) == []


def test_losses_are_reported_not_received():
    recorder = TwccRecorder()
    lost = {3, 4, 5, 17, 40, 41}
    arrivals = {seq: T0 + 2000 * seq for seq in range(50) if seq not in lost}
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    entries = flatten(build_and_parse(recorder))
    assert [seq for seq, _ in entries] == list(range(50))
    for seq, arrival in entries:
        if seq in lost:
            assert arrival is None
        else:
            assert_time(arrival, arrivals[seq])


def test_losses_between_feedbacks_are_reported():
    recorder = TwccRecorder()
    for seq in range(10):
        recorder.record(seq, T0 + 1000 * seq)
    build_and_parse(recorder)
    for seq in range(13, 20):  # 10, 11, 12 never arrive
        recorder.record(seq, T0 + 1000 * seq)
    entries = flatten(build_and_parse(recorder))
    assert [seq for seq, _ in entries] == list(range(10, 20))
    assert [arrival for _, arrival in entries[:3]] == [None, None, None]


def test_reordering_within_an_interval():
    recorder = TwccRecorder()
    order = [0, 1, 3, 2, 4, 7, 5, 6, 9, 8, 10]
    arrivals = {}
    for position, seq in enumerate(order):
        arrivals[seq] = T0 + 800 * position
        recorder.record(seq, arrivals[seq])
    feedbacks = build_and_parse(recorder)
    entries = flatten(feedbacks)
    assert [seq for seq, _ in entries] == list(range(11))
    for seq, arrival in entries:
        assert_time(arrival, arrivals[seq])
    # Out-of-order arrivals give negative deltas, which need the 2-bit "large or negative" symbol (§3.1.1).
    kinds = chunks_of(recorder_packets_for(order, arrivals)[0])
    assert any((kind[0] == "v2" and 2 in kind[1]) or kind[:2] == ("run", 2) for kind in kinds)


def recorder_packets_for(order: list[int], arrivals: dict[int, int]) -> list[bytes]:
    recorder = TwccRecorder()
    for seq in order:
        recorder.record(seq, arrivals[seq])
    return recorder.build_feedback(SENDER, MEDIA)


def test_duplicates_are_ignored():
    recorder = TwccRecorder()
    recorder.record(5, T0)
    recorder.record(6, T0 + 1000)
    recorder.record(5, T0 + 5000)  # duplicate: the first arrival counts
    assert recorder.pending == 2
    entries = flatten(build_and_parse(recorder))
    assert [seq for seq, _ in entries] == [5, 6]
    assert_time(entries[0][1], T0)
    recorder.record(6, T0 + 9000)  # duplicate of a packet already reported as received
    recorder.record(5, T0 + 9000)
    assert recorder.pending == 0
    assert recorder.build_feedback(SENDER, MEDIA) == []


def test_wraparound_at_65535():
    recorder = TwccRecorder()
    seqs = [(65530 + i) & 0xFFFF for i in range(20)]
    arrivals = {seq: T0 + 1500 * i for i, seq in enumerate(seqs)}
    for seq in seqs:
        recorder.record(seq, arrivals[seq])
    (feedback,) = build_and_parse(recorder)
    assert feedback.base_seq == 65530
    assert [seq for seq, _ in feedback.packets] == seqs
    for seq, arrival in absolute(feedback):
        assert_time(arrival, arrivals[seq])


def test_wraparound_across_feedbacks():
    recorder = TwccRecorder()
    for i, seq in enumerate(range(65500, 65536)):
        recorder.record(seq, T0 + 1000 * i)
    build_and_parse(recorder)
    recorder.record(2, T0 + 50_000)  # 0 and 1 lost, across the wrap
    recorder.record(3, T0 + 51_000)
    (feedback,) = build_and_parse(recorder)
    assert feedback.base_seq == 0
    assert [seq for seq, _ in feedback.packets] == [0, 1, 2, 3]
    entries = absolute(feedback)
    assert entries[0][1] is None and entries[1][1] is None
    assert_time(entries[2][1], T0 + 50_000)


def test_big_time_gap_starts_a_new_packet():
    recorder = TwccRecorder()
    arrivals = {0: T0, 1: T0 + 1000, 2: T0 + 9_000_000, 3: T0 + 9_001_000}  # 9 s > 8191.75 ms (§3.1.5)
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    feedbacks = build_and_parse(recorder)
    assert len(feedbacks) == 2
    check_contiguous(feedbacks)
    assert feedbacks[1].base_seq == 2
    assert feedbacks[1].reference_time_us == ((T0 + 9_000_000) // 64_000) * 64_000
    entries = flatten(feedbacks)
    assert [seq for seq, _ in entries] == [0, 1, 2, 3]
    for seq, arrival in entries:
        assert_time(arrival, arrivals[seq])


def test_big_negative_delta_starts_a_new_packet():
    recorder = TwccRecorder()
    arrivals = {1: T0, 0: T0 + 10_000_000, 2: T0 + 10_001_000}  # seq 0 arrives 10 s after seq 1
    for seq in (1, 0, 2):
        recorder.record(seq, arrivals[seq])
    feedbacks = build_and_parse(recorder)
    assert len(feedbacks) == 3  # 0 -> 1 is -10 s and 1 -> 2 is +10 s: neither fits 16 bits (§3.1.5)
    assert [len(feedback.packets) for feedback in feedbacks] == [1, 1, 1]
    check_contiguous(feedbacks)
    for seq, arrival in flatten(feedbacks):
        assert_time(arrival, arrivals[seq])


def test_large_delta_within_range_stays_in_one_packet():
    recorder = TwccRecorder()
    arrivals = {0: T0, 1: T0 + 8_000_000, 2: T0 + 100_000}  # +8 s and -7.9 s both fit 16 bits signed
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    feedbacks = build_and_parse(recorder)
    assert len(feedbacks) == 1
    for seq, arrival in flatten(feedbacks):
        assert_time(arrival, arrivals[seq])


def test_feedback_count_increments_and_wraps():
    recorder = TwccRecorder()
    counts = []
    for round_ in range(300):
        recorder.record(round_, T0 + 20_000 * round_)
        (feedback,) = build_and_parse(recorder)
        counts.append(feedback.feedback_count)
    assert counts == [i & 0xFF for i in range(300)]


def test_run_length_chunks_for_received_and_not_received_runs():
    recorder = TwccRecorder()
    for seq in range(50):  # 50 x "received, small delta"
        recorder.record(seq, T0 + 1000 * seq)
    recorder.record(250, T0 + 60_000)  # then 200 x "not received", then one received
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    assert chunks_of(packet) == [("run", 1, 50), ("run", 0, 200), ("run", 1, 1)]


def test_one_bit_status_vectors():
    recorder = TwccRecorder()
    arrivals = {seq: T0 + 1000 * seq for seq in range(0, 56, 2)}  # every other packet lost, small deltas
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    kinds = chunks_of(packet)
    assert all(kind == "v1" for kind, _ in kinds)
    assert kinds[0][1] == [1, 0] * 7
    (feedback,) = [parse_feedback(parse_compound(packet)[0].raw)]
    assert len(feedback.packets) == 55
    for seq, arrival in absolute(feedback):
        if seq % 2:
            assert arrival is None
        else:
            assert_time(arrival, arrivals[seq])


def test_two_bit_status_vectors():
    recorder = TwccRecorder()
    arrivals, t = {}, T0
    for seq in range(21):  # alternate 1 ms (small) and 70 ms (> 63.75 ms: large) deltas
        t += 70_000 if seq % 2 else 1000
        arrivals[seq] = t
        recorder.record(seq, t)
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    kinds = chunks_of(packet)
    assert [kind for kind, _ in kinds] == ["v2", "v2", "v2"]
    assert kinds[0][1] == [1, 2, 1, 2, 1, 2, 1]
    feedback = parse_feedback(parse_compound(packet)[0].raw)
    for seq, arrival in absolute(feedback):
        assert_time(arrival, arrivals[seq])


def test_late_packet_after_feedback_decreases_base():
    recorder = TwccRecorder()
    arrivals = {seq: T0 + 1000 * seq for seq in range(10) if seq != 6}
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    (first,) = build_and_parse(recorder)
    assert first.packets[6] == (6, None)
    recorder.record(6, T0 + 12_000)  # late: reported as not received already
    recorder.record(10, T0 + 12_500)
    (second,) = build_and_parse(recorder)
    # §3.1.1 note: the window goes back to 6; 7-9, already reported as received, are "not received" now.
    assert second.base_seq == 6
    entries = absolute(second)
    assert [seq for seq, _ in entries] == [6, 7, 8, 9, 10]
    assert_time(entries[0][1], T0 + 12_000)
    assert [arrival for _, arrival in entries[1:4]] == [None, None, None]
    assert_time(entries[4][1], T0 + 12_500)


def test_packets_too_far_behind_are_dropped():
    recorder = TwccRecorder()
    for seq in range(2000):
        recorder.record(seq, T0 + 100 * seq)
    build_and_parse(recorder)
    recorder.record(2000 - LATE_WINDOW - 5, T0 + 300_000)
    assert recorder.pending == 0


def test_resync_after_counter_jump():
    recorder = TwccRecorder()
    for seq in range(3000, 3100):
        recorder.record(seq, T0 + 1000 * (seq - 3000))
    build_and_parse(recorder)
    # The sender restarts at 100: every packet now looks ~2900 behind.
    t = T0 + 200_000
    for seq in range(100, 100 + RESYNC_AFTER + 20):
        recorder.record(seq, t)
        t += 1000
    entries = flatten(build_and_parse(recorder))
    first_kept = 100 + RESYNC_AFTER - 1
    assert [seq for seq, _ in entries] == list(range(first_kept, 100 + RESYNC_AFTER + 20))
    assert all(arrival is not None for _, arrival in entries)


def test_split_on_size():
    recorder = TwccRecorder()
    rng = random.Random(7)
    arrivals, t = {}, T0
    for seq in range(4000):
        if rng.random() < 0.4:
            continue
        t += rng.choice((250, 1000, 70_000, 3_000_000))  # many 2-byte deltas
        arrivals[seq] = t
        recorder.record(seq, t)
    feedbacks = build_and_parse(recorder)  # checks every packet <= MAX_FEEDBACK_SIZE
    assert len(feedbacks) > 2
    check_contiguous(feedbacks)
    received = {seq: arrival for seq, arrival in flatten(feedbacks) if arrival is not None}
    assert received.keys() == arrivals.keys()
    for seq, arrival in received.items():
        assert_time(arrival, arrivals[seq])


def test_status_count_beyond_16_bits_splits():
    recorder = TwccRecorder()
    ext_seqs = [0, 30_000, 60_000, 90_000, 90_001]  # each step < 32768, unwrapped forwards
    for i, ext in enumerate(ext_seqs):
        recorder.record(ext & 0xFFFF, T0 + 1000 * i)
    feedbacks = build_and_parse(recorder)
    assert len(feedbacks) == 2
    check_contiguous(feedbacks)
    assert sum(len(feedback.packets) for feedback in feedbacks) == 90_002
    received = [seq for seq, arrival in flatten(feedbacks) if arrival is not None]
    assert received == [ext & 0xFFFF for ext in ext_seqs]


@pytest.mark.parametrize("arrival", [(1 << 23) * 64_000 - 1000, (1 << 23) * 64_000, -5_000_000, 0, 10**15])
def test_reference_time_is_24_bit_signed(arrival):
    recorder = TwccRecorder()
    recorder.record(1, arrival)
    recorder.record(2, arrival + 3000)
    (feedback,) = build_and_parse(recorder)
    assert -(1 << 23) * 64_000 <= feedback.reference_time_us < (1 << 23) * 64_000
    entries = absolute(feedback)
    assert_time(entries[0][1], arrival)
    assert_time(entries[1][1], arrival + 3000)


def test_empty_build_and_pending():
    recorder = TwccRecorder()
    assert recorder.pending == 0
    assert recorder.build_feedback(SENDER, MEDIA) == []
    recorder.record(70_000, T0)  # taken modulo 2^16
    assert recorder.pending == 1
    (feedback,) = build_and_parse(recorder)
    assert feedback.packets[0][0] == 70_000 & 0xFFFF


@pytest.mark.parametrize("seed", range(12))
def test_random_roundtrip(seed):
    """Random losses, reordering (also across feedbacks), duplicates, pauses and clock values: every
    received packet is reported as received exactly once, at its first arrival time."""
    rng = random.Random(seed)
    recorder = TwccRecorder()
    start = rng.randrange(65536)
    count = rng.randrange(200, 3000)
    sent = [start + k for k in range(count) if rng.random() > rng.choice((0, 0.02, 0.3))]
    for _ in range(len(sent) // 10):  # local reordering
        i = rng.randrange(len(sent) - 3)
        j = i + rng.randrange(1, 4)
        sent[i], sent[j] = sent[j], sent[i]
    for _ in range(rng.randrange(20)):  # duplicates a little later
        i = rng.randrange(len(sent))
        sent.insert(min(len(sent), i + rng.randrange(1, 10)), sent[i])
    truth: dict[int, int] = {}
    reported: dict[int, int] = {}
    t = rng.randrange(-(10**12), 10**12)

    def collect() -> None:
        feedbacks = build_and_parse(recorder)
        check_contiguous(feedbacks)
        for seq, arrival in flatten(feedbacks):
            ext = start + ((seq - start) & 0xFFFF)
            if arrival is not None:
                assert ext in truth and ext not in reported, ext
                assert_time(arrival, truth[ext])
                reported[ext] = arrival

    for ext in sent:
        t += rng.choice((0, 100, 1000, 5000, 20_000, 80_000)) if rng.random() > 0.005 else 9_000_000
        truth.setdefault(ext, t)
        recorder.record(ext & 0xFFFF, t)
        if rng.random() < 0.05:
            collect()
    collect()
    assert reported.keys() == truth.keys()


# ---------------------------------------------------------------------------------------------------------
# Malformed input


def valid_fci() -> bytes:
    recorder = TwccRecorder()
    for seq in (0, 1, 2, 5, 6, 30, 31, 32, 33, 80):
        recorder.record(seq, T0 + 9000 * seq)
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    return parse_compound(packet)[0].raw


@pytest.mark.parametrize(
    "fci",
    [
        b"",
        b"\x00\x01\x00\x01\x00\x00",  # header cut short
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x20\x01\x00",  # status count 0
        b"\x00\x01\x00\x05\x00\x00\x00\x00",  # no chunks for 5 statuses
        b"\x00\x01\x00\x20\x00\x00\x00\x00\x20\x05\x01\x01\x01\x01\x01",  # run of 5 covers 5 of 32
        b"\x00\x01\x00\x03\x00\x00\x00\x00\x20\x03\x01\x01",  # 3 small deltas announced, 2 present
        b"\x00\x01\x00\x01\x00\x00\x00\x00\x40\x01\x01",  # large delta cut short
        b"\x00\x01\x00\x02\x00\x00\x00\x00\x60\x02\x00\x00",  # run of the reserved symbol 11
        b"\x00\x01\x00\x02\x00\x00\x00\x00\xf0\x00\x00\x00",  # 2-bit vector holding 11
    ],
)
def test_malformed_fci_raises_value_error(fci):
    with pytest.raises(ValueError):
        parse_feedback(fci)


def test_truncations_of_a_valid_fci():
    fci = valid_fci()
    assert len(parse_feedback(fci).packets) == 81
    assert parse_feedback(fci + b"\x00\x00\x00").packets == parse_feedback(fci).packets  # zero padding
    for cut in range(len(fci)):  # every shorter prefix lacks a chunk or a receive delta
        with pytest.raises(ValueError):
            parse_feedback(fci[:cut])


def test_fuzz_parse_feedback_raises_only_value_error():
    rng = random.Random(1234)
    seeds = [valid_fci()]
    recorder = TwccRecorder()
    t = T0
    for seq in range(300):
        if rng.random() < 0.7:
            t += rng.choice((100, 2000, 90_000, -3000))
            recorder.record(seq, t)
    seeds += [parse_compound(packet)[0].raw for packet in recorder.build_feedback(SENDER, MEDIA)]
    deadline = time.monotonic() + 20
    for iteration in range(4000):
        choice = rng.random()
        if choice < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            data = bytes(damage(rng, rng.choice(seeds), rng.randrange(1, 6)))
        try:
            feedback = parse_feedback(data)
        except ValueError:
            continue
        assert 0 < len(feedback.packets) <= 0xFFFF
        assert all(0 <= seq <= 0xFFFF for seq, _ in feedback.packets)
        assert time.monotonic() < deadline, f"fuzz loop too slow at iteration {iteration}"


def test_fuzz_parse_compound_of_built_packets():
    """Bit flips in whole built packets: parse_compound and parse_feedback raise only ValueError."""
    rng = random.Random(99)
    recorder = TwccRecorder()
    for seq in range(0, 200, 3):
        recorder.record(seq, T0 + 700 * seq)
    (packet,) = recorder.build_feedback(SENDER, MEDIA)
    for _ in range(2000):
        data = bytearray(packet)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            for item in parse_compound(bytes(data)):
                if isinstance(item, TransportCcFeedback):
                    parse_feedback(item.raw)
        except ValueError:
            pass


# ---------------------------------------------------------------------------------------------------------
# Cost


def test_timing():
    rounds = 2000
    recorder = TwccRecorder()
    record = recorder.record
    record_total = build_total = 0.0
    seq = 0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(100):
            seq += 1
            if seq % 50:  # a loss now and then
                record(seq & 0xFFFF, T0 + 500 * seq + (seq * 7919) % 300)
        middle = time.perf_counter()
        recorder.build_feedback(SENDER, MEDIA)
        build_total += time.perf_counter() - middle
        record_total += middle - start
    record_us = record_total / (rounds * 100) * 1e6
    build_us = build_total / rounds * 1e6
    print(
        f"\nTwccRecorder.record: {record_us:.2f} µs per packet; "
        f"build_feedback of 100 packets: {build_us:.1f} µs per call"
    )
    assert record_us < 20
    assert build_us < 5000
