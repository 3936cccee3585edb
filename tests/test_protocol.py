"""WHIP (RFC 9725) / WHEP (draft-ietf-wish-whep) protocol conformance, against a real gateway process.

One test per rule. Each docstring names the rule and where it comes from: "RFC 9725 §x" for WHIP (the WHEP
draft mirrors it section for section), "contract" for docs/http-contract.md, which fixes what the texts
leave open (status 204 for OPTIONS, 422 bodies, 409 + Retry-After for WHEP without a publisher...).

Offers come from tests/sdp_offers.py: real aiortc offers (host candidates on 127.0.0.1 only), the FFmpeg
capture, and small mutators that break exactly one rule each. Sessions that must stay alive for several
requests are created from offers without candidates (like FFmpeg and OBS send), so nothing can connect or
fail before the test's ICE timeout (10 s by default in conftest.TEST_CONFIG).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import random
import re
import secrets
import socket
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from aiortc.sdp import SessionDescription

import sdp_offers as so

SDP = "application/sdp"
FRAG = "application/trickle-ice-sdpfrag"
ENDPOINTS = ("whip", "whep")
ORIGIN = "http://player.example"
DIRECTION_OF_ANSWER = {"whip": "recvonly", "whep": "sendonly"}


# --------------------------------------------------------------------------------------------------
# Helpers


@asynccontextmanager
async def connect(gw) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as c:
        yield c


@pytest.fixture
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(gateway) as c:
        yield c


@pytest.fixture
def udp_sink() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that swallows whatever the gateway's ICE agent sends it (no ICMP errors)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def describe(resp: httpx.Response) -> str:
    """Request and response, for assertion messages that say exactly what happened."""
    req = resp.request
    headers = "\n".join(f"  {k}: {v}" for k, v in resp.headers.multi_items())
    body = resp.content[:600].decode("utf-8", "replace")
    return f"\n{req.method} {req.url} -> {resp.status_code}\n{headers}\n  body: {body!r}"


def media_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower()


def header_tokens(resp: httpx.Response, name: str) -> set[str]:
    """Comma-separated header values (all instances), lower-cased."""
    return {t.strip().lower() for v in resp.headers.get_list(name) for t in v.split(",") if t.strip()}


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


async def post_offer(
    c: httpx.AsyncClient,
    ep: str,
    stream: str,
    offer: str | bytes,
    *,
    content_type: str | None = SDP,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> httpx.Response:
    h = {"Content-Type": content_type} if content_type is not None else {}
    h.update(bearer(token))
    h.update(headers or {})
    body = offer.encode() if isinstance(offer, str) else offer
    return await c.post(f"/{ep}/{stream}", content=body, headers=h)


async def sendonly_offer(candidates: bool = False) -> str:
    offer = await so.aiortc_offer(("audio", "video"), "sendonly")
    return offer if candidates else so.strip_candidates(offer)


async def recvonly_offer(candidates: bool = False) -> str:
    offer = await so.aiortc_offer(("audio", "video"), "recvonly")
    return offer if candidates else so.strip_candidates(offer)


async def offer_for(ep: str, candidates: bool = False) -> str:
    return await (sendonly_offer if ep == "whip" else recvonly_offer)(candidates)


async def publish(c: httpx.AsyncClient, stream: str = "live", *, token: str | None = None) -> httpx.Response:
    """Start a publisher with FFmpeg's captured offer (H.264 + Opus, no candidates): it stays until DELETE
    or the ICE timeout."""
    r = await post_offer(c, "whip", stream, so.ffmpeg_offer(), token=token)
    assert r.status_code == 201, "precondition: publishing failed" + describe(r)
    return r


async def create_session(
    c: httpx.AsyncClient, ep: str, stream: str = "live", offer: str | None = None
) -> tuple[httpx.Response, str]:
    """A WHIP or WHEP session (a WHEP one gets a publisher first). Returns (201 response, offer)."""
    if ep == "whep":
        await publish(c, stream)
    if offer is None:
        offer = await offer_for(ep)
    r = await post_offer(c, ep, stream, offer)
    assert r.status_code == 201, f"precondition: {ep.upper()} POST failed" + describe(r)
    return r, offer


async def prepare_endpoint(c: httpx.AsyncClient, ep: str, stream: str = "live") -> None:
    """Make a POST to /{ep}/{stream} reach offer processing: WHEP needs a live publisher, WHIP a free stream."""
    if ep == "whep":
        await publish(c, stream)


async def eventually(check: Callable[[], Any], timeout: float = 3.0, interval: float = 0.1) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value or `timeout` passes; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


def assert_problem(resp: httpx.Response, status: int, *keywords: str) -> None:
    """RFC 9457 problem details (contract: 422 bodies are application/problem+json with a `detail`)."""
    assert resp.status_code == status, describe(resp)
    assert media_type(resp) == "application/problem+json", describe(resp)
    body = resp.json()
    assert isinstance(body, dict), describe(resp)
    detail = body.get("detail")
    assert isinstance(detail, str) and detail.strip(), "problem details without a `detail`" + describe(resp)
    if "status" in body:
        assert body["status"] == status, describe(resp)
    if keywords:
        assert any(k in detail.lower() for k in keywords), f"detail does not say why ({keywords})" + describe(resp)


# ---- SDP answer inspection


def answer_sections(text: str) -> tuple[list[str], list[list[str]]]:
    return so.split_sections(text)


def attr_values(lines: list[str], name: str) -> list[str]:
    prefix = f"a={name}:"
    return [l[len(prefix) :] for l in lines if l.startswith(prefix)]


def effective_setup(text: str) -> list[str | None]:
    """The `a=setup` role of each m-section: its own attribute, else the session-level one (RFC 4145 §4)."""
    session, media = answer_sections(text)
    default = attr_values(session, "setup")
    out = []
    for sec in media:
        values = attr_values(sec, "setup") or default
        out.append(values[0] if len(values) == 1 else None)
    return out


def candidates_of(text: str) -> list[dict[str, str]]:
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=candidate:"):
            f = line[len("a=candidate:") :].split()
            out.append({"transport": f[2].lower(), "address": f[4], "port": f[5], "typ": f[7], "line": line})
    return out


# ---- Link headers (RFC 8288)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_links(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Parse Link header field values into (uri, {param: value}); several links may share one field."""
    links = []
    for value in values:
        i, n = 0, len(value)
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            if i >= n:
                break
            assert value[i] == "<", f"malformed Link header: {value!r}"
            j = value.index(">", i)
            uri, i = value[i + 1 : j], j + 1
            params: dict[str, str] = {}
            while True:
                while i < n and value[i] in " \t":
                    i += 1
                if i >= n or value[i] == ",":
                    break
                assert value[i] == ";", f"malformed Link header: {value!r}"
                i += 1
                while i < n and value[i] in " \t":
                    i += 1
                m = _TOKEN.match(value, i)
                assert m, f"malformed Link parameter: {value!r}"
                name, i = m.group(0).lower(), m.end()
                while i < n and value[i] in " \t":
                    i += 1
                val = ""
                if i < n and value[i] == "=":
                    i += 1
                    while i < n and value[i] in " \t":
                        i += 1
                    if i < n and value[i] == '"':
                        i += 1
                        buf = []
                        while i < n and value[i] != '"':
                            if value[i] == "\\" and i + 1 < n:
                                i += 1
                            buf.append(value[i])
                            i += 1
                        i += 1
                        val = "".join(buf)
                    else:
                        m = re.compile(r"[^;,\s]*").match(value, i)
                        val, i = m.group(0), m.end()
                params[name] = val
            links.append((uri, params))
    return links


