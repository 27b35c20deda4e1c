"""`decode-filter`: endpoints that may run the decode leg (and so be the destination).

Role values follow llm-d: `decode`, `both`, `prefill-decode`, `encode-prefill-decode`.
Pods without the `llm-d.ai/role` label pass (llm-d's allowsNoRole), so the same config
keeps working on an aggregated pool: every pod decodes and prefill is simply skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import ROLE_LABEL
from epp.scheduling.plugins.by_role_filter import LabelFilter
from epp.scheduling.registry import PluginContext, register_plugin

DECODE_ROLES = ("decode", "both", "prefill-decode", "encode-prefill-decode")


@register_plugin
class DecodeRoleFilter(LabelFilter):
    type_name: ClassVar[str] = "decode-filter"

    @dataclass(slots=True)
    class Params:
        pass

    def __init__(
        self, *, name: str = "decode-filter", params: DecodeRoleFilter.Params | None = None,
        ctx: PluginContext | None = None,
    ) -> None:
        super().__init__(name, ROLE_LABEL, DECODE_ROLES, allows_no_label=True)
