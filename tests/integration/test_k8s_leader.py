"""Leader election on the API-server stand-in's coordination.k8s.io/v1 Lease endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient

from epp.datastore.datastore import Datastore
from epp.k8s.cli import KubernetesOptions
from epp.k8s.client import new_api_client
from epp.k8s.leader import LeaderElector, LeaseConfig
from epp.k8s.source import KubernetesSource
from tests.helpers.fake_apiserver import FakeApiServer, wait_until

LEASES = FakeApiServer.collection("leases", "default", "coordination.k8s.io", "v1")


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(api: FakeApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    c = await new_api_client(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield c
    finally:
        await c.close()


def _config(identity: str, lease_duration_s: float = 4.0, renew_deadline_s: float = 3.0) -> LeaseConfig:
    # Generous deadlines so a loaded CI machine cannot make the leader miss its renewals;
    # handover in these tests never waits for expiry except where a test says so.
    return LeaseConfig(namespace="default", name="pool-epp-leader", identity=identity,
                       lease_duration_s=lease_duration_s, renew_deadline_s=renew_deadline_s,
                       retry_period_s=0.1)


async def test_two_candidates_one_leader_and_handover(api: FakeApiServer, client: ApiClient) -> None:
    events: list[str] = []
    a = LeaderElector(client, _config("epp-a"), lambda: events.append("a+"), lambda: events.append("a-"))
    b = LeaderElector(client, _config("epp-b"), lambda: events.append("b+"), lambda: events.append("b-"))
    both_seen = 0

    def exactly_one() -> bool:
        nonlocal both_seen
        both_seen += a.is_leader() and b.is_leader()
        return a.is_leader() != b.is_leader()

    a.start()
    b.start()
    try:
        await wait_until(exactly_one)
        leader, follower = (a, b) if a.is_leader() else (b, a)
        lease = api.get(LEASES, "pool-epp-leader")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == leader.config.identity
        assert lease["spec"]["leaseDurationSeconds"] == 4
        # Several renew rounds: the leader keeps it, the follower never takes it.
        renewed = lease["metadata"]["resourceVersion"]
        await wait_until(lambda: api.get(LEASES, "pool-epp-leader")["metadata"]["resourceVersion"] != renewed)  # type: ignore[index]
        for _ in range(5):
            assert exactly_one() and leader.is_leader()
            await asyncio.sleep(0.05)
        # Graceful stop releases the lease; the follower takes over.
        await leader.stop()
        assert not leader.is_leader()
        await wait_until(follower.is_leader)
        lease = api.get(LEASES, "pool-epp-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == follower.config.identity
        assert lease["spec"]["leaseTransitions"] >= 1
        assert both_seen == 0
        first = leader.config.identity[-1]
        assert events[:2] == [f"{first}+", f"{first}-"]
    finally:
        await a.stop()
        await b.stop()


async def test_leader_steps_down_when_lease_is_taken(api: FakeApiServer, client: ApiClient) -> None:
    stopped = asyncio.Event()
    a = LeaderElector(client, _config("epp-a", lease_duration_s=2.0, renew_deadline_s=1.5), None, stopped.set)
    a.start()
    try:
        await wait_until(a.is_leader)
        lease = api.get(LEASES, "pool-epp-leader")
        assert lease is not None
        # Someone else holds the lease now (as after a partition); it never renews.
        lease["spec"]["holderIdentity"] = "intruder"
        api.put(LEASES, lease)
        await asyncio.wait_for(stopped.wait(), 10)
        assert not a.is_leader()
        # The intruder's lease expires (2 s without renewal) and a re-acquires it.
        await wait_until(a.is_leader, timeout=20)
        assert a.transitions == 2
    finally:
        await a.stop()


async def test_write_conflict_is_not_leadership(api: FakeApiServer, client: ApiClient) -> None:
    """A PUT with a stale resourceVersion gets 409 and must not make the candidate leader."""
    api.put(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "pool-epp-leader"},
                     "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}})
    a = LeaderElector(client, _config("epp-a"))
    ok = await a._try_acquire_or_renew()
    assert ok and a.is_leader() is False  # acquired; is_leader flips in run(), not here
    a._resource_version = "1"  # stale
    assert await a._replace({"holderIdentity": "epp-a", "leaseDurationSeconds": 1}) is False


async def test_sources_with_leader_election(api: FakeApiServer, tmp_path: Path) -> None:
    api.put_pool_v1("pool", {"app": "x"}, [8000])
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    sources = [
        KubernetesSource(
            KubernetesOptions(pool_name="pool", kubeconfig=kubeconfig, leader_elect=True, identity=name,
                              lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.1),
            Datastore(),
        )
        for name in ("epp-0", "epp-1")
    ]
    for s in sources:
        await s.start()
    try:
        await wait_until(lambda: all(s.synced() for s in sources))  # every replica serves
        await wait_until(lambda: sum(s.is_leader() for s in sources) == 1)
        lease = api.get(LEASES, "pool-epp-leader")
        leader = next(s for s in sources if s.is_leader())
        assert lease is not None and lease["spec"]["holderIdentity"] == leader.options.identity
    finally:
        for s in sources:
            await s.stop()
