"""VP9 payload descriptor (RFC 9628 §4.2) parsing and per-viewer rewriting across simulcast layer switches.

Each simulcast layer numbers its pictures on its own: picture id (7 or 15 bits) and, in non-flexible mode,
TL0PICIDX (8 bits, counts base-layer pictures). `Vp9Munger` keeps them continuous across `switch_to` and
filters temporal layers above a viewer's target.

Picture ids of dropped temporal-layer pictures:
- flexible mode (F=1): the gap is closed, and the P_DIFF octets (references as picture id differences,
  RFC 9628 §4.2) of later pictures are rewritten so they still name the same reference pictures;
- non-flexible mode (F=0): the gap is left open. References are then described by the scalability
  structure's picture group (RFC 9628 §4.2.1: P_DIFF per picture of the group, again as picture id
  differences), which this munger does not rewrite; receivers treat the missing ids as pictures of the
  dropped layer (their layer is implied by the group), which nothing forwarded refers to.

Per packet: `parse_descriptor(payload)`; per packet and viewer: `Vp9Munger.rewrite(payload, descriptor)`
-> the viewer's payload, or None (do not send; tell the RTP munger with `RtpMunger.drop(seq)`).
Spatial layers inside one stream (SVC) are all forwarded; only temporal layers are filtered.
"""

from __future__ import annotations

from simulcast.rtp_munger import SerialMunger

__all__ = ["Vp9Descriptor", "Vp9Munger", "parse_descriptor", "temporal_id", "MAX_TEMPORAL_ID"]

Payload = bytes | bytearray | memoryview

MAX_TEMPORAL_ID = 7  # TID is 3 bits (RFC 9628 §4.2)
_SEEN_MASK = 63
_UNSEEN = (-1,) * (_SEEN_MASK + 1)


class Vp9Descriptor:
    """One parsed RFC 9628 §4.2 payload descriptor.

        0 1 2 3 4 5 6 7
       +-+-+-+-+-+-+-+-+
       |I|P|L|F|B|E|V|Z|  I: picture id present, P: inter-picture predicted, L: layer indices present,
       +-+-+-+-+-+-+-+-+  F: flexible mode, B/E: start/end of a frame, V: scalability structure present,
  I:   |M| PICTURE ID  |  Z: not a reference for upper spatial layers. M=1: 15-bit picture id
       +-+-+-+-+-+-+-+-+
  M:   | EXTENDED PID  |
       +-+-+-+-+-+-+-+-+
  L:   | TID |U| SID |D|  temporal id, switching-up point, spatial id, inter-layer dependency
       +-+-+-+-+-+-+-+-+
       |   TL0PICIDX   |  non-flexible mode (F=0) only
       +-+-+-+-+-+-+-+-+
  P,F: | P_DIFF      |N|  flexible mode with P=1: 1 to 3 reference differences, N: another follows
       +-+-+-+-+-+-+-+-+
  V:   | SS .......... |  scalability structure, RFC 9628 §4.2.1

    Absent fields are None (flags are bools). `size` is the descriptor length (the VP9 frame data starts
    there); `spatial_layers` and `resolutions` ((width, height) per spatial layer, when the structure carries
    them) come from the scalability structure; `keyframe` marks the start of a picture a decoder can start
    from (B=1, P=0, spatial layer 0 without inter-layer dependency).
    """

    __slots__ = (
        "i",
        "p",
        "l",
        "f",
        "b",
        "e",
        "v",
        "z",
        "m",
        "picture_id",
        "tid",
        "u",
        "sid",
        "d",
        "tl0picidx",
        "p_diffs",
        "spatial_layers",
        "resolutions",
        "size",
        "keyframe",
        "picture_id_offset",
        "tl0picidx_offset",
        "p_diff_offset",
    )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Vp9Descriptor({fields})"


_new = object.__new__


