"""Offer parsing and answer writing shared by WHIP (publishers) and WHEP (viewers).

aiortc's parser reads the offer (through the adapter's re-export); a second pass over the raw lines picks up
what it skips (a=rtcp-rsize, a=extmap-allow-mixed, a=rid, a=simulcast). Answers are our own text: aiortc's
writer cannot express what a forwarding SFU answers (RFC 8853 simulcast, our own SSRCs).
Rules used: RFC 8829 (JSEP) answers, RFC 8843 (BUNDLE), RFC 8839 (ICE SDP), RFC 8842 (DTLS a=setup),
RFC 8285 (extmap), RFC 5761 (rtcp-mux), RFC 4588 (RTX).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Optional

from gateway import aiortc_adapter as rtc

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

# Extensions whose bytes a viewer may receive unchanged (ids remapped); mid is written per viewer.
PASSTHROUGH_EXTENSIONS = (EXT_AUDIO_LEVEL, EXT_VIDEO_ORIENTATION)

VIDEO_CODECS = ("VP8", "H264", "VP9", "AV1")
AUDIO_CODECS = ("OPUS",)

SETUP_ANSWER = {"actpass": "passive", "active": "passive", "passive": "active"}  # RFC 8842 §5.1


class SdpError(ValueError):
    """Malformed SDP: HTTP 400."""


class OfferRejected(ValueError):
    """Well-formed SDP we cannot serve: HTTP 422 with this message as the problem detail."""


@dataclass
class Codec:
    payload_type: int
    name: str  # upper-case encoding name: VP8, H264, OPUS, RTX ...
    clock_rate: int
    channels: Optional[int]
    fmtp: dict[str, str]
    feedback: list[str]  # "nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"

    @property
    def mime_type(self) -> str:
        return self.name

    def rtpmap(self) -> str:
        name = {"OPUS": "opus", "RTX": "rtx"}.get(self.name, self.name)
        suffix = f"/{self.channels}" if self.channels and self.channels > 1 else ""
        return f"{name}/{self.clock_rate}{suffix}"

    def fmtp_line(self) -> Optional[str]:
        if not self.fmtp:
            return None
        return ";".join(f"{k}={v}" if v != "" else k for k, v in self.fmtp.items())


@dataclass
class OfferedMedia:
    index: int
    kind: str  # "audio", "video" or anything else (rejected)
    mid: str
    protocol: str
    direction: str
    codecs: list[Codec]
    extensions: dict[str, int]  # uri -> id
    ssrcs: list[int]
    ssrc_groups: list[tuple[str, list[int]]]
    rtcp_mux: bool
    rtcp_rsize: bool
    rids: list[tuple[str, str]] = field(default_factory=list)  # (rid, "send"/"recv")
    simulcast: Optional[str] = None

    def rtx_for(self, payload_type: int) -> Optional[Codec]:
        for codec in self.codecs:
            if codec.name == "RTX" and codec.fmtp.get("apt") == str(payload_type):
                return codec
        return None


@dataclass
class Offer:
    media: list[OfferedMedia]
    bundle: list[str]
    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    setup: str
    candidates: list[str]
    end_of_candidates: bool
    extmap_allow_mixed: bool


_ATTR = re.compile(r"^a=([^:\s]+)(?::(.*))?$")


def parse_offer(text: str) -> Offer:
    """Parse an SDP offer; SdpError when it is not usable SDP at all."""
    if not text.strip().startswith("v=0"):
        raise SdpError("the body is not SDP: it must start with v=0")
    try:
        session = rtc.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises ValueError, AssertionError, KeyError, StopIteration ...
        raise SdpError(f"malformed SDP: {type(exc).__name__} {exc}".strip()) from None
    if not session.media:
        raise SdpError("the offer has no m= section")

    raw_sections = _raw_media_sections(text)
    media: list[OfferedMedia] = []
    candidates: list[str] = []
    end_of_candidates = False
    fingerprints: list[tuple[str, str]] = []
    setup: Optional[str] = None
    ufrag = pwd = None
    for index, (m, raw) in enumerate(zip(session.media, raw_sections)):
        mid = m.rtp.muxId if m.rtp.muxId is not None else str(index)
        attrs = _attributes(raw)
        direction = m.direction or "sendrecv"
        codecs = [
            Codec(
                payload_type=c.payloadType,
                name=c.mimeType.split("/", 1)[1].upper(),
                clock_rate=c.clockRate,
                channels=c.channels,
                fmtp={str(k): ("" if v is None else str(v)) for k, v in (c.parameters or {}).items()},
                feedback=[f"{fb.type} {fb.parameter}" if fb.parameter else fb.type for fb in c.rtcpFeedback],
            )
            for c in m.rtp.codecs
        ]
        media.append(
            OfferedMedia(
                index=index,
                kind=m.kind,
                mid=mid,
                protocol=m.profile,
                direction=direction,
                codecs=codecs,
                extensions={e.uri: e.id for e in m.rtp.headerExtensions},
                ssrcs=[s.ssrc for s in m.ssrc],
                ssrc_groups=[(g.semantic, [int(x) for x in g.items]) for g in m.ssrc_group],
                rtcp_mux=m.rtcp_mux,
                rtcp_rsize="rtcp-rsize" in attrs,
                rids=[_rid(v) for v in attrs.get("rid", [])],
                simulcast=(attrs.get("simulcast") or [None])[0],
            )
        )
        if m.ice is not None:
            ufrag = ufrag or m.ice.usernameFragment
            pwd = pwd or m.ice.password
        if m.dtls is not None:
            fingerprints = fingerprints or [(f.algorithm.lower(), f.value) for f in m.dtls.fingerprints]
        setup = setup or (attrs.get("setup") or [None])[0]
        candidates += ["candidate:" + c for c in attrs.get("candidate", []) if c]
        end_of_candidates = end_of_candidates or "end-of-candidates" in attrs
    session_attrs = _attributes(text.split("\nm=", 1)[0].splitlines())
    setup = setup or (session_attrs.get("setup") or [None])[0]
    if not ufrag or not pwd:
        raise SdpError("the offer has no a=ice-ufrag / a=ice-pwd")
    if not fingerprints:
        raise SdpError("the offer has no a=fingerprint")
    bundle: list[str] = []
    for group in session.group:
        if group.semantic == "BUNDLE":
            bundle = [str(x) for x in group.items]
            break
    return Offer(
        media=media,
        bundle=bundle,
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        fingerprints=fingerprints,
        setup=(setup or "actpass").strip(),
        candidates=candidates,
        end_of_candidates=end_of_candidates,
        extmap_allow_mixed="extmap-allow-mixed" in session_attrs,
    )


def _raw_media_sections(text: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("m="):
            sections.append([line])
        elif sections and line:
            sections[-1].append(line)
    return sections


def _attributes(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        match = _ATTR.match(line.strip())
        if match:
            out.setdefault(match.group(1), []).append((match.group(2) or "").strip())
    return out


def _rid(value: str) -> tuple[str, str]:
    parts = value.split()
    if len(parts) < 2:
        raise SdpError(f"malformed a=rid:{value}")
    return parts[0], parts[1]


def require_bundle(offer: Offer) -> None:
    """WHIP RFC 9725 §4.2 / WHEP: clients MUST use BUNDLE (RFC 8843) with rtcp-mux (RFC 5761)."""
    media_mids = [m.mid for m in offer.media if m.kind in ("audio", "video")]
    if not offer.bundle:
        raise OfferRejected("the offer has no a=group:BUNDLE; WHIP/WHEP require every media section to be bundled")
    missing = [mid for mid in media_mids if mid not in offer.bundle]
    if missing:
        raise OfferRejected(f"media sections {missing} are not in the BUNDLE group")
    for m in offer.media:
        if m.kind in ("audio", "video") and not m.rtcp_mux:
            raise OfferRejected(f"media section {m.mid} lacks a=rtcp-mux")


def require_one_track_per_kind(offer: Offer) -> None:
    """RFC 9725 §4.2: one MediaStream with at most one audio and one video track."""
    for kind in ("audio", "video"):
        count = sum(1 for m in offer.media if m.kind == kind and m.direction != "inactive")
        if count > 1:
            raise OfferRejected(f"the offer has {count} {kind} tracks; at most one {kind} track is supported")


def h264_profile(fmtp: dict[str, str]) -> str:
    """The profile part of profile-level-id, with constrained baseline and baseline treated alike."""
    plid = fmtp.get("profile-level-id", "42001f").lower()
    if len(plid) != 6:
        return plid
    idc, iop = int(plid[0:2], 16), int(plid[2:4], 16)
    if idc == 0x42 or (idc == 0x4D and iop & 0x80) or (idc == 0x58 and iop & 0xC0 == 0xC0):
        return "baseline"  # RFC 6184 §8.1: constrained baseline is decodable as baseline
    return f"{idc:02x}{iop & 0x40:02x}"


def same_codec(a: Codec, b: Codec) -> bool:
    """Can a receiver that offered `b` decode what a sender negotiated as `a` (passed through, not transcoded)?"""
    if a.name != b.name or a.clock_rate != b.clock_rate:
        return False
    if a.name == "H264":
        return a.fmtp.get("packetization-mode", "0") == b.fmtp.get("packetization-mode", "0") and h264_profile(
            a.fmtp
        ) == h264_profile(b.fmtp)
    if a.name == "VP9":
        return a.fmtp.get("profile-id", "0") == b.fmtp.get("profile-id", "0")
    if a.name == "AV1":
        return a.fmtp.get("profile", "0") == b.fmtp.get("profile", "0")
    return True


# ---- writing answers ---------------------------------------------------------------------------------
@dataclass
class AnsweredMedia:
    """One m= section of an answer; `codecs` empty means rejected (port 0)."""

    offered: OfferedMedia
    direction: str
    codecs: list[Codec] = field(default_factory=list)
    extensions: list[tuple[int, str]] = field(default_factory=list)
    ssrc_lines: list[str] = field(default_factory=list)
    extra_lines: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return bool(self.codecs)


def answer_feedback(offered: Codec, wanted: tuple[str, ...]) -> list[str]:
    """rtcp-fb an answer may list: those we handle, and only if offered (RFC 4585 §4.2)."""
    return [fb for fb in offered.feedback if fb in wanted]


def codec_lines(codecs: "list[Codec]") -> list[str]:
    """a=rtpmap, a=rtcp-fb and a=fmtp of each codec (RFC 8866 §6.6, RFC 4585 §4.2, RFC 8866 §6.15)."""
    lines = []
    for c in codecs:
        lines.append(f"a=rtpmap:{c.payload_type} {c.rtpmap()}")
        lines += [f"a=rtcp-fb:{c.payload_type} {fb}" for fb in c.feedback]
        fmtp = c.fmtp_line()
        if fmtp:
            lines.append(f"a=fmtp:{c.payload_type} {fmtp}")
    return lines


def write_answer(
    offer: Offer,
    media: list[AnsweredMedia],
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    setup: str,
    candidates: list[str],
    address: str,
    port: int,
) -> str:
    accepted = [m for m in media if m.accepted]
    lines = [
        "v=0",
        f"o=whipgate {secrets.randbits(62)} 2 IN IP4 {address}",
        "s=-",
        "t=0 0",
    ]
    if accepted:
        lines.append("a=group:BUNDLE " + " ".join(m.offered.mid for m in accepted))
    if offer.extmap_allow_mixed:
        lines.append("a=extmap-allow-mixed")
    lines.append("a=msid-semantic: WMS *")
    # ICE and DTLS parameters are repeated in every bundled section, as browsers write them: RFC 8839 §5.4 and
    # RFC 4145 §4 also allow session level, but simple client parsers (FFmpeg, libdatachannel) look per section.
    transport_lines = [
        f"a=ice-ufrag:{ice_ufrag}",
        f"a=ice-pwd:{ice_pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:{fingerprint}",
        f"a=setup:{setup}",
    ]
    tagged_written = False
    for m in media:
        o = m.offered
        if not m.accepted:
            fmt = " ".join(str(c.payload_type) for c in o.codecs) or "0"
            lines += [f"m={o.kind} 0 {o.protocol} {fmt}", f"a=mid:{o.mid}", "a=inactive"]
            continue
        lines += [
            f"m={o.kind} {port} {o.protocol} " + " ".join(str(c.payload_type) for c in m.codecs),
            f"c=IN IP4 {address}",
            f"a=mid:{o.mid}",
        ]
        lines += transport_lines
        if not tagged_written:
            # RFC 8843 §7.3.1: candidates go in the answerer's BUNDLE-tagged section (the first accepted one).
            lines += [f"a={c}" for c in candidates]
            lines.append("a=end-of-candidates")
            tagged_written = True
        lines += [f"a=extmap:{i} {uri}" for i, uri in m.extensions]
        lines.append(f"a={m.direction}")
        lines.append("a=rtcp-mux")
        if o.rtcp_rsize:
            lines.append("a=rtcp-rsize")
        lines += codec_lines(m.codecs)
        lines += m.extra_lines
        lines += m.ssrc_lines
    return "\r\n".join(lines) + "\r\n"


# ---- writing offers (whipgate as the offerer: an edge pulling a stream from its origin, gateway/relay.py) ----
SETUP_OFFER = "actpass"  # RFC 8842 §5.2: an offerer's a=setup is actpass


@dataclass
class OfferMediaSpec:
    """One m= section of an offer we write: the codecs we accept in the order we prefer them."""

    kind: str
    mid: str
    direction: str  # "recvonly" for a pull
    codecs: list[Codec]
    extensions: list[tuple[int, str]] = field(default_factory=list)
    extra_lines: list[str] = field(default_factory=list)  # a=rid / a=simulcast (RFC 8851, RFC 8853 §5.1)


def write_offer(
    media: list[OfferMediaSpec],
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    candidates: list[str],
    address: str,
    port: int,
) -> str:
    """A complete (non-trickle) offer, every section bundled on one transport (RFC 8843 §7.2), rtcp-mux."""
    lines = [
        "v=0",
        f"o=whipgate {secrets.randbits(62)} 1 IN IP4 {address}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(m.mid for m in media),
        "a=msid-semantic: WMS *",
    ]
    for index, m in enumerate(media):
        lines += [
            f"m={m.kind} {port} UDP/TLS/RTP/SAVPF " + " ".join(str(c.payload_type) for c in m.codecs),
            f"c=IN IP4 {address}",
            f"a=mid:{m.mid}",
            f"a=ice-ufrag:{ice_ufrag}",
            f"a=ice-pwd:{ice_pwd}",
            f"a=fingerprint:{fingerprint}",
            f"a=setup:{SETUP_OFFER}",
        ]
        if index == 0:  # RFC 8843 §7.2: the offerer's candidates in the BUNDLE-tagged section (the first)
            lines += [f"a={c}" for c in candidates]
            lines.append("a=end-of-candidates")
        lines += [f"a=extmap:{i} {uri}" for i, uri in m.extensions]
        lines += [f"a={m.direction}", "a=rtcp-mux", "a=rtcp-rsize"]
        lines += codec_lines(m.codecs)
        lines += m.extra_lines
    return "\r\n".join(lines) + "\r\n"
