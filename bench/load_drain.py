"""C receive path for bench/load.py's viewers (bench/viewer_drain.c, compiled at start with the system `cc`).

`Drain` owns one epoll set with every attached viewer's UDP socket and one `loop.add_reader` on it. When it is
readable, one C call (`drain_run`) reads the ready sockets with recvmmsg, counts RTP per SSRC in C and hands back
only STUN, the media of viewers still waiting for their first keyframe, and 1 packet in SAMPLE_EVERY (with its
kernel receive time, SO_TIMESTAMPNS) to the viewer's Python methods.

Taking a viewer's socket away from aioice (its uvloop datagram transport has no pause_reading): the socket's fd
is duplicated, the transport's protocol is swapped for a do-nothing one (so its connection_lost does not reach
aioice) and the transport closed, which stops uvloop's polling and closes its fd; the dup keeps the bound socket.
aioice's StunProtocol keeps sending (consent-check answers, DTLS close_notify) through `SendOnlyTransport`, a
`sendto` on the dup; closing it detaches the fd from the epoll set and lets aioice's close finish.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Callable, Optional

from cffi import FFI

SOURCE = pathlib.Path(__file__).with_name("viewer_drain.c")
MAX_SSRC = 8
CDEF = """
typedef struct {
    uint32_t ssrc; int32_t video; int64_t received; int64_t highest; int64_t cycles; int64_t frames;
} ssrc_count;
typedef struct {
    int32_t fd; int32_t video_pt; int32_t pass_media; int32_t sample_every;
    int64_t packets; int64_t rtcp; int64_t other; int64_t stun; int64_t passed; int64_t reads;
    int32_t nssrc; int32_t overflow_ssrc;
    ssrc_count ssrcs[8];
    int32_t twcc_id; int32_t twcc_count; int32_t twcc_started; int32_t twcc_next;
    int64_t twcc_feedbacks; int64_t twcc_dropped;
    uint16_t twcc_seq[256]; int64_t twcc_us[256];
} viewer_state;
typedef struct {
    int32_t viewer; int32_t kind; int32_t offset; int32_t length; uint32_t addr; int32_t port; int64_t rx_ns;
} passed_packet;
int drain_open(void);
int drain_add(int ep, int fd, int slot);
int drain_remove(int ep, int fd);
int drain_process(viewer_state *v, const uint8_t *d, int len);
int drain_run(int ep, viewer_state *states, int nstates, passed_packet *out, int max_out, uint8_t *arena,
              int arena_size, int budget, int64_t *received);
