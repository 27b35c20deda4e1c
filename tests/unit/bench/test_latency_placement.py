"""The long-prefill placement counts docs/latency-routing.md reports, on a hand-built result."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from typing import Any

import httpx
import pytest

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.latency_placement import (
    engine_seconds,
    idle_ttft_s,
    least_on_time,
    placements,
    scheduled_percentile_bound,
)
from epp.bench.stats import percentile
from epp.sim.cluster import simulated_pods
from epp.sim.config import LatencyModel
from epp.tokenization.tokenizer import SimpleTokenizer
from tests.helpers.streaming import distinct_prompt, first_token_at, seconds_to_first_token


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
    result = {"settings": {"max_tokens": 32, "seed": 1, "duration_s": 20.0, "slowdown": 4.0},
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
    idle = sorted(idle_ttft_s(tokens[i], 4.0) for i in longs)
    assert idle[-2] * 0.999 <= placed.ttft_p90_idle <= idle[-1] * 1.001
    # 4x slower steps: 8,192 tokens take 4 x (6.5 + 0.055 x 8192) ms, plus 4 ms of frontend.
    assert idle_ttft_s(8192, 4.0) == pytest.approx((4.0 + 4 * (6.5 + 0.055 * 8192)) / 1000.0)


async def test_idle_ttft_matches_the_simulator_and_the_next_request_shares_the_last_step() -> None:
    """idle_ttft_s against a real simulated pod: a 12k-token prompt alone takes its two steps
    (8,192 + the rest). A second prompt sent while the first is still in its first step takes
    the free budget of the first's last step (vLLM's FCFS token budget), which then lasts a
    full step: the first token of the first prompt comes that much later. This is the delay
    the latency scorer's lastChunkHarmWeight charges."""
    scale = 0.5
    async with (simulated_pods(1, time_scale=scale, max_model_len=40_000) as cluster,
                httpx.AsyncClient(timeout=60) as client):
        url = cluster.urls[0]
        # Built before any request: the simulated pod runs on this event loop.
        alone_prompt, first_prompt, second_prompt = (distinct_prompt(tag, 12_000)
                                                     for tag in ("alone", "first", "second"))
        tokens = len(SimpleTokenizer().encode(alone_prompt))
        assert 11_000 < tokens <= 12_000
        idle = idle_ttft_s(tokens, 1.0)
        alone = await seconds_to_first_token(client, url, alone_prompt) / scale
        assert idle * 0.99 <= alone <= idle * 1.15 + 0.02
        first = asyncio.create_task(seconds_to_first_token(client, url, first_prompt))
        await asyncio.sleep(0.05)  # the first prompt is in its first step (~0.23 s wall)
        second = asyncio.create_task(seconds_to_first_token(client, url, second_prompt))
        shared = await first / scale
        await second
        lat = LatencyModel()
        first_tokens = len(SimpleTokenizer().encode(first_prompt))
        assert 11_000 < first_tokens <= 12_000
        free = 2 * 8192 - first_tokens  # the first prompt's last step: what the second one takes
        assert shared >= idle_ttft_s(first_tokens, 1.0) + 0.9 * lat.prefill_per_token_ms * free / 1000.0
        assert shared == pytest.approx(idle_ttft_s(2 * 8192, 1.0), rel=0.15)