def ice_server_links(resp: httpx.Response) -> list[tuple[str, dict[str, str]]]:
    return [
        (uri, p) for uri, p in parse_links(resp.headers.get_list("link")) if "ice-server" in p.get("rel", "").split()
    ]


# --------------------------------------------------------------------------------------------------
# POST: 201 Created, Location, ETag, the SDP answer


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_answers_201_with_application_sdp(client, ep):
    """RFC 9725 §4.2: a valid offer gets `201 Created` with `Content-Type: application/sdp` and a body."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    assert media_type(r) == SDP, describe(r)
    assert r.text.strip(), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_location_is_a_session_path_under_the_endpoint(client, ep):
    """RFC 9725 §4.2 + contract: `Location: /{ep}/{stream}/{session_id}`, an absolute path under the endpoint."""
    r, _ = await create_session(client, ep)
    loc = r.headers.get("location")
    assert loc, "201 without Location" + describe(r)
    assert re.fullmatch(rf"/{ep}/live/[A-Za-z0-9._~-]+", loc), f"Location {loc!r} is not /{ep}/live/<id>" + describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_session_urls_are_unguessable(client, ep):
    """RFC 9725 §5 (IDOR on session URLs): ids are distinct, >= 16 characters and random, not sequential."""
    ids = []
    for stream in ("s1", "s2", "s3"):
        r, _ = await create_session(client, ep, stream)
        loc = r.headers.get("location", "")
        assert loc.startswith(f"/{ep}/{stream}/"), describe(r)
        ids.append(loc.rsplit("/", 1)[1])
    assert len(set(ids)) == 3, f"session ids repeat: {ids}"
    for sid in ids:
        assert len(sid) >= 16, f"session id {sid!r} is shorter than 16 characters"
    for a, b in ((ids[0], ids[1]), (ids[1], ids[2]), (ids[0], ids[2])):
        differing = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
        assert differing >= 8, f"session ids {a!r} and {b!r} differ in {differing} characters only: guessable"


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_etag_is_a_strong_unique_entity_tag(client, ep):
    """RFC 9725 §4.3.1 + contract: the 201 carries `ETag: "<opaque>"`, strong (no W/), unique per session
    (RFC 9110 §8.8.3 syntax)."""
    etags = []
    for stream in ("e1", "e2"):
        r, _ = await create_session(client, ep, stream)
        etag = r.headers.get("etag")
        assert etag, "201 without ETag" + describe(r)
        assert not etag.startswith("W/"), f"weak ETag {etag!r}" + describe(r)
        assert re.fullmatch(r'"[\x21\x23-\x7e\x80-\xff]+"', etag), f"ETag {etag!r} is not a quoted entity-tag"
        etags.append(etag)
    assert etags[0] != etags[1], f"two sessions share the ETag {etags[0]}"


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_is_valid_sdp(client, ep):
    """RFC 9725 §4.2: the body is an SDP answer; aiortc's parser accepts it, with one m-section per offered one."""
    offer = await offer_for(ep, candidates=True)
    r, _ = await create_session(client, ep, offer=offer)
    desc = SessionDescription.parse(r.text)
    assert desc.version == 0, describe(r)
    assert [m.kind for m in desc.media] == so.kinds(offer), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_bundles_all_media(client, ep):
    """RFC 9725 §4.4.1: max-bundle; the answer has `a=group:BUNDLE` listing every m-section's mid."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    session, media = answer_sections(r.text)
    groups = [l for l in session if l.startswith("a=group:BUNDLE")]
    assert len(groups) == 1, "answer has no (or several) a=group:BUNDLE" + describe(r)
    assert groups[0].split()[1:] == so.mids(r.text), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_has_ice_credentials_and_sha256_fingerprint(client, ep):
    """RFC 8839 §5.4 / RFC 8122: ice-ufrag (>= 4 chars), ice-pwd (>= 22 chars) and a sha-256 fingerprint."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    session, media = answer_sections(r.text)
    for sec in media:
        lines = session + sec
        ufrag, pwd = attr_values(lines, "ice-ufrag"), attr_values(lines, "ice-pwd")
        assert ufrag and len(ufrag[0]) >= 4, "missing/short a=ice-ufrag" + describe(r)
        assert pwd and len(pwd[0]) >= 22, "missing/short a=ice-pwd" + describe(r)
        fps = [v for v in attr_values(lines, "fingerprint") if v.lower().startswith("sha-256 ")]
        assert fps, "no a=fingerprint:sha-256" + describe(r)
        assert re.fullmatch(r"sha-256 ([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}", fps[0]), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_setup_passive_for_actpass_offer(client, ep):
    """RFC 9725 §4.4.4 / RFC 8842 §5: an `a=setup:actpass` offer is answered `a=setup:passive`
    (aiortc offers actpass)."""
    offer = await offer_for(ep, candidates=True)
    assert "a=setup:actpass" in offer
    r, _ = await create_session(client, ep, offer=offer)
    assert effective_setup(r.text) == ["passive"] * len(so.kinds(offer)), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_setup_active_for_passive_offer(client, ep):
    """RFC 9725 §4.4.4 / RFC 8842 §5: a passive offer (FFmpeg's `a=setup:passive`) is answered
    `a=setup:active`."""
    offer = so.ffmpeg_offer() if ep == "whip" else so.set_setup(await recvonly_offer(), "passive")
    r, _ = await create_session(client, ep, offer=offer)
    assert effective_setup(r.text) == ["active"] * len(so.kinds(offer)), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_uses_rtcp_mux(client, ep):
    """RFC 9725 §4.4.1: RTP/RTCP multiplexing for all bundled media: `a=rtcp-mux` in every m-section."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    _, media = answer_sections(r.text)
    for sec in media:
        assert "a=rtcp-mux" in sec, f"m-section {sec[0]!r} without a=rtcp-mux" + describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_candidates_are_loopback_host_candidates_only(client, ep):
    """RFC 9725 §4.3 (full candidate list in the answer) + `rtc.ice_addresses = ["127.0.0.1"]`: at least one
    candidate, and every one is a host candidate on 127.0.0.1."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    cands = candidates_of(r.text)
    assert cands, "answer has no candidates" + describe(r)
    for cand in cands:
        assert cand["address"] == "127.0.0.1" and cand["typ"] == "host", f"unexpected {cand['line']!r}" + describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_signals_end_of_candidates(client, ep):
    """RFC 9725 §4.3: the server gathers everything before answering (no server-side trickle), so the answer
    carries `a=end-of-candidates` (RFC 8840)."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    assert "a=end-of-candidates" in r.text.replace("\r\n", "\n").split("\n"), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_direction(client, ep):
    """RFC 9725 §4.2: the WHIP answer is `recvonly`; WHEP draft §4.2: the WHEP answer is `sendonly`."""
    r, _ = await create_session(client, ep, offer=await offer_for(ep, candidates=True))
    for m in SessionDescription.parse(r.text).media:
        assert m.direction == DIRECTION_OF_ANSWER[ep], f"{m.kind} m-section is {m.direction}" + describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_keeps_offer_mids_in_order(client, ep):
    """RFC 3264 §6 / RFC 9429 §5.3.1: one answer m-section per offered one, same order, same mids
    (the offer puts video first and uses non-numeric mids)."""
    direction = "sendonly" if ep == "whip" else "recvonly"
    offer = so.rename_mids(await so.aiortc_offer(("video", "audio"), direction), {"0": "v1", "1": "a1"})
    r, _ = await create_session(client, ep, offer=offer)
    assert so.mids(r.text) == ["v1", "a1"], describe(r)
    assert so.kinds(r.text) == ["video", "audio"], describe(r)


def rtpmaps(section: list[str]) -> dict[str, str]:
    """payload type -> lower-cased `encoding/clock[/channels]` of one m-section."""
    out = {}
    for value in attr_values(section, "rtpmap"):
        pt, codec = value.split(" ", 1)
        out[pt] = codec.strip().lower()
    return out


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_answer_codecs_come_from_the_offer(client, ep):
    """RFC 3264 §6.1 / RFC 9429 §5.3.1: the answer lists only formats of the offer, with the offer's payload
    type numbers and the same codec behind each number."""
    offer = await offer_for(ep, candidates=True)
    r, _ = await create_session(client, ep, offer=offer)
    _, offered = so.split_sections(offer)
    _, answered = answer_sections(r.text)
    for osec, asec in zip(offered, answered):
        omap, amap = rtpmaps(osec), rtpmaps(asec)
        fmts = so.payload_types(asec)
        assert fmts, f"answer m-section {asec[0]!r} has no formats" + describe(r)
        for pt in fmts:
            assert pt in so.payload_types(osec), f"payload type {pt} of {asec[0]!r} was not offered" + describe(r)
            assert amap.get(pt) == omap.get(pt), f"payload type {pt}: answer {amap.get(pt)} != offer {omap.get(pt)}"


async def test_whep_answer_is_a_single_media_stream(client):
    """WHEP draft §4.4.2 (as RFC 9725 §4.4.2): one MediaStream, so every m-section of the answer that sends
    media carries an `a=msid` with the same stream id."""
    r, _ = await create_session(client, "whep", offer=await recvonly_offer(candidates=True))
    _, media = answer_sections(r.text)
    streams = []
    for sec in media:
        msids = attr_values(sec, "msid")
        assert msids, f"m-section {sec[0]!r} without a=msid" + describe(r)
        streams.append(msids[0].split(" ")[0])
    assert len(set(streams)) == 1, f"answer spreads its tracks over streams {streams}" + describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_sendrecv_offer_is_accepted(client, ep):
    """RFC 9725 §4.2: a WHIP client MAY offer `sendrecv` (the WHEP draft says the same for players); the
    answer keeps the endpoint's direction."""
    offer = so.set_direction(await offer_for(ep), "sendrecv")
    r, _ = await create_session(client, ep, offer=offer)
    for m in SessionDescription.parse(r.text).media:
        assert m.direction == DIRECTION_OF_ANSWER[ep], describe(r)


