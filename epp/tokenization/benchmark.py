"""Cost of tokenization on the decision path: `python -m epp.tokenization.benchmark`.

Times the precise-prefix-cache-scorer's per-decision work before the index lookup (the
prompt's token ids as the pod computes them, then the chained block hashes) for prompts of
about 2k and 30k tokens, with the model's tokenizer (--tokenizer DIR):
- `completion`: a unique text prompt per decision (the whole prompt is encoded every time);
- `completion-shared`: a long document (lines of ~400 characters) shared by all decisions +
  a unique question (the document's chunks come from the piece cache);
- `chat-shared`: a long system prompt shared by all decisions + a short unique user turn
  (the usual case: the system prompt's pieces come from the piece cache);
- `chat-cold`: a unique system prompt per decision (nothing cached);
- `tokenize-hit` / `tokenize-miss`: the pod's /tokenize mode against an `epp sim` process
  with the same tokenizer (started here on a free loopback port). A hit is a cache lookup;
  a miss is timed as a blocking fetch, which is what it costs the background fetch (on the
  EPP's event loop the decision itself never waits for it).
Prints p50 / p99 / mean in milliseconds. Bounded in count; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from time import perf_counter_ns, process_time_ns
from typing import Any

import httpx

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import LLMRequest
from epp.tokenization.hf import HFPromptTokenizer
from epp.tokenization.remote import RemotePromptTokenizer

_WORDS = ("the policy customer order refund shipping account payment invoice support agent answer question "
          "please thank you days within business return item product warranty service request ticket status "
          "delivery address change cancel update information email phone number contact team manager review "
          "approve decline reason because however therefore example section paragraph rule must should may")
WORDS = _WORDS.split()


def _text(rng: random.Random, tokenizer: HFPromptTokenizer, tokens: int) -> str:
    """English-like text of about `tokens` tokens (measured with the tokenizer)."""
    words: list[str] = []
    while True:
        words += [rng.choice(WORDS) + ("." if rng.random() < 0.08 else "") for _ in range(max(16, tokens // 8))]
        text = " ".join(words)
        if len(tokenizer.encode(text)) >= tokens:
            return text


def _summary(samples: tuple[list[int], list[int]]) -> dict[str, float]:
    wall, cpu = sorted(samples[0]), sorted(samples[1])
    p99 = wall[min(len(wall) - 1, round(0.99 * (len(wall) - 1)))]
    return {"p50_ms": statistics.median(wall) / 1e6, "p99_ms": p99 / 1e6,
            "mean_ms": statistics.fmean(wall) / 1e6, "cpu_p50_ms": statistics.median(cpu) / 1e6, "n": len(wall)}


def _scorer(tokenizer: str, ds: Datastore) -> PrecisePrefixCacheScorer:
    ctx = PluginContext(datastore=ds, services={}, source="benchmark")
    params = parse_params(PrecisePrefixCacheScorer.Params, {"tokenizer": tokenizer, "approximateFallback": False},
                          "benchmark")
    return PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx)


def _time(scorer: PrecisePrefixCacheScorer, requests: list[LLMRequest],
          eps: list[Endpoint]) -> tuple[list[int], list[int]]:
    """Wall-clock and the process CPU time per decision (the CPU time is what the decision
    costs when the machine is shared; wall clock includes being descheduled)."""
    wall: list[int] = []
    cpu: list[int] = []
    for request in requests:
        start, start_cpu = perf_counter_ns(), process_time_ns()
        state = scorer.block_hashes(request, eps)
        wall.append(perf_counter_ns() - start)
        cpu.append(process_time_ns() - start_cpu)
        if state.prompt_tokens == 0:
            raise RuntimeError(f"request {request.request_id} was not tokenized")
    return wall, cpu


def _chat(i: int, system: str, user: str) -> LLMRequest:
    body: dict[str, Any] = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    return LLMRequest(request_id=str(i), model="m", target_model="m", messages=body["messages"], is_chat=True,
                      body=body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(tokenizer_dir: str, sizes: list[int], decisions: int, with_pod: bool) -> dict[str, dict[str, float]]:
    rng = random.Random(16)
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name="pod-0", address="127.0.0.1", port=_free_port()))]
    local = _scorer(tokenizer_dir, ds)
    hf = local.tokenizer
    assert isinstance(hf, HFPromptTokenizer)
    results: dict[str, dict[str, float]] = {}
    pod = None
    if with_pod:
        pod = subprocess.Popen(
            [sys.executable, "-m", "epp", "sim", "--port", str(eps[0].port), "--tokenizer", tokenizer_dir,
             "--max-model-len", "131072", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for size in sizes:
            count = max(10, decisions * 2000 // size)
            texts = [_text(rng, hf, size) for _ in range(count)]
            completions = [LLMRequest(request_id=str(i), model="m", target_model="m", prompt=t, body={"prompt": t})
                           for i, t in enumerate(texts)]
            results[f"completion-{size}"] = _summary(_time(local, completions, eps))
            document = "\n".join(texts[0][i:i + 400] for i in range(0, len(texts[0]), 400))
            shared_docs = [LLMRequest(request_id=str(i), model="m", target_model="m",
                                      prompt=f"{document}\nQuestion {i}: {t[:200]}",
                                      body={"prompt": f"{document}\nQuestion {i}: {t[:200]}"})
                           for i, t in enumerate(texts)]
            _time(local, shared_docs[:1], eps)  # the document's chunks enter the piece cache once
            results[f"completion-shared-{size}"] = _summary(_time(local, shared_docs[1:], eps))
            system = texts[0]
            shared = [_chat(i, system, f"question {i}: " + _text(rng, hf, 40)) for i in range(count)]
            _time(local, shared[:1], eps)  # the system prompt enters the piece cache once
            results[f"chat-shared-{size}"] = _summary(_time(local, shared[1:], eps))
            cold = [_chat(i, t, "question?") for i, t in enumerate(texts)]
            results[f"chat-cold-{size}"] = _summary(_time(local, cold, eps))
            if pod is not None:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        httpx.get(f"http://{eps[0].hostport}/health", timeout=1).raise_for_status()
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the simulator did not start") from None
                        time.sleep(0.2)
                remote = _scorer("vllm-tokenize", ds)
                assert isinstance(remote.tokenizer, RemotePromptTokenizer)
                misses = [_chat(i, t, "question?") for i, t in enumerate(texts)]
                results[f"tokenize-miss-{size}"] = _summary(_time(remote, misses, eps))
                results[f"tokenize-hit-{size}"] = _summary(_time(remote, misses, eps))
    finally:
        if pod is not None:
            pod.terminate()
            pod.wait(10)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=os.path.join(".cache", "tokenizers", "llama3_1"),
                        help="the model's tokenizer directory (default: the Llama-3.1 fixture)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 30000], help="prompt sizes in tokens")
    parser.add_argument("--decisions", type=int, default=200,
                        help="decisions per case at 2k tokens (scaled down for larger prompts, at least 10)")
    parser.add_argument("--no-pod", action="store_true", help="skip the /tokenize cases (no simulator)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.tokenizer, args.sizes, args.decisions, not args.no_pod)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'case':<24}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'cpu p50 ms':>12}")
    for name, r in results.items():
        print(f"{name:<24}{int(r['n']):>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['mean_ms']:>10.3f}"
              f"{r['cpu_p50_ms']:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
