"""InferenceModelRewrite: the API shape, parsed into frozen dataclasses (no I/O).

Confirmed against the API source (llm-d/llm-d-router apix/v1alpha2/inferencemodelrewrite_types.go
and config/crd/bases/llm-d.ai_inferencemodelrewrites.yaml; GIE's copy is the same type in
inference.networking.x-k8s.io/v1alpha2):

    apiVersion: llm-d.ai/v1alpha2            # or inference.networking.x-k8s.io/v1alpha2
    kind: InferenceModelRewrite
    metadata: {name: ..., creationTimestamp: ...}
    spec:
      poolRef: {group: inference.networking.k8s.io, kind: InferencePool, name: ...}   # required
      rules:                                 # required; the first matching rule is used
      - matches:                             # optional; empty or absent: matches every model
        - model: {type: Exact, value: llama}   # type: only "Exact" (the default)
        targets:                             # minItems 1
        - modelRewrite: llama-v1             # required
          weight: 90                         # optional, 1..1000000; set on all targets or none

Precedence (the API's "Timestamp Wins"): a rule that names the model exactly beats a generic
rule (no matches); among several, the rule of the oldest rewrite (creationTimestamp) wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KIND = "InferenceModelRewrite"
PLURAL = "inferencemodelrewrites"
VERSION = "v1alpha2"
# llm-d.ai is where the llm-d router ships the CRD; GIE's experimental group has the same type.
GROUPS = ("llm-d.ai", "inference.networking.x-k8s.io")
MATCH_TYPES = ("Exact",)
MAX_WEIGHT = 1_000_000


class RewriteError(ValueError):
    """A malformed InferenceModelRewrite; the message names the object and the field."""


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    model: str
    weight: int | None = None  # None: unweighted (all targets of the rule share equally)


@dataclass(frozen=True, slots=True)
class RewriteRule:
    matches: tuple[str, ...]  # exact model names; empty: every model
    targets: tuple[RewriteTarget, ...]

    @property
    def generic(self) -> bool:
        return not self.matches

    def weights(self) -> tuple[tuple[str, float], ...]:
        """(model, weight) per target; unweighted targets share equally (weight 1 each)."""
        return tuple((t.model, float(1 if t.weight is None else t.weight)) for t in self.targets)


@dataclass(frozen=True, slots=True)
class ModelRewrite:
    name: str
    namespace: str
    pool_name: str
    rules: tuple[RewriteRule, ...]
    created: str = ""  # metadata.creationTimestamp (RFC 3339 sorts as text); "" sorts first


def api_group(api_version: Any) -> str:
    return api_version.split("/", 1)[0] if isinstance(api_version, str) else ""


def parse_model_rewrite(doc: Mapping[str, Any], source: str = "") -> ModelRewrite:
    """One InferenceModelRewrite object (decoded YAML/JSON) -> ModelRewrite."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise RewriteError(f"{source}{KIND}: metadata.name is required")
    name = meta["name"]
    where = f"{source}{KIND} {name!r}"
    namespace = meta.get("namespace") or "default"
    created = meta.get("creationTimestamp") or ""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise RewriteError(f"{where}: spec is required")
    pool = spec.get("poolRef")
    if not isinstance(pool, dict) or not isinstance(pool.get("name"), str) or not pool["name"]:
        raise RewriteError(f"{where}: spec.poolRef.name is required")
    raw_rules = spec.get("rules")
    if not isinstance(raw_rules, list):
        raise RewriteError(f"{where}: spec.rules is required and must be a list")
    rules = tuple(_rule(r, f"{where}: spec.rules[{i}]") for i, r in enumerate(raw_rules))
    return ModelRewrite(name=name, namespace=str(namespace), pool_name=pool["name"], rules=rules,
                        created=str(created))


def _rule(raw: Any, where: str) -> RewriteRule:
    if not isinstance(raw, dict):
        raise RewriteError(f"{where}: must be a mapping with 'matches' and 'targets'")
    unknown = set(raw) - {"matches", "targets"}
    if unknown:
        raise RewriteError(f"{where}: unknown field(s) {sorted(unknown)} (known: matches, targets)")
    raw_matches = raw.get("matches") or []
    if not isinstance(raw_matches, list):
        raise RewriteError(f"{where}.matches: must be a list")
    matches: list[str] = []
    for i, m in enumerate(raw_matches):
        mw = f"{where}.matches[{i}].model"
        model = m.get("model") if isinstance(m, dict) else None
        if not isinstance(model, dict):
            raise RewriteError(f"{mw}: is required (a mapping with 'value')")
        match_type = model.get("type") or "Exact"
        if match_type not in MATCH_TYPES:
            raise RewriteError(f"{mw}.type: must be one of {list(MATCH_TYPES)}, got {match_type!r}")
        value = model.get("value")
        if not isinstance(value, str) or not value:
            raise RewriteError(f"{mw}.value: must be a non-empty string, got {value!r}")
        matches.append(value)
    raw_targets = raw.get("targets")
    if not isinstance(raw_targets, list) or not raw_targets:
        raise RewriteError(f"{where}.targets: must be a non-empty list")
    targets: list[RewriteTarget] = []
    for i, t in enumerate(raw_targets):
        tw = f"{where}.targets[{i}]"
        if not isinstance(t, dict):
            raise RewriteError(f"{tw}: must be a mapping with 'modelRewrite'")
        model_name = t.get("modelRewrite")
        if not isinstance(model_name, str) or not model_name:
            raise RewriteError(f"{tw}.modelRewrite: must be a non-empty string, got {model_name!r}")
        weight = t.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)
                                   or not 1 <= weight <= MAX_WEIGHT):
            raise RewriteError(f"{tw}.weight: must be an integer 1..{MAX_WEIGHT}, got {weight!r}")
        targets.append(RewriteTarget(model_name, weight))
    weighted = sum(t.weight is not None for t in targets)
    if 0 < weighted < len(targets):
        # The API: "If a weight is set for any targetModel, it must be set for all".
        raise RewriteError(f"{where}.targets: a weight is set on {weighted} of {len(targets)} targets; "
                           "set it on all targets or on none")
    return RewriteRule(tuple(matches), tuple(targets))


def rewrites_from_documents(docs: list[Any], source: str, pool_name: str = "") -> list[ModelRewrite]:
    """The InferenceModelRewrites among decoded manifest documents (other kinds are skipped);
    with `pool_name`, only those whose poolRef names that pool."""
    out: list[ModelRewrite] = []
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        if api_group(doc.get("apiVersion")) not in GROUPS:
            raise RewriteError(f"{source}document {i}: apiVersion: {KIND} must be in group "
                               f"{' or '.join(GROUPS)}, got {doc.get('apiVersion')!r}")
        rewrite = parse_model_rewrite(doc, source)
        if pool_name and rewrite.pool_name != pool_name:
            continue
        if rewrite.name in seen:
            raise RewriteError(f"{source}document {i}: {KIND} {rewrite.name!r} is defined twice")
        seen.add(rewrite.name)
        out.append(rewrite)
    return out