# --------------------------------------------------------------------------------------------------
# POST errors: 415, 400, 422


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", None], ids=["text-plain", "json", "missing"]
)
@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_wrong_content_type_is_415(client, ep, content_type):
    """RFC 9725 §4.2: a POST whose content type is not application/sdp gets `415 Unsupported Media Type`."""
    await prepare_endpoint(client, ep)
    r = await post_offer(client, ep, "live", await offer_for(ep), content_type=content_type)
    assert r.status_code == 415, describe(r)


@pytest.mark.parametrize("case", ["garbage", "empty", "truncated-m-line", "non-numeric-payload-type"])
@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_malformed_sdp_is_400(client, ep, case):
    """RFC 9725 §4.2: a malformed SDP body gets `400 Bad Request`."""
    await prepare_endpoint(client, ep)
    body = so.malformed_bodies(await offer_for(ep))[case]
    r = await post_offer(client, ep, "live", body)
    assert r.status_code == 400, describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_offer_without_bundle_is_422(client, ep):
    """RFC 9725 §4.4.1 (BUNDLE with max-bundle is mandatory) + contract: no BUNDLE group -> 422 problem+json."""
    await prepare_endpoint(client, ep)
    r = await post_offer(client, ep, "live", so.strip_bundle(await offer_for(ep)))
    assert_problem(r, 422, "bundle")


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_offer_with_two_video_tracks_is_422(client, ep):
    """RFC 9725 §4.4.2: at most one MediaStreamTrack per kind; otherwise `422 Unprocessable Content`."""
    await prepare_endpoint(client, ep)
    r = await post_offer(client, ep, "live", so.duplicate_video(await offer_for(ep)))
    assert_problem(r, 422, "video", "track")


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_offer_without_common_video_codec_is_422(client, ep):
    """RFC 9725 §4.4.3 (no partial answer: reject the POST with 422 rather than an m-section) + contract:
    video offered only as H.265 (+rtx), which the gateway does not take -> 422 problem+json."""
    await prepare_endpoint(client, ep)
    r = await post_offer(client, ep, "live", so.replace_video_codecs(await offer_for(ep), "H265"))
    assert_problem(r, 422, "codec")


