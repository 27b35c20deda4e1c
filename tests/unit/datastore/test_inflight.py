"""The in-flight ledger: dispatch, completion, expiry, reconciliation with scrapes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest

from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.datastore.inflight import ITL_WINDOW_S, InflightConfig, InflightTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int = 2) -> tuple[Datastore, list[Endpoint]]:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"p{i}", address="127.0.0.1", port=8000 + i)) for i in range(n)]
    return ds, eps


def _scrape(ep: Endpoint, at: float, running: int = 0, waiting: int = 0) -> None:
    ep.metrics = EndpointMetrics(running_requests=running, waiting_queue_size=waiting, updated_at=at)


def test_dispatch_charges_and_complete_releases_once() -> None:
    ds, (a, b) = _pool()
    tracker = InflightTracker(ds)
    first = tracker.dispatch([a], 300)
    second = tracker.dispatch([a, b], 50)  # e.g. P/D: decode and prefill pod
    assert (a.inflight, a.inflight_tokens, b.inflight, b.inflight_tokens) == (2, 350, 1, 50)
    tracker.complete(second)
    tracker.complete(second)  # a second completion of the same request changes nothing
    assert (a.inflight, a.inflight_tokens, b.inflight, b.inflight_tokens) == (1, 300, 0, 0)
    tracker.complete(first)
    assert (a.inflight, a.inflight_tokens) == (0, 0)
    assert tracker.open_charges(a) == tracker.open_charges(b) == 0


def test_token_estimate_is_prompt_plus_expected_output() -> None:
    tracker = InflightTracker(config=InflightConfig(default_output_tokens=100))
    assert tracker.estimate_tokens(4000, 20) == 1000 + 20  # max_tokens given
    assert tracker.estimate_tokens(4000, None) == 1000 + 100  # the configured default


def test_a_charge_without_completion_expires() -> None:
    clock = Clock()
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds, InflightConfig(request_timeout_s=30.0), clock=clock)
    lost = tracker.dispatch([a], 10)
    clock.now += 10
    kept = tracker.dispatch([a], 10)
    clock.now += 25  # lost is 35 s old, kept 25 s
    assert tracker.sweep() == 1
    assert (a.inflight, a.inflight_tokens, tracker.expired) == (1, 10, 1)
    tracker.complete(lost)  # a late completion of an expired charge is a no-op
    assert a.inflight == 1
    tracker.complete(kept)
    assert a.inflight == 0


def test_scrape_releases_old_charges_the_pod_no_longer_holds() -> None:
    clock = Clock()
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds, InflightConfig(reconcile_grace_s=1.0), clock=clock)
    old = [tracker.dispatch([a], 100) for _ in range(5)]  # completions lost (e.g. a dropped stream)
    clock.now += 5
    young = [tracker.dispatch([a], 100) for _ in range(2)]  # may not have reached the pod yet
    _scrape(a, at=clock.now, running=2, waiting=1)  # the pod holds 3 requests
    assert tracker.sweep() == 2  # 5 old charges, the pod holds at most 3 of them
    assert a.inflight == 5 and a.inflight_tokens == 500
    assert tracker.reconciled == 2
    # The oldest went first; their late completions change nothing.
    tracker.complete(old[0])
    tracker.complete(old[1])
    assert a.inflight == 5
    # The same scrape is used once: no further release until a new one.
    assert tracker.sweep() == 0
    for handle in old[2:] + young:
        tracker.complete(handle)
    assert (a.inflight, a.inflight_tokens) == (0, 0)


def test_young_charges_are_not_reconciled_away() -> None:
    clock = Clock()
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds, InflightConfig(reconcile_grace_s=1.0), clock=clock)
    for _ in range(4):
        tracker.dispatch([a], 1)
    _scrape(a, at=clock.now + 0.2)  # the pod says 0, but our requests are 0.2 s old
    assert tracker.sweep() == 0 and a.inflight == 4


def test_scrape_that_covers_our_requests_releases_nothing() -> None:
    clock = Clock()
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds, InflightConfig(reconcile_grace_s=1.0), clock=clock)
    for _ in range(3):
        tracker.dispatch([a], 1)
    clock.now += 2
    _scrape(a, at=clock.now, running=7)  # other clients' requests too
    assert tracker.sweep() == 0 and a.inflight == 3


def test_removed_endpoint_drops_its_charges() -> None:
    ds, (a, b) = _pool()
    tracker = InflightTracker(ds)
    handle = tracker.dispatch([a, b], 5)
    ds.remove_endpoint(a.key)
    assert tracker.open_charges(a) == 0
    tracker.complete(handle)
    assert b.inflight == 0


def test_age_queue_is_compacted_behind_a_long_request() -> None:
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds)
    tracker.dispatch([a], 1)  # stays open: every later charge queues behind it
    for _ in range(3000):
        tracker.complete(tracker.dispatch([a], 1))
    tracker.sweep()
    assert len(tracker._by_age) == 1


@pytest.mark.parametrize("config", [InflightConfig(request_timeout_s=0), InflightConfig(default_output_tokens=-1),
                                    InflightConfig(sweep_interval_s=0)])
def test_invalid_config_is_refused(config: InflightConfig) -> None:
    with pytest.raises(ValueError, match="must be"):
        InflightTracker(config=config)


async def test_background_sweep_expires_without_being_called() -> None:
    ds, (a, _) = _pool()
    tracker = InflightTracker(ds, InflightConfig(request_timeout_s=0.05, sweep_interval_s=0.01))
    tracker.dispatch([a], 1)
    await tracker.start()
    try:
        for _ in range(100):
            if a.inflight == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await tracker.stop()
    assert a.inflight == 0 and tracker.expired == 1


# --- speed learning (slowness) --------------------------------------------------------------

def _serve(tracker: InflightTracker, clock: Clock, ep: Endpoint, seconds: float, prompt: int = 1500,
           output: int = 48) -> None:
    """One request on `ep` that stays in flight `seconds`."""
    handle = tracker.dispatch([ep], prompt + output, prompt)
    clock.now += seconds
    tracker.complete(handle)


def _serve_rounds(tracker: InflightTracker, clock: Clock, eps: Sequence[Endpoint], rounds: int,
                  fast_s: float, slow_s: float) -> None:
    """`rounds` rounds of one request per endpoint: eps[0] takes `slow_s`, the others `fast_s`."""
    for _ in range(rounds):
        for ep in eps[1:]:
            _serve(tracker, clock, ep, fast_s)
        _serve(tracker, clock, eps[0], slow_s)
    tracker.sweep()


def test_a_pod_twice_as_slow_is_learned_from_time_in_flight() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _serve_rounds(tracker, clock, eps, 3, fast_s=1.6, slow_s=3.2)
    assert [tracker.slowness(ep) for ep in eps] == pytest.approx([2.0, 1.0, 1.0, 1.0])
    assert tracker.slowness_of(eps) == pytest.approx([2.0, 1.0, 1.0, 1.0])


def test_work_is_weighed_by_request_shape() -> None:
    # A long prompt with few output tokens and a short prompt with many take different times
    # on pods of the same speed: work = decode steps + prompt tokens / 100.
    ds, (a, b) = _pool(2)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(3):
        _serve(tracker, clock, a, 0.02 * (48 + 8000 / 100), prompt=8000, output=48)
        _serve(tracker, clock, b, 0.02 * (500 + 100 / 100), prompt=100, output=500)
    tracker.sweep()
    assert tracker.slowness_of([a, b]) is None


def test_noise_within_the_dead_zone_keeps_a_homogeneous_pool_at_full_speed() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(5):
        for ep, seconds in zip(eps, (1.6, 1.8, 1.95, 1.7), strict=True):  # up to 1.2x: queueing noise
            _serve(tracker, clock, ep, seconds)
    tracker.sweep()
    assert tracker.slowness_of(eps) is None
    assert [tracker.slowness(ep) for ep in eps] == [1.0] * 4


def test_slowness_needs_two_known_pods_and_forgets_removed_ones() -> None:
    ds, (a, b) = _pool(2)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _serve(tracker, clock, a, 1.0)
    tracker.sweep()
    assert tracker.slowness_of([a, b]) is None  # one pod known: nothing to compare with
    _serve(tracker, clock, b, 3.0)
    tracker.sweep()
    assert tracker.slowness(b) == pytest.approx(3.0)
    ds.remove_endpoint(b.key)
    assert tracker.slowness(b) == 1.0
    tracker.sweep()
    assert tracker.slowness_of([a]) is None


def test_a_pod_that_fails_fast_does_not_make_the_others_look_slow() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(3):
        _serve(tracker, clock, eps[0], 0.01)  # answers everything at once (errors)
        for ep in eps[1:]:
            _serve(tracker, clock, ep, 1.6)
    tracker.sweep()
    assert [tracker.slowness(ep) for ep in eps[1:]] == [1.0, 1.0, 1.0]


def test_released_charges_do_not_teach_speed() -> None:
    # A charge released by expiry or reconciliation has no true completion time.
    ds, (a, b) = _pool(2)
    clock = Clock()
    tracker = InflightTracker(ds, InflightConfig(request_timeout_s=5.0), clock=clock)
    for _ in range(2):
        _serve(tracker, clock, a, 1.0)
        _serve(tracker, clock, b, 1.0)
    stuck = [tracker.dispatch([b], 1548, 1500) for _ in range(3)]
    clock.now += 10.0
    tracker.sweep()  # expires them
    for handle in stuck:
        tracker.complete(handle)  # late completions after 10 s must not count
    tracker.sweep()
    assert tracker.slowness(b) == 1.0


def test_a_pod_far_behind_looks_slow_before_its_requests_complete() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(2):
        for ep in eps[:3]:
            _serve(tracker, clock, ep, 1.6)
    stuck = tracker.dispatch([eps[3]], 1548, 1500)  # pod 3 never completed anything yet
    clock.now += 2.0
    tracker.sweep()
    assert tracker.slowness_of(eps) is None  # open 2.0 s against the others' 1.6 s: 1.25x
    clock.now += 2.8
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(3.0)  # open 4.8 s: 3x, judged as is
    clock.now += 1.6
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(4.0)  # capped
    tracker.complete(stuck)
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(4.0)  # its one completion: 6.4 s


def test_a_long_request_on_a_measured_pod_counts_with_a_margin() -> None:
    # The oldest of a pod's open requests is the longest-running of several: once the pod has
    # completions, its age counts only after a 1.5 margin, so one request that ran long by
    # chance on a homogeneous pool does not make the pod slow.
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(2):
        for ep in eps:
            _serve(tracker, clock, ep, 1.6)
    tracker.dispatch([eps[3]], 1548, 1500)
    clock.now += 3.2
    tracker.sweep()
    assert tracker.slowness_of(eps) is None  # 2x the others, / 1.5 = 1.33x: inside the dead zone
    clock.now += 1.6
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(2.0)  # 4.8 s: 3x / 1.5


def test_a_pod_no_longer_sent_anything_is_tried_again() -> None:
    # A pod judged slow gets little traffic; without new samples its verdict fades (30 s time
    # constant), so a pod that recovered is measured anew instead of being shunned for good.
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for ep in eps[:3]:
        _serve(tracker, clock, ep, 1.6)
    _serve(tracker, clock, eps[3], 4.8)
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(3.0)
    clock.now += 30.0
    tracker.sweep()
    assert tracker.slowness(eps[3]) == pytest.approx(1 + 2 * math.exp(-1))
    clock.now += 60.0
    tracker.sweep()
    # 1 + 2e^-3 = 1.10: inside the dead zone, but a pod judged slow keeps its ratio until
    # it falls below SLOWNESS_RELEASE (1.05)
    assert tracker.slowness(eps[3]) == pytest.approx(1 + 2 * math.exp(-3))
    clock.now += 30.0
    tracker.sweep()
    assert tracker.slowness(eps[3]) == 1.0  # 1 + 2e^-4 = 1.04: let go
    assert tracker.slowness_of(eps) is None


def test_a_slow_pod_stays_slow_while_a_burst_slows_the_others_too() -> None:
    # In a burst the fast pods queue as well: their time in flight rises and a 2x slower
    # pod's ratio dips into the dead zone. It must keep that (smaller) ratio, not drop to 1.0
    # and take full-speed shares while its own queue is longest.
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _serve_rounds(tracker, clock, eps, 3, fast_s=1.6, slow_s=3.2)
    assert tracker.slowness(eps[0]) == pytest.approx(2.0)
    _serve_rounds(tracker, clock, eps, 8, fast_s=2.4, slow_s=3.2)  # the burst: fast pods take 2.4 s
    ratio = tracker.slowness(eps[0])
    assert 1.05 < ratio < 1.5  # inside the dead zone
    # The same burst seen by a tracker that never judged that pod slow: full speed.
    fresh_ds, fresh = _pool(4)
    fresh_tracker = InflightTracker(fresh_ds, clock=clock)
    _serve_rounds(fresh_tracker, clock, fresh, 8, fast_s=2.4, slow_s=3.2)
    assert fresh_tracker.slowness(fresh[0]) == 1.0


def test_prompt_tokens_a_pod_holds_are_not_charged_as_prefill() -> None:
    clock = Clock()
    ds, (a, b, c) = _pool(3)
    tracker = InflightTracker(ds, clock=clock)
    # P/D-like: one request charged to three pods; a holds 600 of the 1,000 prompt tokens,
    # b holds more than the prompt (another request's longer prefix), c holds nothing.
    handle = tracker.dispatch([a, b, c], 1_100, 1_000, {a.key: 600, b.key: 5_000})
    assert tracker.recent_prompt_tokens_of([a, b, c], clock.now) == [400.0, 0.0, 1_000.0]
    # Requests and tokens in flight are charged in full: only the prefill estimate changes.
    assert [(e.inflight, e.inflight_tokens) for e in (a, b, c)] == [(1, 1_100)] * 3
    assert [charge.prompt_tokens for charge in handle.charges] == [400, 0, 1_000]
# --- speed from the engine's inter-token latency (scraped histogram _sum / _count) ------------

def _itl(ep: Endpoint, total: float, count: float) -> None:
    """A scrape whose cumulative inter-token latency histogram holds `count` observations
    summing to `total` seconds."""
    ep.metrics = EndpointMetrics(itl_sum=total, itl_count=count, updated_at=ep.metrics.updated_at + 1.0)


def _decode(tracker: InflightTracker, clock: Clock, eps: list[Endpoint], step_s: list[float],
            sweeps: int, tokens: float = 20.0) -> None:
    """`sweeps` sweeps 0.25 s apart; before each, every pod has produced `tokens` more tokens
    `step_s` seconds apart (its cumulative histogram grows accordingly)."""
    for _ in range(sweeps):
        for ep, step in zip(eps, step_s, strict=True):
            m = ep.metrics
            base_sum, base_count = max(m.itl_sum, 0.0), max(m.itl_count, 0.0)
            _itl(ep, base_sum + tokens * step, base_count + tokens)
        clock.now += 0.25
        tracker.sweep()


def test_a_slow_engine_is_learned_from_its_step_time_before_any_completion() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for ep in eps:
        tracker.dispatch([ep], 1548, 1500)  # in flight, nothing completed
    _decode(tracker, clock, eps, [0.05, 0.025, 0.025, 0.026], sweeps=1)
    assert tracker.slowness_of(eps) is None  # the first scrape is only the baseline
    _decode(tracker, clock, eps, [0.05, 0.025, 0.025, 0.026], sweeps=1)
    assert [tracker.slowness(ep) for ep in eps] == pytest.approx([2.0, 1.0, 1.0, 1.0])


def test_step_times_are_a_mean_over_tokens_not_over_scrapes() -> None:
    ds, (a, b) = _pool(2)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _decode(tracker, clock, [a, b], [0.02, 0.02], sweeps=1, tokens=1.0)  # the baseline
    _decode(tracker, clock, [a, b], [0.02, 0.02], sweeps=1, tokens=60.0)
    _decode(tracker, clock, [a, b], [0.02, 0.08], sweeps=1, tokens=20.0)
    fade = math.exp(-0.25 / ITL_WINDOW_S)  # the older sweep's weight
    b_mean = (60 * 0.02 * fade + 20 * 0.08) / (60 * fade + 20)
    assert tracker.slowness(b) == pytest.approx(b_mean / 0.02)  # ~1.8x; per scrape it would be 2.5x
    assert tracker.slowness(a) == 1.0


def test_a_pod_that_speeds_up_again_is_forgiven_within_a_few_windows() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _decode(tracker, clock, eps, [0.05, 0.025, 0.025, 0.025], sweeps=5)
    assert tracker.slowness(eps[0]) == pytest.approx(2.0)
    _decode(tracker, clock, eps, [0.025] * 4, sweeps=int(2 * ITL_WINDOW_S / 0.25))
    assert tracker.slowness_of(eps) is None


def test_homogeneous_step_times_keep_every_pod_at_full_speed() -> None:
    # Pods of one type differ by how many prefills stalled their decodes lately: up to ~1.4x.
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _decode(tracker, clock, eps, [0.025, 0.03, 0.035, 0.028], sweeps=8)
    assert tracker.slowness_of(eps) is None


def test_pods_without_the_histogram_are_judged_by_completions_alone() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    # Only pod 0 exports it (another engine on the others): nothing to compare it with.
    for _ in range(3):
        _itl(eps[0], 0.0, 0.0)
        _decode(tracker, clock, eps[:1], [0.1], sweeps=1)
    assert tracker.slowness_of(eps) is None
    for _ in range(3):  # completions still tell, as before
        for ep in eps[1:]:
            _serve(tracker, clock, ep, 1.6)
        _serve(tracker, clock, eps[0], 3.2)
    tracker.sweep()
    assert tracker.slowness(eps[0]) == pytest.approx(2.0)


def test_the_larger_of_both_estimates_counts() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    for _ in range(3):
        for ep in eps[1:]:
            _serve(tracker, clock, ep, 1.6)
        _serve(tracker, clock, eps[0], 3.2)  # 2x by completions
    _decode(tracker, clock, eps, [0.075, 0.025, 0.025, 0.025], sweeps=2)  # 3x by step time
    assert tracker.slowness(eps[0]) == pytest.approx(3.0)


def test_engine_latency_can_be_turned_off() -> None:
    ds, eps = _pool(4)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    tracker.learn_from_engine_latency = False
    _decode(tracker, clock, eps, [0.05, 0.025, 0.025, 0.025], sweeps=4)
    assert tracker.slowness_of(eps) is None


def test_a_restarted_pod_starts_a_new_baseline() -> None:
    ds, (a, b) = _pool(2)
    clock = Clock()
    tracker = InflightTracker(ds, clock=clock)
    _decode(tracker, clock, [a, b], [0.02, 0.02], sweeps=3)
    _itl(b, 0.5, 5.0)  # b restarted: its counters fell; this scrape must not count as negative work
    clock.now += 0.25
    tracker.sweep()
    assert tracker.slowness_of([a, b]) is None
    _itl(b, 0.5 + 20 * 0.02, 25.0)  # counted from the new baseline on
    _itl(a, a.metrics.itl_sum + 20 * 0.02, a.metrics.itl_count + 20)
    clock.now += 0.25
    tracker.sweep()
    assert tracker.slowness_of([a, b]) is None
