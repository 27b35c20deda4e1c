"""What one scheduling profile did, step by step (filled only when a decision is explained).

`SchedulerProfile.run_traced` fills a ProfileTrace; the plain `run` never builds one, so the
hot path pays nothing for explainability. epp/admin/explain.py turns the traces of a cycle
into the admin API's Decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from epp.datastore.endpoint import Endpoint
from epp.scheduling.interfaces import Filter, Picker, Scorer
from epp.scheduling.types import ProfileRunResult


@dataclass(slots=True)
class FilterStep:
    filter: Filter
    dropped: list[Endpoint]  # in input order


@dataclass(slots=True)
class ScorerStep:
    scorer: Scorer
    weight: float
    scores: list[float]  # one per survivor, in [0, 1] (after clamping a misbehaving scorer)


@dataclass(slots=True)
class ProfileTrace:
    name: str
    candidates: list[Endpoint] = field(default_factory=list)
    filters: list[FilterStep] = field(default_factory=list)
    survivors: list[Endpoint] = field(default_factory=list)  # what the scorers saw
    scorers: list[ScorerStep] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)  # weighted sum per survivor
    picker: Picker | None = None
    result: ProfileRunResult | None = None
    empty_reason: str = ""
