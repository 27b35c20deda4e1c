"""Several models behind one gateway, locally (`make run MODELS=2`; docs/multi-model.md).

    client -> Envoy :8081 -> bbr ext_proc (model -> X-Gateway-Model-Name, /v1/models, 404)
                          -> route on X-Gateway-Model-Name -> that pool's EPP (ext_proc)
                          -> that pool's pods

Pool A: simulated vLLM pods serving model A (+ its LoRA adapters); pool B: simulated SGLang
pods serving model B, scored from SGLang's own metric names (`epp serve --engine sglang`).
Each pool is a LocalStack without its own Envoy (pods + EPP, files under <run_dir>/<pool>);
this class adds the body-based router and the one Envoy in front.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from epp.localstack.envoy_config import MultiPoolParams, PoolRoute, multi_pool_config_yaml
from epp.localstack.stack import (
    DEFAULT_LORAS,
    DEFAULT_MODEL,
    REPO,
    LocalStack,
    StackConfig,
    StackError,
    free_ports,
    stop_process_group,
)

SGLANG_MODEL = "Qwen/Qwen2.5-7B-Instruct"
log = logging.getLogger("epp.localstack")


@dataclass(slots=True)
class PoolPlan:
    """One pool of the multi-model stack."""

    name: str
    engine: str  # simulator personality and the EPP's metric mapping: vllm | sglang
    model: str
    loras: Sequence[str] = ()
    pods: int = 2
    base_pod_port: int = 0  # documented ports (make run); 0 with free ports
    grpc_port: int = 0
    health_port: int = 0
    metrics_port: int = 0
    kv_events: bool = False
    tokenizer: str | None = None
    epp_config: Path | None = None
    epp_args: Sequence[str] = ()
    sim_args: Sequence[str] = ()
    pod_sim_args: Mapping[int, Sequence[str]] = field(default_factory=dict)
    pod_labels: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    @property
    def served(self) -> list[str]:
        """The names the pool's pods list in /v1/models (the routes match these)."""
        return [self.model, *self.loras]


def default_pools(pods: int = 2, tokenizer: str | None = None) -> list[PoolPlan]:
    """`make run MODELS=2`: pool A = vLLM pods on the default ports, pool B = SGLang pods."""
    return [
        PoolPlan("a", "vllm", DEFAULT_MODEL, DEFAULT_LORAS, pods, base_pod_port=8001, grpc_port=9002,
                 health_port=9003, metrics_port=9090, kv_events=True, tokenizer=tokenizer),
        PoolPlan("b", "sglang", SGLANG_MODEL, (), pods, base_pod_port=8011, grpc_port=9102,
                 health_port=9103, metrics_port=9190),
    ]


@dataclass(slots=True)
class MultiStackConfig:
    pools: list[PoolPlan] = field(default_factory=default_pools)
    run_dir: Path = field(default_factory=lambda: REPO / ".run")
    listen_port: int = 8081
    admin_port: int = 9901
    bbr_grpc_port: int = 9004
    bbr_health_port: int = 9005
    failure_mode: str = "FailClose"
    time_scale: float = 1.0
    # The EPPs read responses (usage accounting); NONE turns that off.
    response_body_mode: str = "STREAMED"
    epp_args: Sequence[str] = ()  # for every pool's EPP
    supervise: bool = False
    ports_free: bool = False

    def __post_init__(self) -> None:
        if self.ports_free:
            self.listen_port, self.admin_port, self.bbr_grpc_port, self.bbr_health_port = free_ports(4)


