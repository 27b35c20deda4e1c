"""KubernetesSource against the API-server stand-in (real HTTP list/watch on 127.0.0.1).

kubernetes-asyncio is configured from a generated kubeconfig (bearer token), exactly as
`epp serve --kubeconfig` would be.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Role
from epp.k8s.cli import KubernetesOptions
from epp.k8s.source import KubernetesSource
from tests.helpers.fake_apiserver import FakeApiServer, wait_until

POOL = "llama"
LABELS = {"app": "vllm-llama"}
LEGACY = "inference.networking.x-k8s.io"


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _options(kubeconfig: Path, **kw: object) -> KubernetesOptions:
    return KubernetesOptions(pool_name=POOL, pool_namespace="default", kubeconfig=str(kubeconfig),
                             **kw)  # type: ignore[arg-type]


async def _started(api: FakeApiServer, tmp_path: Path, ds: Datastore, **kw: object) -> KubernetesSource:
    src = KubernetesSource(_options(api.write_kubeconfig(tmp_path / "kubeconfig"), **kw), ds)
    await src.start()
    try:
        await wait_until(src.synced)
    except BaseException:
        await src.stop()
        raise
    return src


def _keys(ds: Datastore) -> set[str]:
    return {ep.key for ep in ds.healthy_endpoints()}


async def test_initial_list_builds_pool_endpoints_and_objectives(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000, 8001])
    api.put_pod("a", "10.0.0.1", {**LABELS, "llm-d.ai/role": "decode"})
    api.put_pod("b", "10.0.0.2", LABELS, ready=False)
    api.put_pod("c", "10.0.0.3", LABELS, terminating=True)
    api.put_pod("other", "10.0.0.4", {"app": "something-else"})
    api.put_objective("chat", POOL, 5)
    api.put_objective("batch", POOL, -1)
    api.put_objective("elsewhere", "another-pool", 9)
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        assert ds.pool is not None
        assert ds.pool.selector == LABELS and ds.pool.target_ports == (8000, 8001)
        assert ds.pool.endpoint_picker_name == "epp" and ds.pool.endpoint_picker_port == 9002
        assert _keys(ds) == {"default/a-rank-0", "default/a-rank-1"}
        assert {ep.hostport for ep in ds.endpoints()} == {"10.0.0.1:8000", "10.0.0.1:8001"}
        assert all(ep.role is Role.DECODE for ep in ds.endpoints())
        assert {(o.model_name, o.priority) for o in ds.objectives()} == {("chat", 5), ("batch", -1)}
        # The pod watch filters server-side with the pool selector, the pool watch by name.
        pod_lists = [q for m, p, q in api.requests if p.endswith("/pods") and "watch" not in q]
        assert pod_lists and pod_lists[0]["labelSelector"] == "app=vllm-llama"
        pool_reqs = [q for m, p, q in api.requests if p.endswith("/inferencepools")]
        assert all(q["fieldSelector"] == f"metadata.name={POOL}" for q in pool_reqs)
        assert src.is_leader()  # leader election off: every replica does everything
    finally:
        await src.stop()


async def test_pod_add_ready_not_ready_delete(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        assert _keys(ds) == set()
        api.put_pod("p1", "10.0.1.1", LABELS, ready=False)
        api.put_pod("p2", "10.0.1.2", LABELS)
        await wait_until(lambda: _keys(ds) == {"default/p2"})
        api.put_pod("p1", "10.0.1.1", LABELS, ready=True)
        await wait_until(lambda: _keys(ds) == {"default/p1", "default/p2"})
        p1 = ds.get("default/p1")
        assert p1 is not None and p1.hostport == "10.0.1.1:8000"
        p1.inflight = 3  # per-replica state must survive a MODIFIED event of the same pod
        api.put_pod("p1", "10.0.1.1", {**LABELS, "llm-d.ai/role": "prefill"})
        await wait_until(lambda: p1.role is Role.PREFILL)
        assert ds.get("default/p1") is p1 and p1.inflight == 3
        api.put_pod("p2", "10.0.1.2", LABELS, ready=False)
        await wait_until(lambda: _keys(ds) == {"default/p1"})
        api.put_pod("p1", "10.0.1.1", LABELS, terminating=True)
        await wait_until(lambda: _keys(ds) == set())
        api.put_pod("p3", "10.0.1.3", LABELS)
        await wait_until(lambda: _keys(ds) == {"default/p3"})
        api.delete_pod("p3")
        await wait_until(lambda: _keys(ds) == set())
        # A pod relabelled out of the selector is a DELETED event for the filtered watch.
        api.put_pod("p4", "10.0.1.4", LABELS)
        await wait_until(lambda: _keys(ds) == {"default/p4"})
        api.put_pod("p4", "10.0.1.4", {"app": "moved"})
        await wait_until(lambda: _keys(ds) == set())
    finally:
        await src.stop()


async def test_pool_selector_and_port_change(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    api.put_pod("old", "10.0.2.1", LABELS)
    api.put_pod("new", "10.0.2.2", {"app": "vllm-llama-v2"})
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        assert _keys(ds) == {"default/old"}
        api.put_pool_v1(POOL, {"app": "vllm-llama-v2"}, [8000])
        await wait_until(lambda: _keys(ds) == {"default/new"})
        await wait_until(lambda: api.open_watches("pods") == 1)  # the old pod watch was closed
        selectors = {q.get("labelSelector") for m, p, q in api.requests if p.endswith("/pods")}
        assert selectors == {"app=vllm-llama", "app=vllm-llama-v2"}
        api.put_pool_v1(POOL, {"app": "vllm-llama-v2"}, [9000, 9001])
        await wait_until(lambda: {e.hostport for e in ds.endpoints()} == {"10.0.2.2:9000", "10.0.2.2:9001"})
        assert _keys(ds) == {"default/new-rank-0", "default/new-rank-1"}
    finally:
        await src.stop()


async def test_pool_deleted_and_recreated(api: FakeApiServer, tmp_path: Path) -> None:
    coll = api.collection("inferencepools", "default", "inference.networking.k8s.io", "v1")
    api.put_pool_v1(POOL, LABELS, [8000])
    api.put_pod("a", "10.0.3.1", LABELS)
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        api.delete(coll, POOL)
        await wait_until(lambda: ds.pool is None and _keys(ds) == set())
        assert not src.synced()
        api.put_pool_v1(POOL, LABELS, [8000])
        await wait_until(lambda: src.synced() and _keys(ds) == {"default/a"})
    finally:
        await src.stop()


async def test_bookmark_then_disconnect_resumes_without_relist(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        await wait_until(lambda: api.open_watches("pods") == 1)
        api.put_objective("noise", "another-pool", 1)  # moves the global resourceVersion on
        assert api.bookmark() >= 1
        pods = src.stats()["pods"]
        await wait_until(lambda: pods.bookmarks >= 1)
        bookmarked_rv = src._pod_task.reflector.resource_version  # type: ignore[union-attr]
        assert bookmarked_rv == str(api._rv)
        lists_before = pods.lists
        api.disconnect_watches()  # abrupt TCP close
        api.put_pod("late", "10.0.4.1", LABELS)  # happens while nobody watches
        await wait_until(lambda: _keys(ds) == {"default/late"})
        assert pods.lists == lists_before  # caught up from history, no relist
        resumed = [q for m, p, q in api.requests if p.endswith("/pods") and q.get("watch") == "True"]
        assert resumed[-1]["resourceVersion"] == bookmarked_rv
        assert resumed[-1]["allowWatchBookmarks"] == "True"
    finally:
        await src.stop()


@pytest.mark.parametrize("as_http_status", [False, True])
async def test_410_gone_relists_and_converges(
    api: FakeApiServer, tmp_path: Path, as_http_status: bool
) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    api.put_pod("a", "10.0.5.1", LABELS)
    api.put_pod("b", "10.0.5.2", LABELS)
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        await wait_until(lambda: api.open_watches("pods") == 1)
        pods = src.stats()["pods"]
        api.expired_as_http_410 = as_http_status
        if as_http_status:
            api.disconnect_watches()  # reconnects with an old resourceVersion ...
        api.delete_pod("a")
        api.put_pod("c", "10.0.5.3", LABELS)
        if as_http_status:
            api.compact()  # ... that is now compacted: HTTP 410 on the watch request
        else:
            api.expire_watches()  # ERROR event with a 410 Status, then the stream ends
        # The events before the 410 may already converge the set; wait for the relist itself.
        await wait_until(lambda: pods.expired >= 1 and pods.lists >= 2)
        await wait_until(lambda: _keys(ds) == {"default/b", "default/c"})
    finally:
        await src.stop()


async def test_api_errors_back_off_and_recover(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    api.put_pod("a", "10.0.6.1", LABELS)
    api.fail_next(4, status=500)
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        assert _keys(ds) == {"default/a"}
        assert sum(s.errors for s in src.stats().values()) >= 3
    finally:
        await src.stop()


async def test_missing_crd_counts_as_synced_and_legacy_inference_model(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    api.missing_plurals.add("inferenceobjectives")
    api.put(api.collection("inferencemodels", "default", "inference.networking.x-k8s.io", "v1alpha2"), {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceModel",
        "metadata": {"name": "sql-lora"},
        "spec": {"modelName": "sql-lora", "criticality": "Sheddable", "poolRef": {"name": POOL},
                 "targetModels": [{"name": "sql-lora-v1", "weight": 90},
                                  {"name": "sql-lora-v2", "weight": 10}]},
    })
    ds = Datastore()
    src = await _started(api, tmp_path, ds, watch_inference_models=True)
    try:
        obj = ds.objective("sql-lora")
        assert obj is not None and obj.priority == -1
        assert obj.target_models == (("sql-lora-v1", 90), ("sql-lora-v2", 10))
    finally:
        await src.stop()


async def test_missing_objective_crd_is_a_warning_not_a_silent_empty_set(
    api: FakeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GIE >= 1.6 CRDs alone: InferenceObjective is served in neither group. The EPP still
    becomes ready (routing works) but says that priorities are ignored and where the CRD comes
    from; when the CRD is installed later, objectives arrive without a restart."""
    import logging

    api.put_pool_v1(POOL, LABELS, [8000])
    api.missing_plurals.add("inferenceobjectives")
    ds = Datastore()
    src = KubernetesSource(_options(api.write_kubeconfig(tmp_path / "kubeconfig")), ds,
                           missing_crd_retry_s=0.05)
    with caplog.at_level(logging.INFO, logger="epp.k8s.source"):
        await src.start()
        try:
            await wait_until(src.synced)
            await wait_until(lambda: len(src.missing_crds()) == 2)
            assert sorted(src.missing_crds()) == ["inferenceobjectives.inference.networking.x-k8s.io",
                                                  "inferenceobjectives.llm-d.ai"]
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings
            assert "InferenceObjective CRD is not installed" in warnings[0]
            assert "priorities are ignored" in warnings[0] and "llm-d router" in warnings[0]
            # The llm-d router's CRD (group llm-d.ai) is installed later.
            api.missing_plurals = {"inferenceobjectives.inference.networking.x-k8s.io"}
            api.put_objective("chat", POOL, 5)
            await wait_until(lambda: ds.objective("chat") is not None)
            assert ds.objective("chat").priority == 5  # type: ignore[union-attr]
            assert src.missing_crds() == ["inferenceobjectives.inference.networking.x-k8s.io"]
            assert any("served now" in r.getMessage() for r in caplog.records)
        finally:
            await src.stop()