int drain_feedback(viewer_state *v, uint8_t *out, int max, uint32_t sender_ssrc, uint32_t media_ssrc);
"""

KIND_STUN, KIND_WATCH, KIND_SAMPLE = 0, 1, 2
MAX_OUT = 2048
ARENA = 4 << 20  # the C side stops when less than one batch (64 x 2048 bytes) fits
FEEDBACK_SLICES = 8  # turns per feedback interval (viewers served per turn: 1/8)
BUDGET = 8192  # datagrams per call: the publisher shares this loop and must keep its frame clock

_compiled: Optional[tuple[Any, Any]] = None


def compile_drain() -> tuple[Any, Any]:
    """Compile viewer_drain.c into a temporary directory and load it (cffi ABI mode); once per process."""
    global _compiled
    if _compiled is not None:
        return _compiled
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or shutil.which(cc) is None:
        raise SystemExit("bench/load.py: the C viewers need a C compiler (cc, gcc or clang; set CC), "
                         "e.g. apt-get install gcc; or run with --python-viewers")
    outdir = pathlib.Path(tempfile.mkdtemp(prefix="whipgate-drain-"))
    library = outdir / "viewer_drain.so"
    result = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(library), str(SOURCE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench/load.py: compiling {SOURCE} with {cc} failed:\n{result.stderr}")
    ffi = FFI()
    ffi.cdef(CDEF)
    _compiled = (ffi, ffi.dlopen(str(library)))
    return _compiled


class SendOnlyTransport(asyncio.DatagramTransport):
    """What aioice's StunProtocol sends through once the drain reads the socket: sendto on our dup of it."""

    def __init__(self, sock: socket.socket, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._sock = sock
        self._on_close = on_close
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._on_close()

    def abort(self) -> None:
        self.close()


class Drain:
    """Every C viewer's socket in one epoll set, read when the event loop says it is readable."""

    def __init__(self, capacity: int = 8192, sample_every: int = 50, interval: float = 0.0,
                 feedback_interval: float = 0.0) -> None:
        """interval > 0: after a read, wait this long (s) before watching the sockets again, so that each socket
        has gathered a few datagrams per recvmmsg and the event loop wakes up far less often. Loss and the
        kernel-time latency do not depend on when a datagram is read; the Python-side latency and the time to
        first frame grow by up to `interval`.

        feedback_interval > 0: every viewer attached with a transport-wide-cc extension id sends a transport-wide
        feedback packet this often (s), as a browser does (Chromium: ~62 ms at these rates), built in C from what
        it received (drain_feedback), protected and sent by the viewer's `send_feedback`. The viewers are served
        in FEEDBACK_SLICES turns per interval, so their feedback is spread over it as independent browsers' is."""
        self.ffi, self.lib = compile_drain()
        self.interval = interval
        self._closed = False
        self.capacity = capacity
        self.sample_every = sample_every
        self.ep = self.lib.drain_open()
        if self.ep < 0:
            raise OSError("epoll_create1 failed")
        self.states = self.ffi.new("viewer_state[]", capacity)
        self.out = self.ffi.new("passed_packet[]", MAX_OUT)
        self.arena = self.ffi.new("uint8_t[]", ARENA)
        self._arena = self.ffi.buffer(self.arena)
        self._received = self.ffi.new("int64_t *")
        self.viewers: list[Any] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))
        self.calls = 0
        self.datagrams = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.ep, self._on_ready)
        self.feedback_interval = feedback_interval
        self._feedback_buffer = self.ffi.new("uint8_t[]", 1500)
        self._feedback_turn = 0
        self._feedback_timer = (self._loop.call_later(feedback_interval / FEEDBACK_SLICES, self._send_feedback)
                                if feedback_interval > 0 else None)

    def attach(self, viewer: Any, video_pt: int, twcc_id: int = 0) -> int:
        """A slot for this viewer (counting starts with pass_media set), not yet reading any socket. twcc_id: the
        transport-wide-cc header extension id it negotiated (0: none); with a feedback interval it sends feedback."""
        if not self._free:
            raise RuntimeError(f"more than {self.capacity} C viewers")
        slot = self._free.pop()
        state = self.states[slot]
        self.ffi.memmove(self.ffi.addressof(state), b"\0" * self.ffi.sizeof("viewer_state"),
                         self.ffi.sizeof("viewer_state"))
        state.fd = -1
        state.video_pt = video_pt
        state.pass_media = 1
        state.sample_every = self.sample_every
        state.twcc_id = twcc_id if self.feedback_interval > 0 else 0
        self.viewers[slot] = viewer
        return slot

    def read_socket(self, slot: int, fd: int) -> None:
        self.states[slot].fd = fd
        rc = self.lib.drain_add(self.ep, fd, slot)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def detach(self, slot: int) -> None:
        state = self.states[slot]
        if state.fd >= 0:
            self.lib.drain_remove(self.ep, state.fd)
            state.fd = -1
        if self.viewers[slot] is not None:
            self.viewers[slot] = None
            self._free.append(slot)

    def process(self, slot: int, data: bytes) -> int:
        """Count one datagram that did not come through drain_run (aioice read it before the switch)."""
        return self.lib.drain_process(self.ffi.addressof(self.states[slot]), data, len(data))

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self.ep, self._on_ready)

    def _on_ready(self) -> None:
        if self.interval > 0:
            self._loop.remove_reader(self.ep)
            self._loop.call_later(self.interval, self._resume)
        lib, out, arena, viewers = self.lib, self.out, self._arena, self.viewers
        n = lib.drain_run(self.ep, self.states, self.capacity, out, MAX_OUT, self.arena, ARENA, BUDGET,
                          self._received)
        self.calls += 1
        self.datagrams += self._received[0]
        for i in range(n):
            p = out[i]
            viewer = viewers[p.viewer]
            if viewer is None:
                continue
            data = arena[p.offset : p.offset + p.length]
            if p.kind == KIND_STUN:
                viewer.on_stun(data, (socket.inet_ntoa(p.addr.to_bytes(4, "little")), p.port))
            else:
                viewer.on_passed(p.kind, data, p.rx_ns)

    def _send_feedback(self) -> None:
        """One turn of the feedback round: the viewers of slots = turn (mod FEEDBACK_SLICES)."""
        turn = self._feedback_turn
        self._feedback_turn = (turn + 1) % FEEDBACK_SLICES
        self._feedback_timer = self._loop.call_later(self.feedback_interval / FEEDBACK_SLICES, self._send_feedback)
        lib, buffer, states, viewers = self.lib, self._feedback_buffer, self.states, self.viewers
        for slot in range(turn, self.capacity, FEEDBACK_SLICES):
            viewer = viewers[slot]
            if viewer is None or states[slot].twcc_id == 0:
                continue
            length = lib.drain_feedback(self.ffi.addressof(states[slot]), buffer, 1500, viewer.rtcp_ssrc, 0)
            if length > 0:
                viewer.send_feedback(self.ffi.buffer(buffer, length)[:])

    def feedback_sent(self) -> int:
        """Feedback packets built so far, all viewers."""
        return sum(self.states[slot].twcc_feedbacks for slot, v in enumerate(self.viewers) if v is not None)

    def close(self) -> None:
        if self._feedback_timer is not None:
            self._feedback_timer.cancel()
        self._closed = True
        try:
            self._loop.remove_reader(self.ep)
        finally:
            os.close(self.ep)