@pytest.mark.parametrize("direction", ["recvonly", "inactive"])
async def test_whip_offer_that_sends_nothing_is_422(client, direction):
    """RFC 9725 §4.2: a WHIP offer MUST NOT use `recvonly` or `inactive`; contract: nothing to receive -> 422."""
    r = await post_offer(client, "whip", "live", so.strip_candidates(await so.aiortc_offer(direction=direction)))
    assert_problem(r, 422)


@pytest.mark.parametrize("direction", ["sendonly", "inactive"])
async def test_whep_offer_that_receives_nothing_is_422(client, direction):
    """WHEP draft §4.2: a player offer MUST NOT use `sendonly` or `inactive`; contract: nothing to send -> 422."""
    await publish(client)
    r = await post_offer(client, "whep", "live", so.strip_candidates(await so.aiortc_offer(direction=direction)))
    assert_problem(r, 422)


# --------------------------------------------------------------------------------------------------
# Bearer tokens (RFC 9725 §4.8, §4.8.1; RFC 6750)

PUBLISH_TOKEN = "pub-" + "7f3a9c1e5b2d4068"
PLAY_TOKEN = "play-" + "c0ffee11deadbeef"


def assert_401_bearer(r: httpx.Response) -> None:
    assert r.status_code == 401, describe(r)
    challenge = r.headers.get("www-authenticate", "")
    assert challenge.split(" ", 1)[0].lower() == "bearer", "401 without `WWW-Authenticate: Bearer`" + describe(r)


WRONG_AUTH = {
    "missing": {},
    "wrong-token": {"Authorization": "Bearer not-the-token"},
    "basic-scheme": {"Authorization": "Basic " + base64.b64encode(f"u:{PUBLISH_TOKEN}".encode()).decode()},
}


@pytest.mark.parametrize("case", list(WRONG_AUTH))
async def test_publish_token_is_required(gateway_factory, case):
    """RFC 9725 §4.8.1 + contract: a stream with a publish token answers 401 + `WWW-Authenticate: Bearer`
    to a WHIP POST without the right Bearer token."""
    gw = gateway_factory({"streams": {"secure": {"publish_token": PUBLISH_TOKEN}}})
    async with connect(gw) as c:
        r = await post_offer(c, "whip", "secure", await sendonly_offer(), headers=WRONG_AUTH[case])
        assert_401_bearer(r)


async def test_publish_token_is_accepted(gateway_factory):
    """RFC 9725 §4.8.1: the right Bearer token on a protected stream gets 201."""
    gw = gateway_factory({"streams": {"secure": {"publish_token": PUBLISH_TOKEN}}})
    async with connect(gw) as c:
        r = await post_offer(c, "whip", "secure", await sendonly_offer(), token=PUBLISH_TOKEN)
        assert r.status_code == 201, describe(r)


async def test_stream_without_token_needs_none(gateway_factory):
    """RFC 9725 §4.8.1 (tokens are per deployment) + config reference: streams not listed are open; WHIP and
    WHEP POSTs without Authorization get 201 even when another stream has tokens."""
    gw = gateway_factory({"streams": {"secure": {"publish_token": PUBLISH_TOKEN, "play_token": PLAY_TOKEN}}})
    async with connect(gw) as c:
        r = await post_offer(c, "whip", "open", await sendonly_offer())
        assert r.status_code == 201, describe(r)
        r = await post_offer(c, "whep", "open", await recvonly_offer())
        assert r.status_code == 201, describe(r)


async def test_play_token_is_optional(gateway_factory):
    """Contract: a stream with only a publish token can be watched without any token."""
    gw = gateway_factory({"streams": {"secure": {"publish_token": PUBLISH_TOKEN}}})
    async with connect(gw) as c:
        await publish(c, "secure", token=PUBLISH_TOKEN)
        r = await post_offer(c, "whep", "secure", await recvonly_offer())
        assert r.status_code == 201, describe(r)


@pytest.mark.parametrize("case", ["missing", "wrong-token"])
async def test_play_token_is_enforced(gateway_factory, case):
    """WHEP draft §4.8.1 + contract: a stream with a play token answers 401 + `WWW-Authenticate: Bearer` to a
    WHEP POST without it."""
    gw = gateway_factory({"streams": {"private": {"play_token": PLAY_TOKEN}}})
    async with connect(gw) as c:
        await publish(c, "private")
        r = await post_offer(c, "whep", "private", await recvonly_offer(), headers=WRONG_AUTH[case])
        assert_401_bearer(r)


async def test_play_token_is_accepted(gateway_factory):
    """WHEP draft §4.8.1: the right play token gets 201."""
    gw = gateway_factory({"streams": {"private": {"play_token": PLAY_TOKEN}}})
    async with connect(gw) as c:
        await publish(c, "private")
        r = await post_offer(c, "whep", "private", await recvonly_offer(), token=PLAY_TOKEN)
        assert r.status_code == 201, describe(r)


# --------------------------------------------------------------------------------------------------
# 409: no publisher for WHEP, a second publisher for WHIP


async def test_whep_without_publisher_is_409_with_retry_after(gateway_factory):
    """WHEP draft + contract: no publisher -> `409 Conflict` with `Retry-After` = `whep.retry_after`."""
    gw = gateway_factory({"whep": {"retry_after": 7}})
    async with connect(gw) as c:
        r = await post_offer(c, "whep", "nobody", await recvonly_offer())
        assert r.status_code == 409, describe(r)
        assert r.headers.get("retry-after") == "7", describe(r)


async def test_second_publisher_is_409(client):
    """Contract: a stream has one publisher; the first POST claims it at once (before any ICE), so a second
    WHIP POST gets 409."""
    await publish(client)
    r = await post_offer(client, "whip", "live", await sendonly_offer())
    assert r.status_code == 409, describe(r)


