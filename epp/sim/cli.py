"""`epp sim`: serve one or more simulated vLLM pods from one process.

    python -m epp sim --host 127.0.0.1 --port 8001 --port 8002 --time-scale 0.1 \
        --kv-events-endpoint 'tcp://127.0.0.1:{port+1000}' --kv-events-bind

`--config FILE.yaml` gives defaults and per-pod overrides (same keys as the flags, with '_'):

    defaults: {time_scale: 0.1, num_gpu_blocks: 2048}
    pods:
      - {port: 8001, name: pod-a, role: prefill}
      - {port: 8002, name: pod-b, role: decode, faults: {error_rate: 0.1}}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

import yaml

from epp.prefixcache.block_hash import HASH_ALGOS
from epp.sim.cluster import start_pods
from epp.sim.config import ENGINES, ROLES, SCHEDULING_POLICIES, SimPodConfig, apply_overrides

log = logging.getLogger("epp.sim")


def _lora_module(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora-modules expects name=path, got {value!r}")
    return name, path


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="run simulated vLLM model servers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, action="append", default=None, help="one pod per --port (repeatable)")
    p.add_argument("--name", action="append", default=None, help="pod names, in --port order")
    p.add_argument("--config", help="YAML file with `defaults` and per-pod `pods` overrides")
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--lora-modules", nargs="+", type=_lora_module, default=None, metavar="NAME=PATH")
    p.add_argument("--max-loras", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--scheduling-policy", choices=SCHEDULING_POLICIES,
                   help="as vLLM: fcfs (default; a non-zero request `priority` is a 400) or priority "
                        "(waiting requests by (priority, arrival), lower priority value first)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--default-max-tokens", type=int)
    p.add_argument("--num-gpu-blocks", "--num-gpu-blocks-override", dest="num_gpu_blocks", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--prefix-caching-hash-algo", choices=HASH_ALGOS)
    p.add_argument("--hash-seed", help="NONE_HASH seed (default as vLLM: $PYTHONHASHSEED, else a fixed "
                   "seed for sha256*, random per process for xxhash*)")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="the model's tokenizer directory (tokenizer.json + tokenizer_config.json): token ids, "
                        "block hashes and KV events then equal a real vLLM's; default 'simple', a fallback "
                        "that matches no real model")
    p.add_argument("--kv-events-endpoint", help="ZMQ endpoint template, e.g. tcp://127.0.0.1:{port+1000}")
    p.add_argument(
        "--kv-events-bind",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bind (default: vLLM's rule: bind only for '*', '::', ipc://, inproc://)",
    )
    p.add_argument("--kv-events-replay-endpoint", help="ZMQ ROUTER endpoint template for replay")
    p.add_argument("--kv-events-topic", help="topic; may use {pod} {model} {host} {port}")
    p.add_argument(
        "--kv-events-int-hashes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="uint64 block hashes in events (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES, default on)",
    )
    p.add_argument("--kv-events-format", choices=("map", "array"),
                   help="event shape: map (vLLM since #42892, default) or array (older vLLM)")
    p.add_argument("--role", choices=ROLES)
    p.add_argument("--engine", choices=ENGINES,
                   help="personality: vllm (default) or sglang (SGLang's metric names, owned_by and error bodies)")
    p.add_argument("--output-len-dist", help="'uniform:LO:HI' or 'exp:MEAN' (default: always max_tokens)")
    p.add_argument("--seed", type=int)
    lat = p.add_argument_group("latency model (model milliseconds)")
    lat.add_argument("--time-scale", type=float, help="multiply all sleeps (0.1 = 10x faster)")
    lat.add_argument("--frontend-overhead-ms", type=float)
    lat.add_argument("--step-base-ms", type=float)
    lat.add_argument("--decode-per-seq-ms", type=float)
    lat.add_argument("--prefill-per-token-ms", type=float)
    lat.add_argument("--kv-transfer-per-token-ms", type=float)
    lat.add_argument("--jitter", type=float)
    lat.add_argument("--slowdown", type=float)
    faults = p.add_argument_group("fault injection (also: POST /sim/faults)")
    faults.add_argument("--error-rate", type=float)
    faults.add_argument("--error-status", type=int)
    faults.add_argument("--error-models", nargs="+", metavar="MODEL",
                        help="inject --error-rate only into requests for these models (e.g. a canary)")
    faults.add_argument("--slow-models", nargs="+", metavar="MODEL",
                        help="delay requests for these models by --slow-models-delay-s")
    faults.add_argument("--slow-models-delay-s", type=float)
    faults.add_argument("--startup-delay-s", type=float)
    faults.add_argument("--hang-requests", action="store_true", default=None)
    faults.add_argument("--hang-health", action="store_true", default=None)
    faults.add_argument("--crash-after-requests", type=int)
    faults.add_argument("--metrics-error-rate", type=float)
    faults.add_argument("--metrics-hang", action="store_true", default=None)
    faults.add_argument("--metrics-garbage", action="store_true", default=None)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


_NOT_SETTINGS = {"command", "func", "config", "port", "name", "log_level"}


def build_configs(args: argparse.Namespace) -> list[SimPodConfig]:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    if "lora_modules" in flags:
        flags["lora_modules"] = dict(flags["lora_modules"])
    base = apply_overrides(SimPodConfig(), flags, "command line")
    pod_specs: list[dict[str, Any]] = []
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{args.config}: expected a mapping with 'defaults' and 'pods'")
        base = apply_overrides(base, doc.get("defaults") or {}, f"{args.config}: defaults")
        for i, spec in enumerate(doc.get("pods") or []):
            if not isinstance(spec, dict):
                raise ValueError(f"{args.config}: pods[{i}] must be a mapping")
            pod_specs.append(spec)
    names = args.name or []
    for i, port in enumerate(args.port or []):
        pod_specs.append({"port": port, **({"name": names[i]} if i < len(names) else {})})
    if not pod_specs:
        pod_specs.append({"port": 8000})
    return [apply_overrides(base, spec, f"pod {spec.get('name') or spec.get('port')}") for spec in pod_specs]


async def serve(configs: list[SimPodConfig]) -> None:
    cluster = await start_pods(configs, exit_on_crash=len(configs) == 1)
    for pod in cluster:
        log.info(
            "pod %s: %s model=%s role=%s kv-events=%s",
            pod.name,
            pod.url,
            pod.config.model_names[0],
            pod.config.role,
            pod.kv_events_endpoint,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cluster.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        configs = build_configs(args)
    except (ValueError, OSError, yaml.YAMLError) as e:
        log.error("invalid simulator configuration: %s", e)
        return 2
    asyncio.run(serve(configs))
    return 0
