"""Per-request cost of the rollout assignment: `python -m epp.rollout.benchmark`.

Prints the best of 5 repeats of N calls of Rollouts.assign for a model without a rewrite, a
weighted random split and a sticky split (docs/rollouts.md, "Cost on the hot path").
"""

from __future__ import annotations

import argparse
import timeit

from prometheus_client import CollectorRegistry

from epp.rollout.api import parse_model_rewrite
from epp.rollout.config import parse_rollout_policy
from epp.rollout.controller import Rollouts
from epp.rollout.store import RewriteStore
from epp.scheduling.types import LLMRequest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", type=int, default=50_000, help="calls per repeat")
    args = p.parse_args(argv)
    store = RewriteStore()
    store.set(parse_model_rewrite({"metadata": {"name": "canary"}, "spec": {
        "poolRef": {"name": "pool"}, "rules": [{"matches": [{"model": {"value": "llama"}}], "targets": [
            {"modelRewrite": "stable", "weight": 90}, {"modelRewrite": "canary", "weight": 10}]}]}}))
    rollouts = Rollouts(store, parse_rollout_policy({"stickyHeaders": ["x-user-id"]}), CollectorRegistry())
    cases = {
        "no rule": LLMRequest("r", "other", "other"),
        "weighted random": LLMRequest("r", "llama", "llama"),
        "sticky": LLMRequest("r", "llama", "llama", headers={"x-user-id": "user-1"}),
    }
    for name, request in cases.items():
        def call(r: LLMRequest = request) -> None:
            rollouts.assign(r)

        best = min(timeit.repeat(call, number=args.n, repeat=5))
        print(f"{name:16s} {best / args.n * 1e6:6.2f} us per assign")


if __name__ == "__main__":
    main()
