"""A stream: the room where one publisher's tracks meet their viewers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from gateway.sfu.published_track import PublishedTrack
    from whep.session import ViewerSession
    from whip.session import PublisherSession


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.publisher: Optional["PublisherSession"] = None
        self.viewers: set["ViewerSession"] = set()
        self.started = time.time()

    def track(self, kind: str) -> Optional["PublishedTrack"]:
        if self.publisher is None:
            return None
        return next((t for t in self.publisher.tracks.values() if t.kind == kind), None)

    def info(self) -> dict:
        tracks = list(self.publisher.tracks.values()) if self.publisher else []
        return {
            "stream": self.name,
            "publisher": self.publisher is not None,
            "connected": bool(self.publisher and self.publisher.transport.connected),
            "viewers": len(self.viewers),
            "started": self.started,
            "tracks": [t.info() for t in tracks],
        }
