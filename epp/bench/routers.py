"""The routers compared by the benchmark and how to start each in front of fresh pods.

Every row gets its own fresh simulated pods (started by the local stack), so every router
sees identical, cold pods: empty prefix caches, no adapter loaded, empty queues.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import yaml

from epp.bench.envoy_configs import lb_envoy_config, to_yaml
from epp.localstack.stack import (
    REPO,
    LocalStack,
    StackConfig,
    StackError,
    envoy_binary,
    free_ports,
    stop_process_group,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

RouterKind = Literal["envoy", "vllm-router", "epp"]
GIE_DEFAULT_NAME = "gie-default.yaml"
# Where the project ships GIE's default config (looked up, not assumed: its home is the
# config package's choice).
_GIE_DEFAULT_DIRS = ("epp/config", "epp/config/defaults", "deploy", "deploy/local", "config")


def gie_default_config() -> Path | None:
    for folder in _GIE_DEFAULT_DIRS:
        path = REPO / folder / GIE_DEFAULT_NAME
        if path.is_file():
            return path
    found = sorted((REPO / "epp").rglob(GIE_DEFAULT_NAME))
    return found[0] if found else None


def epp_config_path(spec: RouterSpec) -> Path | None:
    """The --config an EPP row runs with; None = the embedded default."""
    if spec.policy == "":
        return None
    if spec.policy == GIE_DEFAULT_NAME:
        return gie_default_config()
    return CONFIG_DIR / spec.policy


@dataclass(slots=True, frozen=True)
class RouterSpec:
    key: str  # stable id used on the command line and in result files
    label: str  # what the report prints
    kind: RouterKind
    policy: str  # Envoy lb_policy, vllm-router --policy, or EPP config file name
    ours: bool = False  # our EPP (vs a peer)
    epp_args: tuple[str, ...] = ()  # extra `epp serve` arguments of this row


ROUTERS: tuple[RouterSpec, ...] = (
    RouterSpec("envoy-rr", "Envoy round_robin", "envoy", "ROUND_ROBIN"),
    RouterSpec("envoy-lr", "Envoy least_request", "envoy", "LEAST_REQUEST"),
    RouterSpec("vr-rr", "vllm-router round_robin", "vllm-router", "round_robin"),
    RouterSpec("vr-p2c", "vllm-router power_of_two", "vllm-router", "power_of_two"),
    RouterSpec("vr-cache", "vllm-router cache_aware", "vllm-router", "cache_aware"),
    RouterSpec("vr-kv", "vllm-router kv_aware", "vllm-router", "kv_aware"),
    # The embedded default configuration (no --config): the one the targets are judged on.
    RouterSpec("epp-default", "EPP default config", "epp", "", ours=True),
    # GIE's exact default, shipped for comparison (found by gie_default_config()).
    RouterSpec("epp-gie", "EPP with GIE's default config", "epp", GIE_DEFAULT_NAME, ours=True),
    RouterSpec("epp-load", "EPP load only", "epp", "epp-load.yaml", ours=True),
    RouterSpec("epp-prefix", "EPP load + approx. prefix", "epp", "epp-prefix.yaml", ours=True),
    RouterSpec("epp-all", "EPP all scorers", "epp", "epp-all.yaml", ours=True),
    RouterSpec("epp-precise", "EPP precise prefix (KV events)", "epp", "epp-precise.yaml", ours=True),
    RouterSpec("epp-precise-spec", "EPP precise + speculative (30s)", "epp", "epp-precise-spec.yaml", ours=True),
    # Control row: the whole EPP path (ext_proc hop, body parse, scraping) with round robin's
    # picks and no scorer; its gap to envoy-rr is what the path costs (docs/performance.md).
    RouterSpec("epp-rr", "EPP round robin (control: no scorers)", "epp", "epp-rr.yaml", ours=True),
    # The same with each pod scraped once a second instead of every 50 ms: the simulated pods
    # render a vLLM-sized /metrics page per scrape on the same cores as their engine loop.
    RouterSpec("epp-rr-scrape1s", "EPP round robin, 1 s scrapes (control)", "epp", "epp-rr.yaml", ours=True,
               epp_args=("--scrape-interval", "1", "--scrape-idle-interval", "1", "--staleness-threshold", "5")),
    # The default config scraping each busy pod every 200 ms instead of 50 ms: the in-flight
    # ledger moves at dispatch, so the scrape only reconciles; a pod renders ~33 KB of
    # Prometheus text per scrape (2.7 ms of CPU with prometheus_client, vLLM's library too).
    RouterSpec("epp-default-scrape200ms", "EPP default config, 200 ms scrapes", "epp", "", ours=True,
               epp_args=("--scrape-interval", "0.2")),
    # The default config as it was before its prefill load became speed-aware (issue 10's
    # heterogeneous pool): what the speed learning gains, side by side.
    RouterSpec("epp-speedblind", "EPP default config, speed-blind prefill load (previous default)", "epp",
               "epp-speedblind.yaml", ours=True),
    # The default config learning speeds from completions only, as before it also read the
    # pods' inter-token latency histogram: what the faster signal gains, side by side.
    RouterSpec("epp-steptime", "EPP default config + speeds from inter-token latency", "epp",
               "epp-steptime.yaml", ours=True),
)


def router_by_key(key: str) -> RouterSpec:
    for spec in ROUTERS:
        if spec.key == key:
            return spec
    raise ValueError(f"unknown router {key!r}; known: {', '.join(r.key for r in ROUTERS)}")


def vllm_router_binary() -> str | None:
    """`vllm-router` next to this Python (the venv) or on PATH."""
    local = Path(sys.executable).parent / "vllm-router"
    if local.exists():
        return str(local)
    return shutil.which("vllm-router")


def unavailable_reason(spec: RouterSpec) -> str | None:
    """Why this router cannot run here, or None."""
    if spec.kind == "vllm-router" and vllm_router_binary() is None:
        return "vllm-router not installed (pip install vllm-router==0.1.17)"
    if spec.kind == "epp" and spec.policy == GIE_DEFAULT_NAME and gie_default_config() is None:
        return f"{GIE_DEFAULT_NAME} not found under {', '.join(_GIE_DEFAULT_DIRS)} or epp/"
    if spec.kind == "epp" and spec.policy.startswith("epp-precise"):
        from epp.scheduling.registry import plugin_types

        if "precise-prefix-cache-scorer" not in plugin_types():
            return "precise-prefix-cache-scorer plugin not available in this build"
    return None


# The pods model a mid-range GPU rather than the simulator's default H100: engine steps 4x
# slower and 4096 KV blocks (64k tokens). Then the shared-prefix working set fits in the
# pool's aggregate cache but not in every pod's, which is where routing for affinity matters.
BENCH_GPU_BLOCKS = 4096
BENCH_SLOWDOWN = 4.0


@dataclass(slots=True)
class RowSettings:
    pods: int = 4
    time_scale: float = 1.0
    run_dir: Path = Path(".run/bench")
    block_size: int = 16
    gpu_blocks: int = BENCH_GPU_BLOCKS
    slowdown: float = BENCH_SLOWDOWN
    sim_args: Sequence[str] = ()
    epp_args: Sequence[str] = ()
    # Per-pod multipliers on `slowdown` (pod index -> factor): a heterogeneous pool.
    pod_slowdown: Mapping[int, float] = field(default_factory=dict)
    # The model's tokenizer directory (`epp bench --tokenizer`): every pod tokenizes with it
    # and the precise-prefix rows hash with it; None = the simulator's built-in "simple".
    tokenizer: Path | None = None
    # Envoy's ext_proc response_body_mode for EPP rows ("STREAMED": the EPP sees response
    # headers and usage, which predicted-latency routing learns from).
    response_body_mode: str = "NONE"
    # Envoy's max concurrent streams per connection to the EPP: Envoy (one worker thread here)
    # opens another connection only past it, and the kernel spreads connections, not streams,
    # over `epp serve --workers N`. A low value spreads the requests over the workers.
    epp_max_streams: int = 32
    # Envoy's ext_proc message_timeout for EPP rows: it must outlast any wait the EPP makes a
    # request take before its routing answer (predicted-latency-producer's deferral).
    envoy_message_timeout_ms: int = 2000


@dataclass(slots=True)
class RunningRouter:
    spec: RouterSpec
    url: str
    pod_urls: list[str]
    stack: LocalStack
    extra: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        out = {name: p.pid for name, p in self.stack.procs.items()}
        out.update({name: p.pid for name, p in self.extra.items()})
        return out


def _spawn(name: str, args: Sequence[str], run_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = run_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log_path


stop_process = stop_process_group  # the bench's children run in their own process groups too


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while True:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise StackError(f"{log.stem} exited with code {proc.returncode}; see {log}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise StackError(f"{log.stem} not ready at {url} after {timeout:.0f}s; see {log}")
            time.sleep(0.1)


PRECISE_SCORER = "precise-prefix-cache-scorer"


def with_tokenizer(config: Path, tokenizer: Path, out: Path) -> Path:
    """A copy of `config` (written to `out`) whose precise prefix scorers use `tokenizer`;
    `config` itself when it has none (the approximate scorer hashes characters, not tokens)."""
    data = yaml.safe_load(config.read_text())
    plugins = [p for p in data.get("plugins") or [] if isinstance(p, dict) and p.get("type") == PRECISE_SCORER]
    if not plugins:
        return config
    for plugin in plugins:
        plugin["parameters"] = {**(plugin.get("parameters") or {}), "tokenizer": str(tokenizer.resolve())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {config.name} with tokenizer {tokenizer.resolve()} (epp bench --tokenizer)\n"
                   + yaml.safe_dump(data, sort_keys=False))
    return out


def row_epp_config(spec: RouterSpec, row: RowSettings, run_dir: Path) -> Path | None:
    """The --config of an EPP row: epp_config_path(), patched for row.tokenizer."""
    config = epp_config_path(spec)
    if config is None or row.tokenizer is None:
        return config
    return with_tokenizer(config, row.tokenizer, run_dir / f"tokenizer-{config.name}")


def _stack_config(spec: RouterSpec, row: RowSettings, run_dir: Path) -> StackConfig:
    is_epp = spec.kind == "epp"
    # The tokenizer goes to the pods as a simulator argument, not StackConfig.tokenizer: that
    # would also swap the embedded default config (epp-default) for a precise one.
    tokenizer = ["--tokenizer", str(row.tokenizer.resolve())] if row.tokenizer is not None else []
    return StackConfig(
        run_dir=run_dir, pods=row.pods, ports_free=True, time_scale=row.time_scale,
        with_epp=is_epp, with_envoy=is_epp, response_body_mode=row.response_body_mode,
        epp_max_concurrent_streams=row.epp_max_streams, envoy_message_timeout_ms=row.envoy_message_timeout_ms,
        epp_config=row_epp_config(spec, row, run_dir) if is_epp else None,
        # Pods bind their KV-event sockets (vLLM's `tcp://*:port` style) so that whoever
        # follows them (our EPP or vllm-router kv_aware) connects, one subscriber per pod.
        kv_events=True,
        sim_args=["--kv-events-bind", "--block-size", str(row.block_size), "--log-level", "WARNING",
                  "--num-gpu-blocks", str(row.gpu_blocks), "--slowdown", str(row.slowdown), *tokenizer,
                  *row.sim_args],
        epp_args=["--log-level", "warning", *row.epp_args, *spec.epp_args],
        pod_sim_args={index: ["--slowdown", f"{row.slowdown * factor:g}"]
                      for index, factor in row.pod_slowdown.items()},
    )


@contextlib.contextmanager
def running_router(spec: RouterSpec, row: RowSettings, tag: str, timeout: float = 60.0) -> Iterator[RunningRouter]:
    """Fresh pods + the router `spec`, all on loopback free ports; everything stops on exit."""
    run_dir = row.run_dir / tag
    stack = LocalStack(_stack_config(spec, row, run_dir))
    running = RunningRouter(spec, stack.url, [stack.pod_url(p) for p in stack.pods], stack)
    try:
        stack.start(timeout)
        if spec.kind == "envoy":
            _start_envoy_lb(running, row, run_dir, timeout)
        elif spec.kind == "vllm-router":
            _start_vllm_router(running, row, run_dir, timeout)
        cpu0, wall0 = process_cpu_seconds(running.pids()), time.monotonic()
        yield running
        write_cpu_use(run_dir / CPU_USE_FILE, spec.key, process_cpu_seconds(running.pids()), cpu0,
                      time.monotonic() - wall0)
    finally:
        for proc in running.extra.values():
            stop_process(proc)
        stack.stop()


# Per cell: CPU seconds each process (simulated pods, Envoy, EPP, vllm-router) used while the
# cell ran, so a report can tell whether the router's own CPU competed with the pods
# (`python -m epp.bench.cpu_use <run dir>` sums them up; docs/performance.md).
CPU_USE_FILE = "cpu-use.json"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """utime+stime of each named process and its session (worker processes), from /proc."""
    sessions = {pid: name for name, pid in pids.items()}
    out = dict.fromkeys(pids, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        name = sessions.get(int(rest[3]))  # field 6: session id (every process starts its own)
        if name is not None:
            out[name] += (int(rest[11]) + int(rest[12])) / _CLOCK_TICKS
    return out


def write_cpu_use(path: Path, router: str, after: Mapping[str, float], before: Mapping[str, float],
                  wall_s: float) -> None:
    cpu = {name: round(max(0.0, after.get(name, 0.0) - before.get(name, 0.0)), 3) for name in after}
    path.write_text(json.dumps({"router": router, "wall_s": round(wall_s, 3), "cpu_s": cpu}) + "\n")


def _start_envoy_lb(running: RunningRouter, row: RowSettings, run_dir: Path, timeout: float) -> None:
    port, admin = free_ports(2)
    pods = [("127.0.0.1", p.port) for p in running.stack.pods]
    path = run_dir / "envoy-lb.yaml"
    path.write_text(to_yaml(lb_envoy_config(port, admin, pods, running.spec.policy)))
    proc, log = _spawn("envoy-lb", [envoy_binary(), "-c", str(path), "--concurrency", "1",
                                    "--base-id", str(admin), "--log-level", "warn"], run_dir)
    running.extra["envoy-lb"], running.logs["envoy-lb"] = proc, log
    wait_http(f"http://127.0.0.1:{admin}/ready", proc, log, timeout)
    running.url = f"http://127.0.0.1:{port}"


def _start_vllm_router(running: RunningRouter, row: RowSettings, run_dir: Path, timeout: float) -> None:
    binary = vllm_router_binary()
    if binary is None:
        raise StackError("vllm-router not installed (pip install vllm-router==0.1.17)")
    port, prometheus_port = free_ports(2)
    args = [binary, "--host", "127.0.0.1", "--port", str(port), "--policy", running.spec.policy,
            "--worker-urls", *running.pod_urls, "--prometheus-host", "127.0.0.1",
            "--prometheus-port", str(prometheus_port), "--log-level", "warning",
            # The benchmark compares routing, not admission: no router-side queue limits.
            "--disable-retries", "--disable-circuit-breaker"]
    if running.spec.policy == "kv_aware":
        for pod, url in zip(running.stack.pods, running.pod_urls, strict=True):
            args += ["--kv-event-source", f"{url}=tcp://127.0.0.1:{pod.kv_events_port}"]
        args += ["--kv-event-block-size", str(row.block_size), "--kv-event-model", running.stack.cfg.model]
    proc, log = _spawn("vllm-router", args, run_dir)
    running.extra["vllm-router"], running.logs["vllm-router"] = proc, log
    wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout)
    running.url = f"http://127.0.0.1:{port}"
