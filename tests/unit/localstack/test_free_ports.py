"""Ports of stacks that pick them before any process binds one must not collide (a CI run once
gave one pool's EPP the metrics port another pool's EPP had been handed)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from epp.localstack import stack as stack_module
from epp.localstack.multipool import MultiPoolStack, MultiStackConfig, PoolPlan
from epp.localstack.stack import free_ports


class _AlwaysBindableSocket:
    """A socket whose bind always succeeds: the exclusion logic alone is under test, not the
    machine's ports (a real 30004 in TIME_WAIT from an earlier test once failed this)."""

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> _AlwaysBindableSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        pass


def test_free_ports_never_returns_an_excluded_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # A range of 6 ports, 4 excluded: the 2 left are the only possible answer.
    monkeypatch.setattr(stack_module, "_PORT_RANGE", (30000, 30006))
    # Only the stack module's view of `socket`: other threads keep the real one.
    monkeypatch.setattr(stack_module, "socket", SimpleNamespace(socket=_AlwaysBindableSocket, AF_INET=socket.AF_INET,
                                                                SOCK_STREAM=socket.SOCK_STREAM))
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
