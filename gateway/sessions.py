"""Every live session and stream of this gateway process, and the one place sessions end.

Whatever ends a session (DELETE, ICE/DTLS failure, consent expiry, connect timeout, shutdown) goes through
SessionManager.end, so sockets, tasks and fan-out entries are released exactly once. A publisher's end
ends its viewers too, unless `whep.publisher_grace` > 0: then they wait that long for a publisher of the same
stream key and move to it (`Stream.attach_publisher`), decoding on. With `whip.takeover` a POST with the live
publisher's Bearer token replaces it at once, viewers moving along the same way.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Awaitable, Optional

from gateway import metrics
from gateway.auth import bearer_token_matches, stream_tokens
from gateway.config import Config
from gateway.peer_session import PeerSession
from gateway.registry import Registry, StreamInfo
from gateway.relay import RelayPulls
from gateway.sdp import parse_offer
from gateway.sfu.stream import Stream
from gateway.workers import WorkerRole
from whep.events import freeze
from whep.session import ViewerSession
from whip.offer_answer import negotiate_publish
from whip.session import PublisherSession

log = logging.getLogger(__name__)


class StreamBusy(Exception):
    """WHIP: the stream already has a publisher (409)."""


class StreamNotLive(Exception):
    """WHEP: the stream has no publisher (409 + Retry-After)."""


class StreamElsewhere(Exception):
    """WHEP: another node of the cluster holds the stream; `url` is its WHEP endpoint (307)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class OverCapacity(Exception):
    """WHIP: this node has `cluster.max_publishers` publishers; `url` is another node's WHIP endpoint (307), or
    None (503 + Retry-After)."""

    def __init__(self, url: Optional[str]) -> None:
        super().__init__(url)
        self.url = url


LAYER_REFRESH_SECONDS = 2.0
# A stream's viewer count (the WHEP `viewercount` event to each of its viewers, and the registry's count) goes out at
# most this often (ours, issue #6): every join and every leave changes it, and each publication reaches every viewer,
# so a crowd joining, or the viewers of a publisher that left ending one by one, cost O(N^2). With 400 viewers
# joining, the publications were 14% of the gateway's CPU (py-spy). The first change after a quiet interval goes out
# at once; the changes within the interval go out as one, with the count at its end. A joining viewer gets the
# current count at once either way (its event streams start with it).
VIEWER_COUNT_INTERVAL = 0.5


def registry_layers(session: PublisherSession) -> list[dict]:
    """The publisher's video layers as the registry keeps them (gateway/registry.py StreamInfo.layers)."""
    out = []
    for track in session.tracks.values():
        if track.kind != "video":
            continue
        for layer in track.ordered_layers:
            width, height = layer.size or (None, None)
            out.append({
                "rid": layer.rid, "spatial_id": layer.spatial_id, "width": width, "height": height,
                "bitrate": int(round(layer.bitrate / 50_000)) * 50_000, "active": layer.active,
            })
    return out


