"""Simulcast offers for negotiation tests, derived from the captured Chromium offers (../shared/fixtures/sdp).

OBS 32.1+ is not available here; `obs_shaped_offer` rewrites the captured Chromium H.264 simulcast offer into the
shape OBS sends (documented in ../shared/fixtures/sdp/README.md): rids "0".."N-1" with rid "0" the full
resolution, mid on extmap 1, rid on extmap 2, no candidates at all.
"""

from __future__ import annotations

import re

from conftest import FIXTURES_SDP


def fixture(name: str) -> str:
    return (FIXTURES_SDP / name).read_bytes().decode()  # keep the CRLF line ends as captured


def obs_shaped_offer(layers: int = 3) -> str:
    text = fixture("chromium156-simulcast-h264.sdp")
    text = re.sub(r"a=candidate:[^\r\n]*\r*\n", "", text)  # the capture's line ends are \r\r\n
    # Chromium's q/h/f are lowest first; OBS names the full resolution "0".
    names = {"q": "2", "h": "1", "f": "0"}
    for old, new in names.items():
        text = text.replace(f"a=rid:{old} send", f"a=rid:{new} send")
    text = text.replace("a=simulcast:send q;h;f", "a=simulcast:send " + ";".join(str(i) for i in range(layers)))
    if layers < 3:
        for i in range(layers, 3):
            text = re.sub(rf"a=rid:{i} send\r*\n", "", text)
    # mid on extmap 1, rid on extmap 2 (swapping with the ids Chromium used for them).
    swaps = {"1": "90", "2": "91", "9": "1", "10": "2"}
    text = re.sub(r"a=extmap:(\d+) ", lambda m: f"a=extmap:{swaps.get(m.group(1), m.group(1))} ", text)
    return text
