from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.local import (
    LocalEndpointSource,
    LocalSourceError,
    endpoints_for_pool,
    load_endpoints_file,
    load_objectives,
    load_pool_manifest,
)

POOL_V1 = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: vllm-llama3-8b
  namespace: default
spec:
  selector:
    matchLabels:
      app: vllm-llama3-8b
  targetPorts:
    - number: 8000
  endpointPickerRef:
    name: vllm-llama3-8b-epp
    port:
      number: 9002
    failureMode: FailOpen
"""

POOL_V1ALPHA2 = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: legacy-pool
spec:
  targetPortNumber: 8001
  selector:
    app: vllm
  extensionRef:
    name: legacy-epp
    portNumber: 9102
"""

PODS = """
- {name: pod-a, ip: 127.0.0.1, labels: {app: vllm-llama3-8b, llm-d.ai/role: decode}}
- {name: pod-b, ip: 127.0.0.2, labels: {app: vllm-llama3-8b}}
- {name: pod-c, ip: 127.0.0.3, labels: {app: vllm-llama3-8b}, ready: false}
- {name: other, ip: 127.0.0.4, labels: {app: something-else}}
- {name: pod-d, namespace: elsewhere, ip: 127.0.0.5, labels: {app: vllm-llama3-8b}}
"""

OBJECTIVES = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: food-review
spec:
  priority: 10
  poolRef:
    name: vllm-llama3-8b
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: batch
spec:
  priority: -1
  poolRef:
    name: vllm-llama3-8b
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: legacy-chat
spec:
  modelName: chatbot
  criticality: Sheddable
  poolRef:
    name: vllm-llama3-8b
  targetModels:
    - {name: chatbot-v1, weight: 90}
    - {name: chatbot-v2, weight: 10}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: other-pool-objective
spec:
  priority: 3
  poolRef:
    name: another-pool
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_pool_v1(tmp_path: Path) -> None:
    pool = load_pool_manifest(write(tmp_path, "pool.yaml", POOL_V1))
    assert pool.name == "vllm-llama3-8b" and pool.namespace == "default"
    assert pool.selector == {"app": "vllm-llama3-8b"}
    assert pool.target_ports == (8000,)
    assert (pool.endpoint_picker_name, pool.endpoint_picker_port, pool.failure_mode) == (
        "vllm-llama3-8b-epp", 9002, "FailOpen")


def test_pool_v1alpha2_shape(tmp_path: Path) -> None:
    pool = load_pool_manifest(write(tmp_path, "pool.yaml", POOL_V1ALPHA2))
    assert pool.selector == {"app": "vllm"}
    assert pool.target_ports == (8001,)
    assert (pool.endpoint_picker_name, pool.endpoint_picker_port, pool.failure_mode) == (
        "legacy-epp", 9102, "FailClose")


def test_endpoints_match_selector_namespace_and_readiness(tmp_path: Path) -> None:
    pool = load_pool_manifest(write(tmp_path, "pool.yaml", POOL_V1))
    eps = endpoints_for_pool(pool, load_endpoints_file(write(tmp_path, "pods.yaml", PODS)))
    assert [(e.name, e.hostport) for e in eps] == [("pod-a", "127.0.0.1:8000"), ("pod-b", "127.0.0.2:8000")]
    assert eps[0].role.value == "decode"


def test_multiple_target_ports_give_one_endpoint_per_rank(tmp_path: Path) -> None:
    text = POOL_V1.replace("    - number: 8000", "    - number: 8000\n    - number: 8001")
    pool = load_pool_manifest(write(tmp_path, "pool.yaml", text))
    pods = load_endpoints_file(write(tmp_path, "pods.yaml", PODS))
    eps = endpoints_for_pool(pool, pods)
    assert [(e.key, e.port) for e in eps[:2]] == [
        ("default/pod-a-rank-0", 8000), ("default/pod-a-rank-1", 8001)]
    assert len(eps) == 4


def test_endpoints_file_as_mapping_and_json(tmp_path: Path) -> None:
    p = write(tmp_path, "pods.json", '{"pods": [{"name": "x", "ip": "::1", "labels": {"n": 1}}]}')
    (pod,) = load_endpoints_file(p)
    assert pod.ip == "::1" and pod.labels == {"n": "1"}


