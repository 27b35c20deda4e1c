import random
from collections import Counter

from epp.scheduling.plugins.weighted_random_picker import WeightedRandomPicker
from tests.unit.scheduling.sched_fakes import pool, request, scored, state


def test_probability_follows_score_and_zero_is_never_picked() -> None:
    eps = pool(3)
    picker = WeightedRandomPicker(rng=random.Random(3))
    counts = Counter(
        picker.pick(state(), request(), scored(eps, [3.0, 1.0, 0.0])).targets[0].name
        for _ in range(2000)
    )
    assert "pod-2" not in counts
    assert counts["pod-0"] > 2 * counts["pod-1"]  # expected 3:1


def test_all_zero_scores_fall_back_to_uniform() -> None:
    eps = pool(3)
    picker = WeightedRandomPicker(rng=random.Random(4))
    counts = Counter(
        picker.pick(state(), request(), scored(eps, [0.0, 0.0, 0.0])).targets[0].name for _ in range(300)
    )
    assert set(counts) == {"pod-0", "pod-1", "pod-2"}


def test_top_n_are_distinct() -> None:
    eps = pool(4)
    picker = WeightedRandomPicker(params=WeightedRandomPicker.Params(max_num_of_endpoints=3))
    targets = picker.pick(state(), request(), scored(eps, [1.0, 2.0, 3.0, 4.0])).targets
    assert len(targets) == 3 and len(set(map(id, targets))) == 3
