"""PrefixCacheScorer.record, before (b431ab3, read from git) and after: 29-block prompts sent
round robin to 64 pods whose LRUs (1,000 entries) fill after ~35 records each, so most
records evict 29 blocks:  .venv/bin/python record-bench.py"""
import random, statistics, subprocess, time
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
old_src = subprocess.run(["git","show","b431ab3:epp/scheduling/plugins/prefix_cache_scorer.py"],capture_output=True,text=True).stdout
ns = {}; exec(compile(old_src.replace("@register_plugin\n", ""), "old", "exec"), ns)
class M: num_gpu_blocks = 0
class EP:
    def __init__(s, k): s.key = k; s.metrics = M()
eps = [EP(f"pod-{i}") for i in range(64)]
rng = random.Random(3)
prompts = [[rng.getrandbits(64) for _ in range(29)] for _ in range(2000)]
res = {"old": [], "new": []}
for r in range(5):
    for name, cls in (("old", ns["PrefixCacheScorer"]), ("new", PrefixCacheScorer)):
        sc = cls(params=cls.Params(lru_capacity_per_server=1000, auto_tune=False))
        t = time.perf_counter()
        for i in range(20000):
            sc.record(eps[i % 64], prompts[(i * 7) % 2000])
        res[name].append((time.perf_counter() - t) / 20000 * 1e6)
print({k: (round(statistics.median(v), 2), [round(x, 2) for x in v]) for k, v in res.items()}, "us per record (29 blocks, LRUs full after ~35 records per pod)")
