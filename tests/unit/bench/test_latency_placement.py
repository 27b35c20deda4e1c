"""The long-prefill placement counts docs/latency-routing.md reports, on a hand-built result."""

from __future__ import annotations

from typing import Any

import pytest

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.latency_placement import placements


def test_counts_slow_pod_and_misplaced_long_prefills() -> None:
    settings = LatencyBenchSettings(seed=1, duration_s=20.0)
    workload, _ = build_workload(settings, 0.9, 20.0, 1, "t")
    longs = [i for i, r in enumerate(workload.requests) if r.session.startswith("long/")][:4]
    assert len(longs) == 4
    a, b, c, d = longs
    first, second = workload.requests[a].arrival_s, workload.requests[b].arrival_s
    # a and b both go to vllm-1 with first bytes far after c and d arrive: c (to vllm-1, while
    # vllm-2 is idle) is misplaced; d goes to the slow pod; b was placed while only a was
    # busy on vllm-1 (misplaced too: vllm-2 and vllm-3 were idle).
    pods = {a: "vllm-1", b: "vllm-1", c: "vllm-1", d: "vllm-0"}
    ttft = {a: 1000.0, b: 1000.0, c: 5.0, d: 5.0}
    slo = {a: 10.0, b: None, c: None, d: None}
    per_request: list[dict[str, Any]] = [
        {"i": i, "kind": "long", "pod": pods[i], "ok": True, "ttft_s": ttft[i], "slo_ttft_s": slo[i]}
        for i in longs]
    # Chats on the other fast pods (their indices are not looked up: only long prefills are).
    per_request += [{"i": -n, "kind": "chat", "pod": pod, "ok": True, "ttft_s": 0.2, "slo_ttft_s": None}
                    for n, pod in ((1, "vllm-2"), (2, "vllm-3"))]
    result = {"settings": {"max_tokens": 32, "seed": 1, "duration_s": 20.0},
              "phases": [{"load": 0.9, "rows": [{"label": "test", "per_request": per_request}]}]}
    [placed] = placements(result)
    assert first < second
    assert placed.longs == 4 and placed.on_slow_pod == 1
    assert placed.misplaced == [b, c] and placed.misplaced_without_slo == 2
    assert len(placed.lines) == 4 and "misplaced" in placed.lines[1] and "misplaced" not in placed.lines[0]
    # The floor: only a found no long prefill ahead on a fast pod (b and c queued behind it on
    # vllm-1, d went to the slow pod): 1000 s over a's prompt tokens per token.
    # (placements() rebuilds the prompts with its own nonce: a few tokens differ, hence rel=1e-3.)
    tokens = prompt_tokens(workload)
    assert placed.unqueued == 1
    assert placed.unqueued_s_per_token == pytest.approx(1000.0 / tokens[a], rel=1e-3)
    floor = sorted(1000.0 * tokens[i] / tokens[a] for i in longs)
    assert floor[-2] * 0.999 <= placed.ttft_p90_floor <= floor[-1] * 1.001  # the p90 of 4: between the top two
