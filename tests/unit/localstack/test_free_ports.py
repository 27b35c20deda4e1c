"""Ports of stacks that pick them before any process binds one must not collide (a CI run once
gave one pool's EPP the metrics port another pool's EPP had been handed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.localstack import stack as stack_module
from epp.localstack.multipool import MultiPoolStack, MultiStackConfig, PoolPlan
from epp.localstack.stack import free_ports


def test_free_ports_never_returns_an_excluded_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # A range of 6 ports, 4 excluded: the 2 left are the only possible answer.
    monkeypatch.setattr(stack_module, "_PORT_RANGE", (30000, 30006))
    assert sorted(free_ports(2, exclude={30000, 30001, 30002, 30003})) == [30004, 30005]


def test_pools_of_a_multi_pool_stack_get_disjoint_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A narrow range makes an overlap between independently picked batches near certain.
    monkeypatch.setattr(stack_module, "_PORT_RANGE", (30000, 30070))
    plans = [PoolPlan(name=n, engine="vllm", model=f"m-{n}", pods=3) for n in "abc"]
    multi = MultiPoolStack(MultiStackConfig(pools=plans, run_dir=tmp_path, ports_free=True))
    seen: list[int] = [multi.cfg.listen_port, multi.cfg.admin_port, multi.cfg.bbr_grpc_port,
                       multi.cfg.bbr_health_port]
    for pool in multi.pools.values():
        assert pool.cfg.port_batch
        seen += pool.cfg.port_batch
    assert len(seen) == len(set(seen))
