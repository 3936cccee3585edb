"""VP8 payload descriptor (RFC 7741 §4.2) parsing and per-viewer rewriting across simulcast layer switches.

Each simulcast layer numbers its pictures on its own: PictureID (7 or 15 bits), TL0PICIDX (8 bits, counts
base-layer frames) and KEYIDX (5 bits, counts temporal key frames). A viewer receiving one layer at a time must
see each of them continue smoothly, or its depacketizer/reference finder waits for pictures that never come.
`Vp8Munger` keeps them continuous across `switch_to` and, when the viewer receives fewer temporal layers than
sent, drops whole frames above the target and closes the picture id gaps they would leave.

Per packet (once per incoming packet): `parse_descriptor(payload)`. Per packet and viewer:
`Vp8Munger.rewrite(payload, descriptor)` -> the viewer's payload, or None (do not send it; tell the RTP munger
with `RtpMunger.drop(seq)`). Nothing here raises on malformed input: parse returns None.
"""

from __future__ import annotations

from simulcast.rtp_munger import SerialMunger

__all__ = ["Vp8Descriptor", "Vp8Munger", "parse_descriptor", "lane_fields", "temporal_id", "MAX_TEMPORAL_ID"]

Payload = bytes | bytearray | memoryview

MAX_TEMPORAL_ID = 3  # TID is 2 bits (RFC 7741 §4.2)
_SEEN_MASK = 63  # decisions remembered for the last 64 picture ids
_UNSEEN = (-1,) * (_SEEN_MASK + 1)


class Vp8Descriptor:
    """One parsed RFC 7741 §4.2 payload descriptor (plus the key frame flag of §4.3).

        0 1 2 3 4 5 6 7
       +-+-+-+-+-+-+-+-+
       |X|R|N|S|R| PID |  X: extension octet present, N: non-reference frame, S: start of a partition,
       +-+-+-+-+-+-+-+-+     PID: partition index
    X: |I|L|T|K| RSV   |  which of the optional fields below are present
       +-+-+-+-+-+-+-+-+
    I: |M| PictureID   |  M=1: 15-bit PictureID (second octet follows), else 7 bits
       +-+-+-+-+-+-+-+-+
       |   PictureID   |
       +-+-+-+-+-+-+-+-+
    L: |   TL0PICIDX   |
       +-+-+-+-+-+-+-+-+
   T/K:|TID|Y| KEYIDX  |  TID (when T), Y layer sync (when T), KEYIDX (when K)
       +-+-+-+-+-+-+-+-+

    Absent fields are None. `size` is the descriptor length: the VP8 payload header starts there. The
    `*_offset` fields locate rewritable octets in the payload (-1 when absent). `keyframe` is set on the packet
    that starts a key frame (S=1, PID=0, P=0 in the payload header, RFC 7741 §4.3, with the RFC 6386 §9.1
    start code); `width`/`height` are then the frame's size (RFC 6386 §9.1), else 0.
    """

    __slots__ = (
        "x",
        "n",
        "s",
        "partition_index",
        "i",
        "l",
        "t",
        "k",
        "m",
        "picture_id",
        "tl0picidx",
        "tid",
        "y",
        "keyidx",
        "size",
        "keyframe",
        "width",
        "height",
        "picture_id_offset",
        "tl0picidx_offset",
        "tk_offset",
    )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Vp8Descriptor({fields})"


_new = object.__new__


