"""`prefill-filter`: endpoints that may run the prefill leg of a disaggregated request.

Role values follow llm-d's current role filter: dedicated prefill pods and pods that do
prefill among other stages (`both`, `prefill-decode`, `encode-prefill`,
`encode-prefill-decode`). Pods without the `llm-d.ai/role` label are NOT prefillers: a
plain aggregated pool must never be picked for remote prefill by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import ROLE_LABEL
from epp.scheduling.plugins.by_role_filter import LabelFilter
from epp.scheduling.registry import PluginContext, register_plugin

PREFILL_ROLES = ("prefill", "both", "prefill-decode", "encode-prefill", "encode-prefill-decode")


@register_plugin
class PrefillRoleFilter(LabelFilter):
    type_name: ClassVar[str] = "prefill-filter"

    @dataclass(slots=True)
    class Params:
        pass

    def __init__(
        self, *, name: str = "prefill-filter", params: PrefillRoleFilter.Params | None = None,
        ctx: PluginContext | None = None,
    ) -> None:
        super().__init__(name, ROLE_LABEL, PREFILL_ROLES, allows_no_label=False)
