"""A stream: the room where one publisher's tracks meet their viewers.

The publisher is any *source* of PublishedTracks: a WHIP `PublisherSession` today, or anything else with the
same `StreamSource` face (e.g. an upstream pull from another gateway). Sources come and go while viewers stay:
`detach_publisher` leaves the viewers waiting (WHEP SSE `inactive`), `attach_publisher` moves every waiting
viewer's DownTracks onto the new source's tracks of the same kind and codec (`DownTrack.rebind`), so they keep
decoding one continuous RTP stream (SSE `active`). When viewers wait and for how long is SessionManager's
business (gateway/sessions.py: `whep.publisher_grace`, WHIP takeover).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:
    from gateway.sfu.published_track import PublishedTrack
    from whep.session import ViewerSession


class StreamSource(Protocol):
    """What a Stream needs of whatever feeds it."""

    id: str
    tracks: dict[str, "PublishedTrack"]  # by mid

    @property
    def connected(self) -> bool: ...


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.publisher: Optional[StreamSource] = None
        self.viewers: set["ViewerSession"] = set()
        self.started = time.time()
        self.publisher_left_at: Optional[float] = None  # monotonic; set while viewers wait for a publisher
        # False while an upstream source reports its own publisher gone (a relay's origin sent SSE `inactive`):
        # the source is connected but carries nothing; viewers joining meanwhile start `inactive`.
        self.source_active = True
        # SessionManager's throttle of the viewer count it publishes (gateway/sessions.py VIEWER_COUNT_INTERVAL):
        # when it last went out (event-loop time) and the timer of the next publication, if one is due.
        self.viewer_count_sent_at = float("-inf")
        self.viewer_count_timer: Optional[asyncio.TimerHandle] = None

    def track(self, kind: str) -> Optional["PublishedTrack"]:
        if self.publisher is None:
            return None
        return next((t for t in self.publisher.tracks.values() if t.kind == kind), None)

    # ---- sources come and go, viewers stay ------------------------------------------------------------
    def detach_publisher(self) -> None:
        """The publisher left: its viewers stop forwarding and wait (each gets the SSE `inactive` event)."""
        self.publisher = None
        self.publisher_left_at = time.monotonic()
        for viewer in self.viewers:
            viewer.source_left()

    def attach_publisher(self, source: StreamSource) -> list[tuple["ViewerSession", str]]:
        """`source` feeds this stream from now on; every viewer is re-bound to its tracks (SSE `active`).

        Returns the viewers that cannot follow (the new source sends a codec they did not negotiate) with the
        reason; the caller ends them. Viewers still bound to a previous source (a takeover, no wait) are moved
        the same way."""
        self.publisher = source
        self.publisher_left_at = None
        refused: list[tuple["ViewerSession", str]] = []
        for viewer in list(self.viewers):
            problem = viewer.rebind(list(source.tracks.values()))
            if problem is not None:
                refused.append((viewer, problem))
        return refused

    def info(self) -> dict:
        tracks = list(self.publisher.tracks.values()) if self.publisher else []
        return {
            "stream": self.name,
            "publisher": self.publisher is not None,
            "connected": bool(self.publisher and self.publisher.connected),
            "viewers": len(self.viewers),
            "started": self.started,
            "tracks": [t.info() for t in tracks],
        }
