"""The prompt-tokenizer extension point: OpenAI request -> the token ids a vLLM pod computes.

vLLM's rules, which every implementation follows (vllm/entrypoints/openai protocol):
- /v1/completions with a text prompt: `add_special_tokens` defaults to True (BOS for Llama);
  a prompt given as token ids is used as is; a batch of one prompt is unwrapped.
- /v1/chat/completions: the chat template renders the messages (it writes BOS itself), then
  the text is encoded with `add_special_tokens` defaulting to False; `add_generation_prompt`
  defaults to True, `continue_final_message` to False; `tools`, `documents` and
  `chat_template_kwargs` are passed to the template.
- /tokenize takes the same two shapes with the same defaults.

Implementations: `HFPromptTokenizer` (the model's tokenizer.json and chat template, local),
`RemotePromptTokenizer` (asks a pod's own /tokenize), `SimplePromptTokenizer` (the
simulator's built-in tokenizer and fixed ChatML template; a fallback that matches no real
model). `load_prompt_tokenizer` in epp.tokenization.factory picks one from a config string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from epp.tokenization.chat_template import ChatTemplateError


@dataclass(slots=True)
class ChatPrompt:
    """The parts of a chat request that decide its prompt tokens (vLLM's defaults)."""

    messages: list[Any]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    tools: list[Any] | None = None
    documents: list[Any] | None = None
    template_kwargs: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], messages: Any = None) -> ChatPrompt:
        """From a /v1/chat/completions or /tokenize body; `messages` overrides body["messages"]."""
        msgs = body.get("messages") if messages is None else messages
        if not isinstance(msgs, list):
            raise ChatTemplateError("messages must be a list")
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ChatTemplateError("chat_template_kwargs must be an object")
        if body.get("chat_template") is not None or (kwargs and kwargs.get("chat_template") is not None):
            # vLLM refuses a request's own template unless --trust-request-chat-template.
            raise ChatTemplateError("a chat template given with the request is not supported")
        # vLLM merges chat_template_kwargs over the request's own fields, so the kwargs win.
        merged: dict[str, Any] = {k: body[k] for k in _TEMPLATE_FIELDS if k in body}
        merged.update(kwargs or {})
        tools = merged.pop("tools", None)
        documents = merged.pop("documents", None)
        if tools is not None and not isinstance(tools, list):
            raise ChatTemplateError("tools must be a list")
        if documents is not None and not isinstance(documents, list):
            raise ChatTemplateError("documents must be a list")
        return cls(
            messages=msgs,
            add_generation_prompt=_flag(merged, "add_generation_prompt", True),
            continue_final_message=_flag(merged, "continue_final_message", False),
            add_special_tokens=_flag(body, "add_special_tokens", False),
            tools=tools or None,
            documents=documents,
            template_kwargs={k: v for k, v in merged.items() if k not in _TEMPLATE_FIELDS} or None,
        )


_TEMPLATE_FIELDS = ("add_generation_prompt", "continue_final_message", "tools", "documents")


def _flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ChatTemplateError(f"{key} must be a boolean")
    return value


@runtime_checkable
class PromptTokenizer(Protocol):
    """What the EPP's precise prefix scorer and the simulator need to tokenize requests."""

    name: str

    def encode(self, text: str) -> list[int]:
        """Plain text, no special tokens (the simulator's output tokens)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def completion_ids(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """A /v1/completions text prompt."""
        ...

    def chat_ids(self, chat: ChatPrompt) -> list[int]:
        """A /v1/chat/completions conversation (template, then encode)."""
        ...


def request_token_ids(tokenizer: PromptTokenizer, body: Mapping[str, Any], messages: Any = None) -> list[int]:
    """The prompt token ids of an OpenAI request body, as the vLLM pod computes them.

    `messages` (the parsed chat messages, if the caller already has them) selects the chat
    path; otherwise body["messages"] does. Raises ChatTemplateError / ValueError on a body
    the pod would reject too.
    """
    if messages is None:
        messages = body.get("messages")
    if messages is not None:
        return tokenizer.chat_ids(ChatPrompt.from_body(body, messages))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one, as vLLM unwraps it
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return list(prompt)  # pre-tokenized prompt
    if isinstance(prompt, str):
        return tokenizer.completion_ids(prompt, _flag(body, "add_special_tokens", True))
    raise ValueError("prompt must be a string or a list of token ids (one prompt per request)")
