"""The TTFT floor of one continuous-batching pod, with no router in the path (issue 12).

Starts one simulated vLLM pod (`python -m epp sim`, the flow benchmark's settings: the
default latency model, `--max-num-seqs 8`) and measures the TTFT of the flow benchmark's
critical request (prompt "flow bench", streamed) sent straight to the pod:

1. unloaded: probes one after another on an idle pod;
2. busy, a slot free: `--busy` background streams (default max-num-seqs - 1) keep decoding
   (each restarts when it ends), so every probe finds a free slot and an empty queue, but an
   engine step in progress.

Both the client's TTFT (wall) and the pod's own `vllm:time_to_first_token_seconds`
histogram (model time) are reported. No Envoy, no EPP, no flow control: whatever the busy
probes lose against the unloaded ones is the engine's, and no router can win it back.

    PYTHONPATH=. .venv/bin/python docs/bench-results/2026-12-02-engine-floor.py [--time-scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time

import httpx

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ttft(client: httpx.AsyncClient, url: str) -> float:
    start = time.monotonic()
    async with client.stream("POST", url, json={"model": MODEL, "prompt": "flow bench", "max_tokens": 64,
                                                "stream": True}) as r:
        r.raise_for_status()
        async for chunk in r.aiter_bytes():
            if chunk:
                return time.monotonic() - start
    raise RuntimeError("no chunk")


async def background(client: httpx.AsyncClient, url: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with client.stream("POST", url, json={"model": MODEL, "prompt": "background", "max_tokens": 64,
                                                    "stream": True}) as r:
            async for _ in r.aiter_bytes():
                pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def histogram_ttft(metrics: str) -> tuple[float, float]:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            count = float(line.split()[-1])
    return total, count


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--busy", type=int, default=None, help="background streams (max-num-seqs - 1)")
    ap.add_argument("--probes", type=int, default=200)
    args = ap.parse_args()
    busy = args.max_num_seqs - 1 if args.busy is None else args.busy
    port = free_port()
    pod = subprocess.Popen([sys.executable, "-m", "epp", "sim", "--host", "127.0.0.1", "--port", str(port),
                            "--max-num-seqs", str(args.max_num_seqs), "--time-scale", str(args.time_scale),
                            "--log-level", "WARNING"])
    base = f"http://127.0.0.1:{port}"
    url = base + "/v1/completions"
    rng = random.Random(1)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(100):
                try:
                    if (await client.get(base + "/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            for _ in range(5):
                await ttft(client, url)  # warm-up
            results: dict[str, tuple[list[float], float]] = {}
            for phase in ("unloaded", f"busy ({busy} streams decoding, a slot free)"):
                stop = asyncio.Event()
                tasks = [asyncio.create_task(background(client, url, stop))
                         for _ in range(busy if phase != "unloaded" else 0)]
                await asyncio.sleep(0.5 * args.time_scale)
                s0, c0 = histogram_ttft((await client.get(base + "/metrics")).text)
                samples = []
                for _ in range(args.probes):
                    samples.append(await ttft(client, url))
                    # Random spacing: probes land at random points of the engine's steps.
                    await asyncio.sleep(rng.uniform(0.005, 0.05) * args.time_scale)
                s1, c1 = histogram_ttft((await client.get(base + "/metrics")).text)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                # The busy phase's histogram also counts the background streams; only the
                # unloaded phase's mean is the probes' alone.
                results[phase] = (samples, (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"))
            print(f"one simulated pod, --max-num-seqs {args.max_num_seqs}, time scale {args.time_scale:g}, "
                  f"{args.probes} probes per phase, client TTFT in wall ms")
            print("| phase | p50 | p90 | p99 | mean | pod's mean TTFT (model ms, all requests of the phase) |")
            print("|---|---|---|---|---|---|")
            unloaded_p99 = pct(results["unloaded"][0], 0.99)
            for phase, (samples, pod_mean) in results.items():
                print(f"| {phase} | {pct(samples, .5) * 1e3:.1f} | {pct(samples, .9) * 1e3:.1f} | "
                      f"{pct(samples, .99) * 1e3:.1f} | {statistics.mean(samples) * 1e3:.1f} | {pod_mean * 1e3:.1f} |")
            busy_samples = results[f"busy ({busy} streams decoding, a slot free)"][0]
            print(f"busy p99 / unloaded p99: {pct(busy_samples, .99) / unloaded_p99:.2f}x; "
                  f"busy probes over 1.5x the unloaded p99: "
                  f"{sum(1 for t in busy_samples if t > 1.5 * unloaded_p99)} of {len(busy_samples)}")
    finally:
        pod.terminate()
        pod.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
