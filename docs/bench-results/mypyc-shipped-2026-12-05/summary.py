"""Medians of this directory's alternated overhead runs (each invocation prints 3 runs at 64 pods)."""
import re
import statistics
from pathlib import Path

here = Path(__file__).parent
for arm in ("py", "compiled", "default"):
    runs = [int(v) for f in sorted(here.glob(f"overhead-2026*-{arm}-r*.log"))
            for v in re.findall(r"pods=64 run \d/3: .*?, (\d+) decisions/s per core", f.read_text())]
    first = runs[0::3]
    print(f"{arm:>9}: median {statistics.median(runs):,.0f} of {len(runs)} runs ({min(runs):,}-{max(runs):,}); "
          f"first run of each invocation {first}, the others' median {statistics.median([r for i, r in enumerate(runs) if i % 3]):,.0f}")
cpu = {m: [float(x) for x in re.findall(rf"mode={m} r=\d .*?\"cpu_us_per_request\": ([0-9.]+)", (here / "hotpath-cpu-alternated.txt").read_text())] for m in "01"}
print(f"in process, CPU per request: pure {statistics.median(cpu['0']):.0f} us ({min(cpu['0']):.0f}-{max(cpu['0']):.0f}), "
      f"compiled {statistics.median(cpu['1']):.0f} us ({min(cpu['1']):.0f}-{max(cpu['1']):.0f})")
for arm in ("py", "compiled"):  # overhead.sh with TAG=noslo-: requests without SLO
    runs = [int(v) for f in sorted(here.glob(f"overhead-noslo-*-{arm}-r*.log"))
            for v in re.findall(r"pods=64 run \d/3: .*?, (\d+) decisions/s per core", f.read_text())]
    print(f"without SLO, {arm:>9}: median {statistics.median(runs):,.0f} of {len(runs)} runs ({min(runs):,}-{max(runs):,})")
