"""Timing behind docs/scheduling.md "Heterogeneous pools" (not collected by pytest).

    .venv/bin/python -m tests.unit.datastore.bench_sweep [SOURCE_TREE]

1. InflightTracker.sweep() at 64 pods, each with a fresh scrape (inter-token latency
   histogram included) before every sweep; the scrape assignment itself is subtracted;
2. extract_metrics on the vLLM test page.
SOURCE_TREE (e.g. `git archive <commit> epp | tar -x -C /tmp/before`) times another
version of the `epp` package against the same page.
"""

from __future__ import annotations

import sys
import timeit

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.datastore.inflight import InflightTracker
from epp.metricsscrape.mapping import VLLM, extract_metrics
from tests.unit.metricsscrape.vllm_pages import vllm_page


def main() -> None:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"p{i}", address="127.0.0.1", port=8000 + i)) for i in range(64)]
    tracker = InflightTracker(ds)
    for ep in eps:
        for _ in range(4):
            tracker.dispatch([ep], 1548, 1500)
        tracker.complete(tracker.dispatch([ep], 1548, 1500))
    scrapes = [0]

    def scrape() -> None:
        scrapes[0] += 1
        n = scrapes[0]
        for i, ep in enumerate(eps):
            m = EndpointMetrics(running_requests=4, updated_at=float(n))
            if hasattr(m, "itl_sum"):  # trees before the signal have no such field
                m.itl_sum, m.itl_count = n * 20 * 0.03 * (2 if i == 0 else 1), n * 20.0
            ep.metrics = m

    def scrape_and_sweep() -> None:
        scrape()
        tracker.sweep()

    k = 500
    both = min(timeit.repeat(scrape_and_sweep, number=k, repeat=5)) / k
    alone = min(timeit.repeat(scrape, number=k, repeat=5)) / k
    sweep_us = (both - alone) * 1e6
    print(f"sweep() at 64 pods: {sweep_us:.0f} us, {sweep_us * 4 / 1e4:.3f}% of a core at 4 sweeps/s")
    page = vllm_page()
    n = 2000
    best = min(timeit.repeat(lambda: extract_metrics(page, VLLM, 1.0), number=n, repeat=5)) / n
    print(f"extract_metrics on a {len(page):,}-character vLLM page: {best * 1e6:.1f} us")


if __name__ == "__main__":
    main()
