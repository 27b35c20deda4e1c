"""Two EPP workers, without and with request sharing (epp/latency/sharing.py), alternated:
`python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed N --epp-workers 2
--routers epp-latency [--epp-max-streams 2]`, each arm from its own git worktree.

- sbs/ (13:50-14:08 UTC): ca61178 (not shared) against 3216e1a (shared), Envoy's default 32
  streams per EPP connection;
- spread/ (14:10- UTC): --epp-max-streams 2, so Envoy opens more connections and the kernel
  spreads them over both workers: ca61178 + the bench option (3c46c22, not shared) against
  d1be2f5 (shared). Each row records its decisions per worker.

Run: python3 alternated.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
SHARED = {"ca61178": False, "3216e1a": True, "unshared": False, "shared": True}


def table(directory: Path) -> None:
    rows: dict[tuple[int, bool], list[dict]] = defaultdict(list)
    for path in sorted(directory.glob("*/*.json"), key=lambda p: p.parent.name.split("-")[-1]):
        data = json.loads(path.read_text())
        shared = SHARED[path.parent.name.split("-")[0]]
        rows[(data["settings"]["seed"], shared)] += data["phases"][0]["rows"]
    print(f"{directory.name}/:")
    print("| seed | workers | runs: attainment / long TTFT p90 (s) | median attainment | median long p90 (s) | "
          "worst pod TTFT MAPE | decisions per worker | decision mean (us) |")
    print("|---|---|---|---|---|---|---|---|")
    for (seed, shared), group in sorted(rows.items()):
        att = [r["attainment"] * 100 for r in group]
        p90 = [r["ttft_p90_long"] for r in group]
        worst = ", ".join(f"{max(r['ttft_mape_by_pod'].values()) * 100:.0f}%" if r["ttft_mape_by_pod"] else "-"
                          for r in group)
        split = ", ".join("/".join(str(v) for v in r.get("decisions_by_worker", {}).values()) or "-" for r in group)
        costs = ", ".join(f"{r['decision_mean_us']:.0f}" for r in group)
        runs = ", ".join(f"{a:.1f}% / {p:.2f}" for a, p in zip(att, p90, strict=True))
        print(f"| {seed} | {'shared' if shared else 'not shared'} | {runs} | {statistics.median(att):.1f}% | "
              f"{statistics.median(p90):.2f} | {worst} | {split} | {costs} |")
    print()


def main() -> None:
    for name in ("sbs", "spread"):
        if (HERE / name).is_dir():
            table(HERE / name)


if __name__ == "__main__":
    main()