def test_objectives_and_legacy_models(tmp_path: Path) -> None:
    loaded = load_objectives(write(tmp_path, "obj.yaml", OBJECTIVES), "vllm-llama3-8b")
    objs = {o.model_name: o for o in loaded}
    assert set(objs) == {"food-review", "batch", "chatbot"}
    assert objs["food-review"].priority == 10 and objs["food-review"].pool_name == "vllm-llama3-8b"
    assert objs["batch"].priority == -1
    assert objs["chatbot"].priority == -1
    assert objs["chatbot"].target_models == (("chatbot-v1", 90), ("chatbot-v2", 10))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("  targetPorts:\n    - number: 8000\n", ""), "spec.targetPorts: missing"),
        (lambda t: t.replace("number: 8000", "number: 80000"), "spec.targetPorts[0].number: must be a port"),
        (lambda t: t.replace("number: 8000", "number: '8000'"), "spec.targetPorts[0].number"),
        (lambda t: t.replace("  targetPorts:\n    - number: 8000\n", "  targetPorts: []\n"),
         "spec.targetPorts: must be a non-empty list"),
        (lambda t: t.replace("FailOpen", "FailSometimes"),
         "spec.endpointPickerRef.failureMode: must be one of"),
        (lambda t: t.replace("    name: vllm-llama3-8b-epp\n", ""), "spec.endpointPickerRef.name"),
        (lambda t: t.replace("      number: 9002", "      number: 0"), "spec.endpointPickerRef.port.number"),
        (lambda t: t.replace("    matchLabels:\n      app: vllm-llama3-8b\n", "    matchLabels: {}\n"),
         "spec.selector: must select at least one label"),
        (lambda t: t.replace("  selector:\n    matchLabels:\n      app: vllm-llama3-8b\n", ""),
         "spec.selector: missing"),
        (lambda t: t.replace("  name: vllm-llama3-8b\n", ""), "metadata.name"),
        (lambda t: t.replace("inference.networking.k8s.io/v1", "example.com/v1"), "apiVersion"),
        (lambda t: t.replace("kind: InferencePool", "kind: Service"), "no InferencePool found"),
        (lambda t: t + "  bad: [unclosed\n", "invalid YAML"),
        (lambda t: t + "---\n" + t.replace("name: vllm-llama3-8b\n", "name: second\n", 1),
         "several InferencePools"),
    ],
)
def test_pool_errors_name_file_and_field(tmp_path: Path, edit: object, message: str) -> None:
    p = write(tmp_path, "pool.yaml", edit(textwrap.dedent(POOL_V1)))  # type: ignore[operator]
    with pytest.raises(LocalSourceError) as err:
        load_pool_manifest(p)
    assert str(p) in str(err.value)
    assert message in str(err.value)


def test_missing_file_error(tmp_path: Path) -> None:
    with pytest.raises(LocalSourceError, match=r"nope\.yaml: cannot read"):
        load_pool_manifest(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a}", "pods[0].ip: must be a non-empty string"),
        ("- {ip: 1.2.3.4}", "pods[0].name"),
        ("- {name: a, ip: 1.2.3.4, ready: 'yes'}", "pods[0].ready: must be true or false"),
        ("- {name: a, ip: 1.2.3.4, labels: [x]}", "pods[0].labels: must be a mapping"),
        ("- {name: a, ip: 1.2.3.4, rank: 3}", "pods[0]: unknown field(s) ['rank']"),
        ("- {name: a, ip: 1.2.3.4}\n- {name: a, ip: 1.2.3.5}", "pods[1].name: duplicate pod default/a"),
        ("{nodes: []}", "pods: missing"),
        ("just a string", "pods: must be a list"),
        ("- 3", "pods[0]: must be a mapping"),
    ],
)
def test_endpoints_file_errors(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, "pods.yaml", text)
    with pytest.raises(LocalSourceError) as err:
        load_endpoints_file(p)
    assert str(p) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("priority: 10", "priority: high"),
         "InferenceObjective 'food-review': spec.priority"),
        (lambda t: t.replace("criticality: Sheddable", "criticality: Meh"),
         "spec.criticality: must be one of"),
        (lambda t: t.replace("  modelName: chatbot\n", ""), "InferenceModel 'legacy-chat': spec.modelName"),
        (lambda t: t.replace("weight: 90", "weight: -1"), "spec.targetModels[0].weight"),
        (lambda t: t.replace("- {name: chatbot-v1, weight: 90}", "- {weight: 90}"),
         "spec.targetModels[0].name"),
        (lambda t: t.replace("  poolRef:\n    name: vllm-llama3-8b\n", "  poolRef: {}\n", 1),
         "spec.poolRef.name"),
        (lambda t: t.replace("name: batch", "name: food-review"), "already used by 'food-review'"),
        (lambda t: t.replace("x-k8s.io/v1alpha2\nkind: InferenceObjective",
         "k8s.io/v1\nkind: InferenceObjective", 1),
         "apiVersion"),
    ],
)
def test_objective_errors(tmp_path: Path, edit: object, message: str) -> None:
    p = write(tmp_path, "obj.yaml", edit(textwrap.dedent(OBJECTIVES)))  # type: ignore[operator]
    with pytest.raises(LocalSourceError) as err:
        load_objectives(p, "vllm-llama3-8b")
    assert str(p) in str(err.value) and message in str(err.value)


