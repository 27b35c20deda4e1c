"""`epp bench latency`: predicted-latency routing with per-request SLOs (issue 18).

The workload (epp.bench.workloads.latency_slo): short multi-turn chats and long-prefill
prompts of 8k-30k tokens on a heterogeneous pool (pod 0 runs 2x slower), half the requests
carrying TTFT / TPOT SLO headers, at 70% and 90% of the pool's estimated prefill capacity.
Rows: Envoy round robin, our default config, and the predicted-latency profile
(epp/bench/configs/epp-latency.yaml). The EPP rows run with STREAMED response bodies through
ext_proc (first body chunk = first token, usage = TPOT), the same Envoy setup for both.

The latency row starts warm: a warm-up phase (its own requests, 70% load) trains the
predictor and saves its state (`stateFile`); every measured phase loads that state, so the
accuracy numbers are "after warm-up" and the phases are independent of each other.

Reported per phase and row: SLO attainment (share of SLO-bearing requests that met both
targets; errors count as misses), TTFT p90 of the long-prefill share, the slow pod's share
of the requests, the EPP's mean decision time (scheduler e2e) and prediction time per
decision, and the TTFT median absolute percentage error per pod (from the predictor's
(predicted, observed) pairs). Latencies are model seconds (wall / time scale).

Capacity: the simulator's prefill cost is `prefill_per_token_ms x slowdown` per token per pod
(epp/sim/config.py), so the pool prefills sum(1 / cost) tokens/s; an efficiency factor
accounts for step overheads and decode. Load x capacity / mean prompt tokens = the rate.
This is an estimate from the latency model, not a measured saturation point.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gzip
import json
import math
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from epp.bench.client import PhaseResult, RequestResult, run_phase
from epp.bench.routers import BENCH_SLOWDOWN, CONFIG_DIR, RouterSpec, RowSettings, running_router
from epp.bench.stats import percentile
from epp.bench.workloads import (
    HETEROGENEOUS_SLOW_POD,
    HETEROGENEOUS_SLOWDOWN,
    SIM_CHARS_PER_TOKEN,
    Workload,
    WorkloadParams,
    latency_slo,
)
from epp.headers import SLO_TPOT, SLO_TTFT
from epp.localstack.stack import REPO
from epp.sim.config import LatencyModel
from epp.tokenization.factory import shared_prompt_tokenizer
from epp.tokenization.prompt import ChatPrompt

ROUTERS = {
    "envoy-rr": RouterSpec("envoy-rr", "Envoy round_robin", "envoy", "ROUND_ROBIN"),
    "epp-default": RouterSpec("epp-default", "EPP default config", "epp", "", ours=True),
    "epp-latency": RouterSpec("epp-latency", "EPP predicted latency", "epp", "epp-latency.yaml", ours=True),
}
LATENCY_PROFILE = CONFIG_DIR / "epp-latency.yaml"  # the shipped predicted-latency profile
EFFICIENCY = 0.85  # share of a pod's time spent on prefill tokens at saturation (estimate)


@dataclass(slots=True)
class LatencyBenchSettings:
    pods: int = 4
    loads: tuple[float, ...] = (0.7, 0.9)
    duration_s: float = 60.0  # model seconds of arrivals per measured phase
    warmup_s: float = 40.0
    time_scale: float = 1.0
    slowdown: float = BENCH_SLOWDOWN
    gpu_blocks: int = 16_384  # 262k tokens per pod: a few 30k prompts fit at once
    max_tokens: int = 32
    seed: int = 1
    drain_s: float = 60.0  # wall seconds after the last arrival
    routers: tuple[str, ...] = ("envoy-rr", "epp-default", "epp-latency")
    run_dir: Path = Path(".run/bench-latency")
    # The epp-latency row's EndpointPickerConfig (its state file and save interval are set
    # by the bench): the shipped profile, or a variant of it to compare.
    latency_config: Path = LATENCY_PROFILE
    # `epp serve --workers N` for both EPP rows (the workers share their requests,
    # epp/latency/sharing.py); the MAPE comes from the state file the last worker saved.
    epp_workers: int = 1
    # Envoy's max concurrent streams per EPP connection (RowSettings.epp_max_streams): with
    # the default 32 most requests share one connection, so one worker.
    epp_max_streams: int = 32

    def validate(self) -> None:
        unknown = [r for r in self.routers if r not in ROUTERS]
        if unknown:
            raise ValueError(f"unknown router(s) {unknown}; known: {', '.join(ROUTERS)}")
        if not self.latency_config.is_file():
            raise ValueError(f"--latency-config: no such file: {self.latency_config}")
        if not all(0 < load <= 2 for load in self.loads):
            raise ValueError("loads must be within (0, 2]")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.time_scale <= 0:
            raise ValueError("--duration must be > 0, --warmup >= 0, --time-scale > 0")
        if self.epp_workers < 1:
            raise ValueError(f"--epp-workers must be >= 1, got {self.epp_workers}")
        if self.epp_max_streams < 1:
            raise ValueError(f"--epp-max-streams must be >= 1, got {self.epp_max_streams}")

    def row(self) -> RowSettings:
        return RowSettings(pods=self.pods, time_scale=self.time_scale, run_dir=self.run_dir,
                           gpu_blocks=self.gpu_blocks, slowdown=self.slowdown,
                           sim_args=["--max-model-len", "40000"],
                           pod_slowdown={HETEROGENEOUS_SLOW_POD: HETEROGENEOUS_SLOWDOWN},
                           response_body_mode="STREAMED",
                           epp_args=["--workers", str(self.epp_workers)] if self.epp_workers > 1 else [],
                           epp_max_streams=self.epp_max_streams,
                           # Longer than any deferral (maxDeferS), for both EPP rows alike.
                           envoy_message_timeout_ms=30_000)

    def capacity_tokens_per_s(self) -> float:
        per_token_ms = LatencyModel().prefill_per_token_ms * self.slowdown
        speeds = [1.0 / (HETEROGENEOUS_SLOWDOWN if i == HETEROGENEOUS_SLOW_POD else 1.0) for i in range(self.pods)]
        return EFFICIENCY * sum(speeds) * 1000.0 / per_token_ms


def prompt_tokens(workload: Workload) -> list[int]:
    """Each request's prompt tokens as the bench's pods count them (the simulator's simple
    tokenizer and chat template): a characters-per-token estimate put the load labelled 90% at
    114% of the capacity (chats tokenize at ~3.7 characters per token with their template)."""
    tokenizer = shared_prompt_tokenizer("simple")
    return [len(tokenizer.chat_ids(ChatPrompt.from_body({"messages": r.messages}))) for r in workload.requests]


def build_workload(settings: LatencyBenchSettings, load: float, duration_s: float, seed: int,
                   nonce: str) -> tuple[Workload, float]:
    """The workload at `load` x capacity: (workload, rate). The requests are drawn at 1 req/s,
    then their arrivals are compressed so that the prompt tokens of the requests that fall in
    `duration_s` arrive at `load` x the capacity (a fixed point: the mean prompt of the kept
    requests sets the rate, which sets which requests are kept)."""
    base = latency_slo(WorkloadParams(rate=1.0, count=100_000, duration_s=duration_s * 20, seed=seed,
                                      nonce=nonce, max_tokens=settings.max_tokens))
    capacity = load * settings.capacity_tokens_per_s()
    # Tokenizing is the slow part (about 1 us per token): only the requests a rate may keep, from a
    # first rate on a characters-per-token estimate.
    counted: list[int] = []

    def kept_tokens(rate: float) -> list[int]:
        n = sum(1 for r in base.requests if r.arrival_s / rate <= duration_s)
        if n > len(counted):
            counted.extend(prompt_tokens(dataclasses.replace(base, requests=base.requests[len(counted):n])))
        return counted[:n]

    estimate = [sum(len(m["content"]) for m in r.messages) // SIM_CHARS_PER_TOKEN for r in base.requests]
    rate = capacity / statistics.fmean(estimate)
    for _ in range(5):
        kept = kept_tokens(rate)
        rate = capacity / statistics.fmean(kept) if kept else rate
    requests = [dataclasses.replace(r, arrival_s=r.arrival_s / rate) for r in base.requests
                if r.arrival_s / rate <= duration_s]
    params = dataclasses.replace(base.params, rate=rate, count=len(requests), duration_s=duration_s)
    return dataclasses.replace(base, params=params, requests=requests), rate


def scaled(workload: Workload, time_scale: float) -> Workload:
    """SLO header values from model to wall milliseconds (the EPP measures wall time)."""
    requests = []
    for r in workload.requests:
        headers = {k: f"{float(v) * time_scale:g}" if k in (SLO_TTFT, SLO_TPOT) else v
                   for k, v in r.headers.items()}
        requests.append(dataclasses.replace(r, headers=headers))
    return dataclasses.replace(workload, requests=requests)


# --- one row of one phase -----------------------------------------------------------------------

@dataclass(slots=True)
class RowResult:
    router: str
    label: str
    load: float
    rate: float
    requests: int
    ok: int
    slo_requests: int = 0
    slo_met: int = 0
    attainment: float = math.nan
    attainment_chat: float = math.nan
    attainment_long: float = math.nan
    ttft_p90_long: float = math.nan
    ttft_p50_long: float = math.nan
    ttft_p90_chat: float = math.nan
    slow_pod_share: float = math.nan
    slow_pod_share_long: float = math.nan
    decision_mean_us: float = math.nan
    prediction_mean_us: float = math.nan
    decisions_by_worker: dict[str, int] = field(default_factory=dict)  # with --epp-workers N
    ttft_mape_by_pod: dict[str, float] = field(default_factory=dict)
    ttft_pairs_by_pod: dict[str, int] = field(default_factory=dict)
    tpot_mape_by_pod: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    per_request: list[dict[str, Any]] = field(default_factory=list)


def _tpot(r: RequestResult) -> float:
    return statistics.fmean(r.token_gaps_s) if r.token_gaps_s else 0.0


def summarize(spec: RouterSpec, load: float, rate: float, workload: Workload, phase: PhaseResult,
              time_scale: float, slow_pod: str) -> RowResult:
    out = RowResult(spec.key, spec.label, load, rate, len(workload.requests), sum(1 for r in phase.results if r.ok))
    met = {"chat": [0, 0], "long": [0, 0]}
    ttft = {"chat": [], "long": []}  # type: dict[str, list[float]]
    pods: Counter[str] = Counter()
    pods_long: Counter[str] = Counter()
    for req, res in zip(workload.requests, phase.results, strict=True):
        kind = req.session.split("/", 1)[0]
        t = res.ttft_s / time_scale if res.ok else math.nan
        tpot = _tpot(res) / time_scale if res.ok else math.nan
        if res.ok:
            ttft[kind].append(t)
            pods[res.pod] += 1
            if kind == "long":
                pods_long[res.pod] += 1
        slo_t = float(req.headers[SLO_TTFT]) / 1000 if SLO_TTFT in req.headers else None
        slo_p = float(req.headers[SLO_TPOT]) / 1000 if SLO_TPOT in req.headers else None
        ok_slo = None
        if slo_t is not None or slo_p is not None:
            ok_slo = res.ok and (slo_t is None or t <= slo_t) and (slo_p is None or tpot <= slo_p)
            met[kind][1] += 1
            met[kind][0] += int(ok_slo)
        out.per_request.append({"i": req.index, "kind": kind, "pod": res.pod, "ok": res.ok,
                                "ttft_s": round(t, 4) if t == t else None,
                                "tpot_s": round(tpot, 5) if tpot == tpot else None,
                                "slo_ttft_s": slo_t, "slo_tpot_s": slo_p, "slo_met": ok_slo,
                                "error": res.error[:80] if res.error else ""})
    out.slo_requests = met["chat"][1] + met["long"][1]
    out.slo_met = met["chat"][0] + met["long"][0]
    out.attainment = out.slo_met / out.slo_requests if out.slo_requests else math.nan
    out.attainment_chat = met["chat"][0] / met["chat"][1] if met["chat"][1] else math.nan
    out.attainment_long = met["long"][0] / met["long"][1] if met["long"][1] else math.nan
    out.ttft_p90_long = percentile(ttft["long"], 90)
    out.ttft_p50_long = percentile(ttft["long"], 50)
    out.ttft_p90_chat = percentile(ttft["chat"], 90)
    total = sum(pods.values())
    out.slow_pod_share = pods[slow_pod] / total if total else math.nan
    total_long = sum(pods_long.values())
    out.slow_pod_share_long = pods_long[slow_pod] / total_long if total_long else math.nan
    out.errors = sorted({r.error[:120] for r in phase.results if r.error})[:3]
    return out


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            total += float(match.group(2))
    return total


def epp_costs(metrics_text: str) -> tuple[float, float]:
    """(mean scheduler e2e decision time, mean prediction time per decision) in microseconds."""
    def mean(name: str) -> float:
        count = _metric_sum(metrics_text, f"{name}_count")
        return _metric_sum(metrics_text, f"{name}_sum") / count * 1e6 if count else math.nan

    return (mean("inference_extension_scheduler_e2e_duration_seconds"),
            mean("inference_objective_request_ttft_prediction_duration_seconds"))


def decisions_by_worker(metrics_text: str) -> dict[str, int]:
    """Scheduling decisions per EPP worker (the `worker` label of a merged /metrics); empty
    with one worker, whose series have no such label."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "scheduler_requests":
            for sample in family.samples:
                worker = sample.labels.get("worker")
                if sample.name == "scheduler_requests_total" and worker is not None:
                    out[worker] = out.get(worker, 0) + int(sample.value)
    return dict(sorted(out.items()))


