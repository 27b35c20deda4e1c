"""`prefill-header-handler`: llm-d's PreRequest plugin that names the prefill pod.

The pd-profile-handler already puts `x-prefiller-host-port` into SchedulingResult.headers;
this plugin exists so llm-d configs that list it load and behave the same, and so a
custom profile handler can rely on it. It only fills the header when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.plugins.pd_profile_handler import PREFILLER_HEADER
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult


@register_plugin
class PrefillHeaderHandler:
    type_name: ClassVar[str] = "prefill-header-handler"

    @dataclass(slots=True)
    class Params:
        prefill_profile: str = "prefill"

        def validate(self) -> None:
            if not self.prefill_profile:
                raise ValueError("'prefillProfile' must be non-empty")

    def __init__(
        self, *, name: str, params: PrefillHeaderHandler.Params, ctx: PluginContext | None = None
    ) -> None:
        self.name = name
        self.prefill_profile = params.prefill_profile

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if PREFILLER_HEADER in result.headers:
            return
        prefill = result.profile_results.get(self.prefill_profile)
        if prefill is None or not prefill.targets:
            return
        primary = result.primary
        decode_target = primary.targets[0] if primary is not None and primary.targets else None
        target = prefill.targets[0]
        if decode_target is not None and target.hostport == decode_target.hostport:
            return
        result.headers[PREFILLER_HEADER] = target.hostport
