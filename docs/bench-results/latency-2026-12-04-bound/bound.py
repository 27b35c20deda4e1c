"""Per run at 90% load: the default config's long-prefill TTFT p90, the 1.5x target it sets,
ours, and the two floors of epp.bench.latency_placement: each long prefill alone on an idle
fast pod, and the scheduled bound (the best placement and order of all of them, no chats;
and the same at the speed ours measured on its long prefills that found no other ahead, chats
included).

    python docs/bench-results/latency-2026-12-04-bound/bound.py > docs/bench-results/latency-2026-12-04-bound/bound.txt

Every full run (all three rows measured together) of 2026-12-03 and 2026-12-04 in
docs/bench-results, the three of latency-2026-12-04-carried (d903489's code) last. The target
is below the scheduled bound where no router could meet it.
"""

from __future__ import annotations

import glob
import json
import statistics
from pathlib import Path

from epp.bench.latency_placement import placements

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ["latency-2026-12-03T*.json", "latency-2026-12-04-sbs/*/*.json", "latency-2026-12-04-workers/*/*.json",
            "latency-2026-12-04-carried/full-*/*.json"]


def main() -> None:
    rows = []
    for pattern in PATTERNS:
        for name in sorted(glob.glob(str(ROOT / pattern))):
            result = json.loads(Path(name).read_text())
            placed = {p.label: p for p in placements(result) if p.load == 0.9}
            default = placed.get("EPP default config")
            ours = placed.get("EPP predicted latency")
            if default is None or ours is None:
                continue
            rows.append((Path(name).relative_to(ROOT), result["settings"]["seed"], default, ours))
    print("| run | seed | default p90 | target (/1.5) | ours | ours / default | idle floor | scheduled bound "
          "| at ours' speed | target below the bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    below = 0
    ratios = []
    for name, seed, default, ours in rows:
        target = default.ttft_p90 / 1.5
        ratio = default.ttft_p90 / ours.ttft_p90
        ratios.append(ratio)
        below += target < ours.ttft_p90_scheduled
        print(f"| {name} | {seed} | {default.ttft_p90:.2f} | {target:.2f} | {ours.ttft_p90:.2f} | {ratio:.2f}x | "
              f"{ours.ttft_p90_idle:.2f} | {ours.ttft_p90_scheduled:.2f} | {ours.ttft_p90_scheduled_floor:.2f} | "
              f"{'yes' if target < ours.ttft_p90_scheduled else 'no'} |")
    best = [d.ttft_p90 / o.ttft_p90_scheduled for _, _, d, o in rows]
    own = [d.ttft_p90 / o.ttft_p90_scheduled_floor for _, _, d, o in rows]
    print()
    print(f"{len(rows)} runs: the target below the scheduled bound in {below}; ours / default median "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); the best any router could "
          f"reach (default / bound) median {statistics.median(best):.2f}x ({min(best):.2f}-{max(best):.2f}), "
          f"at ours' speed {statistics.median(own):.2f}x ({min(own):.2f}-{max(own):.2f})")
    for seed in sorted({seed for _, seed, _, _ in rows}):
        mine = [d.ttft_p90 / o.ttft_p90 for _, s, d, o in rows if s == seed]
        bound = [d.ttft_p90 / o.ttft_p90_scheduled for _, s, d, o in rows if s == seed]
        print(f"seed {seed}: {len(mine)} runs, ours / default median {statistics.median(mine):.2f}x, "
              f"default / bound median {statistics.median(bound):.2f}x")


if __name__ == "__main__":
    main()
