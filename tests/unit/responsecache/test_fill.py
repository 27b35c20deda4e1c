"""Only complete answers become entries; the entry is what a hit sends."""

from __future__ import annotations

import json

from epp.responsecache.fill import INCOMPLETE, INVALID, TOO_LARGE, ResponseAssembler, json_entry, sse_entry

COMPLETION = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}],
              "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def _sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


CHUNKS = ({"choices": [{"delta": {"content": "he"}}]}, {"choices": [{"delta": {"content": "llo"}}]},
          {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                    "prompt_tokens_details": {"cached_tokens": 1}}})


def test_json_entry_marks_prompt_tokens_cached() -> None:
    entry = json_entry(json.dumps(COMPLETION).encode())
    assert isinstance(entry, bytes)
    obj = json.loads(entry)
    assert obj["choices"] == COMPLETION["choices"]
    assert obj["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}


def test_json_errors_and_garbage_are_not_stored() -> None:
    assert json_entry(b'{"error": {"message": "x"}}') == INVALID
    assert json_entry(b'{"choices": []}') == INVALID
    assert json_entry(b'{"choices": [{"text": "x"') == INVALID
    assert json_entry(b"[]") == INVALID


def test_sse_entry_is_normalised_and_ends_with_done() -> None:
    raw = _sse(*CHUNKS).replace(b"data: ", b"data:", 1).replace(b"\n\n", b"\r\n\r\n", 1)
    entry = sse_entry(raw)
    assert isinstance(entry, bytes) and entry.endswith(b"data: [DONE]\n\n")
    events = [e for e in entry.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[:2] == list(CHUNKS[:2])
    assert payloads[2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}


def test_cut_or_broken_streams_are_not_stored() -> None:
    assert sse_entry(_sse(*CHUNKS, done=False)) == INCOMPLETE
    assert sse_entry(_sse(*CHUNKS)[:-20]) == INCOMPLETE
    assert sse_entry(_sse({"error": {"message": "boom"}})) == INVALID
    assert sse_entry(b"data: [DONE]\n\n") == INVALID
    assert sse_entry(_sse(*CHUNKS) + b"data: {}\n\n") == INVALID  # events after [DONE]
    assert sse_entry(b"data: {not json\n\ndata: [DONE]\n\n") == INVALID


def test_assembler_needs_end_of_stream_and_respects_the_cap() -> None:
    body = _sse(*CHUNKS)
    asm = ResponseAssembler(stream=True, max_bytes=10_000)
    asm.feed(body[:30], False)
    assert asm.entry() == INCOMPLETE  # the pod never finished: no end-of-stream message
    asm.feed(body[30:], False)
    asm.feed(b"", True)
    assert isinstance(asm.entry(), bytes)
    small = ResponseAssembler(stream=False, max_bytes=20)
    small.feed(json.dumps(COMPLETION).encode(), True)
    assert small.entry() == TOO_LARGE