async def test_concurrent_publishers_claim_stream_once(client):
    """Contract: two WHIP POSTs racing for one stream: exactly one 201, the other 409."""
    offers = [so.ffmpeg_offer(), await sendonly_offer()]
    rs = await asyncio.gather(*(post_offer(client, "whip", "race", o) for o in offers))
    assert sorted(r.status_code for r in rs) == [201, 409], "".join(describe(r) for r in rs)


# --------------------------------------------------------------------------------------------------
# OPTIONS, CORS, ice-server Links (RFC 9725 §4.2, §4.6)

ICE_SERVERS_CONFIG = {
    "ice_servers": [
        {"urls": ["stun:192.0.2.10:3478"]},
        {
            "urls": ["turn:192.0.2.11:3478?transport=udp", "turns:192.0.2.11:5349?transport=tcp"],
            "username": "alice",
            "credential": "static-pass",
        },
        {"urls": ["turn:192.0.2.12:3478"], "secret": "coturn-shared-secret", "ttl": 600},
    ]
}


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_options_answers_204_with_accept_post_and_cors(client, ep):
    """RFC 9725 §4.2: endpoints support OPTIONS for CORS and SHOULD send `Accept-Post: application/sdp`;
    contract: 204 with Access-Control-Allow-Origin/-Methods/-Headers/-Expose-Headers."""
    r = await client.options(f"/{ep}/live", headers={"Origin": ORIGIN})
    assert r.status_code == 204, describe(r)
    assert SDP in header_tokens(r, "accept-post"), describe(r)
    assert r.headers.get("access-control-allow-origin") in ("*", ORIGIN), describe(r)
    assert {"post", "options"} <= header_tokens(r, "access-control-allow-methods"), describe(r)
    allowed = header_tokens(r, "access-control-allow-headers")
    assert {"authorization", "content-type", "if-match"} <= allowed, describe(r)
    assert "location" in header_tokens(r, "access-control-expose-headers"), describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_cors_preflight_has_no_ice_server_links(gateway_factory, ep):
    """RFC 9725 §4.6: ICE server configuration is not sent in answers to CORS preflight OPTIONS requests
    (ice servers are configured here, so a careless implementation would send them)."""
    gw = gateway_factory(ICE_SERVERS_CONFIG)
    async with connect(gw) as c:
        r = await c.options(
            f"/{ep}/live",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert r.status_code in (200, 204), describe(r)
    assert r.headers.get("access-control-allow-origin") in ("*", ORIGIN), describe(r)
    assert "post" in header_tokens(r, "access-control-allow-methods"), describe(r)
    assert ice_server_links(r) == [], describe(r)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_cors_preflight_on_a_session_url(client, method):
    """RFC 9725 §4.2 (CORS per FETCH): a browser on another origin preflights its PATCH (trickle, with
    Content-Type and If-Match) and DELETE on the session URL; the preflight must allow them."""
    r, _ = await create_session(client, "whip")
    p = await client.options(
        r.headers["location"],
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, if-match",
        },
    )
    assert p.status_code in (200, 204), describe(p)
    assert p.headers.get("access-control-allow-origin") in ("*", ORIGIN), describe(p)
    assert method.lower() in header_tokens(p, "access-control-allow-methods"), describe(p)
    allowed = header_tokens(p, "access-control-allow-headers")
    assert {"authorization", "content-type", "if-match"} <= allowed or "*" in allowed, describe(p)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_links_exactly_the_configured_ice_servers(gateway_factory, ep):
    """RFC 9725 §4.6: one `Link: <url>; rel="ice-server"` per configured URL in the 201; TURN ones carry
    username, credential and `credential-type="password"`; STUN ones carry none. coturn `use-auth-secret`
    credentials: username `<expiry>[:user]` with expiry ~ now + ttl, credential = base64(HMAC-SHA1(secret,
    username))."""
    gw = gateway_factory(ICE_SERVERS_CONFIG)
    async with connect(gw) as c:
        r, _ = await create_session(c, ep)
    now = time.time()
    links = ice_server_links(r)
    uris = [u for u, _ in links]
    expected = [u for s in ICE_SERVERS_CONFIG["ice_servers"] for u in s["urls"]]
    assert sorted(uris) == sorted(expected), f"ice-server links {uris} != configured {expected}" + describe(r)
    by_uri = dict(links)

    stun = by_uri["stun:192.0.2.10:3478"]
    assert "username" not in stun and "credential" not in stun, describe(r)

    for uri in ("turn:192.0.2.11:3478?transport=udp", "turns:192.0.2.11:5349?transport=tcp"):
        p = by_uri[uri]
        assert p.get("username") == "alice" and p.get("credential") == "static-pass", describe(r)
        assert p.get("credential-type") == "password", describe(r)

    p = by_uri["turn:192.0.2.12:3478"]
    username, credential = p.get("username", ""), p.get("credential", "")
    assert p.get("credential-type") == "password", describe(r)
    m = re.fullmatch(r"(\d+)(:.*)?", username)
    assert m, f"coturn username {username!r} is not <expiry>[:user]" + describe(r)
    assert abs(int(m.group(1)) - (now + 600)) <= 60, f"expiry {m.group(1)} is not now + ttl (600 s)"
    digest = hmac.new(b"coturn-shared-secret", username.encode(), hashlib.sha1).digest()
    assert credential == base64.b64encode(digest).decode(), "coturn credential is not base64(HMAC-SHA1(secret, user))"


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_without_ice_servers_has_no_ice_server_links(client, ep):
    """RFC 9725 §4.6: Links exactly for configured servers, so none when none are configured."""
    r, _ = await create_session(client, ep)
    assert ice_server_links(r) == [], describe(r)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_post_response_allows_origin_and_exposes_headers(client, ep):
    """RFC 9725 §4.2 (CORS, FETCH) + contract: a cross-origin POST's 201 has Access-Control-Allow-Origin and
    `Access-Control-Expose-Headers` naming Location, ETag and Link (a browser cannot read them otherwise)."""
    await prepare_endpoint(client, ep)
    r = await post_offer(client, ep, "live", await offer_for(ep), headers={"Origin": ORIGIN})
    assert r.status_code == 201, describe(r)
    assert r.headers.get("access-control-allow-origin") in ("*", ORIGIN), describe(r)
    assert {"location", "etag", "link"} <= header_tokens(r, "access-control-expose-headers"), describe(r)


