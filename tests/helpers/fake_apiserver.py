"""A Kubernetes API server stand-in for tests: real HTTP on 127.0.0.1, real wire protocol.

It speaks what kubernetes-asyncio and epp.k8s use, with the API server's semantics:
- LIST  GET /api/v1/namespaces/{ns}/{plural} and /apis/{group}/{version}/namespaces/{ns}/{plural}
  -> `{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}`; labelSelector
  (`k=v`, `k==v`, `k!=v`), fieldSelector (`metadata.name=`), limit/continue paging.
- WATCH (same path, `watch=true`) -> chunked, newline-delimited JSON events ADDED / MODIFIED /
  DELETED / BOOKMARK (only with allowWatchBookmarks) / ERROR (a Status; 410 Expired when the
  requested resourceVersion was compacted). Without a resourceVersion the watch starts with
  synthetic ADDED events for the current objects. With a selector, an object that stops
  (starts) matching is sent as DELETED (ADDED). timeoutSeconds ends the stream.
- GET / POST / PUT / DELETE of single objects (Leases for leader election), with optimistic
  concurrency: a PUT whose metadata.resourceVersion is stale gets 409 Conflict.
- Bearer-token auth (401 without the token of the generated kubeconfig).

Tests drive it synchronously: `put()`, `delete()`, `bookmark()`, `expire_watches()`,
`compact()`, `disconnect_watches()`, `fail_next()`, and the pod/pool helpers. Only ever bind
to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
TOKEN = "epp-test-token"
_ABORT = b""  # queue marker: abort the watch connection without a final chunk

KINDS = {
    ("", "pods"): ("v1", "Pod"),
    ("coordination.k8s.io", "leases"): ("coordination.k8s.io/v1", "Lease"),
    ("inference.networking.k8s.io", "inferencepools"): ("inference.networking.k8s.io/v1", "InferencePool"),
    ("inference.networking.x-k8s.io", "inferencepools"): (
        "inference.networking.x-k8s.io/v1alpha2", "InferencePool"),
    ("inference.networking.x-k8s.io", "inferenceobjectives"): (
        "inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"),
    ("llm-d.ai", "inferenceobjectives"): ("llm-d.ai/v1alpha2", "InferenceObjective"),
    ("inference.networking.x-k8s.io", "inferencemodels"): (
        "inference.networking.x-k8s.io/v1alpha2", "InferenceModel"),
    ("llm-d.ai", "inferencemodelrewrites"): ("llm-d.ai/v1alpha2", "InferenceModelRewrite"),
    ("inference.networking.x-k8s.io", "inferencemodelrewrites"): (
        "inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite"),
}


def _status(code: int, reason: str, message: str) -> JSON:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d` -> [(a, '=', b), (c, '!=', d)]."""
    out: list[tuple[str, str, str]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                k, v = term.split(op, 1)
                out.append((k.strip(), "!=" if op == "!=" else "=", v.strip()))
                break
        else:
            raise ValueError(f"unsupported selector term {term!r}")
    return out


def _truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool true values, as the API server parses query booleans."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _field(obj: JSON, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


@dataclass(slots=True, eq=False)
class _Watch:
    collection: str
    labels: list[tuple[str, str, str]]
    fields: list[tuple[str, str, str]]
    bookmarks: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for k, op, v in self.labels:
            if (labels.get(k) == v) != (op == "="):
                return False
        return all((_field(obj, k) == v) == (op == "=") for k, op, v in self.fields)

    def translate(self, ev_type: str, old: JSON | None, new: JSON) -> str | None:
        """The event this watcher sees for a change old -> new (None: not at all)."""
        if ev_type == "DELETED":
            return "DELETED" if self.matches(new) else None
        was, now = self.matches(old), self.matches(new)
        if was and now:
            return "MODIFIED"
        if now:
            return "ADDED"
        if was:
            return "DELETED"
        return None


@dataclass(slots=True)
class _Change:
    rv: int
    ev_type: str
    old: JSON | None
    new: JSON


class FakeApiServer:
    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self._rv = 100
        self._objects: dict[str, dict[str, JSON]] = {}
        self._history: dict[str, list[_Change]] = {}
        self._compacted_rv = 0
        self._watches: set[_Watch] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # Collections answered with 404 (CRD absent): "plural" (every group) or "plural.group".
        self.missing_plurals: set[str] = set()
        self.expired_as_http_410 = False  # answer a stale watch with HTTP 410 instead of an event
        self._failures: list[int] = []
        self.watch_connections = 0

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets: Any = getattr(site._server, "sockets", None)
        if not sockets:
            raise RuntimeError("fake API server did not bind a socket")
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.disconnect_watches(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                       "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    # --- driving the state --------------------------------------------------------------
    @staticmethod
    def collection(plural: str, namespace: str = "default", group: str = "", version: str = "v1") -> str:
        if group:
            return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
        return f"/api/v1/namespaces/{namespace}/{plural}"

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def put(self, collection: str, obj: JSON) -> JSON:
        """Create or replace an object (no concurrency check); notifies watchers."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta["name"]
        items = self._objects.setdefault(collection, {})
        old = items.get(name)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        meta.setdefault("namespace", collection.split("/namespaces/")[1].split("/")[0])
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        items[name] = obj
        self._record(collection, _Change(rv, "MODIFIED" if old else "ADDED", old, obj))
        return copy.deepcopy(obj)

    def delete(self, collection: str, name: str) -> JSON | None:
        old = self._objects.get(collection, {}).pop(name, None)
        if old is None:
            return None
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self._record(collection, _Change(int(gone["metadata"]["resourceVersion"]), "DELETED", old, gone))
        return gone

    def get(self, collection: str, name: str) -> JSON | None:
        obj = self._objects.get(collection, {}).get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def _record(self, collection: str, change: _Change) -> None:
        self._history.setdefault(collection, []).append(change)
        for w in list(self._watches):
            if w.collection == collection:
                ev = w.translate(change.ev_type, change.old, change.new)
                if ev is not None:
                    w.queue.put_nowait(self._event_line(ev, change.new))

    def _event_line(self, ev_type: str, obj: JSON) -> bytes:
        return json.dumps({"type": ev_type, "object": obj}).encode() + b"\n"

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to watchers that asked for them."""
        n = 0
        for w in list(self._watches):
            if w.bookmarks:
                api_version, kind = self._kind_of(w.collection)
                obj = {"kind": kind, "apiVersion": api_version,
                       "metadata": {"resourceVersion": str(self._rv)}}
                w.queue.put_nowait(self._event_line("BOOKMARK", obj))
                n += 1
        return n

    def compact(self) -> None:
        """Forget history up to now: a watch from an older resourceVersion gets 410."""
        self._compacted_rv = self._rv
        for changes in self._history.values():
            changes.clear()

    def expire_watches(self) -> int:
        """End every open watch with an ERROR event carrying a 410 Status (and compact)."""
        self.compact()
        n = 0
        for w in list(self._watches):
            w.queue.put_nowait(self._event_line(
                "ERROR", _status(410, "Expired", "too old resource version")))
            w.queue.put_nowait(None)
            n += 1
        return n

    def disconnect_watches(self, abrupt: bool = True) -> int:
        """Drop every open watch: abort the TCP connection (abrupt) or end the stream cleanly."""
        n = 0
        for w in list(self._watches):
            w.queue.put_nowait(_ABORT if abrupt else None)
            n += 1
        return n

    def fail_next(self, count: int, status: int = 500) -> None:
        """The next `count` requests get `status` with a Status body."""
        self._failures.extend([status] * count)

    def open_watches(self, plural: str | None = None) -> int:
        return sum(1 for w in self._watches if plural is None or w.collection.endswith("/" + plural))

    # --- convenience for pods and CRDs --------------------------------------------------
    def put_pod(self, name: str, ip: str, labels: dict[str, str], *, ready: bool = True,
                namespace: str = "default", terminating: bool = False) -> JSON:
        meta: JSON = {"name": name, "namespace": namespace, "labels": labels}
        if terminating:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
        return self.put(self.collection("pods", namespace), pod)

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        self.delete(self.collection("pods", namespace), name)

    def put_pool_v1(self, name: str, selector: dict[str, str], ports: list[int], *,
                    namespace: str = "default", epp: str = "epp") -> JSON:
        pool = {
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": selector},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": epp, "port": {"number": 9002},
                                           "failureMode": "FailClose"}},
        }
        coll = self.collection("inferencepools", namespace, "inference.networking.k8s.io", "v1")
        return self.put(coll, pool)

    def put_objective(self, name: str, pool: str, priority: int, namespace: str = "default",
                      group: str = "llm-d.ai") -> JSON:
        obj = {
            "apiVersion": f"{group}/v1alpha2", "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"priority": priority, "poolRef": {"name": pool}},
        }
        return self.put(self.collection("inferenceobjectives", namespace, group, "v1alpha2"), obj)

    # --- HTTP ---------------------------------------------------------------------------
    @staticmethod
    def _split(path: str) -> tuple[str, str, str, str | None] | None:
        """path -> (collection, group, plural, name or None)."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"] and len(parts) in (5, 6) and parts[2] == "namespaces":
            group, n_base = "", 5
        elif parts[:1] == ["apis"] and len(parts) in (6, 7) and parts[3] == "namespaces":
            group, n_base = parts[1], 6
        else:
            return None
        base = parts[:n_base]
        plural = parts[n_base - 1]
        name = parts[n_base] if len(parts) > n_base else None
        return "/" + "/".join(base), group, plural, name

    def _kind_of(self, collection: str) -> tuple[str, str]:
        parts = [p for p in collection.split("/") if p]
        group = parts[1] if parts[0] == "apis" else ""
        return KINDS.get((group, parts[-1]), ("v1", parts[-1].rstrip("s").capitalize()))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.method, request.path, query))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        if self._failures:
            code = self._failures.pop(0)
            return web.json_response(_status(code, "InternalError", "injected failure"), status=code)
        split = self._split(request.path)
        if split is None:
            return web.json_response(_status(404, "NotFound", f"no route {request.path}"), status=404)
        collection, group, plural, name = split
        if plural in self.missing_plurals or f"{plural}.{group}" in self.missing_plurals:
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"), status=404)
        if name is None and request.method == "GET":
            if _truthy(query.get("watch")):
                return await self._watch(request, collection, query)
            return self._list(collection, query)
        if name is None and request.method == "POST":
            return await self._create(request, collection)
        if name is not None and request.method == "GET":
            obj = self.get(collection, name)
            if obj is None:
                return web.json_response(_status(404, "NotFound", f'"{name}" not found'), status=404)
            return web.json_response(obj)
        if name is not None and request.method == "PUT":
            return await self._replace(request, collection, name)
        if name is not None and request.method == "DELETE":
            gone = self.delete(collection, name)
            if gone is None:
                return web.json_response(_status(404, "NotFound", f'"{name}" not found'), status=404)
            return web.json_response(gone)
        return web.json_response(_status(405, "MethodNotAllowed", request.method), status=405)

    def _filtered(self, collection: str, query: dict[str, str]) -> _Watch:
        return _Watch(
            collection=collection,
            labels=_parse_selector(query.get("labelSelector", "")),
            fields=_parse_selector(query.get("fieldSelector", "")),
            bookmarks=_truthy(query.get("allowWatchBookmarks")),
        )

    def _list(self, collection: str, query: dict[str, str]) -> web.Response:
        try:
            flt = self._filtered(collection, query)
        except ValueError as e:
            return web.json_response(_status(400, "BadRequest", str(e)), status=400)
        items = sorted(
            (o for o in self._objects.get(collection, {}).values() if flt.matches(o)),
            key=lambda o: o["metadata"]["name"],
        )
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        page = items[start:start + limit] if limit else items[start:]
        meta: JSON = {"resourceVersion": str(self._rv)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
        api_version, kind = self._kind_of(collection)
        return web.json_response({"kind": f"{kind}List", "apiVersion": api_version,
                                  "metadata": meta, "items": page})

    async def _watch(
        self, request: web.Request, collection: str, query: dict[str, str]
    ) -> web.StreamResponse:
        try:
            w = self._filtered(collection, query)
        except ValueError as e:
            return web.json_response(_status(400, "BadRequest", str(e)), status=400)
        rv_text = query.get("resourceVersion", "")
        rv = int(rv_text) if rv_text.isdigit() else 0
        if rv and rv < self._compacted_rv and self.expired_as_http_410:
            return web.json_response(_status(410, "Expired", "too old resource version"), status=410)
        initial: list[bytes] = []
        if rv and rv < self._compacted_rv:
            initial.append(self._event_line("ERROR", _status(410, "Expired", "too old resource version")))
            w.queue.put_nowait(None)
        elif rv:
            for ch in self._history.get(collection, []):
                if ch.rv > rv:
                    ev = w.translate(ch.ev_type, ch.old, ch.new)
                    if ev is not None:
                        initial.append(self._event_line(ev, ch.new))
        else:
            current = self._objects.get(collection, {})
            for obj in sorted(current.values(), key=lambda o: o["metadata"]["name"]):
                if w.matches(obj):
                    initial.append(self._event_line("ADDED", obj))
        # Registered before the first await so that no change can slip between replay and live.
        self._watches.add(w)
        self.watch_connections += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            await resp.prepare(request)
            for line in initial:
                await resp.write(line)
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    line_or_end = await asyncio.wait_for(w.queue.get(), remaining)
                except TimeoutError:
                    break
                if line_or_end is None:
                    break
                if line_or_end is _ABORT:
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                await resp.write(line_or_end)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(w)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _create(self, request: web.Request, collection: str) -> web.Response:
        body = await request.json()
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return web.json_response(_status(422, "Invalid", "metadata.name is required"), status=422)
        if self.get(collection, name) is not None:
            return web.json_response(_status(409, "AlreadyExists", f'"{name}" already exists'), status=409)
        body["metadata"].pop("resourceVersion", None)
        return web.json_response(self.put(collection, body), status=201)

    async def _replace(self, request: web.Request, collection: str, name: str) -> web.Response:
        body = await request.json()
        current = self.get(collection, name)
        if current is None:
            return web.json_response(_status(404, "NotFound", f'"{name}" not found'), status=404)
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            return web.json_response(_status(
                409, "Conflict",
                f'Operation cannot be fulfilled on "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"), status=409)
        return web.json_response(self.put(collection, body))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `predicate` on the event loop until true; TimeoutError names what was awaited."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            name = getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition {name} not met within {timeout}s")
        await asyncio.sleep(interval)
