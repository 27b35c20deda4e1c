"""What the pickers share: the maxNumOfEndpoints parameter and construction.

(A leading underscore keeps this module out of plugin auto-registration.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.registry import PluginContext


@dataclass(slots=True)
class PickerParams:
    max_num_of_endpoints: int = 1

    def validate(self) -> None:
        if self.max_num_of_endpoints < 1:
            raise ValueError(f"parameter 'maxNumOfEndpoints' must be >= 1, got {self.max_num_of_endpoints}")


class PickerBase:
    type_name: ClassVar[str]
    Params: ClassVar[type[PickerParams]] = PickerParams

    def __init__(self, *, name: str | None = None, params: PickerParams | None = None,
                 ctx: PluginContext | None = None, rng: random.Random | None = None) -> None:
        self.name = name or self.type_name
        self.params = params if params is not None else PickerParams()
        self.rng = rng if rng is not None else random.Random()