# --------------------------------------------------------------------------------------------------
# PATCH: trickle ICE (RFC 9725 §4.3.1, §4.3.2), ICE restart (§4.3.3)


async def _trickle(c, location, offer, etag, port, *, headers=None, content_type=FRAG, body=None) -> httpx.Response:
    ufrag, pwd = so.ice_credentials(offer)
    kind, mid = so.first_section(offer)
    if body is None:
        body = so.trickle_fragment(ufrag, pwd, [so.candidate_line(port)], kind=kind, mid=mid).encode()
    h = {"Content-Type": content_type} if content_type else {}
    if etag:
        h["If-Match"] = etag
    h.update(headers or {})
    return await c.patch(location, content=body, headers=h)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_trickle_patch_is_204_without_body(client, ep, udp_sink):
    """RFC 9725 §4.3.2: a PATCH adding candidates (no ICE restart) gets `204 No Content` without a body."""
    r, offer = await create_session(client, ep)
    p = await _trickle(client, r.headers["location"], offer, r.headers.get("etag"), udp_sink)
    assert p.status_code == 204, describe(p)
    assert p.content == b"", describe(p)


async def test_trickle_unusable_candidates_are_silently_discarded(client):
    """RFC 9725 §4.3.2: candidates with an unsupported transport or an unresolvable address (TCP, mDNS .local)
    are dropped silently: the PATCH still gets 204."""
    r, offer = await create_session(client, "whip")
    ufrag, pwd = so.ice_credentials(offer)
    cands = [
        so.candidate_line(9, transport="tcp", priority=1518280447, extra="tcptype active", foundation="2"),
        so.candidate_line(54321, "3f1c2a9e-7b4d-4c8e-9a01-5d6e7f809a1b.local", foundation="3"),
    ]
    body = so.trickle_fragment(ufrag, pwd, cands).encode()
    p = await _trickle(client, r.headers["location"], offer, r.headers.get("etag"), 0, body=body)
    assert p.status_code == 204, describe(p)


@pytest.mark.parametrize("content_type", ["application/sdp", "text/plain", None], ids=["sdp", "text-plain", "missing"])
async def test_patch_wrong_content_type_is_415(client, udp_sink, content_type):
    """RFC 9725 §4.3.1: a PATCH that is not application/trickle-ice-sdpfrag gets 415."""
    r, offer = await create_session(client, "whip")
    p = await _trickle(client, r.headers["location"], offer, r.headers.get("etag"), udp_sink, content_type=content_type)
    assert p.status_code == 415, describe(p)


@pytest.mark.parametrize("case", ["garbage", "bad-candidate"])
async def test_patch_malformed_fragment_is_400(client, case):
    """RFC 9725 §4.3.1: a malformed SDP fragment gets `400 Bad Request`."""
    r, offer = await create_session(client, "whip")
    body = so.malformed_fragments(*so.ice_credentials(offer))[case]
    p = await _trickle(client, r.headers["location"], offer, r.headers.get("etag"), 0, body=body)
    assert p.status_code == 400, describe(p)


async def test_patch_with_stale_etag_is_412(client, udp_sink):
    """RFC 9725 §4.3.1 (RFC 9110 §13.1.1): If-Match naming another entity-tag -> `412 Precondition Failed`."""
    r, offer = await create_session(client, "whip")
    p = await _trickle(client, r.headers["location"], offer, '"not-the-session-etag"', udp_sink)
    assert p.status_code == 412, describe(p)


def _restart_fragment(offer: str) -> bytes:
    kind, mid = so.first_section(offer)
    new_ufrag, new_pwd = "rEst", "restartpassword0123456789"
    return so.trickle_fragment(new_ufrag, new_pwd, [], kind=kind, mid=mid, end_of_candidates=False).encode()


async def test_ice_restart_is_422(client):
    """RFC 9725 §4.3.1: a session supporting trickle ICE but not ICE restarts answers 422 to a restart
    (`If-Match: *` with a new ice-ufrag/ice-pwd, §4.3.3)."""
    r, offer = await create_session(client, "whip")
    p = await _trickle(client, r.headers["location"], offer, "*", 0, body=_restart_fragment(offer))
    assert p.status_code == 422, describe(p)


async def test_rejected_ice_restart_keeps_the_session(client, udp_sink):
    """RFC 9725 §4.3.3: a restart that cannot be satisfied MUST NOT terminate the session: trickle still works
    and DELETE still finds it."""
    r, offer = await create_session(client, "whip")
    loc, etag = r.headers["location"], r.headers.get("etag")
    p = await _trickle(client, loc, offer, "*", 0, body=_restart_fragment(offer))
    assert p.status_code == 422, describe(p)
    p = await _trickle(client, loc, offer, etag, udp_sink)
    assert p.status_code == 204, describe(p)
    d = await client.delete(loc)
    assert d.status_code == 200, describe(d)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_patch_unknown_session_is_404(client, ep, udp_sink):
    """Contract: PATCH on a session URL that does not exist -> 404."""
    offer = await offer_for(ep)
    await prepare_endpoint(client, ep)
    p = await _trickle(client, f"/{ep}/live/{secrets.token_hex(16)}", offer, None, udp_sink)
    assert p.status_code == 404, describe(p)


@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
async def test_other_methods_on_a_session_are_405(client, method):
    """Contract (RFC 9725 §4.2 reserves other methods on session URLs): only PATCH and DELETE -> 405 otherwise.
    Note: the WHEP draft (-03, §4.1) instead asks for a 2xx without content on GET."""
    r, _ = await create_session(client, "whip")
    resp = await client.request(method, r.headers["location"], content=b"", headers={"Content-Type": SDP})
    assert resp.status_code == 405, describe(resp)
    # RFC 9110 §15.5.6: a 405 MUST carry Allow with the methods the resource supports.
    assert {"patch", "delete"} <= header_tokens(resp, "allow"), "405 without a proper Allow header" + describe(resp)


# --------------------------------------------------------------------------------------------------
# DELETE (RFC 9725 §4.2)


@pytest.mark.parametrize("ep", ENDPOINTS)
async def test_delete_is_200_then_404(client, ep):
    """RFC 9725 §4.2: DELETE on the session URL ends it (200); the URL is gone afterwards (404)."""
    r, _ = await create_session(client, ep)
    d = await client.delete(r.headers["location"])
    assert d.status_code == 200, describe(d)
    d = await client.delete(r.headers["location"])
    assert d.status_code == 404, describe(d)


