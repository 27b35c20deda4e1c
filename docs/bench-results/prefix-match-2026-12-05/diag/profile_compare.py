"""Per-request own time and calls of the functions that grew most between two cProfiles of
drive.py (run 2, before the long prompts, against run 3, after them):
  python profile_compare.py /tmp/diag/prof2.pstats /tmp/diag/prof3.pstats"""
import pstats
import sys


def load(path: str) -> dict[str, tuple[int, float]]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    return {f"{k[0].split('/')[-1]}:{k[2]}": (v[1], v[2]) for k, v in stats.items()}


a, b = load(sys.argv[1]), load(sys.argv[2])
na, nb = a["extproc.py:_route"][0], b["extproc.py:_route"][0]  # one per request
rows = sorted(((b.get(k, (0, 0.0))[1] / nb - a.get(k, (0, 0.0))[1] / na, k) for k in set(a) | set(b)), reverse=True)
print(f"requests: {na} and {nb}; own time per request (under cProfile, so inflated), calls per request")
for delta, k in rows[:int(sys.argv[3]) if len(sys.argv) > 3 else 8]:
    ca, ta = a.get(k, (0, 0.0)); cb, tb = b.get(k, (0, 0.0))
    print(f"{delta * 1e6:+8.2f} us  {k:55s} {ta / na * 1e6:7.2f} -> {tb / nb * 1e6:7.2f} us, "
          f"calls {ca / na:6.2f} -> {cb / nb:6.2f}")
