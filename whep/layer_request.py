"""WHEP Video Layer Selection extension: parse a layer request, choose a layer, build the `layers` event.

Followed: draft-ietf-wish-whep-02 (October 2024), §4.9.2 "Video Layer Selection extension"
(`urn:ietf:params:whep:ext:core:layer`) and §4.9.1.3 "layers event" (the same text is in -00 and -01, and in the
wish-wg "webrtc-http-egress-events" split-out document).

How we read the draft where it is loose (see also the module's functions):
- Request keys (§4.9.2): mediaId (String), rid (String), spatialLayerId, temporalLayerId, maxSpatialLayerId,
  maxTemporalLayerId, maxWidth, maxHeight (Numbers). The draft says nothing about other keys; we IGNORE unknown keys
  (forward compatible; the split-out events document asks receivers to ignore unknown JSON fields). A key set to
  JSON null counts as absent ("removing the constraint", §4.9.2).
- "Return to the default selection" (§4.9.2) is an object without constraints; the draft's own example keeps
  `mediaId`, so `{}` and `{"mediaId": "1"}` are both automatic: `is_automatic` ignores `media_id`.
- Numbers must be non-negative integers (an integral float such as 640.0 is accepted); booleans, strings, NaN and
  fractions are rejected.
- spatialLayerId: for simulcast the draft's example gives every encoding spatialLayerId 0 (an SVC index inside the
  encoding). We forward whole simulcast encodings and no SVC, so we number the encodings by resolution instead:
  spatialLayerId 0 = lowest resolution. The rid is the unambiguous handle and wins when both are sent.
- Temporal layers: we always forward every temporal layer (the draft's default, "max layer available") and do not
  list temporalLayerId in the layers event, so a request with temporalLayerId / maxTemporalLayerId asks for a layer
  we never offered: `choose_layer` rejects it (LayerNotFound -> 400 with the reason).
- Success status for a layer POST is "200 OK" (§4.9.2), not 201/204.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

# The rel and the success status of the extension (draft-ietf-wish-whep-02 §4.9.2).
LAYER_REL = "urn:ietf:params:whep:ext:core:layer"
LAYER_OK_STATUS = 200

_STRING_KEYS = {"mediaId": "media_id", "rid": "rid"}
_NUMBER_KEYS = {
    "spatialLayerId": "spatial_layer_id",
    "temporalLayerId": "temporal_layer_id",
    "maxSpatialLayerId": "max_spatial_layer_id",
    "maxTemporalLayerId": "max_temporal_layer_id",
    "maxWidth": "max_width",
    "maxHeight": "max_height",
}
MAX_STRING = 256


class LayerNotFound(ValueError):
    """The request names a layer (rid, spatial layer, m-line, temporal layer) this stream does not offer."""


@dataclass(frozen=True)
class LayerRequest:
    """A parsed layer selection request (§4.9.2). None = no constraint."""

    media_id: Optional[str] = None
    rid: Optional[str] = None
    spatial_layer_id: Optional[int] = None
    temporal_layer_id: Optional[int] = None
    max_width: Optional[int] = None
    max_height: Optional[int] = None
    # Also defined by §4.9.2; kept after the six above so positional construction stays as agreed.
    max_spatial_layer_id: Optional[int] = None
    max_temporal_layer_id: Optional[int] = None

    @property
    def is_automatic(self) -> bool:
        """No constraint at all: return to the server's own choice. `media_id` only says which m-line (§4.9.2)."""
        return (
            self.rid is None
            and self.spatial_layer_id is None
            and self.temporal_layer_id is None
            and self.max_width is None
            and self.max_height is None
            and self.max_spatial_layer_id is None
            and self.max_temporal_layer_id is None
        )


