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

Hashes are compared folded to 64 bits (`fold_hash`), so a pod publishing raw digest bytes
(VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0) matches as well as one publishing ints; the form each
pod publishes is recorded and shown. When a block the EPP hashes differently is seen, the
checker tries the other settings a pod could run with (each algorithm, the EPP's seed and
vLLM's default seed "vllm-none-hash"; with bytes hashes, the pod's own parent digest, which
isolates the seed) and names the one that reproduces the pod's hash.

When the mismatch rate of a pod's recent window passes the threshold, an error naming the
setting (or, failing a diagnosis, the likely settings) is logged (at most once per
`log_interval_s` per pod) and the ratio is exposed as a metric.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from epp.prefixcache.block_hash import (
    DEFAULT_NONE_HASH_SEED,
    HASH_ALGOS,
    NON_CRYPTO_HASH_ALGOS,
    BlockHash,
    BlockHasher,
    fold_hash,
    lora_extra_keys,
)
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
    hash_form: str = ""  # "int" or "bytes": what the pod publishes (both fold to 64 bits)
    diagnosis: str = ""  # the setting found to differ, e.g. "hashAlgo: the pod uses 'sha256_cbor'"

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
        self._known: OrderedDict[int, BlockHash] = OrderedDict()
        # Published hashes we could not reproduce (values unused), to judge their children.
        self._failed: OrderedDict[int, BlockHash] = OrderedDict()
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
        health.hash_form = "bytes" if isinstance(hashes[0], bytes) else "int"
        size = self.hasher.block_size
        if event.block_size and event.block_size != size:
            health.block_size_mismatches += 1
            health.last_reported_block_size = event.block_size
            health.diagnosis = (f"tokenProcessorConfig.blockSize: the pod publishes blocks of "
                                f"{event.block_size} tokens, the EPP hashes blocks of {size}")
            for _ in hashes:  # one sample per published block, like the other checks
                self._record(health, True)
            self._maybe_log(pod, health)
            return
        if event.extra_keys and not all(_lora_only(k, event.lora_name) for k in event.extra_keys):
            self.totals.stored_skipped += 1  # multimodal / salted blocks: not reproducible
            return
        extra = lora_extra_keys(event.lora_name)
        parent: BlockHash | None = None
        published_parent = event.parent_block_hash
        if published_parent is not None:
            folded_parent = fold_hash(published_parent)
            parent = self._known.get(folded_parent)
            if parent is None and isinstance(published_parent, bytes):
                parent = published_parent  # the pod's full digest: the chain continues from it
            if parent is None:
                if folded_parent in self._failed:
                    # Continues a chain we could not reproduce: its blocks cannot match either.
                    for published in hashes:
                        self._record(health, True)
                        self._remember(self._failed, fold_hash(published), b"")
                    self._maybe_log(pod, health)
                else:
                    self.totals.stored_skipped += 1
                return
        block_tokens = tokens[: len(hashes) * size]
        full = self.hasher.hash_tokens(block_tokens, extra_keys=extra, parent=parent)
        if len(full) != len(hashes):
            self.totals.stored_skipped += 1
            return
        any_mismatch = False
        for digest, published in zip(full, hashes, strict=True):
            folded = fold_hash(published)
            mismatch = fold_hash(digest) != folded
            any_mismatch |= mismatch
            self._record(health, mismatch)
            if mismatch:
                self._remember(self._failed, folded, b"")
            else:
                self._remember(self._known, folded, digest)
        if any_mismatch and not health.diagnosis:
            found = self.diagnose(block_tokens[:size], extra, parent, published_parent, hashes[0])
            if found:
                health.diagnosis = found
        self._maybe_log(pod, health)

    def diagnose(self, first_block: list[int], extra: tuple[object, ...] | None, parent: BlockHash | None,
                 published_parent: int | bytes | None, published: int | bytes) -> str:
        """Name the setting under which the pod's hash of `first_block` is reproduced, or "".

        Only the first block of an event is tried (one hash per candidate setting), and only
        until a pod has a diagnosis, so this stays off the common path."""
        h = self.hasher
        want = fold_hash(published)
        if published_parent is not None and not isinstance(published_parent, bytes):
            return ""  # continues a chain the EPP reproduced: the difference is not a setting
        if isinstance(published_parent, bytes):
            # The parent digest is the pod's own, so NONE_HASH (the seed) plays no part here:
            # only the algorithm can differ.
            for algo in self._algos():
                other = BlockHasher(algo, h.block_size, h.seed)
                if fold_hash(other.hash_block(published_parent, first_block, extra)) == want:
                    return f"tokenProcessorConfig.hashAlgo: the pod uses {algo!r}, the EPP {h.algo!r}"
            return ""
        seeds = [h.seed] + ([DEFAULT_NONE_HASH_SEED] if h.seed != DEFAULT_NONE_HASH_SEED else [])
        for algo in self._algos():
            for seed in seeds:
                if algo == h.algo and seed == h.seed:
                    continue
                other = BlockHasher(algo, h.block_size, seed)
                if fold_hash(other.hash_block(parent, first_block, extra)) != want:
                    continue
                if algo != h.algo:
                    what = f"tokenProcessorConfig.hashAlgo: the pod uses {algo!r}, the EPP {h.algo!r}"
                    if seed != h.seed:
                        what += f"; and tokenProcessorConfig.hashSeed: the pod uses {seed!r}"
                    return what
                return (f"tokenProcessorConfig.hashSeed: the pod derives NONE_HASH from {seed!r} "
                        f"(vLLM's default without PYTHONHASHSEED), the EPP from {h.seed!r}")
        if parent is None:
            # No algorithm reproduces the first block with a known seed: the pod's seed
            # (PYTHONHASHSEED) is one the EPP does not know.
            return (f"tokenProcessorConfig.hashSeed: the pod's PYTHONHASHSEED differs from the EPP's "
                    f"{h.seed!r} (no algorithm reproduces its first block with a known seed)")
        return ""

    def _algos(self) -> list[str]:
        try:
            import xxhash  # noqa: F401
        except ModuleNotFoundError:
            return [a for a in HASH_ALGOS if a not in NON_CRYPTO_HASH_ALGOS]
        return list(HASH_ALGOS)

    def _record(self, health: PodHashHealth, mismatch: bool) -> None:
        health.stored.append(mismatch)
        self.totals.stored_checked += 1
        if mismatch:
            self.totals.stored_mismatched += 1

    def _remember(self, table: OrderedDict[int, BlockHash], published: int,
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
        form = f"; the pod publishes {health.hash_form} hashes" if health.hash_form else ""
        if health.diagnosis:
            log.error(
                "KV-event block hashes from pod %s do not match the EPP's (%.0f%% of recent checks "
                "failed): %s%s", pod, ratio * 100, health.diagnosis, form,
            )
            return
        log.error(
            "KV-event block hashes from pod %s do not match the EPP's (%.0f%% of recent checks "
            "failed): precise prefix routing cannot match this pod. Check that "
            "tokenProcessorConfig.hashAlgo=%r equals the pod's --prefix-caching-hash-algo, "
            "tokenProcessorConfig.hashSeed=%r equals the pod's PYTHONHASHSEED, "
            "tokenProcessorConfig.blockSize=%d equals its --block-size, and that the EPP uses the "
            "pod's tokenizer and chat template%s",
            pod, ratio * 100, h.algo, h.seed, h.block_size, form,
        )
