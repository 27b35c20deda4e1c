"""Deterministic benchmark workloads: who sends which chat request when.

Every generator is a pure function of its parameters and seed, so every router of a run
sees byte-identical requests at identical offsets. Arrival offsets are in *model* seconds
(the simulator's unscaled time); the client multiplies them by the simulator's time scale.
Each workload phase starts its prompts with a unique nonce, so no prefix is shared across
phases and a pod cache warmed by an earlier phase cannot help a later one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from epp.headers import SLO_TPOT, SLO_TTFT

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_LORAS = ("sql-lora", "tweet-summary")


@dataclass(slots=True)
class BenchRequest:
    index: int
    arrival_s: float  # offset from the phase start, model seconds
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    session: str  # conversation id: requests of one session share a growing prefix
    # Extra request headers, e.g. latency SLOs (their values in model milliseconds: the
    # latency runner scales them by the simulator's time scale before sending).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class WorkloadParams:
    rate: float  # mean arrival rate, model requests/s
    count: int  # at most this many requests ...
    duration_s: float  # ... arriving within this many model seconds
    seed: int = 1
    nonce: str = "run"  # unique per phase: keeps phases from sharing prefixes
    max_tokens: int = 48

    def validate(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.duration_s <= 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(slots=True)
class Workload:
    name: str  # a key of GENERATORS
    title: str
    params: WorkloadParams
    requests: list[BenchRequest] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        """Model seconds from the first to the last arrival."""
        return self.requests[-1].arrival_s if self.requests else 0.0


# --- arrivals ---------------------------------------------------------------------------------

def poisson_arrivals(rate: float, count: int, duration_s: float, rng: random.Random) -> list[float]:
    """Open-loop Poisson arrival offsets: exponential gaps, bounded in count and time."""
    out: list[float] = []
    t = 0.0
    while len(out) < count:
        t += rng.expovariate(rate)
        if t > duration_s:
            break
        out.append(t)
    return out


def bursty_arrivals(base_rate: float, burst_factor: float, count: int, duration_s: float,
                    rng: random.Random) -> list[float]:
    """Poisson at `base_rate`, then `burst_factor` x that rate in the middle third (overload)."""
    out: list[float] = []
    t = 0.0
    third = duration_s / 3
    while len(out) < count:
        rate = base_rate * burst_factor if third <= t < 2 * third else base_rate
        t += rng.expovariate(rate)
        if t > duration_s:
            break
        out.append(t)
    return out


# --- text -------------------------------------------------------------------------------------

def _make_vocabulary(size: int = 2048, seed: int = 7) -> tuple[str, ...]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return tuple("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size))


# Immutable: a fixed English-like word list so the simulator's tokenizer sees repeated pieces.
VOCABULARY = _make_vocabulary()


def words(rng: random.Random, chars: int) -> str:
    """Random words from VOCABULARY, about `chars` characters long."""
    parts: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(VOCABULARY)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)


# --- generators -------------------------------------------------------------------------------

@dataclass(slots=True)
class ChatShape:
    """Sizes of the shared-prefix chat workload (characters; ~5 characters per sim token)."""

    groups: int = 16  # distinct system prompts (tenants / applications)
    users_per_group: int = 6  # conversations alive per group at a time
    system_chars: int = 10_000
    user_chars: int = 400
    assistant_chars: int = 400
    max_turns: int = 5  # then the user leaves and a new one of the same group starts


@dataclass(slots=True)
class _Conversation:
    group: int
    user: int
    messages: list[dict[str, str]]
    turns: int = 0


def _system_prompts(nonce: str, groups: int, chars: int, rng: random.Random, tag: str = "") -> list[str]:
    return [f"[{nonce}{tag}] You are assistant {g} of this deployment. Follow these rules: "
            + words(rng, chars) for g in range(groups)]


class _ChatState:
    """The live conversations of a shared-prefix chat: each call adds one user turn to a
    random conversation and returns its request (the assistant turn is scripted)."""

    def __init__(self, nonce: str, shape: ChatShape, rng: random.Random) -> None:
        self.shape = shape
        self.rng = rng
        self.systems = _system_prompts(nonce, shape.groups, shape.system_chars, rng)
        self.next_user = 0
        self.live = [self._new(g) for g in range(shape.groups) for _ in range(shape.users_per_group)]

    def _new(self, group: int) -> _Conversation:
        self.next_user += 1
        return _Conversation(group, self.next_user, [{"role": "system", "content": self.systems[group]}])

    def request(self, index: int, at: float, max_tokens: int) -> BenchRequest:
        rng, shape = self.rng, self.shape
        slot = rng.randrange(len(self.live))
        conv = self.live[slot]
        conv.messages.append({"role": "user", "content": f"user {conv.user} turn {conv.turns}: "
                              + words(rng, shape.user_chars)})
        request = BenchRequest(index, at, DEFAULT_MODEL, list(conv.messages), max_tokens,
                               f"g{conv.group}/u{conv.user}")
        # The assistant turn is scripted (not the simulator's output) so the prompts, and so
        # the best achievable hit rate, are the same whatever the router did.
        conv.messages.append({"role": "assistant", "content": words(rng, shape.assistant_chars)})
        conv.turns += 1
        if conv.turns >= shape.max_turns:
            self.live[slot] = self._new(conv.group)
        return request


def shared_prefix_chat(params: WorkloadParams, shape: ChatShape | None = None,
                       arrivals: list[float] | None = None, name: str = "shared-prefix",
                       title: str = "Shared-prefix multi-turn chat") -> Workload:
    """Many users in a few groups; each group has one long system prompt and every
    conversation grows turn by turn, so each request's prefix is the previous turn's prompt."""
    params.validate()
    rng = random.Random(params.seed)
    chat = _ChatState(params.nonce, shape or ChatShape(), rng)
    times = arrivals if arrivals is not None else poisson_arrivals(
        params.rate, params.count, params.duration_s, rng)
    requests = [chat.request(index, at, params.max_tokens) for index, at in enumerate(times)]
    return Workload(name, title, params, requests)


def no_sharing(params: WorkloadParams, prompt_chars: int = 6_000, name: str = "no-sharing",
               title: str = "No sharing (random prompts)") -> Workload:
    """Independent single-turn prompts that share nothing: pure load balancing."""
    params.validate()
    rng = random.Random(params.seed)
    times = poisson_arrivals(params.rate, params.count, params.duration_s, rng)
    requests = [
        BenchRequest(i, at, DEFAULT_MODEL,
                     [{"role": "user", "content": f"[{params.nonce}:{i}] " + words(rng, prompt_chars)}],
                     params.max_tokens, f"r{i}")
        for i, at in enumerate(times)
    ]
    return Workload(name, title, params, requests)


# The heterogeneous pool: pod 0 runs this many times slower than the others (mixed GPU types).
HETEROGENEOUS_SLOW_POD = 0
HETEROGENEOUS_SLOWDOWN = 2.0


def heterogeneous(params: WorkloadParams) -> Workload:
    """No-sharing traffic on a pool where one pod is HETEROGENEOUS_SLOWDOWN x slower (the
    runner starts that pod slower; see pod_profile()): round robin gives the slow pod its
    full share, a load-aware router gives it less."""
    return no_sharing(params, name="heterogeneous",
                      title=f"Heterogeneous pool (one pod {HETEROGENEOUS_SLOWDOWN:g}x slower, no sharing)")


@dataclass(slots=True)
class MixShape:
    """Sizes of the mixed workload (characters; ~5 characters per sim token)."""

    chat_share: float = 0.5  # the rest are unique prompts
    short_chars: int = 800
    long_chars: int = 16_000
    chat: ChatShape = field(default_factory=lambda: ChatShape(groups=8))


def mixed(params: WorkloadParams, shape: MixShape | None = None) -> Workload:
    """Half shared-prefix chat, half unique prompts; the unique prompts alternate short and
    long, so short and long prompts are interleaved in time."""
    params.validate()
    shape = shape or MixShape()
    if not 0.0 <= shape.chat_share <= 1.0:
        raise ValueError(f"chat_share must be within [0, 1], got {shape.chat_share}")
    rng = random.Random(params.seed)
    chat = _ChatState(params.nonce, shape.chat, rng)
    times = poisson_arrivals(params.rate, params.count, params.duration_s, rng)
    requests: list[BenchRequest] = []
    unique = 0
    for i, at in enumerate(times):
        if rng.random() < shape.chat_share:
            requests.append(chat.request(i, at, params.max_tokens))
            continue
        chars = shape.long_chars if unique % 2 else shape.short_chars
        unique += 1
        requests.append(BenchRequest(
            i, at, DEFAULT_MODEL, [{"role": "user", "content": f"[{params.nonce}:{i}] " + words(rng, chars)}],
            params.max_tokens, f"r{i}"))
    return Workload("mixed", "Mixed (half shared-prefix chat, half unique short/long prompts)", params, requests)


@dataclass(slots=True)
class LatencySLOShape:
    """The predicted-latency workload (issue 18): short chats and long prefills, SLOs on half."""

    long_share: float = 0.1  # share of requests that are long prefills
    long_tokens: tuple[int, int] = (8_000, 30_000)  # uniform prompt size of a long prefill
    slo_share: float = 0.5  # requests that carry SLO headers
    chat_ttft_ms: float = 1_500.0  # TTFT target of a chat request (model ms)
    chat_tpot_ms: float = 150.0
    # A long prefill's TTFT target: this many model ms per prompt token plus a constant (1.8x
    # the prefill time of a normal bench pod: the slow pod cannot make it even idle).
    long_ttft_ms_per_token: float = 0.4
    long_ttft_ms_base: float = 1_000.0
    long_tpot_ms: float = 300.0
    chat: ChatShape = field(default_factory=lambda: ChatShape(
        groups=8, users_per_group=4, system_chars=2_500, user_chars=400, assistant_chars=300, max_turns=4))


# Characters per token of a long prompt's words for the simulator's simple tokenizer (measured:
# 4.0; at 5, the prompts meant as 8k-30k tokens were 10k-37k, tests/unit/bench/test_latency_bench.py).
SIM_CHARS_PER_TOKEN = 4


def latency_slo(params: WorkloadParams, shape: LatencySLOShape | None = None) -> Workload:
    """Short multi-turn chats and unique long-prefill prompts (8k-30k tokens) on the
    heterogeneous pool; half the requests carry TTFT/TPOT SLO headers (model milliseconds).
    Sessions are "chat/..." or "long/..." so reports can split the two."""
    params.validate()
    shape = shape or LatencySLOShape()
    rng = random.Random(params.seed)
    chat = _ChatState(params.nonce, shape.chat, rng)
    times = poisson_arrivals(params.rate, params.count, params.duration_s, rng)
    requests: list[BenchRequest] = []
    for i, at in enumerate(times):
        with_slo = rng.random() < shape.slo_share
        if rng.random() < shape.long_share:
            tokens = rng.randint(*shape.long_tokens)
            # A few thousand random words, repeated: the unique head makes every block hash
            # unique (hashes chain), and generating 150k random characters per prompt is slow.
            base = words(rng, 6_000)
            text = (base * (tokens * SIM_CHARS_PER_TOKEN // len(base) + 1))[: tokens * SIM_CHARS_PER_TOKEN]
            req = BenchRequest(i, at, DEFAULT_MODEL, [{"role": "user", "content": f"[{params.nonce}:{i}] " + text}],
                               params.max_tokens, f"long/{i}")
            ttft, tpot = shape.long_ttft_ms_base + shape.long_ttft_ms_per_token * tokens, shape.long_tpot_ms
        else:
            req = chat.request(i, at, params.max_tokens)
            req.session = f"chat/{req.session}"
            ttft, tpot = shape.chat_ttft_ms, shape.chat_tpot_ms
        if with_slo:
            req.headers = {SLO_TTFT: f"{ttft:g}", SLO_TPOT: f"{tpot:g}"}  # the current names
        requests.append(req)
    return Workload("latency-slo", "Short chats + long prefills (8k-30k tokens), SLOs on half, one pod "
                    f"{HETEROGENEOUS_SLOWDOWN:g}x slower", params, requests)


def pod_profile(workload: str) -> dict[int, float]:
    """Per-pod slowdown multipliers (on top of the bench's) a workload's pool runs with."""
    if workload in ("heterogeneous", "latency-slo"):
        return {HETEROGENEOUS_SLOW_POD: HETEROGENEOUS_SLOWDOWN}
    return {}


def bursty(params: WorkloadParams, burst_factor: float = 4.0, shape: ChatShape | None = None) -> Workload:
    """Shared-prefix chat whose middle third arrives `burst_factor` times faster (overload)."""
    params.validate()
    rng = random.Random(params.seed + 1)
    times = bursty_arrivals(params.rate, burst_factor, params.count, params.duration_s, rng)
    return shared_prefix_chat(params, shape, arrivals=times, name="bursty",
                              title=f"Bursty overload (x{burst_factor:g} in the middle third)")


def lora_mix(params: WorkloadParams, loras: tuple[str, ...] = DEFAULT_LORAS,
             base_share: float = 0.4, groups_per_model: int = 3, system_chars: int = 6_000) -> Workload:
    """Requests for the base model and LoRA adapters (pods hold one adapter at a time), each
    model with its own system prompts."""
    params.validate()
    if not 0.0 <= base_share <= 1.0:
        raise ValueError(f"base_share must be within [0, 1], got {base_share}")
    rng = random.Random(params.seed)
    models = [DEFAULT_MODEL, *loras]
    systems = {m: _system_prompts(params.nonce, groups_per_model, system_chars, rng, tag=f":{m}")
               for m in models}
    times = poisson_arrivals(params.rate, params.count, params.duration_s, rng)
    lora_share = (1.0 - base_share) / len(loras) if loras else 0.0
    weights = [base_share] + [lora_share] * len(loras)
    requests: list[BenchRequest] = []
    for i, at in enumerate(times):
        model = rng.choices(models, weights)[0]
        group = rng.randrange(groups_per_model)
        messages = [{"role": "system", "content": systems[model][group]},
                    {"role": "user", "content": f"question {i}: " + words(rng, 400)}]
        requests.append(BenchRequest(i, at, model, messages, params.max_tokens, f"{model}/g{group}"))
    return Workload("lora-mix", "LoRA mix (base + 2 adapters, max 1 adapter per pod)", params, requests)


# Read-only registry of the workloads by name.
GENERATORS: Mapping[str, Callable[[WorkloadParams], Workload]] = MappingProxyType({
    "shared-prefix": shared_prefix_chat,
    "no-sharing": no_sharing,
    "mixed": mixed,
    "heterogeneous": heterogeneous,
    "bursty": bursty,
    "lora-mix": lora_mix,
    "latency-slo": latency_slo,
})


def build(name: str, params: WorkloadParams) -> Workload:
    try:
        generator = GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(GENERATORS)}") from None
    return generator(params)
