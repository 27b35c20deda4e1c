"""Envoy's ext_proc message_timeout outlasts what the EPP config makes a request wait."""

from __future__ import annotations

from pathlib import Path

from epp.localstack.stack import epp_hold_ms

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
