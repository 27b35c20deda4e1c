"""Which plugin's time per decision rises after the long prompts (the EPP's own plugin histograms)."""
import re, sys, urllib.request
from collections import defaultdict
from pathlib import Path
from epp.bench.overhead import OverheadSettings, overhead_stack, load, chat_bodies, _wait_serving

def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    out = defaultdict(float)
    for line in text.splitlines():
        m = re.match(r'(inference_extension_plugin_duration_seconds|inference_extension_scheduler_e2e_duration_seconds)_(sum|count)\{?(.*?)\}? ([0-9.e+-]+)$', line)
        if m:
            labels = re.findall(r'plugin_name="([^"]*)"', m.group(3))
            ext = re.findall(r'extension_point="([^"]*)"', m.group(3))
            key = (m.group(1)[-12:], (ext[0] if ext else ""), (labels[0] if labels else ""))
            out[key + (m.group(2),)] += float(m.group(4))
    return out

def delta(a, b):
    keys = {k[:3] for k in b}
    res = {}
    for k in sorted(keys):
        n = b.get(k + ("count",), 0) - a.get(k + ("count",), 0)
        s = b.get(k + ("sum",), 0) - a.get(k + ("sum",), 0)
        if n > 0:
            res[k] = s / n * 1e6
    return res

def run_sequence(cfg, plugins=None):
    """Four c=64 runs of one stack, the long-prompt loads (c=20 and c=150, 600 requests each)
    between runs 2 and 3; prints each plugin's microseconds per call in each run (only those in
    `plugins`, when given). prefix-match-2026-12-05/filter_ab.py runs it too."""
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
            if plugins is None or k[2] in plugins:
                print(f"{k[0]:>12} {k[1]:>14} {k[2]:>32}: " + "  ".join(f"{sn.get(k, float('nan')):8.1f}" for sn in snaps), "us")

if __name__ == "__main__":  # prefix-match-2026-12-05/filter_ab.py imports scrape, delta and run_sequence
    run_sequence(Path(sys.argv[1]))
