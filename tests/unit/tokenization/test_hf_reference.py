"""The model tokenizer and chat template against an independent reference: transformers'
AutoTokenizer, loaded offline from the same local files (the real Llama-3.1 tokenizer)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from epp.tokenization.chat_template import ChatTemplateError
from epp.tokenization.hf import HFPromptTokenizer
from epp.tokenization.prompt import ChatPrompt, request_token_ids
from tests.helpers.tokenizer_fixture import llama3_dir

os.environ["HF_HUB_OFFLINE"] = "1"  # the reference must never reach for the network
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

# A Llama-3.1-style template with tools, strftime_now, raise_exception, tojson, namespace and
# loop controls: the features real templates use that the fixture's own template does not.
TOOLS_TEMPLATE = """{{- bos_token }}
{%- set date_string = strftime_now("%Y-%m") %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You may call these functions:\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception("Unknown role: " + message.role) }}
    {%- endif %}
    {%- if message.role == 'tool' and loop.first %}{% continue %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' }}
    {%- if message.tool_calls is defined and message.tool_calls %}
        {%- for call in message.tool_calls %}
            {{- '{"name": "' + call.function.name + '", "parameters": ' + call.function.arguments | tojson + '}' }}
        {%- endfor %}
    {%- else %}
        {{- message['content'] | trim }}
    {%- endif %}
    {{- '<|eot_id|>' }}
    {%- if ns.turns >= 20 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# A template that iterates over content parts (vLLM's "openai" content format).
PARTS_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% else %}[{{ part['type'] }}]{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a terse assistant.  "},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in French."},
     {"role": "user", "content": "Hi there, how are you?"},
     {"role": "assistant", "content": "Très bien, merci !"},
     {"role": "user", "content": "Explain\n\ttabs,   spaces and émojis 🙂 and <|eot_id|> inside text."}],
    [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
    [{"role": "system", "content": "x" * 3000}, {"role": "user", "content": "y " * 500}],
]


@pytest.fixture(scope="module")
def directory() -> str:
    return llama3_dir()


