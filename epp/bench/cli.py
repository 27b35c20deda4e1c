"""`epp bench`: the routing benchmark (all routers, all workloads) and `epp bench overhead`.

    python -m epp bench                 # full run, ~35 min, writes docs/benchmarks.md + docs/bench-*.png
    python -m epp bench --quick         # ~2.5 min smoke run, same structure, tiny phases
    python -m epp bench overhead        # only the EPP overhead section (updates docs/benchmarks.md)
    python -m epp bench history [--dir DIR] [--last N] [--out FILE]
                                        # every full run's checks from docs/bench-results/*.json (runs nothing)
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.bench.routers import BENCH_GPU_BLOCKS, BENCH_SLOWDOWN, ROUTERS, RowSettings, router_by_key
from epp.bench.runner import BenchPlan, PhasePlan
from epp.bench.workloads import GENERATORS, WorkloadParams
from epp.localstack.stack import REPO

if TYPE_CHECKING:  # the heavy modules load only when a bench command runs, not on every `epp ...`
    from epp.bench.overhead import OverheadResult, OverheadSettings
    from epp.bench.report import RunInfo
    from epp.bench.runner import PhaseOutcome

log = logging.getLogger("epp.bench")

# Full run (`make bench`): 150 cells of ~10 s (fresh pods and router ~4 s, 5 s of arrivals,
# drain; heterogeneous cells 10 s longer) after ~5 minutes of overhead: about 35 minutes on 2
# otherwise idle cores. Every cell (phase x router) runs FULL_REPEATS times on fresh pods; the report gives medians and
# min-max. To fit the budget, each phase runs only the routers it needs (FULL_PHASE_ROUTERS):
# the default config, GIE's default and the three baselines everywhere, the prefix-aware
# peers where prefixes are shared, the other variants on one phase.
FULL_TIME_SCALE = 0.5
FULL_REPEATS = 3
FULL_PHASE_SECONDS = 10.0  # model seconds of arrivals per phase
# Longer phases where a short one measures an anecdote. Heterogeneous: a run's TTFT p99 over
# ~53 requests is its slowest request or two, and the first 1-3 model seconds of every phase
# are a fresh EPP learning the pod speeds (docs/scheduling.md, "Heterogeneous pools"); 30 s
# (~180 requests at 6 req/s) puts p99 on the ~2nd slowest request of a mostly steady-state
# run. Adds 20 model s = 10 wall s per run: 6 routers x 3 runs = 3 minutes of `make bench`.
FULL_PHASE_SECONDS_BY_WORKLOAD: dict[str, float] = {"heterogeneous": 30.0}
FULL_MAX_REQUESTS = 200  # per phase; 30 s at 6 req/s is ~180
FULL_DRAIN_S = 15.0  # wall seconds a phase may run past its last arrival
# No new routing run starts after this many minutes, counted after the overhead section (which runs first).
FULL_BUDGET_MIN = 45.0
FULL_RATES: dict[str, tuple[float, ...]] = {
    "no-sharing": (3.0, 6.0, 9.0, 12.0),
    "shared-prefix": (6.0, 12.0),
    "mixed": (6.0,),
    "heterogeneous": (6.0,),
    "bursty": (4.0,),
    "lora-mix": (6.0,),
}
# In this order within every round (issue 10's main complaint first); bursty, lora-mix: --workloads.
FULL_WORKLOADS = ("no-sharing", "heterogeneous", "mixed", "shared-prefix")
CORE_ROUTERS = ("envoy-rr", "envoy-lr", "vr-rr", "epp-default", "epp-gie")
PREFIX_PEERS = ("vr-cache", "vr-kv")
VARIANTS = ("vr-p2c", "epp-load", "epp-prefix", "epp-all", "epp-precise")
VARIANT_PHASES = (("shared-prefix", 12.0),)
FULL_PHASE_ROUTERS: dict[str, tuple[str, ...]] = {
    "no-sharing": CORE_ROUTERS,
    "shared-prefix": CORE_ROUTERS + PREFIX_PEERS,
    "mixed": (*CORE_ROUTERS, "vr-cache"),
    # The speed-blind previous default side by side: what the speed-aware prefill load buys.
    "heterogeneous": (*CORE_ROUTERS, "epp-speedblind"),
}
QUICK_TIME_SCALE = 0.5
QUICK_RATE = 6.0
QUICK_PHASE_SECONDS = 3.0
QUICK_MAX_REQUESTS = 16


def phase_routers(workload: str, rate: float) -> tuple[str, ...]:
    """Routers of a full-run phase; () = all (workloads outside the default plan)."""
    routers = FULL_PHASE_ROUTERS.get(workload, ())
    if routers and (workload, rate) in VARIANT_PHASES:
        routers = routers + VARIANTS
    return routers


def phase_seconds(workload: str, given: float | None, quick: bool) -> float:
    """Model seconds of arrivals of a workload's phases: --phase-seconds for every workload
    when given, else the quick length, else the full plan's (per workload)."""
    if given:
        return given
    if quick:
        return QUICK_PHASE_SECONDS
    return FULL_PHASE_SECONDS_BY_WORKLOAD.get(workload, FULL_PHASE_SECONDS)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmark routers (Envoy, vllm-router, the EPP) on simulated pods",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny phases (about 2.5 minutes); smoke-test numbers")
    p.add_argument("--routers", type=_csv, default=None,
                   help=f"comma-separated subset of: {', '.join(r.key for r in ROUTERS)}")
    p.add_argument("--workloads", type=_csv, default=None,
                   help=f"comma-separated subset of: {', '.join(GENERATORS)}")
    p.add_argument("--rates", type=float, nargs="+", default=None,
                   help="rates (model requests/s) for every selected workload (default: FULL_RATES per workload)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"runs per cell; the report gives medians and min-max ({FULL_REPEATS} full, 1 quick)")
    p.add_argument("--phase-seconds", type=float, default=None,
                   help=f"model seconds of arrivals per phase, every workload ({FULL_PHASE_SECONDS:g} full, "
                        + "".join(f"{w} {v:g}, " for w, v in FULL_PHASE_SECONDS_BY_WORKLOAD.items())
                        + f"{QUICK_PHASE_SECONDS:g} quick)")
    p.add_argument("--budget-min", type=float, default=None,
                   help=f"start no new routing run after this many minutes, counted after the overhead section "
                        f"(which runs first) ({FULL_BUDGET_MIN:g} full)")
    p.add_argument("--all-routers", action="store_true",
                   help="every selected router on every phase (default: the per-phase sets of the full plan)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's Machine section")
    p.add_argument("--pods", type=int, default=4, help="simulated pods per router row (4)")
    p.add_argument("--time-scale", type=float, default=None,
                   help=f"simulator time scale ({FULL_TIME_SCALE} full, {QUICK_TIME_SCALE} quick)")
    p.add_argument("--gpu-blocks", type=int, default=BENCH_GPU_BLOCKS,
                   help=f"KV-cache blocks per simulated pod ({BENCH_GPU_BLOCKS})")
    p.add_argument("--slowdown", type=float, default=BENCH_SLOWDOWN,
                   help=f"simulated engine step multiplier vs the H100 model ({BENCH_SLOWDOWN:g})")
    p.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                   help="the model's tokenizer directory (tokenizer.json), e.g. .cache/tokenizers/llama3_1: "
                        "every simulated pod tokenizes with it and the precise-prefix rows hash with it "
                        "(default: the simulator's built-in 'simple' tokenizer)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where benchmarks.md and plots go")
    p.add_argument("--run-dir", type=Path, default=REPO / ".run" / "bench", help="logs and raw results")
    p.add_argument("--no-overhead", action="store_true", help="skip the EPP overhead benchmark")
    p.add_argument("--from-results", type=Path, default=None, metavar="RESULTS_JSON",
                   help="rerun nothing: re-render the report and plots from a previous run's results.json")
    p.set_defaults(func=run_bench)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="{overhead,pd,history,flow,cache,latency}")
    o = bench_sub.add_parser("overhead", help="only the EPP overhead benchmark (instant upstreams)",
                             description="Envoy direct vs Envoy + EPP on instant upstreams; updates the "
                                         "overhead section of docs/benchmarks.md unless --no-docs.")
    # SUPPRESS: an option given before `overhead` (bench --quick overhead) is not reset here.
    o.add_argument("--quick", action="store_true", default=argparse.SUPPRESS)
    o.add_argument("--pools", type=int, nargs="+", default=[4, 64], help="pool sizes (4 64)")
    o.add_argument("--config", type=Path, default=None, help="EPP config (default: the embedded default)")
    o.add_argument("--epp-arg", action="append", default=[], help="extra `epp serve` argument (repeatable)")
    o.add_argument("--concurrency", type=int, default=64)
    o.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    o.add_argument("--ext-proc-mode", action="append", default=None, metavar="MODE",
                   help="front Envoy ext_proc mode: streamed (default), buffered, full-duplex; "
                        "repeat to measure more modes side by side (the first is reported)")
    o.add_argument("--out", type=Path, default=argparse.SUPPRESS)
    o.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS)
    o.set_defaults(func=run_overhead_only)
    d = bench_sub.add_parser("pd", help="P/D vs aggregated on long prompts (issue: disaggregation)",
                             description="Disaggregated prefill/decode vs aggregated pods on a long-prompt "
                                         "workload; writes docs/benchmarks-pd.md and the P/D section of "
                                         "docs/benchmarks.md.")
    d.add_argument("--quick", action="store_true", default=argparse.SUPPRESS)
    d.add_argument("--out", type=Path, default=argparse.SUPPRESS)
    d.set_defaults(func=run_pd_only)
    h = bench_sub.add_parser("history", help="every full run's target checks from its committed raw JSON",
                             description="Runs nothing: reads the full `make bench` runs' raw results "
                                         "(DIR/YYYY-MM-DD-HHMM-<commit>.json) and prints, or writes to FILE, "
                                         "a markdown history: checks met per run, the missed ones, and "
                                         "every check over the last N runs.")
    # Own dests: the `bench` options --out and --run-dir keep their meaning for `bench`.
    h.add_argument("--dir", dest="history_dir", type=Path, default=REPO / "docs" / RESULTS_DIR, metavar="DIR",
                   help=f"where the raw results are (docs/{RESULTS_DIR})")
    h.add_argument("--last", dest="history_last", type=int, default=5, metavar="N",
                   help="runs in the per-check table (5)")
    h.add_argument("--out", dest="history_out", type=Path, default=None, metavar="FILE",
                   help="write the markdown here (default: stdout)")
    h.set_defaults(func=run_history)
    from epp.bench.cache import add_cache_parser
    from epp.bench.flow import add_flow_parser
    from epp.bench.latency import add_latency_parser

    add_flow_parser(bench_sub)
    add_cache_parser(bench_sub)
    add_latency_parser(bench_sub)


