"""The chaos suite: each fault under streaming load through the real Envoy, counted.

Every scenario starts its own local stack (simulated pods, the EPP, Envoy, all on loopback,
supervised like a small cluster: crashed children come back with backoff), runs a bounded
streaming load (epp.chaos.load), injects one fault after a warm-up, heals it (or lets the
supervisor restart what died) and classifies every request. The rows go to
docs/reliability.md (`make chaos`); tests/e2e/test_chaos.py runs a short version with
assertions on the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from epp.chaos.load import LoadParams, LoadResult, StreamingLoad
from epp.localstack.stack import LocalStack, StackConfig, StackError, free_port

log = logging.getLogger("epp.chaos")


class ChaosError(RuntimeError):
    pass


@dataclass(slots=True)
class Timing:
    """How long each phase of a scenario lasts (seconds)."""

    warmup: float = 2.0  # load before the fault
    hold: float = 3.0  # how long a transient fault (hang, 500s, garbage, Redis down) lasts
    after: float = 4.0  # load after the fault was injected/healed
    concurrency: int = 8
    max_tokens: int = 40
    time_scale: float = 0.5  # simulator speed: 40 tokens stream for about a quarter second
    request_timeout: float = 15.0


@dataclass(slots=True)
class Row:
    fault: str
    sent: int
    failed_not_started: int
    cut_in_flight: int
    recovery_s: float
    cut_before_first_token: int = 0  # of cut_in_flight: no token had reached the client
    failures: list[str] = field(default_factory=list)  # a few failure details, for the log


@dataclass(slots=True)
class Context:
    stack: LocalStack
    timing: Timing
    redis: subprocess.Popen[bytes] | None = None
    kv_garbage_port: int = 0


Injector = Callable[[Context], Awaitable[None]]


@dataclass(slots=True)
class Scenario:
    name: str
    inject: Injector
    failure_mode: str = "FailClose"
    epp_replicas: int = 2
    kv_events: bool = False
    redis: bool = False


# --- faults ---------------------------------------------------------------------------------

async def _sim_faults(ctx: Context, pod_index: int, faults: dict[str, object]) -> None:
    pod = ctx.stack.pods[pod_index]
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.post(f"http://127.0.0.1:{pod.port}/sim/faults", json=faults)
        r.raise_for_status()


async def pod_sigkill(ctx: Context) -> None:
    await asyncio.to_thread(ctx.stack.kill, ctx.stack.pods[0].name)  # the supervisor restarts it


async def pod_hang(ctx: Context) -> None:
    # Accepts connections, never answers: inference, /health and /metrics all hang.
    on: dict[str, object] = {"hang_requests": True, "hang_health": True, "metrics_hang": True}
    await _sim_faults(ctx, 0, on)
    await asyncio.sleep(ctx.timing.hold)
    await _sim_faults(ctx, 0, dict.fromkeys(on, False))


async def pod_500s(ctx: Context) -> None:
    await _sim_faults(ctx, 0, {"error_rate": 1.0, "error_status": 500})
    await asyncio.sleep(ctx.timing.hold)
    await _sim_faults(ctx, 0, {"error_rate": 0.0})


async def pod_metrics_garbage(ctx: Context) -> None:
    await _sim_faults(ctx, 0, {"metrics_garbage": True})
    await asyncio.sleep(ctx.timing.hold)
    await _sim_faults(ctx, 0, {"metrics_garbage": False})


async def epp_sigkill(ctx: Context) -> None:
    for epp in ctx.stack.epps:  # every replica: no EPP at all until the supervisor restarts them
        await asyncio.to_thread(ctx.stack.kill, epp.name)


async def epp_replica_loss(ctx: Context) -> None:
    await asyncio.to_thread(ctx.stack.kill, ctx.stack.epps[-1].name)


async def epp_rolling_update(ctx: Context) -> None:
    # SIGTERM: the replica drains (NOT_SERVING first, then up to 5 s for open streams) and the
    # supervisor starts the new one, as a Deployment's rolling update would.
    await asyncio.to_thread(ctx.stack.kill, ctx.stack.epps[-1].name, signal.SIGTERM)


async def envoy_restart(ctx: Context) -> None:
    await asyncio.to_thread(ctx.stack.kill, "envoy")


async def kv_garbage(ctx: Context) -> None:
    """Malformed KV-event messages into the EPP's ZMQ SUB socket for the hold time."""
    import zmq
    import zmq.asyncio

    zctx = zmq.asyncio.Context()
    sock = zctx.socket(zmq.PUB)
    sock.connect(f"tcp://127.0.0.1:{ctx.kv_garbage_port}")
    rng = random.Random(7)
    pod = ctx.stack.pods[0]
    topic = f"kv@127.0.0.1:{pod.serving_port}@{ctx.stack.cfg.model}".encode()
    try:
        deadline = time.monotonic() + ctx.timing.hold
        seq = 0
        while time.monotonic() < deadline:
            seq += rng.choice((1, 1, 1, 1000, -5))
            kind = rng.randrange(5)
            if kind == 0:  # random payload
                frames = [topic, max(seq, 0).to_bytes(8, "big"), rng.randbytes(rng.randrange(1, 512))]
            elif kind == 1:  # wrong frame count
                frames = [topic, rng.randbytes(3)]
            elif kind == 2:  # valid msgpack, wrong shape
                frames = [topic, max(seq, 0).to_bytes(8, "big"), b"\x93\xa3abc\x90\xc0"]
            elif kind == 3:  # short sequence field
                frames = [topic, b"\x01", b"\x90"]
            else:  # an event batch whose events are garbage
                frames = [topic, max(seq, 0).to_bytes(8, "big"), b"\x93\xcb" + rng.randbytes(8) + b"\x92\x01\xa1x\xc0"]
            await sock.send_multipart(frames)
            await asyncio.sleep(0.002)
    finally:
        sock.close(0)
        zctx.term()


