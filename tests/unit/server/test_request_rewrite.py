"""rewrite_body: every edit the EPP makes to a forwarded body, in one decode and one encode."""

from __future__ import annotations

import json

from epp.server.request import rewrite_body

BODY = json.dumps({"model": "chat", "prompt": "hi", "stream": True, "priority": -100,
                   "stream_options": {"continuous_usage_stats": True}, "extra": [1, {"a": None}]}).encode()


def test_no_edit_leaves_the_body_alone() -> None:
    assert rewrite_body(BODY) is None


def test_all_edits_in_one_pass_keep_every_other_field() -> None:
    out = rewrite_body(BODY, model="llama-3-8b", stream_usage=True, priority=-2)
    assert out is not None
    assert json.loads(out) == {
        "model": "llama-3-8b",
        "prompt": "hi",
        "stream": True,
        "priority": -2,  # the client's own -100 is replaced, never trusted
        "stream_options": {"continuous_usage_stats": True, "include_usage": True},
        "extra": [1, {"a": None}],
    }


def test_usage_already_asked_for_is_no_edit() -> None:
    body = json.dumps({"model": "m", "prompt": "x", "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    assert rewrite_body(body, stream_usage=True) is None
    out = rewrite_body(body, stream_usage=True, model="n")
    assert out is not None and json.loads(out)["stream_options"] == {"include_usage": True}


def test_each_edit_alone() -> None:
    assert json.loads(rewrite_body(BODY, model="x") or b"")["model"] == "x"
    assert json.loads(rewrite_body(BODY, priority=0) or b"")["priority"] == 0
    assert json.loads(rewrite_body(BODY, stream_usage=True) or b"")["stream_options"]["include_usage"] is True
