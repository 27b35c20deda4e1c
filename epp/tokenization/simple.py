"""The explicit fallback: the built-in SimpleTokenizer with the fixed ChatML template.

It needs no model files, and the EPP and the simulator agree with each other when both use
it, but its token ids match NO real model: against a real vLLM every block hash differs and
precise prefix routing silently degrades to approximate. Use a model's tokenizer directory
(or 'vllm-tokenize') wherever real pods are involved.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

from epp.tokenization.chat_template import ChatTemplateError, render_chat_segments
from epp.tokenization.prompt import ChatPrompt
from epp.tokenization.tokenizer import SimpleTokenizer

log = logging.getLogger(__name__)

SEGMENT_CACHE_ENTRIES = 4096


class SimplePromptTokenizer:
    """SimpleTokenizer + ChatML; caches the tokens of each rendered message (a long system
    prompt is tokenized once), which is exact because its pieces never span two messages."""

    def __init__(self, warn: bool = True) -> None:
        self.name = "simple"
        self.tokenizer = SimpleTokenizer()
        self._segments: OrderedDict[str, list[int]] = OrderedDict()
        if warn:
            log.warning("tokenizer 'simple': the built-in fallback tokenizer matches no real model; "
                        "block hashes will differ from a real vLLM's (give the model's tokenizer directory)")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def completion_ids(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return self.encode(prompt)  # no BOS in this vocabulary

    def chat_ids(self, chat: ChatPrompt) -> list[int]:
        if chat.continue_final_message:
            raise ChatTemplateError("continue_final_message is not supported by the built-in ChatML template")
        cache = self._segments
        tokens: list[int] = []
        for segment in render_chat_segments(chat.messages, add_generation_prompt=chat.add_generation_prompt):
            ids = cache.get(segment)
            if ids is None:
                ids = self.tokenizer.encode(segment)
                cache[segment] = ids
                if len(cache) > SEGMENT_CACHE_ENTRIES:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(segment)
            tokens += ids
        return tokens
