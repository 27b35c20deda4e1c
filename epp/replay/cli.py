"""`epp record`, `epp replay` and `epp tune`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from epp.config.loader import ConfigError
from epp.replay.profile import ProfileError, SimProfile
from epp.replay.record import add_record_arguments, config_text
from epp.replay.replayer import Replayer, ReplayError, ReplayResult
from epp.replay.report import markdown, svg_plot
from epp.replay.trace import Trace, TraceError, read_trace
from epp.replay.tune import OBJECTIVES, SearchError, parse_dimension, report_markdown, tune, winning_config

RECORDED = "recorded"
log = logging.getLogger("epp.replay")


def add_parser(sub: Any) -> None:
    _add_record(sub)
    _add_replay(sub)
    _add_tune(sub)


# --- epp record ---------------------------------------------------------------------------------
def _add_record(sub: Any) -> None:
    from epp.server import cli as serve_cli

    # `epp record` is `epp serve` with --record-dir required: the recorder must live in the
    # serving process, where the decisions are (see epp/replay/record.py).
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    serve_cli.add_parser(scratch)
    serve = scratch.choices["serve"]
    p: argparse.ArgumentParser = sub.add_parser(
        "record", help="serve and record a decision trace (epp serve --record-dir)", parents=[serve],
        add_help=False, conflict_handler="resolve",
        description="Run the Endpoint Picker like `epp serve` and write every routing decision to a "
                    "bounded, rotating trace for `epp replay` and `epp tune`. The trace holds arrival "
                    "time, model, objective, prompt length, prefix-block hashes, max_tokens and the "
                    "picks; prompt text only with --record-prompts.")
    p.add_argument("-h", "--help", action="help", help="show this help message and exit")
    add_record_arguments(p, required=True)
    p.set_defaults(func=_run_record)


def _run_record(args: argparse.Namespace) -> int:
    from epp.server import cli as serve_cli

    if args.workers > 1 and args.worker_id is None:
        print("error: epp record runs one process; for several workers use "
              "`epp serve --workers N --record-dir DIR` (one trace file series per worker)", file=sys.stderr)
        return 2
    return serve_cli.run(args)


# --- epp replay ---------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", nargs="+", type=Path, help="trace files or directories (epp record --record-dir)")
    p.add_argument("--rate-scale", type=float, default=1.0,
                   help="replay this many times faster than recorded (2 = twice the rate; 1)")
    p.add_argument("--sim-profile", type=Path, default=None,
                   help="simulator profile YAML: latency model, KV cache, per-pod overrides "
                        "(epp/replay/profile.py; default: the simulator's H100 defaults)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pickers' random tie-breaks (0)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N decisions (0 = all)")


def _add_replay(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "replay", help="replay a decision trace against simulated pods, one run per config",
        description="Replay a recorded trace against fresh simulated pods (epp/sim's engine, in "
                    "virtual time) for each --config and report TTFT / E2E percentiles, prefix hit "
                    "rate, per-pod balance and decision cost side by side.")
    _common(p)
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help=f"EndpointPickerConfig to replay (repeatable; '{RECORDED}' = the config in the "
                        "trace header; default: the recorded one)")
    p.add_argument("--seeded-ties", action="store_true",
                   help=f"with --config {RECORDED}: break score ties with the seeded generator instead of "
                        "taking the recorded pick when it is among the best (the default)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    p.add_argument("--plot", type=Path, default=None,
                   help="write the SVG plot here (default: the report's path with .svg when --out is given)")
    p.set_defaults(func=_run_replay)


def _config(trace: Trace, spec: str) -> tuple[str, str]:
    """(text, source) of a --config argument."""
    if spec == RECORDED:
        if not trace.header.config_text:
            raise ReplayError("the trace header holds no config; give --config FILE")
        return trace.header.config_text, f"{RECORDED} ({trace.header.config_source or 'trace header'})"
    source, text = config_text(spec, strict=True)
    return text, source


def _load(args: argparse.Namespace) -> tuple[Trace, SimProfile]:
    trace = read_trace(args.trace, args.limit)
    return trace, SimProfile.load(args.sim_profile)


def _describe(trace: Trace, paths: list[Path]) -> str:
    pods = len(trace.pods)
    return (f"`{' '.join(map(str, paths))}`: {len(trace.records)} decisions over {trace.duration_s:.1f} s "
            f"({len(trace.records) / max(trace.duration_s, 1e-9):.1f} req/s), {pods} pods")


def _command(args: argparse.Namespace, *extra: str) -> str:
    """The command line that reproduces this run (written next to its numbers)."""
    words = ["epp", args.command, *map(str, args.trace)]
    if args.rate_scale != 1.0:
        words += ["--rate-scale", f"{args.rate_scale:g}"]
    if args.sim_profile is not None:
        words += ["--sim-profile", str(args.sim_profile)]
    if args.seed:
        words += ["--seed", str(args.seed)]
    if args.limit:
        words += ["--limit", str(args.limit)]
    return shlex.join([*words, *extra])


def _run_replay(args: argparse.Namespace) -> int:
    try:
        trace, profile = _load(args)
        specs = args.config or [RECORDED]
        results: list[ReplayResult] = []
        for spec in specs:
            text, source = _config(trace, spec)
            print(f"replaying {len(trace.records)} decisions with {source} ...", file=sys.stderr)
            results.append(Replayer(trace, text, source, name=spec, profile=profile,
                                    rate_scale=args.rate_scale, seed=args.seed,
                                    follow_ties=spec == RECORDED and not args.seeded_ties).run())
    except (TraceError, ProfileError, ReplayError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot_path: Path | None = args.plot
    if plot_path is None and args.out is not None:
        plot_path = args.out.with_suffix(".svg")
    plot_ref = None
    if plot_path is not None:
        plot_path.write_text(svg_plot(results), encoding="utf-8")
        plot_ref = plot_path.name if args.out is not None and plot_path.parent == args.out.parent else str(plot_path)
    extra = [w for spec in args.config for w in ("--config", spec)]
    if args.out is not None:
        extra += ["--out", str(args.out)]
    text = markdown(results, _describe(trace, args.trace), _command(args, *extra), plot_ref)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


# --- epp tune -----------------------------------------------------------------------------------
def _add_tune(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "tune", help="search config settings by replaying a trace, within a time budget",
        description="Replay the trace with the base config and with candidate settings (grid, or "
                    "random when the grid exceeds --max-trials), rank them by --objective, print "
                    "the best and write the winning EndpointPickerConfig.")
    _common(p)
    p.add_argument("--search", action="append", default=[], metavar="NAME.FIELD=VALUES", required=True,
                   help="a dimension: queue-scorer.weight=1..4, prefix-cache-scorer.balanceAbsThreshold=8,16,32, "
                        "decode/kv-cache-utilization-scorer.weight=0..2:0.5 (repeatable)")
    p.add_argument("--config", default=RECORDED, metavar="FILE",
                   help=f"base config the settings apply to ('{RECORDED}' = the trace's; default)")
    p.add_argument("--budget-s", type=float, default=60.0, help="wall-clock budget in seconds (60)")
    p.add_argument("--max-trials", type=int, default=0,
                   help="at most this many candidates; a larger grid is sampled at random (0 = whole grid)")
    p.add_argument("--objective", default="ttft-p90", choices=sorted(OBJECTIVES),
                   help="what to minimise, in simulated time (ttft-p90)")
    p.add_argument("--out", type=Path, default=Path("best-config.yaml"),
                   help="where to write the winning config (best-config.yaml)")
    p.add_argument("--report", type=Path, default=None, help="write the Markdown report here too")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    try:
        trace, profile = _load(args)
        dims = [parse_dimension(s) for s in args.search]
        text, source = _config(trace, args.config)
        outcome = tune(trace, text, source, dims, objective=args.objective, budget_s=args.budget_s,
                       max_trials=args.max_trials, profile=profile, rate_scale=args.rate_scale,
                       seed=args.seed, progress=lambda line: print(line, file=sys.stderr))
        extra = [w for spec in args.search for w in ("--search", spec)]
        if args.config != RECORDED:
            extra += ["--config", args.config]
        extra += ["--budget-s", f"{args.budget_s:g}", "--objective", args.objective]
        if args.max_trials:
            extra += ["--max-trials", str(args.max_trials)]
        command = _command(args, *extra, "--out", str(args.out))
        best = winning_config(outcome, command)
    except (TraceError, ProfileError, ReplayError, ConfigError, SearchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = report_markdown(outcome, command)
    print(report)
    if args.report is not None:
        args.report.write_text(report, encoding="utf-8")
    args.out.write_text(best, encoding="utf-8")
    print(f"wrote the winning config to {args.out}", file=sys.stderr)
    return 0
