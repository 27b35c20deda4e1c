"""What the EPP costs: `python -m epp bench overhead`.

Upstreams are instant (one Envoy answering direct_response on N loopback ports), so every
microsecond measured is router path. Two front Envoys (`--concurrency 1`) with the SAME HTTP
filter chain (header mutation, buffer; see envoy_configs.epp_chain_without_ext_proc) are
compared on the same upstreams and the same chat bodies:

  direct:     client -> Envoy (ROUND_ROBIN cluster) -> instant upstream
  with EPP:   client -> Envoy -> ext_proc -> EPP (`epp serve`) -> Envoy ORIGINAL_DST -> upstream

Every measurement is repeated `repeats` times on the same processes (direct and EPP arms
alternate within a run); the report gives the median and the min-max of the runs. Long
prompts (~220 KB bodies) are measured at the `long_concurrency` levels on the first pool.

Reported: latency p50/p99 at concurrency 1 and 64 and the difference (added latency), the
EPP's CPU per request (utime+stime of the EPP's whole process session from /proc, minus its
idle rate, which is metric scraping), the throughput reached, the decisions/s one core of
EPP could sustain (1 / CPU per request), and the in-process decision latency vs pool size
(epp.scheduling.benchmark). The client is a minimal keep-alive HTTP/1.1 client on asyncio so
that it, not the EPP, is the cheapest part of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.bench.envoy_configs import instant_upstream_config, lb_envoy_config, to_yaml
from epp.bench.routers import stop_process, wait_http
from epp.bench.stats import Distribution
from epp.bench.workloads import DEFAULT_MODEL, VOCABULARY
from epp.localstack.envoy_config import EnvoyConfigParams, envoy_config_yaml
from epp.localstack.stack import POOL_LABELS, REPO, envoy_binary, free_ports

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# How the front Envoy's ext_proc filter talks to the EPP (`--ext-proc-mode`), as
# EnvoyConfigParams overrides. "streamed" is the generated configs' default.
EXT_PROC_MODES: dict[str, dict[str, Any]] = {
    # STREAMED + send_body_without_waiting_for_header_response: headers and body back to back,
    # one round trip (and the response trailers, which keep the stream open: envoy_config).
    "streamed": {},
    # The body only after the EPP answered the headers: two sequential round trips (Envoy
    # ignores send_body_without_waiting_for_header_response in this mode).
    "buffered": {"request_body_mode": "BUFFERED"},
    # GIE's mode: headers and body chunks without waiting; the EPP answers both once the body
    # is complete and hands the body back.
    "full-duplex": {"request_body_mode": "FULL_DUPLEX_STREAMED"},
}


@dataclass(slots=True)
class OverheadSettings:
    pool_sizes: Sequence[int] = (4, 64)
    sequential_requests: int = 2000  # concurrency 1, per arm
    concurrent_requests: int = 12000  # concurrency 64, per arm
    concurrency: int = 64
    max_seconds_per_run: float = 20.0
    warmup_requests: int = 300
    decision_pool_sizes: Sequence[int] = (4, 64, 256, 1024)
    decisions: int = 2000
    epp_config: Path | None = None  # None: the embedded default config
    epp_args: Sequence[str] = ()
    run_dir: Path = Path(".run/bench/overhead")
    repeats: int = 3
    idle_seconds: float = 3.0  # EPP CPU with no traffic (metric scraping) is measured this long
    long_prompt_bytes: int = 220_000
    long_concurrency: Sequence[int] = (20, 150)
    long_requests: int = 600  # per arm and concurrency level (bounded by max_seconds_per_run too)
    # Front Envoy ext_proc modes (EXT_PROC_MODES); the first is the reported one, the others are
    # measured as extra arms (c=1 latency, CPU per request at c=`concurrency`) in the same runs.
    ext_proc_modes: Sequence[str] = ("streamed",)

    def validate(self) -> None:
        if self.repeats < 1 or self.sequential_requests < 1 or self.concurrent_requests < 1:
            raise ValueError("repeats, sequential_requests and concurrent_requests must be >= 1")
        if self.idle_seconds <= 0 or self.max_seconds_per_run <= 0:
            raise ValueError("idle_seconds and max_seconds_per_run must be > 0")
        if any(c < 1 for c in self.long_concurrency) or self.long_requests < 1:
            raise ValueError("long_concurrency levels and long_requests must be >= 1")
        unknown = [m for m in self.ext_proc_modes if m not in EXT_PROC_MODES]
        if unknown or not self.ext_proc_modes:
            raise ValueError(f"ext_proc_modes {list(self.ext_proc_modes)}: use one or more of "
                             f"{', '.join(EXT_PROC_MODES)}")


@dataclass(slots=True)
class LoadRun:
    latencies_s: list[float]
    errors: int
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0

    def distribution(self) -> Distribution:
        return Distribution.of(self.latencies_s)


@dataclass(slots=True)
class PoolOverhead:
    pods: int
    direct_c1: Distribution
    epp_c1: Distribution
    direct_cn: Distribution
    epp_cn: Distribution
    concurrency: int
    direct_cn_rps: float
    epp_cn_rps: float
    epp_errors: int
    epp_cpu_us_per_request: float  # idle (scrape) CPU subtracted
    epp_idle_cpu_percent: float  # scraping + housekeeping with no traffic, % of one core (default adaptive interval)
    # Per-run values behind the medians above (the report prints their min-max).
    added_c1_p50_runs_ms: list[float] = field(default_factory=list)
    decisions_runs: list[float] = field(default_factory=list)
    idle_cpu_runs: list[float] = field(default_factory=list)
    runs: int = 1
    # The same with a fixed 50 ms scrape interval (what the EPP did before the adaptive one).
    fixed_idle_cpu_percent: float = float("nan")
    fixed_idle_cpu_runs: list[float] = field(default_factory=list)
    # The reported arm's ext_proc mode and, per extra mode, its runs (same processes, same runs):
    # {mode: [added c=1 p50 ms per run]} and {mode: [decisions/s per core per run]}.
    ext_proc_mode: str = "buffered"
    mode_added_c1_p50_runs_ms: dict[str, list[float]] = field(default_factory=dict)
    mode_decisions_runs: dict[str, list[float]] = field(default_factory=dict)

    @property
    def added_c1_p50_ms(self) -> float:
        return (self.epp_c1.p50 - self.direct_c1.p50) * 1e3

    @property
    def added_c1_p99_ms(self) -> float:
        return (self.epp_c1.p99 - self.direct_c1.p99) * 1e3

    @property
    def added_cn_p50_ms(self) -> float:
        return (self.epp_cn.p50 - self.direct_cn.p50) * 1e3

    @property
    def added_cn_p99_ms(self) -> float:
        return (self.epp_cn.p99 - self.direct_cn.p99) * 1e3

    @property
    def decisions_per_core_s(self) -> float:
        us = self.epp_cpu_us_per_request
        return 1e6 / us if us > 0 else float("nan")


@dataclass(slots=True)
class LongPromptOverhead:
    """Envoy + EPP vs Envoy alone (same filter chain) on ~220 KB chat bodies."""

    pods: int
    concurrency: int
    body_bytes: int
    direct: Distribution
    epp: Distribution
    errors: int
    added_p50_runs_ms: list[float] = field(default_factory=list)
    direct_rps: float = float("nan")
    epp_rps: float = float("nan")
    # EPP CPU per long request (idle CPU subtracted): body parse + prefix hashing + gRPC.
    epp_cpu_us_per_request: float = float("nan")

    @property
    def added_p50_ms(self) -> float:
        return (self.epp.p50 - self.direct.p50) * 1e3

    @property
    def added_p99_ms(self) -> float:
        return (self.epp.p99 - self.direct.p99) * 1e3


@dataclass(slots=True)
class DecisionLatency:
    pods: int
    p50_us: float
    p99_us: float
    mean_us: float


@dataclass(slots=True)
class OverheadResult:
    pools: list[PoolOverhead] = field(default_factory=list)
    decisions: list[DecisionLatency] = field(default_factory=list)
    body_bytes: int = 0
    measured: str = ""  # "<date> with `<command>`", set by the command that ran it
    long_prompts: list[LongPromptOverhead] = field(default_factory=list)
    repeats: int = 1
    idle_seconds: float = 0.0  # 0: not recorded (older results)


# --- the client ---------------------------------------------------------------------------------

def chat_bodies(count: int = 64, chars: int = 1900) -> list[bytes]:
    """~`chars`-byte chat bodies (2 KB by default); 8 shared system prompts so prefix scorers
    have real work (the shared part is about the first 1 KB of every prompt)."""
    out = []
    words_needed = max(400, chars // 4)
    for i in range(count):
        system = f"system {i % 8}: " + " ".join(VOCABULARY[(i % 8) * 97 + k] for k in range(150))
        user = " ".join(VOCABULARY[(i * 31 + k) % len(VOCABULARY)] for k in range(words_needed))
        content = (system + " " + user)[:chars]
        out.append(json.dumps({"model": DEFAULT_MODEL, "max_tokens": 1,
                               "messages": [{"role": "user", "content": content}]}).encode())
    return out


def http_request(port: int, body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (port, len(body))) + body


def parse_head(head: bytes) -> tuple[int, int]:
    """(status, content-length) of a response head; -1 length when chunked/unknown."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, length


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def _connection(port: int, requests: list[bytes], quota: list[int], deadline: float,
                      latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while quota[0] > 0 and time.perf_counter() < deadline:
            quota[0] -= 1
            payload = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = parse_head(head)
            if length >= 0:
                await reader.readexactly(length)
            else:
                await _read_chunked(reader)
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[0] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_loop(port: int, bodies: Sequence[bytes], concurrency: int, total: int,
                      max_seconds: float) -> LoadRun:
    """`concurrency` keep-alive connections, each sending its next request when the last ends."""
    requests = [http_request(port, b) for b in bodies]
    quota = [total]
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, requests[k:] + requests[:k], quota, start + max_seconds,
                                       latencies, errors) for k in range(concurrency)))
    return LoadRun(latencies, errors[0], time.perf_counter() - start)


