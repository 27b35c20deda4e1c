"""Four c=64 runs of the overhead stack at 64 pods, with its long-prompt loads after the second:
the plugin histograms per run, a SIGUSR1 state dump after each step and a cProfile per run
(diag/sitecustomize.py). From the checkout, under flock /tmp/bench.lock:
  DIAG_ON=1 [DIAG_PICKLE=1] PYTHONPATH=docs/bench-results/prefix-match-2026-12-05/diag EPP_LATENCY_NATIVE=0 \
    .venv/bin/python docs/bench-results/prefix-match-2026-12-05/diag/drive.py \
    docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml"""
import os, signal, sys, time, json
from pathlib import Path
import re, urllib.request
from collections import defaultdict
from epp.bench.overhead import OverheadSettings, overhead_stack, load, chat_bodies, _wait_serving

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from filter_ab import delta, scrape  # noqa: E402  (the same histogram reader)

cfg = Path(sys.argv[1])
s = OverheadSettings(epp_config=cfg)
bodies, long_bodies = chat_bodies(), chat_bodies(8, s.long_prompt_bytes)
def dump(stack, tag):
    print("dump", tag, flush=True)
    os.kill(stack.epp.pid, signal.SIGUSR1); time.sleep(0.5)
with overhead_stack(64, s) as stack:
    args = Path(f"/proc/{stack.epp.pid}/cmdline").read_bytes().split(b"\0")
    mport = int(args[args.index(b"--metrics-port") + 1])
    _wait_serving(stack.epp_port, bodies)
    load(stack.epp_port, bodies, 8, 300, 20)
    dump(stack, "start")
    for i in range(4):
        a = scrape(mport)
        os.kill(stack.epp.pid, signal.SIGUSR2)
        load(stack.epp_port, bodies, 64, 12000, 20)
        os.kill(stack.epp.pid, signal.SIGUSR2); time.sleep(1)
        d = delta(a, scrape(mport))
        print(i, {k[2] or k[0]: round(v, 1) for k, v in d.items() if v > 20}, flush=True)
        dump(stack, f"after run {i}")
        if i == 1:
            for c in (20, 150):
                r = load(stack.epp_port, long_bodies, c, 600, 20)
                print("long", c, len(r.latencies_s), r.errors, flush=True)
                dump(stack, f"after long {c}")
