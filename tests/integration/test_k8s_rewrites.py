"""InferenceModelRewrites through the reflector, against the API-server stand-in (real HTTP
list/watch): initial list, a live weight edit, deletion, the llm-d.ai group preferred over
GIE's, and a missing CRD."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from epp.datastore.datastore import Datastore
from epp.k8s.cli import KubernetesOptions
from epp.k8s.source import KubernetesSource
from tests.helpers.fake_apiserver import FakeApiServer, wait_until

POOL = "llama"
LLMD, GIE = "llm-d.ai", "inference.networking.x-k8s.io"


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _rewrite(name: str, canary: int, group: str = LLMD, pool: str = POOL) -> dict[str, Any]:
    return {"apiVersion": f"{group}/v1alpha2", "kind": "InferenceModelRewrite",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": pool},
                     "rules": [{"matches": [{"model": {"type": "Exact", "value": "llama"}}],
                                "targets": [{"modelRewrite": "llama-v1", "weight": 100 - canary},
                                            {"modelRewrite": "llama-v2", "weight": canary}]}]}}


def _coll(group: str) -> str:
    return FakeApiServer.collection("inferencemodelrewrites", "default", group, "v1alpha2")


async def _start(api: FakeApiServer, tmp_path: Path, ds: Datastore) -> KubernetesSource:
    opts = KubernetesOptions(pool_name=POOL, pool_namespace="default",
                             kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    src = KubernetesSource(opts, ds, missing_crd_retry_s=0.2)
    await src.start()
    await wait_until(src.synced)
    return src


def _canary(ds: Datastore) -> float | None:
    ref = ds.model_rewrites.rule("llama")
    return None if ref is None else dict(ref.rule.weights())["llama-v2"]


async def test_rewrites_follow_the_crd(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, {"app": "x"}, [8000])
    api.put(_coll(LLMD), _rewrite("canary", 10))
    api.put(_coll(LLMD), _rewrite("elsewhere", 50, pool="other"))
    api.put(_coll(GIE), _rewrite("legacy", 70))  # ignored while llm-d.ai is served
    ds = Datastore()
    src = await _start(api, tmp_path, ds)
    try:
        assert [r.name for r in ds.model_rewrites.rewrites()] == ["canary"]
        assert _canary(ds) == 10
        api.put(_coll(LLMD), _rewrite("canary", 20))  # kubectl apply with a new weight
        await wait_until(lambda: _canary(ds) == 20)
        bad = _rewrite("broken", 10)
        bad["spec"]["rules"][0]["targets"] = []
        api.put(_coll(LLMD), bad)  # logged and skipped; the good one stays
        second = _rewrite("second", 5)
        second["spec"]["rules"][0]["matches"] = [{"model": {"value": "mistral"}}]
        api.put(_coll(LLMD), second)
        await wait_until(lambda: ds.model_rewrites.rule("mistral") is not None)
        assert sorted(r.name for r in ds.model_rewrites.rewrites()) == ["canary", "second"]
        assert _canary(ds) == 20
        api.delete(_coll(LLMD), "canary")
        await wait_until(lambda: _canary(ds) is None)
    finally:
        await src.stop()


async def test_legacy_group_when_llm_d_crd_is_missing(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, {"app": "x"}, [8000])
    api.missing_plurals.add(f"inferencemodelrewrites.{LLMD}")
    api.put(_coll(GIE), _rewrite("legacy", 30, group=GIE))
    ds = Datastore()
    src = await _start(api, tmp_path, ds)
    try:
        await wait_until(lambda: _canary(ds) == 30)
    finally:
        await src.stop()
