"""The fixed chat template used to turn OpenAI chat messages into one prompt string.

Template (ChatML, as used by Qwen and many fine-tunes; documented in docs/simulator.md):

    <|im_start|>{role}\n{content}<|im_end|>\n      (one per message, in order)
    <|im_start|>assistant\n                         (only if add_generation_prompt)

`content` may be a string, None (empty), or a list of OpenAI content parts; text parts are
joined with "\n" (what vLLM does for the "string" content format) and other part types are
replaced by a placeholder naming their type, so the prompt stays deterministic.
The EPP and the simulator must both use this function so prompts, token ids and block hashes
agree.
"""

from __future__ import annotations

from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class ChatTemplateError(ValueError):
    """A message list that cannot be rendered (bad shape)."""


def render_content(content: Any) -> str:
    """The text of one message's `content` (string, None, or list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type", "text")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ChatTemplateError("content part of type 'text' needs a string 'text'")
                    texts.append(text)
                else:
                    texts.append(f"<{kind}>")
            else:
                raise ChatTemplateError(f"content part must be an object, got {type(part).__name__}")
        return "\n".join(texts)
    raise ChatTemplateError(
        f"message content must be a string or a list of parts, got {type(content).__name__}"
    )


def apply_chat_template(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Render OpenAI-style chat messages with the fixed ChatML template."""
    return "".join(render_chat_segments(messages, add_generation_prompt))


def render_chat_segments(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[str]:
    """The rendered conversation as one string per message (plus the generation prompt).

    Every segment ends with "<|im_end|>\n" and starts with "<|im_start|>", so a tokenizer
    whose pieces never span "\n<" tokenizes the conversation as the concatenation of its
    segments' tokens: a caller can cache the tokens of repeated messages (system prompts).
    """
    if not isinstance(messages, list):
        raise ChatTemplateError("messages must be a list")
    out: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"messages[{i}].role must be a non-empty string")
        out.append(f"{IM_START}{role}\n{render_content(message.get('content'))}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return out
