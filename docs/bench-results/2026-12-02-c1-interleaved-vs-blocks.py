"""c=1 added latency, two ways on the same processes, alternating: back-to-back blocks (the
direct path's 2,000 requests, then the EPP's 2,000: how `epp bench overhead` measured until
2026-12-02) and interleaved (the two paths take turns request by request). Prints each
round's added p50 by both methods and the spread of each. Bounded: ROUNDS x 4 x 2,000 requests.

    PYTHONPATH=. .venv/bin/python docs/bench-results/2026-12-02-c1-interleaved-vs-blocks.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from epp.bench.overhead import (
    LoadRun,
    OverheadSettings,
    _read_chunked,
    _wait_serving,
    chat_bodies,
    http_request,
    load,
    overhead_stack,
    parse_head,
)

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
REQUESTS = 2000


async def interleaved_c1(ports: Sequence[int], bodies: Sequence[bytes], total: int) -> list[LoadRun]:
    """One keep-alive connection per port; the same body to each port in turn (first port first
    on even rounds, last on odd ones), `total` requests per port."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for port in ports]
    payloads = [[http_request(port, b) for b in bodies] for port in ports]
    latencies: list[list[float]] = [[] for _ in ports]
    errors = [0] * len(ports)
    start = time.perf_counter()
    try:
        for i in range(total):
            for k in (range(len(ports)) if i % 2 == 0 else range(len(ports) - 1, -1, -1)):
                reader, writer = conns[k]
                began = time.perf_counter()
                writer.write(payloads[k][i % len(bodies)])
                status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
                if length >= 0:
                    await reader.readexactly(length)
                else:
                    await _read_chunked(reader)
                if status == 200:
                    latencies[k].append(time.perf_counter() - began)
                else:
                    errors[k] += 1
    finally:
        for _, writer in conns:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    wall = time.perf_counter() - start
    return [LoadRun(lat, err, wall) for lat, err in zip(latencies, errors, strict=True)]


def main() -> None:
    settings = OverheadSettings(run_dir=Path(tempfile.mkdtemp(prefix="c1-methods-")))
    bodies = chat_bodies()
    blocks: list[float] = []
    paired: list[float] = []
    with overhead_stack(4, settings) as stack:
        for port in (stack.direct_port, stack.epp_port):
            _wait_serving(port, bodies)
            load(port, bodies, 8, settings.warmup_requests, 60)
        for r in range(ROUNDS):
            direct = load(stack.direct_port, bodies, 1, REQUESTS, 60).distribution().p50
            epp = load(stack.epp_port, bodies, 1, REQUESTS, 60).distribution().p50
            blocks.append((epp - direct) * 1e3)
            d, e = asyncio.run(interleaved_c1([stack.direct_port, stack.epp_port], bodies, REQUESTS))
            paired.append((e.distribution().p50 - d.distribution().p50) * 1e3)
            print(f"round {r + 1}: blocks {blocks[-1]:.3f} ms (direct p50 {direct * 1e3:.3f}), "
                  f"interleaved {paired[-1]:.3f} ms (direct p50 {d.distribution().p50 * 1e3:.3f})", flush=True)
    for name, runs in (("blocks", blocks), ("interleaved", paired)):
        print(f"{name}: median {statistics.median(runs):.3f} ms, min-max {min(runs):.3f}-{max(runs):.3f}, "
              f"stdev {statistics.stdev(runs):.3f}")


if __name__ == "__main__":
    main()
