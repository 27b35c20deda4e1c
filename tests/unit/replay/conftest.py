"""Constructed traces for the replay tests."""

from __future__ import annotations

import random

from epp.replay.trace import PodInfo, Trace, TraceHeader, TraceRecord
from epp.scheduling.plugins.prefix_cache_scorer import prefix_block_hashes

PREFIX_CONFIG = """\
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 0
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
"""


def shared_prefix_trace(groups: int = 12, requests: int = 240, rate: float = 30.0, pods: int = 4,
                        prefix_chars: int = 6000, seed: int = 5) -> Trace:
    """Requests of `groups` conversations, each sharing a long system prompt, Poisson arrivals;
    the prefix hashes are computed as the prefix-cache scorer computes them."""
    rng = random.Random(seed)
    records = []
    t = 1_700_000_000.0
    for i in range(requests):
        g = rng.randrange(groups)
        t += rng.expovariate(rate)
        text = f"group {g}: " + "s" * prefix_chars + f" question {i} " + "u" * rng.randrange(50, 400)
        records.append(TraceRecord(time=t, request_id=f"r{i}", model="m", target_model="m", max_tokens=8,
                                   prompt_chars=len(text), prefix_hashes=prefix_block_hashes(text, "m", 64, 256),
                                   prefix_block_size=64))
    header = TraceHeader(config_source="base.yaml", config_text=PREFIX_CONFIG,
                         pods=[PodInfo(key=f"default/pod{i}", hostport=f"10.0.0.{i + 1}:8000") for i in range(pods)])
    return Trace(header, records)