def load(port: int, bodies: Sequence[bytes], concurrency: int, total: int, max_seconds: float) -> LoadRun:
    return asyncio.run(closed_loop(port, bodies, concurrency, total, max_seconds))


# --- process CPU ----------------------------------------------------------------------------------

def session_cpu_seconds(session_id: int) -> float:
    """utime+stime of every live process in a session (the EPP and any worker processes)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name; sid is field 6, utime 14, stime 15.
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[3]) == session_id:
            total += int(rest[11]) + int(rest[12])
    return total / CLOCK_TICKS


# --- processes ---------------------------------------------------------------------------------

def _spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _envoy(config: dict[str, object] | str, name: str, run_dir: Path, admin: int) -> subprocess.Popen[bytes]:
    path = run_dir / f"{name}.yaml"
    path.write_text(config if isinstance(config, str) else to_yaml(config))
    log = run_dir / "logs" / f"{name}.log"
    proc = _spawn([envoy_binary(), "-c", str(path), "--concurrency", "1", "--base-id", str(admin),
                   "--log-level", "warn"], log)
    return proc


@dataclass(slots=True)
class OverheadStack:
    direct_port: int
    epp_port: int
    epp: subprocess.Popen[bytes]
    # The same EPP with the default (adaptive) scrape interval and no traffic: its CPU is the
    # idle scrape cost a user gets (the measured `epp` scrapes at a fixed rate; see below).
    idle_epp: subprocess.Popen[bytes]
    # Front Envoy listener per extra ext_proc mode (same EPP, same upstreams).
    mode_ports: dict[str, int] = field(default_factory=dict)


# The EPP on the request path scrapes at a fixed 50 ms, so that its idle CPU (subtracted from
# the CPU under load to get the cost per decision) is also its scrape CPU under load; with the
# adaptive interval idle pods are scraped far less often than busy ones and the subtraction
# would charge scraping to the decisions.
FIXED_SCRAPE_ARGS = ("--scrape-idle-interval", "0.05")


@contextlib.contextmanager
def overhead_stack(pods: int, settings: OverheadSettings) -> Iterator[OverheadStack]:
    run_dir = settings.run_dir / f"pods-{pods}"
    run_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = free_ports(pods + 11 + 2 * (len(settings.ext_proc_modes) - 1))
        mode_ports = ports[pods + 11:]
        (*up_ports, up_admin, direct_port, direct_admin, grpc, health, metrics, epp_port, epp_admin,
         idle_grpc, idle_health, idle_metrics) = ports[:pods + 11]
        upstream = _envoy(instant_upstream_config(up_ports, up_admin, DEFAULT_MODEL), "upstream", run_dir, up_admin)
        procs.append(upstream)
        wait_http(f"http://127.0.0.1:{up_admin}/ready", upstream, run_dir / "logs/upstream.log", 30)

        direct = _envoy(lb_envoy_config(direct_port, direct_admin, [("127.0.0.1", p) for p in up_ports]),
                        "direct", run_dir, direct_admin)
        procs.append(direct)

        endpoints = {"pods": [{"name": f"pod-{i}", "ip": "127.0.0.1", "port": p, "labels": dict(POOL_LABELS)}
                              for i, p in enumerate(up_ports)]}
        (run_dir / "endpoints.yaml").write_text(yaml.safe_dump(endpoints, sort_keys=False))
        def epp_args(name: str, grpc_port: int, health_port: int, metrics_port: int) -> list[str]:
            pool = yaml.safe_load((REPO / "deploy/local/inferencepool.yaml").read_text())
            pool["spec"]["endpointPickerRef"]["port"]["number"] = grpc_port
            (run_dir / f"pool-{name}.yaml").write_text(yaml.safe_dump(pool, sort_keys=False))
            args = [sys.executable, "-m", "epp", "serve", "--grpc-port", str(grpc_port),
                    "--health-port", str(health_port), "--metrics-port", str(metrics_port),
                    "--pool-file", str(run_dir / f"pool-{name}.yaml"),
                    "--endpoints-file", str(run_dir / "endpoints.yaml"), "--log-level", "warning"]
            if settings.epp_config is not None:
                args += ["--config", str(settings.epp_config)]
            return args

        epp = _spawn([*epp_args("epp", grpc, health, metrics), *FIXED_SCRAPE_ARGS, *settings.epp_args],
                     run_dir / "logs/epp.log")
        procs.append(epp)
        idle_epp = _spawn([*epp_args("idle", idle_grpc, idle_health, idle_metrics), *settings.epp_args],
                          run_dir / "logs/epp-idle.log")
        procs.append(idle_epp)

        first, *extra_modes = settings.ext_proc_modes
        front = _envoy(envoy_config_yaml(EnvoyConfigParams(listen_port=epp_port, admin_port=epp_admin,
                                                           epp_port=grpc, **EXT_PROC_MODES[first])),
                       "front-epp", run_dir, epp_admin)
        procs.append(front)
        listeners: dict[str, int] = {}
        for i, mode in enumerate(extra_modes):
            listen, admin = mode_ports[2 * i], mode_ports[2 * i + 1]
            extra = _envoy(envoy_config_yaml(EnvoyConfigParams(listen_port=listen, admin_port=admin, epp_port=grpc,
                                                               **EXT_PROC_MODES[mode])),
                           f"front-epp-{mode}", run_dir, admin)
            procs.append(extra)
            wait_http(f"http://127.0.0.1:{admin}/ready", extra, run_dir / f"logs/front-epp-{mode}.log", 30)
            listeners[mode] = listen
        wait_http(f"http://127.0.0.1:{direct_admin}/ready", direct, run_dir / "logs/direct.log", 30)
        wait_http(f"http://127.0.0.1:{health}/readyz", epp, run_dir / "logs/epp.log", 60)
        wait_http(f"http://127.0.0.1:{idle_health}/readyz", idle_epp, run_dir / "logs/epp-idle.log", 60)
        wait_http(f"http://127.0.0.1:{epp_admin}/ready", front, run_dir / "logs/front-epp.log", 30)
        yield OverheadStack(direct_port, epp_port, epp, idle_epp, listeners)
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def _wait_serving(port: int, bodies: Sequence[bytes], timeout: float = 30.0) -> None:
    """The EPP marks pods healthy after its first scrapes: wait until a request succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        run = load(port, bodies[:1], 1, 1, 5.0)
        if run.latencies_s:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"requests through the EPP on port {port} keep failing after {timeout:.0f}s")
        time.sleep(0.2)


