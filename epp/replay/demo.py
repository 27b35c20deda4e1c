"""Record a trace from live traffic for the tuning walkthrough: `python -m epp.replay.demo`.

Starts the local stack (simulated pods, `epp serve --record-dir`, Envoy; epp/localstack),
sends one of the benchmark workloads through Envoy (epp/bench/workloads.py, client.py),
stops everything and leaves in `--out`:
- `trace/`: the recorded decision trace;
- `sim-profile.yaml`: the simulator settings the pods ran with, for `epp replay --sim-profile`;
- `live.json`: what the client measured (TTFT / E2E percentiles in model seconds, hit rate
  from the pods' usage reports, requests per pod), to compare with the replay's prediction.

The pods run at `--time-scale` (1 = the latency model's real time; 0.5 = twice as fast), so
recorded arrival gaps are model gaps x time scale: replay with `--rate-scale <time scale>`
to get the model-time rate back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import yaml

from epp.bench.client import run_phase
from epp.bench.stats import Distribution
from epp.bench.workloads import GENERATORS, WorkloadParams, build
from epp.localstack.stack import LocalStack, StackConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m epp.replay.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".run/tuning-demo"))
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--workload", default="shared-prefix", choices=sorted(GENERATORS))
    p.add_argument("--rate", type=float, default=6.0, help="model requests/s (6)")
    p.add_argument("--count", type=int, default=360)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--gpu-blocks", type=int, default=2048, help="KV-cache blocks per pod (2048)")
    p.add_argument("--slowdown", type=float, default=2.0, help="engine step multiplier (2)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulator speed (1 = real time: the EPP's scrape and prefill windows then "
                        "mean the same as in the replay, which runs in model time)")
    p.add_argument("--pod-slowdown", action="append", default=[], metavar="INDEX=FACTOR",
                   help="one pod on a slower GPU: its engine steps take FACTOR x the model (repeatable)")
    p.add_argument("--config", type=Path, default=None, help="EPP config (default: embedded)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    trace_dir = out / "trace"
    for old in trace_dir.glob("*.jsonl") if trace_dir.exists() else ():
        old.unlink()
    slow: dict[int, float] = {}
    for spec in args.pod_slowdown:
        index, _, factor = spec.partition("=")
        if not index.isdigit() or int(index) >= args.pods or not factor:
            p.error(f"--pod-slowdown {spec!r}: expected INDEX=FACTOR with INDEX < --pods")
        slow[int(index)] = float(factor)
    workload = build(args.workload, WorkloadParams(rate=args.rate, count=args.count,
                                                   duration_s=args.count / args.rate * 2,
                                                   seed=args.seed, nonce=f"demo{args.seed}",
                                                   max_tokens=args.max_tokens))
    cfg = StackConfig(ports_free=True, run_dir=out / "stack", pods=args.pods, time_scale=args.time_scale,
                      epp_config=args.config, kv_events=False,
                      sim_args=["--num-gpu-blocks", str(args.gpu_blocks), "--slowdown", str(args.slowdown)],
                      pod_sim_args={i: ["--slowdown", str(f)] for i, f in slow.items()},
                      epp_args=["--record-dir", str(trace_dir)])
    stack = LocalStack(cfg)
    # The same settings for the replay, per pod by the hostport the EPP routes to.
    profile: dict[str, object] = {"num_gpu_blocks": args.gpu_blocks, "latency": {"slowdown": args.slowdown}}
    if slow:
        profile["pods"] = {f"127.0.0.1:{stack.pods[i].serving_port}": {"slowdown": f} for i, f in slow.items()}
    (out / "sim-profile.yaml").write_text(
        "# The simulator settings of the recorded pods (python -m epp.replay.demo)\n"
        + yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    stack.start(timeout=90)
    try:
        print(f"sending {len(workload.requests)} {args.workload} requests at {args.rate:g}/s (model time) "
              f"through {stack.url} ...", file=sys.stderr)
        phase = asyncio.run(run_phase(stack.url, workload, args.time_scale,
                                      deadline_s=workload.span_s * args.time_scale + 120))
    finally:
        stack.stop()
    ok = [r for r in phase.results if r.ok]
    scale = 1.0 / args.time_scale
    prompt = sum(r.prompt_tokens for r in ok)
    live = {
        "requests": len(phase.results), "ok": len(ok),
        "ttft_s": _dist([r.ttft_s * scale for r in ok]), "e2e_s": _dist([r.e2e_s * scale for r in ok]),
        "hit_rate": sum(r.cached_tokens for r in ok) / prompt if prompt else None,
        "pods": dict(Counter(r.pod for r in ok)),
    }
    (out / "live.json").write_text(json.dumps(live, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(live, indent=2))
    return 0 if ok else 1


def _dist(samples: list[float]) -> dict[str, float]:
    d = Distribution.of(samples)
    return {"p50": d.p50, "p90": d.p90, "p99": d.p99, "mean": d.mean}


if __name__ == "__main__":
    sys.exit(main())
