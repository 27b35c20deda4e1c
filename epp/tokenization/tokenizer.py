"""Tokenizers: a Protocol, a deterministic dependency-free `SimpleTokenizer`, and a factory.

`SimpleTokenizer` is what the simulator and the EPP use by default so that both sides agree
on token ids (and therefore on vLLM block hashes) without any model files. It is not a real
BPE, but it behaves like one where it matters for routing: about 4 characters per token,
identical text gives identical ids in every process (no dependence on PYTHONHASHSEED), and a
shared text prefix gives a shared token-id prefix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# Llama-3 vocabulary size: keeps ids in a realistic range for msgpack/KV-event sizes.
DEFAULT_VOCAB_SIZE = 128_256
# Longest piece kept whole (a leading space counts); longer words and space runs are cut into
# chunks of CHUNK_CHARS, which lands near 4 chars/token on English prose, like real BPE.
MAX_PIECE_CHARS = 7
CHUNK_CHARS = 4
# Memoized piece -> id entries kept (two generations of half this size; ~130 bytes each).
# Client text is unbounded, so the cache must be too: an id is a pure function of its piece,
# and a piece that fell out is simply hashed again.
MAX_CACHED_PIECES = 131_072

# Words and single punctuation/symbol characters, each with at most one leading space (as
# GPT-2/Llama BPE pre-tokenizers attach the space to the next word), and other whitespace
# runs; together they cover the whole string so decode(encode(s)) == s.
_PIECE_RE = re.compile(r" ?\w+| ?[^\w\s]|\s+", re.UNICODE)


@runtime_checkable
class Tokenizer(Protocol):
    """What the EPP and the simulator need from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SimpleTokenizer:
    """Regex pre-tokenizer + stable hash of each piece into [0, vocab_size).

    Decoding is exact for ids this instance has produced (it remembers id -> piece); ids it
    has never seen decode to a deterministic placeholder piece, since a hash cannot be
    inverted. Collisions in the vocabulary are possible (as in any hashed vocabulary) and
    only matter for decode (e.g. " Hel" and "lo" share an id), never for routing.
    """

    def __init__(self, vocab_size: int = DEFAULT_VOCAB_SIZE, max_piece_chars: int = MAX_PIECE_CHARS,
                 max_cached_pieces: int = MAX_CACHED_PIECES) -> None:
        if max_cached_pieces < 2:
            raise ValueError(f"max_cached_pieces must be >= 2, got {max_cached_pieces}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if max_piece_chars < 1:
            raise ValueError(f"max_piece_chars must be >= 1, got {max_piece_chars}")
        self.vocab_size = vocab_size
        self.max_piece_chars = max_piece_chars
        # Generational cache (approximate LRU without per-hit bookkeeping): lookups hit the
        # young dict; when it is full it becomes the old one and the previous old one is
        # dropped; an old hit is promoted. At most max_cached_pieces entries in all.
        self._generation_size = max_cached_pieces // 2
        self._piece_to_id: dict[str, int] = {}
        self._old_piece_to_id: dict[str, int] = {}
        # Bounded by vocab_size (one piece per id: the first one seen).
        self._id_to_piece: dict[int, str] = {}

    def _piece_id(self, piece: str) -> int:
        token_id = self._piece_to_id.get(piece)
        if token_id is None:
            token_id = self._old_piece_to_id.get(piece)
            if token_id is None:
                digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
                token_id = int.from_bytes(digest, "big") % self.vocab_size
                self._id_to_piece.setdefault(token_id, piece)
            if len(self._piece_to_id) >= self._generation_size:
                self._old_piece_to_id = self._piece_to_id
                self._piece_to_id = {}
            self._piece_to_id[piece] = token_id
        return token_id

    @property
    def cached_pieces(self) -> int:
        return len(self._piece_to_id) + len(self._old_piece_to_id)

    def pieces(self, text: str) -> list[str]:
        """The text cut into the pieces that become tokens (exposed for tests and docs)."""
        out: list[str] = []
        whole = self.max_piece_chars
        for match in _PIECE_RE.finditer(text):
            piece = match.group()
            if len(piece) <= whole:
                out.append(piece)
            else:
                out.extend(piece[i : i + CHUNK_CHARS] for i in range(0, len(piece), CHUNK_CHARS))
        return out

    def encode(self, text: str) -> list[int]:
        piece_id = self._piece_id
        return [piece_id(p) for p in self.pieces(text)]

    def decode(self, ids: Sequence[int]) -> str:
        table = self._id_to_piece
        return "".join(table.get(i) or f"<{i}>" for i in ids)


def get_tokenizer(name: str = "simple") -> Tokenizer:
    """`simple` (the built-in SimpleTokenizer) or a model's tokenizer directory / tokenizer.json
    (plain text, no special tokens; for requests use epp.tokenization.factory)."""
    if name == "simple":
        return SimpleTokenizer()
    if not os.path.exists(name):
        raise ValueError(f"unknown tokenizer {name!r}: expected 'simple' or a path to a tokenizer.json")
    from epp.tokenization.hf import HFPromptTokenizer

    return HFPromptTokenizer(name)
