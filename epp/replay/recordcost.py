"""What recording costs the serving EPP: `python -m epp.replay.recordcost`.

The same fixed load (the overhead benchmark's chat bodies, closed loop, through Envoy and
ext_proc to instant upstreams, so the EPP's CPU is all routing) is sent to an `epp serve`
without and with `--record-dir`; the EPP's CPU (utime+stime from /proc) per request is
compared. Arms alternate within each repeat and the medians are reported, because the
machine is shared. Instant upstreams make this the worst case: with real model servers the
EPP does the same work per request, but nothing else dilutes the recorder's share either.

Also reported: the in-process cost of one recorded decision (build the event, buffer it,
encode it, write it) measured directly, for the microseconds behind the percentage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from epp.bench.overhead import (
    OverheadSettings,
    _wait_serving,
    chat_bodies,
    load,
    overhead_stack,
    session_cpu_seconds,
)
from epp.config.loader import default_config_text, parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.observability.decisions import DecisionBus, build_event
from epp.replay.trace import PodInfo, RotatingTraceWriter, TraceHeader
from epp.scheduling.registry import PluginContext
from epp.server.request import parse_request


@dataclass(slots=True)
class ArmRun:
    recording: bool
    requests: int
    errors: int
    cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


def measure_serving(pods: int, requests: int, concurrency: int, repeats: int, run_dir: Path) -> list[ArmRun]:
    bodies = chat_bodies()
    runs: list[ArmRun] = []
    for rep in range(repeats):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for recording in order:
            trace_dir = run_dir / f"trace-{rep}"
            args = ("--record-dir", str(trace_dir)) if recording else ()
            settings = replace(OverheadSettings(), epp_args=args,
                               run_dir=run_dir / ("on" if recording else "off"))
            with overhead_stack(pods, settings) as stack:
                _wait_serving(stack.epp_port, bodies)
                load(stack.epp_port, bodies, concurrency, min(500, requests), 30.0)  # warm up
                cpu0 = session_cpu_seconds(stack.epp.pid)
                run = load(stack.epp_port, bodies, concurrency, requests, 120.0)
                time.sleep(0.5)  # let the recorder's last flush land inside the measurement
                cpu = session_cpu_seconds(stack.epp.pid) - cpu0
            runs.append(ArmRun(recording, len(run.latencies_s), run.errors, cpu))
            print(f"repeat {rep}: recording={'on ' if recording else 'off'} {len(run.latencies_s)} ok, "
                  f"{run.errors} errors, EPP CPU {cpu:.2f} s = {runs[-1].cpu_us_per_request:.0f} µs/request",
                  file=sys.stderr)
    return runs


def measure_in_process(decisions: int = 20000) -> tuple[float, float]:
    """(µs per recorded decision, µs per decision of the scheduler itself) for the default
    config on 8 pods and 2 KB chat prompts."""
    ds = Datastore()
    for i in range(8):
        ds.upsert_endpoint(Endpoint(name=f"pod{i}", address="10.0.0.1", port=8000 + i))
    cfg = parse_scheduler_config(default_config_text(), PluginContext(ds), "default")
    bodies = chat_bodies()
    requests = [parse_request(b, "/v1/chat/completions", f"r{i}", {}, ds) for i, b in enumerate(bodies)]
    endpoints = ds.healthy_endpoints()
    scheduled = []
    t0 = time.process_time()
    for i in range(decisions):
        req = requests[i % len(requests)]
        result, state = cfg.scheduler.schedule(req, endpoints)
        cfg.scheduler.pre_request(state, req, result)
        scheduled.append((req, result, state))
    schedule_s = time.process_time() - t0
    bus = DecisionBus()
    sub = bus.subscribe(maxsize=decisions)
    with tempfile.TemporaryDirectory() as tmp:
        writer = RotatingTraceWriter(Path(tmp), TraceHeader(pods=[PodInfo(key=e.key, hostport=e.hostport)
                                                                  for e in endpoints]))
        t0 = time.process_time()
        for i, (req, result, state) in enumerate(scheduled):
            if bus.active:
                bus.publish(build_event(req, result, state, 1e-4))
            if i % 500 == 499:  # the recorder drains on a timer; batch like it does
                events = sub.drain()
                writer.write_events(events)
                writer.flush()
        events = sub.drain()
        writer.write_events(events)
        writer.close()
        record_s = time.process_time() - t0
    return record_s / decisions * 1e6, schedule_s / decisions * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m epp.replay.recordcost", description=__doc__)
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--requests", type=int, default=4000, help="requests per arm and repeat (4000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run-dir", type=Path, default=Path(".run/recordcost"))
    p.add_argument("--in-process-only", action="store_true")
    args = p.parse_args(argv)
    record_us, schedule_us = measure_in_process()
    print(f"in process: recording costs {record_us:.1f} µs per decision; the default config's "
          f"scheduling {schedule_us:.1f} µs per decision (8 pods, 2 KB chat prompts)")
    if args.in_process_only:
        return 0
    runs = measure_serving(args.pods, args.requests, args.concurrency, args.repeats, args.run_dir)
    off = [r.cpu_us_per_request for r in runs if not r.recording]
    on = [r.cpu_us_per_request for r in runs if r.recording]
    ratios = [b / a - 1 for a, b in zip(off, on, strict=True)]
    print(f"EPP CPU per request, median of {args.repeats}: without recording {statistics.median(off):.0f} µs "
          f"(runs {', '.join(f'{v:.0f}' for v in off)}), with recording {statistics.median(on):.0f} µs "
          f"(runs {', '.join(f'{v:.0f}' for v in on)}); recording adds {statistics.median(ratios):+.1%} "
          f"(per repeat: {', '.join(f'{r:+.1%}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
