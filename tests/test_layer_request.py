"""whep/layer_request.py: WHEP Video Layer Selection (draft-ietf-wish-whep-02 §4.9.2), layers event (§4.9.1.3)."""

from __future__ import annotations

import json

import pytest

from whep.layer_request import (
    LayerInfo,
    LayerNotFound,
    LayerRequest,
    choose_layer,
    layer_json,
    layers_event,
    parse_layer_request,
)

LOW = LayerInfo(rid="q", spatial_id=0, width=320, height=180, bitrate=150_000, active=True)
MID = LayerInfo(rid="h", spatial_id=1, width=640, height=360, bitrate=600_000, active=True)
HIGH = LayerInfo(rid="f", spatial_id=2, width=1280, height=720, bitrate=2_500_000, active=True)
LAYERS = [HIGH, LOW, MID]  # deliberately unsorted


# --- parse_layer_request -------------------------------------------------------------------------------------------


def test_parse_full_request():
    body = json.dumps(
        {"mediaId": "1", "rid": "h", "spatialLayerId": 1, "temporalLayerId": 0, "maxWidth": 640, "maxHeight": 360}
    ).encode()
    assert parse_layer_request(body) == LayerRequest("1", "h", 1, 0, 640, 360)


def test_positional_fields_in_agreed_order():
    r = LayerRequest("0", "h", 1, 2, 3, 4)
    fields = (r.media_id, r.rid, r.spatial_layer_id, r.temporal_layer_id, r.max_width, r.max_height)
    assert fields == ("0", "h", 1, 2, 3, 4)
    assert r.max_spatial_layer_id is None and r.max_temporal_layer_id is None


def test_parse_max_spatial_and_temporal():
    r = parse_layer_request(b'{"maxSpatialLayerId": 1, "maxTemporalLayerId": 0}')
    assert r.max_spatial_layer_id == 1 and r.max_temporal_layer_id == 0
    assert not r.is_automatic


@pytest.mark.parametrize("body", [b"{}", b'{"mediaId": "0"}', b' { "mediaId": "1", "rid": null } ', b'{"unknown": 5}'])
def test_automatic(body):
    # §4.9.2: an object without layer constraints returns to the server's choice; mediaId only names the m-line.
    assert parse_layer_request(body).is_automatic


def test_unknown_keys_ignored():
    assert parse_layer_request(b'{"rid": "h", "futureKey": {"x": 1}}') == LayerRequest(rid="h")


def test_integral_float_accepted():
    assert parse_layer_request(b'{"maxWidth": 640.0}').max_width == 640


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "JSON object"),
        (b"   ", "JSON object"),
        (b"not json", "not valid JSON"),
        (b'{"rid": "h"', "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[]", "JSON array"),
        (b'"h"', "JSON string"),
        (b"3", "JSON number"),
        (b"null", "JSON null"),
        (b"true", "JSON boolean"),
        (b'{"rid": 1}', "rid must be a string"),
        (b'{"rid": ""}', "rid must be 1 to"),
        (b'{"mediaId": 0}', "mediaId must be a string"),
        (b'{"spatialLayerId": "1"}', "spatialLayerId must be a number"),
        (b'{"spatialLayerId": true}', "spatialLayerId must be a number"),
        (b'{"spatialLayerId": -1}', "must not be negative"),
        (b'{"maxWidth": -640}', "must not be negative"),
        (b'{"maxHeight": 360.5}', "whole number"),
        (b'{"maxHeight": NaN}', "not valid JSON"),
        (b'{"maxWidth": Infinity}', "not valid JSON"),
        (b'{"temporalLayerId": [1]}', "temporalLayerId must be a number"),
    ],
)
def test_parse_rejects(body, words):
    with pytest.raises(ValueError) as info:
        parse_layer_request(body)
    assert words in str(info.value)


# --- choose_layer --------------------------------------------------------------------------------------------------


def test_automatic_returns_none():
    assert choose_layer(LayerRequest(), LAYERS) is None
    assert choose_layer(LayerRequest(media_id="1"), LAYERS, media_id="1") is None
    assert choose_layer(LayerRequest(), []) is None


def test_rid_wins_over_everything():
    r = LayerRequest(rid="q", spatial_layer_id=2, max_width=1920, max_height=1080)
    assert choose_layer(r, LAYERS) is LOW


def test_rid_may_pin_an_inactive_layer():
    sleeping = LayerInfo(rid="f", spatial_id=2, width=1280, height=720, bitrate=0, active=False)
    assert choose_layer(LayerRequest(rid="f"), [sleeping, MID, LOW]) is sleeping


def test_unknown_rid():
    with pytest.raises(LayerNotFound) as info:
        choose_layer(LayerRequest(rid="hd"), LAYERS)
    assert "unknown rid 'hd'" in str(info.value) and "'q', 'h', 'f'" in str(info.value)


def test_spatial_layer():
    assert choose_layer(LayerRequest(spatial_layer_id=1), LAYERS) is MID
    assert choose_layer(LayerRequest(spatial_layer_id=0, max_width=2000), LAYERS) is LOW


def test_unknown_spatial_layer():
    with pytest.raises(LayerNotFound, match="unknown spatialLayerId 3; the stream has 0 to 2"):
        choose_layer(LayerRequest(spatial_layer_id=3), LAYERS)


