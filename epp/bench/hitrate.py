"""The best prefix-cache hit rate any router could reach on a workload.

Assumptions of the bound: every request goes to a pod that already holds every block any
earlier request computed (perfect affinity), the cache never evicts, and the pods count hits
the way vLLM does: whole `block_size`-token blocks of the longest cached prefix, and never
the prompt's last token (vLLM always computes at least one token, so a fully cached prompt
drops its last block). LoRA requests only hit blocks of the same adapter, as vLLM puts the
adapter in every block's hash. Token ids come from the simulator's tokenizer applied to the
chat template, exactly what the pods hash.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from epp.bench.workloads import BenchRequest
from epp.tokenization.chat_template import apply_chat_template
from epp.tokenization.tokenizer import Tokenizer, get_tokenizer


@dataclass(slots=True, frozen=True)
class HitRateBound:
    prompt_tokens: int
    best_hit_tokens: int

    @property
    def rate(self) -> float:
        return self.best_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def prompt_token_ids(request: BenchRequest, tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(apply_chat_template(request.messages, add_generation_prompt=True))


def best_hit_rate_of_tokens(prompts: Iterable[tuple[str, list[int]]], block_size: int = 16) -> HitRateBound:
    """Bound over (model, token ids) prompts in arrival order."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    seen: set[int] = set()
    total = 0
    hits = 0
    for model, tokens in prompts:
        total += len(tokens)
        hittable_blocks = max(0, (len(tokens) - 1) // block_size)
        parent = zlib.crc32(model.encode())
        matching = True
        for b in range(len(tokens) // block_size):
            # Chained like vLLM's block hash: a block only matches after the same prefix.
            block_hash = hash((parent, tuple(tokens[b * block_size:(b + 1) * block_size])))
            if matching and b < hittable_blocks and block_hash in seen:
                hits += block_size
            else:
                matching = False
            seen.add(block_hash)
            parent = block_hash
    return HitRateBound(total, hits)


def best_hit_rate(requests: Iterable[BenchRequest], block_size: int = 16,
                  tokenizer: Tokenizer | None = None, model_tokenizer: str | None = None) -> HitRateBound:
    """`model_tokenizer`: the pods' tokenizer directory (`--tokenizer`); its chat template and
    special tokens give the ids those pods hash (None: the simulator's default, "simple")."""
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    if model_tokenizer is not None:
        from epp.tokenization.factory import shared_prompt_tokenizer
        from epp.tokenization.prompt import ChatPrompt

        prompt = shared_prompt_tokenizer(model_tokenizer)
        return best_hit_rate_of_tokens(
            ((r.model, prompt.chat_ids(ChatPrompt.from_body({"messages": r.messages}))) for r in ordered), block_size)
    tok = tokenizer or get_tokenizer("simple")
    return best_hit_rate_of_tokens(((r.model, prompt_token_ids(r, tok)) for r in ordered), block_size)
