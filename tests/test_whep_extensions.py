"""WHEP extensions against a real gateway: Link headers, server-sent events, layer selection (draft-02 §4.9)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urljoin

import httpx

from clients import WhepViewer, WhipPublisher, loopback_only
from test_media import STREAM, start_publisher, start_viewer, stop_all

SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
LAYER_REL = "urn:ietf:params:whep:ext:core:layer"


def links(response: httpx.Response) -> dict[str, str]:
    """rel -> absolute URL of every Link header (one header per link, RFC 8288)."""
    out = {}
    for value in response.headers.get_list("link"):
        target, _, params = value.partition(";")
        for param in params.split(";"):
            name, _, rel = param.strip().partition("=")
            if name == "rel":
                out[rel.strip('"')] = urljoin(str(response.url), target.strip().strip("<>"))
    return out


async def read_events(client: httpx.AsyncClient, url: str, wanted: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    async with asyncio.timeout(timeout):
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: ") and name is not None:
                    events.append((name, json.loads(line[len("data: ") :])))
                    if len(events) >= wanted:
                        return events
    return events


async def test_viewer_gets_extension_links_events_and_can_pin_layers(gateway) -> None:
    clients: list = []
    try:
        with loopback_only():
            await start_publisher(gateway, clients, video_codec="VP8", width=640, height=480, fps=30)
            viewer = await start_viewer(gateway, clients)
            await viewer.wait_frames(10, timeout=15)
            rels = links(viewer.response)
            assert rels[SSE_REL] == viewer.location + "/sse"
            assert rels[LAYER_REL] == viewer.location + "/layer"
            assert 'events="active,inactive,layers,viewercount"' in " ".join(viewer.response.headers.get_list("link"))
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                bad = await http.post(rels[SSE_REL], content=b'["layers", "nonsense"]')
                assert bad.status_code == 400 and "nonsense" in bad.json()["detail"]
                created = await http.post(rels[SSE_REL], content=b'["active", "layers", "viewercount"]')
                assert created.status_code == 201
                stream_url = urljoin(rels[SSE_REL], created.headers["location"])
                # The current state first: active, layers (one layer: a plain track), viewercount 1.
                first = dict(await read_events(http, stream_url, 3))
                assert first["active"] == {}
                assert first["viewercount"] == {"viewercount": 1}
                layer_list = [v for k, v in first["layers"].items() if k != "selection"][0]
                assert len(layer_list) == 1 and layer_list[0].get("current") is True
                # Layer selection: an unknown rid is refused with the reason, automatic is accepted.
                unknown = await http.post(rels[LAYER_REL], content=b'{"rid": "zz"}')
                assert unknown.status_code == 400 and "zz" in unknown.json()["detail"]
                assert (await http.post(rels[LAYER_REL], content=b"not json")).status_code == 400
                assert (await http.post(rels[LAYER_REL], content=b"{}")).status_code == 200
                # A second viewer raises the count seen by the first.
                second = await start_viewer(gateway, clients)
                await second.wait_frames(5, timeout=15)
                more = await read_events(http, stream_url, 2)  # the pin's `layers` event is queued first
                assert ("viewercount", {"viewercount": 2}) in more
                await viewer.wait_frames(viewer.frames + 10, timeout=10)  # still decoding after all that
    finally:
        await stop_all(clients)
