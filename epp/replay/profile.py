"""The simulator profile of a replay: how the simulated pods behave (`--sim-profile FILE`).

An operator models their own GPUs with the simulator's settings (epp/sim/config.py: the
latency model, KV-cache size, batch limits; docs/simulator.md explains each), for every pod
and optionally per pod, keyed by the recorded hostport or by the pod's index in the trace:

    # sim-profile.yaml
    latency:                 # model milliseconds per engine step (epp/sim/config.py LatencyModel)
      step_base_ms: 6.5
      decode_per_seq_ms: 0.07
      prefill_per_token_ms: 0.055
    num_gpu_blocks: 24000
    max_num_seqs: 256
    scrape_interval_s: 0.05  # how stale the EPP's view of the pods is (epp serve --scrape-interval)
    pods:
      "10.0.0.7:8000": {slowdown: 2.0}   # an older GPU
      3: {num_gpu_blocks: 8000}

Unknown settings are refused naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.sim.config import SimPodConfig, apply_overrides

PROFILE_KEYS = ("pods", "scrape_interval_s")


class ProfileError(ValueError):
    pass


@dataclass(slots=True)
class SimProfile:
    defaults: dict[str, Any] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # hostport or index -> overrides
    scrape_interval_s: float = 0.05
    source: str = "<simulator defaults>"

    def pod_config(self, index: int, hostport: str) -> SimPodConfig:
        base = apply_overrides(SimPodConfig(), self.defaults, f"{self.source}")
        own = self.pods.get(hostport, self.pods.get(str(index)))
        config = base if own is None else apply_overrides(base, own, f"{self.source}: pods.{hostport}")
        config.name = hostport
        return config

    @classmethod
    def load(cls, path: Path | None) -> SimProfile:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ProfileError(f"{path}: cannot read the simulator profile: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ProfileError(f"{path}: not valid YAML: {e}") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "<profile>") -> SimProfile:
        if not isinstance(raw, dict):
            raise ProfileError(f"{source}: the simulator profile must be a mapping")
        pods_raw = raw.get("pods") or {}
        if not isinstance(pods_raw, dict) or not all(isinstance(v, dict) for v in pods_raw.values()):
            raise ProfileError(f"{source}: field 'pods' must map a hostport or pod index to settings")
        interval = raw.get("scrape_interval_s", 0.05)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ProfileError(f"{source}: field 'scrape_interval_s' must be a number > 0, got {interval!r}")
        profile = cls(defaults={k: v for k, v in raw.items() if k not in PROFILE_KEYS},
                      pods={str(k): dict(v) for k, v in pods_raw.items()},
                      scrape_interval_s=float(interval), source=source)
        try:  # validate now, not halfway through a replay
            profile.pod_config(0, "check:0")
            for key in profile.pods:
                profile.pod_config(-1, key)
        except (ValueError, TypeError) as e:
            raise ProfileError(str(e)) from None
        return profile
