"""Explain agrees with the real decision for the same state, and changes nothing.

Each step explains a request (dry run) and then sends the very same request through the real
ext_proc handler: the destination must be the same. Between steps the real decisions change
the state as production would (prefix LRUs fill, random tie-breaks advance) and the pods'
scraped metrics are moved by a fixed schedule, so the check covers prefix affinity, load
and exact ties (several identical idle pods: the dry run must show the tie-break the real
decision will make, which it can only do if it left the picker's random state alone).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from epp.admin.proto import pb
from epp.scheduling.plugins.pd_metrics import PD_METRICS_SERVICE
from tests.unit.admin.harness import PD_CONFIG, Rig, destination, explain, rig, route

CONVERSATIONS = [
    "You are a meticulous travel agent. Plan every trip day by day with costs. " * 8,
    "System: answer as a senior SRE. Explain causes before fixes, cite metrics. " * 8,
    "Translate the following legal contract into plain English, clause by clause. " * 8,
]


def _state(r: Rig, now: float) -> dict[str, Any]:
    """Everything a decision may change: in-flight charges, prefix LRUs, random states."""
    sched = r.scheduler
    out: dict[str, Any] = {
        "inflight": {ep.key: (ep.inflight, ep.inflight_tokens) for ep in r.datastore.endpoints()},
        "recent": {ep.key: r.tracker.recent_prompt_tokens(ep, now=now) for ep in r.datastore.endpoints()},
        "rng": [p.picker.rng.getstate() for p in sched.profiles.values()],
        "published": r.handler.decisions.published,
        "decisions": r.stats.total,
    }
    for profile in sched.profiles.values():
        for scorer, _ in profile.scorers:
            if hasattr(scorer, "cached_blocks"):
                out[f"lru/{scorer.name}"] = {ep.key: scorer.cached_blocks(ep.key) for ep in r.datastore.endpoints()}
    pd = r.ctx.services.get(PD_METRICS_SERVICE)
    if pd is not None:
        out["pd"] = [(m.name, s.labels, s.value) for metric in pd.collect() for s in metric.samples
                     for m in [metric] if not s.name.endswith("_created")]
    return out


def _requests(n: int, repeat: int = 1) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        if i % 4 == 3:  # a fresh prompt now and then: no affinity anywhere, load decides
            prompt = f"unrelated question {i}: what is {i} squared?"
        else:
            prompt = CONVERSATIONS[i % len(CONVERSATIONS)] * repeat + f" turn {i}"
        out.append({"model": "m", "prompt": prompt, "max_tokens": 16 + i})
    return out


async def _agree(r: Rig, steps: int, move_metrics: bool, repeat: int = 1) -> list[Any]:
    decisions = []
    for i, body in enumerate(_requests(steps, repeat)):
        if move_metrics:
            for j, ep in enumerate(r.datastore.endpoints()):
                ep.metrics.waiting_queue_size = (i * (j + 1)) % 5
                ep.metrics.kv_cache_usage = ((i + 2 * j) % 7) / 10
        now = time.monotonic()
        before = _state(r, now)
        d = explain(r, body)
        assert _state(r, now) == before, f"step {i}: Explain changed state"
        assert not d.error, d.error
        real, headers = destination(await route(r, body))
        assert d.target_hostport == real, f"step {i}: explain said {d.target_hostport}, real decision {real}"
        assert d.upstream_headers.get("x-prefiller-host-port") == headers.get("x-prefiller-host-port")
        decisions.append(d)
    return decisions


async def test_default_config_explain_matches_real_decisions() -> None:
    r = rig(pods=4)
    decisions = await _agree(r, steps=24, move_metrics=True)
    # The check was not vacuous: prefix affinity mattered, and more than one pod was chosen.
    assert len({d.target for d in decisions}) > 1
    assert any(e.prefix_match_blocks > 0 for d in decisions for p in d.profiles for e in p.endpoints)


SCRAPED_ONLY = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: max-score-picker
"""


async def test_ties_explain_shows_the_tie_break_the_real_decision_makes(tmp_path: Path) -> None:
    config = tmp_path / "scraped-only.yaml"
    config.write_text(SCRAPED_ONLY)
    r = rig(config, pods=4)
    # Identical pods scored on scraped metrics only (which no decision moves): every decision
    # is a 4-way tie.
    picks = []
    for i in range(16):
        body = {"model": "m", "prompt": f"tie {i}", "max_tokens": 1}
        d = explain(r, body)
        assert d.profiles[0].ties == 4
        real, _ = destination(await route(r, body))
        assert d.target_hostport == real
        picks.append(real)
    assert len(set(picks)) > 1  # the tie-break really was random


async def test_pd_config_explain_matches_and_says_why() -> None:
    r = rig(PD_CONFIG, roles=["prefill", "prefill", "decode", "decode", "decode"])
    # ~300-token prompts: a conversation's first turn is uncached (remote prefill), later
    # turns find it on their decode pod (local).
    decisions = await _agree(r, steps=16, move_metrics=True, repeat=2)
    reasons = {d.pd.reason for d in decisions}
    assert all(d.pd.applicable for d in decisions)
    assert any(d.pd.remote_prefill for d in decisions), reasons
    assert "below-threshold" in reasons
    # decode-filter dropped both prefill pods in every decode profile, with the label as reason.
    decode = next(p for p in decisions[0].profiles if p.name == "decode")
    assert {x.endpoint for x in decode.dropped} == {"default/pod-0", "default/pod-1"}
    assert all(x.filter == "decode-filter" and "llm-d.ai/role=prefill" in x.reason for x in decode.dropped)
    # A short prompt stays local: below the 256-token threshold.
    short = explain(r, {"model": "m", "prompt": "hi", "max_tokens": 1})
    assert not short.pd.remote_prefill and short.pd.reason == "below-threshold"
    assert short.pd.threshold_tokens == 256


def test_scores_are_raw_times_weight_and_sum_to_the_total() -> None:
    r = rig(PD_CONFIG, roles=["prefill", "decode", "decode"])
    r.datastore.endpoints()[1].metrics.waiting_queue_size = 3
    d = explain(r, {"model": "m", "prompt": CONVERSATIONS[0], "max_tokens": 4})
    decode = d.profiles[0]
    assert decode.name == "decode" and decode.picker == "max-score-picker (max-score-picker)"
    weights = {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    for e in decode.endpoints:
        assert {s.scorer: s.weight for s in e.scores} == weights
        for s in e.scores:
            assert 0.0 <= s.raw <= 1.0 and s.weighted == pytest.approx(s.raw * s.weight)
        assert e.total == pytest.approx(sum(s.weighted for s in e.scores))
    best = max(decode.endpoints, key=lambda e: e.total)
    assert decode.picked[0] == best.endpoint == d.target
    assert best.hostport == "127.0.0.1:8002"  # pod-1 has a queue, pod-2 is idle


def test_refused_requests_are_explained_as_errors() -> None:
    r = rig(pods=2)
    bad = r.service.explain(pb.ExplainRequest(body=b"{"))
    assert bad.error_status == 400 and "JSON" in bad.error
    for ep in r.datastore.endpoints():
        r.datastore.set_health(ep, False)
    d = explain(r, {"model": "m", "prompt": "x"})
    assert d.error_status == 503 and d.error == "no healthy endpoint in the inference pool"
