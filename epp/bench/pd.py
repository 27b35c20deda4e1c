"""P/D benchmark: disaggregated prefill/decode vs aggregated pods on a long-prompt workload.

Both setups have 3 simulated vLLM pods behind Envoy + the EPP and see the same seeded,
open-loop Poisson workload of long unique prompts (streaming):

- aggregated: 3 pods with role `both`, the EPP's default config;
- P/D: 1 prefill + 2 decode pods (each decode pod behind the routing sidecar), the EPP with
  deploy/vllm/pd/epp-config-pd.yaml;
- P/D decode-only (optional): the same pods with a threshold no prompt reaches, i.e. what the
  P/D pool does when the EPP never disaggregates (the prefill pod idles).

One stack per setup serves every rate in turn (prompts are unique, so nothing cached by an
earlier rate helps a later one; each phase waits for its requests to finish). The share of
remote prefills comes from the EPP's `llm_d_inference_scheduler_pd_decision_total` and the
sidecars' `epp_sidecar_requests_total{mode}`. Latencies are converted to model seconds
(wall / time scale), like the routing benchmark.

    python -m epp.bench.pd [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from epp.bench.client import run_phase
from epp.bench.report import fmt_ms, fmt_num, fmt_pct, fmt_ratio, table
from epp.bench.routers import RouterSpec
from epp.bench.runner import PhasePlan, RouterPhaseResult, summarize
from epp.bench.stats import Distribution, ratio
from epp.bench.workloads import DEFAULT_MODEL, BenchRequest, Workload, WorkloadParams, poisson_arrivals, words
from epp.localstack.stack import REPO, LocalStack, StackConfig, StackError

PD_CONFIG = REPO / "deploy/vllm/pd/epp-config-pd.yaml"
PD_DECISION_METRIC = "llm_d_inference_scheduler_pd_decision_total"
# llm-d's newer name (the one above is deprecated there); read when the older one is absent.
DISAGG_DECISION_METRIC = "llm_d_inference_scheduler_disagg_decision_total"
SIDECAR_REQUESTS_METRIC = "epp_sidecar_requests_total"
PREFILL_SKIPPED_METRIC = "epp_pd_prefill_skipped_total"  # epp/scheduling/plugins/pd_metrics.py
# The simulator's tokenizer turns VOCABULARY words into about 4 characters per token.
CHARS_PER_TOKEN = 4.0
WORKLOAD_NAME = "long-prompt"
TITLE = "## Disaggregated prefill/decode vs aggregated (long prompts)"


# --- settings ----------------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class LongPromptShape:
    """Prompt and answer sizes in tokens, each drawn uniformly per request."""

    min_prompt_tokens: int = 2_000
    max_prompt_tokens: int = 6_000
    min_output_tokens: int = 64
    max_output_tokens: int = 256

    def validate(self) -> None:
        if not 1 <= self.min_prompt_tokens <= self.max_prompt_tokens:
            raise ValueError(f"prompt tokens need 1 <= min <= max, got "
                             f"{self.min_prompt_tokens}..{self.max_prompt_tokens}")
        if not 1 <= self.min_output_tokens <= self.max_output_tokens:
            raise ValueError(f"output tokens need 1 <= min <= max, got "
                             f"{self.min_output_tokens}..{self.max_output_tokens}")


@dataclass(slots=True, frozen=True)
class PDSetup:
    key: str
    label: str
    pd: bool  # 1 prefill + 2 decode pods with sidecars, P/D config
    # Overrides of the pd-profile-handler's parameters in epp-config-pd.yaml.
    handler_params: tuple[tuple[str, int], ...] = ()


AGGREGATED = PDSetup("aggregated", "Aggregated (3 x both, default config)", pd=False)
DISAGGREGATED = PDSetup("pd", "P/D (1 prefill + 2 decode, epp-config-pd.yaml)", pd=True)
ALWAYS_REMOTE = PDSetup("pd-always", "P/D, maxPrefillBacklog 0 (llm-d: always remote)", pd=True,
                        handler_params=(("maxPrefillBacklog", 0),))
DECODE_ONLY = PDSetup("pd-decode-only", "P/D pods, threshold 10^9 (decode-only)", pd=True,
                      handler_params=(("nonCachedTokens", 10**9),))
SETUPS: Mapping[str, PDSetup] = {s.key: s for s in (AGGREGATED, DISAGGREGATED, ALWAYS_REMOTE, DECODE_ONLY)}


@dataclass(slots=True, frozen=True)
class PDSettings:
    rates: tuple[float, ...] = (3.0, 6.0, 9.0)  # model requests/s; ~9 nears the aggregated limit
    duration_s: float = 15.0  # model seconds of arrivals per rate ...
    max_requests: int = 120  # ... and at most this many requests per rate
    # Real speed: faster scales make the 2-core machine's client and proxies the bottleneck
    # (streamed tokens arrive merged and the measured ITL collapses).
    time_scale: float = 1.0
    shape: LongPromptShape = LongPromptShape()
    setups: tuple[str, ...] = ("aggregated", "pd", "pd-always", "pd-decode-only")
    seed: int = 1
    drain_s: float = 30.0  # wall seconds allowed after a phase's last arrival
    max_wall_s: float = 240.0  # phases that would start after this are skipped
    run_dir: Path = field(default_factory=lambda: Path(".run") / "bench-pd")
    quick: bool = False

    @classmethod
    def quick_settings(cls, run_dir: Path | None = None) -> PDSettings:
        """Smoke size: one rate, two setups, a few requests; well under a minute."""
        base = cls(rates=(3.0,), duration_s=6.0, max_requests=16, time_scale=0.25,
                   setups=("aggregated", "pd"), drain_s=20.0, max_wall_s=50.0, quick=True,
                   shape=LongPromptShape(2_000, 4_000, 32, 64))
        return base if run_dir is None else replace(base, run_dir=run_dir)

    def validate(self) -> None:
        self.shape.validate()
        if not self.rates or any(r <= 0 for r in self.rates):
            raise ValueError(f"rates must be non-empty and > 0 requests/s, got {self.rates}")
        if not 0 < self.time_scale <= 1:
            raise ValueError(f"time_scale must be within (0, 1], got {self.time_scale}")
        unknown = [s for s in self.setups if s not in SETUPS]
        if unknown or not self.setups:
            raise ValueError(f"unknown setup(s) {unknown or self.setups}; known: {', '.join(SETUPS)}")
        if "aggregated" not in self.setups:
            raise ValueError("setups must include 'aggregated' (the reference of every ratio)")


# --- workload ----------------------------------------------------------------------------------

def long_prompt_workload(rate: float, settings: PDSettings) -> Workload:
    """Unique long single-turn prompts at Poisson arrivals: the same for every setup."""
    shape = settings.shape
    params = WorkloadParams(rate=rate, count=settings.max_requests, duration_s=settings.duration_s,
                            seed=settings.seed, nonce=f"pd-{rate:g}", max_tokens=shape.max_output_tokens)
    params.validate()
    rng = random.Random(f"{settings.seed}/{rate:g}")
    times = poisson_arrivals(rate, params.count, params.duration_s, rng)
    requests: list[BenchRequest] = []
    for i, at in enumerate(times):
        prompt_tokens = rng.randint(shape.min_prompt_tokens, shape.max_prompt_tokens)
        max_tokens = rng.randint(shape.min_output_tokens, shape.max_output_tokens)
        # A unique head keeps any two prompts from sharing even their first cache block.
        text = f"[{params.nonce}:{i}] " + words(rng, int(prompt_tokens * CHARS_PER_TOKEN))
        requests.append(BenchRequest(i, at, DEFAULT_MODEL, [{"role": "user", "content": text}],
                                     max_tokens, f"r{i}"))
    title = (f"Long unique prompts ({shape.min_prompt_tokens:,}-{shape.max_prompt_tokens:,} tokens, "
             f"{shape.min_output_tokens}-{shape.max_output_tokens} output tokens)")
    return Workload(WORKLOAD_NAME, title, params, requests)


# --- metrics scraping --------------------------------------------------------------------------

def sum_counter(metrics_text: str, sample_name: str, label: str) -> dict[str, float]:
    """Values of counter samples named `sample_name`, summed per value of `label`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name != sample_name:
                continue
            key = sample.labels.get(label, "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}


@dataclass(slots=True)
class PDCounters:
    decisions: dict[str, float] = field(default_factory=dict)  # EPP: decision_type -> count
    sidecar_modes: dict[str, float] = field(default_factory=dict)  # sidecars: mode -> count
    prefill_skips: dict[str, float] = field(default_factory=dict)  # EPP: why no remote prefill -> count


def scrape_counters(stack: LocalStack) -> PDCounters:
    counters = PDCounters()
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        epp_text = client.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics").text
        counters.decisions = (sum_counter(epp_text, PD_DECISION_METRIC, "decision_type")
                              or sum_counter(epp_text, DISAGG_DECISION_METRIC, "decision_type"))
        counters.prefill_skips = sum_counter(epp_text, PREFILL_SKIPPED_METRIC, "reason")
        for pod in stack.pods:
            if not pod.sidecar_port:
                continue
            text = client.get(f"http://127.0.0.1:{pod.sidecar_port}/sidecar/metrics").text
            for mode, n in sum_counter(text, SIDECAR_REQUESTS_METRIC, "mode").items():
                counters.sidecar_modes[mode] = counters.sidecar_modes.get(mode, 0.0) + n
    return counters


# --- results -----------------------------------------------------------------------------------

@dataclass(slots=True)
class PDPhaseResult:
    setup: str
    label: str
    rate: float
    row: RouterPhaseResult  # latencies in model seconds, errors, throughput
    # Per request (e2e - TTFT) / (tokens - 1), model seconds: unlike the client-side ITL it does
    # not shrink when a busy client reads several SSE events at once.
    tpot: Distribution = field(default_factory=lambda: Distribution.of([]))
    mean_prompt_tokens: float = math.nan  # as the pods counted them (usage.prompt_tokens)
    decisions: dict[str, float] = field(default_factory=dict)
    sidecar_modes: dict[str, float] = field(default_factory=dict)
    prefill_skips: dict[str, float] = field(default_factory=dict)  # reason -> local prefills for it
    skipped: str = ""

    @property
    def remote_prefill_share(self) -> float:
        """Share of the EPP's P/D decisions that named a prefill pod; 0 without a P/D handler."""
        total = sum(self.decisions.values())
        if total <= 0:
            return 0.0 if self.row.ok else math.nan
        # prefill-decode, and llm-d's encode-prefill-decode: the types that ran a prefill pod.
        remote = sum(n for kind, n in self.decisions.items() if "prefill" in kind)
        return remote / total


@dataclass(slots=True)
class PDResult:
    settings: PDSettings
    command: str
    rates: list[float]
    workload_titles: dict[float, str]
    requests_per_rate: dict[float, int]
    phases: list[PDPhaseResult] = field(default_factory=list)
    wall_s: float = math.nan

    def phase(self, setup: str, rate: float) -> PDPhaseResult | None:
        for p in self.phases:
            if p.setup == setup and p.rate == rate and not p.skipped:
                return p
        return None


def _skipped(setup: PDSetup, rate: float, reason: str) -> PDPhaseResult:
    spec = RouterSpec(setup.key, setup.label, "epp", "", ours=True)
    return PDPhaseResult(setup.key, setup.label, rate,
                         RouterPhaseResult(spec.key, spec.label, True, WORKLOAD_NAME, rate, skipped=reason),
                         skipped=reason)


# --- running -----------------------------------------------------------------------------------

def _epp_config(setup: PDSetup, run_dir: Path) -> Path | None:
    if not setup.pd:
        return None
    if not setup.handler_params:
        return PD_CONFIG
    config = yaml.safe_load(PD_CONFIG.read_text())
    handlers = [p for p in config["plugins"] if p.get("type") == "pd-profile-handler"]
    if not handlers:
        raise ValueError(f"{PD_CONFIG}: no pd-profile-handler plugin to set {setup.handler_params} on")
    for handler in handlers:
        handler.setdefault("parameters", {}).update(dict(setup.handler_params))
    path = run_dir / f"epp-config-{setup.key}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_phase(stack: LocalStack, setup: PDSetup, workload: Workload, settings: PDSettings) -> PDPhaseResult:
    spec = RouterSpec(setup.key, setup.label, "epp", "", ours=True)
    plan = PhasePlan(WORKLOAD_NAME, workload.params)
    before = scrape_counters(stack)
    deadline = workload.span_s * settings.time_scale + settings.drain_s
    phase = asyncio.run(run_phase(stack.url, workload, settings.time_scale, deadline))
    after = scrape_counters(stack)
    row = summarize(spec, plan, phase, settings.time_scale, math.nan, len(stack.pods))
    prompts = [r.prompt_tokens for r in phase.results if r.ok and r.prompt_tokens]
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in phase.results if r.ok and r.output_tokens > 1]
    return PDPhaseResult(
        setup.key, setup.label, workload.params.rate, row,
        tpot=Distribution.of(tpot).scaled(1.0 / settings.time_scale),
        mean_prompt_tokens=math.fsum(prompts) / len(prompts) if prompts else math.nan,
        decisions=counter_delta(before.decisions, after.decisions),
        sidecar_modes=counter_delta(before.sidecar_modes, after.sidecar_modes),
        prefill_skips=counter_delta(before.prefill_skips, after.prefill_skips),
    )


