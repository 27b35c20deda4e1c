"""InferenceModelRewrite parsing and the store's precedence, against the API's documented
examples (llm-d-router site docs / GIE site-src/api-types/inferencemodelrewrite.md)."""

from __future__ import annotations

import pytest
import yaml

from epp.rollout.api import RewriteError, parse_model_rewrite, rewrites_from_documents
from epp.rollout.store import RewriteStore

CANARY = """
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: canary, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  poolRef: {group: inference.networking.k8s.io, name: pool}
  rules:
  - matches:
    - model: {type: Exact, value: llama}
    targets:
    - {modelRewrite: llama-v1, weight: 90}
    - {modelRewrite: llama-v2, weight: 10}
"""

GENERIC = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: fallback, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  poolRef: {name: pool}
  rules:
  - targets:
    - modelRewrite: base
"""


def _doc(text: str) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def test_parses_the_documented_canary_shape() -> None:
    rw = parse_model_rewrite(_doc(CANARY))
    assert rw.name == "canary" and rw.pool_name == "pool"
    (rule,) = rw.rules
    assert rule.matches == ("llama",)
    assert rule.weights() == (("llama-v1", 90.0), ("llama-v2", 10.0))


def test_unweighted_targets_share_equally_and_no_matches_is_generic() -> None:
    rule = parse_model_rewrite(_doc(GENERIC)).rules[0]
    assert rule.generic and rule.weights() == (("base", 1.0),)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["spec"].pop("poolRef"), "spec.poolRef.name is required"),
    (lambda s: s["spec"]["rules"][0]["targets"][1].pop("weight"), "set it on all targets or on none"),
    (lambda s: s["spec"]["rules"][0]["matches"][0]["model"].update(type="Prefix"), "type: must be one of"),
    (lambda s: s["spec"]["rules"][0]["targets"][0].update(weight=0), "weight: must be an integer 1..1000000"),
    (lambda s: s["spec"]["rules"][0].update(targets=[]), "targets: must be a non-empty list"),
    (lambda s: s["spec"]["rules"][0]["targets"][0].pop("modelRewrite"), "modelRewrite: must be a non-empty"),
    (lambda s: s["spec"]["rules"][0].update(match=[]), "unknown field(s) ['match']"),
])
def test_invalid_objects_name_object_and_field(mutate, message) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(CANARY)
    mutate(doc)
    with pytest.raises(RewriteError) as e:
        parse_model_rewrite(doc, "f.yaml: ")
    assert "f.yaml: InferenceModelRewrite 'canary'" in str(e.value) and message in str(e.value)


def test_documents_filter_kind_group_and_pool() -> None:
    other_pool = _doc(CANARY)
    other_pool["metadata"]["name"] = "elsewhere"
    other_pool["spec"]["poolRef"]["name"] = "other"
    objective = {"apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceObjective", "metadata": {"name": "x"}}
    got = rewrites_from_documents([_doc(CANARY), objective, other_pool, _doc(GENERIC)], "f: ", "pool")
    assert [r.name for r in got] == ["canary", "fallback"]
    bad = _doc(CANARY)
    bad["apiVersion"] = "example.com/v1"
    with pytest.raises(RewriteError, match=r"must be in group llm-d\.ai or inference\.networking\.x-k8s\.io"):
        rewrites_from_documents([bad], "f: ")


def test_store_exact_beats_generic_and_oldest_wins() -> None:
    store = RewriteStore()
    store.set(parse_model_rewrite(_doc(GENERIC)))
    store.set(parse_model_rewrite(_doc(CANARY)))
    exact = store.rule("llama")
    assert exact is not None and exact.rewrite.name == "canary"  # exact wins though younger
    generic = store.rule("anything")
    assert generic is not None and generic.rewrite.name == "fallback"
    newer = _doc(CANARY)
    newer["metadata"].update(name="newer", creationTimestamp="2026-03-01T00:00:00Z")
    older = _doc(CANARY)
    older["metadata"].update(name="older", creationTimestamp="2025-12-01T00:00:00Z")
    store.set(parse_model_rewrite(newer))
    assert store.rule("llama").rewrite.name == "canary"  # type: ignore[union-attr]
    store.set(parse_model_rewrite(older))
    assert store.rule("llama").rewrite.name == "older"  # type: ignore[union-attr]
    store.delete("older")
    store.delete("canary")
    assert store.rule("llama").rewrite.name == "newer"  # type: ignore[union-attr]
    store.replace_all([])
    assert store.rule("llama") is None and len(store) == 0
