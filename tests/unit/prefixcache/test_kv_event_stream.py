"""KVEventStream: sequencing, gap recovery, restarts and garbage, on plain byte frames."""

from __future__ import annotations

import random

import msgspec

from epp.prefixcache.block_hash import BlockHasher
from epp.prefixcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, encode_event_batch
from epp.prefixcache.index import InMemoryKVBlockIndex
from epp.prefixcache.subscriber import KVEventStream
from epp.sim.kv_cache import PrefixCachingBlockPool

from .kv_fixtures import payload, random_tokens, serve


def stored(hashes: list[int], parent: int | None = None) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=[], block_size=16,
                       lora_id=None, medium="GPU")


def frames(seq: int, body: bytes, topic: bytes = b"") -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), body]


async def test_events_from_real_block_pool_drive_the_index() -> None:
    hasher = BlockHasher(block_size=16)
    pool = PrefixCachingBlockPool(num_blocks=8, block_size=16)
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("pod-a", index)
    rng = random.Random(1)
    prompt = random_tokens(rng, 64)  # 4 full blocks
    serve(pool, hasher, prompt)
    await stream.handle_frames(frames(0, payload(pool.drain_events())))
    wire = [h & ((1 << 64) - 1) for h in (int.from_bytes(d, "big") for d in hasher.hash_tokens(prompt))]
    assert index.longest_prefix(wire) == {"pod-a": 4}
    # Filling the 8-block pool with other prompts evicts the first one: BlockRemoved follows.
    serve(pool, hasher, random_tokens(rng, 128))
    await stream.handle_frames(frames(1, payload(pool.drain_events())))
    assert index.longest_prefix(wire) == {}
    assert stream.stats.blocks_removed >= 4
    assert pool.reset()
    await stream.handle_frames(frames(2, payload(pool.drain_events())))
    assert stream.stats.all_cleared == 1
    assert index.pods_with_blocks() == set()
    assert stream.has_events and stream.stats.gaps == 0


async def test_gap_without_replay_clears_the_pods_view() -> None:
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("p", index)
    await stream.handle(0, payload([stored([1, 2])]))
    await stream.handle(4, payload([stored([3])]))  # 1..3 lost: maybe removals among them
    assert stream.stats.gaps == 1
    assert stream.stats.missed_batches == 3
    assert stream.stats.resyncs == 1
    assert not stream.stats.stale
    assert index.longest_prefix([1]) == {}
    assert index.longest_prefix([3]) == {"p": 1}  # the batch after the gap is applied
    assert stream.stats.last_seq == 4


async def test_gap_recovered_from_replay_keeps_the_view() -> None:
    index = InMemoryKVBlockIndex()
    history = {1: payload([stored([2], parent=1)]), 2: payload([BlockRemoved(block_hashes=[9], medium=None)])}
    asked: list[tuple[int, int]] = []

    async def replay(start: int, end: int) -> list[tuple[int, bytes]]:
        asked.append((start, end))
        return [(s, history[s]) for s in sorted(history) if s >= start]

    stream = KVEventStream("p", index, replay=replay)
    await stream.handle(0, payload([stored([1, 9])]))
    await stream.handle(3, payload([stored([3], parent=2)]))
    assert asked == [(1, 3)]
    assert stream.stats.gaps == 1 and stream.stats.replayed_batches == 2
    assert stream.stats.resyncs == 0 and not stream.stats.stale
    assert index.longest_prefix([1, 2, 3]) == {"p": 3}
    assert index.longest_prefix([9]) == {}


async def test_incomplete_replay_falls_back_to_resync() -> None:
    index = InMemoryKVBlockIndex()

    async def replay(start: int, end: int) -> list[tuple[int, bytes]]:
        return [(5, payload([stored([5])]))]  # buffer rolled over: 1..4 are gone

    stream = KVEventStream("p", index, replay=replay)
    await stream.handle(0, payload([stored([1])]))
    await stream.handle(6, payload([stored([6])]))
    assert stream.stats.resyncs == 1
    assert index.longest_prefix([1]) == {}


async def test_first_batch_mid_stream_replays_history_from_zero() -> None:
    index = InMemoryKVBlockIndex()

    async def replay(start: int, end: int) -> list[tuple[int, bytes]]:
        return [(0, payload([stored([1])])), (1, payload([stored([2], parent=1)]))]

    stream = KVEventStream("p", index, replay=replay)
    await stream.handle(2, payload([stored([3], parent=2)]))
    assert stream.stats.gaps == 0  # joining late is not a gap
    assert index.longest_prefix([1, 2, 3]) == {"p": 3}


async def test_sequence_going_back_means_publisher_restart() -> None:
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("p", index)
    await stream.handle(0, payload([stored([1])]))
    await stream.handle(1, payload([stored([2], parent=1)]))
    await stream.handle(0, payload([stored([7])]))  # new process, new cache
    assert stream.stats.publisher_restarts == 1
    assert index.longest_prefix([1]) == {}
    assert index.longest_prefix([7]) == {"p": 1}


async def test_all_blocks_cleared_event() -> None:
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("p", index)
    await index.add("other", [1])
    await stream.handle(0, payload([stored([1, 2])]))
    await stream.handle(1, payload([AllBlocksCleared()]))
    assert index.longest_prefix([1, 2]) == {"other": 1}


