"""Leader election on a coordination.k8s.io/v1 Lease (client-go leaderelection semantics).

Every EPP replica serves requests; the leader only runs what must happen once per pool
(see docs/kubernetes.md: e.g. writing pool status, cluster-wide pool gauges). A candidate:
- reads the Lease; creates it if missing (the create races are settled by the API server);
- takes it over when the holder is empty or the holder has not renewed for
  leaseDurationSeconds, measured on the candidate's own clock from when it last *saw* the
  record change (clocks of different nodes are never compared);
- as leader, renews every retry period and steps down when it could not renew for
  renew_deadline (so it stops acting before anyone else may take over at lease_duration);
- on stop, releases the Lease (empty holder) so a successor need not wait the full duration.
Writes carry metadata.resourceVersion: a concurrent writer gets 409 Conflict, never a split.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s_client

from epp.aio import cancel_and_wait

log = logging.getLogger(__name__)

LeadershipCallback = Callable[[], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s > 0:
            raise ValueError(
                "leader election needs lease_duration > renew_deadline > retry_period > 0, got "
                f"{self.lease_duration_s} / {self.renew_deadline_s} / {self.retry_period_s}"
            )
        if not self.identity:
            raise ValueError("leader election needs a non-empty identity (pod name)")


def _micro_time(now: float) -> str:
    """metav1.MicroTime wire format."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: k8s_client.ApiClient,
        config: LeaseConfig,
        on_started_leading: LeadershipCallback | None = None,
        on_stopped_leading: LeadershipCallback | None = None,
    ) -> None:
        self.config = config
        # Any: we pass and read raw JSON (_preload_content=False), not the typed models.
        self._api: Any = k8s_client.CoordinationV1Api(api)
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leader = False
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0  # monotonic time the observed record last changed
        self._resource_version = ""
        self._task: asyncio.Task[None] | None = None
        self.observed_holder = ""
        self.transitions = 0  # times this candidate became leader

    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"leader-election {self.config.name}")

    async def stop(self) -> None:
        """Stop campaigning; a leader releases the lease."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def run(self) -> None:
        try:
            while True:
                await self._acquire()
                await self._set_leader(True)
                await self._renew_until_lost()
                await self._set_leader(False)
        finally:
            if self._leader:
                # Stop acting as leader before the lease is handed over, never after.
                self._leader = False
                await asyncio.shield(self._release())
                await self._call(self._on_stopped)

    async def _set_leader(self, leader: bool) -> None:
        self._leader = leader
        if leader:
            self.transitions += 1
            log.info("%s became leader of lease %s/%s", self.config.identity,
                     self.config.namespace, self.config.name)
            await self._call(self._on_started)
        else:
            log.warning("%s lost lease %s/%s", self.config.identity, self.config.namespace, self.config.name)
            await self._call(self._on_stopped)

    @staticmethod
    async def _call(cb: LeadershipCallback | None) -> None:
        if cb is None:
            return
        try:
            result = cb()
            if result is not None:
                await result
        except Exception:
            log.exception("leader election callback failed")

    def _jittered(self, period: float) -> float:
        return period * (1.0 + 0.2 * random.random())

    async def _acquire(self) -> None:
        while True:
            if await self._try_acquire_or_renew():
                return
            await asyncio.sleep(self._jittered(self.config.retry_period_s))

    async def _renew_until_lost(self) -> None:
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period_s)
            try:
                ok = await asyncio.wait_for(
                    self._try_acquire_or_renew(), self.config.renew_deadline_s
                )
            except TimeoutError:
                ok = False
            if ok:
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew >= self.config.renew_deadline_s:
                return

    async def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = time.time()
        try:
            resp = await self._api.read_namespaced_lease(
                cfg.name, cfg.namespace, _preload_content=False, _request_timeout=cfg.renew_deadline_s
            )
            status, body = resp.status, await resp.read()
            resp.release()
            if status == 404:
                return await self._create(now)
            if status != 200:
                log.warning("read lease %s/%s: HTTP %s", cfg.namespace, cfg.name, status)
                return False
            lease = json.loads(body)
            spec: dict[str, Any] = lease.get("spec") or {}
            self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
            if spec != self._observed_spec:
                self._observed_spec = spec
                self._observed_at = time.monotonic()
            holder = str(spec.get("holderIdentity") or "")
            self.observed_holder = holder
            duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration_s)
            if holder and holder != cfg.identity and time.monotonic() < self._observed_at + duration:
                return False  # held by someone else and not expired
            new_spec = {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": max(1, round(cfg.lease_duration_s)),
                "acquireTime": spec.get("acquireTime") if holder == cfg.identity else _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": int(spec.get("leaseTransitions") or 0)
                + (0 if holder == cfg.identity else 1),
            }
            return await self._replace(new_spec)
        except (TimeoutError, OSError, ValueError) as e:
            log.warning("lease %s/%s: %s: %s", cfg.namespace, cfg.name, type(e).__name__, e)
            return False
        except Exception as e:
            log.warning("lease %s/%s: %s: %s", cfg.namespace, cfg.name, type(e).__name__, e)
            return False

    def _body(self, spec: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if self._resource_version:
            meta["resourceVersion"] = self._resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def _write_done(self, resp: Any) -> bool:
        status, body = resp.status, await resp.read()
        resp.release()
        if status in (200, 201):
            lease = json.loads(body)
            self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
            self._observed_spec = lease.get("spec") or {}
            self._observed_at = time.monotonic()
            self.observed_holder = str(self._observed_spec.get("holderIdentity") or "")
            return True
        if status != 409:  # 409: another candidate won the race; not worth a warning
            log.warning("write lease %s/%s: HTTP %s %s", self.config.namespace, self.config.name,
                        status, body[:200])
        return False

    async def _create(self, now: float) -> bool:
        self._resource_version = ""
        spec = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration_s)),
            "acquireTime": _micro_time(now),
            "renewTime": _micro_time(now),
            "leaseTransitions": 0,
        }
        resp = await self._api.create_namespaced_lease(
            self.config.namespace, self._body(spec), _preload_content=False,
            _request_timeout=self.config.renew_deadline_s,
        )
        return await self._write_done(resp)

    async def _replace(self, spec: dict[str, Any]) -> bool:
        resp = await self._api.replace_namespaced_lease(
            self.config.name, self.config.namespace, self._body(spec), _preload_content=False,
            _request_timeout=self.config.renew_deadline_s,
        )
        return await self._write_done(resp)

    async def _release(self) -> None:
        """Hand the lease back (empty holder, 1 s duration) so a successor takes over now."""
        if self._observed_spec is None:
            return
        spec = dict(self._observed_spec)
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time(time.time()))
        try:
            await asyncio.wait_for(self._replace(spec), self.config.retry_period_s)
        except Exception as e:
            log.info("releasing lease %s/%s failed (%s: %s); it expires in %.0fs", self.config.namespace,
                     self.config.name, type(e).__name__, e, self.config.lease_duration_s)
