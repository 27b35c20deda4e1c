"""Does the EPP's CPU per request at c=64 decline run over run, and is it the long prompts?
Same stack, arms: 5 runs of the c=64 load; long-prompt loads (c=20 then c=150) after run 2."""
import sys
from pathlib import Path
from epp.bench.overhead import OverheadSettings, overhead_stack, load, session_cpu_seconds, chat_bodies, _wait_serving, idle_cpu_percent

cfg = Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "default" else None
s = OverheadSettings(epp_config=cfg)
bodies, long_bodies = chat_bodies(), chat_bodies(8, s.long_prompt_bytes)
with overhead_stack(64, s) as stack:
    _wait_serving(stack.epp_port, bodies)
    load(stack.epp_port, bodies, 8, 300, 20)
    for i in range(6):
        fixed_idle, _ = idle_cpu_percent((stack.epp.pid, stack.idle_epp.pid), 3.0)
        c0 = session_cpu_seconds(stack.epp.pid)
        run = load(stack.epp_port, bodies, 64, 12000, 20)
        busy = (session_cpu_seconds(stack.epp.pid) - c0) - fixed_idle / 100 * run.wall_s
        n = len(run.latencies_s) + run.errors
        print(f"run {i + 1}: {n / busy:.0f} decisions/s per core, {n} requests, errors {run.errors}", flush=True)
        if i == 2:
            for c in (20, 150):
                r = load(stack.epp_port, long_bodies, c, 600, 20)
                print(f"   long prompts c={c}: {len(r.latencies_s)} ok, errors {r.errors}", flush=True)