def parse_descriptor(payload: Payload) -> Vp9Descriptor | None:
    """Parse the payload descriptor at the start of a VP9 RTP payload; None when truncated, malformed (a fourth
    P_DIFF) or followed by no frame data. Never raises."""
    try:
        size = len(payload)
        if size < 2:
            return None
        first = payload[0]
        pos = 1
        picture_id = tid = sid = tl0picidx = None
        m = u = d = False
        picture_id_offset = tl0picidx_offset = p_diff_offset = -1
        p_diffs: tuple[int, ...] = ()
        spatial_layers = 0
        resolutions: tuple[tuple[int, int], ...] = ()
        if first & 0x80:  # I
            octet = payload[pos]
            picture_id_offset = pos
            if octet & 0x80:  # M: 15-bit picture id
                if pos + 1 >= size:
                    return None
                picture_id = ((octet & 0x7F) << 8) | payload[pos + 1]
                m = True
                pos += 2
            else:
                picture_id = octet
                pos += 1
        if first & 0x20:  # L
            if pos >= size:
                return None
            octet = payload[pos]
            tid = octet >> 5
            u = bool(octet & 0x10)
            sid = (octet >> 1) & 0x07
            d = bool(octet & 0x01)
            pos += 1
            if not first & 0x10:  # non-flexible mode: TL0PICIDX
                if pos >= size:
                    return None
                tl0picidx = payload[pos]
                tl0picidx_offset = pos
                pos += 1
        if first & 0x50 == 0x50:  # F and P: P_DIFF octets
            p_diff_offset = pos
            for _ in range(3):
                if pos >= size:
                    return None
                octet = payload[pos]
                pos += 1
                p_diffs += (octet >> 1,)
                if not octet & 0x01:
                    break
            else:
                return None  # RFC 9628 §4.2: at most 3 reference indices
        if first & 0x02:  # V: scalability structure, RFC 9628 §4.2.1 |N_S|Y|G|-|-|-|
            if pos >= size:
                return None
            structure = payload[pos]
            pos += 1
            spatial_layers = (structure >> 5) + 1
            if structure & 0x10:  # Y: 16-bit WIDTH and HEIGHT per spatial layer
                if pos + 4 * spatial_layers > size:
                    return None
                resolutions = tuple(
                    (
                        (payload[pos + 4 * n] << 8) | payload[pos + 4 * n + 1],
                        (payload[pos + 4 * n + 2] << 8) | payload[pos + 4 * n + 3],
                    )
                    for n in range(spatial_layers)
                )
                pos += 4 * spatial_layers
            if structure & 0x08:  # G: N_G pictures |TID|U| R |-|-| with R P_DIFF octets each
                if pos >= size:
                    return None
                pictures = payload[pos]
                pos += 1
                for _ in range(pictures):
                    if pos >= size:
                        return None
                    pos += 1 + ((payload[pos] >> 2) & 0x03)
        if pos >= size:
            return None  # no VP9 frame data
    except (TypeError, IndexError, ValueError):
        return None
    desc = _new(Vp9Descriptor)
    desc.i = bool(first & 0x80)
    desc.p = bool(first & 0x40)
    desc.l = bool(first & 0x20)
    desc.f = bool(first & 0x10)
    desc.b = bool(first & 0x08)
    desc.e = bool(first & 0x04)
    desc.v = bool(first & 0x02)
    desc.z = bool(first & 0x01)
    desc.m = m
    desc.picture_id = picture_id
    desc.tid = tid
    desc.u = u
    desc.sid = sid
    desc.d = d
    desc.tl0picidx = tl0picidx
    desc.p_diffs = p_diffs
    desc.spatial_layers = spatial_layers
    desc.resolutions = resolutions
    desc.size = pos
    desc.keyframe = first & 0x48 == 0x08 and not sid and not d
    desc.picture_id_offset = picture_id_offset
    desc.tl0picidx_offset = tl0picidx_offset
    desc.p_diff_offset = p_diff_offset
    return desc


