"""soft-reflective-ceiling-policy: lower priority bands are gated more as the pool's
saturation rises (llm-d-router pkg/epp/framework/plugins/flowcontrol/usagelimits/
softreflectiveceiling; no parameters, same formula and tick).

With N bands ordered highest first and the current saturation s, band i gets the reflective
ceiling r_i = 1 - i * s / (N - 1). The top band's ceiling is always 1.0 (the controller still
stops everything at s >= 1.0). A lower band with s < r_i is open (1.0); at s >= 1.0 it is
closed (0.0); otherwise it is gated and opens on one dispatch cycle out of
period = round(s / (1 - s)), so its dispatch rate falls like (1 - s) / s as s rises.

Every gated band reads the same policy-wide tick, which advances once per call in the
alternating regime (s >= 1 - s, i.e. the lowest band gated, and s < 1): on a given cycle
either all gated bands are open or all are closed, which the dispatch loop needs since it
stops at the first blocked band (per-band counters drift out of phase and starve the lower
band; upstream's regression test). Below that regime the policy is a pure function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from epp.scheduling.plugins._parameterless import NoParams, ParameterlessPlugin
from epp.scheduling.registry import PluginContext, register_plugin


@register_plugin
class SoftReflectiveCeiling(ParameterlessPlugin):
    type_name: ClassVar[str] = "soft-reflective-ceiling-policy"

    def __init__(self, *, name: str | None = None, params: NoParams | None = None,
                 ctx: PluginContext | None = None) -> None:
        super().__init__(name=name, params=params, ctx=ctx)
        self.tick = 0

    def ceilings_at(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        n = len(priorities)
        if n <= 1:
            return [1.0] * n
        is_open = False
        if 1.0 - saturation <= saturation < 1.0:  # the lowest band's reflective ceiling is reached
            # Go's math.Round (half away from zero), not Python's round (half to even); the
            # 1e-9 keeps the period finite as s approaches 1 (upstream's guard).
            period = max(1, math.floor(saturation / (1.0 - saturation + 1e-9) + 0.5))
            self.tick += 1
            is_open = self.tick % period == 0
        gated = 1.0 if is_open else 0.0
        out = [1.0]
        for i in range(1, n):
            reflective = 1.0 - i * saturation / (n - 1)
            if saturation < reflective:
                out.append(1.0)
            elif saturation >= 1.0:
                out.append(0.0)
            else:
                out.append(gated)
        return out
