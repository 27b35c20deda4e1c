"""Score normalisation shared by the load scorers (not a plugin: the underscore keeps it out
of auto-registration)."""

from __future__ import annotations

from collections.abc import Sequence


def lower_is_better(loads: Sequence[float]) -> list[float]:
    """Min-max normalise so the least loaded endpoint scores 1 and the most loaded 0, as GIE's
    queue scorer does; equal loads all score 1."""
    low = min(loads)
    high = max(loads)
    span = high - low
    if span <= 0:
        return [1.0] * len(loads)
    # (high - load) with the real maximum: low + span can round below it, which gave the
    # most loaded endpoint -2e-16 and the profile's out-of-range warning.
    return [(high - load) / span for load in loads]
