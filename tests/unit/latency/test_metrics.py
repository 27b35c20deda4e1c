"""The latency collector's per-pod gauges, read back through prometheus_client's own
exposition and parser (what a scraper sees)."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from epp.latency.metrics import LatencyMetrics
from epp.latency.predictor import MIN_SPEED_SAMPLES, LatencyPredictor, PredictorConfig
from epp.latency.steps import MIN_STEP_SAMPLES
from tests.helpers.metrics import scraped_samples
from tests.unit.latency.test_predictor import SPEED, train

POD_GAUGES = ("epp_latency_pod_speed_ratio", "epp_latency_pod_step_base_seconds",
              "epp_latency_pod_step_seconds_per_ktoken")


def scrape(predictor: LatencyPredictor) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(LatencyMetrics(predictor))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for (name, labels), value in scraped_samples(registry).items():
        out.setdefault(name, {})[labels] = value
    return out


def test_pod_gauges_are_absent_until_the_predictor_has_learnt_the_pod() -> None:
    p = LatencyPredictor()
    metrics = scrape(p)
    assert all(name not in metrics for name in POD_GAUGES)
    # A few observations and steps: a pod is known, but not enough for a speed or a step time.
    train(p, MIN_SPEED_SAMPLES - 1)
    for i in range(MIN_STEP_SAMPLES - 1):
        p.observe_step("fast", 0.1 * (i + 1), 0.01 + 0.05 * 0.1 * (i + 1))
    p.refit()
    metrics = scrape(p)
    assert all(name not in metrics for name in POD_GAUGES)


def test_pod_gauges_show_each_pods_learnt_speed_and_step_time() -> None:
    p = LatencyPredictor(PredictorConfig(window=512))
    train(p, 300)  # the slow pod runs everything 2x slower (test_predictor.SPEED)
    rng = random.Random(3)
    for _ in range(MIN_SPEED_SAMPLES - 1):  # a new pod: too few observations for a speed
        p.observe("ttft", "new", [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.1], 0.1)
    truth = {"fast": (0.006, 0.22), "slow": (0.013, 0.44)}  # (base s, s per 1k tokens)
    for pod, (base, per_ktoken) in truth.items():
        for _ in range(2 * MIN_STEP_SAMPLES):
            k = rng.uniform(0.1, 8.0)
            p.observe_step(pod, k, (base + per_ktoken * k) * (1 + rng.uniform(-0.02, 0.02)))
    assert p.refit()
    metrics = scrape(p)
    speed = metrics["epp_latency_pod_speed_ratio"]
    for target in ("ttft", "tpot"):
        fast, slow = speed[(("pod", "fast"), ("type", target))], speed[(("pod", "slow"), ("type", target))]
        assert slow / fast == pytest.approx(SPEED["slow"] / SPEED["fast"], rel=0.1), target
    assert len(speed) == 4  # none for the pooled model, none for the new pod
    for pod, (base, per_ktoken) in truth.items():
        assert metrics["epp_latency_pod_step_base_seconds"][(("pod", pod),)] == pytest.approx(base, abs=0.003)
        assert metrics["epp_latency_pod_step_seconds_per_ktoken"][(("pod", pod),)] == pytest.approx(
            per_ktoken, rel=0.05)
