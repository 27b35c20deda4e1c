"""P/D benchmark (epp.bench.pd): workload, counters, result math, markdown; one quick live run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from epp.bench.pd import (
    AGGREGATED,
    DECODE_ONLY,
    DISAGGREGATED,
    TITLE,
    LongPromptShape,
    PDPhaseResult,
    PDResult,
    PDSettings,
    PDSetup,
    _epp_config,
    counter_delta,
    interpretation,
    long_prompt_workload,
    pd_markdown,
    pd_ratios,
    rate_table,
    run_pd_benchmark,
    sum_counter,
)
from epp.bench.runner import RouterPhaseResult
from epp.bench.stats import Distribution


def _phase(setup: PDSetup, rate: float, ttft: float, itl: float, tput: float, *,
           decisions: dict[str, float] | None = None, errors: int = 0) -> PDPhaseResult:
    row = RouterPhaseResult(setup.key, setup.label, True, "long-prompt", rate, sent=10 + errors, ok=10,
                            errors=errors,
                            ttft=Distribution(10, ttft, ttft, ttft * 2, ttft * 3),
                            itl=Distribution(100, itl, itl, itl * 2, itl * 4),
                            e2e=Distribution(10, 1.0, 1.0, 2.0, 3.0),
                            output_tokens_per_s=tput)
    return PDPhaseResult(setup.key, setup.label, rate, row, tpot=Distribution(10, itl, itl, itl, itl),
                         mean_prompt_tokens=4000.0,
                         decisions=decisions or {},
                         sidecar_modes={"disaggregated": 9.0, "fallback": 1.0} if setup.pd else {})


def _result(phases: list[PDPhaseResult], rates: tuple[float, ...] = (2.0,),
            setups: tuple[str, ...] = ("aggregated", "pd")) -> PDResult:
    settings = PDSettings(rates=rates, setups=setups)
    return PDResult(settings, "python -m epp.bench.pd", list(rates), {r: "t" for r in rates},
                    {r: 10 for r in rates}, phases, wall_s=12.0)


# --- workload ----------------------------------------------------------------------------------

def test_workload_is_seeded_bounded_and_sized() -> None:
    settings = PDSettings(duration_s=10.0, max_requests=25)
    first = long_prompt_workload(4.0, settings)
    again = long_prompt_workload(4.0, settings)
    assert [r.messages for r in first.requests] == [r.messages for r in again.requests]
    assert 0 < len(first.requests) <= 25
    assert first.span_s <= 10.0
    shape = settings.shape
    for req in first.requests:
        chars = len(req.messages[0]["content"])
        assert shape.min_prompt_tokens * 4 <= chars <= shape.max_prompt_tokens * 4 + 64
        assert shape.min_output_tokens <= req.max_tokens <= shape.max_output_tokens
    heads = {r.messages[0]["content"][:64] for r in first.requests}
    assert len(heads) == len(first.requests)  # no two prompts share their first cache block


def test_rates_get_different_prompts() -> None:
    settings = PDSettings(duration_s=5.0, max_requests=5)
    a = long_prompt_workload(2.0, settings).requests[0].messages[0]["content"]
    b = long_prompt_workload(3.0, settings).requests[0].messages[0]["content"]
    assert a[:32] != b[:32]


@pytest.mark.parametrize("settings, message", [
    (PDSettings(rates=()), "rates"),
    (PDSettings(rates=(0.0,)), "rates"),
    (PDSettings(time_scale=0.0), "time_scale"),
    (PDSettings(setups=("aggregated", "nope")), "nope"),
    (PDSettings(setups=("pd",)), "aggregated"),
    (PDSettings(shape=LongPromptShape(5000, 100)), "prompt tokens"),
    (PDSettings(shape=LongPromptShape(10, 20, 9, 3)), "output tokens"),
])
def test_settings_validation_names_the_field(settings: PDSettings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_quick_settings_are_small() -> None:
    quick = PDSettings.quick_settings(Path("/tmp/x"))
    quick.validate()
    assert quick.quick and quick.max_requests <= 20 and quick.max_wall_s < 60
    assert quick.run_dir == Path("/tmp/x")


# --- counters ----------------------------------------------------------------------------------

EPP_METRICS = """\
# HELP llm_d_inference_scheduler_pd_decision_total P/D decisions
# TYPE llm_d_inference_scheduler_pd_decision_total counter
llm_d_inference_scheduler_pd_decision_total{decision_type="prefill-decode",model_name="m1"} 3.0
llm_d_inference_scheduler_pd_decision_total{decision_type="prefill-decode",model_name="m2"} 2.0
llm_d_inference_scheduler_pd_decision_total{decision_type="decode-only",model_name="m1"} 1.0
# HELP other_total x
# TYPE other_total counter
other_total{decision_type="prefill-decode"} 99.0
"""


def test_sum_counter_sums_per_label_and_ignores_other_metrics() -> None:
    got = sum_counter(EPP_METRICS, "llm_d_inference_scheduler_pd_decision_total", "decision_type")
    assert got == {"prefill-decode": 5.0, "decode-only": 1.0}
    assert sum_counter("", "llm_d_inference_scheduler_pd_decision_total", "decision_type") == {}


def test_counter_delta_covers_new_labels() -> None:
    assert counter_delta({"a": 1.0}, {"a": 4.0, "b": 2.0}) == {"a": 3.0, "b": 2.0}


def test_remote_prefill_share() -> None:
    pd = _phase(DISAGGREGATED, 2.0, 0.3, 0.01, 100.0, decisions={"prefill-decode": 3.0, "decode-only": 1.0})
    assert pd.remote_prefill_share == pytest.approx(0.75)
    newer = _phase(DISAGGREGATED, 2.0, 0.3, 0.01, 100.0,
                   decisions={"encode-prefill-decode": 1.0, "encode-decode": 1.0, "decode-only": 2.0})
    assert newer.remote_prefill_share == pytest.approx(0.25)
    agg = _phase(AGGREGATED, 2.0, 0.2, 0.01, 100.0)
    assert agg.remote_prefill_share == 0.0  # no P/D handler: nothing went remote


def test_decode_only_config_overrides_the_threshold(tmp_path: Path) -> None:
    path = _epp_config(DECODE_ONLY, tmp_path)
    assert path is not None and path.parent == tmp_path
    config = yaml.safe_load(path.read_text())
    handler = next(p for p in config["plugins"] if p["type"] == "pd-profile-handler")
    assert handler["parameters"]["nonCachedTokens"] == 10**9
    assert _epp_config(AGGREGATED, tmp_path) is None
    assert _epp_config(DISAGGREGATED, tmp_path) is not None


# --- result math and markdown ------------------------------------------------------------------

def test_ratios_are_pd_over_aggregated() -> None:
    result = _result([_phase(AGGREGATED, 2.0, 0.2, 0.010, 100.0), _phase(DISAGGREGATED, 2.0, 0.5, 0.008, 90.0)])
    r = pd_ratios(result, 2.0)
    assert r is not None
    assert r.ttft_p50 == pytest.approx(2.5)
    assert r.itl_p50 == pytest.approx(0.8)
    assert r.itl_p99 == pytest.approx(0.8)
    assert r.tpot_p50 == pytest.approx(0.8)
    assert r.output_tokens_per_s == pytest.approx(0.9)
    assert pd_ratios(result, 9.0) is None


def test_rate_table_has_ratio_column_and_formats() -> None:
    result = _result([_phase(AGGREGATED, 2.0, 0.2, 0.010, 100.0),
                      _phase(DISAGGREGATED, 2.0, 0.5, 0.008, 90.0, decisions={"prefill-decode": 10.0},
                             errors=2)])
    lines = rate_table(result, 2.0).splitlines()
    assert lines[0].endswith("| P/D ÷ aggregated |")
    ttft = next(line for line in lines if line.startswith("| TTFT p50"))
    assert ttft == "| TTFT p50 (ms) | 200.0 | 500.0 | 2.50x |"
    tpot = next(line for line in lines if line.startswith("| TPOT p99"))
    assert tpot == "| TPOT p99 (ms) | 10.0 | 8.0 | 0.80x |"
    tput = next(line for line in lines if line.startswith("| output tokens/s"))
    assert tput.endswith("| 100 | 90 | 0.90x |")
    errors = next(line for line in lines if line.startswith("| errors"))
    assert errors == "| errors / sent | 0 / 10 | 2 / 12 |  |"
    share = next(line for line in lines if line.startswith("| remote prefill (EPP"))
    assert "| 0.0% | 100.0% |" in share
    sidecar = next(line for line in lines if line.startswith("| remote prefill (sidecars)"))
    assert "9 ok, 1 fallback" in sidecar


def test_rate_table_marks_skipped_setups() -> None:
    result = _result([_phase(AGGREGATED, 2.0, 0.2, 0.01, 100.0)], setups=("aggregated", "pd", "pd-decode-only"))
    text = rate_table(result, 2.0)
    assert "skipped" in text
    assert "2.50x" not in text and "| - |" not in text.splitlines()[2]  # no ratio without P/D


def test_interpretation_follows_the_numbers() -> None:
    better_itl = _result([_phase(AGGREGATED, 2.0, 0.2, 0.010, 100.0), _phase(DISAGGREGATED, 2.0, 0.5, 0.008, 90.0)])
    text = interpretation(better_itl)
    assert "TTFT p50 2.50x" in text and "never run a prefill chunk" in text and "price is TTFT" in text
    worse_itl = _result([_phase(AGGREGATED, 2.0, 0.5, 0.008, 100.0), _phase(DISAGGREGATED, 2.0, 0.2, 0.010, 90.0)])
    text = interpretation(worse_itl)
    assert "do not outweigh" in text and "does not suffer" in text
    assert "nothing to compare" in interpretation(_result([_phase(AGGREGATED, 2.0, 0.2, 0.01, 1.0)]))


def test_interpretation_spans_lowest_and_highest_rate() -> None:
    phases = [_phase(AGGREGATED, r, 0.2, 0.01, 100.0) for r in (2.0, 4.0)]
    phases += [_phase(DISAGGREGATED, 2.0, 0.3, 0.01, 100.0), _phase(DISAGGREGATED, 4.0, 0.8, 0.01, 100.0)]
    text = interpretation(_result(phases, rates=(2.0, 4.0)))
    assert "at 2 req/s" in text and "TTFT p50 4.00x" in text and "at 4 req/s" in text
    assert "threshold out of reach" not in text  # no decode-only run to quote


def test_interpretation_quotes_the_decode_only_run() -> None:
    phases = [_phase(AGGREGATED, 2.0, 0.2, 0.01, 100.0), _phase(DISAGGREGATED, 2.0, 0.9, 0.005, 90.0),
              _phase(DECODE_ONLY, 2.0, 0.4, 0.02, 95.0)]
    text = interpretation(_result(phases, setups=("aggregated", "pd", "pd-decode-only")))
    assert "TTFT p50 400.0 ms instead of 900.0 ms at 2 req/s" in text


def test_markdown_section() -> None:
    result = _result([_phase(AGGREGATED, 2.0, 0.2, 0.010, 100.0), _phase(DISAGGREGATED, 2.0, 0.5, 0.008, 90.0)])
    text = pd_markdown(result)
    assert text.startswith(TITLE + "\n")
    assert "### 2 requests/s (10 requests, mean prompt 4,000 tokens)" in text
    assert "```\npython -m epp.bench.pd\n```" in text
    assert "model time" in text and "Quick mode" not in text
    assert not math.isnan(result.wall_s) and "Run wall time 12 s." in text


# --- live (quick mode, real Envoy + EPP + sidecars + simulator on loopback) ----------------------

@pytest.mark.integration
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    settings = PDSettings.quick_settings(tmp_path)
    result = run_pd_benchmark(settings, progress=lambda _m: None)
    rate = settings.rates[0]
    agg, pd = result.phase("aggregated", rate), result.phase("pd", rate)
    assert agg is not None and pd is not None, [p.skipped for p in result.phases]
    for phase in (agg, pd):
        assert phase.row.ok == phase.row.sent > 0 and phase.row.errors == 0, phase.row.error_examples
        assert phase.row.ttft.p50 > 0 and phase.row.itl.p50 > 0
        assert settings.shape.min_prompt_tokens <= phase.mean_prompt_tokens
    # Every prompt is long and new: the EPP sends each through the prefill pod unless that pod
    # is backlogged (maxPrefillBacklog 2, read from its scraped queue: how often depends on how
    # the Poisson arrivals bunch up, 3 to 10 of the 16 in repeated runs), and the sidecars did
    # exactly what the EPP decided (no fallback to local prefill).
    decided_remote = pd.decisions.get("prefill-decode", 0.0)
    decided_local = pd.decisions.get("decode-only", 0.0)
    assert decided_remote > 0 and decided_remote + decided_local == pd.row.ok
    assert pd.prefill_skips.get("prefill-backlog", 0.0) == decided_local, pd.prefill_skips
    assert pd.sidecar_modes.get("disaggregated") == decided_remote
    assert pd.sidecar_modes.get("disaggregated", 0.0) + pd.sidecar_modes.get("passthrough", 0.0) == pd.row.ok
    assert pd.sidecar_modes.get("fallback", 0.0) == 0.0
    assert agg.remote_prefill_share == 0.0
    text = pd_markdown(result)
    assert text.startswith(TITLE) and "Quick mode" in text and "P/D ÷ aggregated" in text


def test_pd_section_is_spliced_and_replaced(tmp_path: Path) -> None:
    from epp.bench.cli import PD_END, PD_START, splice_pd_section

    doc = tmp_path / "benchmarks-pd.md"
    report = ("# Benchmarks\n\n## Results\n\n"
              "<!-- overhead:begin -->\n## EPP overhead\n\nnumbers\n<!-- overhead:end -->\n")
    assert splice_pd_section(report, doc) == report  # no P/D run yet
    doc.write_text("## P/D v1\n")
    once = splice_pd_section(report, doc)
    # Outside the overhead markers, which `bench overhead` rewrites.
    assert once.index(PD_END) < once.index("<!-- overhead:begin -->") and "## P/D v1" in once
    doc.write_text("## P/D v2\n")
    twice = splice_pd_section(once, doc)
    assert "## P/D v2" in twice and "## P/D v1" not in twice and twice.count(PD_START) == 1 and PD_END in twice