# --- plans ---------------------------------------------------------------------------------------

def build_plan(args: argparse.Namespace) -> BenchPlan:
    quick = bool(args.quick)
    routers = [router_by_key(k) for k in args.routers] if args.routers else list(ROUTERS)
    workloads = args.workloads or (["shared-prefix"] if quick else list(FULL_WORKLOADS))
    for name in workloads:
        if name not in GENERATORS:
            raise ValueError(f"unknown workload {name!r}; known: {', '.join(GENERATORS)}")
    time_scale = args.time_scale or (QUICK_TIME_SCALE if quick else FULL_TIME_SCALE)
    repeats = args.repeats if args.repeats is not None else (1 if quick else FULL_REPEATS)
    if repeats < 1 or (args.phase_seconds is not None and args.phase_seconds <= 0):
        raise ValueError("--repeats must be >= 1 and --phase-seconds > 0")
    # Explicit --routers or --all-routers: every chosen router on every phase.
    subsets = not (quick or args.routers or args.all_routers)
    phases: list[PhasePlan] = []
    for name in workloads:
        rates = args.rates or ([QUICK_RATE] if quick else list(FULL_RATES[name]))
        duration = phase_seconds(name, args.phase_seconds, quick)
        for rate in rates:
            count = QUICK_MAX_REQUESTS if quick else FULL_MAX_REQUESTS
            params = WorkloadParams(rate=rate, count=count, duration_s=duration, seed=args.seed,
                                    nonce=f"{name}-{rate:g}-{args.seed}")
            params.validate()
            phases.append(PhasePlan(name, params, phase_routers(name, rate) if subsets else ()))
    if args.pods < 1 or args.gpu_blocks < 1 or args.slowdown <= 0 or time_scale <= 0:
        raise ValueError("--pods and --gpu-blocks must be >= 1, --slowdown and --time-scale > 0")
    tokenizer: Path | None = args.tokenizer
    if tokenizer is not None and not (tokenizer / "tokenizer.json").is_file():
        raise ValueError(f"--tokenizer {tokenizer}: no tokenizer.json there (fetch the Llama-3.1 one with "
                         "deploy/local/fetch-tokenizer.sh)")
    row = RowSettings(pods=args.pods, time_scale=time_scale, run_dir=args.run_dir,
                      gpu_blocks=args.gpu_blocks, slowdown=args.slowdown,
                      tokenizer=tokenizer.resolve() if tokenizer is not None else None)
    return BenchPlan(phases, routers, row, drain_s=15.0 if quick else FULL_DRAIN_S, repeats=repeats)


