"""The TTFT floor per pod, over all TTFTs (as of 7f918fe) and over short prompts (bd7164a),
on the predictor states saved on 2026-12-03 (docs/bench-results/latency-states-2026-12-03/).

    PYTHONPATH=. .venv/bin/python docs/bench-results/latency-2026-12-03-floor-short.py \\
        docs/bench-results/latency-states-2026-12-03/*.json.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from epp.latency.predictor import NEW_TOKENS, TTFT_FLOOR_PERCENTILE, _short_prompt_ttfts, ttft_floor


def main(paths: list[str]) -> None:
    diffs: list[float] = []
    print("| state | pod | TTFTs | short prompts | floor over all (s) | over short (s) | largest new prompt (k) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(paths):
        state = json.loads(gzip.open(path).read())
        per_pod = {pod: (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
                   for pod, rows in state["samples"]["ttft"].items() if len(rows) >= 8}
        xs = np.concatenate([x for x, _ in per_pod.values()])
        ys = np.concatenate([y for _, y in per_pod.values()])
        pooled_short = _short_prompt_ttfts(xs, ys)
        for pod, (x, y) in sorted(per_pod.items()):
            old = float(np.percentile(y, TTFT_FLOOR_PERCENTILE))
            new = ttft_floor(x, y, pooled_short)
            diffs.append(new - old)
            print(f"| {Path(path).name.split('.')[0]} | {pod.split('/')[-1]} | {len(y)} | "
                  f"{len(_short_prompt_ttfts(x, y))} | {old:.3f} | {new:.3f} | {x[:, NEW_TOKENS].max():.1f} |")
    d = np.array(diffs)
    print(f"\n{len(d)} pods in {len(paths)} states: floor over short minus over all, "
          f"median {np.median(d) * 1000:+.1f} ms, range {d.min() * 1000:+.1f} to {d.max() * 1000:+.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
