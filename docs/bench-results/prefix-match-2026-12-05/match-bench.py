"""The prefix match alone, before (b431ab3's per-pod search, read from git) and after, on the
prefix scorer's LRUs as the EPP held them (pickles from diag/drive.py with DIAG_PICKLE=1),
for the overhead benchmark's 64 chat prompts:  .venv/bin/python match-bench.py /tmp/diag/lru-*.pkl"""
import json, pickle, statistics, subprocess, sys, time
from collections import OrderedDict
from epp.bench.overhead import chat_bodies
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer, prefix_block_hashes
old_src = subprocess.run(["git","show","b431ab3:epp/scheduling/plugins/prefix_cache_scorer.py"],capture_output=True,text=True).stdout
ns = {}; exec(compile(old_src.replace("@register_plugin\n", ""), "old", "exec"), ns)
for path in sys.argv[1:]:
    lrus = {k: OrderedDict.fromkeys(v) for k, v in pickle.load(open(path, "rb")).items()}
    new = PrefixCacheScorer(); new._lru = lrus
    old = ns["PrefixCacheScorer"](); old._lru = lrus
    keys = [f for f in lrus]
    keys = sorted(keys)
    allh = []
    for b in chat_bodies():
        body = json.loads(b); text = "".join(f"{m['role']}:{m['content']}\n" for m in body["messages"])
        allh.append(prefix_block_hashes(text, body["model"], 64, 256))
    for h in allh:
        hs = {k for k in keys if h[0] in lrus[k]}
        if hs: new._first_holders[h[0]] = hs
    def t_old():
        for hashes in allh:
            lru_get = old._lru.get; first = hashes[0]; ml = old.match_length
            [0 if (lru := lru_get(key)) is None or first not in lru else ml(key, hashes) for key in keys]
    def t_new():
        for hashes in allh:
            new._match_lengths(keys, hashes)
    res = {"old": [], "new": []}
    for r in range(5):
        for k, f in (("old", t_old), ("new", t_new)):
            t = time.perf_counter()
            for _ in range(200): f()
            res[k].append((time.perf_counter() - t) / 200 / len(allh) * 1e6)
    holders = statistics.mean(sum(1 for k in keys if h[0] in lrus[k]) for h in allh)
    print(path.split("/")[-1], f"pods {len(keys)} holders {holders:.1f}", {k: round(statistics.median(v), 2) for k, v in res.items()}, "us per match")