def _start_stack(setup: PDSetup, settings: PDSettings, progress: Callable[[str], None]) -> LocalStack:
    """Start the setup's stack; one retry with fresh ports, since a free port picked for it may be
    taken by another process on a shared machine before the component binds it."""
    run_dir = settings.run_dir / setup.key
    run_dir.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        cfg = StackConfig(run_dir=run_dir, ports_free=True, pd=setup.pd, time_scale=settings.time_scale,
                          epp_config=_epp_config(setup, run_dir), kv_events=False, loras=())
        stack = LocalStack(cfg)
        try:
            stack.start(timeout=60)
            return stack
        except StackError as e:
            if attempt == 2:
                raise
            progress(f"   {setup.label}: could not start ({str(e).splitlines()[0][:160]}); retrying once")
    raise AssertionError("unreachable")


def run_pd_benchmark(settings: PDSettings, command: str = "",
                     progress: Callable[[str], None] = print) -> PDResult:
    settings.validate()
    started = time.monotonic()
    workloads = {rate: long_prompt_workload(rate, settings) for rate in settings.rates}
    result = PDResult(settings, command or "python -m epp.bench.pd" + (" --quick" if settings.quick else ""),
                      list(settings.rates), {r: w.title for r, w in workloads.items()},
                      {r: len(w.requests) for r, w in workloads.items()})
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    for key in settings.setups:
        setup = SETUPS[key]
        if time.monotonic() - started > settings.max_wall_s:
            result.phases += [_skipped(setup, r, "wall-time budget used up") for r in settings.rates]
            continue
        try:
            stack = _start_stack(setup, settings, progress)
        except Exception as e:  # one setup that cannot start must not void the others
            reason = f"stack failed to start: {type(e).__name__}: {str(e)[:200]}"
            result.phases += [_skipped(setup, r, reason) for r in settings.rates]
            progress(f"   {setup.label}: {reason}")
            continue
        try:
            for rate in settings.rates:
                if time.monotonic() - started > settings.max_wall_s:
                    result.phases.append(_skipped(setup, rate, "wall-time budget used up"))
                    continue
                phase_started = time.monotonic()
                try:
                    phase = _run_phase(stack, setup, workloads[rate], settings)
                except (httpx.HTTPError, OSError, ValueError) as e:  # e.g. a component died: keep the rest
                    reason = f"failed: {type(e).__name__}: {str(e)[:200]}"
                    result.phases.append(_skipped(setup, rate, reason))
                    progress(f"   {setup.key} @ {rate:g} req/s: {reason}")
                    continue
                result.phases.append(phase)
                row = phase.row
                progress(f"   {setup.key:15s} @ {rate:g} req/s: ok {row.ok:3d} err {row.errors:3d} "
                         f"TTFT p50 {fmt_ms(row.ttft.p50)} ms ITL p50 {fmt_ms(row.itl.p50)} ms "
                         f"remote prefill {fmt_pct(phase.remote_prefill_share)} "
                         f"({time.monotonic() - phase_started:.1f}s wall)")
        finally:
            stack.stop()
    result.wall_s = time.monotonic() - started
    return result


