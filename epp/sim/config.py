"""Configuration of one simulated vLLM pod: engine shape, latency model and faults.

Defaults model one Llama-3.1-8B-Instruct replica (bf16) on one H100-80GB with vLLM v1; see
docs/simulator.md for how each number was chosen.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from epp.prefixcache.block_hash import DEFAULT_HASH_ALGO, HASH_ALGOS

ROLES = ("prefill", "decode", "both")
SCHEDULING_POLICIES = ("fcfs", "priority")  # vLLM --scheduling-policy (sjf: not simulated)
# Which model server the pod pretends to be: metric names, /v1/models owned_by, error bodies.
ENGINES = ("vllm", "sglang")


@dataclass(slots=True)
class LatencyModel:
    """Per-engine-step cost model, in model (unscaled) milliseconds.

    step = step_base_ms + decode_per_seq_ms * decoding_seqs + prefill_per_token_ms * new_prefill_tokens
           + kv_transfer_per_token_ms * tokens_pulled_from_a_prefill_pod
    and each request additionally pays `frontend_overhead_ms` (HTTP, tokenization, detokenize)
    before it reaches the engine queue. `jitter` is a relative +/- uniform noise per step.
    `time_scale` multiplies every sleep (0.1 runs 10x faster); reported latency metrics are
    divided back, so /metrics shows model time.
    """

    frontend_overhead_ms: float = 4.0
    step_base_ms: float = 6.5
    decode_per_seq_ms: float = 0.07
    prefill_per_token_ms: float = 0.055
    kv_transfer_per_token_ms: float = 0.006
    jitter: float = 0.0
    time_scale: float = 1.0
    slowdown: float = 1.0  # extra multiplier, e.g. to model a degraded GPU


@dataclass(slots=True)
class FaultConfig:
    """Injected faults; all can also be changed at run time with POST /sim/faults."""

    error_rate: float = 0.0  # fraction of inference requests answered with `error_status`
    error_status: int = 500
    # Only requests for these model names (base or LoRA) get `error_rate`; empty: all. A
    # canary model served beside the stable one can fail while the stable one stays healthy.
    error_models: list[str] = field(default_factory=list)
    # Requests for these models wait `slow_models_delay_s` (wall clock, not time-scaled) before
    # the engine sees them: a canary with a slower first token.
    slow_models: list[str] = field(default_factory=list)
    slow_models_delay_s: float = 0.0
    startup_delay_s: float = 0.0  # /health answers 503 (and inference 503) for this long
    hang_requests: bool = False  # inference requests never complete
    hang_health: bool = False  # /health never answers
    crash_after_requests: int = 0  # >0: the pod "crashes" after this many inference requests
    metrics_error_rate: float = 0.0  # fraction of /metrics scrapes answered 500
    metrics_hang: bool = False  # /metrics never answers
    metrics_garbage: bool = False  # /metrics returns unparsable text

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, key)
            if isinstance(current, list):
                if isinstance(value, str):
                    value = [v for v in value.split(",") if v]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"fault {key!r} must be a list of strings")
                value = list(value)
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"fault {key!r} must be a boolean")
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"fault {key!r} must be an integer")
            elif isinstance(current, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"fault {key!r} must be a number")
                value = float(value)
            setattr(self, key, value)


@dataclass(slots=True)
class SimPodConfig:
    """Everything that defines one simulated pod (flags mirror vLLM's where they exist)."""

    name: str = ""
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    served_model_name: list[str] = field(default_factory=list)  # default: [model]
    lora_modules: dict[str, str] = field(default_factory=dict)  # name -> path
    max_loras: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # vLLM's --scheduling-policy: "fcfs" (a non-zero request `priority` is a 400) or "priority"
    # (waiting queue by (priority, arrival), lower first; KV-pressure preemption takes the
    # running request with the largest (priority, arrival)).
    scheduling_policy: str = "fcfs"
    max_model_len: int = 8192
    default_max_tokens: int = 128  # used when a request has no max_tokens (vLLM: max_model_len - prompt)
    num_gpu_blocks: int = 24_000
    block_size: int = 16
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: str = DEFAULT_HASH_ALGO
    hash_seed: str | None = None  # NONE_HASH seed; default as vLLM (block_hash.process_seed)
    tokenizer: str = "simple"
    kv_events_endpoint: str | None = None  # e.g. tcp://127.0.0.1:{port+1000}
    kv_events_bind: bool | None = None  # None: vLLM's rule (bind if '*', '::', ipc:// or inproc://)
    kv_events_replay_endpoint: str | None = None
    kv_events_topic: str = ""
    kv_events_int_hashes: bool = True  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES
    # "map": events tagged by "type" (vLLM since #42892); "array": the older positional form.
    kv_events_format: str = "map"
    role: str = "both"
    engine: str = "vllm"  # personality: vllm | sglang (ENGINES)
    output_len_dist: str | None = None  # None: always max_tokens; "uniform:LO:HI" or "exp:MEAN"
    seed: int = 0
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def validate(self) -> None:
        if self.kv_events_format not in ("map", "array"):
            raise ValueError(f"kv_events_format must be 'map' or 'array', got {self.kv_events_format!r}")
        checks = [
            (self.role in ROLES, f"role must be one of {ROLES}, got {self.role!r}"),
            (self.engine in ENGINES, f"engine must be one of {ENGINES}, got {self.engine!r}"),
            (
                self.prefix_caching_hash_algo in HASH_ALGOS,
                f"prefix_caching_hash_algo must be one of {HASH_ALGOS}",
            ),
            (self.tokenizer == "simple" or os.path.isfile(os.path.join(self.tokenizer, "tokenizer.json"))
             or (self.tokenizer.endswith("tokenizer.json") and os.path.isfile(self.tokenizer)),
             f"tokenizer must be 'simple' or a directory holding tokenizer.json, got {self.tokenizer!r}"),
            (self.block_size >= 1, "block_size must be >= 1"),
            (self.num_gpu_blocks >= 1, "num_gpu_blocks must be >= 1"),
            (self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1"),
            (self.max_loras >= 1, "max_loras must be >= 1"),
            (self.scheduling_policy in SCHEDULING_POLICIES,
             f"scheduling_policy must be one of {SCHEDULING_POLICIES}, got {self.scheduling_policy!r}"),
            (self.latency.time_scale > 0, "time_scale must be > 0"),
            (0 <= self.port <= 65535, f"port out of range: {self.port}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"sim pod {self.name or self.port}: {message}")
        parse_output_len_dist(self.output_len_dist)

    @property
    def model_names(self) -> list[str]:
        return self.served_model_name or [self.model]


def parse_output_len_dist(spec: str | None) -> tuple[str, float, float] | None:
    """'uniform:LO:HI' -> ('uniform', LO, HI); 'exp:MEAN' -> ('exp', MEAN, 0)."""
    if spec is None or spec in ("", "max"):
        return None
    parts = spec.split(":")
    try:
        if parts[0] == "uniform" and len(parts) == 3:
            lo, hi = float(parts[1]), float(parts[2])
            if 1 <= lo <= hi:
                return ("uniform", lo, hi)
        elif parts[0] == "exp" and len(parts) == 2 and float(parts[1]) > 0:
            return ("exp", float(parts[1]), 0.0)
    except ValueError:
        pass
    raise ValueError(f"bad output length distribution {spec!r}; expected 'uniform:LO:HI' or 'exp:MEAN'")


_PORT_EXPR = re.compile(r"\{port([+-]\d+)?\}")


def expand_port_template(template: str, port: int) -> str:
    """'tcp://127.0.0.1:{port+1000}' -> 'tcp://127.0.0.1:9001' for port 8001."""
    return _PORT_EXPR.sub(lambda m: str(port + int(m.group(1) or 0)), template)


def apply_overrides(config: SimPodConfig, overrides: dict[str, Any], where: str = "override") -> SimPodConfig:
    """A copy of `config` with `overrides` applied; nested keys `latency` / `faults` are merged.

    Latency and fault fields may also be given flat (e.g. `time_scale: 0.1`).
    """
    new = dataclasses.replace(
        config,
        latency=dataclasses.replace(config.latency),
        faults=dataclasses.replace(config.faults, error_models=list(config.faults.error_models),
                                   slow_models=list(config.faults.slow_models)),
        served_model_name=list(config.served_model_name),
        lora_modules=dict(config.lora_modules),
    )
    top = {f.name for f in dataclasses.fields(SimPodConfig)}
    lat = {f.name for f in dataclasses.fields(LatencyModel)}
    flt = {f.name for f in dataclasses.fields(FaultConfig)}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key == "latency" and isinstance(value, dict):
            for k, v in value.items():
                if k not in lat:
                    raise ValueError(f"{where}: unknown latency field {k!r}")
                setattr(new.latency, k, float(v))
        elif key == "faults" and isinstance(value, dict):
            new.faults.update(value)
        elif key in lat:
            setattr(new.latency, key, float(value))
        elif key in flt:
            new.faults.update({key: value})
        elif key in top:
            if key == "served_model_name" and isinstance(value, str):
                value = [value]
            setattr(new, key, value)
        else:
            raise ValueError(f"{where}: unknown simulator setting {key!r}")
    new.validate()
    return new