async def test_a_request_held_until_the_prefill_ahead_ends_costs_itself_one_step_base() -> None:
    """The deferral's premise (deferBehindPrefillTokens), on a real simulated pod: a 4k-token
    chat that reaches a pod while a 12k-token prompt prefills there is prefilled in that
    prompt's last step, which its tokens lengthen. Held until the prompt's first token and sent
    then, the chat takes a step of its own: the prompt's first token comes as if it were alone,
    and the chat's own comes later only by about one step's base time (and a round trip, which
    the real-time scale keeps small against the simulated times)."""
    scale = 1.0
    lat = LatencyModel()
    async with (simulated_pods(1, time_scale=scale, max_model_len=40_000) as cluster,
                httpx.AsyncClient(timeout=60) as client):
        url = cluster.urls[0]
        prompts = {held: (distinct_prompt(f"long-{held}", 12_000), distinct_prompt(f"chat-{held}", 4_000))
                   for held in (False, True)}
        results: dict[bool, tuple[float, float]] = {}
        for held, (long_prompt, chat_prompt) in prompts.items():
            first = asyncio.create_task(first_token_at(client, url, long_prompt))
            await asyncio.sleep(0.05)  # the long prompt is in its first step
            chat_arrival = time.monotonic()
            if held:
                _, long_first = await first
                _, chat_first = await first_token_at(client, url, chat_prompt)
            else:
                chat = asyncio.create_task(first_token_at(client, url, chat_prompt))
                _, long_first = await first
                _, chat_first = await chat
            long_sent = chat_arrival - 0.05
            results[held] = ((long_first - long_sent) / scale, (chat_first - chat_arrival) / scale)
    long_tokens = len(SimpleTokenizer().encode(prompts[True][0]))
    chat_tokens = len(SimpleTokenizer().encode(prompts[False][1]))
    per_token_s = lat.prefill_per_token_ms / 1000.0
    # Sent at once, the chat lengthened the long prompt's last step by its tokens; held, not.
    assert results[False][0] >= idle_ttft_s(long_tokens, 1.0) + 0.8 * per_token_s * chat_tokens, results
    assert results[True][0] == pytest.approx(idle_ttft_s(long_tokens, 1.0), rel=0.1), results
    # What holding cost the chat: about a step's base, far less than what it saved the prompt.
    cost = results[True][1] - results[False][1]
    saved = results[False][0] - results[True][0]
    assert cost < 0.5 * saved and cost < 0.1, results


def _brute_force_ttfts(arrivals: list[float], services: list[list[float]]) -> list[list[float]]:
    """The TTFTs (completion - arrival) of every schedule: each job's machine, and each
    machine's order, every job starting as soon as its machine is free and it has arrived."""
    n, machines = len(arrivals), len(services[0])
    out = []
    for assignment in itertools.product(range(machines), repeat=n):
        per_machine = [[j for j in range(n) if assignment[j] == m] for m in range(machines)]
        for orders in itertools.product(*(itertools.permutations(jobs) for jobs in per_machine)):
            ttft = [0.0] * n
            for m, order in enumerate(orders):
                free = -math.inf
                for j in order:
                    free = max(free, arrivals[j]) + services[j][m]
                    ttft[j] = free - arrivals[j]
            out.append(ttft)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_scheduled_bound_matches_brute_force(seed: int) -> None:
    """least_on_time(m) is the least m-th smallest TTFT over every schedule, and the percentile
    bound is never above the percentile of any schedule (and equal to the best where the rank
    falls on a sample: the median of 5)."""
    rng = random.Random(seed)
    n = 5
    arrivals = sorted(rng.uniform(0.0, 4.0) for _ in range(n))
    base = [rng.uniform(0.5, 3.0) for _ in range(n)]
    # Two identical fast machines and one twice as slow, as the bench's pool.
    services = [[b, b, 2.0 * b] for b in base]
    schedules = _brute_force_ttfts(arrivals, services)
    for m in range(1, n + 1):
        best = min(sorted(ttft)[m - 1] for ttft in schedules)
        assert least_on_time(arrivals, services, m) == pytest.approx(best, abs=2e-4)
    assert scheduled_percentile_bound(arrivals, services, 50) == pytest.approx(
        min(percentile(ttft, 50) for ttft in schedules), abs=2e-4)
    bound90 = scheduled_percentile_bound(arrivals, services, 90, offset=0.1)
    assert bound90 <= min(percentile(ttft, 90) for ttft in schedules) + 0.1 + 2e-4


def test_scheduled_bound_on_a_burst() -> None:
    """Three equal jobs at once on two machines: one of them waits a whole service; leaving
    one out (the p50 of 3 needs two on time) waits none."""
    services = [[2.0, 2.0]] * 3
    arrivals = [0.0, 0.0, 0.0]
    assert least_on_time(arrivals, services, 3) == pytest.approx(4.0, abs=2e-4)
    assert least_on_time(arrivals, services, 2) == pytest.approx(2.0, abs=2e-4)
    assert scheduled_percentile_bound(arrivals, services, 100) == pytest.approx(4.0, abs=2e-4)
    assert scheduled_percentile_bound(arrivals, services, 50) == pytest.approx(2.0, abs=2e-4)
    assert math.isnan(scheduled_percentile_bound([], []))
    # Under the pool's real speeds, engine_seconds never exceeds the idle TTFT less its overhead.
    lat = LatencyModel()
    for tokens in (100, 8192, 8193, 20000, 29999):
        assert engine_seconds(tokens, 4.0) <= idle_ttft_s(tokens, 4.0) - lat.frontend_overhead_ms / 1000.0 + 1e-12
