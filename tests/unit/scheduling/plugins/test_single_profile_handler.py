import pytest

from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.single_profile_handler import SingleProfileHandler
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.types import ProfileRunResult, SchedulingError
from tests.unit.scheduling.sched_fakes import pool, request, state


def test_runs_the_profile_once_then_stops() -> None:
    handler = SingleProfileHandler()
    profiles = {"default": SchedulerProfile("default", [], [], MaxScorePicker())}
    assert list(handler.pick_profiles(state(), request(), profiles, {})) == ["default"]
    done = {"default": ProfileRunResult(targets=pool(1))}
    assert not handler.pick_profiles(state(), request(), profiles, done)


def test_result_names_the_profile_as_primary() -> None:
    eps = pool(1)
    result = SingleProfileHandler().process_results(
        state(), request(), {"default": ProfileRunResult(targets=eps)}
    )
    assert result.primary_profile == "default"
    assert result.primary is not None and result.primary.targets == eps


def test_no_result_is_a_503() -> None:
    with pytest.raises(SchedulingError, match="no endpoint passed the filters") as info:
        SingleProfileHandler().process_results(state(), request(), {"default": None})
    assert info.value.status == 503


def test_rejects_more_than_one_profile() -> None:
    picker = MaxScorePicker()
    profiles = {n: SchedulerProfile(n, [], [], picker) for n in ("a", "b")}
    with pytest.raises(ValueError, match="exactly one scheduling profile, got 2"):
        SingleProfileHandler().validate_profiles(profiles)