# --- markdown ----------------------------------------------------------------------------------

def _metric_rows(phase: PDPhaseResult) -> list[tuple[str, float, str]]:
    """(name, value, formatted) of the metrics a table shows, in display order."""
    row = phase.row
    out: list[tuple[str, float, str]] = []
    for name, dist in (("TTFT", row.ttft), ("ITL", row.itl), ("TPOT", phase.tpot), ("E2E", row.e2e)):
        for q, value in (("p50", dist.p50), ("p90", dist.p90), ("p99", dist.p99)):
            out.append((f"{name} {q} (ms)", value, fmt_ms(value)))
    out.append(("output tokens/s", row.output_tokens_per_s, fmt_num(row.output_tokens_per_s)))
    out.append(("errors / sent", float(row.errors), f"{row.errors} / {row.sent}"))
    share = phase.remote_prefill_share
    out.append(("remote prefill (EPP decisions)", share, fmt_pct(share)))
    done = phase.sidecar_modes.get("disaggregated", 0.0)
    fallback = phase.sidecar_modes.get("fallback", 0.0)
    sidecar = f"{done:.0f} ok, {fallback:.0f} fallback" if phase.sidecar_modes else "-"
    out.append(("remote prefill (sidecars)", done, sidecar))
    return out


_RATIO_ROWS = 13  # latency and throughput rows get a ratio; errors and shares do not