class MultiPoolStack:
    def __init__(self, cfg: MultiStackConfig) -> None:
        self.cfg = cfg
        self.pools: dict[str, LocalStack] = {}
        # The EPPs see responses: count streamed usage too (docs/multi-model.md, usage accounting).
        usage_args = ["--stream-include-usage"] if cfg.response_body_mode != "NONE" else []
        # Every pool picks its ports before any process binds one: each avoids the others'.
        taken = {cfg.listen_port, cfg.admin_port, cfg.bbr_grpc_port, cfg.bbr_health_port}
        for plan in cfg.pools:
            free = cfg.ports_free or not plan.base_pod_port
            sc = StackConfig(
                run_dir=cfg.run_dir / f"pool-{plan.name}", pods=plan.pods, model=plan.model, loras=plan.loras,
                with_envoy=False, kv_events=plan.kv_events, tokenizer=plan.tokenizer, epp_config=plan.epp_config,
                time_scale=cfg.time_scale, failure_mode=cfg.failure_mode, supervise=cfg.supervise,
                sim_args=["--engine", plan.engine, *plan.sim_args],
                epp_args=["--engine", plan.engine, *usage_args, *cfg.epp_args, *plan.epp_args],
                pod_sim_args=plan.pod_sim_args, pod_labels=plan.pod_labels,
                pod_prefix=f"{plan.engine}-{plan.name}", ports_free=free, avoid_ports=frozenset(taken))
            taken.update(sc.port_batch)
            if not free:
                sc.base_pod_port = plan.base_pod_port
                sc.grpc_port, sc.health_port, sc.metrics_port = plan.grpc_port, plan.health_port, plan.metrics_port
            self.pools[plan.name] = LocalStack(sc)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._args: dict[str, list[str]] = {}
        self._logs: list[object] = []
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        # Every crash of the BBR or Envoy: (monotonic time, name, exit code, restart delay).
        self.restarts: list[tuple[float, str, int, float]] = []
        (cfg.run_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.listen_port}"

    def log_path(self, name: str) -> Path:
        return self.cfg.run_dir / "logs" / f"{name}.log"

    def write_files(self) -> dict[str, Path]:
        cfg = self.cfg
        bbr = {"pools": [{"name": name, "endpointsFile": str(stack.cfg.run_dir / "endpoints.yaml")}
                         for name, stack in self.pools.items()],
               "refreshSeconds": 2}
        files = {"bbr": cfg.run_dir / "bbr.yaml", "envoy": cfg.run_dir / "envoy-models.yaml"}
        files["bbr"].write_text(yaml.safe_dump(bbr, sort_keys=False))
        params = MultiPoolParams(
            pools=[PoolRoute(plan.name, plan.served, self.pools[plan.name].cfg.grpc_port,
                             [("127.0.0.1", p.serving_port) for p in self.pools[plan.name].pods
                              if p.role != "prefill"])
                   for plan in cfg.pools],
            bbr_port=cfg.bbr_grpc_port, listen_port=cfg.listen_port, admin_port=cfg.admin_port,
            failure_mode="FailOpen" if cfg.failure_mode == "FailOpen" else "FailClose",
            response_body_mode="NONE" if cfg.response_body_mode == "NONE" else "STREAMED")
        files["envoy"].write_text(multi_pool_config_yaml(params))
        return files

    def _spawn(self, name: str, args: list[str]) -> None:
        log_file = open(self.log_path(name), "ab" if name in self._args else "wb")  # noqa: SIM115
        self._logs.append(log_file)
        self._args[name] = args
        self.procs[name] = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def _supervise(self, first: float = 0.2, largest: float = 10.0) -> None:
        """Restart a crashed BBR or Envoy with exponential backoff (each pool's LocalStack
        restarts its own pods and EPP), as the single-pool stack does."""
        failures = dict.fromkeys(self.procs, 0)
        while not self._closing.wait(0.1):
            for name, proc in list(self.procs.items()):
                if proc.poll() is None or self._closing.is_set():
                    continue
                delay = min(largest, first * 2 ** failures[name])
                failures[name] += 1
                self.restarts.append((time.monotonic(), name, proc.returncode or 0, delay))
                log.warning("%s exited with code %s; restarting in %.1fs; log: %s",
                            name, proc.returncode, delay, self.log_path(name))
                if self._closing.wait(delay):
                    return
                self._spawn(name, self._args[name])

    def start(self, timeout: float = 60.0) -> None:
        try:
            # The pools start side by side (each waits for its own pods and EPP).
            with ThreadPoolExecutor(len(self.pools)) as pool_starts:
                for started in [pool_starts.submit(stack.start, timeout) for stack in self.pools.values()]:
                    started.result()
            files = self.write_files()
            self._spawn("bbr", [sys.executable, "-m", "epp", "bbr", "--config", str(files["bbr"]),
                                "--grpc-port", str(self.cfg.bbr_grpc_port),
                                "--health-port", str(self.cfg.bbr_health_port)])
            self._spawn("envoy", LocalStack._envoy_args(files["envoy"]))
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if self.cfg.supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="multipool-supervisor", daemon=True)
            self._supervisor.start()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        checks = [("bbr", f"http://127.0.0.1:{self.cfg.bbr_health_port}/readyz"),
                  ("envoy", f"http://127.0.0.1:{self.cfg.admin_port}/ready")]
        with httpx.Client(timeout=1.0) as client:
            for name, url in checks:
                while True:
                    proc = self.procs[name]
                    if proc.poll() is not None:
                        raise StackError(f"{name} exited with code {proc.returncode}; see {self.log_path(name)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(url).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise StackError(f"{name} not ready at {url} after {timeout:.0f}s; see {self.log_path(name)}")
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{self.cfg.admin_port}/clusters"
            while True:  # active health checks have passed every EPP and pod once
                with contextlib.suppress(httpx.HTTPError):
                    flags = [ln for ln in client.get(url).text.splitlines() if "::health_flags::" in ln]
                    if flags and all(ln.endswith("::healthy") for ln in flags):
                        return
                if time.monotonic() > deadline:
                    raise StackError(f"Envoy's hosts not healthy after {timeout:.0f}s")
                time.sleep(0.1)

    def stop(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None
        for name in ("envoy", "bbr"):
            proc = self.procs.get(name)
            if proc is not None:
                stop_process_group(proc)
        with ThreadPoolExecutor(max(1, len(self.pools))) as pool_stops:
            list(pool_stops.map(lambda stack: stack.stop(), self.pools.values()))
        for log in self._logs:
            with contextlib.suppress(Exception):
                log.close()  # type: ignore[attr-defined]
        self._logs.clear()


@contextlib.contextmanager
def multi_pool_stack(cfg: MultiStackConfig) -> Iterator[MultiPoolStack]:
    stack = MultiPoolStack(cfg)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
