"""One-off (2026-12-02, docs/latency-routing.md "Queue harm"): the table of the interleaved
A/B runs of `python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed N
--routers epp-latency [--latency-config VARIANT]`, from their raw JSON, grouped by the arm
named in each run's --note; per run: SLO attainment (chat / long), long-prefill TTFT p90,
long prefills sent to the slow pod and misplaced (epp.bench.latency_placement), then each
arm's medians. Run from the repository root:
PYTHONPATH=. .venv/bin/python docs/bench-results/latency-queue-harm-ab-2026-12-02.py"""
import json
import statistics
import sys
from pathlib import Path

from epp.bench.latency_placement import placements

HERE = Path(__file__).parent
# The arm named in each run's --note: the first version read each pod's own dispatch rate.
ARMS = {"harm05": "own-pod rate, 0.5", "pool05": "pool rate, 0.5", "pool02": "pool rate, 0.2",
        "base": "weight 0 (before)"}
files = sorted(HERE.glob("latency-ab-harm-2026-12-02T*.json")) if len(sys.argv) < 2 else [Path(a) for a in sys.argv[1:]]
arms: dict[str | None, list[tuple[float, float, int, int]]] = {}
for f in files:
    d = json.loads(f.read_text())
    note = d["note"]
    arm = ARMS.get(note.split(":", 1)[-1].strip().rsplit(" round", 1)[0]) if ":" in note else \
        ("code of 7142f03" if ", old," in note else "code of today")
    row = d["phases"][0]["rows"][0]
    placed = placements(d)[0]
    print(f"{f.name:42s} {arm:18s} seed {d['settings']['seed']}  attainment {row['attainment']:6.1%} "
          f"(chat {row['attainment_chat']:6.1%} / long {row['attainment_long']:6.1%})  long TTFT p90 "
          f"{row['ttft_p90_long']:5.2f} s  long on slow pod {placed.on_slow_pod:2d}  "
          f"misplaced {len(placed.misplaced):2d}")
    arms.setdefault(arm, []).append((row["attainment"], row["ttft_p90_long"], placed.on_slow_pod,
                                     len(placed.misplaced)))
for arm, runs in arms.items():
    att = [r[0] for r in runs]
    p90 = [r[1] for r in runs]
    print(f"{arm:18s} {len(runs)} runs: attainment median {statistics.median(att):.1%} "
          f"({min(att):.1%}-{max(att):.1%}), long TTFT p90 median {statistics.median(p90):.2f} s "
          f"({min(p90):.2f}-{max(p90):.2f}), long on slow pod median {statistics.median(r[2] for r in runs):g}, "
          f"misplaced median {statistics.median(r[3] for r in runs):g}")
