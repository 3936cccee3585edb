"""SDP offers for the protocol tests: real client captures, live aiortc offers and mutators.

Everything here returns SDP text (str) except the malformed bodies, which are bytes because some of them
are not even valid UTF-8. Mutators take an offer and return a new one; they keep the offer's line
ending (the FFmpeg and Chromium captures use CRLF, aiortc uses CRLF too).

The mutators are deliberately small text transformations: each one breaks exactly one rule, so a
test that posts the result checks exactly one thing.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import uuid
from typing import Iterable, Sequence
from unittest import mock

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES_SDP = ROOT.parent / "shared" / "fixtures" / "sdp"  # same place as conftest.FIXTURES_SDP

FFMPEG_FIXTURE = "ffmpeg9-whip-h264-opus.sdp"
CHROMIUM_VP8_FIXTURE = "chromium156-simulcast-vp8.sdp"
CHROMIUM_H264_FIXTURE = "chromium156-simulcast-h264.sdp"

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


# --------------------------------------------------------------------------------------------------
# Fixture offers


def load_fixture(name: str) -> str:
    """A captured offer exactly as the client sent it (bytes decoded, CRLF kept)."""
    return (FIXTURES_SDP / name).read_bytes().decode("utf-8")


def ffmpeg_offer() -> str:
    """FFmpeg 9 `-f whip`: H.264 + Opus, `a=setup:passive`, no candidates at all."""
    return load_fixture(FFMPEG_FIXTURE)


def chromium_offer(codec: str = "vp8") -> str:
    """Chromium 156 three-layer simulcast offer, VP8 or H.264 preferred."""
    return load_fixture(CHROMIUM_H264_FIXTURE if codec.lower() == "h264" else CHROMIUM_VP8_FIXTURE)


# --------------------------------------------------------------------------------------------------
# Live aiortc offers


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


async def aiortc_offer(
    kinds: Sequence[str] = ("audio", "video"),
    direction: str = "sendonly",
    *,
    max_bundle: bool = True,
) -> str:
    """An offer from a real aiortc RTCPeerConnection, one transceiver per entry of `kinds`.

    Host candidates are restricted to 127.0.0.1 (aioice's address discovery is patched for the time
    of the gathering) and no STUN/TURN server is used. The peer connection is closed before
    returning, so its candidates point at ports nobody listens on any more: use `strip_candidates`
    when a test needs the session to stay alive until its ICE timeout.
    """
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    policy = RTCBundlePolicy.MAX_BUNDLE if max_bundle else RTCBundlePolicy.BALANCED
    with mock.patch("aioice.ice.get_host_addresses", _loopback_only):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=policy))
        try:
            for kind in kinds:
                pc.addTransceiver(kind, direction=direction)
            await pc.setLocalDescription(await pc.createOffer())
            return pc.localDescription.sdp
        finally:
            await pc.close()


# --------------------------------------------------------------------------------------------------
# Small SDP text model: session lines + one list of lines per m-section


def _eol(sdp: str) -> str:
    return "\r\n" if "\r\n" in sdp else "\n"


def split_sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """(session-level lines, [m-section lines, ...]); line endings removed, empty lines dropped."""
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join_sections(session: Iterable[str], media: Iterable[Iterable[str]], eol: str = "\r\n") -> str:
    lines = list(session) + [line for section in media for line in section]
    return eol.join(lines) + eol


def _rebuild(sdp: str, session: list[str], media: list[list[str]]) -> str:
    return join_sections(session, media, _eol(sdp))


def section_kind(section: Sequence[str]) -> str:
    return section[0][2:].split(" ", 1)[0]


def section_attr(section: Sequence[str], name: str) -> str | None:
    """Value of the first `a=name:value` (or '' for a flag `a=name`) in the section, else None."""
    for line in section:
        if line == f"a={name}":
            return ""
        if line.startswith(f"a={name}:"):
            return line[len(name) + 3 :]
    return None


def mids(sdp: str) -> list[str]:
    """The a=mid values of the m-sections, in order (None for a section without one)."""
    return [section_attr(sec, "mid") for sec in split_sections(sdp)[1]]  # type: ignore[misc]


def kinds(sdp: str) -> list[str]:
    return [section_kind(sec) for sec in split_sections(sdp)[1]]


def ice_credentials(sdp: str) -> tuple[str, str]:
    """(ice-ufrag, ice-pwd) of the first m-section, falling back to session level."""
    session, media = split_sections(sdp)
    for lines in ([media[0]] if media else []) + [session]:
        ufrag, pwd = section_attr(lines, "ice-ufrag"), section_attr(lines, "ice-pwd")
        if ufrag and pwd:
            return ufrag, pwd
    raise ValueError("offer has no ice-ufrag/ice-pwd")


def first_section(sdp: str) -> tuple[str, str]:
    """(kind, mid) of the first m-section."""
    sec = split_sections(sdp)[1][0]
    return section_kind(sec), section_attr(sec, "mid") or "0"


def payload_types(section: Sequence[str]) -> list[str]:
    return section[0].split()[3:]


# --------------------------------------------------------------------------------------------------
# Mutators


def strip_bundle(sdp: str) -> str:
    """Remove the `a=group:BUNDLE` line(s) (and bundle-only flags): RFC 9725 §4.4.1 violated."""
    session, media = split_sections(sdp)
    session = [l for l in session if not l.startswith("a=group:BUNDLE")]
    media = [[l for l in sec if l != "a=bundle-only"] for sec in media]
    return _rebuild(sdp, session, media)


def strip_candidates(sdp: str) -> str:
    """No candidates at all, like FFmpeg and OBS: port 9, `c=IN IP4 0.0.0.0`, no end-of-candidates."""
    session, media = split_sections(sdp)
    out = []
    for sec in media:
        m = sec[0].split(" ")
        m[1] = "9"
        new = [" ".join(m)]
        for line in sec[1:]:
            if line.startswith("a=candidate:") or line == "a=end-of-candidates":
                continue
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            new.append(line)
        out.append(new)
    return _rebuild(sdp, session, out)


def set_direction(sdp: str, direction: str) -> str:
    """Replace the direction attribute of every m-section (adds one where none is present)."""
    if direction not in DIRECTIONS:
        raise ValueError(direction)
    session, media = split_sections(sdp)
    out = []
    for sec in media:
        new = [l for l in sec if l[2:] not in DIRECTIONS]
        # put it right after the mid (position does not matter in SDP, it keeps diffs readable)
        idx = next((i + 1 for i, l in enumerate(new) if l.startswith("a=mid:")), len(new))
        new.insert(idx, f"a={direction}")
        out.append(new)
    return _rebuild(sdp, session, out)


def set_setup(sdp: str, role: str) -> str:
    """Replace every `a=setup:` value (actpass / active / passive)."""
    return re.sub(r"(?m)^a=setup:[a-z]+", f"a=setup:{role}", sdp)


def rename_mids(sdp: str, mapping: dict[str, str]) -> str:
    """Rename mids in the m-sections and in the BUNDLE group."""
    session, media = split_sections(sdp)
    new_session = []
    for line in session:
        if line.startswith("a=group:"):
            head, *items = line.split(" ")
            line = " ".join([head] + [mapping.get(i, i) for i in items])
        new_session.append(line)
    out = []
    for sec in media:
        out.append([f"a=mid:{mapping.get(l[6:], l[6:])}" if l.startswith("a=mid:") else l for l in sec])
    return _rebuild(sdp, new_session, out)


def duplicate_video(sdp: str) -> str:
    """Add a second video m-section (a second video track of the same MediaStream), bundled.

    RFC 9725 §4.4.2: at most one MediaStreamTrack per kind. The copy gets a fresh mid, a fresh msid
    track id and fresh SSRCs, so the offer is otherwise perfectly valid.
    """
    session, media = split_sections(sdp)
    idx = next(i for i, sec in enumerate(media) if section_kind(sec) == "video")
    used = {section_attr(sec, "mid") for sec in media}
    new_mid = next(str(n) for n in itertools.count(len(media)) if str(n) not in used)
    ssrc_map: dict[str, str] = {}

    def remap_ssrc(num: str) -> str:
        if num not in ssrc_map:
            ssrc_map[num] = str((int(num) + 0x1000_0000 + 7919 * (len(ssrc_map) + 1)) % 2**32)
        return ssrc_map[num]

    new_track = str(uuid.uuid4())
    copy = []
    for line in media[idx]:
        if line.startswith("a=mid:"):
            line = f"a=mid:{new_mid}"
        elif line.startswith("a=msid:"):
            parts = line.split(" ")
            line = f"{parts[0]} {new_track}" if len(parts) > 1 else line
        elif line.startswith("a=ssrc:"):
            num, rest = line[7:].split(" ", 1)
            if rest.startswith("msid:") and " " in rest:
                rest = f"{rest.split(' ', 1)[0]} {new_track}"
            line = f"a=ssrc:{remap_ssrc(num)} {rest}"
        elif line.startswith("a=ssrc-group:"):
            head, *nums = line.split(" ")
            line = " ".join([head] + [remap_ssrc(n) for n in nums])
        copy.append(line)
    media.insert(idx + 1, copy)
    new_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            line = f"{line} {new_mid}"
        new_session.append(line)
    return _rebuild(sdp, new_session, media)


def _free_payload_types(media: list[list[str]], skip: int, count: int) -> list[str]:
    used = {pt for i, sec in enumerate(media) if i != skip for pt in payload_types(sec)}
    return [str(pt) for pt in range(96, 128) if str(pt) not in used][:count]


_CODEC_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):")


def replace_video_codecs(sdp: str, codec: str = "H265", *, with_rtx: bool = True) -> str:
    """Offer nothing but `codec` (plus its rtx) in every video m-section: no codec in common.

    Payload types are picked so they collide with no other bundled m-section.
    """
    session, media = split_sections(sdp)
    out = []
    for i, sec in enumerate(media):
        if section_kind(sec) != "video":
            out.append(sec)
            continue
        pt, rtx = _free_payload_types(media, i, 2)
        fmts = [pt, rtx] if with_rtx else [pt]
        m = sec[0].split(" ")
        new = [" ".join(m[:3] + fmts)]
        new += [l for l in sec[1:] if not _CODEC_LINE.match(l)]
        new += [f"a=rtpmap:{pt} {codec}/90000", f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
        if with_rtx:
            new += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
        out.append(new)
    return _rebuild(sdp, session, out)


def truncate_m_line(sdp: str, kind: str = "video") -> str:
    """Cut the `m=<kind>` line after the port: no protocol, no formats (malformed, RFC 8866 §5.14)."""
    session, media = split_sections(sdp)
    for sec in media:
        if section_kind(sec) == kind:
            sec[0] = " ".join(sec[0].split(" ")[:2])
            break
    return _rebuild(sdp, session, media)


def non_numeric_payload_type(sdp: str, kind: str = "video", token: str = "vp8") -> str:
    """Replace the first payload type of the `kind` m-section by a non-numeric token everywhere
    it appears in that section (m-line, rtpmap, fmtp, rtcp-fb, apt=)."""
    session, media = split_sections(sdp)
    for sec in media:
        if section_kind(sec) != kind:
            continue
        pt = payload_types(sec)[0]
        m = sec[0].split(" ")
        m[3] = token
        sec[0] = " ".join(m)
        for i, line in enumerate(sec[1:], 1):
            line = re.sub(rf"^a=(rtpmap|fmtp|rtcp-fb):{pt} ", rf"a=\1:{token} ", line)
            line = re.sub(rf"\bapt={pt}\b", f"apt={token}", line)
            sec[i] = line
        break
    return _rebuild(sdp, session, media)


# Bodies that no SDP parser can accept. Bytes: some are not UTF-8.
GARBAGE_BODY = b"\x00\x01\x02 this is not SDP \xff\xfe\r\n<html><body>hello</body></html>\r\n"


def malformed_bodies(valid_offer: str) -> dict[str, bytes]:
    """Malformed SDP bodies (RFC 9725 §4.2: 400), derived from a valid offer where useful."""
    return {
        "garbage": GARBAGE_BODY,
        "empty": b"",
        "truncated-m-line": truncate_m_line(valid_offer).encode(),
        "non-numeric-payload-type": non_numeric_payload_type(valid_offer).encode(),
    }


# --------------------------------------------------------------------------------------------------
# Trickle ICE fragments (RFC 8840)


def candidate_line(
    port: int,
    address: str = "127.0.0.1",
    *,
    foundation: str = "1",
    component: int = 1,
    transport: str = "udp",
    priority: int = 2130706431,
    typ: str = "host",
    extra: str = "",
) -> str:
    line = f"a=candidate:{foundation} {component} {transport} {priority} {address} {port} typ {typ}"
    return f"{line} {extra}".rstrip()


def trickle_fragment(
    ufrag: str,
    pwd: str,
    candidates: Sequence[str] = (),
    *,
    kind: str = "audio",
    mid: str = "0",
    end_of_candidates: bool = True,
) -> str:
    """An `application/trickle-ice-sdpfrag` body in the shape of the RFC 8840 / RFC 9725 §4.3.2 examples."""
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"m={kind} 9 RTP/AVP 0", f"a=mid:{mid}"]
    lines += list(candidates)
    if end_of_candidates:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def malformed_fragments(ufrag: str, pwd: str) -> dict[str, bytes]:
    """Fragments a trickle-ice-sdpfrag parser must refuse (RFC 9725 §4.3.1: 400)."""
    bad_candidate = "a=candidate:1 1 udp not-a-priority 127.0.0.1 not-a-port typ host"
    return {
        "garbage": GARBAGE_BODY,
        "bad-candidate": trickle_fragment(ufrag, pwd, [bad_candidate]).encode(),
    }