class SessionManager:
    def __init__(self, config: Config, registry: Optional[Registry] = None, worker: Optional[WorkerRole] = None) -> None:
        self.config = config
        self.registry = registry  # set by the app; None in unit tests (this node alone)
        # http.workers > 1: this process is one worker; its session ids name it, so the front routes by them.
        self.worker = worker
        self.session_id_prefix = worker.session_prefix if worker is not None else ""
        self.streams: dict[str, Stream] = {}
        self.sessions: dict[str, PeerSession] = {}
        self._tasks: set[asyncio.Task] = set()
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        self._publishing: dict[str, list] = {}  # stream name -> [lock, POSTs holding or waiting for it]
        self._closing = False
        # cluster.viewer_mode = "relay": streams held by other nodes are pulled here (gateway/relay.py); a worker
        # pulls the streams other workers own the same way.
        self.cluster_relay = config.cluster.viewer_mode == "relay"
        self.relays: Optional[RelayPulls] = RelayPulls(self) if self.cluster_relay or worker is not None else None
        metrics.track_sessions("publisher", lambda: self.count("publisher"))
        metrics.track_sessions("viewer", lambda: self.count("viewer"))
        metrics.track_viewers(lambda: [s.layer_summary() for s in self.sessions.values() if isinstance(s, ViewerSession)])

    def count(self, kind: str) -> int:
        return sum(1 for s in self.sessions.values() if s.kind == kind)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def has_publisher(self, stream_name: str) -> bool:
        stream = self.streams.get(stream_name)
        return stream is not None and stream.publisher is not None

    def _takeover_token(self, stream_name: str, token: Optional[str]) -> Optional[str]:
        """The token that proves a publisher's credentials for a takeover, or None when takeover is off or cannot
        be proven (the stream key has no publish_token: anyone could publish). RFC 9725 leaves a second POST on a
        live key to the server; with `whip.takeover` the live publisher's own Bearer token takes over."""
        if not self.config.whip_takeover or token is None:
            return None
        configured = stream_tokens(self.config, stream_name).publish_token
        if configured is None or not bearer_token_matches(f"Bearer {token}", configured):
            return None
        return token

    async def publish(self, stream_name: str, sdp: str, token: Optional[str] = None) -> PublisherSession:
        """A WHIP POST. `token` is the Bearer token the publisher presented (already checked by the HTTP layer).

        POSTs on one stream key run one after the other (a second one sees the first's publisher: 409 or, with
        the same token, a takeover), so two reconnects racing cannot both claim and end each other."""
        entry = self._publishing.get(stream_name)
        if entry is None:
            entry = self._publishing[stream_name] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._publish(stream_name, sdp, token)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._publishing[stream_name]

    async def _publish(self, stream_name: str, sdp: str, token: Optional[str]) -> PublisherSession:
        offer = parse_offer(sdp)
        plan = negotiate_publish(offer)
        takeover_token = self._takeover_token(stream_name, token)
        stream = self.streams.get(stream_name)
        previous = stream.publisher if stream is not None else None
        if previous is not None:
            same = (
                takeover_token is not None
                and isinstance(previous, PublisherSession)
                and previous.token is not None
                and hmac.compare_digest(previous.token.encode(), takeover_token.encode())
            )
            if not same:
                raise StreamBusy(stream_name)
        else:
            await self._check_capacity(stream_name)
        session = PublisherSession(self, stream_name, offer, plan, self.config)
        session.token = token
        stream = self.streams.setdefault(stream_name, Stream(stream_name))
        stream.publisher = session  # claimed before the first await: a concurrent POST gets 409
        self.sessions[session.id] = session
        self._cancel_grace(stream_name)
        if previous is not None:
            # Takeover: the old session ends, its viewers stay and move to the new publisher below.
            log.info("publisher %s takes over stream %s from %s (same credentials)", session.id, stream_name, previous.id)
            await self.end(previous, "taken over by a new publisher with the same credentials")
        if self.registry is not None:
            claimed = await self.registry.claim_stream(
                StreamInfo(
                    name=stream_name,
                    node_id=self.registry.node.node_id,
                    session_id=session.id,
                    codecs=[t.codec.name for t in session.tracks.values()],
                ),
                takeover_token=takeover_token,
            )
            if not claimed:  # another node has a publisher on this key
                await self.end(session, "the stream key is live on another node")
                raise StreamBusy(stream_name)
        await self._start(session)
        log.info("publisher %s on stream %s (%s)", session.id, stream_name, ", ".join(
            f"{t.kind} {t.codec.name}" for t in session.tracks.values()))
        if self.registry is not None:
            self.spawn(self._keep_layers_current(session))
        if stream.viewers and stream.publisher is session:
            await self._attach(stream, session)
        return session

    async def _keep_layers_current(self, session: PublisherSession) -> None:
        """The registry's copy of the stream's video layers (rid, spatial id, size, bitrate, active), rewritten
        when it changes; the registry publishes `layers_changed` then. Bitrates are rounded to 50 kbit/s so a
        stream's normal rate wobble is not an event every time."""
        last: list[dict] = []
        while not session.ended and self.registry is not None:
            await asyncio.sleep(LAYER_REFRESH_SECONDS)
            layers = registry_layers(session)
            if layers != last and self.streams.get(session.stream_name) is not None:
                if await self.registry.update_stream(session.stream_name, layers=layers):
                    last = layers

    async def _attach(self, stream: Stream, session: PublisherSession) -> None:
        """Move the stream's viewers (waiting in their grace period, or still on a taken-over publisher) to
        `session`; a viewer whose codec the new publisher does not send cannot decode it and is ended."""
        waited = time.monotonic() - stream.publisher_left_at if stream.publisher_left_at is not None else 0.0
        count = len(stream.viewers)
        refused = stream.attach_publisher(session)
        log.info("stream %s: %d viewer(s) moved to publisher %s (after %.1f s without one)",
                 stream.name, count - len(refused), session.id, waited)
        for viewer, problem in refused:
            log.warning("viewer %s of %s ended: %s", viewer.id, stream.name, problem)
            await self.end(viewer, problem)

    async def _check_capacity(self, stream_name: str) -> None:
        """`cluster.max_publishers`: a full node refuses (503) or redirects (307, RFC 9725 §4.5) the publisher
        to the least-loaded other live node, only to one less loaded than itself (so two full nodes never
        send a publisher back and forth)."""
        limit = self.config.cluster.max_publishers
        if limit <= 0 or self.count("publisher") < limit:
            return
        if self.config.cluster.over_capacity == "redirect" and self.registry is not None:
            me = self.registry.node.node_id
            own_load = len(self.sessions)
            others = [n for n in await self.registry.list_nodes() if n.node_id != me and n.load < own_load]
            if others:
                target = min(others, key=lambda n: (n.load, n.node_id))
                log.info("publisher for %s redirected to %s: this node has %d publishers (max %d)",
                         stream_name, target.node_id, self.count("publisher"), limit)
                raise OverCapacity(f"{target.base_url}/whip/{stream_name}")
        log.info("publisher for %s refused: this node has %d publishers (max %d)", stream_name, self.count("publisher"), limit)
        raise OverCapacity(None)

    async def play(self, stream_name: str, sdp: str) -> ViewerSession:
        stream = self.streams.get(stream_name)
        offer = None
        if stream is None or stream.publisher is None:
            from_worker = self.worker is not None and not self.worker.owns(stream_name)  # relayed from its owner
            if self.relays is not None and (from_worker or (self.cluster_relay and self.registry is not None)):
                offer = parse_offer(sdp)  # a bad offer must not start a pull
                stream = await self.relays.stream(stream_name) or stream
            if not self.cluster_relay and (stream is None or stream.publisher is None):
                await self._find_elsewhere(stream_name)  # routing first: the owner parses the offer
        offer = offer or parse_offer(sdp)
        if stream is None or stream.publisher is None:
            raise StreamNotLive(stream_name)
        session = ViewerSession(self, stream, offer, self.config)
        if not stream.source_active:
            session.events.publish("inactive", {})  # a relayed stream whose origin lost its publisher for now
        stream.viewers.add(session)
        self.sessions[session.id] = session
        self._publish_viewer_count(stream, joined=session)
        await self._start(session)
        log.info("viewer %s on stream %s", session.id, stream_name)
        return session

    async def _find_elsewhere(self, stream_name: str) -> None:
        """Raise StreamElsewhere when another node holds the stream (cluster.viewer_mode = "redirect")."""
        if self.registry is None:
            return
        info = await self.registry.get_stream(stream_name)
        if info is None or info.node_id == self.registry.node.node_id:
            return
        node = await self.registry.get_node(info.node_id)
        # Another worker behind this node's own front (http.workers) is not elsewhere: no redirect to ourselves.
        if node is not None and node.base_url != self.registry.node.base_url:
            raise StreamElsewhere(f"{node.base_url}/whep/{stream_name}")

    async def _start(self, session: PeerSession) -> None:
        try:
            await session.prepare()
        except BaseException:
            await self.end(session, "could not gather ICE candidates")
            raise
        session.start_transport()

    def find(self, kind: str, stream_name: str, session_id: str) -> Optional[PeerSession]:
        session = self.sessions.get(session_id)
        if session is None or session.kind != kind or session.stream_name != stream_name:
            return None
        return session

    async def end(self, session: PeerSession, reason: str, *, wait_for_publisher: bool = True) -> None:
        if self.sessions.get(session.id) is not session:
            return
        del self.sessions[session.id]
        log.info("%s %s of %s ended: %s", session.kind, session.id, session.stream_name, reason)
        stream = self.streams.get(session.stream_name)
        if isinstance(session, PublisherSession):
            if stream is not None and stream.publisher is session:
                if self.registry is not None:
                    self.spawn(self.registry.release_stream(session.stream_name, session.id))
                grace = self.config.whep_publisher_grace
                if grace > 0 and stream.viewers and wait_for_publisher and not self._closing:
                    stream.detach_publisher()
                    log.info("stream %s: %d viewer(s) wait up to %g s for a publisher", stream.name, len(stream.viewers), grace)
                    self._grace_timers[stream.name] = asyncio.get_running_loop().call_later(
                        grace, self._grace_expired, stream
                    )
                else:
                    stream.publisher = None
                    del self.streams[session.stream_name]
                    for viewer in list(stream.viewers):
                        await self.end(viewer, "the publisher left")
        elif stream is not None and isinstance(session, ViewerSession):
            stream.viewers.discard(session)
            self._publish_viewer_count(stream)
            if stream.publisher is None and not stream.viewers and self.streams.get(stream.name) is stream:
                self._cancel_grace(stream.name)  # nobody waits any more
                del self.streams[stream.name]
        await session.close(reason)

    def _grace_expired(self, stream: Stream) -> None:
        """`whep.publisher_grace` ran out without a publisher: the waiting viewers end."""
        self._grace_timers.pop(stream.name, None)
        if stream.publisher is not None or self.streams.get(stream.name) is not stream:
            return
        del self.streams[stream.name]
        reason = f"no publisher came back within {self.config.whep_publisher_grace:g} s"
        for viewer in list(stream.viewers):
            self.spawn(self.end(viewer, reason))

    def _cancel_grace(self, stream_name: str) -> None:
        timer = self._grace_timers.pop(stream_name, None)
        if timer is not None:
            timer.cancel()

    def _publish_viewer_count(self, stream: Stream, joined: Optional[ViewerSession] = None) -> None:
        """The stream's viewer count changed (`joined`: by this viewer's arrival): publish it now, or at the end of
        the current VIEWER_COUNT_INTERVAL (`_send_viewer_count`)."""
        if stream.viewer_count_timer is None:
            loop = asyncio.get_running_loop()
            wait = stream.viewer_count_sent_at + VIEWER_COUNT_INTERVAL - loop.time()
            if wait <= 0:
                self._send_viewer_count(stream)
                return
            stream.viewer_count_timer = loop.call_later(wait, self._send_viewer_count, stream)
        if joined is not None:
            joined.events.publish_frozen("viewercount", {"viewercount": len(stream.viewers)})

    def _send_viewer_count(self, stream: Stream) -> None:
        """The `viewercount` event (WHEP draft-02 §4.9.1.5) to every viewer, and the count in the registry."""
        stream.viewer_count_timer = None
        stream.viewer_count_sent_at = asyncio.get_running_loop().time()
        if self.streams.get(stream.name) is not stream:
            return  # the stream ended meanwhile
        count = len(stream.viewers)
        data = freeze({"viewercount": count})  # one copy for all: no viewer's events change it
        for viewer in stream.viewers:
            viewer.events.publish_frozen("viewercount", data)
        if self.registry is not None and stream.publisher is not None:
            self.spawn(self.registry.update_stream(stream.name, viewers=count))

    def stream_lost(self, stream_name: str, session_id: str) -> None:
        """The registry found this node's claim taken over elsewhere (e.g. the publisher reconnected to another
        node with its credentials): end the local publisher, and its viewers with it (the stream lives on the
        other node now; new viewers are redirected there)."""
        session = self.sessions.get(session_id)
        if session is not None:
            self.spawn(self.end(session, "the stream key was claimed by another node", wait_for_publisher=False))

    async def close_all(self) -> None:
        self._closing = True
        for timer in self._grace_timers.values():
            timer.cancel()
        self._grace_timers.clear()
        for session in list(self.sessions.values()):
            await self.end(session, "gateway shutting down")
        if self.relays is not None:
            await self.relays.close_all()
        for task in list(self._tasks):
            task.cancel()

    def stream_list(self) -> list[dict]:
        return [s.info() for s in self.streams.values() if s.publisher is not None]

    def viewer_list(self, stream_name: str) -> list[dict]:
        return [s.info() for s in self.sessions.values() if isinstance(s, ViewerSession) and s.stream_name == stream_name]