async def test_garbage_never_crashes_and_is_counted() -> None:
    """Seeded fuzz: random bytes, truncated msgpack, wrong types, wrong frame shapes."""
    rng = random.Random(1234)
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("p", index)
    good = payload([stored([1, 2, 3]), BlockRemoved(block_hashes=[3], medium="GPU")])
    enc = msgspec.msgpack.Encoder()
    wrong_types = [
        enc.encode([1.0, [["BlockStored", "not-a-list", None, [], 16, None, "GPU"]]]),
        enc.encode([1.0, [["BlockRemoved", [[1, 2]], "GPU"]]]),  # unhashable block hash
        enc.encode([1.0, [["Nope", 1]]]),
        enc.encode({"ts": 1, "events": []}),
        enc.encode([1.0, [{"type": "BlockStored", "block_hashes": {"a": 1}}]]),
        enc.encode([1.0, [{"type": "BlockRemoved", "block_hashes": [None]}]]),
        enc.encode("hello"),
        b"",
    ]
    seq = 0
    bad = 0
    for i in range(1500):
        kind = i % 5
        if kind == 0:
            body = rng.randbytes(rng.randrange(0, 64))
        elif kind == 1:
            body = good[: rng.randrange(0, len(good))]
        elif kind == 2:
            body = rng.choice(wrong_types)
        elif kind == 3:
            mutated = bytearray(good)
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            body = bytes(mutated)
        else:
            # wrong frame shapes: count and sequence frame length
            shape = rng.randrange(3)
            msg = [b"t"] if shape == 0 else [b"t", b"\x00" * rng.randrange(0, 8), good]
            if shape == 2:
                msg = [b"t", seq.to_bytes(8, "big"), good, b"extra"]
            await stream.handle_frames(msg)
            bad += 1
            continue
        seq += 1
        await stream.handle_frames(frames(seq, body))
    s = stream.stats
    assert s.malformed_frames == bad
    assert s.decode_errors > 200  # most mutated payloads do not decode
    assert s.messages == 1500
    assert s.gaps == 0
    # And the stream still works afterwards.
    seq += 1
    await stream.handle_frames(frames(seq, payload([stored([42])])))
    assert index.longest_prefix([42]) == {"p": 1}


async def test_bytes_hashes_index_like_int_hashes() -> None:
    """A pod with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 publishes digests; the index folds
    them to the 64-bit ints the request side computes."""
    hasher = BlockHasher(block_size=16)
    pool = PrefixCachingBlockPool(num_blocks=8, block_size=16, int_hashes=False)
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("pod-b", index)
    prompt = random_tokens(random.Random(2), 48)
    serve(pool, hasher, prompt)
    events = pool.drain_events()
    assert isinstance(events[0], BlockStored) and isinstance(events[0].block_hashes[0], bytes)
    await stream.handle(0, payload(events))
    wire = [int.from_bytes(d, "big") & ((1 << 64) - 1) for d in hasher.hash_tokens(prompt)]
    assert index.longest_prefix(wire) == {"pod-b": 3}
    await stream.handle(1, payload([BlockRemoved(block_hashes=[hasher.hash_tokens(prompt)[2]], medium="GPU")]))
    assert index.longest_prefix(wire) == {"pod-b": 2}


def group_stored(hashes: list[int], group: int, kind: str) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=None, token_ids=[], block_size=16, lora_id=None,
                       medium="GPU", lora_name=None, group_idx=group, kv_cache_spec_kind=kind)


async def test_hybrid_groups_are_indexed_per_group() -> None:
    """A hybrid model stores each block once per KV-cache group; its sliding-window group then
    drops the old blocks. The full-attention copies still hold the prefix."""
    index = InMemoryKVBlockIndex()
    hybrid: set[str] = set()
    stream = KVEventStream("hybrid", index, hybrid_keys=hybrid)
    await stream.handle(0, payload([group_stored([1, 2, 3, 4], 0, "full_attention"),
                                    group_stored([1, 2, 3, 4], 1, "sliding_window")]))
    assert hybrid == {"hybrid"} and stream.groups[1].kind == "sliding_window"
    await stream.handle(1, payload([BlockRemoved(block_hashes=[1, 2], medium="GPU", group_idx=1)]))
    assert index.longest_prefix([1, 2, 3, 4], ["hybrid"]) == {"hybrid": 4}
    assert index.held("hybrid/g1", [1, 2, 3, 4]) == [False, False, True, True]
    await stream.handle(2, payload([BlockRemoved(block_hashes=[2], medium="GPU", group_idx=0)]))
    assert index.longest_prefix([1, 2, 3, 4], ["hybrid"]) == {"hybrid": 1}
    # AllBlocksCleared (and any resync) clears every group.
    await stream.handle(3, payload([AllBlocksCleared()]))
    assert index.pods_with_blocks() == set()


async def test_rank_mismatch_is_counted_and_lora_names_are_learned() -> None:
    index = InMemoryKVBlockIndex()
    names: set[str] = set()
    stream = KVEventStream("p#dp1", index, rank=1, lora_names=names)
    event = BlockStored(block_hashes=[9], parent_block_hash=None, token_ids=[], block_size=16, lora_id=None,
                        medium="GPU", lora_name="sql-adapter")
    await stream.handle(0, encode_event_batch(KVEventBatch(ts=0.0, events=[event], data_parallel_rank=1)))
    assert stream.stats.rank_mismatches == 0 and names == {"sql-adapter"}
    await stream.handle(1, encode_event_batch(KVEventBatch(ts=0.0, events=[], data_parallel_rank=0)))
    assert stream.stats.rank_mismatches == 1
