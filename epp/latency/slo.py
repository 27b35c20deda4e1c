"""Per-request latency targets: TTFT and TPOT in milliseconds.

Header names follow llm-d (llm-d/llm-d-router pkg/epp/metadata/consts.go, epp/headers.py):
the current `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms`, and the deprecated `x-slo-ttft-ms` /
`x-slo-tpot-ms` that GIE's first SLO-aware router used and llm-d still accepts. A header
wins over the default of the request's InferenceObjective (the objective named by
`x-llm-d-inference-objective` or its alias, else the model name), configured on the
predicted-latency-producer plugin (`sloDefaults`): the InferenceObjective API has no SLO
field, so the defaults live in the EndpointPickerConfig.

A request without any target is routed as without the latency plugins. A header that is not
a positive number is a client error (400), never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from epp.headers import DEPRECATED_ALIASES, OBJECTIVE, SLO_TPOT, SLO_TTFT
from epp.scheduling.types import LLMRequest, SchedulingError

_ALIAS = dict(DEPRECATED_ALIASES)  # named in errors: the client may have sent the alias
MAX_SLO_MS = 24 * 3600 * 1000.0  # a day: anything larger is a unit mistake


@dataclass(frozen=True, slots=True)
class SLO:
    """Targets in seconds; None = no target on that dimension."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def empty(self) -> bool:
        return self.ttft_s is None and self.tpot_s is None


NO_SLO = SLO()


@dataclass(frozen=True, slots=True)
class ObjectiveSLO:
    """One entry of the producer's `sloDefaults` parameter (milliseconds)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None


def _header_ms(headers: Mapping[str, str], name: str) -> float | None:
    """The header's value (headers canonicalized at entry, epp/headers.py), or None."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (0.0 < value <= MAX_SLO_MS):  # also rejects NaN and inf
        raise SchedulingError(
            f"header {name!r} (or its alias {_ALIAS[name]!r}) must be a positive number of "
            f"milliseconds (at most {MAX_SLO_MS:.0f}), got {raw[:40]!r}", status=400, code="invalid_slo_header")
    return value


def request_slo(request: LLMRequest, defaults: Mapping[str, ObjectiveSLO]) -> SLO:
    """The request's targets: headers first, then its objective's defaults."""
    headers = request.headers
    ttft = _header_ms(headers, SLO_TTFT)
    tpot = _header_ms(headers, SLO_TPOT)
    if (ttft is None or tpot is None) and defaults:
        objective = headers.get(OBJECTIVE)
        default = defaults.get(objective) if objective else None
        if default is None:
            default = defaults.get(request.model)
        if default is not None:
            ttft = ttft if ttft is not None else default.ttft_ms
            tpot = tpot if tpot is not None else default.tpot_ms
    if ttft is None and tpot is None:
        return NO_SLO
    return SLO(None if ttft is None else ttft / 1000.0, None if tpot is None else tpot / 1000.0)
