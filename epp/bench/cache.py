"""`epp bench cache`: the exact-response cache on an FAQ-style workload.

    python -m epp bench cache            # ~1.5 min: 600 requests, then the side-by-side hit latency
    python -m epp bench cache --quick    # ~40 s smoke run
    python -m epp bench cache --redis    # the cache in a local redis-server instead of memory

The stack: simulated pods, the EPP with `--response-cache` (rule `model: "*"`), Envoy set up
for the cache (EnvoyConfigParams.response_cache). The workload: `users` users of `tenants`
organisations (the fairness-ID header; one organisation's users share its entries) ask
deterministic (temperature 0) questions; a `repeat_share` of them come from a list of FAQ
questions, Zipf-distributed (a few are asked very often), the rest are one-off questions.
Organisation 0's app streams, organisation 1's does not. A closed loop of `concurrency`
clients sends them.

Reported: the hit rate; TTFT p50/p99 (time to the first body byte) of hits and of misses; the
requests no simulated pod saw (the pods' own `vllm:request_success_total`, so independent of the
EPP's counting); and the EPP's CPU per hit (its process CPU over a hits-only phase, minus its
idle rate). Then the latency a hit adds over Envoy alone, measured side by side with one
sequential keep-alive client: the stack's Envoy + EPP answering a cached question vs a second
Envoy (`--concurrency 1`, the same filter chain minus ext_proc, the same machine) answering
the same bytes with a direct_response.
The target is a hit p50 under 5 ms over Envoy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from epp.bench.envoy_configs import (
    _admin,
    _listener,
    epp_chain_without_ext_proc,
    instant_upstream_config,
    lb_envoy_config,
)
from epp.bench.overhead import _envoy, _read_chunked, _spawn, parse_head, session_cpu_seconds
from epp.bench.routers import stop_process, wait_http
from epp.bench.stats import Distribution
from epp.headers import FAIRNESS_ID
from epp.localstack.envoy_config import EnvoyConfigParams, envoy_config_yaml
from epp.localstack.stack import POOL_LABELS, REPO, LocalStack, StackConfig, free_ports

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CACHE_RULES = """apiVersion: epp.llm-d.ai/v1alpha1
kind: ResponseCacheConfig
rules:
- {model: "*", ttlSeconds: 600}
"""
_TOPICS = ("opening hours", "password reset", "refund policy", "shipping times", "invoice download",
           "plan upgrade", "account deletion", "two-factor login", "API rate limits", "data export",
           "team invitations", "billing address", "student discount", "mobile app", "dark mode",
           "language settings", "email notifications", "gift cards", "order tracking", "privacy policy")


@dataclass(slots=True)
class CacheBenchSettings:
    requests: int = 600
    users: int = 300
    tenants: int = 2
    faq_questions: int = 40
    repeat_share: float = 0.7  # share of requests that are FAQ questions
    zipf_s: float = 1.1
    concurrency: int = 8
    max_tokens: int = 48
    time_scale: float = 0.2  # simulator speed
    pods: int = 2
    hit_phase_requests: int = 300  # hits only: EPP CPU per hit
    # Alternating rounds: load on the shared machine drifts, so arms are compared round by round
    # (paired per-round p50 differences) as well as over all samples.
    side_by_side_rounds: int = 10
    side_by_side_requests: int = 50  # per arm and round
    redis: bool = False
    seed: int = 15
    run_dir: Path = field(default_factory=lambda: REPO / ".run" / "bench" / "cache")
    out_dir: Path = field(default_factory=lambda: REPO / "docs" / "bench-results")


@dataclass(slots=True)
class Sample:
    tenant: int
    stream: bool
    faq: bool
    hit: bool
    status: int
    ttft_s: float
    total_s: float


@dataclass(slots=True)
class CacheBenchResult:
    settings: dict[str, Any]
    requests: int
    errors: int
    hits: int
    hit_rate: float
    ttft_hit: Distribution
    ttft_miss: Distribution
    total_hit: Distribution
    total_miss: Distribution
    pod_requests: int
    pod_requests_saved: int
    epp_cpu_ms_per_hit: float
    hit_latency: Distribution  # side by side, sequential client: Envoy + EPP answering from the cache
    envoy_alone: Distribution  # ... and Envoy alone answering the same bytes
    added_p50_ms: float
    added_p99_ms: float
    epp_metrics: dict[str, float]
    # Per round: p50 of the hit arm minus p50 of Envoy alone (ms); median and min-max reported.
    added_p50_rounds_ms: list[float] = field(default_factory=list)
    # Instant upstreams, one sequential client: what the cache costs the requests it does not
    # answer. arm -> latency distribution (seconds); see measure_processing_cost.
    processing_cost: dict[str, Distribution] = field(default_factory=dict)
    cost_added_rounds_ms: dict[str, list[float]] = field(default_factory=dict)  # per-round p50 - alone p50
    measured: str = ""


# --- workload ------------------------------------------------------------------------------------

def faq_questions(count: int) -> list[str]:
    return [f"Question {i}: how does {_TOPICS[i % len(_TOPICS)]} work for my account"
            f"{'' if i < len(_TOPICS) else ' on the business plan'}?" for i in range(count)]


def build_workload(s: CacheBenchSettings) -> list[tuple[int, int, dict[str, Any]]]:
    """(user, tenant, body) per request, in arrival order."""
    rng = random.Random(s.seed)
    faq = faq_questions(s.faq_questions)
    weights = [1.0 / (rank + 1) ** s.zipf_s for rank in range(len(faq))]
    out = []
    for i in range(s.requests):
        user = rng.randrange(s.users)
        tenant = user % s.tenants
        if rng.random() < s.repeat_share:
            question = rng.choices(faq, weights)[0]
        else:
            question = f"User {user} asks (#{i}): can you look at my order {rng.randrange(10**6)}?"
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": question}],
                                "max_tokens": s.max_tokens, "temperature": 0, "stream": tenant == 0}
        if tenant == 0:
            body["stream_options"] = {"include_usage": True}
        out.append((user, tenant, body))
    return out


async def _one(client: httpx.AsyncClient, url: str, tenant: int, body: dict[str, Any], faq: bool) -> Sample:
    start = time.perf_counter()
    ttft = 0.0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers={FAIRNESS_ID: f"org-{tenant}"}) as r:
        async for chunk in r.aiter_raw():
            if chunk and not ttft:
                ttft = time.perf_counter() - start
        total = time.perf_counter() - start
        return Sample(tenant, bool(body["stream"]), faq, r.headers.get("x-epp-cache") == "hit", r.status_code,
                      ttft or total, total)


async def run_workload(url: str, work: Sequence[tuple[int, int, dict[str, Any]]], concurrency: int,
                       faq: set[str]) -> list[Sample]:
    queue = list(reversed(work))
    samples: list[Sample] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            _, tenant, body = queue.pop()
            samples.append(await _one(client, url, tenant, body, body["messages"][0]["content"] in faq))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return samples


# --- measurements --------------------------------------------------------------------------------

def pod_requests(stack: LocalStack) -> int:
    total = 0.0
    for pod in stack.pods:
        text = httpx.get(f"{stack.pod_url(pod)}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("vllm:request_success_total"):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def epp_metrics(stack: LocalStack) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"(epp_response_cache_\w+_total)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            name = m.group(1) + (m.group(2) or "")
            out[name] = out.get(name, 0.0) + float(m.group(3))
    return out


def _raw_request(port: int, body: bytes, tenant: int, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"%s: org-%d\r\n%sContent-Length: %d\r\n\r\n"
            % (port, FAIRNESS_ID.encode(), tenant, extra, len(body))) + body


async def sequential(port: int, request: bytes, count: int) -> list[float]:
    """One keep-alive connection, `count` requests back to back; latency to the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[float] = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if length >= 0:
                await reader.readexactly(length)
            else:
                await _read_chunked(reader)
            if status != 200:
                raise RuntimeError(f"side-by-side request answered {status}")
            out.append(time.perf_counter() - start)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return out


