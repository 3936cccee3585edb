"""Worker processes (`http.workers`): every CPU core used, each worker owning its own viewers.

With `http.workers` > 1 `whipgate serve` is a front process (gateway/front.py) and N worker processes. A worker is
an ordinary whipgate app on 127.0.0.1:<internal port> with its own ICE sockets; only HTTP passes the front.

- A stream key belongs to one worker, `owner_worker(key, N)` (a stable hash): the front sends its WHIP POST there.
- WHEP POSTs are spread over the workers (round robin). A viewer on a worker that does not own the stream is
  served by relay mode (gateway/relay.py): that worker pulls the stream once from the owner worker's WHEP
  endpoint (all simulcast layers) and fans it out to all of its viewers. So a stream's packets cross to another
  worker once per worker with viewers, never once per viewer. No registry is needed for it: the owner is known by
  the hash rule (`WorkerRole.origin_url`).
- A session id starts with "w<index>." (`WorkerRole.session_prefix`), so the front sends every request on a
  session resource (PATCH, DELETE, the SSE and layer extensions) to the worker holding it without keeping state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import zlib
from dataclasses import dataclass
from typing import Optional

from gateway.config import Config

log = logging.getLogger(__name__)

SESSION_ID_WORKER = re.compile(r"w([0-9]{1,4})\.")  # the start of a worker's session id: "w<index>."
PR_SET_PDEATHSIG = 1  # prctl(2)


def worker_count(config: Config) -> int:
    """How many worker processes `http.workers` asks for: 0 = one per CPU core (usable by this process)."""
    if config.http.workers > 0:
        return config.http.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def owner_worker(stream_name: str, workers: int) -> int:
    """The worker owning a stream key: CRC-32 of the key modulo the worker count (stable across processes and
    restarts, unlike hash())."""
    return zlib.crc32(stream_name.encode("utf-8")) % workers


def worker_of_session(session_id: str, workers: int) -> Optional[int]:
    """The worker that created a session, read from its id ("w<index>.<random>"); None when not a worker's."""
    match = SESSION_ID_WORKER.match(session_id)
    if match is None:
        return None
    index = int(match.group(1))
    return index if index < workers else None


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker `index` of `len(urls)`; `urls` are every worker's internal base URL by index."""

    index: int
    urls: tuple[str, ...]

    @property
    def session_prefix(self) -> str:
        return f"w{self.index}."

    def owns(self, stream_name: str) -> bool:
        return owner_worker(stream_name, len(self.urls)) == self.index

    def origin_url(self, stream_name: str) -> Optional[str]:
        """The base URL of the worker to relay `stream_name` from; None when this worker owns it."""
        owner = owner_worker(stream_name, len(self.urls))
        return None if owner == self.index else self.urls[owner]


def die_with_parent(parent_pid: int) -> None:
    """A worker ends when its front process does (no orphans): Linux delivers SIGTERM on the parent's death
    (prctl PR_SET_PDEATHSIG); if the parent died before that was set, end now."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to be stopped with the front process: %s", exc)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
