import random
from collections import Counter

import pytest

from epp.config.loader import ConfigError
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.registry import parse_params
from tests.unit.scheduling.sched_fakes import pool, request, scored, state


def test_picks_the_highest_score() -> None:
    eps = pool(4)
    result = MaxScorePicker().pick(state(), request(), scored(eps, [0.1, 0.9, 0.5, 0.3]))
    assert result.targets == [eps[1]]


def test_ties_are_broken_randomly_over_all_tied_endpoints() -> None:
    eps = pool(4)
    picker = MaxScorePicker(rng=random.Random(7))
    counts = Counter(
        picker.pick(state(), request(), scored(eps, [0.9, 0.2, 0.9, 0.9])).targets[0].name
        for _ in range(600)
    )
    assert set(counts) == {"pod-0", "pod-2", "pod-3"}
    assert min(counts.values()) > 120  # each ~200 of 600; loose bound, seeded RNG


def test_max_num_of_endpoints_returns_ordered_top_n() -> None:
    eps = pool(5)
    picker = MaxScorePicker(params=MaxScorePicker.Params(max_num_of_endpoints=3))
    result = picker.pick(state(), request(), scored(eps, [0.1, 0.9, 0.5, 0.7, 0.3]))
    assert result.targets == [eps[1], eps[3], eps[2]]


def test_max_num_of_endpoints_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="'maxNumOfEndpoints' must be >= 1, got 0"):
        parse_params(MaxScorePicker.Params, {"maxNumOfEndpoints": 0}, "x.yaml: plugin 'p' (max-score-picker)")


def test_empty_input_gives_no_target() -> None:
    assert MaxScorePicker().pick(state(), request(), []).targets == []
