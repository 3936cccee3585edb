"""Relay mode: an edge node serves viewers of a stream that another node (its origin) holds.

With `cluster.viewer_mode = "relay"`, a WHEP POST for a stream the registry places on another node is served
here: this node pulls the stream ONCE from the origin, as a WHEP client of the origin's own WHEP endpoint, and
fans it out to any number of local viewers exactly like a local publisher's stream.

- `RelayPull` is one upstream pull. This node is the OFFERER (RFC 8829 §5.2): ICE controlling (RFC 8445 §6.1.1),
  `a=setup:actpass` (RFC 8842 §5.2) and the DTLS role the answer leaves us (§5.3). For a simulcast stream the
  offer asks to receive every layer: `a=rid:<r> recv` per layer and `a=simulcast:recv r1;r2;...` (RFC 8853 §5.1,
  RFC 8851 §4; a receiver may be the offerer), with the mid and rtp-stream-id extensions (RFC 8843 §15,
  RFC 8852). The origin answers `a=simulcast:send` and sends each layer on its own SSRC with its rid
  (whep/offer_answer.py, gateway/sfu/down_track.py LayerDownTrack).
- `RelayIngest` receives it: a `PublisherSession` whose remote description is the origin's answer. So the edge
  stream is indistinguishable from a local publisher's to the fan-out: the same mid/rid demultiplexing, NACKs,
  receiver reports and keyframe requests (an edge viewer's PLI becomes a PLI on that layer's SSRC upstream; the
  origin passes it to the publisher), and the same per-viewer layer choice.
- The pull is shared: concurrent viewers wait on one future (`RelayPulls.stream`). It ends `cluster.relay_grace`
  seconds after its last local viewer left (DELETE of the origin's session resource, RFC 9725 §4.3 / WHEP
  §4.3), or when the origin ends it (its DTLS close, consent or media lost); then its viewers are ended with
  the `inactive` event.
- An edge never claims the stream in the registry: it is the origin's.
- The origin's publisher may leave and come back (origin `whep.publisher_grace`): the origin keeps the pull's
  session and moves it to the new publisher. The pull subscribes to the origin's WHEP events (draft-ietf-wish-whep
  §4.9.1, the `server-sent-events` Link of the 201) and passes `inactive` / `active` on to its local viewers, who
  stay connected and resume with the origin.

`Stream.publisher` is the one "source of a stream": for a relayed stream it is the RelayIngest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import urljoin

import httpx

from gateway import metrics
from gateway.auth import stream_tokens
from gateway.config import Config
from gateway.sdp import (
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_VIDEO_ORIENTATION,
    Codec,
    Offer,
    OfferMediaSpec,
    SdpError,
    parse_offer,
    write_offer,
)
from gateway.sfu.stream import Stream
from whip.offer_answer import PublishedTrackPlan, PublishPlan, _offered_ssrcs, simulcast_rids
from whip.session import PublisherSession

if TYPE_CHECKING:
    from gateway.sessions import SessionManager

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25  # how often a pull looks at its local viewer count
HTTP_TIMEOUT = 5.0

# What an edge accepts from its origin: every codec whipgate passes through, so whatever the publisher sends
# reaches the edge unchanged (the answer carries the publisher's own format parameters).
_VIDEO_FEEDBACK = ["nack", "nack pli", "ccm fir"]
RELAY_AUDIO_CODECS = [Codec(111, "OPUS", 48000, 2, {"minptime": "10", "useinbandfec": "1"}, [])]
RELAY_VIDEO_CODECS = [
    Codec(96, "VP8", 90000, None, {}, _VIDEO_FEEDBACK),
    Codec(98, "VP9", 90000, None, {"profile-id": "0"}, _VIDEO_FEEDBACK),
    Codec(100, "VP9", 90000, None, {"profile-id": "2"}, _VIDEO_FEEDBACK),
    Codec(102, "H264", 90000, None, {"level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": "42e01f"}, _VIDEO_FEEDBACK),
    Codec(104, "H264", 90000, None, {"level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": "4d001f"}, _VIDEO_FEEDBACK),
    Codec(106, "H264", 90000, None, {"level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": "64001f"}, _VIDEO_FEEDBACK),
    Codec(108, "H264", 90000, None, {"level-asymmetry-allowed": "1", "packetization-mode": "0", "profile-level-id": "42e01f"}, _VIDEO_FEEDBACK),
    Codec(45, "AV1", 90000, None, {}, _VIDEO_FEEDBACK),
]
# One id per URI across the bundle (RFC 8843 §9.2).
RELAY_AUDIO_EXTENSIONS = [(1, EXT_MID), (2, EXT_AUDIO_LEVEL)]
RELAY_VIDEO_EXTENSIONS = [(1, EXT_MID), (3, EXT_VIDEO_ORIENTATION), (10, EXT_RID), (11, EXT_REPAIRED_RID)]


class RelayError(Exception):
    """The pull could not be set up (origin unreachable, refused, or answered something unusable)."""


_RID_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # RFC 8851 §10 rid-id (alpha-numeric, "-", "_")


def relay_offer_media(rids: list[str]) -> list[OfferMediaSpec]:
    """A recvonly audio and video offer; with `rids`, the video section receives simulcast (RFC 8853 §5.1).

    Rids that are not RFC 8851 rid-ids cannot be written into a=simulcast: then the offer asks for no simulcast
    and the origin sends the layer a normal viewer would get."""
    if not all(_RID_ID.fullmatch(rid) for rid in rids):
        rids = []
    simulcast = [f"a=rid:{rid} recv" for rid in rids] + (["a=simulcast:recv " + ";".join(rids)] if rids else [])
    return [
        OfferMediaSpec("audio", "0", "recvonly", list(RELAY_AUDIO_CODECS), list(RELAY_AUDIO_EXTENSIONS)),
        OfferMediaSpec("video", "1", "recvonly", list(RELAY_VIDEO_CODECS), list(RELAY_VIDEO_EXTENSIONS), simulcast),
    ]


def relay_plan(answer: Offer) -> PublishPlan:
    """The tracks the origin's answer sends us, as a publisher's plan: codec, extensions, feedback, layers."""
    tracks: list[PublishedTrackPlan] = []
    for media in answer.media:
        if media.kind not in ("audio", "video") or media.direction != "sendonly":
            continue
        codec = next((c for c in media.codecs if c.name not in ("RTX", "RED", "ULPFEC")), None)
        if codec is None:
            continue
        rtx = media.rtx_for(codec.payload_type)
        rids = simulcast_rids(media)  # a=simulcast:send in the answer (RFC 8853 §5.3)
        ssrc, rtx_ssrc = _offered_ssrcs(media) if not rids else (None, None)
        tracks.append(
            PublishedTrackPlan(
                kind=media.kind,
                mid=media.mid,
                codec=codec,
                rtx_payload_type=rtx.payload_type if rtx is not None else None,
                extensions=dict(media.extensions),
                feedback=list(codec.feedback),
                ssrc=ssrc,
                rtx_ssrc=rtx_ssrc if rtx is not None else None,
                rids=rids,
            )
        )
    if not tracks:
        raise RelayError("the origin's answer sends no audio or video")
    return PublishPlan([], tracks)


class RelayIngest(PublisherSession):
    """The edge's end of a pull: a publisher session whose remote description is the origin's WHEP answer."""

    kind = "relay"

    def __init__(self, pull: "RelayPull", manager: "SessionManager", stream_name: str, config: Config) -> None:
        super().__init__(manager, stream_name, None, PublishPlan([], []), config)  # type: ignore[arg-type]
        self.pull = pull
        self.connected_event = asyncio.Event()
        self.transport.set_offerer()

    def apply_answer(self, answer: Offer) -> None:
        self.offer = answer
        self._add_tracks(relay_plan(answer))

    @property
    def location(self) -> str:
        return self.pull.resource_url or self.pull.whep_url

    def start_transport(self) -> None:
        answer = self.offer
        # RFC 8842 §5.3: the answerer chose; "active" makes it the DTLS client, so we are the server.
        role = "server" if answer.setup == "active" else "client"
        self.transport.start(
            remote_ufrag=answer.ice_ufrag,
            remote_pwd=answer.ice_pwd,
            fingerprints=answer.fingerprints,
            dtls_role=role,
            candidates=answer.candidates,
            end_of_candidates=answer.end_of_candidates,
            timeout=self.config.rtc.ice_timeout,
        )

    def on_connected(self) -> None:
        super().on_connected()
        self.connected_event.set()

    def _transport_closed(self, reason: str) -> None:
        if not self.ended:
            self.manager.spawn(self.pull.close(reason))


class RelayPull:
    """One upstream WHEP pull of one stream from its origin, shared by every local viewer of it."""

    def __init__(self, manager: "SessionManager", stream_name: str, http: httpx.AsyncClient, on_closed: Callable[["RelayPull"], None]) -> None:
        self.manager = manager
        self.config = manager.config
        self.name = stream_name
        self._http = http
        self._on_closed = on_closed
        self.ready: asyncio.Future[Optional[Stream]] = asyncio.get_running_loop().create_future()
        self.stream: Optional[Stream] = None
        self.ingest: Optional[RelayIngest] = None
        self.whep_url = ""
        self.resource_url: Optional[str] = None
        self.closed = False
        self.end_reason: Optional[str] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._events_task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            stream = await self._open()
        except Exception as exc:  # whatever went wrong, waiting viewers must get an answer
            expected = isinstance(exc, (RelayError, SdpError, httpx.HTTPError, OSError, TimeoutError))
            log.warning("relay of %s from %s not started: %s", self.name, self.whep_url or "its origin", exc, exc_info=not expected)
            await self.close(f"not started: {exc}")
            return
        if stream is None:
            await self.close("no other node holds the stream")
            return
        if not self.ready.done():
            self.ready.set_result(stream)
        await self._watch(stream)

    async def _origin(self) -> Optional[tuple[str, list[str]]]:
        """The origin's base URL and the stream's layer rids, from the registry (rids: else from the origin).

        A worker (gateway/workers.py) pulls a stream another worker owns from that worker: the hash rule names
        it, its /api/streams tells whether it has the stream and which layers."""
        worker = self.manager.worker
        if worker is not None:
            base_url = worker.origin_url(self.name)
            if base_url is not None:
                rids = await self._listed_rids(base_url)
                if rids is not None:
                    return base_url, rids
        registry = self.manager.registry
        if registry is None or not self.manager.cluster_relay:  # the owner worker does not have it either
            return None
        info = await registry.get_stream(self.name)
        if info is None or info.node_id == registry.node.node_id:
            return None
        node = await registry.get_node(info.node_id)
        if node is None or node.base_url == registry.node.base_url:  # a worker behind our own front: see above
            return None
        rids = [str(layer["rid"]) for layer in info.layers if layer.get("rid")]
        if not rids:
            rids = await self._rids_from_origin(node.base_url)
        return node.base_url, rids

    async def _rids_from_origin(self, base_url: str) -> list[str]:
        return await self._listed_rids(base_url) or []

    async def _listed_rids(self, base_url: str) -> Optional[list[str]]:
        """The stream's video layer rids in the origin's /api/streams; None when it does not list the stream."""
        response = await self._http.get(f"{base_url}/api/streams")
        if response.status_code != 200:
            return None
        for entry in response.json():
            if entry.get("stream") == self.name:
                for track in entry.get("tracks", []):
                    if track.get("kind") == "video" and track.get("simulcast"):
                        return [str(layer["rid"]) for layer in track.get("layers", []) if layer.get("rid")]
                return []
        return None

    async def _open(self) -> Optional[Stream]:
        origin = await self._origin()
        if origin is None:
            return None
        base_url, rids = origin
        self.whep_url = f"{base_url}/whep/{self.name}"
        ingest = self.ingest = RelayIngest(self, self.manager, self.name, self.config)
        await ingest.prepare()
        candidates = ingest.transport.local_candidates()
        offer = write_offer(
            relay_offer_media(rids),
            ice_ufrag=ingest.transport.ice_ufrag,
            ice_pwd=ingest.transport.ice_pwd,
            fingerprint=ingest.transport.fingerprint,
            candidates=[c.sdp() for c in candidates],
            address=candidates[0].ip,
            port=candidates[0].port,
        )
        headers = {"Content-Type": "application/sdp", RELAY_HEADER: self._puller(), **self._auth_headers()}
        # A 307 (the origin moved the stream on) is followed with the same method and body (RFC 9725 §4.5).
        response = await self._http.post(self.whep_url, content=offer.encode(), headers=headers)
        if response.status_code != 201:
            raise RelayError(f"the origin answered {response.status_code}: {response.text[:200]}")
        location = response.headers.get("location")
        if location:
            self.resource_url = urljoin(str(response.url), location)
        if self.closed:  # closed (shutdown) while the POST was under way: close() found no resource to DELETE
            await self._delete_upstream()
            return None
        events_link = link_with_rel(response.headers.get_list("link"), SSE_REL)
        ingest.apply_answer(parse_offer(response.text))
        ingest.start_transport()
        try:
            async with asyncio.timeout(self.config.rtc.ice_timeout):
                await ingest.connected_event.wait()
        except TimeoutError:
            raise RelayError(f"not connected to the origin within {self.config.rtc.ice_timeout:g} s") from None
        if self.closed:
            return None
        stream = self.manager.streams.get(self.name)
        if stream is not None and stream.publisher is not None:
            raise RelayError("a local publisher took the stream meanwhile")
        stream = self.stream = self.manager.streams.setdefault(self.name, Stream(self.name))
        stream.publisher = ingest
        if events_link:
            self._events_task = asyncio.create_task(self._follow_events(urljoin(str(response.url), events_link), stream))
        log.info(
            "relaying %s from %s (%s)", self.name, self.whep_url,
            ", ".join(f"{t.kind} {t.codec.name}" + (f" layers {','.join(t.by_rid)}" if t.simulcast else "") for t in ingest.tracks.values()),
        )
        return stream

    async def _follow_events(self, sse_url: str, stream: Stream) -> None:
        """Subscribe to the origin's `active` / `inactive` events for this session and pass them on to the local
        viewers (draft-ietf-wish-whep §4.9.1: POST the event list, GET the event stream at its Location)."""
        headers = self._auth_headers()
        try:
            response = await self._http.post(sse_url, json=["active", "inactive"], headers=headers)
            if response.status_code != 201 or "location" not in response.headers:
                log.info("relay of %s: the origin's events not available (%d)", self.name, response.status_code)
                return
            url = urljoin(sse_url, response.headers["location"])
            timeout = httpx.Timeout(HTTP_TIMEOUT, read=None)  # an event stream is quiet between events
            async with self._http.stream("GET", url, headers=headers, timeout=timeout) as events:
                name = None
                async for line in events.aiter_lines():
                    if line.startswith("event:"):
                        name = line[len("event:") :].strip()
                    elif not line and name is not None:
                        self._upstream_event(name, stream)
                        name = None
        except (httpx.HTTPError, OSError) as exc:
            if not self.closed:
                log.info("relay of %s: the origin's event stream ended: %s", self.name, exc)

    def _upstream_event(self, name: str, stream: Stream) -> None:
        if name not in ("active", "inactive") or self.closed:
            return
        active = name == "active"
        if active == stream.source_active:
            return
        stream.source_active = active
        log.info("relay of %s: the origin's publisher is %s", self.name, "back" if active else "gone for now")
        for viewer in list(stream.viewers):
            viewer.events.publish(name, {})

    async def _watch(self, stream: Stream) -> None:
        """End the pull `relay_grace` seconds after the last local viewer left."""
        grace = self.config.cluster.relay_grace
        idle_since: Optional[float] = None
        while not self.closed:
            await asyncio.sleep(WATCH_INTERVAL)
            if self.manager.streams.get(self.name) is not stream:
                await self.close("the stream left this node")
                return
            if stream.viewers:
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= grace:
                await self.close(f"no local viewer for {grace:g} s")
                return

    async def close(self, reason: str) -> None:
        """End the pull once: its viewers (`inactive`), its transport, and the origin's session (DELETE)."""
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        self._on_closed(self)
        if not self.ready.done():
            self.ready.set_result(None)
        stream = self.stream
        if stream is not None:
            if self.manager.streams.get(self.name) is stream:
                del self.manager.streams[self.name]  # synchronously: no new viewer joins a closing pull
            stream.publisher = None
            log.info("relay of %s from %s ended: %s", self.name, self.whep_url, reason)
            for viewer in list(stream.viewers):
                await self.manager.end(viewer, f"the relay from the origin ended: {reason}")
        if self.ingest is not None and not self.ingest.ended:
            await self.ingest.close(reason)
        await self._delete_upstream()
        for task in (self._events_task, self._task):
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()

    def _puller(self) -> str:
        """Who pulls, for the origin's viewer list (RELAY_HEADER): this worker, else this node."""
        if self.manager.worker is not None:
            return f"worker {self.manager.worker.index}"
        registry = self.manager.registry
        return f"node {registry.node.node_id}" if registry is not None else "relay"

    def _auth_headers(self) -> dict[str, str]:
        token = self.config.cluster.relay_token or stream_tokens(self.config, self.name).play_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _delete_upstream(self) -> None:
        """WHEP §4.3 / RFC 9725 §4.3: DELETE ends the origin's session at once (else its consent check would)."""
        url, self.resource_url = self.resource_url, None
        if url is None:
            return
        try:
            await self._http.delete(url, headers=self._auth_headers())
        except (httpx.HTTPError, OSError) as exc:
            log.info("DELETE %s failed: %s", url, exc)

    def info(self) -> dict:
        return {"stream": self.name, "origin": self.whep_url, "resource": self.resource_url, "closed": self.closed}


SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"  # draft-ietf-wish-whep §4.9.1
# Sent with a pull's WHEP POST: the origin shows the session as this relay in its viewer list (`relay_for`).
RELAY_HEADER = "Whipgate-Relay"
_LINK = re.compile(r'<([^>]*)>([^<]*)')


def link_with_rel(values: list[str], rel: str) -> Optional[str]:
    """The target of the first Link (RFC 8288 §3) among `values` whose rel parameter names `rel`."""
    for value in values:
        for target, params in _LINK.findall(value):
            for param in params.split(";"):
                key, _, val = param.strip().partition("=")
                if key.strip().lower() == "rel" and rel in val.strip().rstrip(",").strip().strip('"').split():
                    return target
    return None


class RelayPulls:
    """This node's pulls, one per stream: get-or-start, shared by concurrent viewers."""

    def __init__(self, manager: "SessionManager") -> None:
        self.manager = manager
        self.pulls: dict[str, RelayPull] = {}
        metrics.track_sessions("relay", lambda: len(self.pulls))  # whipgate_sessions{kind="relay"}: upstream pulls
        # Cluster-internal traffic: no proxy from the environment; 307s are followed (RFC 9725 §4.5).
        self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=True, trust_env=False)

    async def stream(self, stream_name: str) -> Optional[Stream]:
        """The local Stream fed from the origin, starting the pull if needed; None when no other node has it."""
        pull = self.pulls.get(stream_name)
        if pull is None:
            pull = RelayPull(self.manager, stream_name, self._http, self._forget)
            self.pulls[stream_name] = pull  # before any await: concurrent viewers share this pull
            pull.start()
        return await asyncio.shield(pull.ready)

    def _forget(self, pull: RelayPull) -> None:
        if self.pulls.get(pull.name) is pull:
            del self.pulls[pull.name]

    async def close_all(self) -> None:
        for pull in list(self.pulls.values()):
            await pull.close("gateway shutting down")
        await self._http.aclose()
