"""WHEP offer/answer: give a viewer the stream's tracks in a codec it offered (no transcoding).

The answer is sendonly per media section the stream can fill, with our own SSRCs (a=ssrc, RFC 5576) and an
RTX stream when the viewer offered RTX for the codec (RFC 4588 §8), so NACKed packets come back on it.

A relay (an edge gateway pulling the stream, gateway/relay.py) offers to receive simulcast itself: `a=rid:<r> recv`
per layer and `a=simulcast:recv` (RFC 8853 §5.1; a receiver may be the offerer), with the rtp-stream-id extension.
For a simulcast source it gets `a=rid:<r> send` and `a=simulcast:send` for the layers both sides know (§5.3: the
answerer may drop offered rids) and one DownTrack per layer, each on its own SSRC with its rid written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from gateway.sdp import (
    EXT_MID,
    EXT_RID,
    EXT_TRANSPORT_CC,
    PASSTHROUGH_EXTENSIONS,
    AnsweredMedia,
    Codec,
    Offer,
    OfferedMedia,
    OfferRejected,
    answer_feedback,
    require_bundle,
    require_one_track_per_kind,
    same_codec,
)
from gateway.sfu.egress import EgressProfile
from gateway.sfu.stream import Stream
from gateway.sfu.published_track import PublishedTrack

# transport-cc: the viewer reports arrival times of everything we send it; our send-side estimator
# (simulcast/bwe.py) turns them into the bitrate its path carries, which picks its simulcast layer.
VIEWER_FEEDBACK = ("nack", "nack pli", "ccm fir", "transport-cc", "goog-remb")


@dataclass
class DownTrackPlan:
    source: PublishedTrack
    profile: EgressProfile
    ssrc: int
    rtx_ssrc: Optional[int]
    rid: Optional[str] = None  # a relay's layer: this DownTrack always sends this layer (LayerDownTrack)


@dataclass
class PlayPlan:
    answer_media: list[AnsweredMedia]
    down_tracks: list[DownTrackPlan]


def _ssrc() -> int:
    return random.getrandbits(32) or 1


def simulcast_recv_rids(media: OfferedMedia) -> list[str]:
    """The rids a simulcast receive offer asks for (RFC 8853 §5.1 a=simulcast:recv, first alternative of each)."""
    if media.kind != "video" or not media.simulcast or EXT_RID not in media.extensions:
        return []
    words = media.simulcast.split()
    if len(words) < 2 or words[0] != "recv":
        return []
    declared = {rid for rid, direction in media.rids if direction == "recv"}
    rids: list[str] = []
    for stream in words[1].split(";"):
        rid = stream.split(",")[0].lstrip("~")
        if rid not in declared:
            raise OfferRejected(f"a=simulcast names rid {rid!r} that has no a=rid:{rid} recv line (RFC 8853 §5.1)")
        if rid not in rids:
            rids.append(rid)
    return rids


def negotiate_play(offer: Offer, stream: Stream, cname: str) -> PlayPlan:
    require_bundle(offer)
    require_one_track_per_kind(offer)
    answer: list[AnsweredMedia] = []
    plans: list[DownTrackPlan] = []
    msid_stream = f"whipgate-{stream.name}"
    for media in offer.media:
        source = stream.track(media.kind) if media.kind in ("audio", "video") else None
        if source is None or media.direction in ("sendonly", "inactive"):
            answer.append(AnsweredMedia(media, "inactive"))
            continue
        offered = next((c for c in media.codecs if same_codec(source.codec, c)), None)
        if offered is None:
            names = sorted({c.name for c in media.codecs if c.name not in ("RTX", "RED", "ULPFEC")})
            detail = source.codec.name
            if source.codec.name == "H264":
                detail += f" (profile-level-id {source.codec.fmtp.get('profile-level-id', '42001f')}, packetization-mode {source.codec.fmtp.get('packetization-mode', '0')})"
            raise OfferRejected(
                f"no common {media.kind} codec: the stream sends {detail}, the offer accepts {', '.join(names) or 'none'}"
            )
        relay_rids = [rid for rid in simulcast_recv_rids(media) if rid in source.by_rid] if source.simulcast else []
        feedback = answer_feedback(offered, VIEWER_FEEDBACK if media.kind == "video" else ("transport-cc",))
        # The sender's format parameters describe what the viewer will receive (e.g. H.264 profile-level-id).
        codecs = [Codec(offered.payload_type, source.codec.name, source.codec.clock_rate, source.codec.channels, dict(source.codec.fmtp), feedback)]
        # A relay's layers carry rtp-stream-id, which an RTX copy would have to rewrite to repaired-rtp-stream-id
        # (RFC 8852 §3.2): a relay gets retransmissions on the layer's own SSRC instead (RFC 4585 §3.2 allows it).
        rtx = media.rtx_for(offered.payload_type) if "nack" in feedback and not relay_rids else None
        if rtx is not None:
            codecs.append(Codec(rtx.payload_type, "RTX", rtx.clock_rate, None, {"apt": str(offered.payload_type)}, []))
        mid_id = media.extensions.get(EXT_MID)
        passed = [uri for uri in PASSTHROUGH_EXTENSIONS if uri in source.extensions and uri in media.extensions]
        ext_map = tuple((source.extensions[uri], media.extensions[uri]) for uri in passed)
        extensions = [(media.extensions[uri], uri) for uri in passed]
        if mid_id is not None:
            extensions.append((mid_id, EXT_MID))
        transport_cc_id = media.extensions.get(EXT_TRANSPORT_CC) if "transport-cc" in feedback else None
        if transport_cc_id is not None:
            extensions.append((transport_cc_id, EXT_TRANSPORT_CC))
        track_id = f"{media.kind}-{stream.name}"
        extra_lines = [f"a=msid:{msid_stream} {track_id}"]
        ssrc_lines: list[str] = []

        def egress(rtx_payload_type: Optional[int], rid: Optional[tuple[int, str]] = None) -> EgressProfile:
            return EgressProfile(
                payload_type=offered.payload_type,
                rtx_payload_type=rtx_payload_type,
                mid_id=mid_id,
                mid_value=media.mid,
                extension_map=ext_map,
                transport_cc_id=transport_cc_id,
                rid=rid,
            )

        if relay_rids:
            # A relay (RFC 8853 §5.1 receive offer): every layer on its own SSRC with its rid, no switching.
            rid_id = media.extensions[EXT_RID]
            extensions.append((rid_id, EXT_RID))
            extra_lines += [f"a=rid:{rid} send" for rid in relay_rids] + ["a=simulcast:send " + ";".join(relay_rids)]
            for rid in relay_rids:
                plans.append(DownTrackPlan(source, egress(None, (rid_id, rid)), _ssrc(), None, rid))
        else:
            ssrc = _ssrc()
            rtx_ssrc = _ssrc() if rtx is not None else None
            if rtx_ssrc is not None:
                ssrc_lines.append(f"a=ssrc-group:FID {ssrc} {rtx_ssrc}")
            for s in (ssrc, rtx_ssrc):
                if s is not None:
                    ssrc_lines += [f"a=ssrc:{s} cname:{cname}", f"a=ssrc:{s} msid:{msid_stream} {track_id}"]
            plans.append(DownTrackPlan(source, egress(rtx.payload_type if rtx is not None else None), ssrc, rtx_ssrc))
        answer.append(
            AnsweredMedia(
                media,
                "sendonly",
                codecs=codecs,
                extensions=sorted(extensions),
                ssrc_lines=ssrc_lines,
                extra_lines=extra_lines,
            )
        )
    if not plans:
        raise OfferRejected("nothing in the offer can receive this stream: it needs a recvonly audio or video section")
    return PlayPlan(answer, plans)
