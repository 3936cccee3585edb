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


async def collect_events(client: httpx.AsyncClient, url: str, until: asyncio.Event) -> list[tuple[float, str, dict]]:
    """Every event of one SSE stream, with the time it was read (loop time), until `until` is set."""
    events: list[tuple[float, str, dict]] = []
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            name = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: ") and name is not None:
                    events.append((loop.time(), name, json.loads(line[len("data: ") :])))

    reader = asyncio.ensure_future(read())
    stop = asyncio.ensure_future(until.wait())
    await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    reader.cancel()
    stop.cancel()
    return events


async def test_a_crowd_of_viewers_gets_its_count_without_an_event_per_join(gateway) -> None:
    """The viewer count (draft-02 §4.9.1.5) goes out at most every VIEWER_COUNT_INTERVAL (gateway/sessions.py):
    each publication reaches every viewer, so one per join cost O(N^2) while a crowd joined. Viewers joining and
    leaving in a burst: the first viewer's stream gets a few events, the last one with the final count; a viewer
    joining within the interval still starts with the current count."""
    from gateway.sessions import VIEWER_COUNT_INTERVAL
    from test_protocol import post_offer, publish, recvonly_offer

    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10) as http:
        await publish(http, STREAM)
        offer = await recvonly_offer()

        async def join() -> httpx.Response:
            response = await post_offer(http, "whep", STREAM, offer)
            assert response.status_code == 201, response.text
            return response

        first = await join()
        created = await http.post(links(first)[SSE_REL], content=b'["viewercount"]')
        assert created.status_code == 201
        done = asyncio.Event()
        collecting = asyncio.ensure_future(collect_events(http, urljoin(links(first)[SSE_REL], created.headers["location"]), done))
        await asyncio.sleep(0.3)  # the reader is connected: it gets the current count (1) first

        loop = asyncio.get_running_loop()
        started = loop.time()
        crowd = [await join() for _ in range(30)]
        for response in crowd[:10]:
            assert (await http.delete(response.headers["location"])).status_code == 200
        burst = loop.time() - started
        # A viewer joining right after the burst (within the interval) starts with the count at once.
        late = await join()
        late_sse = await http.post(links(late)[SSE_REL], content=b'["viewercount"]')
        late_first = await read_events(http, urljoin(links(late)[SSE_REL], late_sse.headers["location"]), 1, timeout=3)
        assert late_first == [("viewercount", {"viewercount": 1 + 30 - 10 + 1})]
        await asyncio.sleep(2 * VIEWER_COUNT_INTERVAL + 0.5)
        done.set()
        events = await collecting

    counts = [data["viewercount"] for _, name, data in events if name == "viewercount"]
    assert counts and counts[0] == 1, counts
    assert counts[-1] == 1 + 30 - 10 + 1, f"the last event must carry the final count: {counts}"
    # 41 changes of the count in `burst` seconds: at most one event per interval (+ the first, + the last).
    allowed = 2 + int(burst / VIEWER_COUNT_INTERVAL) + 1
    assert len(counts) - 1 <= allowed, f"{len(counts) - 1} events for 41 changes in {burst:.2f} s: {counts}"
    times = [t for t, name, _ in events if name == "viewercount"][1:]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Read times, not send times: a busy gateway or client may read one late, so half the interval is allowed.
    assert all(gap >= VIEWER_COUNT_INTERVAL / 2 for gap in gaps), f"events closer than the interval: {gaps}"