async def test_objectives_prefer_llmd_group_over_legacy(api: FakeApiServer, tmp_path: Path) -> None:
    """The reference's rule: both groups installed -> llm-d.ai only; legacy only -> legacy."""
    api.put_pool_v1(POOL, LABELS, [8000])
    api.missing_plurals.add("inferenceobjectives.llm-d.ai")
    api.put_objective("legacy-only", POOL, 3, group=LEGACY)
    ds = Datastore()
    src = KubernetesSource(_options(api.write_kubeconfig(tmp_path / "kubeconfig")), ds,
                           missing_crd_retry_s=0.05)
    await src.start()
    try:
        await wait_until(lambda: ds.objective("legacy-only") is not None)
        api.missing_plurals.clear()  # the llm-d.ai CRD appears
        api.put_objective("new", POOL, 7)
        await wait_until(lambda: ds.objective("new") is not None and ds.objective("legacy-only") is None)
        assert ds.objective("new").priority == 7  # type: ignore[union-attr]
    finally:
        await src.stop()


async def test_both_objective_groups_installed_from_the_start_read_llmd_only(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """Both CRDs served from the first LIST: the legacy group's objects never count. The
    llm-d.ai reflector is served at once, so it never goes through a 404; its first LIST
    must still say so, or the legacy group stays active next to it."""
    api.put_pool_v1(POOL, LABELS, [8000])
    api.put_objective("legacy-only", POOL, 3, group=LEGACY)
    api.put_objective("new", POOL, 7)
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        assert ds.objective("new") is not None
        assert ds.objective("legacy-only") is None
        assert src.missing_crds() == []
        legacy_watch = src.stats()[f"inferenceobjectives.{LEGACY}"]
        events_before = legacy_watch.events
        api.put_objective("legacy-later", POOL, 1, group=LEGACY)
        api.put_objective("new-later", POOL, 2)
        await wait_until(lambda: ds.objective("new-later") is not None and legacy_watch.events > events_before)
        # The legacy watch delivered its event, and it stays ignored.
        assert ds.objective("legacy-later") is None and ds.objective("legacy-only") is None
    finally:
        await src.stop()


async def test_objective_updates_and_pool_moves(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1(POOL, LABELS, [8000])
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    try:
        api.put_objective("chat", POOL, 1)
        await wait_until(lambda: ds.objective("chat") is not None)
        api.put_objective("chat", POOL, 7)
        await wait_until(lambda: ds.objective("chat").priority == 7)  # type: ignore[union-attr]
        api.put_objective("chat", "another-pool", 7)
        await wait_until(lambda: ds.objective("chat") is None)
    finally:
        await src.stop()


async def test_pod_churn_while_reading_healthy_endpoints(api: FakeApiServer, tmp_path: Path) -> None:
    """Random pod churn plus watch disconnects and expiries; a reader never fails and the
    datastore converges to exactly the ready pods."""
    api.put_pool_v1(POOL, LABELS, [8000])
    ds = Datastore()
    src = await _started(api, tmp_path, ds)
    reads = 0
    stop_reader = asyncio.Event()

    async def reader() -> None:
        nonlocal reads
        while not stop_reader.is_set():
            for ep in ds.healthy_endpoints():
                assert ep.hostport.endswith(":8000") and ep.key.startswith("default/")
            reads += 1
            await asyncio.sleep(0)

    reader_task = asyncio.create_task(reader())
    pod_stats = src.stats()["pods"]
    rng = random.Random(7)
    ready: dict[str, bool] = {}
    try:
        for step in range(300):
            name = f"pod-{rng.randrange(25)}"
            action = rng.random()
            if action < 0.5:
                ready[name] = rng.random() < 0.7
                api.put_pod(name, f"10.1.0.{int(name.split('-')[1]) + 1}", LABELS, ready=ready[name])
            elif name in ready:
                api.delete_pod(name)
                del ready[name]
            if step == 100:
                api.disconnect_watches()
            if step == 200:
                api.expire_watches()
            if step % 10 == 0:
                await asyncio.sleep(0.005)
        want = {f"default/{n}" for n, r in ready.items() if r}
        await wait_until(lambda: _keys(ds) == want, timeout=15)
    finally:
        stop_reader.set()
        await reader_task  # re-raises anything the reader hit
        await src.stop()
    assert reads > 10
    assert pod_stats.expired >= 1
