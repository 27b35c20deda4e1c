"""Real Envoy + EPP + simulated vLLM pods on loopback, shared per test module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from epp.localstack.stack import LocalStack, StackConfig

StackFactory = Callable[..., LocalStack]


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    stacks: list[LocalStack] = []

    def make(**kwargs: object) -> LocalStack:
        run_dir = Path(tmp_path_factory.mktemp("stack"))
        cfg = StackConfig(ports_free=True, run_dir=run_dir, **kwargs)  # type: ignore[arg-type]
        stack = LocalStack(cfg)
        stacks.append(stack)
        stack.start(timeout=60)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
