"""Every live session and stream of this gateway process, and the one place sessions end.

Whatever ends a session (DELETE, ICE/DTLS failure, consent expiry, connect timeout, shutdown) goes through
SessionManager.end, so sockets, tasks and fan-out entries are released exactly once. A publisher's end
ends its viewers too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Optional

from gateway import metrics
from gateway.config import Config
from gateway.peer_session import PeerSession
from gateway.registry import Registry, StreamInfo
from gateway.relay import RelayPulls
from gateway.sdp import parse_offer
from gateway.sfu.stream import Stream
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


class SessionManager:
    def __init__(self, config: Config, registry: Optional[Registry] = None) -> None:
        self.config = config
        self.registry = registry  # set by the app; None in unit tests (this node alone)
        self.streams: dict[str, Stream] = {}
        self.sessions: dict[str, PeerSession] = {}
        self._tasks: set[asyncio.Task] = set()
        # cluster.viewer_mode = "relay": streams held by other nodes are pulled here (gateway/relay.py).
        self.relays: Optional[RelayPulls] = RelayPulls(self) if config.cluster.viewer_mode == "relay" else None
        metrics.track_sessions("publisher", lambda: self.count("publisher"))
        metrics.track_sessions("viewer", lambda: self.count("viewer"))

    def count(self, kind: str) -> int:
        return sum(1 for s in self.sessions.values() if s.kind == kind)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def has_publisher(self, stream_name: str) -> bool:
        stream = self.streams.get(stream_name)
        return stream is not None and stream.publisher is not None

    async def publish(self, stream_name: str, sdp: str) -> PublisherSession:
        offer = parse_offer(sdp)
        plan = negotiate_publish(offer)
        if self.has_publisher(stream_name):
            raise StreamBusy(stream_name)
        session = PublisherSession(self, stream_name, offer, plan, self.config)
        stream = self.streams.setdefault(stream_name, Stream(stream_name))
        stream.publisher = session  # claimed before the first await: a concurrent POST gets 409
        self.sessions[session.id] = session
        if self.registry is not None:
            claimed = await self.registry.claim_stream(
                StreamInfo(
                    name=stream_name,
                    node_id=self.registry.node.node_id,
                    session_id=session.id,
                    codecs=[t.codec.name for t in session.tracks.values()],
                )
            )
            if not claimed:  # another node has a publisher on this key
                await self.end(session, "the stream key is live on another node")
                raise StreamBusy(stream_name)
        await self._start(session)
        log.info("publisher %s on stream %s (%s)", session.id, stream_name, ", ".join(
            f"{t.kind} {t.codec.name}" for t in session.tracks.values()))
        return session

    async def play(self, stream_name: str, sdp: str) -> ViewerSession:
        stream = self.streams.get(stream_name)
        offer = None
        if stream is None or stream.publisher is None:
            if self.relays is not None and self.registry is not None:
                offer = parse_offer(sdp)  # a bad offer must not start a pull
                stream = await self.relays.stream(stream_name) or stream
            else:
                await self._find_elsewhere(stream_name)  # routing first: the owner parses the offer
        offer = offer or parse_offer(sdp)
        if stream is None or stream.publisher is None:
            raise StreamNotLive(stream_name)
        session = ViewerSession(self, stream, offer, self.config)
        stream.viewers.add(session)
        self.sessions[session.id] = session
        self._publish_viewer_count(stream)
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
        if node is not None:
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

    async def end(self, session: PeerSession, reason: str) -> None:
        if self.sessions.get(session.id) is not session:
            return
        del self.sessions[session.id]
        log.info("%s %s of %s ended: %s", session.kind, session.id, session.stream_name, reason)
        stream = self.streams.get(session.stream_name)
        if isinstance(session, PublisherSession):
            if stream is not None and stream.publisher is session:
                stream.publisher = None
                del self.streams[session.stream_name]
                if self.registry is not None:
                    self.spawn(self.registry.release_stream(session.stream_name, session.id))
                for viewer in list(stream.viewers):
                    await self.end(viewer, "the publisher left")
        elif stream is not None and isinstance(session, ViewerSession):
            stream.viewers.discard(session)
            self._publish_viewer_count(stream)
        await session.close(reason)

    def _publish_viewer_count(self, stream: Stream) -> None:
        """The `viewercount` event (WHEP draft-02 §4.9.1.4) to every viewer, and the count in the registry."""
        for viewer in stream.viewers:
            viewer.events.publish("viewercount", {"viewercount": len(stream.viewers)})
        if self.registry is not None and stream.publisher is not None:
            self.spawn(self.registry.update_stream(stream.name, viewers=len(stream.viewers)))

    def stream_lost(self, stream_name: str, session_id: str) -> None:
        """The registry found this node's claim taken over elsewhere: end the local publisher."""
        session = self.sessions.get(session_id)
        if session is not None:
            self.spawn(self.end(session, "the stream key was claimed by another node"))

    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await self.end(session, "gateway shutting down")
        if self.relays is not None:
            await self.relays.close_all()
        for task in list(self._tasks):
            task.cancel()

    def stream_list(self) -> list[dict]:
        return [s.info() for s in self.streams.values() if s.publisher is not None]