def plan_settings(plan: BenchPlan, args: argparse.Namespace, budget_min: float | None) -> dict[str, str]:
    """Every knob of the run, for the report (generated, never typed by hand)."""
    from epp.bench.workloads import HETEROGENEOUS_SLOW_POD, HETEROGENEOUS_SLOWDOWN

    out = {
        "runs per cell": f"{plan.repeats} (run r uses seed {args.seed} + r)",
        "cells run": f"{plan.cells()} ({len(plan.phases)} phases; routers per phase below)",
        "arrivals per phase": arrivals_per_phase(plan),
        "time scale": f"{plan.row.time_scale:g} (wall = model x scale)",
        "drain": f"{plan.drain_s:g} wall seconds after the last arrival",
        "pods": f"{plan.row.pods} per cell, {plan.row.gpu_blocks} KV blocks of {plan.row.block_size} tokens, "
                f"engine steps x{plan.row.slowdown:g} the H100 model",
        "tokenizer": (f"{_shown(plan.row.tokenizer)} in every pod and in the precise-prefix rows' configs"
                      if plan.row.tokenizer is not None else "simple (the simulator's built-in fallback, "
                      "in the pods and the precise-prefix rows)"),
        "heterogeneous pool": f"pod {HETEROGENEOUS_SLOW_POD} runs x{HETEROGENEOUS_SLOWDOWN:g} slower than the others",
        "time budget": (f"no new routing run after {budget_min:g} minutes of routing phases" if budget_min else "none"),
        "order": ("the overhead section first (before the routing phases load the machine), then the routing phases"
                  if not args.no_overhead else "routing phases only (--no-overhead)"),
    }
    for phase in plan.phases:
        out[f"phase {phase.key}"] = ", ".join(r.key for r in plan.routers_of(phase))
    return out


