"""The request headers clients and gateways set for the EPP: one home for their names.

llm-d renamed them (`pkg/epp/metadata/consts.go`: `x-llm-d-*`, the older GIE names kept as
deprecated aliases that are read when the current name is absent). `canonicalize` folds every
alias into its current name once per request, when the EPP reads the headers, so the rest of
the EPP reads current names only and a request that sends both gets the current one, as in
llm-d's `GetLowerCaseHeaderValue`.
"""

from __future__ import annotations

from collections.abc import MutableMapping

FAIRNESS_ID = "x-llm-d-inference-fairness-id"  # flow control's flow (tenant) of a request
OBJECTIVE = "x-llm-d-inference-objective"  # the InferenceObjective a request names
SLO_TTFT = "x-llm-d-slo-ttft-ms"  # TTFT target, milliseconds
SLO_TPOT = "x-llm-d-slo-tpot-ms"  # TPOT target, milliseconds

# current name -> deprecated alias (GIE's names, and the first SLO-aware router's).
DEPRECATED_ALIASES: tuple[tuple[str, str], ...] = (
    (FAIRNESS_ID, "x-gateway-inference-fairness-id"),
    (OBJECTIVE, "x-gateway-inference-objective"),
    (SLO_TTFT, "x-slo-ttft-ms"),
    (SLO_TPOT, "x-slo-tpot-ms"),
)


def canonicalize(headers: MutableMapping[str, str]) -> None:
    """Move each deprecated alias's value to its current name (lower-case keys); the current
    name wins when both are present. Idempotent."""
    for current, alias in DEPRECATED_ALIASES:
        if alias in headers:
            value = headers.pop(alias)
            if current not in headers:
                headers[current] = value