def _bump_mtime(p: Path) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


async def test_source_syncs_and_watches(tmp_path: Path) -> None:
    pool_p = write(tmp_path, "pool.yaml", POOL_V1)
    pods_p = write(tmp_path, "pods.yaml", PODS)
    obj_p = write(tmp_path, "obj.yaml", OBJECTIVES)
    ds = Datastore()
    events: list[tuple[str, str]] = []
    ds.add_listener(lambda ev, ep: events.append((ev, ep.name)))
    source = LocalEndpointSource(ds, pool_p, pods_p, [obj_p], poll_interval=0.01)
    await source.start()
    try:
        assert ds.pool_synced() and ds.pool is not None and ds.pool.name == "vllm-llama3-8b"
        assert sorted(e.name for e in ds.endpoints()) == ["pod-a", "pod-b"]
        assert ds.objective("chatbot") is not None
        pod_a = ds.get("default/pod-a")
        assert pod_a is not None
        pod_a.metrics.waiting_queue_size = 7

        # pod-b leaves, pod-c becomes ready, pod-a gets a new label (object and metrics kept)
        pods_p.write_text(textwrap.dedent("""
            - {name: pod-a, ip: 127.0.0.1, labels: {app: vllm-llama3-8b, zone: a}}
            - {name: pod-c, ip: 127.0.0.3, labels: {app: vllm-llama3-8b}}
        """))
        _bump_mtime(pods_p)
        for _ in range(200):
            if sorted(e.name for e in ds.endpoints()) == ["pod-a", "pod-c"]:
                break
            await asyncio.sleep(0.01)
        assert sorted(e.name for e in ds.endpoints()) == ["pod-a", "pod-c"]
        assert ds.get("default/pod-a") is pod_a and pod_a.labels["zone"] == "a"
        assert pod_a.metrics.waiting_queue_size == 7
        assert ("removed", "pod-b") in events and ("added", "pod-c") in events

        # a broken edit keeps the last good state and records the error
        obj_p.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\n"
                         "metadata: {name: x}\nspec: {criticality: Critical}\n")
        _bump_mtime(obj_p)
        for _ in range(200):
            if source.last_error:
                break
            await asyncio.sleep(0.01)
        assert source.last_error is not None and "spec.modelName" in source.last_error
        assert ds.objective("chatbot") is not None

        # fixing it removes objectives no longer listed
        obj_p.write_text(textwrap.dedent(OBJECTIVES).split("---")[0])
        _bump_mtime(obj_p)
        for _ in range(200):
            if ds.objective("chatbot") is None:
                break
            await asyncio.sleep(0.01)
        assert [o.model_name for o in ds.objectives()] == ["food-review"]
        assert source.last_error is None
    finally:
        await source.stop()


async def test_source_start_raises_on_invalid_files(tmp_path: Path) -> None:
    pool_p = write(tmp_path, "pool.yaml", POOL_V1.replace("FailOpen", "Nope"))
    source = LocalEndpointSource(Datastore(), pool_p, write(tmp_path, "pods.yaml", PODS))
    with pytest.raises(LocalSourceError, match="failureMode"):
        await source.start()


def test_pod_port_overrides_target_ports_for_local_stacks(tmp_path: Path) -> None:
    text = POOL_V1.replace("    - number: 8000", "    - number: 8000\n    - number: 8001")
    pool = load_pool_manifest(write(tmp_path, "pool.yaml", text))
    pods = load_endpoints_file(write(tmp_path, "pods.yaml", """
        - {name: sim-0, ip: 127.0.0.1, port: 18000, labels: {app: vllm-llama3-8b}}
        - {name: sim-1, ip: 127.0.0.1, port: 18001, labels: {app: vllm-llama3-8b}}
    """))
    eps = endpoints_for_pool(pool, pods)
    assert [(e.key, e.hostport) for e in eps] == [
        ("default/sim-0", "127.0.0.1:18000"), ("default/sim-1", "127.0.0.1:18001")]
    with pytest.raises(LocalSourceError, match=r"pods\[0\]\.port: must be a port number"):
        load_endpoints_file(write(tmp_path, "bad.yaml", "- {name: a, ip: 127.0.0.1, port: 0}"))