def arrivals_per_phase(plan: BenchPlan) -> str:
    """The phase length, count cap and max_tokens of the plan's phases: one sentence when every
    phase has the same, else the common length and each workload that differs."""
    if not plan.phases:
        return "-"
    lengths: dict[str, tuple[float, int, int]] = {}
    for phase in plan.phases:
        p = phase.params
        lengths.setdefault(phase.workload, (p.duration_s, p.count, p.max_tokens))
    shapes = list(dict.fromkeys(lengths.values()))

    def said(shape: tuple[float, int, int]) -> str:
        return f"{shape[0]:g} model seconds, at most {shape[1]} requests, max_tokens {shape[2]}"

    if len(shapes) == 1:
        return said(shapes[0])
    common = max(shapes, key=lambda sh: sum(1 for v in lengths.values() if v == sh))
    others = "; ".join(f"{w}: {said(sh)}" for w, sh in lengths.items() if sh != common)
    return f"{said(common)} ({others})"


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it (the report names no home directories)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def overhead_settings(args: argparse.Namespace, run_dir: Path) -> OverheadSettings:
    from epp.bench.overhead import OverheadSettings

    quick = bool(getattr(args, "quick", False))
    settings = OverheadSettings(
        pool_sizes=tuple(getattr(args, "pools", (4, 64))),
        concurrency=getattr(args, "concurrency", 64),
        epp_config=getattr(args, "config", None),
        epp_args=tuple(getattr(args, "epp_arg", ())),
        run_dir=run_dir / "overhead",
        ext_proc_modes=tuple(getattr(args, "ext_proc_mode", None) or ("streamed",)),
    )
    if quick:
        settings.sequential_requests = 300
        settings.concurrent_requests = 2000
        settings.max_seconds_per_run = 5.0
        settings.warmup_requests = 100
        settings.decisions = 200
        settings.repeats = 1
        settings.idle_seconds = 1.0
        settings.long_requests = 60
    else:
        # Sized for the `make bench` budget: 3 runs of every arm take about a minute per pool.
        settings.sequential_requests = 1000
        settings.concurrent_requests = 3000
        settings.max_seconds_per_run = 8.0
        settings.long_requests = 300
    return settings


