from epp.scheduling.benchmark import main, run


def test_benchmark_runs_bounded_and_reports_every_statistic() -> None:
    stats = run(pods=4, decisions=100, prompt_chars=512, config=None)
    assert set(stats) == {
        "schedule_mean_us", "schedule_p50_us", "schedule_p99_us",
        "with_pre_request_mean_us", "with_pre_request_p50_us", "with_pre_request_p99_us",
    }
    assert all(v > 0 for v in stats.values())
    assert stats["with_pre_request_mean_us"] >= stats["schedule_mean_us"]


def test_benchmark_cli_exits_zero() -> None:
    assert main(["--pods", "2", "--decisions", "100", "--prompt-chars", "256"]) == 0
