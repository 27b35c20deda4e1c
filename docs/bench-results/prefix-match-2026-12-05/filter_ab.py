"""The EPP's plugin histograms over four c=64 runs of one stack, with the overhead benchmark's
long-prompt loads (c=20 and c=150, 600 requests each) between runs 2 and 3 (filter-ab.sh)."""
import sys
from pathlib import Path
from epp.bench.overhead import OverheadSettings, overhead_stack, load, chat_bodies, _wait_serving

# The histogram reader of the last stop's decline2.py (scrape: sums and counts per plugin;
# delta: microseconds per call between two scrapes).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "mypyc-shipped-2026-12-05"))
from decline2 import delta, scrape  # noqa: E402  (drive.py imports them from here too)

def main() -> None:
    cfg = Path(sys.argv[1]) if sys.argv[1] != "default" else None
    s = OverheadSettings(epp_config=cfg)
    bodies, long_bodies = chat_bodies(), chat_bodies(8, s.long_prompt_bytes)
    with overhead_stack(64, s) as stack:
        args = Path(f"/proc/{stack.epp.pid}/cmdline").read_bytes().split(b"\0")
        mport = int(args[args.index(b"--metrics-port") + 1])
        _wait_serving(stack.epp_port, bodies)
        load(stack.epp_port, bodies, 8, 300, 20)
        snaps = []
        for i in range(4):
            a = scrape(mport)
            load(stack.epp_port, bodies, 64, 12000, 20)
            snaps.append(delta(a, scrape(mport)))
            if i == 1:
                for c in (20, 150):
                    load(stack.epp_port, long_bodies, c, 600, 20)
        for k in snaps[0]:
            if k[2] in ("", "slo-headroom-tier-filter", "prefix-cache-scorer", "latency-scorer"):
                print(f"{k[0]:>12} {k[1]:>14} {k[2]:>32}: " + "  ".join(f"{sn.get(k, float('nan')):8.1f}" for sn in snaps), "us")


if __name__ == "__main__":
    main()