def rate_table(result: PDResult, rate: float) -> str:
    setups = [SETUPS[k] for k in result.settings.setups]
    phases = {s.key: result.phase(s.key, rate) for s in setups}
    reference = phases.get(AGGREGATED.key)
    pd = phases.get(DISAGGREGATED.key)
    header = ["metric", *[s.label for s in setups]]
    show_ratio = DISAGGREGATED.key in phases
    if show_ratio:
        header.append("P/D ÷ aggregated")
    per_setup = {k: _metric_rows(p) if p else None for k, p in phases.items()}
    names = [name for name, _, _ in _metric_rows(_skipped(AGGREGATED, rate, "-"))]
    rows: list[list[str]] = []
    for i, name in enumerate(names):
        cells = [name]
        for s in setups:
            metrics = per_setup[s.key]
            cells.append(metrics[i][2] if metrics else "skipped")
        if show_ratio:
            if i < _RATIO_ROWS and reference and pd:
                cells.append(fmt_ratio(ratio(_metric_rows(pd)[i][1], _metric_rows(reference)[i][1])))
            else:
                cells.append("")
        rows.append(cells)
    return table(header, rows)


@dataclass(slots=True, frozen=True)
class PDRatios:
    """P/D ÷ aggregated at one rate."""

    ttft_p50: float
    itl_p50: float
    itl_p99: float
    tpot_p50: float
    output_tokens_per_s: float


