"""The simulated vLLM engine: continuous batching over a paged, prefix-cached KV cache.

One asyncio task per pod runs engine steps like vLLM v1's scheduler loop:
1. running requests first (in admission order): each gets its next chunk (the remaining
   prompt, capped by the token budget, or the one token sampled last step); a request that
   cannot get a KV block preempts the most recently admitted running request (recompute);
2. then waiting requests in queue order while `max_num_seqs`, the token budget and free
   blocks allow: FCFS, or with `scheduling_policy: priority` (vLLM's --scheduling-policy
   priority) by (priority, arrival), the lower priority value first; a KV-starved running
   request then preempts the running request with the largest (priority, arrival) instead of
   the last admitted one (vLLM v1 preempts only for KV blocks, never for a batch slot);
   a LoRA request whose adapter is not loaded waits while `max_loras` adapters are running
   (later requests may pass it, as in vLLM); on admission the longest cached block prefix
   is reused (at least one prompt token is always computed);
3. the step "runs" for the latency model's duration, then every request whose scheduled
   tokens reach its end samples one output token.
Full blocks are hashed with the real vLLM chained block hash and published as KV events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from epp.aio import cancel_and_wait
from epp.prefixcache.block_hash import BlockHash, BlockHasher, lora_extra_keys, process_seed
from epp.sim.config import SimPodConfig, parse_output_len_dist
from epp.sim.kv_cache import KVBlock, PrefixCachingBlockPool
from epp.sim.kv_publisher import KVEventPublisher
from epp.sim.metrics import VllmMetrics
from epp.sim.sglang_metrics import SglangMetrics
from epp.tokenization.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Short words so that each output token is one SimpleTokenizer piece (" word" <= 7 chars).
OUTPUT_WORDS = (
    "the",
    "model",
    "serves",
    "tokens",
    "from",
    "cache",
    "and",
    "each",
    "block",
    "holds",
    "keys",
    "values",
    "for",
    "a",
    "prompt",
    "so",
    "routing",
    "to",
    "warm",
    "pods",
    "saves",
    "time",
    "while",
    "queues",
    "stay",
    "short",
    "under",
    "load",
    "with",
    "fair",
    "share",
    "of",
    "work",
)
NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT default


class RequestRejected(Exception):
    """The engine cannot accept the request (maps to an OpenAI-style 400)."""


@dataclass(slots=True)
class TokenOutput:
    token_id: int
    text: str


@dataclass(eq=False)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    target_output_len: int
    lora_name: str | None = None
    cache_salt: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    arrival: float = field(default_factory=time.monotonic)
    priority: int = 0  # vLLM's request `priority`: lower is handled earlier (priority policy)
    all_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)
    num_computed_tokens: int = 0
    blocks: list[KVBlock] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_cached_blocks: int = 0  # blocks already registered in the prefix cache
    cached_tokens: int = 0  # prefix-cache hit at (first) admission
    transferred_tokens: int = 0  # KV received from a remote prefill pod
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None
    finished_at: float | None = None
    preemptions: int = 0
    text_seed: int = 0
    kv_transfer_result: dict[str, Any] | None = None
    outputs: asyncio.Queue[TokenOutput | None] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        self.text_seed = zlib.crc32(repr(self.prompt_token_ids[:64]).encode())

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class _StepPlan:
    items: list[tuple[SimRequest, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_seqs: int = 0
    transfer_tokens: int = 0
    preempted: int = 0


class SimEngine:
    def __init__(
        self,
        config: SimPodConfig,
        tokenizer: Tokenizer,
        metrics: VllmMetrics | SglangMetrics,
        publisher: KVEventPublisher | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.publisher = publisher
        self.pool = PrefixCachingBlockPool(
            config.num_gpu_blocks,
            config.block_size,
            config.enable_prefix_caching,
            config.kv_events_int_hashes,
        )
        algo = config.prefix_caching_hash_algo
        seed = config.hash_seed if config.hash_seed is not None else process_seed(algo)
        self.hasher = BlockHasher(algo, config.block_size, seed)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.rng = random.Random(config.seed * 1_000_003 + config.port)
        self._output_dist = parse_output_len_dist(config.output_len_dist)
        self._word_ids = [(self._first_id(" " + w), " " + w) for w in OUTPUT_WORDS]
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.engine_id = config.name or f"sim-{config.port}"
        self.steps = 0
        self.total_requests = 0
        self.total_preemptions = 0
        self.total_cache_query_tokens = 0
        self.total_cache_hit_tokens = 0
        self.total_transferred_tokens = 0

    def _first_id(self, text: str) -> int:
        ids = self.tokenizer.encode(text)
        return ids[0] if ids else 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"sim-engine-{self.engine_id}"
            )
            self._update_gauges()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for req in [*self.running, *self.waiting]:
            self._finish(req, "abort")

    # ------------------------------------------------------------------ requests

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        max_tokens: int | None,
        lora_name: str | None = None,
        cache_salt: str | None = None,
        kv_transfer_params: dict[str, Any] | None = None,
        arrival: float | None = None,
        priority: int = 0,
    ) -> SimRequest:
        cfg = self.config
        n_prompt = len(prompt_token_ids)
        if n_prompt == 0:
            raise RequestRejected("The prompt cannot be empty.")
        if priority != 0 and cfg.scheduling_policy != "priority":
            # vLLM's engine raises the same ValueError (a 400) unless --scheduling-policy priority.
            raise RequestRejected(f"Got priority {priority} but Priority scheduling is not enabled.")
        if max_tokens is None:
            max_tokens = min(cfg.default_max_tokens, cfg.max_model_len - n_prompt)
        if max_tokens < 1:
            raise RequestRejected(f"max_tokens must be at least 1, got {max_tokens}.")
        if n_prompt + max_tokens > cfg.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, "
                f"{max_tokens} in the completion). "
                "Please reduce the length of the messages or completion."
            )
        if math.ceil((n_prompt + max_tokens) / cfg.block_size) > cfg.num_gpu_blocks:
            raise RequestRejected("The request needs more KV cache blocks than the simulated GPU has.")
        target = max_tokens
        if self._output_dist is not None:
            kind, a, b = self._output_dist
            drawn = self.rng.uniform(a, b) if kind == "uniform" else self.rng.expovariate(1.0 / a)
            target = max(1, min(max_tokens, round(drawn)))
        return SimRequest(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            max_tokens=max_tokens,
            target_output_len=target,
            lora_name=lora_name,
            cache_salt=cache_salt,
            kv_transfer_params=kv_transfer_params,
            arrival=time.monotonic() if arrival is None else arrival,
            priority=priority,
        )

    def submit(self, req: SimRequest) -> None:
        if self._task is None:
            raise RuntimeError("engine not started")
        self.total_requests += 1
        self._enqueue(req, front=False)
        self._update_gauges()
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        """Client went away: drop the request and release its blocks."""
        if req.finished:
            return
        self._finish(req, "abort")
        self._update_gauges()
        self._publish()

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            plan = self._schedule()
            self._update_gauges()
            self._publish()
            if not plan.items:
                if plan.preempted:
                    continue  # everything running was preempted: re-admit from the queue
                # Nothing fits (e.g. all waiting LoRA requests blocked): wait for a change.
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self._step_seconds(plan) * self.config.latency.time_scale)
            self._complete_step(plan)
            self.steps += 1
            self._update_gauges()
            self._publish()

    def _step_seconds(self, plan: _StepPlan) -> float:
        lat = self.config.latency
        ms = (
            lat.step_base_ms
            + lat.decode_per_seq_ms * plan.decode_seqs
            + lat.prefill_per_token_ms * plan.prefill_tokens
            + lat.kv_transfer_per_token_ms * plan.transfer_tokens
        )
        if lat.jitter > 0:
            ms *= 1.0 + self.rng.uniform(-lat.jitter, lat.jitter)
        return max(0.0, ms * lat.slowdown / 1000.0)

    # ------------------------------------------------------------------ scheduling

    def _ensure_hashes(self, req: SimRequest, n_blocks: int) -> None:
        have = len(req.block_hashes)
        if have >= n_blocks:
            return
        size = self.config.block_size
        req.block_hashes.extend(
            self.hasher.hash_tokens(
                req.all_token_ids[have * size : n_blocks * size],
                extra_keys=lora_extra_keys(req.lora_name),
                parent=req.block_hashes[-1] if have else None,
                cache_salt=req.cache_salt if have == 0 else None,
            )
        )

    def _blocks_needed(self, req: SimRequest, num_new: int) -> int:
        return max(
            0, math.ceil((req.num_computed_tokens + num_new) / self.config.block_size) - len(req.blocks)
        )

    def _enqueue(self, req: SimRequest, front: bool) -> None:
        """Into the waiting queue: FCFS appends (`front`: a preempted or skipped request goes
        back to the head); the priority policy keeps (priority, arrival) order either way, as
        vLLM's PriorityRequestQueue (its prepend is an ordered insert)."""
        waiting = self.waiting
        if self.config.scheduling_policy != "priority":
            if front:
                waiting.appendleft(req)
            else:
                waiting.append(req)
            return
        key = (req.priority, req.arrival)
        i = len(waiting)
        while i > 0 and (waiting[i - 1].priority, waiting[i - 1].arrival) > key:
            i -= 1  # queues are short and arrivals mostly in order: scan from the tail
        waiting.insert(i, req)

    def _victim(self) -> SimRequest:
        """The running request KV pressure preempts: the last admitted (FCFS), or the one
        with the largest (priority, arrival) (vLLM's priority policy)."""
        if self.config.scheduling_policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival))
        return self.running[-1]

    def _preempt(self, victim: SimRequest) -> None:
        self.running.remove(victim)
        self.pool.free(victim.blocks)
        victim.blocks = []
        victim.num_computed_tokens = 0
        victim.num_cached_blocks = 0
        victim.preemptions += 1
        self.total_preemptions += 1
        self.metrics.num_preemptions.inc()
        self._enqueue(victim, front=True)

    def _schedule(self) -> _StepPlan:
        cfg = self.config
        plan = _StepPlan()
        budget = cfg.max_num_batched_tokens

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(len(req.all_token_ids) - req.num_computed_tokens, budget)
            need = self._blocks_needed(req, num_new)
            allocated: list[KVBlock] | None = [] if need == 0 else self.pool.allocate(need)
            while allocated is None:
                victim = self._victim()
                scheduled = self.running.index(victim) < i  # already planned in this step
                self._preempt(victim)
                plan.preempted += 1
                if victim is req:
                    break
                if scheduled:  # take its tokens back, as vLLM does
                    budget += self._unplan(plan, victim)
                    i -= 1
                allocated = self.pool.allocate(need)
            if allocated is None:
                break  # req itself was preempted; it was the last running request
            req.blocks.extend(allocated)
            self._add_to_plan(plan, req, num_new)
            budget -= num_new
            i += 1

        if plan.preempted:
            return plan  # vLLM admits nothing new in a step that had to preempt

        running_loras = {r.lora_name for r in self.running if r.lora_name}
        skipped: list[SimRequest] = []
        while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = self.waiting[0]
            if req.lora_name and req.lora_name not in running_loras and len(running_loras) >= cfg.max_loras:
                skipped.append(self.waiting.popleft())
                continue
            admitted = self._admit(req, budget)
            if admitted is None:
                break  # not enough free KV blocks: keep FCFS order
            num_new, transferred = admitted
            self.waiting.popleft()
            self.running.append(req)
            if req.lora_name:
                running_loras.add(req.lora_name)
            self._add_to_plan(plan, req, num_new, transferred)
            budget -= num_new
        for req in reversed(skipped):
            self._enqueue(req, front=True)
        return plan

    def _admit(self, req: SimRequest, budget: int) -> tuple[int, int] | None:
        """Prefix-cache lookup and block allocation for a waiting request.

        Returns (tokens to compute this step, tokens pulled from a remote prefill pod), or None
        if the request does not fit in the free KV blocks.
        """
        size = self.config.block_size
        total = len(req.all_token_ids)
        first_time = req.scheduled_at is None
        hits: list[KVBlock] = []
        if self.config.enable_prefix_caching:
            self._ensure_hashes(req, total // size)
            # At least one token must be computed to sample from, so a full hit drops a block.
            hits = self.pool.lookup_prefix(req.block_hashes[: (total - 1) // size])
        computed = len(hits) * size
        transferred = 0
        params = req.kv_transfer_params
        if params and params.get("do_remote_prefill") and req.transferred_tokens == 0:
            transferred = max(0, total - 1 - computed)
        num_new = min(total - computed - transferred, budget)
        need = math.ceil((computed + transferred + num_new) / size) - len(hits)
        evictable_hits = sum(1 for b in hits if b.ref_cnt == 0)
        if need > self.pool.num_free_blocks - evictable_hits:
            return None
        self.pool.touch(hits)
        new_blocks = self.pool.allocate(need)
        assert new_blocks is not None
        req.blocks = hits + new_blocks
        req.num_computed_tokens = computed
        req.num_cached_blocks = len(hits)
        if first_time:
            req.scheduled_at = time.monotonic()
            req.cached_tokens = computed
            self.metrics.prefix_cache_queries.inc(total)
            self.metrics.prefix_cache_hits.inc(computed)
            self.total_cache_query_tokens += total
            self.total_cache_hit_tokens += computed
        if transferred:
            req.transferred_tokens = transferred
            req.num_computed_tokens += transferred
            self.total_transferred_tokens += transferred
            self.metrics.kv_transfer_tokens.inc(transferred)
        return num_new, transferred

    def _add_to_plan(self, plan: _StepPlan, req: SimRequest, num_new: int, transferred: int = 0) -> None:
        plan.items.append((req, num_new))
        if self._is_decode(req, num_new):
            plan.decode_seqs += 1
        else:
            plan.prefill_tokens += num_new
        # Pulled KV costs transfer time in this step, not prefill compute.
        plan.transfer_tokens += transferred

    @staticmethod
    def _is_decode(req: SimRequest, num_new: int) -> bool:
        return num_new == 1 and bool(req.output_token_ids) and req.num_computed_tokens == len(req.all_token_ids) - 1

    def _unplan(self, plan: _StepPlan, victim: SimRequest) -> int:
        """Drop a preempted request from this step's plan; returns its scheduled tokens (its
        KV state is already reset, so the decode/prefill split uses the plan's own count)."""
        for k, (req, num_new) in enumerate(plan.items):
            if req is victim:
                del plan.items[k]
                if num_new == 1 and plan.decode_seqs > 0 and victim.output_token_ids:
                    plan.decode_seqs -= 1
                else:
                    plan.prefill_tokens -= num_new
                return num_new
        return 0

    # ------------------------------------------------------------------ step completion

    def _complete_step(self, plan: _StepPlan) -> None:
        now = time.monotonic()
        scale = self.config.latency.time_scale
        size = self.config.block_size
        prompt_tokens = generation_tokens = 0
        running = {id(r) for r in self.running}
        for req, num_new in plan.items:
            if req.finished or id(req) not in running:
                continue  # aborted while the step ran
            before = req.num_computed_tokens
            req.num_computed_tokens += num_new
            if before < req.num_prompt_tokens:
                prompt_tokens += min(req.num_computed_tokens, req.num_prompt_tokens) - before
            full = req.num_computed_tokens // size
            if full > req.num_cached_blocks:
                self._ensure_hashes(req, full)
                start = req.num_cached_blocks
                self.pool.cache_full_blocks(
                    req.blocks[start:full],
                    req.block_hashes[start:full],
                    req.all_token_ids[start * size : full * size],
                    req.block_hashes[start - 1] if start else None,
                    req.lora_name,
                    req.cache_salt,
                )
                req.num_cached_blocks = full
            if req.num_computed_tokens < len(req.all_token_ids):
                continue  # chunked prefill not finished
            token = self._sample(req)
            generation_tokens += 1
            req.all_token_ids.append(token.token_id)
            req.output_token_ids.append(token.token_id)
            req.output_text.append(token.text)
            if req.first_token_at is None:
                req.first_token_at = now
                self.metrics.time_to_first_token.observe((now - req.arrival) / scale)
            elif req.last_token_at is not None:
                itl = (now - req.last_token_at) / scale
                self.metrics.inter_token_latency.observe(itl)
                self.metrics.time_per_output_token.observe(itl)
            req.last_token_at = now
            req.outputs.put_nowait(token)
            if len(req.output_token_ids) >= req.target_output_len:
                self._finish(req, "length" if req.target_output_len >= req.max_tokens else "stop")
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(generation_tokens)
        self.metrics.iteration_tokens.observe(plan.prefill_tokens + plan.decode_seqs)

    def _sample(self, req: SimRequest) -> TokenOutput:
        token_id, text = self._word_ids[(req.text_seed + 7 * len(req.output_token_ids)) % len(self._word_ids)]
        return TokenOutput(token_id, text)

    def _finish(self, req: SimRequest, reason: str) -> None:
        now = time.monotonic()
        req.finish_reason = reason
        req.finished_at = now
        if req in self.running:
            self.running.remove(req)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        params = req.kv_transfer_params
        if reason == "length" and params and params.get("do_remote_decode"):
            req.kv_transfer_result = {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_block_ids": [b.block_id for b in req.blocks],
                "remote_engine_id": self.engine_id,
                "remote_request_id": req.request_id,
                "remote_host": self.config.host,
                "remote_port": NIXL_SIDE_CHANNEL_PORT,
                "tp_size": 1,
            }
        self.pool.free(req.blocks)
        req.blocks = []
        scale = self.config.latency.time_scale
        self.metrics.request_success[reason].inc()
        if reason != "abort":
            m = self.metrics
            m.e2e_request_latency.observe((now - req.arrival) / scale)
            if req.scheduled_at is not None:
                m.request_queue_time.observe((req.scheduled_at - req.arrival) / scale)
                if req.first_token_at is not None:
                    m.request_prefill_time.observe((req.first_token_at - req.scheduled_at) / scale)
                    m.request_decode_time.observe((now - req.first_token_at) / scale)
            m.request_prompt_tokens.observe(req.num_prompt_tokens)
            m.request_generation_tokens.observe(len(req.output_token_ids))
        req.outputs.put_nowait(None)
        self._wake.set()

    # ------------------------------------------------------------------ state

    def reset_prefix_cache(self) -> bool:
        ok = self.pool.reset()
        self._publish()
        return ok

    def _publish(self) -> None:
        events = self.pool.drain_events()
        if events and self.publisher is not None:
            self.publisher.publish(events)

    def _update_gauges(self) -> None:
        m = self.metrics
        m.num_requests_running.set(len(self.running))
        m.num_requests_waiting.set(len(self.waiting))
        usage = self.pool.usage()
        m.kv_cache_usage_perc.set(usage)
        m.gpu_cache_usage_perc.set(usage)
        m.set_cache_hit_rate(self.total_cache_hit_tokens, self.total_cache_query_tokens)
        if self.config.lora_modules:
            running = sorted({r.lora_name for r in self.running if r.lora_name})
            waiting = sorted({r.lora_name for r in self.waiting if r.lora_name})
            m.set_lora_info(running, waiting)

    def state(self) -> dict[str, Any]:
        return {
            "engine_id": self.engine_id,
            "role": self.config.role,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "running_loras": sorted({r.lora_name for r in self.running if r.lora_name}),
            "waiting_loras": sorted({r.lora_name for r in self.waiting if r.lora_name}),
            "kv_cache_usage": self.pool.usage(),
            "num_gpu_blocks": self.pool.num_blocks,
            "free_blocks": self.pool.num_free_blocks,
            "cached_blocks": self.pool.num_cached_blocks,
            "evicted_blocks": self.pool.evictions,
            "steps": self.steps,
            "total_requests": self.total_requests,
            "preemptions": self.total_preemptions,
            "prefix_cache_query_tokens": self.total_cache_query_tokens,
            "prefix_cache_hit_tokens": self.total_cache_hit_tokens,
            "kv_transferred_tokens": self.total_transferred_tokens,
            "kv_event_batches": 0 if self.publisher is None else self.publisher.next_seq,
        }
