"""A model's own chat template (the Jinja2 `chat_template` of tokenizer_config.json), rendered
the way vLLM renders it: through transformers' `apply_chat_template` semantics.

What transformers does, and therefore what this module does (checked against transformers'
`AutoTokenizer.apply_chat_template` in tests/unit/tokenization/test_hf_reference.py):
- the environment is jinja2's ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks
  and the loopcontrols extension ({% break %}, {% continue %}), plus a no-op {% generation %}
  block tag (transformers uses it to track assistant tokens; it renders its body unchanged);
- `tojson` is json.dumps(x, ensure_ascii=False, ...) (Jinja's own escapes HTML characters);
- globals `raise_exception(msg)` (a template error) and `strftime_now(fmt)` (local time);
- the variables are `messages`, `tools`, `documents`, `add_generation_prompt`, the special
  tokens of tokenizer_config.json (`bos_token`, `eos_token`, ...) and any chat_template_kwargs;
- `continue_final_message` renders the conversation and cuts it right after the last
  message's content, so the model continues that message.

What vLLM does before that (vllm/entrypoints/chat_utils.py) and this module copies:
- message content: a template that loops over `message['content']` gets OpenAI content
  parts ("openai" format); any other gets the text parts joined with "\\n" ("string" format);
- tool-call arguments given as JSON strings are parsed to objects (templates expect dicts);
- each tool is passed as `{"type": "function", "function": {name, description, parameters}}`
  with the pydantic defaults (None) filled in, as vLLM's `model_dump()` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from epp.tokenization.chat_template import ChatTemplateError, render_content

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
                       "chat_template", "tokenize", "conversation"})


class _GenerationTag(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: renders its body (transformers' marker of
    assistant-generated text, which only matters for training masks)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _loops_over_content(ast: jinja2.nodes.Template) -> bool:
    """vLLM's content-format detection, simplified: does the template iterate over a
    message's `content` (then it wants OpenAI content parts, not a joined string)?"""
    for loop in ast.find_all(jinja2.nodes.For):
        it = loop.iter
        if isinstance(it, jinja2.nodes.Getitem) and isinstance(it.arg, jinja2.nodes.Const) \
                and it.arg.value == "content":
            return True
        if isinstance(it, jinja2.nodes.Getattr) and it.attr == "content":
            return True
    return False


def _openai_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    render_content(content)  # validates the shape with the same errors as the string format
    return [{"type": "text", "text": p} if isinstance(p, str) else dict(p) for p in content]


def _message(i: int, message: Any, openai_format: bool) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ChatTemplateError(f"messages[{i}] must be an object")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ChatTemplateError(f"messages[{i}].role must be a non-empty string")
    out = dict(message)
    content = message.get("content")
    out["content"] = _openai_parts(content) if openai_format else render_content(content)
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise ChatTemplateError(f"messages[{i}].tool_calls must be a list")
        parsed: list[Any] = []
        for call in calls:
            if isinstance(call, dict) and isinstance(call.get("function"), dict) \
                    and isinstance(call["function"].get("arguments"), str):
                function = dict(call["function"])
                try:
                    function["arguments"] = json.loads(function["arguments"])
                except ValueError as e:
                    raise ChatTemplateError(f"messages[{i}].tool_calls: arguments are not JSON: {e}") from None
                call = {**call, "function": function}
            parsed.append(call)
        out["tool_calls"] = parsed
    return out


def _tool(i: int, tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict) \
            or not isinstance(tool["function"].get("name"), str):
        raise ChatTemplateError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
    return {"type": tool.get("type", "function"),
            "function": {"name": None, "description": None, "parameters": None, **tool["function"]}}


class HFChatTemplate:
    """One compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str, special_tokens: Mapping[str, str], where: str = "chat_template") -> None:
        env = _environment()
        try:
            ast = env.parse(source)
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"{where}: not a valid Jinja2 template: {e}") from None
        self.source = source
        self.where = where
        self.openai_content = _loops_over_content(ast)
        self.special_tokens = dict(special_tokens)

    def render(self, messages: Sequence[Any], *, add_generation_prompt: bool = True,
               continue_final_message: bool = False, tools: Sequence[Any] | None = None,
               documents: Sequence[Any] | None = None,
               template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text vLLM feeds to its tokenizer for this conversation."""
        if not isinstance(messages, list | tuple):
            raise ChatTemplateError("messages must be a list")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        chat = [_message(i, m, self.openai_content) for i, m in enumerate(messages)]
        tool_list = None if tools is None else [_tool(i, t) for i, t in enumerate(tools)]
        final: str | None = None
        if continue_final_message:
            if not chat:
                raise ChatTemplateError("continue_final_message is set but the conversation is empty")
            last = chat[-1]
            content = last["content"]
            if isinstance(content, str):
                final = content
                last["content"] = content + _CONTINUE_TAG
            else:
                texts = [p for p in content if isinstance(p, dict) and "text" in p]
                if not texts:
                    raise ChatTemplateError("continue_final_message: the final message has no text to continue")
                final = str(texts[-1]["text"])
                texts[-1]["text"] = final + _CONTINUE_TAG
        variables: dict[str, Any] = dict(self.special_tokens)
        # vLLM drops chat_template_kwargs that would replace the render call's own arguments.
        variables.update((k, v) for k, v in (template_kwargs or {}).items() if k not in _RESERVED)
        try:
            rendered = self._template.render(messages=chat, tools=tool_list, documents=documents,
                                             add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.where}: {e}") from None
        if final is not None:
            tag = _CONTINUE_TAG.strip()
            at = rendered.rfind(tag)
            if at < 0 or final.strip() not in rendered:
                raise ChatTemplateError("continue_final_message: the template dropped the final message")
            if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                rendered = rendered[:at]
            else:  # the template trimmed the trailing space of the tag
                rendered = rendered[:at].rstrip()
        return rendered
