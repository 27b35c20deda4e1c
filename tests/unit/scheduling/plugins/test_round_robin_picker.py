from collections import Counter

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins.round_robin_picker import RoundRobinPicker
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest
from tests.unit.scheduling.sched_fakes import pool, request, scored, state


def test_rotates_over_the_endpoints_in_order_ignoring_scores() -> None:
    eps = pool(3)
    picker = RoundRobinPicker()
    picks = [picker.pick(state(), request(), scored(eps, [1.0, 0.0, 0.5])).targets[0].name for _ in range(7)]
    assert picks == ["pod-0", "pod-1", "pod-2", "pod-0", "pod-1", "pod-2", "pod-0"]


def test_several_endpoints_continue_the_rotation_and_a_shrinking_pool_stays_in_range() -> None:
    eps = pool(4)
    picker = RoundRobinPicker(params=RoundRobinPicker.Params(max_num_of_endpoints=2))
    assert picker.pick_scores(state(), request(), eps, [0.0] * 4).targets == [eps[0], eps[1]]
    assert picker.pick_scores(state(), request(), eps, [0.0] * 4).targets == [eps[1], eps[2]]
    assert picker.pick_scores(state(), request(), eps[:1], [0.0]).targets == [eps[0]]
    assert picker.pick_scores(state(), request(), [], []).targets == []


def test_the_bench_control_config_spreads_like_round_robin() -> None:
    # epp/bench/configs/epp-rr.yaml: the `epp-rr` row's config (no scorer, this picker).
    from epp.bench.routers import CONFIG_DIR

    ds = Datastore()
    for i in range(4):
        ds.upsert_endpoint(Endpoint(name=f"p{i}", address="127.0.0.1", port=9000 + i))
    scheduler = load_scheduler_config(str(CONFIG_DIR / "epp-rr.yaml"), PluginContext(datastore=ds)).scheduler
    picks = Counter(
        scheduler.schedule(LLMRequest(request_id=str(i), model="m", target_model="m", prompt="p" * i),
                           ds.healthy_endpoints())[0].primary.targets[0].name  # type: ignore[union-attr]
        for i in range(40))
    assert picks == {"p0": 10, "p1": 10, "p2": 10, "p3": 10}
