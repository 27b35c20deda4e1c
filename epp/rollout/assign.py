"""Weighted target choice: sticky (consistent hash of a key) or random.

Sticky choice is weighted rendezvous hashing: every target draws u = H(key, target) in (0, 1)
and the target with the smallest -ln(u) / weight wins. Each target's draw is an exponential
variable of rate `weight`, so a target wins for weight / sum(weights) of all keys, and a key's
draws do not depend on the other targets' weights. Hence raising one target's weight (10% ->
20%) only moves keys *to* that target, and lowering it only moves keys *away* from it: no
user flips between two targets whose weights did not change (tests/unit/rollout/test_assign.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from hashlib import blake2b

_TWO_64 = float(1 << 64)


def unit_hash(key: str) -> float:
    """A stable uniform draw in (0, 1) from a string (blake2b, 64 bits)."""
    h = int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "little")
    return (h + 0.5) / _TWO_64


def sticky_index(key: str, weights: Sequence[tuple[str, float]]) -> int:
    """Index of the target `key` sticks to (weighted rendezvous); -1 if no weight is > 0."""
    best, best_cost = -1, math.inf
    for i, (name, weight) in enumerate(weights):
        if weight <= 0:
            continue
        cost = -math.log(unit_hash(f"{key}\0{name}")) / weight
        if cost < best_cost:
            best, best_cost = i, cost
    return best


def random_index(weights: Sequence[tuple[str, float]], rng: random.Random | None = None) -> int:
    """Index drawn with probability weight / total; -1 if no weight is > 0."""
    total = sum(w for _, w in weights if w > 0)
    if total <= 0:
        return -1
    r = (rng.random() if rng is not None else random.random()) * total
    last = -1
    for i, (_, weight) in enumerate(weights):
        if weight <= 0:
            continue
        last = i
        r -= weight
        if r < 0:
            return i
    return last