async def redis_down(ctx: Context) -> None:
    assert ctx.redis is not None
    ctx.redis.kill()
    await asyncio.to_thread(ctx.redis.wait, 5)
    await asyncio.sleep(ctx.timing.hold)


# Scenarios that need the same stack run one after another on it (the supervisor brings back
# what a fault killed), so keep them adjacent: each group costs one stack start-up. Every stack
# has 3 pods and 2 EPP replicas; "EPP SIGKILL" kills both, which is what a single EPP's death is.
SCENARIOS: list[Scenario] = [
    Scenario("pod SIGKILL", pod_sigkill),
    Scenario("pod hang (accepts, never answers)", pod_hang),
    Scenario("pod returns 500s", pod_500s),
    Scenario("pod metrics endpoint returns garbage", pod_metrics_garbage),
    Scenario("EPP replica loss (1 of 2), FailClose", epp_replica_loss),
    Scenario("EPP rolling update (SIGTERM 1 of 2), FailClose", epp_rolling_update),
    Scenario("EPP SIGKILL, FailClose", epp_sigkill),
    Scenario("Envoy restart (SIGKILL)", envoy_restart),
    Scenario("EPP replica loss (1 of 2), FailOpen", epp_replica_loss, failure_mode="FailOpen"),
    Scenario("EPP SIGKILL, FailOpen", epp_sigkill, failure_mode="FailOpen"),
    # With the Redis index configured, so both share one stack (Redis goes down last). One EPP:
    # it binds the ZMQ endpoint the garbage is sent to.
    Scenario("garbage KV events", kv_garbage, kv_events=True, redis=True, epp_replicas=1),
    Scenario("Redis down (Redis KV index configured)", redis_down, kv_events=True, redis=True, epp_replicas=1),
]


# --- running --------------------------------------------------------------------------------