async def test_delete_ignores_if_match(client):
    """RFC 9725 §4.3.1: sessions MUST ignore entity-tags where no ICE session matching is needed, as in DELETE."""
    r, _ = await create_session(client, "whip")
    d = await client.delete(r.headers["location"], headers={"If-Match": '"some-other-etag"'})
    assert d.status_code == 200, describe(d)


@pytest.mark.parametrize("kind", ["publisher", "viewer"])
async def test_delete_restores_session_gauge(client, gateway, kind):
    """Contract: `whipgate_sessions{kind=...}` counts live sessions: +1 on 201, back to its value after DELETE."""
    ep = "whip" if kind == "publisher" else "whep"
    label = f'kind="{kind}"'
    if ep == "whep":
        await publish(client)
    before = gateway.metric("whipgate_sessions", label)
    r = await post_offer(client, ep, "live", await offer_for(ep))
    assert r.status_code == 201, describe(r)
    up = await eventually(lambda: gateway.metric("whipgate_sessions", label) == before + 1)
    assert up, f"whipgate_sessions{{{label}}} = {gateway.metric('whipgate_sessions', label)}, expected {before + 1}"
    d = await client.delete(r.headers["location"])
    assert d.status_code == 200, describe(d)
    down = await eventually(lambda: gateway.metric("whipgate_sessions", label) == before)
    now = gateway.metric("whipgate_sessions", label)
    assert down, f"whipgate_sessions{{{label}}} = {now} after DELETE, expected {before}"


async def _listed(c: httpx.AsyncClient, stream: str) -> dict | None:
    r = await c.get("/api/streams")
    assert r.status_code == 200, describe(r)
    return next((s for s in r.json() if s.get("stream") == stream), None)


async def test_deleted_publisher_leaves_api_streams(client):
    """Contract: `/api/streams` lists live streams; a publisher's DELETE removes its stream."""
    r = await publish(client, "gone")
    entry = await eventually(lambda: _listed(client, "gone"))
    assert entry and entry.get("publisher") is True, f"/api/streams does not list the live stream: {entry}"
    d = await client.delete(r.headers["location"])
    assert d.status_code == 200, describe(d)

    async def absent() -> bool:
        return await _listed(client, "gone") is None

    assert await eventually(absent), "/api/streams still lists the stream after its publisher's DELETE"


async def test_whep_is_409_again_after_publisher_delete(client):
    """Contract: after the publisher's DELETE the stream has no publisher, so WHEP answers 409 again."""
    r = await publish(client)
    viewer = await post_offer(client, "whep", "live", await recvonly_offer())
    assert viewer.status_code == 201, describe(viewer)
    d = await client.delete(r.headers["location"])
    assert d.status_code == 200, describe(d)
    again = await post_offer(client, "whep", "live", await recvonly_offer())
    assert again.status_code == 409, describe(again)


async def test_stream_can_be_published_again_after_delete(client):
    """Contract: DELETE frees the stream: a new WHIP POST gets 201, not 409."""
    r = await publish(client)
    d = await client.delete(r.headers["location"])
    assert d.status_code == 200, describe(d)
    again = await post_offer(client, "whip", "live", await sendonly_offer())
    assert again.status_code == 201, describe(again)


# --------------------------------------------------------------------------------------------------
# Sessions that never connect


async def test_unconnected_sessions_are_reclaimed_after_ice_timeout(gateway_factory):
    """RFC 9725 §5 (POST flooding: resources held until the ICE timeout) + `rtc.ice_timeout`: a publisher and
    a viewer whose offers were accepted but that never send ICE are dropped after ice_timeout (2 s): the
    gauges return to 0 and their DELETE answers 404."""
    gw = gateway_factory({"rtc": {"ice_timeout": 2.0}})
    async with connect(gw) as c:
        posted = time.monotonic()
        pub = await publish(c)
        view = await post_offer(c, "whep", "live", await recvonly_offer())
        assert view.status_code == 201, describe(view)
        counted = await eventually(
            lambda: gw.metric("whipgate_sessions", 'kind="publisher"') == 1
            and gw.metric("whipgate_sessions", 'kind="viewer"') == 1
        )
        assert counted, f"precondition: the two sessions are not counted:\n{gw.metrics()}"
        # not before the timeout: a session without candidates is waiting for the client, not dead
        await asyncio.sleep(max(0.0, posted + 1.0 - time.monotonic()))
        assert gw.metric("whipgate_sessions") == 2, f"sessions dropped before ice_timeout:\n{gw.metrics()}"
        gone = await eventually(lambda: gw.metric("whipgate_sessions") == 0, timeout=12, interval=0.25)
        assert gone, f"sessions still counted {time.monotonic() - posted:.1f} s after the POST:\n{gw.metrics()}"
        for r in (pub, view):
            d = await c.delete(r.headers["location"])
            assert d.status_code == 404, describe(d)


# --------------------------------------------------------------------------------------------------
# Robustness: bad input never crashes the gateway


