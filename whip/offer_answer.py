"""WHIP offer/answer: what we accept from a publisher (RFC 9725 §4.2, §4.5).

The gateway answers recvonly, one codec per media section (the publisher's most preferred one we can pass
through), with NACK, PLI and FIR feedback for video and RTX when offered. No transcoding: viewers must
decode what the publisher sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gateway.sdp import (
    AUDIO_CODECS,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TRANSPORT_CC,
    EXT_VIDEO_ORIENTATION,
    VIDEO_CODECS,
    AnsweredMedia,
    Codec,
    Offer,
    OfferedMedia,
    OfferRejected,
    answer_feedback,
    require_bundle,
    require_one_track_per_kind,
)

# transport-wide-cc: we send TWCC feedback (simulcast/twcc.py) so the publisher's congestion control ramps up;
# Chrome and OBS enable their top simulcast layer only with such feedback.
PUBLISH_EXTENSIONS = (EXT_MID, EXT_RID, EXT_REPAIRED_RID, EXT_AUDIO_LEVEL, EXT_VIDEO_ORIENTATION, EXT_TRANSPORT_CC)
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "transport-cc")
AUDIO_FEEDBACK = ("nack", "transport-cc")


@dataclass
class PublishedTrackPlan:
    kind: str
    mid: str
    codec: Codec
    rtx_payload_type: Optional[int]
    extensions: dict[str, int]
    feedback: list[str]
    ssrc: Optional[int]
    rtx_ssrc: Optional[int]
    rids: Optional[list[str]] = None  # simulcast layers (RFC 8853), None for a plain track


@dataclass
class PublishPlan:
    answer_media: list[AnsweredMedia]
    tracks: list[PublishedTrackPlan]


def choose_codec(media: OfferedMedia) -> Optional[Codec]:
    """The offerer's most preferred codec we pass through; H.264 prefers packetization-mode=1."""
    supported = VIDEO_CODECS if media.kind == "video" else AUDIO_CODECS
    for codec in media.codecs:
        if codec.name not in supported:
            continue
        if codec.name == "OPUS" and codec.clock_rate != 48000:
            continue
        if codec.name == "H264" and codec.fmtp.get("packetization-mode", "0") != "1":
            better = next(
                (c for c in media.codecs if c.name == "H264" and c.fmtp.get("packetization-mode") == "1"), None
            )
            if better is not None:
                return better
        return codec
    return None


def _offered_ssrcs(media: OfferedMedia) -> tuple[Optional[int], Optional[int]]:
    for semantic, ssrcs in media.ssrc_groups:
        if semantic == "FID" and len(ssrcs) == 2:
            return ssrcs[0], ssrcs[1]
    return (media.ssrcs[0] if media.ssrcs else None), None


def simulcast_rids(media: OfferedMedia) -> Optional[list[str]]:
    """The rids a simulcast offer sends (RFC 8853 §5.1: a=simulcast:send, first alternative of each stream)."""
    if media.kind != "video" or not media.simulcast:
        return None
    words = media.simulcast.split()
    if len(words) < 2 or words[0] != "send":
        return None
    declared = {rid for rid, direction in media.rids if direction == "send"}
    rids = []
    for stream in words[1].split(";"):
        rid = stream.split(",")[0].lstrip("~")
        if rid not in declared:
            raise OfferRejected(f"a=simulcast names rid {rid!r} that has no a=rid:{rid} send line (RFC 8853 §5.1)")
        if rid not in rids:
            rids.append(rid)
    return rids or None


def simulcast_answer_lines(rids: list[str]) -> list[str]:
    """RFC 8853 §5.3: the answerer receives every offered layer (OBS aborts if any is refused)."""
    return [f"a=rid:{rid} recv" for rid in rids] + ["a=simulcast:recv " + ";".join(rids)]


def negotiate_publish(offer: Offer) -> PublishPlan:
    require_bundle(offer)
    require_one_track_per_kind(offer)
    answer: list[AnsweredMedia] = []
    tracks: list[PublishedTrackPlan] = []
    for media in offer.media:
        if media.kind not in ("audio", "video") or media.direction == "inactive":
            answer.append(AnsweredMedia(media, "inactive"))
            continue
        if media.direction == "recvonly":
            raise OfferRejected(
                f"media section {media.mid} is recvonly: a WHIP offer must send media (RFC 9725 §4.2); "
                "to watch a stream use the WHEP endpoint"
            )
        codec = choose_codec(media)
        if codec is None:
            offered = sorted({c.name for c in media.codecs if c.name not in ("RTX", "RED", "ULPFEC", "FLEXFEC-03")})
            supported = VIDEO_CODECS if media.kind == "video" else ("opus",)
            raise OfferRejected(
                f"no common {media.kind} codec: the offer has {', '.join(offered) or 'none'}; "
                f"whipgate passes through {', '.join(supported)}"
            )
        wanted = VIDEO_FEEDBACK if media.kind == "video" else AUDIO_FEEDBACK
        feedback = answer_feedback(codec, wanted)
        answered = [Codec(codec.payload_type, codec.name, codec.clock_rate, codec.channels, codec.fmtp, feedback)]
        rtx = media.rtx_for(codec.payload_type) if media.kind == "video" else None
        if rtx is not None:
            answered.append(Codec(rtx.payload_type, "RTX", rtx.clock_rate, None, {"apt": str(codec.payload_type)}, []))
        extensions = {uri: media.extensions[uri] for uri in PUBLISH_EXTENSIONS if uri in media.extensions}
        rids = simulcast_rids(media)
        if rids and EXT_RID not in extensions and not media.ssrcs:
            raise OfferRejected(
                f"simulcast in media section {media.mid} needs the rtp-stream-id header extension (RFC 8852) to tell layers apart"
            )
        answer.append(
            AnsweredMedia(
                media,
                "recvonly",
                codecs=answered,
                extensions=sorted((i, uri) for uri, i in extensions.items()),
                extra_lines=simulcast_answer_lines(rids) if rids else [],
            )
        )
        ssrc, rtx_ssrc = _offered_ssrcs(media) if not rids else (None, None)
        tracks.append(
            PublishedTrackPlan(
                kind=media.kind,
                mid=media.mid,
                codec=answered[0],
                rtx_payload_type=rtx.payload_type if rtx is not None else None,
                extensions=extensions,
                feedback=feedback,
                ssrc=ssrc,
                rtx_ssrc=rtx_ssrc if rtx is not None else None,
                rids=rids,
            )
        )
    if not tracks:
        raise OfferRejected("the offer has no audio or video section to publish")
    return PublishPlan(answer, tracks)
