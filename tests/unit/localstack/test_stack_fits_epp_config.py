"""The local stack's Envoy fits the EPP config: its ext_proc message_timeout outlasts what the
config makes a request wait, and predicted-latency routing gets the response bodies."""

from __future__ import annotations

from pathlib import Path

import yaml

from epp.localstack.stack import LocalStack, StackConfig, epp_hold_ms
from tests.unit.localstack.test_envoy_config import _ext_proc

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
        ext_proc = _ext_proc(yaml.safe_load(stack.write_files()["envoy"].read_text()))["typed_config"]
        modes[name] = (ext_proc["processing_mode"]["response_body_mode"],
                       ext_proc["processing_mode"]["response_header_mode"], ext_proc["message_timeout"])
    assert modes["latency"] == ("STREAMED", "SEND", "5.000s")
    assert modes["plain"] == ("NONE", "SKIP", "2.000s")


def test_the_local_stack_asks_streams_for_their_usage_with_the_latency_profile(tmp_path: Path) -> None:
    """TPOT is learnt from a stream's usage, which vLLM sends only when asked: with a latency
    profile the stack's EPP adds stream_options.include_usage (once, even when also given)."""
    config = tmp_path / "epp.yaml"
    config.write_text(PRODUCER % "")
    plain = tmp_path / "plain.yaml"
    plain.write_text("plugins:\n- type: queue-scorer\n")
    for path, extra, count in ((config, (), 1), (plain, (), 0), (config, ("--stream-include-usage",), 1)):
        stack = LocalStack(StackConfig(run_dir=tmp_path / f"{path.stem}-{len(extra)}", pods=1,
                                       epp_config=path, epp_args=extra))
        args = stack.epp_args(stack.epps[0], stack.write_files())
        assert args.count("--stream-include-usage") == count, (path.name, extra)
        assert args[args.index("--config") + 1] == str(path)