def pd_ratios(result: PDResult, rate: float) -> PDRatios | None:
    agg, pd = result.phase(AGGREGATED.key, rate), result.phase(DISAGGREGATED.key, rate)
    if agg is None or pd is None:
        return None
    return PDRatios(ratio(pd.row.ttft.p50, agg.row.ttft.p50), ratio(pd.row.itl.p50, agg.row.itl.p50),
                    ratio(pd.row.itl.p99, agg.row.itl.p99), ratio(pd.tpot.p50, agg.tpot.p50),
                    ratio(pd.row.output_tokens_per_s, agg.row.output_tokens_per_s))


def _at(rate: float, r: PDRatios) -> str:
    return (f"TTFT p50 {fmt_ratio(r.ttft_p50)}, ITL p99 {fmt_ratio(r.itl_p99)}, TPOT p50 "
            f"{fmt_ratio(r.tpot_p50)} and throughput {fmt_ratio(r.output_tokens_per_s)} at {rate:g} req/s")


def interpretation(result: PDResult) -> str:
    """Two or three sentences read off the numbers (not written in advance)."""
    measured = [(rate, r) for rate in result.rates if (r := pd_ratios(result, rate)) is not None]
    if not measured:
        return "No rate completed for both setups, so there is nothing to compare."
    low, high = measured[0], measured[-1]
    span = _at(*low) if low is high else f"{_at(*low)}, {_at(*high)}"
    sentences = [f"P/D versus aggregated: {span}."]
    top = high[1]
    if top.itl_p99 < 1:
        sentences.append("Decode pods never run a prefill chunk, so their streams avoid the long stalls "
                         "an aggregated pod imposes on every running stream when it admits a long prompt; "
                         "they only pay the simulated KV pull.")
    else:
        sentences.append("The aggregated pods' prefill stalls do not outweigh what the decode pods pay "
                         "here: two pods carry every decode batch, and each KV pull also lengthens a "
                         "decode step.")
    local = result.phase(DECODE_ONLY.key, high[0])
    pd = result.phase(DISAGGREGATED.key, high[0])
    if top.ttft_p50 > 1:
        remedy = "a larger prefill share (e.g. 2 prefill : 1 decode) or a higher nonCachedTokens threshold"
        if local is not None and pd is not None and local.row.ttft.p50 < pd.row.ttft.p50:
            remedy += (f" (with the threshold out of reach the same pods reach TTFT p50 "
                       f"{fmt_ms(local.row.ttft.p50)} ms instead of {fmt_ms(pd.row.ttft.p50)} ms "
                       f"at {high[0]:g} req/s, at the cost of the decode stalls)")
        sentences.append("The price is TTFT: one prefill pod does the prompt work that three pods share "
                         f"in the aggregated setup, so its queue grows with the rate; prompt-heavy "
                         f"traffic needs {remedy}.")
    else:
        sentences.append("TTFT does not suffer: the KV transfer costs less than the prefill the decode "
                         "pods avoid.")
    return " ".join(sentences)


