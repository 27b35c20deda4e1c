"""The weighted choice: a 10% canary over 2,000 requests, stickiness, and the
consistent-hash property when weights move."""

from __future__ import annotations

import random

from epp.rollout.assign import random_index, sticky_index

N = 2000
CANARY_10 = (("stable", 90.0), ("canary", 10.0))
CANARY_20 = (("stable", 80.0), ("canary", 20.0))


def _share(picks: list[int], index: int) -> float:
    return sum(p == index for p in picks) / len(picks)


def test_sticky_ten_percent_canary_lands_within_three_points_over_2000_users() -> None:
    picks = [sticky_index(f"user-{i}", CANARY_10) for i in range(N)]
    assert abs(_share(picks, 1) - 0.10) <= 0.03


def test_random_ten_percent_canary_lands_within_three_points_over_2000_requests() -> None:
    for seed in range(5):  # several seeds: not one lucky draw
        rng = random.Random(seed)
        picks = [random_index(CANARY_10, rng) for _ in range(N)]
        assert abs(_share(picks, 1) - 0.10) <= 0.03


def test_a_user_always_gets_the_same_side() -> None:
    for i in range(200):
        first = sticky_index(f"user-{i}", CANARY_10)
        assert all(sticky_index(f"user-{i}", CANARY_10) == first for _ in range(3))


def test_moving_weight_from_10_to_20_percent_moves_only_the_needed_users() -> None:
    before = [sticky_index(f"user-{i}", CANARY_10) for i in range(N)]
    after = [sticky_index(f"user-{i}", CANARY_20) for i in range(N)]
    # Nobody leaves the canary, and only stable users join it ...
    assert all(a == 1 for b, a in zip(before, after, strict=True) if b == 1)
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    # ... about 10% of all users: the minimum a 10 -> 20 point change needs.
    assert abs(moved / N - 0.10) <= 0.03
    assert abs(_share(after, 1) - 0.20) <= 0.03


def test_three_targets_changing_one_weight_leaves_the_others_alone() -> None:
    a = (("x", 50.0), ("y", 30.0), ("z", 20.0))
    b = (("x", 50.0), ("y", 30.0), ("z", 40.0))  # only z grows
    for i in range(N):
        before, after = sticky_index(f"u{i}", a), sticky_index(f"u{i}", b)
        assert before == after or after == 2  # a key either stays or moves to z


def test_zero_weights() -> None:
    assert sticky_index("u", (("a", 0.0), ("b", 0.0))) == -1
    assert random_index((("a", 0.0),)) == -1
    assert sticky_index("u", (("a", 0.0), ("b", 5.0))) == 1
