"""Local mode: InferenceModelRewrites live in the objectives files and reload on edit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.local import LocalEndpointSource, LocalSourceError
from tests.unit.datastore.test_local_source import PODS, POOL_V1

OBJECTIVE = """
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: chatbot}
spec: {priority: 1, poolRef: {name: vllm-llama3-8b}}
"""


def _rewrite(canary: int, pool: str = "vllm-llama3-8b") -> str:
    return f"""
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {{name: canary}}
spec:
  poolRef: {{name: {pool}}}
  rules:
  - matches: [{{model: {{value: llama}}}}]
    targets: [{{modelRewrite: llama-v1, weight: {100 - canary}}}, {{modelRewrite: llama-v2, weight: {canary}}}]
"""


def _write(p: Path, text: str) -> None:
    p.write_text(text)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


async def _until(cond: object) -> None:
    for _ in range(300):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _weights(ds: Datastore) -> tuple[tuple[str, float], ...] | None:
    ref = ds.model_rewrites.rule("llama")
    return None if ref is None else ref.rule.weights()


async def test_rewrites_load_and_reload_with_the_objectives(tmp_path: Path) -> None:
    (tmp_path / "pool.yaml").write_text(POOL_V1)
    (tmp_path / "pods.yaml").write_text(PODS)
    obj = tmp_path / "obj.yaml"
    obj.write_text(OBJECTIVE + _rewrite(10) + _rewrite(10, pool="other-pool").replace("canary}", "other}"))
    ds = Datastore()
    source = LocalEndpointSource(ds, tmp_path / "pool.yaml", tmp_path / "pods.yaml", [obj], poll_interval=0.01)
    await source.start()
    try:
        assert ds.objective("chatbot") is not None
        assert [r.name for r in ds.model_rewrites.rewrites()] == ["canary"]  # other pool's skipped
        assert _weights(ds) == (("llama-v1", 90.0), ("llama-v2", 10.0))
        _write(obj, OBJECTIVE + _rewrite(20))  # the operator moves the canary to 20%
        await _until(lambda: _weights(ds) == (("llama-v1", 80.0), ("llama-v2", 20.0)))
        _write(obj, OBJECTIVE + _rewrite(20).replace("weight: 20", "weight: 0"))  # invalid: kept
        await _until(lambda: source.last_error is not None)
        assert "targets[1].weight: must be an integer 1..1000000" in str(source.last_error)
        assert _weights(ds) == (("llama-v1", 80.0), ("llama-v2", 20.0))
        _write(obj, OBJECTIVE)  # the rewrite is deleted
        await _until(lambda: _weights(ds) is None)
    finally:
        await source.stop()


def test_a_rewrite_name_in_two_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pool.yaml").write_text(POOL_V1)
    (tmp_path / "pods.yaml").write_text(PODS)
    (tmp_path / "a.yaml").write_text(_rewrite(10))
    (tmp_path / "b.yaml").write_text(_rewrite(20))
    source = LocalEndpointSource(Datastore(), tmp_path / "pool.yaml", tmp_path / "pods.yaml",
                                 [tmp_path / "a.yaml", tmp_path / "b.yaml"])
    with pytest.raises(LocalSourceError, match="'canary' defined in several files"):
        source.read()
