"""Kubernetes-mode flags and options."""

from __future__ import annotations

import argparse

import pytest

from epp.k8s.cli import KubernetesOptions, add_k8s_arguments
from epp.k8s.leader import LeaseConfig
from epp.k8s.reflector import Backoff


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_k8s_arguments(parser)
    return parser.parse_args(list(argv))


def test_no_pool_name_means_no_kubernetes_mode() -> None:
    assert KubernetesOptions.from_args(_parse()) is None


def test_flags_map_to_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "epp-7f9c-abcde")
    opts = KubernetesOptions.from_args(_parse(
        "--pool-name", "llama", "--pool-namespace", "ml",
        "--pool-group", "inference.networking.x-k8s.io", "--leader-elect", "--watch-inference-models",
        "--lease-duration", "20", "--renew-deadline", "12", "--retry-period", "3",
    ))
    assert opts is not None
    assert (opts.pool_name, opts.pool_namespace, opts.pool_group) == (
        "llama", "ml", "inference.networking.x-k8s.io")
    assert opts.leader_elect and opts.watch_inference_models
    assert opts.effective_lease_name == "llama-epp-leader"
    assert opts.effective_lease_namespace == "ml"
    assert opts.effective_identity == "epp-7f9c-abcde"
    assert (opts.lease_duration_s, opts.renew_deadline_s, opts.retry_period_s) == (20, 12, 3)


def test_bad_group_is_rejected() -> None:
    with pytest.raises(ValueError, match="--pool-group must be"):
        KubernetesOptions(pool_name="p", pool_group="example.com")


def test_lease_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="lease_duration > renew_deadline > retry_period"):
        LeaseConfig(namespace="d", name="l", identity="me", lease_duration_s=5, renew_deadline_s=10)


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(initial=0.1, cap=1.0)
    delays = [b.next_delay() for _ in range(8)]
    for i, d in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**i)
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next_delay() <= 0.1