@pytest.mark.parametrize(
    "request_, expected",
    [
        (LayerRequest(max_width=1280), HIGH),
        (LayerRequest(max_width=1279), MID),
        (LayerRequest(max_height=360), MID),
        (LayerRequest(max_width=1920, max_height=200), LOW),
        (LayerRequest(max_width=100), LOW),  # nothing fits: the smallest active layer
        (LayerRequest(max_width=0, max_height=0), LOW),
        (LayerRequest(max_spatial_layer_id=1), MID),
        (LayerRequest(max_spatial_layer_id=0, max_width=5000), LOW),
    ],
)
def test_fit(request_, expected):
    assert choose_layer(request_, LAYERS) is expected


def test_fit_skips_inactive_layers():
    high_off = LayerInfo(rid="f", spatial_id=2, width=1280, height=720, bitrate=0, active=False)
    low_off = LayerInfo(rid="q", spatial_id=0, width=320, height=180, bitrate=0, active=False)
    assert choose_layer(LayerRequest(max_width=1920), [high_off, MID, LOW]) is MID
    # none fits: the smallest ACTIVE one, not the inactive smaller one
    assert choose_layer(LayerRequest(max_width=100), [HIGH, MID, low_off]) is MID


def test_fit_with_no_active_layer_uses_all():
    off = [
        LayerInfo(rid="q", spatial_id=0, width=320, height=180, bitrate=0, active=False),
        LayerInfo(rid="f", spatial_id=1, width=1280, height=720, bitrate=0, active=False),
    ]
    assert choose_layer(LayerRequest(max_width=640), off) is off[0]


def test_media_id_checked_when_known():
    assert choose_layer(LayerRequest(media_id="1", rid="h"), LAYERS, media_id="1") is MID
    assert choose_layer(LayerRequest(media_id="7", rid="h"), LAYERS) is MID  # caller did not say: not checked
    with pytest.raises(LayerNotFound, match="mediaId '0'"):
        choose_layer(LayerRequest(media_id="0", rid="h"), LAYERS, media_id="1")


def test_temporal_constraints_leave_the_spatial_choice_alone():
    """Temporal layers are applied by the caller (VP8/VP9 munger); only spatial fields pick the layer."""
    assert choose_layer(LayerRequest(temporal_layer_id=0), LAYERS) is None  # spatial stays automatic
    assert choose_layer(LayerRequest(rid="h", max_temporal_layer_id=1), LAYERS) is MID


def test_no_layers():
    with pytest.raises(LayerNotFound, match="no video layers"):
        choose_layer(LayerRequest(max_width=640), [])


def test_layer_not_found_is_value_error():
    assert issubclass(LayerNotFound, ValueError)


# --- layers event ----------------------------------------------------------------------------------------------------


def test_layer_json_shape():
    assert layer_json(MID) == {"rid": "h", "spatialLayerId": 1, "bitrate": 600_000, "width": 640, "height": 360}
    # §4.9.1.3: "A layer is considered inactive if the bitrate attribute is 0 or not set"
    off = LayerInfo(rid="f", spatial_id=2, width=1280, height=720, bitrate=900_000, active=False)
    assert layer_json(off)["bitrate"] == 0
    # no rid (single encoding) and unknown size: those keys are left out
    assert layer_json(LayerInfo(rid="", spatial_id=0, width=0, height=0, bitrate=5, active=True)) == {
        "spatialLayerId": 0,
        "bitrate": 5,
    }


def test_layers_event_shape():
    event = layers_event(LAYERS, current=MID, target=HIGH, pinned=True, reason="requested by the viewer", media_id="1")
    assert list(event) == ["1", "selection"]
    assert [item["rid"] for item in event["1"]] == ["f", "h", "q"]  # highest first, like the draft's examples
    high, mid, low = event["1"]
    assert high == {"rid": "f", "spatialLayerId": 2, "bitrate": 2_500_000, "width": 1280, "height": 720, "target": True}
    assert mid["current"] is True and "target" not in mid
    assert "current" not in low and "target" not in low
    assert event["selection"] == {
        "1": {
            "current": {"rid": "h", "spatialLayerId": 1},
            "target": {"rid": "f", "spatialLayerId": 2},
            "pinned": True,
            "reason": "requested by the viewer",
        }
    }
    json.dumps(event)  # serialisable as one SSE data line


def test_layers_event_automatic_defaults():
    event = layers_event([LOW], current=None, target=None, pinned=False, reason="bandwidth")
    assert event["0"] == [{"rid": "q", "spatialLayerId": 0, "bitrate": 150_000, "width": 320, "height": 180}]
    assert event["selection"]["0"] == {"current": None, "target": None, "pinned": False, "reason": "bandwidth"}


def test_every_layer_object_has_an_identifier():
    # §4.9.1.3: each layer object MUST contain at least one of rid, spatialLayerId, temporalLayerId
    anonymous = LayerInfo(rid="", spatial_id=0, width=640, height=360, bitrate=1, active=True)
    event = layers_event([anonymous], current=anonymous, target=None, pinned=False, reason="")
    assert event["0"][0]["spatialLayerId"] == 0
    assert event["selection"]["0"]["current"] == {"spatialLayerId": 0}
