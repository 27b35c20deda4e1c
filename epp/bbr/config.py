"""The BBR's configuration: which pools sit behind the gateway and how to learn their models.

    # epp bbr --config bbr.yaml
    pools:
      - name: pool-a                  # one InferencePool (its own EPP and HTTPRoute rule)
        endpointsFile: pool-a/endpoints.yaml   # ask its pods' GET /v1/models (local mode)
      - name: pool-b
        models:                       # or a static list (e.g. from a ConfigMap)
          - {id: Qwen/Qwen2.5-7B-Instruct, ownedBy: sglang}
    refreshSeconds: 5

Loaded once at start and validated: errors name the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class BbrConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StaticModel:
    id: str
    owned_by: str


@dataclass(frozen=True, slots=True)
class PoolModels:
    """One pool: its models come from its pods (endpoints_file) or from a static list."""

    name: str
    endpoints_file: Path | None = None
    models: tuple[StaticModel, ...] = ()


@dataclass(frozen=True, slots=True)
class BbrConfig:
    pools: tuple[PoolModels, ...]
    refresh_s: float = 5.0
    # A pod's /v1/models answer must come within this many seconds.
    fetch_timeout_s: float = 1.0


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BbrConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def parse_config(raw: Any, source: str, base_dir: Path | None = None) -> BbrConfig:
    if not isinstance(raw, dict):
        raise BbrConfigError(f"{source}: expected a mapping with 'pools'")
    unknown = set(raw) - {"pools", "refreshSeconds", "fetchTimeoutSeconds"}
    if unknown:
        raise BbrConfigError(f"{source}: unknown field(s) {sorted(unknown)} "
                             "(known: pools, refreshSeconds, fetchTimeoutSeconds)")
    entries = raw.get("pools")
    if not isinstance(entries, list) or not entries:
        raise BbrConfigError(f"{source}: pools: must be a non-empty list")
    pools: list[PoolModels] = []
    for i, entry in enumerate(entries):
        where = f"{source}: pools[{i}]"
        if not isinstance(entry, dict):
            raise BbrConfigError(f"{where}: must be a mapping")
        bad = set(entry) - {"name", "endpointsFile", "models"}
        if bad:
            raise BbrConfigError(f"{where}: unknown field(s) {sorted(bad)} (known: name, endpointsFile, models)")
        name = _str(entry.get("name"), f"{where}.name")
        if name in {p.name for p in pools}:
            raise BbrConfigError(f"{where}.name: pool {name!r} listed twice")
        endpoints: Path | None = None
        if entry.get("endpointsFile") is not None:
            endpoints = Path(_str(entry["endpointsFile"], f"{where}.endpointsFile"))
            if base_dir is not None and not endpoints.is_absolute():
                endpoints = base_dir / endpoints
        models: list[StaticModel] = []
        for j, m in enumerate(entry.get("models") or []):
            mwhere = f"{where}.models[{j}]"
            if not isinstance(m, dict) or set(m) - {"id", "ownedBy"}:
                raise BbrConfigError(f"{mwhere}: expected {{id, ownedBy}}, got {m!r}")
            models.append(StaticModel(_str(m.get("id"), f"{mwhere}.id"),
                                      _str(m.get("ownedBy", "unknown"), f"{mwhere}.ownedBy")))
        if (endpoints is None) == (not models):
            raise BbrConfigError(f"{where}: give exactly one of endpointsFile (ask the pods) or models (static)")
        pools.append(PoolModels(name, endpoints, tuple(models)))
    refresh = raw.get("refreshSeconds", 5.0)
    timeout = raw.get("fetchTimeoutSeconds", 1.0)
    for key, value in (("refreshSeconds", refresh), ("fetchTimeoutSeconds", timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BbrConfigError(f"{source}: {key}: must be a number > 0, got {value!r}")
    return BbrConfig(tuple(pools), float(refresh), float(timeout))


def load_config(path: Path) -> BbrConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BbrConfigError(f"{path}: {e}") from None
    return parse_config(raw, str(path), path.parent)
