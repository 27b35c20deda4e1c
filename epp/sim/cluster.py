"""Run several simulated pods in one process: the Python API for tests and the CLI's runner.

    async with simulated_pods(2, time_scale=0.05, num_gpu_blocks=512) as cluster:
        httpx.post(cluster.urls[0] + "/v1/completions", json=...)
        cluster[1].engine.state()

Each pod gets its own port (a free one unless `port` is given), engine, metrics registry and
(optionally) KV-event publisher. An injected crash stops that pod's listener and engine
(connections are refused); `await pod.restart()` brings it back with an empty cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from epp.sim.config import SimPodConfig, apply_overrides
from epp.sim.server import SimPod


async def _stop_on_crash(pod: SimPod) -> None:
    await pod.stop()


@dataclass
class SimCluster:
    pods: list[SimPod]

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.pods]

    @property
    def hostports(self) -> list[str]:
        return [p.hostport for p in self.pods]

    def by_name(self, name: str) -> SimPod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"no simulated pod named {name!r}")

    def __getitem__(self, index: int) -> SimPod:
        return self.pods[index]

    def __len__(self) -> int:
        return len(self.pods)

    def __iter__(self) -> Iterator[SimPod]:
        return iter(self.pods)

    async def stop(self) -> None:
        for pod in self.pods:
            with contextlib.suppress(Exception):
                await pod.stop()


async def start_pods(configs: Sequence[SimPodConfig], exit_on_crash: bool = False) -> SimCluster:
    pods: list[SimPod] = []
    cluster = SimCluster(pods)
    try:
        for config in configs:
            pod = SimPod(config, on_crash=None if exit_on_crash else _stop_on_crash)
            await pod.start()
            pods.append(pod)
    except BaseException:
        await cluster.stop()
        raise
    return cluster


@contextlib.asynccontextmanager
async def simulated_pods(
    n: int = 1, *, per_pod: Sequence[dict[str, Any]] | None = None, **overrides: Any
) -> AsyncIterator[SimCluster]:
    """Start `n` pods on loopback; `overrides` apply to all, `per_pod[i]` to pod i."""
    if per_pod is not None and len(per_pod) != n:
        raise ValueError(f"per_pod has {len(per_pod)} entries for {n} pods")
    base = apply_overrides(SimPodConfig(), overrides, "simulated_pods")
    configs = [apply_overrides(base, (per_pod[i] if per_pod else {}), f"per_pod[{i}]") for i in range(n)]
    cluster = await start_pods(configs)
    try:
        yield cluster
    finally:
        await cluster.stop()