def pd_markdown(result: PDResult) -> str:
    s = result.settings
    shape = s.shape
    lines = [
        TITLE, "",
        f"Same seeded workload for every setup: unique prompts of {shape.min_prompt_tokens:,}-"
        f"{shape.max_prompt_tokens:,} tokens with {shape.min_output_tokens}-{shape.max_output_tokens} "
        f"output tokens (uniform), streaming chat completions, open-loop Poisson arrivals, at most "
        f"{s.max_requests} requests or {s.duration_s:g} model-s of arrivals per rate. "
        "Three simulated vLLM pods (default H100/Llama-3.1-8B latency model) behind Envoy and the "
        "EPP in every setup; the P/D decode pods sit behind our routing sidecar. "
        f"Simulator time scale {s.time_scale:g}: all latencies and throughputs are **model time** "
        f"(wall / {s.time_scale:g}). ITL is every gap between streamed tokens as the client saw them; "
        "TPOT is each request's mean gap, (E2E - TTFT) / (tokens - 1). Remote prefill shares come from the EPP's "
        f"`{PD_DECISION_METRIC}` and the sidecars' `{SIDECAR_REQUESTS_METRIC}{{mode}}`."
        + (" **Quick mode: smoke-test sizes, not a measurement.**" if s.quick else ""),
        "",
    ]
    for rate in result.rates:
        pd_phase = result.phase(DISAGGREGATED.key, rate) or result.phase(AGGREGATED.key, rate)
        prompt = f", mean prompt {fmt_num(pd_phase.mean_prompt_tokens)} tokens" if pd_phase else ""
        lines += [f"### {rate:g} requests/s ({result.requests_per_rate.get(rate, 0)} requests{prompt})", "",
                  rate_table(result, rate), ""]
    lines += ["Command:", "", "```", result.command, "```", "",
              f"Run wall time {fmt_num(result.wall_s)} s.", "", interpretation(result), ""]
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------------

def _parse_rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates wants comma-separated numbers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m epp.bench.pd", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (< 60 s)")
    parser.add_argument("--out", type=Path, help="also write the markdown section to this file")
    parser.add_argument("--rates", type=_parse_rates, help="model requests/s, comma separated")
    parser.add_argument("--time-scale", type=float, help="simulator speed (0.5 = twice as fast)")
    parser.add_argument("--setups", help=f"comma separated, from {', '.join(SETUPS)}")
    parser.add_argument("--run-dir", type=Path, help="logs and generated files (default .run/bench-pd)")
    args = parser.parse_args(argv)
    settings = PDSettings.quick_settings() if args.quick else PDSettings()
    if args.rates:
        settings = replace(settings, rates=args.rates)
    if args.time_scale:
        settings = replace(settings, time_scale=args.time_scale)
    if args.setups:
        settings = replace(settings, setups=tuple(k.strip() for k in args.setups.split(",") if k.strip()))
    if args.run_dir:
        settings = replace(settings, run_dir=args.run_dir)
    try:
        settings.validate()
    except ValueError as e:
        parser.error(str(e))
    command = shlex.join(["python", "-m", "epp.bench.pd", *(argv if argv is not None else sys.argv[1:])])
    result = run_pd_benchmark(settings, command, progress=lambda m: print(m, file=sys.stderr))
    markdown = pd_markdown(result)
    print(markdown)
    if args.out:
        args.out.write_text(markdown)
    return 0 if any(p.row.ok for p in result.phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