def keep_predictor_states(run_dir: Path, result_path: Path) -> list[Path]:
    """Keep the predictor's states of a run beside its result, gzipped: the warm-up's and each
    load's (`<result stem>.warm-state.json.gz`, `.state-0.9.json.gz`). They hold the predicted
    and observed pairs the result's MAPE comes from, and the speeds and step times the predictor
    learnt; the run directory is emptied by the next run."""
    kept = []
    for state in sorted(run_dir.glob("*state*.json")):
        target = result_path.with_name(f"{result_path.stem}.{state.name}.gz")
        target.write_bytes(gzip.compress(state.read_bytes(), mtime=0))
        kept.append(target)
    return kept


def prediction_mape(state_path: Path) -> dict[str, tuple[dict[str, float], dict[str, int]]]:
    """Median absolute percentage error per pod, and the pairs it rests on, of each target
    ("ttft", "tpot") from the predictor's saved pairs (one read of the state file, which may be
    one kept gzipped beside a result: keep_predictor_states)."""
    out: dict[str, tuple[dict[str, float], dict[str, int]]] = {"ttft": ({}, {}), "tpot": ({}, {})}
    try:
        raw = gzip.decompress(state_path.read_bytes()) if state_path.suffix == ".gz" else state_path.read_bytes()
        state = json.loads(raw)
    except (OSError, ValueError):
        return out
    for pod, rows in state.get("errors", {}).items():
        for target, (mape, counts) in out.items():
            errs = [abs(p - a) / a for _, kind, p, a in rows if kind == target and a > 0]
            if errs:
                mape[pod] = statistics.median(errs)
                counts[pod] = len(errs)
    return out


