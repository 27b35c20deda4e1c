from __future__ import annotations

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, Role


def test_listeners_snapshots_and_health() -> None:
    ds = Datastore()
    events: list[tuple[str, str]] = []

    def listener(event: str, ep: Endpoint) -> None:
        events.append((event, ep.name))

    ds.add_listener(listener)
    a = ds.upsert_endpoint(Endpoint("a", "127.0.0.1", 8000, labels={"llm-d.ai/role": "prefill"}))
    b = ds.upsert_endpoint(Endpoint("b", "::1", 8000))
    assert a.role is Role.PREFILL and f"{a.role}" == "prefill"
    assert b.hostport == "[::1]:8000" and ds.by_hostport("[::1]:8000") is b
    snapshot = ds.healthy_endpoints()
    assert snapshot is ds.healthy_endpoints()  # cached until the set changes
    ds.set_health(a, False)
    assert ds.healthy_endpoints() == (b,) and ds.endpoints() == (a, b)
    ds.set_health(a, False)  # no change, no event
    # same key, same address: the object (and its metrics) is kept, labels updated
    same = ds.upsert_endpoint(Endpoint("a", "127.0.0.1", 8000, labels={"zone": "x"}))
    assert same is a and a.labels == {"zone": "x"} and a.role is Role.BOTH
    ds.remove_listener(listener)
    ds.remove_listener(listener)  # idempotent
    ds.remove_endpoint("default/b")
    assert events == [("added", "a"), ("added", "b"), ("updated", "a"), ("updated", "a")]
