import random
from collections import Counter

from epp.scheduling.plugins.random_picker import RandomPicker
from tests.unit.scheduling.sched_fakes import pool, request, scored, state


def test_ignores_scores_and_covers_every_endpoint() -> None:
    eps = pool(3)
    picker = RandomPicker(rng=random.Random(1))
    counts = Counter(
        picker.pick(state(), request(), scored(eps, [1.0, 0.0, 0.0])).targets[0].name for _ in range(300)
    )
    assert set(counts) == {"pod-0", "pod-1", "pod-2"}


def test_returns_distinct_endpoints_up_to_max() -> None:
    eps = pool(3)
    picker = RandomPicker(params=RandomPicker.Params(max_num_of_endpoints=5), rng=random.Random(2))
    targets = picker.pick(state(), request(), scored(eps, [0.0, 0.0, 0.0])).targets
    assert sorted(t.name for t in targets) == ["pod-0", "pod-1", "pod-2"]
