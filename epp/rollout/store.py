"""The InferenceModelRewrites of the pool, with the API's precedence (llm-d's modelRewriteStore).

Written by the endpoint sources (local files, the Kubernetes reflector), read per request.
A lookup is one dict get; the index is rebuilt on every change (changes are rare).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from epp.rollout.api import ModelRewrite, RewriteRule


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A matched rule: the rewrite it belongs to and its index there (for metrics and state)."""

    rewrite: ModelRewrite
    index: int
    rule: RewriteRule

    @property
    def key(self) -> tuple[str, int]:
        return (self.rewrite.name, self.index)


class RewriteStore:
    def __init__(self) -> None:
        self._rewrites: dict[str, ModelRewrite] = {}
        self._seq: dict[str, int] = {}  # arrival order: the tie-break for equal timestamps
        self._next_seq = 0
        self._exact: dict[str, RuleRef] = {}
        self._generic: RuleRef | None = None
        self.generation = 0  # bumped on every change
        # Called after every change (Rollouts re-exports its weights at once, traffic or not).
        self.listeners: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._rewrites)

    def set(self, rewrite: ModelRewrite) -> None:
        if rewrite.name not in self._seq:
            self._seq[rewrite.name] = self._next_seq
            self._next_seq += 1
        self._rewrites[rewrite.name] = rewrite
        self._rebuild()

    def delete(self, name: str) -> None:
        if self._rewrites.pop(name, None) is not None:
            self._seq.pop(name, None)
            self._rebuild()

    def replace_all(self, rewrites: list[ModelRewrite]) -> None:
        """The whole set (local files): keeps the arrival order of names seen before."""
        names = {r.name for r in rewrites}
        for gone in set(self._rewrites) - names:
            self._rewrites.pop(gone)
            self._seq.pop(gone, None)
        for rewrite in rewrites:
            if rewrite.name not in self._seq:
                self._seq[rewrite.name] = self._next_seq
                self._next_seq += 1
            self._rewrites[rewrite.name] = rewrite
        self._rebuild()

    def rewrites(self) -> list[ModelRewrite]:
        return list(self._rewrites.values())

    def rule(self, model: str) -> RuleRef | None:
        """The rule that applies to `model`: an exact match first, else a generic rule."""
        ref = self._exact.get(model)
        return ref if ref is not None else self._generic

    def _rebuild(self) -> None:
        exact: dict[str, RuleRef] = {}
        generic: RuleRef | None = None
        # Oldest first, so the first rule claiming a model keeps it ("Timestamp Wins").
        for rewrite in sorted(self._rewrites.values(), key=lambda r: (r.created, self._seq[r.name])):
            for i, rule in enumerate(rewrite.rules):
                ref = RuleRef(rewrite, i, rule)
                if rule.generic:
                    if generic is None:
                        generic = ref
                    continue
                for model in rule.matches:
                    exact.setdefault(model, ref)
        self._exact, self._generic = exact, generic
        self.generation += 1
        for listener in self.listeners:
            listener()
