"""InferenceModelRewrites of the pool from the API server (epp/rollout/api.py has the shape).

One reflector per API group: llm-d.ai (where the llm-d router ships the CRD) and GIE's
inference.networking.x-k8s.io. As for InferenceObjectives, llm-d.ai wins while it is served;
the legacy group's objects count only when llm-d.ai is not installed. Objects whose poolRef
names another pool are ignored; a malformed one is logged and skipped (the others still apply).
The chosen group's objects replace the Datastore's RewriteStore on every change, so a weight
edit (`kubectl apply`) takes effect on the next request.
"""

from __future__ import annotations

import logging

from epp.k8s.reflector import JSON
from epp.rollout.api import GROUPS, KIND, RewriteError, parse_model_rewrite
from epp.rollout.store import RewriteStore

log = logging.getLogger(__name__)


class RewriteGroups:
    """Keeps the store in sync with the preferred group's objects."""

    def __init__(self, store: RewriteStore, pool_name: str) -> None:
        self.store = store
        self.pool_name = pool_name
        self.objects: dict[str, dict[str, JSON]] = {g: {} for g in GROUPS}
        self.missing: dict[str, bool | None] = {g: None for g in GROUPS}

    def handler(self, group: str) -> RewriteHandler:
        return RewriteHandler(self, group)

    def active_group(self) -> str:
        preferred, legacy = GROUPS
        return legacy if self.missing[preferred] is True else preferred

    def apply(self) -> None:
        rewrites = []
        for obj in self.objects[self.active_group()].values():
            try:
                rewrite = parse_model_rewrite(obj)
            except RewriteError as e:
                log.error("ignoring %s", e)
                continue
            if rewrite.pool_name == self.pool_name:
                rewrites.append(rewrite)
        self.store.replace_all(rewrites)


class RewriteHandler:
    """WatchHandler of one group's InferenceModelRewrites."""

    def __init__(self, groups: RewriteGroups, group: str) -> None:
        self.groups = groups
        self.group = group

    def replace(self, items: list[JSON]) -> None:
        self.groups.objects[self.group] = {str((o.get("metadata") or {}).get("name", "")): o for o in items}
        self.groups.apply()

    def event(self, event_type: str, obj: JSON) -> None:
        obj.setdefault("kind", KIND)
        name = str((obj.get("metadata") or {}).get("name", ""))
        if event_type == "DELETED":
            self.groups.objects[self.group].pop(name, None)
        else:
            self.groups.objects[self.group][name] = obj
        self.groups.apply()

    def missing(self, missing: bool) -> None:
        if self.groups.missing[self.group] != missing:
            self.groups.missing[self.group] = missing
            if missing:
                log.info("InferenceModelRewrite CRD not served in group %s", self.group)
            self.groups.apply()