# --- commands ------------------------------------------------------------------------------------

def _info(args: argparse.Namespace, time_scale: float, pods: int) -> RunInfo:
    from epp.bench.machine import machine_facts
    from epp.bench.report import RunInfo

    return RunInfo(
        command=shlex.join(["python", "-m", "epp", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"]
        else "python -m epp bench",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_facts(), quick=bool(getattr(args, "quick", False)), pods=pods, time_scale=time_scale,
        notes=list(getattr(args, "note", [])), commit=git_commit())


def git_commit() -> str:
    """Short commit of the repository, '+dirty' when tracked files changed; '' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


RESULTS_DIR = "bench-results"


def raw_results_name(info: RunInfo) -> str:
    """docs/bench-results/<date>-<commit>.json: the raw JSON next to the report."""
    stamp = info.date.replace(" UTC", "").replace(" ", "-").replace(":", "")
    return f"{RESULTS_DIR}/{stamp}-{info.commit or 'nocommit'}.json"


def findings(outcomes: list[PhaseOutcome]) -> list[str]:
    """Notes the report should carry about how a peer behaved in this run."""
    notes = []
    kv_decode_failures = any("tagged map" in w for o in outcomes for r in o.rows if r.router == "vr-kv"
                             for w in r.router_warnings)
    if kv_decode_failures:
        notes.append("vllm-router 0.1.17 `kv_aware` logged `KV event must be a tagged map` for the pods' events. "
                     "The simulator publishes what vLLM's own subscriber example decodes: msgspec `array_like` "
                     "tagged structs (`[\"BlockStored\", ...]`), not maps. So the kv_aware rows most likely ran "
                     "without a KV index (their hit rates are those of a load balancer). This was not "
                     "investigated further; the rows are reported as measured.")
    return notes


def write_docs(out: Path, outcomes: list[PhaseOutcome], overhead: OverheadResult | None, info: RunInfo) -> int:
    """docs/benchmarks.md and the plots; returns the number of plots written."""
    from epp.bench.report import plot_overhead, plot_routing, render_report

    out.mkdir(parents=True, exist_ok=True)
    plots = plot_routing(outcomes, out)
    if overhead is not None:
        plot_overhead(overhead, out)
    report = render_report(outcomes, overhead, info, plots)
    from epp.bench.flow import FLOW_DOC, splice_flow_section

    (out / "benchmarks.md").write_text(splice_flow_section(splice_pd_section(report, out / PD_DOC), out / FLOW_DOC))
    return len(plots) + (overhead is not None)


PD_DOC = "benchmarks-pd.md"
PD_START, PD_END = "<!-- pd:start -->", "<!-- pd:end -->"


def splice_pd_section(report: str, pd_doc: Path) -> str:
    """The routing report with the last P/D run (docs/benchmarks-pd.md) in its marked section,
    so rerunning either benchmark keeps the other's results."""
    if not pd_doc.exists():
        return report
    section = f"{PD_START}\n{pd_doc.read_text().strip()}\n{PD_END}"
    if PD_START in report and PD_END in report:
        head, rest = report.split(PD_START, 1)
        return head + section + rest.split(PD_END, 1)[1]
    from epp.bench.report import OVERHEAD_BEGIN

    # Before the overhead section (and its markers, which `bench overhead` rewrites).
    for marker in (OVERHEAD_BEGIN, "## EPP overhead"):
        if marker in report:
            head, tail = report.split(marker, 1)
            return f"{head}{section}\n\n{marker}{tail}"
    return f"{report.rstrip()}\n\n{section}\n"


def run_pd_only(args: argparse.Namespace) -> int:
    from epp.bench.pd import PDSettings, pd_markdown, run_pd_benchmark

    out: Path = getattr(args, "out", REPO / "docs")
    settings = PDSettings.quick_settings() if getattr(args, "quick", False) else PDSettings()
    result = run_pd_benchmark(settings)
    text = pd_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / PD_DOC).write_text(text)
    report = out / "benchmarks.md"
    if report.exists():
        report.write_text(splice_pd_section(report.read_text(), out / PD_DOC))
    print(text)
    print(f"wrote {out / PD_DOC} and its section of {report}")
    return 0


def run_history(args: argparse.Namespace) -> int:
    from epp.bench.history import history_markdown, load_history

    directory: Path = args.history_dir
    out: Path | None = args.history_out
    if args.history_last < 1:
        print("error: --last must be >= 1", file=sys.stderr)
        return 2
    history = load_history(directory)
    command = (shlex.join(["python", "-m", "epp", *sys.argv[1:]]) if sys.argv[1:3] == ["bench", "history"]
               else "python -m epp bench history")
    text = history_markdown(history, command=command, source=_shown(directory.resolve()) + "/",
                            last=args.history_last, link_base=out.parent if out is not None else None)
    for note in history.notes:
        print(f"note: {note}", file=sys.stderr)
    if out is None:
        print(text, end="")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}: {len(history.runs)} full runs, {len(history.notes)} skipped")
    return 0