def _median(values: Sequence[float]) -> float:
    finite = sorted(v for v in values if v == v)
    if not finite:
        return float("nan")
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


def _median_distribution(runs: Sequence[LoadRun]) -> Distribution:
    from epp.bench.aggregate import median_distribution

    return median_distribution([r.distribution() for r in runs])


def idle_cpu_percent(sessions: Sequence[int], seconds: float) -> list[float]:
    """CPU of each process session over the same `seconds` with no traffic, in % of one core."""
    cpu0 = [session_cpu_seconds(s) for s in sessions]
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return [(session_cpu_seconds(s) - c) / wall * 100 for s, c in zip(sessions, cpu0, strict=True)]


def measure_pool(pods: int, settings: OverheadSettings, bodies: Sequence[bytes],
                 long_bodies: Sequence[bytes] = (), progress: Callable[[str], None] = print,
                 ) -> tuple[PoolOverhead, list[LongPromptOverhead]]:
    cap = settings.max_seconds_per_run
    direct_c1: list[LoadRun] = []
    epp_c1: list[LoadRun] = []
    direct_cn: list[LoadRun] = []
    epp_cn: list[LoadRun] = []
    idle: list[float] = []
    fixed: list[float] = []
    cpu_per_request: list[float] = []
    long_runs: dict[int, tuple[list[LoadRun], list[LoadRun]]] = {c: ([], []) for c in settings.long_concurrency}
    long_cpu: dict[int, list[float]] = {c: [] for c in settings.long_concurrency}
    mode_c1: dict[str, list[float]] = {m: [] for m in settings.ext_proc_modes[1:]}
    mode_decisions: dict[str, list[float]] = {m: [] for m in settings.ext_proc_modes[1:]}
    with overhead_stack(pods, settings) as stack:
        _wait_serving(stack.epp_port, bodies)
        for port in (stack.direct_port, stack.epp_port, *stack.mode_ports.values()):
            _wait_serving(port, bodies)
            load(port, bodies, 8, settings.warmup_requests, cap)
        for repeat in range(settings.repeats):
            direct_c1.append(load(stack.direct_port, bodies, 1, settings.sequential_requests, cap))
            epp_c1.append(load(stack.epp_port, bodies, 1, settings.sequential_requests, cap))
            direct_cn.append(load(stack.direct_port, bodies, settings.concurrency, settings.concurrent_requests, cap))
            fixed_idle, adaptive_idle = idle_cpu_percent((stack.epp.pid, stack.idle_epp.pid), settings.idle_seconds)
            idle_rate = fixed_idle / 100
            idle.append(adaptive_idle)
            fixed.append(fixed_idle)
            cpu1 = session_cpu_seconds(stack.epp.pid)
            run = load(stack.epp_port, bodies, settings.concurrency, settings.concurrent_requests, cap)
            busy = max(0.0, (session_cpu_seconds(stack.epp.pid) - cpu1) - idle_rate * run.wall_s)
            served = len(run.latencies_s) + run.errors
            epp_cn.append(run)
            cpu_per_request.append(busy / served * 1e6 if served else float("nan"))
            for mode, port in stack.mode_ports.items():
                # Same runs, same processes: the mode's c=1 latency against this run's direct arm,
                # and its EPP CPU per request at the same concurrency.
                c1 = load(port, bodies, 1, settings.sequential_requests, cap)
                mode_c1[mode].append((c1.distribution().p50 - direct_c1[-1].distribution().p50) * 1e3)
                cpu_m = session_cpu_seconds(stack.epp.pid)
                run_m = load(port, bodies, settings.concurrency, settings.concurrent_requests, cap)
                busy_m = max(0.0, (session_cpu_seconds(stack.epp.pid) - cpu_m) - idle_rate * run_m.wall_s)
                served_m = len(run_m.latencies_s) + run_m.errors
                mode_decisions[mode].append(served_m / busy_m if busy_m > 0 else float("nan"))
                progress(f"   overhead pods={pods} run {repeat + 1}, ext_proc mode {mode}: added c=1 p50 "
                         f"{mode_c1[mode][-1]:.3f} ms, {mode_decisions[mode][-1]:.0f} decisions/s per core, "
                         f"errors {c1.errors + run_m.errors}")
            for c in settings.long_concurrency if long_bodies else ():
                direct_runs, epp_runs = long_runs[c]
                direct_runs.append(load(stack.direct_port, long_bodies, c, settings.long_requests, cap))
                cpu_before = session_cpu_seconds(stack.epp.pid)
                epp_runs.append(load(stack.epp_port, long_bodies, c, settings.long_requests, cap))
                spent = session_cpu_seconds(stack.epp.pid) - cpu_before - idle_rate * epp_runs[-1].wall_s
                count = len(epp_runs[-1].latencies_s) + epp_runs[-1].errors
                long_cpu[c].append(max(0.0, spent) / count * 1e6 if count else float("nan"))
            progress(f"   overhead pods={pods} run {repeat + 1}/{settings.repeats}: added c=1 p50 "
                     f"{(epp_c1[-1].distribution().p50 - direct_c1[-1].distribution().p50) * 1e3:.3f} ms, "
                     f"{1e6 / cpu_per_request[-1] if cpu_per_request[-1] > 0 else float('nan'):.0f} decisions/s "
                     f"per core, idle {idle[-1]:.1f}% of a core (fixed 50 ms: {fixed[-1]:.1f}%)"
                     + "".join(f", 220KB c={c} added p50 "
                               f"{(runs[1][-1].distribution().p50 - runs[0][-1].distribution().p50) * 1e3:.1f} ms"
                               for c, runs in long_runs.items() if runs[0]))
    added_c1 = [(e.distribution().p50 - d.distribution().p50) * 1e3 for d, e in zip(direct_c1, epp_c1, strict=True)]
    decisions = [1e6 / us if us > 0 else float("nan") for us in cpu_per_request]
    pool = PoolOverhead(
        pods=pods,
        direct_c1=_median_distribution(direct_c1), epp_c1=_median_distribution(epp_c1),
        direct_cn=_median_distribution(direct_cn), epp_cn=_median_distribution(epp_cn),
        concurrency=settings.concurrency,
        direct_cn_rps=_median([r.throughput for r in direct_cn]), epp_cn_rps=_median([r.throughput for r in epp_cn]),
        epp_errors=sum(r.errors for r in (*epp_c1, *epp_cn)),
        epp_cpu_us_per_request=_median(cpu_per_request),
        epp_idle_cpu_percent=_median(idle),
        added_c1_p50_runs_ms=added_c1, decisions_runs=decisions, idle_cpu_runs=idle, runs=settings.repeats,
        fixed_idle_cpu_percent=_median(fixed), fixed_idle_cpu_runs=fixed,
        ext_proc_mode=settings.ext_proc_modes[0], mode_added_c1_p50_runs_ms=mode_c1,
        mode_decisions_runs=mode_decisions,
    )
    longs = []
    for c, (direct_runs, epp_runs) in long_runs.items():
        if not direct_runs:
            continue
        longs.append(LongPromptOverhead(
            pods=pods, concurrency=c, body_bytes=round(sum(len(b) for b in long_bodies) / len(long_bodies)),
            direct=_median_distribution(direct_runs), epp=_median_distribution(epp_runs),
            errors=sum(r.errors for r in (*direct_runs, *epp_runs)),
            added_p50_runs_ms=[(e.distribution().p50 - d.distribution().p50) * 1e3
                               for d, e in zip(direct_runs, epp_runs, strict=True)],
            direct_rps=_median([r.throughput for r in direct_runs]), epp_rps=_median([r.throughput for r in epp_runs]),
            epp_cpu_us_per_request=_median(long_cpu[c])))
    return pool, longs


