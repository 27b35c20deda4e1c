"""Choosing a prompt tokenizer, the simple fallback's contract, and when the piece cache is off."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from epp.tokenization.chat_template import ChatTemplateError, apply_chat_template
from epp.tokenization.factory import load_prompt_tokenizer
from epp.tokenization.hf import HFPromptTokenizer
from epp.tokenization.prompt import ChatPrompt, PromptTokenizer
from epp.tokenization.remote import RemotePromptTokenizer
from epp.tokenization.simple import SimplePromptTokenizer
from epp.tokenization.tokenizer import SimpleTokenizer
from tests.helpers.tokenizer_fixture import llama3_dir


def test_specs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        simple = load_prompt_tokenizer("simple")
    assert isinstance(simple, SimplePromptTokenizer) and isinstance(simple, PromptTokenizer)
    assert "matches no real model" in caplog.text
    model = load_prompt_tokenizer(llama3_dir())
    assert isinstance(model, HFPromptTokenizer)
    assert isinstance(load_prompt_tokenizer(str(Path(llama3_dir()) / "tokenizer.json")), HFPromptTokenizer)
    assert isinstance(load_prompt_tokenizer("vllm-tokenize", lambda: []), RemotePromptTokenizer)
    with pytest.raises(ValueError, match="needs the pods"):
        load_prompt_tokenizer("vllm-tokenize")
    with pytest.raises(ValueError, match=r"unknown tokenizer 'meta-llama/Llama-3\.1-8B'"):
        load_prompt_tokenizer("meta-llama/Llama-3.1-8B")


def test_simple_fallback_keeps_the_simulators_chatml_ids() -> None:
    tok = SimplePromptTokenizer(warn=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    for generation in (True, False):
        expected = SimpleTokenizer().encode(apply_chat_template(messages, add_generation_prompt=generation))
        assert tok.chat_ids(ChatPrompt(messages, add_generation_prompt=generation)) == expected
        assert tok.chat_ids(ChatPrompt(messages, add_generation_prompt=generation)) == expected  # cached
    assert tok.completion_ids("Hello world") == SimpleTokenizer().encode("Hello world")
    with pytest.raises(ChatTemplateError, match="continue_final_message"):
        tok.chat_ids(ChatPrompt(messages, add_generation_prompt=False, continue_final_message=True))


def test_sentencepiece_style_tokenizer_is_encoded_whole(tmp_path: Path) -> None:
    # Metaspace prepends "▁" at the start of a text: encoding the pieces between special
    # tokens separately would differ, so the piece cache must switch itself off.
    vocab = {"[UNK]": 0, "▁hello": 1, "hello": 2, "<s>": 3, "</s>": 4, "▁world": 5, "world": 6}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    raw.add_special_tokens(["<s>", "</s>"])
    raw.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}))
    tok = HFPromptTokenizer(str(tmp_path))
    assert tok._split is None
    chat = ChatPrompt([{"role": "user", "content": "hello world " * 20}, {"role": "user", "content": "world"}])
    rendered = tok.render_chat(chat)
    assert tok.chat_ids(chat) == raw.encode(rendered, add_special_tokens=False).ids