def rerender(args: argparse.Namespace) -> int:
    from epp.bench.results import load_results

    try:
        outcomes, overhead, info = load_results(args.from_results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Keep the run's own notes (--note, time budget); refresh the findings about peers.
    info.notes = [*info.notes, *(n for n in findings(outcomes) if n not in info.notes)]
    count = write_docs(args.out, outcomes, overhead, info)
    print(f"re-rendered {args.out / 'benchmarks.md'} and {count} plots from {args.from_results}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from epp.bench.overhead import run_overhead
    from epp.bench.results import save_results
    from epp.bench.runner import run_benchmark

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.from_results is not None:
        return rerender(args)
    try:
        plan = build_plan(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    budget_min = args.budget_min if args.budget_min is not None else (None if args.quick else FULL_BUDGET_MIN)
    info = _info(args, plan.row.time_scale, plan.row.pods)
    info.settings = plan_settings(plan, args, budget_min)
    info.pod_profile = (f"a mid-range GPU instead of the simulator's H100 default: engine steps x{plan.row.slowdown:g} "
                        f"slower, {plan.row.gpu_blocks} KV blocks of {plan.row.block_size} tokens per pod, so the "
                        "shared-prefix working set fits the pool's aggregate cache but not every pod's")
    if not args.quick:
        info.raw_results = raw_results_name(info)
    for line in info.machine.lines():
        print(line)
    print(f"{len(plan.phases)} phases, {plan.cells()} cells (phase x router x run), {plan.row.pods} pods, "
          f"time scale {plan.row.time_scale:g}")
    raw = plan.row.run_dir / "results.json"
    overhead: OverheadResult | None = None

    def checkpoint(done: list[PhaseOutcome]) -> None:
        # After every phase: a run cut short (budget, Ctrl-C, deadline) keeps what it measured,
        # the overhead section included.
        info.wall_s = time.monotonic() - started
        save_results(raw, done, overhead, info)

    if not args.no_overhead:
        # First, before the routing phases: on the shared 2-core VM the same stack reads slower
        # for minutes after sustained load (c=1 added p50 0.60 ms rested, 0.83 ms after a
        # 2-minute burn of both cores; docs/performance.md "The c=1 target and the machine's
        # state"), and the overhead targets are about the EPP, not the VM's recent load.
        print("overhead section first (before the routing phases load the machine)", flush=True)
        overhead = run_overhead(overhead_settings(args, plan.row.run_dir), progress=lambda s: print(s, flush=True))
        overhead.measured = f"{info.date} with `{info.command}`"
    # The routing phases' budget starts after the overhead section, so it keeps its coverage.
    deadline = time.monotonic() + budget_min * 60 if budget_min else None
    outcomes = run_benchmark(plan, progress=lambda s: print(s, flush=True), on_phase=checkpoint, deadline=deadline)
    ran = {o.plan.key for o in outcomes}
    missing = [p.key for p in plan.phases if p.key not in ran]
    if missing:
        info.notes.append(f"The time budget ran out: phases not run: {', '.join(missing)}.")
    short = [f"{o.plan.key} ({max(r.runs for r in o.rows)} runs)" for o in outcomes
             if o.rows and max(r.runs for r in o.rows) < plan.repeats]
    if short:
        info.notes.append(f"Phases with fewer runs than planned (time budget): {', '.join(short)}.")
    info.notes.extend(findings(outcomes))
    info.wall_s = time.monotonic() - started
    save_results(raw, outcomes, overhead, info)
    if info.raw_results:
        (args.out / info.raw_results).parent.mkdir(parents=True, exist_ok=True)
        save_results(args.out / info.raw_results, outcomes, overhead, info)
    count = write_docs(args.out, outcomes, overhead, info)
    print(f"wrote {args.out / 'benchmarks.md'}, {count} plots, raw results {raw}"
          + (f" and {args.out / info.raw_results}" if info.raw_results else "") + f" ({info.wall_s:.0f}s)")
    return 0


def run_overhead_only(args: argparse.Namespace) -> int:
    from epp.bench.overhead import run_overhead
    from epp.bench.report import overhead_markdown, plot_overhead, replace_overhead_section

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir: Path = getattr(args, "run_dir", REPO / ".run" / "bench")
    out: Path = getattr(args, "out", REPO / "docs")
    info = _info(args, 1.0, 0)
    for line in info.machine.lines():
        print(line)
    result = run_overhead(overhead_settings(args, run_dir), progress=lambda s: print(s, flush=True))
    result.measured = f"{info.date} with `{info.command}`"
    if args.no_docs:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    plot_overhead(result, out)
    report = out / "benchmarks.md"
    existing = report.read_text() if report.exists() else "# Benchmarks\n"
    report.write_text(replace_overhead_section(existing, overhead_markdown(result, info)))
    print(f"updated the overhead section of {report} and {out / 'bench-overhead.png'}")
    raw = run_dir / "results.json"
    if raw.exists():  # keep --from-results in step with the docs
        from epp.bench.results import load_results, save_results

        try:
            outcomes, _, previous = load_results(raw)
        except ValueError as e:
            print(f"note: {raw} left alone: {e}")
        else:
            save_results(raw, outcomes, result, previous)
            print(f"updated the overhead results in {raw}")
    return 0