def temporal_id(descriptor: Vp9Descriptor) -> int:
    """The picture's temporal layer: TID when layer indices are present (L=1), else 0."""
    tid = descriptor.tid
    return 0 if tid is None else tid


class Vp9Munger:
    """One viewer's VP9 picture id and TL0PICIDX, continuous across simulcast layer switches, and its temporal
    layer filter.

    - `switch_to(descriptor)` with the descriptor of the new layer's key picture start (also the first packet
      ever forwarded): picture id continues at last + 1 (the first switch keeps the publisher's), TL0PICIDX
      at last + 1 (the key picture is a new base-layer picture).
    - `rewrite(payload, descriptor)`: the payload with the viewer's values in place (same length, same 7/15-bit
      width; the payload object itself when nothing changes), or None when it must not be sent: its picture
      is above the temporal target, older than the switch point, or refers to a picture that was not sent.
    - `target_temporal`: the highest TID to forward. Lowering applies from the next picture; raising waits
      for a forwarded picture with the switching-up bit U (RFC 9628 §4.2: later pictures of higher temporal
      layers refer to nothing before it in those layers) or for a key picture.
    """

    __slots__ = (
        "target_temporal",
        "_pids",
        "_started",
        "_ext",
        "_picture",
        "_picture_ext",
        "_picture_out",
        "_seen_id",
        "_seen_out",
        "_temporal",
        "_tl0_offset",
        "_last_tl0",
        "_has_tl0",
    )

    def __init__(self, target_temporal: int = MAX_TEMPORAL_ID) -> None:
        self.target_temporal = target_temporal
        self._pids = SerialMunger(15)
        self._started = False
        self._ext = 0  # newest incoming picture id, 7-bit ids unwrapped to 15 bits
        self._picture = -1  # incoming picture id decided last, its unwrapped value and outgoing id (-1: dropped)
        self._picture_ext = -1
        self._picture_out = -1
        self._seen_id = [-1] * (_SEEN_MASK + 1)  # recent decisions by unwrapped incoming picture id
        self._seen_out = [-1] * (_SEEN_MASK + 1)
        self._temporal = target_temporal  # highest TID forwarded now (moves towards target_temporal)
        self._tl0_offset = 0
        self._last_tl0 = 0
        self._has_tl0 = False

    @property
    def temporal(self) -> int:
        return self._temporal

    def switch_to(self, descriptor: Vp9Descriptor, layer: int = 0) -> None:
        desc = descriptor
        if desc.picture_id is not None:
            self._ext = desc.picture_id
            self._pids.switch_to(desc.picture_id, layer)
        if desc.tl0picidx is not None:
            self._tl0_offset = (self._last_tl0 + 1 - desc.tl0picidx) & 0xFF if self._has_tl0 else 0
            self._last_tl0 = (desc.tl0picidx + self._tl0_offset) & 0xFF
            self._has_tl0 = True
        self._temporal = self.target_temporal
        self._picture = -1
        self._seen_id[:] = _UNSEEN
        self._started = True

    def _decide(self, desc: Vp9Descriptor, newest: bool) -> bool:
        tid = desc.tid
        if tid is None:
            tid = 0
        current = self._temporal
        if newest:
            target = self.target_temporal
            if current > target or desc.keyframe:
                current = self._temporal = target
            elif tid <= current and desc.u:
                self._temporal = target  # RFC 9628 §4.2 U: higher layers may start after this picture
        return tid <= current

    def _begin_picture(self, desc: Vp9Descriptor, pid: int) -> None:
        pids = self._pids
        if desc.m:
            ext = pid
        else:  # unwrap a 7-bit id against the newest one so 15-bit serial arithmetic works
            delta = (pid - self._ext) & 0x7F
            ext = (self._ext + (delta - 128 if delta >= 64 else delta)) & 0x7FFF
        self._picture = pid
        self._picture_ext = ext
        if not pids.started:  # the switch point carried no picture id: ids start here
            pids.switch_to(ext)
        slot = ext & _SEEN_MASK
        if self._seen_id[slot] == ext:
            self._picture_out = self._seen_out[slot]
            return
        newest = pids.is_newest(ext)
        if newest:
            self._ext = ext
        forward = self._decide(desc, newest)
        if forward and desc.p_diffs:
            # Flexible mode: a picture whose reference was not sent cannot be decoded by the viewer.
            lookup = pids.lookup
            forward = all(lookup((ext - diff) & 0x7FFF) is not None for diff in desc.p_diffs)
        if forward:
            out = pids.map(ext)
            if out is None:
                out = -1
            elif newest and desc.tl0picidx is not None:
                self._note_tl0(desc.tl0picidx)
        else:
            if desc.f:
                pids.drop(ext)  # flexible mode: close the gap (later P_DIFFs are rewritten to match)
            out = -1
        self._picture_out = out
        self._seen_id[slot] = ext
        self._seen_out[slot] = out

    def _note_tl0(self, tl0picidx: int) -> None:
        out = (tl0picidx + self._tl0_offset) & 0xFF
        if 0 < (out - self._last_tl0) & 0xFF < 0x80 or not self._has_tl0:
            self._last_tl0 = out
            self._has_tl0 = True

    def rewrite(self, payload: Payload, descriptor: Vp9Descriptor) -> Payload | None:
        desc = descriptor
        if not self._started:
            return None
        pid = desc.picture_id
        tl0 = desc.tl0picidx
        if pid is not None:
            if pid != self._picture:
                self._begin_picture(desc, pid)
            out_pid = self._picture_out
            if out_pid < 0:
                return None
            if not desc.m:
                out_pid &= 0x7F
            unchanged = out_pid == pid
        else:
            # No picture ids: decide per packet; pictures stay whole because all their packets carry one TID.
            if not self._decide(desc, desc.b and not desc.sid):
                return None
            if tl0 is not None:
                self._note_tl0(tl0)
            out_pid = -1
            unchanged = True
        new_diffs = desc.p_diffs
        if new_diffs and pid is not None:
            new_diffs = self._reference_diffs(new_diffs)
            if new_diffs is None:
                return None  # a reference was not sent: the viewer could not decode this picture
            if new_diffs == desc.p_diffs:
                new_diffs = ()
        if unchanged and (tl0 is None or not self._tl0_offset) and not new_diffs:
            return payload  # every field keeps its value: no copy
        buffer = bytearray(payload)
        if out_pid >= 0:
            offset = desc.picture_id_offset
            if desc.m:
                buffer[offset] = 0x80 | (out_pid >> 8)
                buffer[offset + 1] = out_pid & 0xFF
            else:
                buffer[offset] = out_pid
        if tl0 is not None:
            buffer[desc.tl0picidx_offset] = (tl0 + self._tl0_offset) & 0xFF
        if new_diffs:
            offset = desc.p_diff_offset
            for n, diff in enumerate(new_diffs):
                buffer[offset + n] = (diff << 1) | (buffer[offset + n] & 0x01)
        return bytes(buffer)

    def _reference_diffs(self, p_diffs: tuple[int, ...]) -> tuple[int, ...] | None:
        """RFC 9628 §4.2 flexible mode: reference = picture id - P_DIFF. The P_DIFFs that name the same
        reference pictures in the viewer's picture ids (smaller when dropped pictures' ids were reused)."""
        ext = self._picture_ext
        out = self._picture_out
        lookup = self._pids.lookup
        result: tuple[int, ...] = ()
        for diff in p_diffs:
            ref_out = lookup((ext - diff) & 0x7FFF)
            if ref_out is None:
                return None
            new_diff = (out - ref_out) & 0x7FFF
            if not 0 < new_diff <= diff:
                return None
            result += (new_diff,)
        return result
