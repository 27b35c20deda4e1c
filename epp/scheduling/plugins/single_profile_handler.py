"""single-profile-handler: run the one configured profile once; its result is the decision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from epp.scheduling.plugins._parameterless import ParameterlessPlugin
from epp.scheduling.registry import register_plugin
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingError, SchedulingResult

if TYPE_CHECKING:
    from epp.scheduling.profile import SchedulerProfile

_NONE: Mapping[str, SchedulerProfile] = {}


@register_plugin
class SingleProfileHandler(ParameterlessPlugin):
    type_name: ClassVar[str] = "single-profile-handler"

    def validate_profiles(self, profiles: Mapping[str, SchedulerProfile]) -> None:
        if len(profiles) != 1:
            raise ValueError(
                f"needs exactly one scheduling profile, got {len(profiles)} "
                f"({', '.join(profiles) or 'none'}); use a multi-profile handler instead"
            )

    def pick_profiles(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfile]:
        return _NONE if results else profiles

    def process_results(
        self,
        state: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        name = next(iter(results), "")
        result = results.get(name)
        if result is None or not result.targets:
            raise SchedulingError(
                f"request {request.request_id}: no endpoint passed the filters of scheduling "
                f"profile {name!r}"
            )
        return SchedulingResult(
            profile_results=results if isinstance(results, dict) else dict(results),
            primary_profile=name,
        )