def alone_envoy_config(port: int, admin: int, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body.decode()}},
             "response_headers_to_add": [{"header": {"key": k, "value": v},
                                          "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                                         for k, v in headers.items()]}
    # The front Envoy's own filter chain minus ext_proc: the difference is the EPP alone.
    filters, buffer_limit = epp_chain_without_ext_proc()
    return {"admin": _admin(admin), "static_resources": {"listeners": [
        _listener("alone", port, [route], filters, buffer_limit)]}}


@contextlib.contextmanager
def redis_server(run_dir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on the PATH (apt-get install redis-server)")
    (port,) = free_ports(1)
    proc = _spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(run_dir)], run_dir / "logs" / "redis.log")
    try:
        _wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


COST_ARMS = {
    "envoy-alone": "Envoy alone (least-request to the instant upstream, no ext_proc)",
    "today": "default Envoy config + EPP without cache, sampled request",
    "cache-config-sampled": "cache Envoy config + EPP with cache, sampled request (not cacheable)",
    "cache-config-no-store": "cache Envoy config + EPP with cache, `cache-control: no-store`",
    "cache-config-fill": "cache Envoy config + EPP with cache, temperature 0 + `no-cache` (a fill every time)",
    "cache-config-hit": "cache Envoy config + EPP with cache, temperature 0 (a hit)",
}


def _cost_body(temperature: float) -> bytes:
    words = " ".join(f"word{k % 97}" for k in range(400))
    return json.dumps({"model": MODEL, "max_tokens": 16, "temperature": temperature,
                       "messages": [{"role": "user", "content": f"Summarise: {words}"}]}).encode()


def measure_processing_cost(s: CacheBenchSettings, progress: Any = print, redis_url: str = ""
                            ) -> tuple[dict[str, Distribution], dict[str, list[float]]]:
    """Instant upstreams (an Envoy answering every request at once), so the numbers are the
    router path only. Two EPPs on the same pool: one without cache behind the default Envoy
    config ("today"), one with the cache behind EnvoyConfigParams(response_cache=True)."""
    run_dir = s.run_dir / "cost"
    run_dir.mkdir(parents=True, exist_ok=True)
    (up, up_admin, alone, alone_admin, front_a, admin_a, front_b, admin_b, grpc_a, health_a, metrics_a,
     grpc_b, health_b, metrics_b) = free_ports(14)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = _envoy(instant_upstream_config([up], up_admin, MODEL), "upstream", run_dir, up_admin)
        procs.append(upstream)
        procs.append(_envoy(lb_envoy_config(alone, alone_admin, [("127.0.0.1", up)], "LEAST_REQUEST"),
                            "alone", run_dir, alone_admin))
        endpoints = run_dir / "endpoints.yaml"
        endpoints.write_text(yaml.safe_dump({"pods": [{"name": "pod-0", "ip": "127.0.0.1", "port": up,
                                                       "labels": dict(POOL_LABELS)}]}))
        rules = run_dir / "cache-rules.yaml"
        rules.write_text(CACHE_RULES)
        for name, grpc, health, metrics, extra in (("a", grpc_a, health_a, metrics_a, []),
                                                   ("b", grpc_b, health_b, metrics_b,
                                                    ["--response-cache", str(rules),
                                                     *(["--response-cache-redis", redis_url] if redis_url else [])])):
            pool = yaml.safe_load((REPO / "deploy/local/inferencepool.yaml").read_text())
            pool["spec"]["endpointPickerRef"]["port"]["number"] = grpc
            (run_dir / f"pool-{name}.yaml").write_text(yaml.safe_dump(pool))
            epp = _spawn([sys.executable, "-m", "epp", "serve", "--grpc-port", str(grpc),
                          "--health-port", str(health), "--metrics-port", str(metrics),
                          "--pool-file", str(run_dir / f"pool-{name}.yaml"),
                          "--endpoints-file", str(endpoints), "--log-level", "warning", *extra],
                         run_dir / "logs" / f"epp-{name}.log")
            procs.append(epp)
            wait_http(f"http://127.0.0.1:{health}/readyz", epp, run_dir / "logs" / f"epp-{name}.log", 60)
        procs.append(_envoy(envoy_config_yaml(EnvoyConfigParams(listen_port=front_a, admin_port=admin_a,
                                                                epp_port=grpc_a)), "front-today", run_dir, admin_a))
        procs.append(_envoy(envoy_config_yaml(EnvoyConfigParams(listen_port=front_b, admin_port=admin_b,
                                                                epp_port=grpc_b, response_cache=True)),
                            "front-cache", run_dir, admin_b))
        for port in (alone, front_a, front_b):
            _wait_port(port)
        sampled, det = _cost_body(0.7), _cost_body(0.0)
        requests = {
            "envoy-alone": _raw_request(alone, sampled, 1),
            "today": _raw_request(front_a, sampled, 1),
            "cache-config-sampled": _raw_request(front_b, sampled, 1),
            "cache-config-no-store": _raw_request(front_b, det, 1, {"cache-control": "no-store"}),
            "cache-config-fill": _raw_request(front_b, det, 1, {"cache-control": "no-cache"}),
            "cache-config-hit": _raw_request(front_b, det, 1),
        }
        ports = {"envoy-alone": alone, "today": front_a}
        for arm, request in requests.items():  # warm-up; the first fill makes the hit arm hit
            for _ in range(100):
                with contextlib.suppress(OSError, RuntimeError, asyncio.IncompleteReadError):
                    asyncio.run(sequential(ports.get(arm, front_b), request, 20))
                    break
                time.sleep(0.1)
        samples: dict[str, list[float]] = {arm: [] for arm in requests}
        rounds: dict[str, list[float]] = {arm: [] for arm in requests}
        progress(f"cache bench: processing cost, {s.side_by_side_rounds} rounds")
        for _ in range(s.side_by_side_rounds):
            p50: dict[str, float] = {}
            for arm, request in requests.items():
                got = asyncio.run(sequential(ports.get(arm, front_b), request, s.side_by_side_requests))
                samples[arm] += got
                p50[arm] = Distribution.of(got).p50
            for arm in requests:
                rounds[arm].append(1000 * (p50[arm] - p50["envoy-alone"]))
        return {arm: Distribution.of(v) for arm, v in samples.items()}, rounds
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def run_cache_bench(s: CacheBenchSettings, progress: Any = print) -> CacheBenchResult:
    s.run_dir.mkdir(parents=True, exist_ok=True)
    rules = s.run_dir / "cache-rules.yaml"
    rules.write_text(CACHE_RULES)
    with contextlib.ExitStack() as stack_ctx:
        epp_args = ["--response-cache", str(rules)]
        redis_url = ""
        if s.redis:
            redis_url = stack_ctx.enter_context(redis_server(s.run_dir))
            epp_args += ["--response-cache-redis", redis_url]
        stack = LocalStack(StackConfig(ports_free=True, run_dir=s.run_dir / "stack", pods=s.pods,
                                       time_scale=s.time_scale, kv_events=False, response_cache=True,
                                       epp_args=epp_args))
        stack_ctx.callback(stack.stop)
        stack.start(timeout=60)
        work = build_workload(s)
        faq = set(faq_questions(s.faq_questions))
        pods_before = pod_requests(stack)
        progress(f"cache bench: {s.requests} requests, {s.users} users, {s.tenants} tenants, "
                 f"concurrency {s.concurrency}")
        samples = asyncio.run(run_workload(stack.url, work, s.concurrency, faq))
        pods_used = pod_requests(stack) - pods_before

        # Hits only (every FAQ question is cached by now): the EPP's CPU per hit.
        session = stack.procs[stack.epps[0].name].pid
        idle0, t0 = session_cpu_seconds(session), time.perf_counter()
        time.sleep(2.0)
        idle_rate = (session_cpu_seconds(session) - idle0) / (time.perf_counter() - t0)
        hot = [(u, t, b) for u, t, b in work if b["messages"][0]["content"] in faq]
        hot = (hot * (s.hit_phase_requests // max(len(hot), 1) + 1))[: s.hit_phase_requests]
        cpu0, t0 = session_cpu_seconds(session), time.perf_counter()
        hit_samples = asyncio.run(run_workload(stack.url, hot, s.concurrency, faq))
        cpu = session_cpu_seconds(session) - cpu0 - idle_rate * (time.perf_counter() - t0)
        phase_hits = sum(x.hit for x in hit_samples)
        cpu_per_hit_ms = 1000 * cpu / phase_hits if phase_hits else float("nan")

        # Side by side: a cached non-streaming question through Envoy + EPP vs Envoy alone.
        question = next(b for _, t, b in hot if t == 1) if s.tenants > 1 else hot[0][2]
        body = json.dumps(question).encode()
        cached = httpx.post(f"{stack.url}/v1/chat/completions", content=body,
                            headers={FAIRNESS_ID: "org-1", "content-type": "application/json"}, timeout=30)
        if cached.headers.get("x-epp-cache") != "hit":
            raise RuntimeError("the side-by-side question is not cached")
        alone_port, alone_admin = free_ports(2)
        alone = _envoy(alone_envoy_config(alone_port, alone_admin, cached.content,
                                          {"content-type": "application/json", "x-epp-cache": "hit"}),
                       "envoy-alone", s.run_dir, alone_admin)
        stack_ctx.callback(stop_process, alone)
        _wait_port(alone_port)
        via_epp, via_alone = [], []
        req_epp = _raw_request(stack.cfg.listen_port, body, 1)
        req_alone = _raw_request(alone_port, body, 1)
        asyncio.run(sequential(alone_port, req_alone, 20))  # warm-up
        asyncio.run(sequential(stack.cfg.listen_port, req_epp, 20))
        paired: list[float] = []
        for _ in range(s.side_by_side_rounds):
            hit_round = asyncio.run(sequential(stack.cfg.listen_port, req_epp, s.side_by_side_requests))
            alone_round = asyncio.run(sequential(alone_port, req_alone, s.side_by_side_requests))
            via_epp += hit_round
            via_alone += alone_round
            paired.append(1000 * (Distribution.of(hit_round).p50 - Distribution.of(alone_round).p50))
        metrics = epp_metrics(stack)
        stack.stop()
        cost, cost_rounds = measure_processing_cost(s, progress, redis_url)

    ok = [x for x in samples if x.status == 200]
    hits = [x for x in ok if x.hit]
    misses = [x for x in ok if not x.hit]
    hit_d, alone_d = Distribution.of(via_epp), Distribution.of(via_alone)
    return CacheBenchResult(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        requests=len(samples), errors=len(samples) - len(ok), hits=len(hits),
        hit_rate=len(hits) / len(samples) if samples else float("nan"),
        ttft_hit=Distribution.of([x.ttft_s for x in hits]), ttft_miss=Distribution.of([x.ttft_s for x in misses]),
        total_hit=Distribution.of([x.total_s for x in hits]),
        total_miss=Distribution.of([x.total_s for x in misses]),
        pod_requests=pods_used, pod_requests_saved=len(samples) - pods_used,
        epp_cpu_ms_per_hit=cpu_per_hit_ms, hit_latency=hit_d, envoy_alone=alone_d,
        added_p50_ms=1000 * (hit_d.p50 - alone_d.p50), added_p99_ms=1000 * (hit_d.p99 - alone_d.p99),
        added_p50_rounds_ms=paired, epp_metrics=metrics, processing_cost=cost, cost_added_rounds_ms=cost_rounds)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def report(r: CacheBenchResult) -> str:
    def ms(d: Distribution) -> str:
        return f"{1000 * d.p50:.2f} / {1000 * d.p99:.2f}"

    def rounds(values: Sequence[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values):+.2f} ({min(values):+.2f} .. {max(values):+.2f})"

    verdict = "met" if r.added_p50_ms < 5.0 else "MISSED"
    return "\n".join([
        f"## Response cache benchmark ({r.measured})",
        "",
        f"- requests: {r.requests} ({r.errors} errors); hits: {r.hits}; hit rate: {100 * r.hit_rate:.1f}%",
        f"- simulated-pod requests: {r.pod_requests}; saved: {r.pod_requests_saved} "
        f"({100 * r.pod_requests_saved / max(r.requests, 1):.1f}% of all requests never reached a pod)",
        f"- TTFT p50 / p99 (ms): hits {ms(r.ttft_hit)} (n={r.ttft_hit.count}); "
        f"misses {ms(r.ttft_miss)} (n={r.ttft_miss.count})",
        f"- whole answer p50 / p99 (ms): hits {ms(r.total_hit)}; misses {ms(r.total_miss)}",
        f"- EPP CPU per hit: {r.epp_cpu_ms_per_hit:.3f} ms (hits-only phase, idle rate subtracted)",
        f"- side by side, one sequential client, {r.hit_latency.count} requests per arm: "
        f"Envoy + EPP hit p50 / p99 {ms(r.hit_latency)} ms; Envoy alone (direct_response, same bytes) "
        f"{ms(r.envoy_alone)} ms",
        f"- added by the EPP for a hit: p50 {r.added_p50_ms:.2f} ms, p99 {r.added_p99_ms:.2f} ms "
        f"(per round, paired: median p50 added {rounds(r.added_p50_rounds_ms)} ms) "
        f"(target p50 < 5 ms: {verdict})",
        "",
        "What the cache costs the requests it does not answer (instant upstreams, the same store, "
        "one sequential "
        f"keep-alive client, {s_count(r)} requests per arm, alternating rounds):",
        "",
        "| arm | p50 ms | p99 ms | p50 added over Envoy alone | per round, paired: median (min .. max) |",
        "|---|---|---|---|---|",
        *(f"| {COST_ARMS.get(arm, arm)} | {1000 * d.p50:.2f} | {1000 * d.p99:.2f} | "
          f"{1000 * (d.p50 - r.processing_cost['envoy-alone'].p50):+.2f} | "
          f"{rounds(r.cost_added_rounds_ms.get(arm, []))} |"
          for arm, d in r.processing_cost.items()),
    ])


def s_count(r: CacheBenchResult) -> int:
    return next(iter(r.processing_cost.values())).count if r.processing_cost else 0


def add_cache_parser(bench_sub: Any) -> None:
    c = bench_sub.add_parser("cache", help="exact-response cache: FAQ workload, hit rate, hit vs miss TTFT, "
                                           "hit latency over Envoy alone (issue 15)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--quick", action="store_true", default=argparse.SUPPRESS, help="200 requests, short phases")
    c.add_argument("--requests", type=int, default=None)
    c.add_argument("--redis", action="store_true", help="keep the cache in a local redis-server")
    c.add_argument("--no-save", action="store_true", help="print only; write nothing under docs/bench-results")
    c.set_defaults(func=run_cache_only)


def run_cache_only(args: argparse.Namespace) -> int:
    s = CacheBenchSettings(redis=bool(args.redis))
    if getattr(args, "quick", False):
        s.requests, s.hit_phase_requests, s.side_by_side_rounds, s.side_by_side_requests = 200, 100, 3, 30
    if args.requests is not None:
        s.requests = args.requests
    command = "python -m epp bench cache" + (" --quick" if getattr(args, "quick", False) else "") \
        + (" --redis" if s.redis else "") + (f" --requests {args.requests}" if args.requests else "")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=False).stdout.strip() or "unknown"  # the code that runs
    result = run_cache_bench(s)
    now = dt.datetime.now(dt.UTC)
    result.measured = f"{now:%Y-%m-%d %H:%M} UTC with `{command}`, {'Redis' if s.redis else 'memory'} storage"
    text = report(result)
    print(text, flush=True)
    if not args.no_save:
        s.out_dir.mkdir(parents=True, exist_ok=True)
        path = s.out_dir / f"{now:%Y-%m-%d-%H%M}-cache-{'redis' if s.redis else 'memory'}-{rev}.json"
        path.write_text(json.dumps({"report": text, **asdict(result)}, indent=1, default=str) + "\n")
        print(f"raw results: {path}")
    return 0