def parse_descriptor(payload: Payload) -> Vp8Descriptor | None:
    """Parse the payload descriptor at the start of a VP8 RTP payload; None when truncated (no VP8 data after
    the descriptor) or when `payload` is not bytes-like. Never raises."""
    try:
        size = len(payload)
        if size < 2:
            return None
        first = payload[0]
        pos = 1
        picture_id = tl0picidx = tid = keyidx = None
        m = y = False
        picture_id_offset = tl0picidx_offset = tk_offset = -1
        extension = 0
        if first & 0x80:  # X
            extension = payload[1]
            pos = 2
            if extension & 0x80:  # I
                if pos >= size:
                    return None
                octet = payload[pos]
                picture_id_offset = pos
                if octet & 0x80:  # M: 15-bit PictureID
                    if pos + 1 >= size:
                        return None
                    picture_id = ((octet & 0x7F) << 8) | payload[pos + 1]
                    m = True
                    pos += 2
                else:
                    picture_id = octet
                    pos += 1
            if extension & 0x40:  # L
                if pos >= size:
                    return None
                tl0picidx = payload[pos]
                tl0picidx_offset = pos
                pos += 1
            if extension & 0x30:  # T or K share one octet
                if pos >= size:
                    return None
                octet = payload[pos]
                tk_offset = pos
                pos += 1
                if extension & 0x20:
                    tid = octet >> 6
                    y = bool(octet & 0x20)
                if extension & 0x10:
                    keyidx = octet & 0x1F
        if pos >= size:
            return None  # a descriptor with no VP8 data
        keyframe = False
        width = height = 0
        # RFC 7741 §4.3 payload header |Size0|H| VER |P|, P=0: key frame; RFC 6386 §9.1: a key frame's 3-byte
        # frame tag is followed by the start code 9d 01 2a and two 16-bit little-endian (scale, size) words.
        if first & 0x17 == 0x10 and not payload[pos] & 0x01 and pos + 10 <= size:
            if payload[pos + 3] == 0x9D and payload[pos + 4] == 0x01 and payload[pos + 5] == 0x2A:
                keyframe = True
                width = (payload[pos + 6] | (payload[pos + 7] << 8)) & 0x3FFF
                height = (payload[pos + 8] | (payload[pos + 9] << 8)) & 0x3FFF
    except (TypeError, IndexError, ValueError):
        return None
    d = _new(Vp8Descriptor)
    d.x = bool(first & 0x80)
    d.n = bool(first & 0x20)
    d.s = bool(first & 0x10)
    d.partition_index = first & 0x07
    d.i = bool(extension & 0x80)
    d.l = bool(extension & 0x40)
    d.t = bool(extension & 0x20)
    d.k = bool(extension & 0x10)
    d.m = m
    d.picture_id = picture_id
    d.tl0picidx = tl0picidx
    d.tid = tid
    d.y = y
    d.keyidx = keyidx
    d.size = pos
    d.keyframe = keyframe
    d.width = width
    d.height = height
    d.picture_id_offset = picture_id_offset
    d.tl0picidx_offset = tl0picidx_offset
    d.tk_offset = tk_offset
    return d


def lane_fields(d: Vp8Descriptor) -> tuple[int, ...]:
    """The descriptor as a C lane reads it (gateway/_srtp_send.c Vp8Fields): (picture_id, m, picture_id_offset,
    tl0picidx, tl0picidx_offset, keyidx, tk_offset, tid, y, keyframe), -1 for an absent field."""
    return (
        -1 if d.picture_id is None else d.picture_id, int(d.m), d.picture_id_offset,
        -1 if d.tl0picidx is None else d.tl0picidx, d.tl0picidx_offset,
        -1 if d.keyidx is None else d.keyidx, d.tk_offset,
        -1 if d.tid is None else d.tid, int(d.y), int(d.keyframe),
    )


def temporal_id(descriptor: Vp8Descriptor) -> int:
    """The frame's temporal layer: TID when the T bit is set, else 0 (no temporal scalability)."""
    tid = descriptor.tid
    return 0 if tid is None else tid