@dataclass(frozen=True)
class LayerInfo:
    """One simulcast encoding of the published video. spatial_id 0 = lowest resolution; width/height 0 = unknown."""

    rid: str
    spatial_id: int
    width: int
    height: int
    bitrate: int
    active: bool


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _number(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{key} must be a whole number, got {value!r}")
        value = int(value)
    if value < 0:
        raise ValueError(f"{key} must not be negative, got {value}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_STRING:
        raise ValueError(f"{key} must be 1 to {MAX_STRING} characters long")
    return value


def parse_layer_request(body: bytes) -> LayerRequest:
    """Parse the JSON object POSTed to the layer URL (§4.9.2). ValueError (with a message for a 400) when it is not one.

    Unknown keys are ignored; null counts as absent; see the module docstring for the type rules.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8: {exc}") from None
    if not text.strip():
        raise ValueError('the body must be a JSON object such as {"rid": "h"} ({} returns to automatic selection)')
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the body must be a JSON object, got a JSON {_json_kind(value)}")
    fields: dict[str, Any] = {}
    for key, attr in _STRING_KEYS.items():
        if value.get(key) is not None:
            fields[attr] = _string(key, value[key])
    for key, attr in _NUMBER_KEYS.items():
        if value.get(key) is not None:
            fields[attr] = _number(key, value[key])
    return LayerRequest(**fields)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _area(layer: LayerInfo) -> int:
    return layer.width * layer.height


def choose_layer(
    request: LayerRequest, layers: list[LayerInfo], *, media_id: Optional[str] = None
) -> Optional[LayerInfo]:
    """The layer a request pins, or None for automatic (the caller's own choice).

    Order: rid match wins; else spatialLayerId; else the largest layer fitting maxWidth/maxHeight/maxSpatialLayerId
    (largest active one; when none fits, the smallest active one; inactive layers count only when none is active).
    A pinned layer may be inactive right now (rid/spatialLayerId): the caller keeps sending its current layer and
    reports it as `target` in the layers event until it becomes active.

    `media_id` is the m-line index of the video these layers belong to; a request naming another m-line is
    rejected. Temporal constraints (temporalLayerId, maxTemporalLayerId) do not affect the spatial choice: the
    caller applies them to VP8/VP9 temporal layers. Raises LayerNotFound (a ValueError) for unknown rid/spatial
    layer/m-line or an empty layer list.
    """
    if request.is_automatic:
        return None
    if media_id is not None and request.media_id is not None and request.media_id != media_id:
        raise LayerNotFound(f"mediaId {request.media_id!r} is not a video m-line with layers (use {media_id!r})")
    spatial = (
        request.rid,
        request.spatial_layer_id,
        request.max_width,
        request.max_height,
        request.max_spatial_layer_id,
    )
    if all(value is None for value in spatial):
        return None  # only a temporal constraint: the spatial layer stays the server's choice
    if not layers:
        raise LayerNotFound("the stream has no video layers to choose from")
    if request.rid is not None:
        for layer in layers:
            if layer.rid == request.rid:
                return layer
        known = ", ".join(repr(layer.rid) for layer in sorted(layers, key=lambda l: l.spatial_id))
        raise LayerNotFound(f"unknown rid {request.rid!r}; the stream has {known}")
    if request.spatial_layer_id is not None:
        for layer in layers:
            if layer.spatial_id == request.spatial_layer_id:
                return layer
        top = max(layer.spatial_id for layer in layers)
        raise LayerNotFound(f"unknown spatialLayerId {request.spatial_layer_id}; the stream has 0 to {top}")
    candidates = [layer for layer in layers if layer.active] or list(layers)

    def fits(layer: LayerInfo) -> bool:
        return (
            (request.max_width is None or layer.width <= request.max_width)
            and (request.max_height is None or layer.height <= request.max_height)
            and (request.max_spatial_layer_id is None or layer.spatial_id <= request.max_spatial_layer_id)
        )

    fitting = [layer for layer in candidates if fits(layer)]
    if fitting:
        return max(fitting, key=lambda l: (_area(l), l.spatial_id, l.bitrate))
    return min(candidates, key=lambda l: (_area(l), l.spatial_id, l.bitrate))


def layer_json(layer: LayerInfo) -> dict[str, Any]:
    """One "layer" object of §4.9.1.3: rid (omitted when the track has none), spatialLayerId, bitrate, width, height.

    The draft marks a layer inactive by a bitrate of 0 (or none), so an inactive layer reports 0 whatever was measured
    last; an active layer reports its measured bitrate (an active layer not yet measured therefore looks inactive).
    """
    out: dict[str, Any] = {}
    if layer.rid:
        out["rid"] = layer.rid
    out["spatialLayerId"] = layer.spatial_id
    out["bitrate"] = layer.bitrate if layer.active else 0
    if layer.width and layer.height:
        out["width"] = layer.width
        out["height"] = layer.height
    return out


def layers_event(
    layers: list[LayerInfo],
    current: Optional[LayerInfo],
    target: Optional[LayerInfo],
    pinned: bool,
    reason: str,
    *,
    media_id: str = "0",
) -> dict[str, Any]:
    """Data of the `layers` event (§4.9.1.3): `{"<m-line index>": [layer, ...]}`, highest resolution first.

    `media_id` is the m-line index of the video in the viewer's SDP (the draft indexes by "m-line" order); pass the
    session's real one ("0" is only right when video is the first m-line).

    The draft has no place for what this viewer receives, so we add (clients ignore unknown fields):
    - in the layer objects: `"current": true` on the layer being forwarded, `"target": true` on the layer we are
      switching to (waiting for its keyframe, or for it to become active);
    - a top-level `"selection"` object (not an m-line index, so index-keyed clients can skip it):
      `{"<m-line index>": {"current": L|null, "target": L|null, "pinned": bool, "reason": str}}` where L is
      `{"rid": ..., "spatialLayerId": ...}` (no rid for a track without rids).
    """
    entries = []
    for layer in sorted(layers, key=lambda l: (l.spatial_id, _area(l)), reverse=True):
        item = layer_json(layer)
        if current is not None and _same(layer, current):
            item["current"] = True
        if target is not None and _same(layer, target):
            item["target"] = True
        entries.append(item)
    return {
        media_id: entries,
        "selection": {
            media_id: {
                "current": _handle(current),
                "target": _handle(target),
                "pinned": bool(pinned),
                "reason": reason,
            }
        },
    }


def _same(a: LayerInfo, b: LayerInfo) -> bool:
    return a.rid == b.rid and a.spatial_id == b.spatial_id


def _handle(layer: Optional[LayerInfo]) -> Optional[dict[str, Any]]:
    if layer is None:
        return None
    out: dict[str, Any] = {"rid": layer.rid} if layer.rid else {}
    out["spatialLayerId"] = layer.spatial_id
    return out