def measure_decisions(settings: OverheadSettings) -> list[DecisionLatency]:
    from epp.scheduling import benchmark

    config = str(settings.epp_config) if settings.epp_config is not None else None
    out = []
    for pods in settings.decision_pool_sizes:
        stats = benchmark.run(pods, max(100, settings.decisions), 2048, config)
        out.append(DecisionLatency(pods, stats["with_pre_request_p50_us"], stats["with_pre_request_p99_us"],
                                   stats["with_pre_request_mean_us"]))
    return out


def run_overhead(settings: OverheadSettings, progress: Callable[[str], None] = print) -> OverheadResult:
    settings.validate()
    say = progress
    bodies = chat_bodies()
    long_bodies = chat_bodies(8, settings.long_prompt_bytes) if settings.long_concurrency else []
    result = OverheadResult(body_bytes=round(sum(len(b) for b in bodies) / len(bodies)), repeats=settings.repeats,
                            idle_seconds=settings.idle_seconds)
    for index, pods in enumerate(settings.pool_sizes):
        pool, longs = measure_pool(pods, settings, bodies, long_bodies if index == 0 else (), progress)
        result.pools.append(pool)
        result.long_prompts.extend(longs)
        say(f"overhead pods={pods} (median of {pool.runs}): c=1 direct p50 {pool.direct_c1.p50 * 1e3:.3f} ms, with EPP "
            f"{pool.epp_c1.p50 * 1e3:.3f} ms (added p50 {pool.added_c1_p50_ms:.3f} ms, p99 "
            f"{pool.added_c1_p99_ms:.3f} ms); c={pool.concurrency} added p50 {pool.added_cn_p50_ms:.3f} ms, "
            f"{pool.epp_cn_rps:.0f} req/s vs direct {pool.direct_cn_rps:.0f}; EPP CPU "
            f"{pool.epp_cpu_us_per_request:.0f} us/request -> {pool.decisions_per_core_s:.0f} decisions/s "
            f"per core (idle {pool.epp_idle_cpu_percent:.1f}% CPU, fixed 50 ms {pool.fixed_idle_cpu_percent:.1f}%); "
            f"errors {pool.epp_errors}")
        say(f"   ext_proc mode {pool.ext_proc_mode} (reported): added c=1 p50 runs "
            f"{', '.join(f'{v:.3f}' for v in pool.added_c1_p50_runs_ms)} ms, decisions/s per core runs "
            f"{', '.join(f'{v:.0f}' for v in pool.decisions_runs)}")
        for mode, runs in pool.mode_added_c1_p50_runs_ms.items():
            say(f"   ext_proc mode {mode}: added c=1 p50 median {_median(runs):.3f} ms (runs "
                f"{', '.join(f'{v:.3f}' for v in runs)}), decisions/s per core median "
                f"{_median(pool.mode_decisions_runs[mode]):.0f} (runs "
                f"{', '.join(f'{v:.0f}' for v in pool.mode_decisions_runs[mode])})")
        for lp in longs:
            say(f"long prompts ({lp.body_bytes / 1000:.0f} KB) pods={lp.pods} c={lp.concurrency}: direct p50 "
                f"{lp.direct.p50 * 1e3:.1f} ms, with EPP {lp.epp.p50 * 1e3:.1f} ms (added p50 "
                f"{lp.added_p50_ms:.1f} ms), EPP CPU {lp.epp_cpu_us_per_request:,.0f} us/request, errors {lp.errors}")
    result.decisions = measure_decisions(settings)
    for d in result.decisions:
        say(f"decision latency pods={d.pods}: p50 {d.p50_us:.1f} us, p99 {d.p99_us:.1f} us")
    return result
