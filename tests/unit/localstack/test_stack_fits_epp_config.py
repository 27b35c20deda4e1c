"""The local stack's Envoy fits the EPP config: its ext_proc message_timeout outlasts what the
config makes a request wait, and predicted-latency routing gets the response bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from epp.localstack.stack import LocalStack, StackConfig, epp_hold_ms

PRODUCER = """plugins:
- type: predicted-latency-producer
  parameters: {%s}
- type: latency-scorer
"""


def test_the_longest_hold_is_the_deferrals_maximum(tmp_path: Path) -> None:
    def hold(params: str) -> int:
        path = tmp_path / "epp.yaml"
        path.write_text(PRODUCER % params)
        return epp_hold_ms(path)

    assert hold("deferBehindPrefillTokens: 8192") == 10_000  # maxDeferS' default
    assert hold("deferBehindPrefillTokens: 8192, maxDeferS: 4.5") == 4_500
    assert hold("defer_behind_prefill_tokens: 8192, max_defer_s: 2") == 2_000
    assert hold("deferBehindPrefillTokens: 0, maxDeferS: 4.5") == 0  # off
    assert hold("scoreRequestsWithoutSLO: true") == 0
    assert epp_hold_ms(None) == 0 and epp_hold_ms(tmp_path / "missing.yaml") == 0
    (tmp_path / "bad.yaml").write_text("plugins: [\n")
    assert epp_hold_ms(tmp_path / "bad.yaml") == 0


def _ext_proc(envoy_yaml: str) -> dict[str, Any]:
    """The ext_proc filter's typed config in a generated Envoy config."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("name") == "envoy.filters.http.ext_proc":
                return node["typed_config"]
            for value in node.values():
                found = walk(value)
                if found is not None:
                    return found
        elif isinstance(node, list):
            for value in node:
                found = walk(value)
                if found is not None:
                    return found
        return None

    found = walk(yaml.safe_load(envoy_yaml))
    assert found is not None
    return cast(dict[str, Any], found)


def test_the_local_stack_streams_bodies_and_waits_long_enough_for_the_latency_profile(tmp_path: Path) -> None:
    """`epp run-local --config <latency profile>`: Envoy streams response bodies to the EPP (a
    stream's first chunk is its first token, its usage gives TPOT), and its message timeout
    outlasts a deferral; planned only, nothing is started."""
    config = tmp_path / "epp.yaml"
    config.write_text(PRODUCER % "deferBehindPrefillTokens: 8192, maxDeferS: 4")
    plain = tmp_path / "plain.yaml"
    plain.write_text("plugins:\n- type: queue-scorer\n")
    modes = {}
    for name, path in (("latency", config), ("plain", plain)):
        stack = LocalStack(StackConfig(run_dir=tmp_path / name, pods=1, epp_config=path))
        ext_proc = _ext_proc(stack.write_files()["envoy"].read_text())
        modes[name] = (ext_proc["processing_mode"]["response_body_mode"],
                       ext_proc["processing_mode"]["response_header_mode"], ext_proc["message_timeout"])
    assert modes["latency"] == ("STREAMED", "SEND", "5.000s")
    assert modes["plain"] == ("NONE", "SKIP", "2.000s")
