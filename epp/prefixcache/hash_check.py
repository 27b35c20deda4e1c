"""Detects a mismatch between the EPP's block-hash settings and the pods'.

Precise prefix routing only works if the EPP computes exactly the block hashes the pods
publish: same `--prefix-caching-hash-algo`, same seed (PYTHONHASHSEED), same `--block-size`,
same tokenizer and chat template. A mismatch silently degrades routing to "no pod ever
matches", so two independent signals are watched:

1. Stored-hash check: a BlockStored event carries the block's token ids; the checker
   recomputes the chained hashes itself and compares them to the published ones. Events whose
   parent hash it does not know (its full digest is not derivable from the 64-bit wire form)
   are skipped, as are multimodal blocks (their extra keys are not reproducible here).
2. Hit check: a response in which the pod reports cached prompt tokens (usage
   prompt_tokens_details.cached_tokens) for a request where the index predicted no match at
   all on that event-publishing pod.

When the mismatch rate of a pod's recent window passes the threshold, an error naming the
likely settings is logged (at most once per `log_interval_s` per pod) and the ratio is
exposed as a metric.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from epp.prefixcache.block_hash import BlockHash, BlockHasher, lora_extra_keys, wire_hash
from epp.prefixcache.events import BlockStored

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PodHashHealth:
    """Recent hash-check outcomes of one pod (True = mismatch)."""

    stored: deque[bool] = field(default_factory=lambda: deque(maxlen=256))
    hits: deque[bool] = field(default_factory=lambda: deque(maxlen=256))
    block_size_mismatches: int = 0
    last_reported_block_size: int = 0
    last_logged_at: float = 0.0

    @staticmethod
    def _ratio(window: deque[bool]) -> float:
        return sum(window) / len(window) if window else 0.0

    def stored_mismatch_ratio(self) -> float:
        return self._ratio(self.stored)

    def hit_mismatch_ratio(self) -> float:
        return self._ratio(self.hits)


@dataclass(slots=True)
class HashCheckTotals:
    stored_checked: int = 0
    stored_mismatched: int = 0
    stored_skipped: int = 0
    hit_checked: int = 0
    hit_mismatched: int = 0


def _lora_only(extra: object, lora_name: str | None) -> bool:
    """True if a block's extra keys are absent or only the LoRA name (msgpack turns the
    tuple into a list)."""
    if extra is None:
        return True
    return isinstance(extra, list | tuple) and list(extra) == [lora_name]


class HashSettingsChecker:
    def __init__(
        self,
        hasher: BlockHasher,
        *,
        window: int = 256,
        threshold: float = 0.5,
        min_samples: int = 32,
        max_known_hashes: int = 100_000,
        log_interval_s: float = 60.0,
    ) -> None:
        self.hasher = hasher
        self.window = window
        self.threshold = threshold
        self.min_samples = min_samples
        self.max_known_hashes = max_known_hashes
        self.log_interval_s = log_interval_s
        # wire hash -> full digest of blocks whose hash we reproduced: lets us verify the
        # continuation of a chain (events with a parent) without the lossy 64-bit wire form.
        self._known: OrderedDict[int | bytes, BlockHash] = OrderedDict()
        # Published hashes we could not reproduce (values unused), to judge their children.
        self._failed: OrderedDict[int | bytes, BlockHash] = OrderedDict()
        self._pods: dict[str, PodHashHealth] = {}
        self.totals = HashCheckTotals()

    def pod(self, pod: str) -> PodHashHealth:
        health = self._pods.get(pod)
        if health is None:
            health = PodHashHealth(
                stored=deque(maxlen=self.window), hits=deque(maxlen=self.window)
            )
            self._pods[pod] = health
        return health

    def forget_pod(self, pod: str) -> None:
        self._pods.pop(pod, None)

    def pods(self) -> dict[str, PodHashHealth]:
        return dict(self._pods)

    # --- signal 1: stored hashes ----------------------------------------------------------
    def check_stored(self, pod: str, event: BlockStored) -> None:
        hashes = event.block_hashes
        tokens = event.token_ids
        if not hashes or not tokens:
            self.totals.stored_skipped += 1
            return
        health = self.pod(pod)
        size = self.hasher.block_size
        if event.block_size and event.block_size != size:
            health.block_size_mismatches += 1
            health.last_reported_block_size = event.block_size
            health.stored.append(True)
            self.totals.stored_checked += 1
            self.totals.stored_mismatched += 1
            self._maybe_log(pod, health)
            return
        if event.extra_keys and not all(_lora_only(k, event.lora_name) for k in event.extra_keys):
            self.totals.stored_skipped += 1  # multimodal / salted blocks: not reproducible
            return
        parent: BlockHash | None = None
        if event.parent_block_hash is not None:
            parent = self._known.get(event.parent_block_hash)
            if parent is None:
                if event.parent_block_hash in self._failed:
                    # Continues a chain we could not reproduce: its blocks cannot match either.
                    for published in hashes:
                        self._record(health, True)
                        self._remember(self._failed, published, b"")
                    self._maybe_log(pod, health)
                else:
                    self.totals.stored_skipped += 1
                return
        full = self.hasher.hash_tokens(
            tokens[: len(hashes) * size], extra_keys=lora_extra_keys(event.lora_name), parent=parent
        )
        if len(full) != len(hashes):
            self.totals.stored_skipped += 1
            return
        for digest, published in zip(full, hashes, strict=True):
            mine = wire_hash(digest, as_int=isinstance(published, int))
            mismatch = mine != published
            self._record(health, mismatch)
            if mismatch:
                self._remember(self._failed, published, b"")
            else:
                self._remember(self._known, published, digest)
        self._maybe_log(pod, health)

    def _record(self, health: PodHashHealth, mismatch: bool) -> None:
        health.stored.append(mismatch)
        self.totals.stored_checked += 1
        if mismatch:
            self.totals.stored_mismatched += 1

    def _remember(self, table: OrderedDict[int | bytes, BlockHash], published: int | bytes,
                  digest: BlockHash) -> None:
        table[published] = digest
        table.move_to_end(published)
        if len(table) > self.max_known_hashes:
            table.popitem(last=False)

    # --- signal 2: pod-reported hits the index did not predict -----------------------------
    def check_hit(self, pod: str, predicted_blocks: int, cached_tokens: int) -> None:
        """Call for responses from event-publishing pods that report cached_tokens."""
        if cached_tokens < self.hasher.block_size:
            return  # the pod had no full cached block: nothing to compare
        health = self.pod(pod)
        mismatch = predicted_blocks == 0
        health.hits.append(mismatch)
        self.totals.hit_checked += 1
        if mismatch:
            self.totals.hit_mismatched += 1
        self._maybe_log(pod, health)

    # --- reporting ------------------------------------------------------------------------
    def mismatch_ratio(self, pod: str | None = None) -> float:
        """Worst of the two windows, for one pod or the worst pod (0 if too few samples)."""
        pods = [self._pods[pod]] if pod is not None and pod in self._pods else (
            [] if pod is not None else list(self._pods.values())
        )
        worst = 0.0
        for h in pods:
            if len(h.stored) >= self.min_samples:
                worst = max(worst, h.stored_mismatch_ratio())
            if len(h.hits) >= self.min_samples:
                worst = max(worst, h.hit_mismatch_ratio())
        return worst

    def _maybe_log(self, pod: str, health: PodHashHealth) -> None:
        ratio = self.mismatch_ratio(pod)
        if ratio < self.threshold:
            return
        now = time.monotonic()
        if health.last_logged_at and now - health.last_logged_at < self.log_interval_s:
            return
        health.last_logged_at = now
        h = self.hasher
        if health.block_size_mismatches:
            log.error(
                "KV-event block size mismatch for pod %s: the pod publishes blocks of %d tokens but "
                "the EPP hashes blocks of %d; set tokenProcessorConfig.blockSize to the pod's "
                "--block-size", pod, health.last_reported_block_size, h.block_size,
            )
            return
        log.error(
            "KV-event block hashes from pod %s do not match the EPP's (%.0f%% of recent checks "
            "failed): precise prefix routing cannot match this pod. Check that "
            "tokenProcessorConfig.hashAlgo=%r equals the pod's --prefix-caching-hash-algo, "
            "tokenProcessorConfig.hashSeed=%r equals the pod's PYTHONHASHSEED, "
            "tokenProcessorConfig.blockSize=%d equals its --block-size, and that the EPP uses the "
            "pod's tokenizer and chat template",
            pod, ratio * 100, h.algo, h.seed, h.block_size,
        )
