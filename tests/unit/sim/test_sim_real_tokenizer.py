"""The simulator with the real Llama-3.1 tokenizer (--tokenizer DIR): prompt token counts and
/tokenize answers equal transformers' (the reference for what a real vLLM computes)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from epp.sim.cluster import simulated_pods
from tests.helpers.tokenizer_fixture import llama3_dir

os.environ["HF_HUB_OFFLINE"] = "1"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def reference() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama3_dir(), local_files_only=True)


def _ids(result: Any) -> list[int]:
    ids = result["input_ids"] if hasattr(result, "keys") else result
    return [int(i) for i in ids]


async def test_tokenize_and_usage_match_transformers(reference: Any) -> None:
    async with simulated_pods(1, time_scale=0.01, tokenizer=llama3_dir(), max_model_len=4096) as cluster:
        url = cluster.urls[0]
        chat_ids = _ids(reference.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True))
        text_ids = _ids(reference("Once upon a time").input_ids)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            r = await client.post("/tokenize", json={"model": MODEL, "prompt": "Once upon a time"})
            assert r.status_code == 200
            assert r.json() == {"count": len(text_ids), "max_model_len": 4096, "tokens": text_ids}
            assert text_ids[0] == 128000  # BOS: vLLM's add_special_tokens default for prompts
            r = await client.post("/tokenize", json={"prompt": "Once upon a time", "add_special_tokens": False})
            assert r.json()["tokens"] == text_ids[1:]
            r = await client.post("/tokenize", json={"model": MODEL, "messages": MESSAGES})
            assert r.json()["tokens"] == chat_ids
            r = await client.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False})
            assert r.json()["tokens"] == _ids(reference.apply_chat_template(MESSAGES, tokenize=True))
            r = await client.post("/tokenize", json={"prompt": "Hi", "return_token_strs": True})
            assert r.json()["token_strs"] == ["<|begin_of_text|>", "Hi"]

            r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon a time",
                                                           "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(text_ids)
            r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES,
                                                                "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(chat_ids)

            r = await client.post("/detokenize", json={"model": MODEL, "tokens": chat_ids})
            assert r.json()["prompt"] == reference.decode(chat_ids)

            # Bad input: OpenAI-style 400s, never a crash.
            for body in ({"messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
                         {"messages": "not a list"}, {"prompt": "x", "add_special_tokens": "yes"}, {}):
                r = await client.post("/tokenize", json=body)
                assert r.status_code == 400 and r.json()["error"]["code"] == 400, body
            r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user"}],
                                                                "tools": "nope"})
            assert r.status_code == 400 and "tools" in r.json()["error"]["message"]


def test_bad_tokenizer_directory_is_a_config_error(tmp_path: Any) -> None:
    from epp.sim.config import SimPodConfig, apply_overrides

    with pytest.raises(ValueError, match="tokenizer must be 'simple' or a directory"):
        apply_overrides(SimPodConfig(), {"tokenizer": str(tmp_path)}, "test")
