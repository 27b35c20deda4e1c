import logging
from collections.abc import Sequence
from typing import ClassVar

import pytest

from epp.datastore.endpoint import Endpoint
from epp.scheduling.interfaces import Filter, Picker, Scorer
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.queue_scorer import QueueScorer
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.types import CycleState, LLMRequest
from tests.unit.scheduling.sched_fakes import endpoint, pool, request, state


class FixedScorer:
    type_name: ClassVar[str] = "fixed"

    def __init__(self, name: str, scores: Sequence[float]) -> None:
        self.name = name
        self.scores = list(scores)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return self.scores[: len(endpoints)]


class DropAll:
    type_name: ClassVar[str] = "drop-all"
    name = "drop-all"

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return []


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int]] = []

    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, duration_ns: int
    ) -> None:
        self.calls.append((extension_point, plugin_type, plugin_name, duration_ns))


def test_plugins_match_the_protocols() -> None:
    assert isinstance(FixedScorer("s", []), Scorer)
    assert isinstance(DropAll(), Filter)
    assert isinstance(MaxScorePicker(), Picker)


def test_scores_are_weighted_and_summed_per_endpoint() -> None:
    eps = pool(3)
    profile = SchedulerProfile(
        "p",
        [],
        [(FixedScorer("a", [1.0, 0.0, 0.5]), 2.0), (FixedScorer("b", [0.0, 1.0, 0.5]), 1.0)],
        MaxScorePicker(),
    )
    result = profile.run(state(), request(), eps)
    assert result is not None
    assert result.targets == [eps[0]]
    assert result.scores == {eps[0].key: 2.0, eps[1].key: 1.0, eps[2].key: 1.5}


def test_zero_weight_scorer_has_no_effect() -> None:
    eps = pool(2)
    profile = SchedulerProfile(
        "p", [], [(FixedScorer("a", [0.0, 1.0]), 1.0), (FixedScorer("b", [1.0, 0.0]), 0.0)], MaxScorePicker()
    )
    result = profile.run(state(), request(), eps)
    assert result is not None and result.targets == [eps[1]]


def test_filters_leaving_nothing_give_none() -> None:
    profile = SchedulerProfile("p", [DropAll()], [(QueueScorer(), 1.0)], MaxScorePicker())
    assert profile.run(state(), request(), pool(2)) is None


def test_out_of_range_scores_are_clamped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    eps = pool(3)
    bad = FixedScorer("bad", [7.0, -3.0, float("nan")])
    profile = SchedulerProfile("p", [], [(bad, 1.0)], MaxScorePicker())
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            result = profile.run(state(), request(), eps)
            assert result is not None
            assert result.scores == {eps[0].key: 1.0, eps[1].key: 0.0, eps[2].key: 0.0}
    warnings = [r for r in caplog.records if "outside [0, 1]" in r.getMessage()]
    assert len(warnings) == 1 and "'bad'" in warnings[0].getMessage()


def test_wrong_number_of_scores_is_padded_and_logged() -> None:
    eps = pool(3)
    profile = SchedulerProfile("p", [], [(FixedScorer("short", [0.2]), 1.0)], MaxScorePicker())
    result = profile.run(state(), request(), eps)
    assert result is not None and result.scores[eps[1].key] == 0.0


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weights must be >= 0"):
        SchedulerProfile("p", [], [(QueueScorer(), -1.0)], MaxScorePicker())


def test_observer_gets_every_plugin_duration() -> None:
    observer = RecordingObserver()
    profile = SchedulerProfile(
        "p", [], [(QueueScorer(name="q"), 1.0)], MaxScorePicker(name="pick"), observer=observer
    )
    profile.run(state(), request(), [endpoint("a")])
    assert [(c[0], c[1], c[2]) for c in observer.calls] == [
        ("Scorer", "queue-scorer", "q"),
        ("Picker", "max-score-picker", "pick"),
    ]
    assert all(isinstance(c[3], int) and c[3] >= 0 for c in observer.calls)
