"""`by-label` filter: keep endpoints whose label has one of the accepted values.

Same type name and parameters as llm-d's filter (`label`, `validValues`, `allowsNoLabel`),
so llm-d EndpointPickerConfig files load unchanged. The role filters (`prefill-filter`,
`decode-filter`) are this filter with the `llm-d.ai/role` label and fixed value sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


class LabelFilter:
    """Shared implementation of the label-based filters (not registered itself)."""

    type_name: ClassVar[str]
    consumes: ClassVar[tuple[str, ...]] = ("labels",)

    def __init__(self, name: str, label: str, valid_values: Sequence[str], allows_no_label: bool) -> None:
        self.name = name
        self.label = label
        self.valid_values = frozenset(valid_values)
        self.allows_no_label = allows_no_label

    def accepts(self, endpoint: Endpoint) -> bool:
        value = endpoint.labels.get(self.label)
        if value is None:
            return self.allows_no_label
        return value in self.valid_values

    def filter(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        return [ep for ep in endpoints if self.accepts(ep)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}: {self.label} in {sorted(self.valid_values)}"
            f"{' or unset' if self.allows_no_label else ''})"
        )


@register_plugin
class ByLabelFilter(LabelFilter):
    type_name: ClassVar[str] = "by-label"

    @dataclass(slots=True)
    class Params:
        label: str = ""
        valid_values: tuple[str, ...] = ()
        allows_no_label: bool = False

        def validate(self) -> None:
            if not self.label:
                raise ValueError("'label' must be set")
            if not self.valid_values and not self.allows_no_label:
                raise ValueError("'validValues' is empty and 'allowsNoLabel' is false: nothing would pass")

    def __init__(self, *, name: str, params: ByLabelFilter.Params, ctx: PluginContext | None = None) -> None:
        super().__init__(name, params.label, params.valid_values, params.allows_no_label)
