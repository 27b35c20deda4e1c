"""List + watch of one Kubernetes resource collection, client-go Reflector style.

The loop: LIST (paged) -> hand the full item set to the handler -> WATCH from the list's
resourceVersion with bookmarks -> resume the watch from the last seen resourceVersion when
the stream ends (server timeout, disconnect) -> on 410 Gone (HTTP status or an ERROR event
carrying a 410 Status) LIST again, because the events in between are gone for good. Errors
back off exponentially with jitter so that many EPP replicas do not hammer a recovering API
server in lockstep.

Objects are kept as decoded JSON dicts: the handler translates them (epp.k8s.resources), and
kubernetes-asyncio's model classes would cost a deserialization per event for nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client as k8s_client

from epp.aio import cancel_and_wait

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """A namespaced collection: core (`group=""`) or a custom resource."""

    plural: str
    namespace: str
    group: str = ""
    version: str = "v1"

    def describe(self) -> str:
        gv = f"{self.group}/{self.version}" if self.group else self.version
        return f"{self.plural}.{gv} in namespace {self.namespace}"


class WatchHandler(Protocol):
    def replace(self, items: list[JSON]) -> None:
        """The complete current set of objects (after every LIST)."""

    def event(self, event_type: str, obj: JSON) -> None:
        """One ADDED / MODIFIED / DELETED event."""


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: a delay in [d/2, d], d doubling up to `cap`."""

    initial: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    _attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return base * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


@dataclass(slots=True)
class ReflectorStats:
    lists: int = 0
    watches: int = 0
    expired: int = 0  # 410 Gone seen -> relist
    errors: int = 0
    events: int = 0
    bookmarks: int = 0


class ResourceExpiredError(Exception):
    """410 Gone: the watch's resourceVersion was compacted away; LIST again."""


