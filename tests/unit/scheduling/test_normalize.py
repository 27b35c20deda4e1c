"""lower_is_better keeps every score inside [0, 1], whatever the float rounding of the loads."""

from __future__ import annotations

import random

from epp.scheduling.plugins._normalize import lower_is_better


def test_scores_stay_in_range_with_awkward_floats() -> None:
    # The loads a fading prefill estimate produces: the old `low + span` rounded below the
    # maximum and scored it -2.1e-16.
    loads = [0.9827147984986508 * 1e3, 0.33932453578504895 * 1e3, 1.7620955823448143e-13, 1e3 / 3]
    scores = lower_is_better(loads)
    assert min(scores) == 0.0 and max(scores) == 1.0
    rng = random.Random(9)
    for _ in range(2000):
        loads = [rng.random() * 10 ** rng.randrange(-3, 6) for _ in range(rng.randrange(2, 9))]
        scores = lower_is_better(loads)
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert scores[loads.index(max(loads))] == 0.0 and scores[loads.index(min(loads))] == 1.0
    assert lower_is_better([3.0, 3.0]) == [1.0, 1.0]