def _precise_config(path: Path, garbage_port: int, redis_url: str | None) -> Path:
    index: dict[str, object] = {"kvBlockIndexConfig": {"redisConfig": {"address": redis_url}}} if redis_url else {}
    plugins: list[dict[str, object]] = [
        {"type": "precise-prefix-cache-scorer", "name": "precise", "parameters": {
            "tokenProcessorConfig": {"blockSize": 16},
            "kvEventsConfig": {"discoverPods": True, "zmqEndpoint": f"tcp://127.0.0.1:{garbage_port}"},
            **({"indexerConfig": index} if index else {})}},
        {"type": "queue-scorer"},
        {"type": "max-score-picker"},
    ]
    doc = {"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig",
           "plugins": plugins,
           "schedulingProfiles": [{"name": "default", "plugins": [
               {"pluginRef": "precise", "weight": 3}, {"pluginRef": "queue-scorer", "weight": 2},
               {"pluginRef": "max-score-picker"}]}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _start_redis(run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ChaosError("redis-server not found: the 'Redis down' fault needs it (apt-get install redis-server)")
    port = free_port()
    log_file = open(run_dir / "redis.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(run_dir)], stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log_file.close()
    deadline = time.monotonic() + 10
    import socket

    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ChaosError(f"redis-server did not start; see {run_dir / 'redis.log'}")
        time.sleep(0.05)


def _stack_key(s: Scenario) -> tuple[str, int, bool, bool]:
    return (s.failure_mode, s.epp_replicas, s.kv_events, s.redis)


def run_group(scenarios: list[Scenario], timing: Timing, work_dir: Path,
              progress: Callable[[Row], None] | None = None) -> list[Row]:
    """Scenarios sharing one stack configuration, one after another on one stack."""
    first = scenarios[0]
    run_dir = work_dir / re.sub(r"[^a-z0-9]+", "-", first.name.split(" (")[0].lower()).strip("-")
    run_dir.mkdir(parents=True, exist_ok=True)
    redis: subprocess.Popen[bytes] | None = None
    garbage_port = 0
    epp_config: Path | None = None
    rows: list[Row] = []
    try:
        if first.kv_events:
            redis_url = None
            if first.redis:
                redis, redis_url = _start_redis(run_dir)
            garbage_port = free_port()
            epp_config = _precise_config(run_dir / "epp-config.yaml", garbage_port, redis_url)
        stack = _start_stack(StackConfig(
            ports_free=True, run_dir=run_dir, pods=3, kv_events=first.kv_events, time_scale=timing.time_scale,
            failure_mode=first.failure_mode, epp_replicas=first.epp_replicas, supervise=True,
            epp_config=epp_config, access_log=True))
        try:
            for scenario in scenarios:
                stack.wait_ready(60)  # what the previous fault killed is back
                ctx = Context(stack, timing, redis, garbage_port)
                result, t_fault = asyncio.run(_drive(ctx, scenario.inject))
                rows.append(_row(scenario.name, result, t_fault))
                if progress is not None:
                    progress(rows[-1])
        finally:
            stack.stop(sig=signal.SIGKILL)  # nothing to drain: the measurements are taken
    finally:
        if redis is not None and redis.poll() is None:
            redis.send_signal(signal.SIGTERM)
            redis.wait(5)
    return rows


def _start_stack(cfg: StackConfig) -> LocalStack:
    """Start the stack; once more on fresh ports if a port was taken meanwhile (other jobs on
    this machine pick free ports too)."""
    for attempt in range(2):
        stack = LocalStack(cfg)
        try:
            stack.start(timeout=90)
            return stack
        except StackError as e:
            if attempt == 1 or "address already in use" not in str(e):
                raise
            log.warning("a port was taken while the stack started; again on fresh ports")
            cfg = dataclasses.replace(cfg, listen_port=0)  # __post_init__ picks a new batch
    raise AssertionError("unreachable")


async def _drive(ctx: Context, inject: Injector) -> tuple[LoadResult, float]:
    t = ctx.timing
    load = StreamingLoad(LoadParams(url=ctx.stack.url, model=ctx.stack.cfg.model, concurrency=t.concurrency,
                                    max_tokens=t.max_tokens, duration_s=t.warmup + t.hold + t.after,
                                    max_requests=100_000, request_timeout_s=t.request_timeout))
    task = asyncio.create_task(load.run())
    await asyncio.sleep(t.warmup)
    t_fault = time.monotonic()
    await inject(ctx)
    return await task, t_fault


def _row(name: str, result: LoadResult, t_fault: float) -> Row:
    records = result.records
    failed = [r for r in records if r.outcome != "ok"]
    # Recovery: from the fault until the last request that failed ended (0: nothing failed).
    recovery = max((r.ended_at - t_fault for r in failed), default=0.0)
    return Row(fault=name, sent=len(records),
               failed_not_started=sum(1 for r in failed if r.outcome == "failed_not_started"),
               cut_in_flight=sum(1 for r in failed if r.outcome == "cut_in_flight"),
               cut_before_first_token=sum(1 for r in failed if r.outcome == "cut_in_flight" and not r.tokens),
               recovery_s=max(recovery, 0.0),
               failures=[f"{r.outcome} {r.status} {r.detail}" for r in failed[:5]])


def run_all(scenarios: list[Scenario], timing: Timing, work_dir: Path | None = None,
            progress: Callable[[Row], None] | None = None) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="epp-chaos-") as tmp:
        base = work_dir or Path(tmp)
        for _, group in itertools.groupby(scenarios, key=_stack_key):
            rows += run_group(list(group), timing, base, progress)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| fault | requests sent | failed not-started | cut in-flight (before the first token) | recovery time |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.fault} | {r.sent} | {r.failed_not_started} | {r.cut_in_flight} "
                     f"({r.cut_before_first_token}) | {r.recovery_s:.2f} s |")
    return "\n".join(lines)


def environment_note() -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs (shared), loopback"
