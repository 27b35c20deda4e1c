"""The EPP's plugin histograms over four c=64 runs of one stack, with the overhead benchmark's
long-prompt loads (c=20 and c=150, 600 requests each) between runs 2 and 3 (filter-ab.sh)."""
import sys
from pathlib import Path

# The histogram reader and the run sequence of the last stop's decline2.py (scrape: sums and
# counts per plugin; delta: microseconds per call between two scrapes).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mypyc-shipped-2026-12-05"))
from decline2 import delta, run_sequence, scrape  # noqa: E402,F401  (drive.py imports delta and scrape from here)


def main() -> None:
    cfg = Path(sys.argv[1]) if sys.argv[1] != "default" else None
    run_sequence(cfg, ("", "slo-headroom-tier-filter", "prefix-cache-scorer", "latency-scorer"))


if __name__ == "__main__":
    main()