@pytest.fixture(scope="module")
def reference(directory: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


@pytest.fixture(scope="module")
def mine(directory: str) -> HFPromptTokenizer:
    return HFPromptTokenizer(directory)


def _ids(result: Any) -> list[int]:
    ids = result["input_ids"] if hasattr(result, "keys") else result
    return [int(i) for i in ids]


def _vllm_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What vLLM hands transformers for a "string"-format template: text parts joined by \\n."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content)
        out.append({**m, "content": content})
    return out


def _with_template(tmp_path: Path, directory: str, template: str) -> str:
    """A copy of the fixture with another chat template (tokenizer.json is linked)."""
    config = json.loads((Path(directory) / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    os.symlink(Path(directory) / "tokenizer.json", tmp_path / "tokenizer.json")
    return str(tmp_path)


def test_vocabulary_is_the_real_128k_one(mine: HFPromptTokenizer) -> None:
    assert mine._tok.get_vocab_size() == 128_256
    assert mine.special_tokens["bos_token"] == "<|begin_of_text|>"
    assert mine._split is not None  # ByteLevel, plain special tokens: the piece cache is exact


@pytest.mark.parametrize("text", ["Hello world", " leading space", "", "Numbers 12345 and ünïcödé 🙂",
                                  "<|begin_of_text|>already has BOS", "a\n\nb\r\n\tc" * 50])
def test_completion_ids_match_transformers(mine: HFPromptTokenizer, reference: Any, text: str) -> None:
    # vLLM's /v1/completions default: add_special_tokens=True, so Llama gets its BOS.
    assert mine.completion_ids(text) == _ids(reference(text).input_ids)
    assert mine.completion_ids(text, add_special_tokens=False) == _ids(
        reference(text, add_special_tokens=False).input_ids)
    assert mine.completion_ids("x")[0] == 128000


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_matches_transformers(mine: HFPromptTokenizer, reference: Any, conversation: int,
                                   add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[conversation]
    chat = ChatPrompt(messages, add_generation_prompt=add_generation_prompt)
    ref = _vllm_messages(messages)
    assert mine.render_chat(chat) == reference.apply_chat_template(
        ref, tokenize=False, add_generation_prompt=add_generation_prompt)
    expected = _ids(reference.apply_chat_template(ref, tokenize=True, add_generation_prompt=add_generation_prompt))
    assert mine.chat_ids(chat) == expected
    assert mine.chat_ids(chat) == expected  # again, from the piece cache
    assert expected[0] == 128000 and expected.count(128000) == 1  # BOS from the template only


def test_piece_cache_is_exact_on_random_conversations(mine: HFPromptTokenizer, reference: Any) -> None:
    rng = random.Random(16)
    alphabet = "abc XYZ 123 .,!?\n\t  émoji🙂 <|> <|eot_id|> long-wordwithoutspaces "
    system = "".join(rng.choice(alphabet) for _ in range(400))
    for _ in range(25):
        messages = [{"role": "system", "content": system}] + [
            {"role": rng.choice(["user", "assistant"]),
             "content": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))}
            for _ in range(rng.randint(1, 4))]
        expected = _ids(reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
        assert mine.chat_ids(ChatPrompt(messages)) == expected


def test_tools_strftime_tojson_and_loop_controls(tmp_path: Path, directory: str) -> None:
    from transformers import AutoTokenizer

    path = _with_template(tmp_path, directory, TOOLS_TEMPLATE)
    reference = AutoTokenizer.from_pretrained(path, local_files_only=True)
    mine = HFPromptTokenizer(path)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in <city> & \"ü\"",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}},
             {"type": "function", "function": {"name": "now"}}]
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "22C", "tool_call_id": "c1"},
    ]
    # What vLLM hands transformers: tools as pydantic model_dump (None defaults filled in),
    # tool-call arguments parsed from JSON, None content as "".
    vllm_tools = [{"type": "function", "function": {"name": "get_weather",
                                                    "description": tools[0]["function"]["description"],
                                                    "parameters": tools[0]["function"]["parameters"]}},
                  {"type": "function", "function": {"name": "now", "description": None, "parameters": None}}]
    vllm_messages = [*messages[:2], {**messages[2], "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        messages[3]]
    for add_generation_prompt in (True, False):
        expected = reference.apply_chat_template(vllm_messages, tools=vllm_tools, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        chat = ChatPrompt(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        assert mine.render_chat(chat) == expected
        assert "Today Date: " in expected and '"description": "Weather in <city> & \\"ü\\""' in expected
        assert mine.chat_ids(chat) == _ids(reference.apply_chat_template(
            vllm_messages, tools=vllm_tools, tokenize=True, add_generation_prompt=add_generation_prompt))
    # raise_exception in the template: a clear error (the pod answers 400 too).
    with pytest.raises(ChatTemplateError, match="Unknown role: narrator"):
        mine.render_chat(ChatPrompt([{"role": "narrator", "content": "x"}]))
    with pytest.raises(Exception, match="Unknown role: narrator"):
        reference.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_openai_content_format_template(tmp_path: Path, directory: str) -> None:
    from transformers import AutoTokenizer

    path = _with_template(tmp_path, directory, PARTS_TEMPLATE)
    reference = AutoTokenizer.from_pretrained(path, local_files_only=True)
    mine = HFPromptTokenizer(path)
    assert mine.template is not None and mine.template.openai_content
    messages = [{"role": "user", "content": [{"type": "text", "text": "look:"}, {"type": "image_url"},
                                             {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": "A cat."}]
    vllm_messages = [messages[0], {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
    assert mine.render_chat(ChatPrompt(messages)) == reference.apply_chat_template(
        vllm_messages, tokenize=False, add_generation_prompt=True)


def test_continue_final_message(mine: HFPromptTokenizer, reference: Any) -> None:
    messages = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Autumn moon, "}]
    chat = ChatPrompt(messages, add_generation_prompt=False, continue_final_message=True)
    expected = reference.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert mine.render_chat(chat) == expected
    assert expected.endswith("Autumn moon,")  # the template trims; the cut follows it
    with pytest.raises(ChatTemplateError, match="continue_final_message"):
        mine.chat_ids(ChatPrompt(messages, add_generation_prompt=True, continue_final_message=True))


def test_request_token_ids_follow_vllm_defaults(mine: HFPromptTokenizer, reference: Any) -> None:
    messages = CONVERSATIONS[1]
    chat_ids = request_token_ids(mine, {"messages": messages})
    assert chat_ids == _ids(reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    # add_special_tokens on a chat request adds a second BOS on top of the template's, as in vLLM.
    doubled = request_token_ids(mine, {"messages": messages, "add_special_tokens": True})
    assert doubled[:2] == [128000, 128000] and doubled[1:] == chat_ids
    assert request_token_ids(mine, {"prompt": "Hello"}) == _ids(reference("Hello").input_ids)
    assert request_token_ids(mine, {"prompt": ["Hello"]}) == _ids(reference("Hello").input_ids)
    assert request_token_ids(mine, {"prompt": "Hello", "add_special_tokens": False}) == [9906]
    assert request_token_ids(mine, {"prompt": [1, 2, 3]}) == [1, 2, 3]
    with pytest.raises(ValueError):
        request_token_ids(mine, {"prompt": {"not": "a prompt"}})
    with pytest.raises(ChatTemplateError):
        request_token_ids(mine, {"messages": messages, "add_generation_prompt": "yes"})


def test_missing_template_and_bad_directory(tmp_path: Path, directory: str) -> None:
    os.symlink(Path(directory) / "tokenizer.json", tmp_path / "tokenizer.json")
    bare = HFPromptTokenizer(str(tmp_path))  # no tokenizer_config.json: completions only
    assert bare.completion_ids("Hello", add_special_tokens=False) == [9906]
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.chat_ids(ChatPrompt([{"role": "user", "content": "x"}]))
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        HFPromptTokenizer(str(tmp_path / "missing"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load"):
        HFPromptTokenizer(str(tmp_path / "broken"))
    (tmp_path / "badtpl").mkdir()
    os.symlink(Path(directory) / "tokenizer.json", tmp_path / "badtpl" / "tokenizer.json")
    (tmp_path / "badtpl" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(ValueError, match="not a valid Jinja2 template"):
        HFPromptTokenizer(str(tmp_path / "badtpl"))


def test_chat_template_kwargs_and_documents(tmp_path: Path, directory: str) -> None:
    from transformers import AutoTokenizer

    template = ("{% if documents %}{% for d in documents %}[{{ d['title'] }}: {{ d['text'] }}]{% endfor %}{% endif %}"
                "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                "\n\n{% if not enable_thinking %}<think></think>{% endif %}{% endif %}")
    path = _with_template(tmp_path, directory, template)
    reference = AutoTokenizer.from_pretrained(path, local_files_only=True)
    mine = HFPromptTokenizer(path)
    messages = [{"role": "user", "content": "Summarise."}]
    documents = [{"title": "A", "text": "alpha"}, {"title": "B", "text": "beta"}]
    for thinking in (True, False):
        chat = ChatPrompt.from_body({"messages": messages, "documents": documents,
                                     "chat_template_kwargs": {"enable_thinking": thinking}})
        expected = reference.apply_chat_template(messages, documents=documents, tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=thinking)
        assert mine.render_chat(chat) == expected
        assert ("<think></think>" in expected) is not thinking
    # As in vLLM, chat_template_kwargs are merged over the request's own fields.
    chat = ChatPrompt.from_body({"messages": messages, "add_generation_prompt": True,
                                 "chat_template_kwargs": {"add_generation_prompt": False}})
    assert mine.render_chat(chat) == reference.apply_chat_template(messages, tokenize=False,
                                                                   add_generation_prompt=False)
    with pytest.raises(ChatTemplateError, match="chat template given with the request"):
        ChatPrompt.from_body({"messages": messages, "chat_template": "{{ 'x' }}"})


def test_line_chunked_long_prompts_are_exact(mine: HFPromptTokenizer, reference: Any) -> None:
    # Long text is encoded in chunks cut at line starts (and cached); the ids must equal
    # whole-text encoding by transformers for any text, including odd whitespace.
    assert mine._line_cuts
    rng = random.Random(1616)
    atoms = ["word", " word", "Word", "42", "1234567", ".", "!!", "\n", "\n\n", "\r\n", " \n", "\t", "  ",
             "\x1c", "\u00a0", "é", "🙂", "'s", "'ll", "<|eot_id|>", "\n<|eot_id|>\n", "_x", "\n_", "\n1", "\n\u00e9"]
    shared = "".join(rng.choice(atoms) for _ in range(3000))
    for i in range(12):
        text = (shared if i % 2 else "") + "".join(rng.choice(atoms) for _ in range(rng.randint(500, 4000)))
        assert len(text) > 4 * 1024 or i % 2 == 0
        assert mine.completion_ids(text) == _ids(reference(text).input_ids)
        assert mine.completion_ids(text, add_special_tokens=False) == _ids(
            reference(text, add_special_tokens=False).input_ids)
        messages = [{"role": "system", "content": text}, {"role": "user", "content": "ok?"}]
        assert mine.chat_ids(ChatPrompt(messages)) == _ids(
            reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    assert len(mine._piece_cache) > 2  # the shared text's chunks were cached and reused
