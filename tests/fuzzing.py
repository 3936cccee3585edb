"""Damage for the parsers' fuzz tests: random bit flips and truncations of a well-formed seed."""

from __future__ import annotations

import random


def damage(rng: random.Random, seed: bytes, edits: int) -> bytearray:
    """`seed` after `edits` edits, each a flipped bit (70%) or a cut at a random length."""
    data = bytearray(seed)
    for _ in range(edits):
        if data and rng.random() < 0.7:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data) + 1) :]
    return data
