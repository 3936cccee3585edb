"""Simulcast offer/answer (RFC 8853) with captured browser offers and an OBS-shaped one."""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription

from gateway.sdp import EXT_MID, EXT_RID, OfferRejected, parse_offer
from simulcast_offers import fixture, obs_shaped_offer
from test_negotiation import answer_text
from whip.offer_answer import negotiate_publish


@pytest.mark.parametrize("name", ["chromium156-simulcast-vp8.sdp", "chromium156-simulcast-h264.sdp"])
def test_browser_simulcast_offer_is_answered_with_every_layer(name: str) -> None:
    offer = parse_offer(fixture(name))
    plan = negotiate_publish(offer)
    video = next(t for t in plan.tracks if t.kind == "video")
    assert video.rids == ["q", "h", "f"]
    text = answer_text(offer, plan.answer_media)
    for rid in ("q", "h", "f"):
        assert f"a=rid:{rid} recv" in text
    assert "a=simulcast:recv q;h;f" in text
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in text
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in text
    SessionDescription.parse(text)


def test_obs_shaped_offer_is_accepted_with_all_layers() -> None:
    offer = parse_offer(obs_shaped_offer())
    assert offer.candidates == []
    plan = negotiate_publish(offer)
    video = next(t for t in plan.tracks if t.kind == "video")
    assert video.codec.name == "H264"
    assert video.rids == ["0", "1", "2"]
    assert video.extensions[EXT_MID] == 1 and video.extensions[EXT_RID] == 2
    text = answer_text(offer, plan.answer_media)
    assert "a=simulcast:recv 0;1;2" in text and "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in text
    assert all(f"a=rid:{i} recv" in text for i in range(3))


def test_simulcast_naming_an_undeclared_rid_is_rejected() -> None:
    text = fixture("chromium156-simulcast-vp8.sdp").replace("a=simulcast:send q;h;f", "a=simulcast:send q;h;x")
    with pytest.raises(OfferRejected, match="rid 'x'"):
        negotiate_publish(parse_offer(text))


def test_obs_shaped_offer_over_http_with_bearer_gets_every_layer(gateway_factory) -> None:
    """OBS 32.1+ aborts unless the answer accepts every offered layer; it always sends a Bearer token."""
    import httpx

    gw = gateway_factory({"streams": {"obs": {"publish_token": "obs-secret"}}})
    offer = obs_shaped_offer()
    headers = {"content-type": "application/sdp"}
    refused = httpx.post(gw.url("/whip/obs"), content=offer, headers=headers)
    assert refused.status_code == 401
    r = httpx.post(gw.url("/whip/obs"), content=offer, headers={**headers, "authorization": "Bearer obs-secret"})
    assert r.status_code == 201, r.text
    assert "a=simulcast:recv 0;1;2" in r.text
    assert all(f"a=rid:{i} recv" in r.text for i in range(3))
    assert "a=candidate:" in r.text and "127.0.0.1" in r.text  # OBS sent none; we must give ours
    stream = httpx.get(gw.url("/api/streams")).json()[0]
    video = next(t for t in stream["tracks"] if t["kind"] == "video")
    assert video["simulcast"] and sorted(layer["rid"] for layer in video["layers"]) == ["0", "1", "2"]
    assert httpx.delete(gw.url(r.headers["location"])).status_code == 200
