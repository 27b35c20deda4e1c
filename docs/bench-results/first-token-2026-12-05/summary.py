"""Medians of the alternated overhead runs of this directory (overhead-ab.sh): decisions/s per
core at 64 pods, per arm (old = ac149db, the session's base; new = this session's code). Run
from the repository root:

    python docs/bench-results/first-token-2026-12-05/summary.py > docs/bench-results/first-token-2026-12-05/summary.txt
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

HERE = Path(__file__).parent
RUN = re.compile(r"pods=64 run \d/3: .*?(\d+) decisions/s per core")


def main() -> None:
    arms: dict[str, list[int]] = {}
    for path in sorted(HERE.glob("overhead-*.log")):
        arm = re.search(r"-(old|new)-(slo|default)-r\d", path.name)
        if arm is None:
            continue
        values = [int(v) for v in RUN.findall(path.read_text())]
        arms.setdefault(f"{arm.group(1)}-{arm.group(2)}", []).extend(values)
    for name in ("old-slo", "new-slo", "old-default", "new-default"):
        values = arms.get(name, [])
        if values:
            print(f"{name:<12} runs {len(values):>2}  median {statistics.median(values):>6.0f}  "
                  f"range {min(values)}-{max(values)}  under 2,000: {sum(v < 2000 for v in values)}")
    for kind in ("slo", "default"):
        old, new = arms.get(f"old-{kind}"), arms.get(f"new-{kind}")
        if old and new:
            print(f"{kind}: new / old at the median = {statistics.median(new) / statistics.median(old):.3f}")


if __name__ == "__main__":
    main()