def _fuzz_offer(rng: random.Random, offer: str) -> str:
    lines = offer.split("\r\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == 4:
            s = list(lines[i])
            for _ in range(rng.randint(1, 4)):
                if s:
                    s[rng.randrange(len(s))] = chr(rng.randrange(32, 127))
            lines[i] = "".join(s)
        elif op == 5:
            lines.insert(i, "a=" + "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(0, 40))))
        else:
            odd = ["99999999999999999999", "-1", "0", "65536", "256"]
            lines[i] = re.sub(r"\d+", lambda _m: rng.choice(odd), lines[i])
    return "\r\n".join(lines)


_RAW_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    b"POST /whip/raw1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 100000\r\n\r\nv=0\r\n",
    b"POST /whip/raw2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: -5\r\n\r\n",
    b"POST /whip/raw3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/sdp\r\n\r\n"
    b"ZZZ\r\n",
    b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /whip/live",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]


async def _garbage_burst(gw) -> list[tuple[str, int | None]]:
    """200 bad requests: random and fuzzed SDP bodies, bad fragments, odd paths, methods and headers, large
    bodies, and raw malformed HTTP. Returns (description, status or None) for the HTTP-level ones."""
    rng = random.Random(9725)
    valid = await so.aiortc_offer()
    specs: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
    rb = lambda n: bytes(rng.randrange(256) for _ in range(n))  # noqa: E731
    for i in range(40):
        specs.append(("POST", f"/whip/g{i}", {"Content-Type": SDP}, rb(rng.randrange(0, 3000))))
    for i in range(20):
        specs.append(("POST", f"/whep/g{i}", {"Content-Type": SDP}, rb(rng.randrange(0, 3000))))
    for i in range(40):
        specs.append(("POST", f"/whip/f{i}", {"Content-Type": SDP}, _fuzz_offer(rng, valid).encode()))
    for i in range(20):
        specs.append(("PATCH", f"/whip/live/{secrets.token_hex(8)}", {"Content-Type": FRAG}, rb(rng.randrange(0, 500))))
    odd_types = ["", "application/sdp", "application/trickle-ice-sdpfrag; x", "*/*", ";;;", "a" * 2000, "text/html",
                 "application/json", "multipart/form-data; boundary=x", "application/trickle-ice-sdpfrag"]
    for ct in odd_types:
        specs.append(("PATCH", "/whep/live/" + "x" * rng.randrange(1, 300), {"Content-Type": ct}, b"a=candidate:\r\n"))
    for sid in ["", "..", "%2e%2e", "a" * 4000, "%00", "null", "-1", "%ff%fe", "0", "{id}"]:
        specs.append(("DELETE", f"/whip/live/{sid}", {}, b""))
    for path in ["/whip/" + "a" * 5000, "/whip/%00", "/whip/..%2F..%2Fetc%2Fpasswd", "/whip/%C3%B1", "/whep/%ff%fe",
                 "/whip/a/b/c/d/e", "/whip//", "/whip/live/", "/whep/", "/whip/.", "/whip/..", "/whip/a%20b",
                 "/whip/live?x=" + "y" * 3000, "/api/streams/../../metrics", "/whip/%"]:
        specs.append(("POST", path, {"Content-Type": SDP}, valid.encode()))
    for method in ["BREW", "PROPFIND", "PURGE", "TRACE", "LOCK"]:
        specs.append((method, "/whip/live", {}, b""))
    bad_headers = [
        {"Authorization": "Bearer " + "x" * 8000},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic !!!"},
        {"Content-Type": "application/sdp; charset=utf-9000"},
        {"Content-Type": "application/sdp;;;;=;"},
        {"Content-Type": "APPLICATION/SDP; boundary=\"unterminated"},
        {"If-Match": "W/\"x\", *, \"" + "z" * 500},
        {"Origin": "null"},
        {"Origin": "http://" + "o" * 2000},
        {"Accept": "application/sdp;q=abc"},
    ]
    for i, h in enumerate(bad_headers):
        specs.append(("POST", f"/whip/h{i}", {"Content-Type": SDP, **h}, valid.encode()))
    for i in range(2):
        specs.append(("POST", f"/whip/big{i}", {"Content-Type": SDP}, b"a=x-padding:" + b"A" * (1 << 20)))
    n_raw = 200 - len(specs)
    raw = _RAW_REQUESTS + [rb(rng.randrange(1, 2000)) for _ in range(n_raw - len(_RAW_REQUESTS))]
    assert len(specs) + len(raw) == 200

    results: list[tuple[str, int | None]] = []
    sem = asyncio.Semaphore(10)

    async def send(c: httpx.AsyncClient, method, path, headers, body):
        async with sem:
            desc = f"{method} {path[:80]} {headers!r:.120} body[{len(body)}]={body[:40]!r}"
            try:
                resp = await c.request(method, path, headers=headers, content=body)
                results.append((desc, resp.status_code))
            except httpx.HTTPError as exc:  # the server may close on an oversized request
                results.append((desc + f" ({type(exc).__name__})", None))

    async def send_raw(data: bytes):
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(gw.host, gw.port), 2)
                writer.write(data)
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(4096), 0.5)
                except asyncio.TimeoutError:
                    pass
                writer.close()
            except (OSError, asyncio.TimeoutError):
                pass

    async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as c:
        await asyncio.gather(*(send(c, *s) for s in specs), *(send_raw(d) for d in raw))
    return results


async def test_garbage_burst_does_not_crash_the_gateway(gateway):
    """RFC 9725 §5 + contract ("bad input dropped and counted"): after 200 bad requests the process is alive,
    /healthz answers 200 and a valid publisher is still accepted."""
    await _garbage_burst(gateway)
    await asyncio.sleep(0.5)
    assert gateway.proc.poll() is None, f"gateway exited with {gateway.proc.returncode}:\n{gateway.log()[-3000:]}"
    async with connect(gateway) as c:
        h = await c.get("/healthz")
        assert h.status_code == 200, describe(h)
        r = await post_offer(c, "whip", "after-burst", await sendonly_offer())
        assert r.status_code == 201, describe(r)


async def test_bad_requests_get_client_errors_not_server_errors(gateway):
    """RFC 9725 §4.1 (RFC 9110 status semantics): bad input is the client's fault: 4xx, never 500. Allowed:
    anything below 500, 501 (unknown method, RFC 9110 §9.1) and 503 (overload, RFC 9725 §4.5)."""
    results = await _garbage_burst(gateway)
    bad = [(d, s) for d, s in results if s is not None and s >= 500 and s not in (501, 503)]
    assert not bad, "server errors for bad input:\n" + "\n".join(f"  {s} <- {d}" for d, s in bad[:20])


# --------------------------------------------------------------------------------------------------
# Health and metrics


async def test_healthz(client):
    """Contract: `GET /healthz` -> 200 `{"status": "ok"}`."""
    r = await client.get("/healthz")
    assert r.status_code == 200, describe(r)
    assert r.json() == {"status": "ok"}, describe(r)


async def test_metrics_exposes_contract_names(client):
    """Contract: /metrics is Prometheus text with whipgate_sessions (gauge),
    whipgate_rtp_packets_forwarded_total and whipgate_dropped_total (counters)."""
    r = await client.get("/metrics")
    assert r.status_code == 200, describe(r)
    assert media_type(r) == "text/plain", describe(r)
    text = r.text
    assert re.search(r"(?m)^# TYPE whipgate_sessions gauge$", text), text
    assert re.search(r"(?m)^# TYPE whipgate_rtp_packets_forwarded(_total)? counter$", text), text
    assert re.search(r"(?m)^# TYPE whipgate_dropped(_total)? counter$", text), text