def latency_config(run_dir: Path, name: str, state_file: Path, save_interval_s: float = 1.0,
                   source: Path = LATENCY_PROFILE) -> Path:
    data = yaml.safe_load(source.read_text())
    producers = [p for p in (data.get("plugins") or []) if isinstance(p, dict)
                 and p.get("type") == "predicted-latency-producer"] if isinstance(data, dict) else []
    if not producers:
        raise ValueError(f"{source}: not an EndpointPickerConfig with a predicted-latency-producer plugin")
    for plugin in producers:
        plugin["parameters"] = {**(plugin.get("parameters") or {}), "stateFile": str(state_file.resolve()),
                                "saveIntervalS": save_interval_s}
    path = run_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_row(settings: LatencyBenchSettings, spec: RouterSpec, workload: Workload, tag: str,
            state_file: Path | None = None) -> tuple[PhaseResult, str]:
    """Send the workload through the router; returns the phase and the EPP's /metrics text."""
    row = settings.row()
    deadline = workload.span_s * settings.time_scale + settings.drain_s
    metrics_text = ""
    with running_router(spec, row, tag) as router:
        phase = _run(router.url, scaled(workload, settings.time_scale), settings.time_scale, deadline)
        if spec.kind == "epp":
            with contextlib.suppress(httpx.HTTPError):
                metrics_text = httpx.get(f"http://127.0.0.1:{router.stack.epps[0].metrics_port}/metrics",
                                         timeout=5.0, trust_env=False).text
            if state_file is not None:
                time.sleep(2.5)  # the trainer saves every second: let it write the last pairs
    return phase, metrics_text