class Vp8Munger:
    """One viewer's VP8 picture id, TL0PICIDX and KEYIDX, continuous across simulcast layer switches, and its
    temporal layer filter.

    - `switch_to(descriptor)` with the descriptor of the new layer's key frame start (also the first packet
      ever forwarded). Picture id continues at last + 1 (the first switch keeps the publisher's values),
      TL0PICIDX at last + 1 (the key frame is a new base-layer frame), KEYIDX at last + 1.
    - `rewrite(payload, descriptor)` for every packet of the current layer: the payload with the viewer's
      values in place (same length, same 7/15-bit picture id width; the payload object itself when nothing
      changes), or None when the packet must not be sent: its frame is above the temporal target, or it is
      older than the switch point.
    - `target_temporal`: the highest TID to forward. Lowering applies from the next frame; raising waits for
      a frame with the layer sync bit Y (RFC 7741 §4.2: it depends on base-layer frames only) one layer up, or
      for a key frame. A dropped frame that is the newest seen (the usual case) gives its picture id to the
      next forwarded frame, so the viewer sees no gap; TL0PICIDX needs no change (base-layer frames are never
      dropped).
    """

    __slots__ = (
        "target_temporal",
        "_pids",
        "_started",
        "_ext",
        "_picture",
        "_picture_out",
        "_seen_id",
        "_seen_out",
        "_temporal",
        "_tl0_offset",
        "_last_tl0",
        "_has_tl0",
        "_keyidx_offset",
        "_last_keyidx",
        "_has_keyidx",
    )

    def __init__(self, target_temporal: int = MAX_TEMPORAL_ID) -> None:
        self.target_temporal = target_temporal
        self._pids = SerialMunger(15)
        self._started = False
        self._ext = 0  # newest incoming picture id, 7-bit ids unwrapped to 15 bits
        self._picture = -1  # incoming picture id of the frame decided last ...
        self._picture_out = -1  # ... and its outgoing id (15 bits), -1: dropped
        self._seen_id = [-1] * (_SEEN_MASK + 1)  # recent decisions by (unwrapped) incoming picture id
        self._seen_out = [-1] * (_SEEN_MASK + 1)
        self._temporal = target_temporal  # highest TID forwarded now (moves towards target_temporal)
        self._tl0_offset = 0
        self._last_tl0 = 0
        self._has_tl0 = False
        self._keyidx_offset = 0
        self._last_keyidx = 0
        self._has_keyidx = False

    @property
    def temporal(self) -> int:
        """The highest temporal layer being forwarded (differs from target_temporal until a sync point)."""
        return self._temporal

    def switch_to(self, descriptor: Vp8Descriptor, layer: int = 0) -> None:
        d = descriptor
        if d.picture_id is not None:
            self._ext = d.picture_id
            self._pids.switch_to(d.picture_id, layer)
        if d.tl0picidx is not None:
            self._tl0_offset = (self._last_tl0 + 1 - d.tl0picidx) & 0xFF if self._has_tl0 else 0
            self._last_tl0 = (d.tl0picidx + self._tl0_offset) & 0xFF
            self._has_tl0 = True
        if d.keyidx is not None:
            self._keyidx_offset = (self._last_keyidx + 1 - d.keyidx) & 0x1F if self._has_keyidx else 0
            self._last_keyidx = (d.keyidx + self._keyidx_offset) & 0x1F
            self._has_keyidx = True
        self._temporal = self.target_temporal  # nothing after a key frame refers to anything before it
        self._picture = -1
        self._seen_id[:] = _UNSEEN  # ids of the new layer are a new space
        self._started = True

    def _decide(self, tid: int, sync: bool, keyframe: bool, newest: bool) -> bool:
        """Forward a frame of temporal layer `tid`? The newest frame moves the forwarded layer to the target."""
        current = self._temporal
        if newest:
            target = self.target_temporal
            if keyframe or current > target:
                current = self._temporal = target
            elif sync and tid == current + 1 and tid <= target:
                current = self._temporal = tid  # RFC 7741 §4.2 Y: the first frame of layer tid we may decode
        return tid <= current

    def _begin_picture(self, d: Vp8Descriptor, pid: int) -> None:
        pids = self._pids
        if d.m:
            ext = pid
        else:  # unwrap a 7-bit id against the newest one so 15-bit serial arithmetic works
            delta = (pid - self._ext) & 0x7F
            ext = (self._ext + (delta - 128 if delta >= 64 else delta)) & 0x7FFF
        self._picture = pid
        if not pids.started:  # the switch point carried no picture id: ids start here
            pids.switch_to(ext)
        slot = ext & _SEEN_MASK
        if self._seen_id[slot] == ext:  # decided before (packets of one frame interleaved with another's)
            self._picture_out = self._seen_out[slot]
            return
        newest = pids.is_newest(ext)
        if newest:
            self._ext = ext
        tid = d.tid
        if self._decide(0 if tid is None else tid, d.y, d.keyframe, newest):
            out = pids.map(ext)
            if out is None:
                out = -1
            elif newest:
                self._note_forwarded(d)
        else:
            pids.drop(ext)
            out = -1
        self._picture_out = out
        self._seen_id[slot] = ext
        self._seen_out[slot] = out

    def _note_forwarded(self, d: Vp8Descriptor) -> None:
        if d.tl0picidx is not None:
            out = (d.tl0picidx + self._tl0_offset) & 0xFF
            if 0 < (out - self._last_tl0) & 0xFF < 0x80 or not self._has_tl0:
                self._last_tl0 = out
                self._has_tl0 = True
        if d.keyidx is not None:
            out = (d.keyidx + self._keyidx_offset) & 0x1F
            if 0 < (out - self._last_keyidx) & 0x1F < 0x10 or not self._has_keyidx:
                self._last_keyidx = out
                self._has_keyidx = True

    def lane_state(self) -> tuple[int, ...] | None:
        """What a compiled lane (gateway/_srtp_send.c) needs to run `rewrite` for every picture of the current
        layer up to the current temporal layer: (ext, picture, picture_out, temporal, picture id segment's
        in_start, offset, highest_in, last_out, tl0 offset, last tl0, has tl0, keyidx offset, last keyidx, has
        keyidx); None when not started or while the temporal layer moves towards its target (only Python raises
        or lowers it). The lane gives what it moved on back through `resume`."""
        if not self._started or self._temporal != self.target_temporal:
            return None
        pids = self._pids.lane_state()
        if pids is None:
            return None
        return (self._ext, self._picture, self._picture_out, self._temporal, *pids, self._tl0_offset,
                self._last_tl0, int(self._has_tl0), self._keyidx_offset, self._last_keyidx, int(self._has_keyidx))

    def resume(self, ext: int, picture: int, picture_out: int, highest_in: int, last_out: int, last_tl0: int,
               has_tl0: int, last_keyidx: int, has_keyidx: int) -> None:
        """Take back the state a compiled lane moved on (see `lane_state`). The lane keeps no record of recent
        decisions (`_seen_*`): a late packet of a picture it decided is decided again, the same way (it forwarded
        every picture, by the same offsets); the record is emptied, so no entry older than the lane outlives a
        wrap of the picture id."""
        self._seen_id[:] = _UNSEEN
        self._ext = ext
        self._picture = picture
        self._picture_out = picture_out
        self._pids.resume(highest_in, last_out)
        self._last_tl0 = last_tl0
        self._has_tl0 = bool(has_tl0)
        self._last_keyidx = last_keyidx
        self._has_keyidx = bool(has_keyidx)

    def rewrite(self, payload: Payload, descriptor: Vp8Descriptor) -> Payload | None:
        d = descriptor
        if not self._started:
            return None
        pid = d.picture_id
        tl0 = d.tl0picidx
        keyidx = d.keyidx
        if pid is not None:
            if pid != self._picture:
                self._begin_picture(d, pid)
            out_pid = self._picture_out
            if out_pid < 0:
                return None
            if not d.m:
                out_pid &= 0x7F
            unchanged = out_pid == pid
        else:
            # No picture ids: decide per packet; frames stay whole because all their packets carry one TID.
            tid = d.tid
            if not self._decide(0 if tid is None else tid, d.y, d.keyframe, d.s and d.partition_index == 0):
                return None
            self._note_forwarded(d)
            out_pid = -1
            unchanged = True
        if unchanged and (tl0 is None or not self._tl0_offset) and (keyidx is None or not self._keyidx_offset):
            return payload  # every field keeps its value: no copy
        buffer = bytearray(payload)
        if out_pid >= 0:
            offset = d.picture_id_offset
            if d.m:
                buffer[offset] = 0x80 | (out_pid >> 8)
                buffer[offset + 1] = out_pid & 0xFF
            else:
                buffer[offset] = out_pid
        if tl0 is not None:
            buffer[d.tl0picidx_offset] = (tl0 + self._tl0_offset) & 0xFF
        if keyidx is not None:
            offset = d.tk_offset
            buffer[offset] = (buffer[offset] & 0xE0) | ((keyidx + self._keyidx_offset) & 0x1F)
        return bytes(buffer)