class ResourceMissingError(Exception):
    """404 on the collection: the CRD is not installed (or the namespace is gone)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


async def _read_json(resp: Any) -> Any:
    body = await resp.read()
    return json.loads(body) if body else {}


async def _raise_for_status(resp: Any, what: str) -> None:
    if 200 <= resp.status < 300:
        return
    try:
        status_obj = await _read_json(resp)
        message = status_obj.get("message", "") if isinstance(status_obj, dict) else str(status_obj)
    except (ValueError, OSError):
        message = ""
    finally:
        resp.release()
    if resp.status == 410:
        raise ResourceExpiredError(f"{what}: {message}")
    if resp.status == 404:
        raise ResourceMissingError(f"{what}: {message}")
    raise ApiError(resp.status, f"{what}: {message or resp.reason}")


ListCall = Callable[..., Awaitable[Any]]


def list_call_for(api: k8s_client.ApiClient, ref: ResourceRef) -> ListCall:
    """The kubernetes-asyncio list function of `ref`, taking the shared list/watch kwargs."""
    if not ref.group:
        core = k8s_client.CoreV1Api(api)
        method = getattr(core, f"list_namespaced_{ref.plural.rstrip('s')}")

        async def call_core(**kwargs: Any) -> Any:
            return await method(ref.namespace, **kwargs)

        return call_core
    custom = k8s_client.CustomObjectsApi(api)

    async def call_custom(**kwargs: Any) -> Any:
        return await custom.list_namespaced_custom_object(
            ref.group, ref.version, ref.namespace, ref.plural, **kwargs
        )

    return call_custom


class Reflector:
    """Keeps a handler in sync with one collection until cancelled."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        ref: ResourceRef,
        handler: WatchHandler,
        *,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout_s: int = 300,
        page_size: int = 500,
        backoff: Backoff | None = None,
        missing_retry_s: float = 10.0,
        on_missing: Callable[[bool], None] | None = None,
    ) -> None:
        self.ref = ref
        # Told True when the collection turns out not to be served (404: CRD absent) and
        # False when it is served, so the owner can say what a missing CRD costs. None until
        # the first answer: a collection served from the start must be reported too (an owner
        # choosing between two API groups waits for it).
        self._on_missing = on_missing
        self.missing: bool | None = None
        self._list = list_call_for(api, ref)
        self._handler = handler
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._watch_timeout_s = watch_timeout_s
        self._page_size = page_size
        self._backoff = backoff or Backoff()
        self._missing_retry_s = missing_retry_s
        self._rng = random.Random()
        self.resource_version: str | None = None
        self.stats = ReflectorStats()
        self._synced = asyncio.Event()
        self._missing_logged = False

    def synced(self) -> bool:
        """True once a LIST succeeded (or the resource turned out not to exist)."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list_all()
                started = time.monotonic()
                got_events = await self._watch_once()
                if got_events or time.monotonic() - started >= 1.0:
                    self._backoff.reset()
                else:
                    # A watch that ends at once without delivering anything (a proxy that
                    # drops idle streams, a flapping server) must not become a hot loop.
                    await asyncio.sleep(self._backoff.next_delay())
            except asyncio.CancelledError:
                raise
            except ResourceExpiredError as e:
                self.stats.expired += 1
                log.info("%s: %s; relisting", self.ref.describe(), e)
                self.resource_version = None
            except ResourceMissingError as e:
                if not self._missing_logged:
                    # With an on_missing owner, the owner says what it means (it may be fine).
                    log.log(logging.INFO if self._on_missing else logging.WARNING,
                            "%s not served (%s); is the CRD installed? retrying every %gs",
                            self.ref.describe(), e, self._missing_retry_s)
                    self._missing_logged = True
                    self._set_missing(True)
                self.resource_version = None
                self._handler_replace([])
                self._synced.set()
                await asyncio.sleep(self._missing_retry_s)
            except Exception as e:
                self.stats.errors += 1
                delay = self._backoff.next_delay()
                log.warning("%s: list/watch failed (%s: %s); retrying in %.2fs",
                            self.ref.describe(), type(e).__name__, e, delay)
                await asyncio.sleep(delay)

    async def _list_all(self) -> None:
        items: list[JSON] = []
        cont = ""
        while True:
            kwargs: dict[str, Any] = dict(self._selectors, limit=self._page_size)
            if cont:
                kwargs["_continue"] = cont
            resp = await self._list(_preload_content=False, _request_timeout=(10, 60), **kwargs)
            await _raise_for_status(resp, f"list {self.ref.describe()}")
            try:
                body = await _read_json(resp)
            finally:
                resp.release()
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                break
        self.stats.lists += 1
        self.resource_version = str(meta.get("resourceVersion") or "")
        self._missing_logged = False
        self._set_missing(False)
        self._handler_replace(items)
        self._backoff.reset()
        self._synced.set()

    async def _watch_once(self) -> bool:
        """One watch request, until the server ends the stream. True if anything arrived."""
        # Spread the reconnects of many replicas (client-go: minWatchTimeout * [1, 2)).
        timeout_s = int(self._watch_timeout_s * (1.0 + self._rng.random()))
        kwargs: dict[str, Any] = dict(self._selectors)
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        resp = await self._list(
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _preload_content=False,
            # The server ends the stream after timeout_s; the read timeout only catches a
            # connection that died silently.
            _request_timeout=(10, timeout_s + 30),
            **kwargs,
        )
        await _raise_for_status(resp, f"watch {self.ref.describe()}")
        self.stats.watches += 1
        got_any = False
        try:
            while True:
                line = await resp.content.readline()
                if not line:
                    return got_any
                if not line.strip():
                    continue
                got_any = True
                self._dispatch(json.loads(line))
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as e:
            log.info("%s: watch stream ended (%s); resuming", self.ref.describe(), type(e).__name__)
            return got_any
        finally:
            resp.release()

    def _dispatch(self, ev: JSON) -> None:
        ev_type = ev.get("type")
        obj = ev.get("object") or {}
        if ev_type == "ERROR":
            code = obj.get("code")
            message = obj.get("message", "")
            if code == 410:
                raise ResourceExpiredError(message or "resource version too old")
            raise ApiError(int(code or 500), f"watch {self.ref.describe()}: {message}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if ev_type == "BOOKMARK":
            self.stats.bookmarks += 1
            if rv:
                self.resource_version = str(rv)
            return
        if ev_type not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("%s: ignoring unknown watch event type %r", self.ref.describe(), ev_type)
            return
        self.stats.events += 1
        try:
            self._handler.event(ev_type, obj)
        except Exception:  # a bad object must not stop the stream for every other object
            log.exception("%s: handler failed on %s event", self.ref.describe(), ev_type)
        if rv:
            self.resource_version = str(rv)

    def _set_missing(self, missing: bool) -> None:
        if missing == self.missing:
            return
        self.missing = missing
        if self._on_missing is not None:
            try:
                self._on_missing(missing)
            except Exception:
                log.exception("%s: missing-collection callback failed", self.ref.describe())

    def _handler_replace(self, items: list[JSON]) -> None:
        try:
            self._handler.replace(items)
        except Exception:
            log.exception("%s: handler failed on relist", self.ref.describe())


class ReflectorTask:
    """A reflector running as a task; stop() cancels and awaits it."""

    def __init__(self, reflector: Reflector) -> None:
        self.reflector = reflector
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.reflector.run(), name=f"reflector {self.reflector.ref.plural}")

    def cancel(self) -> None:
        """Request cancellation without waiting (safe inside another reflector's callback)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