def _run(url: str, workload: Workload, time_scale: float, deadline: float) -> PhaseResult:
    import asyncio

    return asyncio.run(run_phase(url, workload, time_scale, deadline))


def run_latency_benchmark(settings: LatencyBenchSettings,
                          progress: Callable[[str], None] = print) -> dict[str, Any]:
    settings.validate()
    run_dir = settings.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    slow_pod = f"vllm-{HETEROGENEOUS_SLOW_POD}"
    result: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in dataclasses.asdict(settings).items()},
                              "capacity_tokens_per_s": settings.capacity_tokens_per_s(), "phases": []}
    if "epp-latency" in settings.routers:
        # The profile as run: a variant passed with --latency-config may not be kept.
        result["latency_config_text"] = settings.latency_config.read_text()
    warm_state = run_dir / "warm-state.json"
    if "epp-latency" in settings.routers and settings.warmup_s > 0:
        workload, rate = build_workload(settings, settings.loads[0], settings.warmup_s, settings.seed + 100, "warm")
        progress(f"== warm-up: {len(workload.requests)} requests at {rate:.2f} req/s over "
                 f"{settings.warmup_s:g} model-s")
        config = latency_config(run_dir, "warmup.yaml", warm_state, source=settings.latency_config)
        spec = dataclasses.replace(ROUTERS["epp-latency"], policy=str(config.resolve()))
        t0 = time.monotonic()
        phase, _ = run_row(settings, spec, workload, "warmup", warm_state)
        ok = sum(1 for r in phase.results if r.ok)
        mape, counts = prediction_mape(warm_state)["ttft"]
        progress(f"   warm-up done: ok {ok}/{len(workload.requests)}, TTFT MAPE per pod "
                 f"{ {k: round(v, 3) for k, v in mape.items()} } ({time.monotonic() - t0:.0f}s)")
        result["warmup"] = {"requests": len(workload.requests), "ok": ok, "rate": rate,
                            "ttft_mape_by_pod": mape, "pairs": counts}
    for load in settings.loads:
        workload, rate = build_workload(settings, load, settings.duration_s, settings.seed, f"load{load:g}")
        tokens = prompt_tokens(workload)
        long_count = sum(1 for r in workload.requests if r.session.startswith("long/"))
        progress(f"== load {load:.0%}: {len(workload.requests)} requests ({long_count} long prefills) at "
                 f"{rate:.2f} req/s, mean prompt {statistics.fmean(tokens):.0f} tokens")
        phase_out: dict[str, Any] = {"load": load, "rate": rate, "requests": len(workload.requests),
                                     "long_requests": long_count, "rows": []}
        for key in settings.routers:
            spec = ROUTERS[key]
            state_file: Path | None = None
            if key == "epp-latency":
                state_file = run_dir / f"state-{load:g}.json"
                if warm_state.exists():
                    shutil.copy(warm_state, state_file)
                config = latency_config(run_dir, f"latency-{load:g}.yaml", state_file,
                                        source=settings.latency_config)
                spec = dataclasses.replace(spec, policy=str(config.resolve()))
            t0 = time.monotonic()
            try:
                phase, metrics_text = run_row(settings, spec, workload, f"{key}-{load:g}", state_file)
            except Exception as e:  # one broken row must not void the run
                progress(f"   {spec.label:24s} FAILED: {type(e).__name__}: {str(e)[:200]}")
                phase_out["rows"].append({"router": key, "failed": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            row = summarize(ROUTERS[key], load, rate, workload, phase, settings.time_scale, slow_pod)
            if metrics_text:
                row.decision_mean_us, row.prediction_mean_us = epp_costs(metrics_text)
                row.decisions_by_worker = decisions_by_worker(metrics_text)
            if state_file is not None:
                by_target = prediction_mape(state_file)
                row.ttft_mape_by_pod, row.ttft_pairs_by_pod = by_target["ttft"]
                row.tpot_mape_by_pod = by_target["tpot"][0]
            phase_out["rows"].append(dataclasses.asdict(row))
            progress(f"   {spec.label:24s} ok {row.ok}/{row.requests} SLO attainment {row.attainment:6.1%} "
                     f"(chat {row.attainment_chat:6.1%}, long {row.attainment_long:6.1%}) long TTFT p90 "
                     f"{row.ttft_p90_long:6.2f}s slow-pod share {row.slow_pod_share:5.1%} decision "
                     f"{row.decision_mean_us:6.0f}us MAPE "
                     f"{ {k: round(v, 3) for k, v in row.ttft_mape_by_pod.items()} } TPOT MAPE "
                     f"{ {k: round(v, 3) for k, v in row.tpot_mape_by_pod.items()} } "
                     f"({time.monotonic() - t0:.0f}s)")
        result["phases"].append(phase_out)
    return result


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    return "unknown"


def _per_pod_percent(by_pod: dict[str, float]) -> str:
    """'vllm-0 12%, vllm-1 8%': per-pod shares, by pod name."""
    return ", ".join(f"{k.split('/')[-1]} {v:.0%}" for k, v in sorted(by_pod.items()))


def summary_markdown(result: dict[str, Any]) -> str:
    lines = ["| load | router | SLO attainment | chat | long | long TTFT p50 / p90 (s) | chat TTFT p90 (s) | "
             "slow pod share (long) | decision mean (us) | prediction (us) | TTFT MAPE per pod | TPOT MAPE per pod |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase in result["phases"]:
        for row in phase["rows"]:
            if "failed" in row:
                lines.append(f"| {phase['load']:.0%} | {row['router']} | failed: {row['failed'][:80]} |"
                             + " |" * 9)
                continue
            mape = _per_pod_percent(row["ttft_mape_by_pod"])
            tpot_mape = _per_pod_percent(row.get("tpot_mape_by_pod", {}))
            lines.append(
                f"| {phase['load']:.0%} | {row['label']} | {row['attainment']:.1%} | {row['attainment_chat']:.1%} | "
                f"{row['attainment_long']:.1%} | {row['ttft_p50_long']:.2f} / {row['ttft_p90_long']:.2f} | "
                f"{row['ttft_p90_chat']:.2f} | {row['slow_pod_share']:.1%} ({row['slow_pod_share_long']:.1%}) | "
                f"{row['decision_mean_us']:.0f} | {row['prediction_mean_us']:.1f} | {mape or '-'} | "
                f"{tpot_mape or '-'} |")
    return "\n".join(lines)


def decision_cost(decisions: int = 3000, pods: int = 4, seed: int = 1) -> dict[str, float]:
    """In-process cost of one scheduling decision (schedule + pre-request), microseconds:
    the default config vs the predicted-latency profile untrained and trained (the
    predictor fitted on synthetic samples), same requests and pod states. Median and mean."""
    import random

    from epp.config.loader import default_config_text, parse_scheduler_config
    from epp.datastore.datastore import Datastore
    from epp.datastore.endpoint import Endpoint
    from epp.latency.predictor import N_FEATURES
    from epp.latency.runtime import latency_runtime
    from epp.scheduling.registry import PluginContext
    from epp.scheduling.types import LLMRequest

    latency_text = LATENCY_PROFILE.read_text()
    out: dict[str, float] = {}
    for label, text, train in (("default", default_config_text(), False),
                               ("latency-untrained", latency_text, False),
                               ("latency-trained", latency_text, True)):
        rng = random.Random(seed)
        ctx = PluginContext(Datastore(), source=label)
        cfg = parse_scheduler_config(text, ctx, label)
        eps = [Endpoint(name=f"vllm-{i}", address="127.0.0.1", port=8000 + i) for i in range(pods)]
        runtime = latency_runtime(ctx.services) if "latency" in label else None
        if runtime is not None and train:
            for _ in range(200):
                for ep in eps:
                    x = [1.0] + [rng.random() * 10 for _ in range(N_FEATURES - 1)]
                    runtime.predictor.observe("ttft", ep.key, x, 0.05 + 0.1 * x[1] + 0.02 * x[2])
                    runtime.predictor.observe("tpot", ep.key, x, 0.01 + 0.001 * x[4])
            runtime.predictor.refit()
        samples: list[int] = []
        for i in range(decisions):
            for ep in eps:
                ep.metrics.waiting_queue_size = rng.randint(0, 4)
                ep.metrics.running_requests = rng.randint(0, 16)
                ep.metrics.kv_cache_usage = rng.random()
            prompt = f"system prompt {i % 8} " * 300 + f"question {i}"
            headers = {SLO_TTFT: "1000", SLO_TPOT: "100"} if i % 2 else {}
            req = LLMRequest(request_id=f"r{i}", model="m", target_model="m", prompt=prompt, headers=headers)
            t0 = time.perf_counter_ns()
            result, state = cfg.scheduler.schedule(req, eps)
            cfg.scheduler.pre_request(state, req, result)
            samples.append(time.perf_counter_ns() - t0)
            if runtime is not None:
                runtime.on_complete(req, {"status": 200})
        if runtime is not None:
            runtime.predictor.stop()
        warm = samples[decisions // 10:]
        out[f"{label}_median_us"] = statistics.median(warm) / 1e3
        out[f"{label}_mean_us"] = statistics.fmean(warm) / 1e3
    return out


def add_latency_parser(sub: Any) -> None:
    p = sub.add_parser("latency", help="predicted-latency routing with SLOs (issue 18)",
                       description="Heterogeneous pool, short chats + long prefills, SLOs on half: round "
                                   "robin vs the default config vs predicted-latency routing. Writes the raw "
                                   "JSON to docs/bench-results/ and prints a summary table.")
    p.add_argument("--loads", type=float, nargs="+", default=[0.7, 0.9])
    p.add_argument("--duration", type=float, default=60.0, help="model seconds of arrivals per phase")
    p.add_argument("--warmup", type=float, default=40.0, help="model seconds of the warm-up phase")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-config", type=Path, default=LATENCY_PROFILE,
                   help="EndpointPickerConfig of the predicted-latency row (default: the shipped profile, "
                        "epp/bench/configs/epp-latency.yaml); it needs a predicted-latency-producer")
    p.add_argument("--epp-workers", type=int, default=1,
                   help="`epp serve --workers N` for the EPP rows (default 1); see --epp-max-streams")
    p.add_argument("--epp-max-streams", type=int, default=32,
                   help="Envoy's max concurrent streams per connection to the EPP (default 32). The kernel "
                        "spreads connections over the workers: with 32 most requests share one connection, "
                        "so one worker; 2 spreads them")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench-results")
    p.add_argument("--cost-only", action="store_true",
                   help="only the in-process decision cost (default vs predicted-latency profile)")
    p.set_defaults(func=run_latency_only)


def run_latency_only(args: argparse.Namespace) -> int:
    if args.cost_only:
        for key, value in decision_cost().items():
            print(f"{key:32s} {value:8.1f}")
        return 0
    settings = LatencyBenchSettings(loads=tuple(args.loads), duration_s=args.duration, warmup_s=args.warmup,
                                    time_scale=args.time_scale, routers=tuple(args.routers), seed=args.seed,
                                    latency_config=args.latency_config, epp_workers=args.epp_workers,
                                    epp_max_streams=args.epp_max_streams)
    started = dt.datetime.now(dt.UTC)
    result = run_latency_benchmark(settings)
    result["decision_cost_in_process_us"] = decision_cost()
    result["started"] = started.isoformat(timespec="seconds")
    result["commit"] = _commit()
    result["note"] = args.note
    result["command"] = "python -m epp bench latency " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in (("loads", args.loads), ("duration", args.duration), ("warmup", args.warmup),
                     ("time_scale", args.time_scale), ("routers", args.routers), ("seed", args.seed))
        + ((("latency_config", args.latency_config),) if args.latency_config != LATENCY_PROFILE
           else ())
        + ((("epp_workers", args.epp_workers),) if args.epp_workers != 1 else ())
        + ((("epp_max_streams", args.epp_max_streams),) if args.epp_max_streams != 32 else ()))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency-{started:%Y-%m-%dT%H%M}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    kept = keep_predictor_states(settings.run_dir, path)
    print(summary_markdown(result))
    print(f"wrote {path}" + (f" and the predictor's states ({', '.join(k.name for k in kept)})" if kept else ""))
    return 0
