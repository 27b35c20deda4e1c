"""A pod's engine step time from its first bytes (epp/latency/steps.py)."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from epp.bench.workloads import words
from epp.latency.steps import MIN_STEP_SAMPLES, STEP_COVER, StepProbe, StepTime, fit_step_time
from epp.sim.cluster import simulated_pods
from epp.sim.config import LatencyModel
from epp.tokenization.tokenizer import SimpleTokenizer
from tests.helpers.streaming import first_token_at


def test_fit_step_time_recovers_the_shape_of_a_step() -> None:
    """Steps of 0.06 s + 0.44 s per 1k prefill tokens, each up to 3% off, as the simulator's
    slow pod in the benchmark (8 x (6.5 ms + 0.055 ms per token))."""
    rng = random.Random(5)
    samples = []
    for _ in range(40):
        k = rng.uniform(0.1, 2.0)
        samples.append((k, (0.06 + 0.44 * k) * rng.uniform(0.97, 1.03)))
    step = fit_step_time(samples)
    assert step is not None
    assert step.base == pytest.approx(0.06, rel=0.15)
    assert step.per_ktoken == pytest.approx(0.44, rel=0.05)
    assert step.cover == pytest.approx(STEP_COVER * max(k for k, _ in samples))
    assert step.samples == 40
    assert StepTime.from_json(step.as_json()) == step


def test_fit_step_time_needs_enough_steps_of_varied_sizes_and_a_step_shape() -> None:
    few = [(0.1 * i, 0.05 + 0.4 * 0.1 * i) for i in range(1, MIN_STEP_SAMPLES)]
    assert fit_step_time(few) is None
    assert fit_step_time([*few, (2.0, 0.85)]) is not None
    assert fit_step_time([(1.0, 0.5)] * 30) is None  # one size: no slope
    assert fit_step_time([(0.1 * i, 1.0 - 0.02 * i) for i in range(1, 30)]) is None  # longer for fewer tokens
    assert fit_step_time([(0.1 * i, 0.05 * i) for i in range(1, 30)] + [(0.1, 0.001)]) is None  # base < 0


def test_step_probe_takes_only_steps_that_ran_back_to_back() -> None:
    """A first byte marks a step end. Two step ends bound one step when every request that
    got its first byte at the second one was sent before the first: it was waiting when the
    step after the first end was scheduled."""
    probe = StepProbe()
    assert probe.first_byte(10.0, 9.5, 0.4) is None  # the first end seen: no start
    # Two requests sent during that step, first bytes 0.6 s after its end: a whole step.
    assert probe.first_byte(10.6, 9.8, 0.5) is None
    assert probe.first_byte(10.605, 9.9, 0.3) is None  # the same step, 5 ms later through Envoy
    # The next end closes it: 0.8k tokens in 0.6 s.
    closed = probe.first_byte(11.0, 10.7, 0.2)
    assert closed is not None
    assert closed[0] == pytest.approx(0.8)
    assert closed[1] == pytest.approx(0.6)
    # That step (10.6 -> 11.0) held a request sent after it started, at 10.7: the pod may have
    # been idle or between steps then, so it bounds no whole step.
    assert probe.first_byte(11.5, 10.9, 0.3) is None
    # 11.0 -> 11.5 was whole (sent at 10.9, before 11.0 - 20 ms) until a member sent 10 ms
    # before its start came: not sure it was waiting then.
    assert probe.first_byte(11.51, 10.99, 0.2) is None
    assert probe.first_byte(12.0, 11.2, 0.2) is None  # closes nothing
    # 11.5 -> 12.0 was whole: closed by the next end.
    assert probe.first_byte(14.0, 11.9, 9.0) == (pytest.approx(0.2), pytest.approx(0.5))
    # 12.0 -> 14.0 prefilled more than one budget of tokens: several engine steps (chunked
    # prefill), not one.
    assert probe.first_byte(15.0, 14.5, 0.2) is None
    assert probe.first_byte(15.5, 14.8, 0.2) is None  # 14.0 -> 15.0 held a request sent after 14.0
    assert probe.first_byte(16.0, 15.9, 0.2) == (pytest.approx(0.2), pytest.approx(0.5))



def test_a_first_byte_heard_late_from_another_worker_is_left_out() -> None:
    """A peer worker's first byte (epp/latency/sharing.py) can arrive after a later one of this
    worker's: it cannot be placed between the step ends and must not close or split a step."""
    probe = StepProbe()
    probe.first_byte(10.0, 9.5, 0.4)
    probe.first_byte(10.6, 9.8, 0.5)
    assert probe.first_byte(10.3, 9.9, 2.0) is None  # 0.3 s older than the last end
    assert (probe.start, probe.end, probe.ktokens, probe.whole) == (10.0, 10.6, 0.5, True)
    assert probe.first_byte(11.0, 10.7, 0.2) == (pytest.approx(0.5), pytest.approx(0.6))


async def test_step_probe_learns_the_step_time_of_a_real_simulated_pod() -> None:
    """Against the simulator's engine (vLLM's scheduling: steps back to back, the waiting
    prompts prefilled together in the next step): bursts of prompts, each sent while the
    step before it runs, their first bytes fed to a StepProbe as the runtime does. The step
    time fitted from them is the engine's: LatencyModel x slowdown, 4 x (6.5 ms + 0.055 ms
    per token) here."""
    slowdown = 4.0
    rng = random.Random(7)
    tokenizer = SimpleTokenizer()
    groups = []
    for _ in range(24):
        members = []
        for _ in range(rng.randint(1, 3)):
            text = words(rng, rng.randint(150, 1_200) * 4)  # random words: no prefix shared
            members.append((text, len(tokenizer.encode(text)) / 1000.0))
        groups.append(members)
    async with (simulated_pods(1, slowdown=slowdown) as cluster, httpx.AsyncClient(timeout=60) as client):
        url = cluster.urls[0]
        results: list[tuple[float, float, float]] = []  # (first byte, sent, k tokens)

        async def send(members: list[tuple[str, float]]) -> list[asyncio.Task[tuple[float, float]]]:
            return [asyncio.create_task(first_token_at(client, url, text)) for text, _ in members]

        running = [await send(groups[0])]
        await asyncio.sleep(0.02)  # group 0's step runs: group 1 waits for the next one
        running.append(await send(groups[1]))
        for g in range(2, len(groups)):
            # Group g - 2's first byte: group g - 1's step starts; group g waits for the next.
            done = await asyncio.gather(*running[g - 2])
            results += [(fb, sent, k) for (sent, fb), (_, k) in zip(done, groups[g - 2], strict=True)]
            await asyncio.sleep(0.02)
            running.append(await send(groups[g]))
        for g in (len(groups) - 2, len(groups) - 1):
            done = await asyncio.gather(*running[g])
            results += [(fb, sent, k) for (sent, fb), (_, k) in zip(done, groups[g], strict=True)]
    probe = StepProbe()
    samples = [s for fb, sent, k in sorted(results) if (s := probe.first_byte(fb, sent, k)) is not None]
    assert len(samples) >= MIN_STEP_SAMPLES
    step = fit_step_time(samples)
    assert step is not None
    lat = LatencyModel()
    assert step.per_ktoken == pytest.approx(slowdown * lat.prefill_per_token_ms, rel=0.1)
    assert 0.0 <= step.base <= 3 * slowdown * lat.step_base_ms / 1000.0
