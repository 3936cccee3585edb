"""Offer/answer against offers captured from real clients (../shared/fixtures/sdp) and aiortc-made ones."""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription

from conftest import FIXTURES_SDP
from gateway.sdp import EXT_MID, OfferRejected, SdpError, parse_offer, write_answer
from gateway.sfu.stream import Stream
from whep.offer_answer import negotiate_play
from whip.offer_answer import negotiate_publish
from whip.session import PublisherSession


def fixture(name: str) -> str:
    return (FIXTURES_SDP / name).read_bytes().decode()  # keep the CRLF line ends as captured


def answer_text(offer, media) -> str:
    return write_answer(
        offer,
        media,
        ice_ufrag="abcd",
        ice_pwd="0123456789abcdefghijkl",
        fingerprint="sha-256 " + ":".join(["AB"] * 32),
        setup="passive",
        candidates=["candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"],
        address="127.0.0.1",
        port=40000,
    )


def test_ffmpeg_offer_gets_h264_and_opus_with_rtx() -> None:
    offer = parse_offer(fixture("ffmpeg9-whip-h264-opus.sdp"))
    assert offer.setup == "passive" and offer.candidates == []
    plan = negotiate_publish(offer)
    kinds = {t.kind: t for t in plan.tracks}
    assert kinds["audio"].codec.name == "OPUS" and kinds["audio"].codec.channels == 2
    video = kinds["video"]
    assert video.codec.name == "H264" and video.codec.payload_type == 106
    assert video.rtx_payload_type == 105
    assert (video.ssrc, video.rtx_ssrc) == (3331797311, 3331797312)  # from a=ssrc-group:FID
    text = answer_text(offer, plan.answer_media)
    parsed = SessionDescription.parse(text)  # an independent parser accepts it
    assert [m.rtp.muxId for m in parsed.media] == ["0", "1"]
    assert all(m.direction == "recvonly" for m in parsed.media)
    assert "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f" in text
    assert "a=rtcp-fb:106 nack" in text and "a=rtcp-fb:106 nack pli" not in text  # only what was offered


def test_chromium_offer_prefers_its_first_codec_and_keeps_mid_extension() -> None:
    offer = parse_offer(fixture("chromium156-simulcast-vp8.sdp"))
    plan = negotiate_publish(offer)
    video = next(t for t in plan.tracks if t.kind == "video")
    assert video.codec.name == "VP8" and video.rtx_payload_type == 97
    assert set(video.feedback) == {"nack", "nack pli", "ccm fir", "transport-cc"}
    assert video.extensions[EXT_MID] == 9
    offer_h264 = parse_offer(fixture("chromium156-simulcast-h264.sdp"))
    video = next(t for t in negotiate_publish(offer_h264).tracks if t.kind == "video")
    assert video.codec.name == "H264" and video.codec.fmtp["packetization-mode"] == "1"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.replace("a=group:BUNDLE 0 1\r\n", ""), "BUNDLE"),
        (lambda s: s.replace("a=rtpmap:106 H264/90000", "a=rtpmap:106 H265/90000"), "no common video codec"),
        (lambda s: s.replace("a=sendonly", "a=recvonly"), "recvonly"),
        (lambda s: s + s[s.index("m=video") :].replace("a=mid:1", "a=mid:2"), "video tracks"),
    ],
    ids=["no-bundle", "no-common-codec", "recvonly", "two-video-tracks"],
)
def test_unservable_publish_offers_are_rejected_with_a_reason(mutate, message) -> None:
    text = mutate(fixture("ffmpeg9-whip-h264-opus.sdp"))
    if "mid:2" in text:
        text = text.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
    with pytest.raises(OfferRejected, match=message):
        negotiate_publish(parse_offer(text))


@pytest.mark.parametrize("text", ["", "hello", "v=0\r\nm=video x RTP/AVP 96\r\n", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"])
def test_malformed_sdp_is_an_sdp_error(text: str) -> None:
    with pytest.raises(SdpError):
        parse_offer(text)


class _Manager:  # the session only needs spawn() from its manager in these unit tests
    def spawn(self, coro) -> None:
        coro.close()


def _viewer_offer(codec_lines: str, mid: str = "0") -> str:
    return (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        f"a=group:BUNDLE {mid}\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 120 121\r\nc=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:vvvv\r\na=ice-pwd:viewerpasswordviewerpw\r\n"
        "a=fingerprint:sha-256 " + ":".join(["CD"] * 32) + "\r\n"
        f"a=setup:actpass\r\na=mid:{mid}\r\na=recvonly\r\na=rtcp-mux\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n" + codec_lines
    )


async def test_viewer_gets_the_publishers_codec_on_its_own_payload_types() -> None:
    from gateway.config import Config

    pub_offer = parse_offer(fixture("ffmpeg9-whip-h264-opus.sdp"))
    publisher = PublisherSession(_Manager(), "live", pub_offer, negotiate_publish(pub_offer), Config())
    stream = Stream("live")
    stream.publisher = publisher
    viewer_offer = parse_offer(
        _viewer_offer(
            "a=rtpmap:120 H264/90000\r\na=fmtp:120 packetization-mode=1;profile-level-id=42e01f\r\n"
            "a=rtcp-fb:120 nack\r\na=rtcp-fb:120 nack pli\r\n"
            "a=rtpmap:121 rtx/90000\r\na=fmtp:121 apt=120\r\n"
        )
    )
    plan = negotiate_play(viewer_offer, stream, "cname")
    (down,) = plan.down_tracks
    assert down.profile.payload_type == 120 and down.profile.rtx_payload_type == 121
    assert down.profile.mid_id == 4 and down.profile.mid_value == b"0"
    text = answer_text(viewer_offer, plan.answer_media)
    assert "a=sendonly" in text and f"a=ssrc-group:FID {down.ssrc} {down.rtx_ssrc}" in text
    assert "profile-level-id=42001f" in text  # the sender's profile, what the viewer will receive
    SessionDescription.parse(text)
    # A viewer that cannot decode the stream's codec gets a reason, not a broken session.
    vp8_only = parse_offer(_viewer_offer("a=rtpmap:120 VP8/90000\r\n"))
    with pytest.raises(OfferRejected, match="no common video codec: the stream sends H264"):
        negotiate_play(vp8_only, stream, "cname")
    high_only = parse_offer(_viewer_offer("a=rtpmap:120 H264/90000\r\na=fmtp:120 packetization-mode=1;profile-level-id=640c1f\r\n"))
    with pytest.raises(OfferRejected):
        negotiate_play(high_only, stream, "cname")
    await publisher.transport.close()
