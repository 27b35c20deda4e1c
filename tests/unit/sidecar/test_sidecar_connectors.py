"""What each connector sends to the prefiller and to the decoder (llm-d protocol)."""

from __future__ import annotations

import pytest

from epp.sidecar.connectors import MissingTransferParams, make_connector

CLIENT = {
    "model": "m", "prompt": "hello", "stream": True, "stream_options": {"include_usage": True},
    "max_tokens": 64, "min_tokens": 4, "temperature": 0.0,
}
KV = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_block_ids": [1],
      "remote_host": "10.0.0.1", "remote_port": 5600}


def test_nixlv2_prefill_leg() -> None:
    body = make_connector("nixlv2").prefill_body(CLIENT)
    assert body["max_tokens"] == 1 and body["min_tokens"] == 1 and body["stream"] is False
    assert "stream_options" not in body and "max_completion_tokens" not in body
    assert body["kv_transfer_params"] == {
        "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
        "remote_block_ids": None, "remote_host": None, "remote_port": None,
    }
    assert body["temperature"] == 0.0 and body["prompt"] == "hello"
    assert CLIENT["max_tokens"] == 64 and "kv_transfer_params" not in CLIENT  # input untouched


def test_nixlv2_caps_max_completion_tokens_only_when_sent() -> None:
    chat = {"model": "m", "messages": [], "max_completion_tokens": 99}
    assert make_connector("nixlv2").prefill_body(chat)["max_completion_tokens"] == 1


def test_nixlv2_decode_leg_keeps_client_request_and_adds_prefiller_params() -> None:
    body = make_connector("nixlv2").decode_body(CLIENT, {"kv_transfer_params": KV})
    assert body == {**CLIENT, "kv_transfer_params": KV}


def test_nixlv2_decode_leg_requires_params() -> None:
    with pytest.raises(MissingTransferParams):
        make_connector("nixlv2").decode_body(CLIENT, {"choices": []})


def test_nixl_v1_uses_top_level_fields() -> None:
    conn = make_connector("nixl")
    assert conn.prefill_body(CLIENT)["do_remote_decode"] is True
    top_level = {k: v for k, v in KV.items() if k != "do_remote_prefill"}
    body = conn.decode_body(CLIENT, top_level)
    assert body["do_remote_prefill"] is True and body["remote_block_ids"] == [1]
    with pytest.raises(MissingTransferParams, match="remote_port"):
        conn.decode_body(CLIENT, {"remote_block_ids": [1]})


def test_lmcache_sends_original_request_to_decoder() -> None:
    conn = make_connector("lmcache")
    assert conn.prefill_body(CLIENT)["max_completion_tokens"] == 1
    assert conn.decode_body(CLIENT, {}) is CLIENT
    assert not conn.uses_prefill_response


def test_unknown_connector_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known: lmcache, nixl, nixlv2"):
        make_connector("sglang")
