"""Choose a PromptTokenizer from a configuration string.

- a directory with tokenizer.json (and tokenizer_config.json / chat_template.jinja), or the
  path of a tokenizer.json: the model's own tokenizer and chat template (HFPromptTokenizer);
- "vllm-tokenize": ask the pods' own /tokenize (RemotePromptTokenizer; needs `pods`);
- "simple": the built-in fallback (SimplePromptTokenizer), which matches no real model and
  says so in a warning.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

from epp.tokenization.prompt import PromptTokenizer

SIMPLE = "simple"
REMOTE = "vllm-tokenize"


def load_prompt_tokenizer(spec: str, pods: Callable[[], Sequence[str]] | None = None,
                          model: str | None = None) -> PromptTokenizer:
    """`spec` is "simple", "vllm-tokenize" or a local tokenizer directory / tokenizer.json."""
    if spec == SIMPLE:
        from epp.tokenization.simple import SimplePromptTokenizer

        return SimplePromptTokenizer()
    if spec == REMOTE:
        if pods is None:
            raise ValueError(f"tokenizer {REMOTE!r} needs the pods to ask (not available here)")
        from epp.tokenization.remote import RemotePromptTokenizer

        return RemotePromptTokenizer(pods, model=model)
    if not os.path.exists(spec):
        raise ValueError(f"unknown tokenizer {spec!r}: expected {SIMPLE!r}, {REMOTE!r}, or a directory "
                         "holding the model's tokenizer.json (the pod's model path or a mounted volume)")
    from epp.tokenization.hf import HFPromptTokenizer

    return HFPromptTokenizer(spec)


@functools.lru_cache(maxsize=8)
def shared_prompt_tokenizer(spec: str) -> PromptTokenizer:
    """One local tokenizer per spec in this process: loading tokenizer.json takes about a
    second, and several simulated pods (or scorer instances) share the same model files."""
    return load_prompt_tokenizer(spec)
