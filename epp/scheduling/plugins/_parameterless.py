"""Base of the plugins that take no parameters (a leading underscore keeps this module out
of plugin auto-registration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from epp.scheduling.registry import PluginContext


@dataclass(slots=True)
class NoParams:
    pass


class ParameterlessPlugin:
    type_name: ClassVar[str]
    Params: ClassVar[type[NoParams]] = NoParams

    def __init__(self, *, name: str | None = None, params: NoParams | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name or self.type_name
