"""filter-ab.txt in numbers: per arm, the mean of runs 1-2 (before the long prompts) and of
runs 3-4 (after them), for the scheduler's e2e time and the plugin that matches the prefixes
(the headroom filter with the SLO profile, the prefix scorer's Score in the default config)."""
import re
import statistics
from collections import defaultdict
from pathlib import Path

rows: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
arm = ""
for line in (Path(__file__).parent / "filter-ab.txt").read_text().splitlines():
    if line.startswith("## "):
        arm = line.split()[1]
        continue
    m = re.match(r"\s*\S+\s+(\S*)\s+(\S*):\s+([0-9. ]+) us$", line)
    if not m:
        continue
    point, plugin = (m.group(1), m.group(2)) if m.group(2) else ("", "e2e")
    v = [float(x) for x in m.group(3).split()]
    name = plugin if plugin == "e2e" else f"{point} {plugin}"
    rows[(arm, name)].append(((v[0] + v[1]) / 2, (v[2] + v[3]) / 2))
for (arm, name), runs in sorted(rows.items(), key=lambda kv: (kv[0][0].split("-")[1], kv[0][1], kv[0][0])):
    if name not in ("e2e", "Filter slo-headroom-tier-filter", "Scorer prefix-cache-scorer"):
        continue
    if arm.endswith("slo") and name == "Scorer prefix-cache-scorer":
        continue
    before = statistics.median(b for b, _ in runs)
    after = statistics.median(a for _, a in runs)
    growth = [f"{a - b:+.0f}" for b, a in runs]
    print(f"{arm:>11} {name:>32}: before {before:6.1f} us, after {after:6.1f} us (median of {len(runs)} runs; "
          f"growth per run {', '.join(growth)} us)")

# overhead-ab.sh: decisions/s per core at 64 pods; runs 2 and 3 of each invocation follow its
# long-prompt loads.
for arm in ("old-slo", "new-slo", "old-default", "new-default"):
    per_file = [[int(v) for v in re.findall(r"pods=64 run \d/3: .*?, (\d+) decisions/s per core", f.read_text())]
                for f in sorted(Path(__file__).parent.glob(f"overhead-2026*-{arm}-r*.log"))]
    runs = [v for f in per_file for v in f]
    if not runs:
        continue
    first = [f[0] for f in per_file if f]
    later = [v for f in per_file for v in f[1:]]
    print(f"overhead {arm:>11}: median {statistics.median(runs):,.0f} of {len(runs)} runs ({min(runs):,}-{max(runs):,}); "
          f"first runs {statistics.median(first):,.0f}, runs after the long prompts {statistics.median(later):,.0f} "
          f"({min(later):,}-{max(later):,})")
