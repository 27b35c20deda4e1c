"""The model's own tokenizer, from a local directory: tokenizer.json (Hugging Face `tokenizers`)
and the chat template and special tokens of tokenizer_config.json (or chat_template.jinja).

The directory is the pod's model path, or in Kubernetes a ConfigMap / volume holding the two
files (deploy/vllm shows how). Nothing is downloaded: a missing file is a clear error at load.

Speed: a prompt is split at the tokenizer's special tokens (<|eot_id|>, <|im_end|>, ...) and
long text between them at line starts into chunks of at least CHUNK_CHARS; each piece is
encoded once and cached (LRU bounded by tokens), so a long system prompt, document or the
earlier turns of a conversation are not re-encoded on every request. Splitting at special
tokens is exact only when the `tokenizers` library itself encodes the pieces independently:
special added tokens that strip no neighbouring whitespace and are not normalized, no
normalizer, and a pre-tokenizer that adds nothing at the start of the text (ByteLevel
without prefix space, as Llama 3 and Qwen use); line cuts also need a known split pattern
(LINE_CUT_SAFE_PATTERNS). Otherwise the whole prompt is encoded every time.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from epp.tokenization.chat_template import ChatTemplateError
from epp.tokenization.hf_chat_template import HFChatTemplate
from epp.tokenization.prompt import ChatPrompt

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
# transformers' special-token attributes, passed to the chat template by name.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# The piece cache is bounded by the tokens it holds (about 36 bytes each as Python ints).
PIECE_CACHE_TOKENS = 1_000_000
# Pieces shorter than this are cheaper to encode than to hash and look up.
MIN_CACHED_PIECE_CHARS = 64
# Long text between special tokens is cut into chunks of at least this many characters, at
# a line start (see _LINE_CUT), so a long shared prefix (a document, few-shot examples) is
# cached chunk by chunk even when what follows it differs.
CHUNK_CHARS = 2048
# Pre-tokenizer split patterns (Llama 3) for which a cut right after a newline that is
# followed by a letter or digit is always a pre-token boundary, with identical pre-tokens on
# both sides: every alternative that can consume a newline ("\s*[\r\n]+", the punctuation
# run's "[\r\n]*") stops before a letter or digit, none can start with a newline and go on
# into one, and nothing looks behind. BPE never merges across pre-tokens, so encoding the two
# sides separately gives the same ids (tests compare with whole-text encoding).
LINE_CUT_SAFE_PATTERNS = frozenset({
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
})
_LINE_CUT = re.compile(r"[\r\n](?=[^\W_])")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])  # AddedToken serialized as an object
    return None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return doc


def resolve_dir(spec: str) -> str:
    """The directory holding tokenizer.json: `spec` itself, or the folder of a tokenizer.json."""
    directory = spec if os.path.isdir(spec) else os.path.dirname(spec) or "."
    if not os.path.exists(spec) or not os.path.isfile(os.path.join(directory, TOKENIZER_FILE)):
        raise ValueError(f"tokenizer {spec!r}: no {TOKENIZER_FILE} in {directory!r}")
    return directory


class HFPromptTokenizer:
    """tokenizer.json + chat template of one model, from a local directory."""

    def __init__(self, path: str, piece_cache_tokens: int = PIECE_CACHE_TOKENS) -> None:
        directory = resolve_dir(path)
        self.directory = directory
        self.name = directory
        tokenizer_file = os.path.join(directory, TOKENIZER_FILE)
        try:
            self._tok = HFTokenizer.from_file(tokenizer_file)
        except Exception as e:  # the Rust side raises a bare Exception on a bad file
            raise ValueError(f"cannot load {tokenizer_file}: {e}") from None
        config_file = os.path.join(directory, CONFIG_FILE)
        config = _read_json(config_file) if os.path.isfile(config_file) else {}
        specials = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None}
        self.special_tokens = specials
        self.template: HFChatTemplate | None = None
        source, where = self._template_source(config, config_file)
        if source is not None:
            self.template = HFChatTemplate(source, specials, where)
        self._piece_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._piece_cache_tokens = piece_cache_tokens
        self._cached_tokens = 0
        self._split: re.Pattern[str] | None = self._special_splitter()
        self._line_cuts = self._split is not None and self._line_cuts_exact()
        # What add_special_tokens=True adds, if it only prepends (Llama: BOS).
        with_specials = self._tok.encode("x", add_special_tokens=True).ids
        plain = self._tok.encode("x", add_special_tokens=False).ids
        prefix = self._tok.encode("", add_special_tokens=True).ids
        self._special_prefix: list[int] | None = prefix if with_specials == prefix + plain else None

    @staticmethod
    def _template_source(config: dict[str, Any], config_file: str) -> tuple[str | None, str]:
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: vLLM/transformers use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            return template, f"{config_file}: chat_template"
        jinja_file = os.path.join(os.path.dirname(config_file), TEMPLATE_FILE)
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                return f.read(), jinja_file
        return None, config_file

    def _special_splitter(self) -> re.Pattern[str] | None:
        """A regex that cuts text at special tokens, if encoding the pieces separately is exact."""
        tok = self._tok
        pre = json.loads(tok.pre_tokenizer.__getstate__()) if tok.pre_tokenizer is not None else {}
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        independent = tok.normalizer is None and all(
            s.get("type") in ("Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit")
            or (s.get("type") == "ByteLevel" and not s.get("add_prefix_space"))
            for s in steps if isinstance(s, dict) and s)
        specials = [a for a in tok.get_added_tokens_decoder().values() if a.special]
        if not independent or not specials or any(a.lstrip or a.rstrip or a.normalized for a in specials):
            log.info("tokenizer %s: prompts are encoded whole (pieces between special tokens "
                     "would not encode independently)", self.directory)
            return None
        contents = sorted((a.content for a in specials), key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")

    def _line_cuts_exact(self) -> bool:
        tok = self._tok
        pre = json.loads(tok.pre_tokenizer.__getstate__()) if tok.pre_tokenizer is not None else {}
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        splits = [s for s in steps if s.get("type") == "Split"]
        added = tok.get_added_tokens_decoder().values()
        return bool(splits) and all(
            s.get("pattern", {}).get("Regex") in LINE_CUT_SAFE_PATTERNS and s.get("behavior") == "Isolated"
            and not s.get("invert") for s in splits) and all(
            not ({"\r", "\n"} & set(a.content)) and a.special for a in added)

    def _chunks(self, piece: str) -> list[str]:
        if not self._line_cuts or len(piece) < 2 * CHUNK_CHARS:
            return [piece]
        out: list[str] = []
        start = 0
        while len(piece) - start >= 2 * CHUNK_CHARS:
            cut = _LINE_CUT.search(piece, start + CHUNK_CHARS)
            if cut is None:
                break
            out.append(piece[start:cut.end()])
            start = cut.end()
        out.append(piece[start:])
        return out

    # --- Tokenizer --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    # --- PromptTokenizer --------------------------------------------------------------------
    def completion_ids(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        if self._split is None or (add_special_tokens and self._special_prefix is None):
            return list(self._tok.encode(prompt, add_special_tokens=add_special_tokens).ids)
        ids = self._encode_pieces(prompt)
        return self._special_prefix + ids if add_special_tokens and self._special_prefix else ids

    def render_chat(self, chat: ChatPrompt) -> str:
        """The prompt text of a conversation (what vLLM logs as the prompt)."""
        if self.template is None:
            raise ChatTemplateError(
                f"tokenizer {self.directory}: no chat template in {CONFIG_FILE} or {TEMPLATE_FILE} "
                "(give the model's template, or use the pod's /tokenize: tokenizer 'vllm-tokenize')")
        return self.template.render(
            chat.messages, add_generation_prompt=chat.add_generation_prompt,
            continue_final_message=chat.continue_final_message, tools=chat.tools,
            documents=chat.documents, template_kwargs=chat.template_kwargs)

    def chat_ids(self, chat: ChatPrompt) -> list[int]:
        text = self.render_chat(chat)
        if chat.add_special_tokens or self._split is None:
            return list(self._tok.encode(text, add_special_tokens=chat.add_special_tokens).ids)
        return self._encode_pieces(text)

    def _encode_pieces(self, text: str) -> list[int]:
        assert self._split is not None
        cache = self._piece_cache
        tok = self._tok
        out: list[int] = []
        for part in self._split.split(text):
            for piece in self._chunks(part) if part else ():
                if len(piece) < MIN_CACHED_PIECE_CHARS:
                    out += tok.encode(piece, add_special_tokens=False).ids
                    continue
                ids = cache.get(piece)
                if ids is None:
                    ids = tok.encode(piece, add_special_tokens=False).ids
                    if len(ids) <= self._piece_cache_tokens:
                        cache[piece] = ids
                        self._cached_tokens += len(ids)
                        while self._cached_tokens > self._piece_cache_tokens:
                            self._cached_tokens -= len(cache.popitem(last=False)[1])
                else:
                    cache.move_to_end(piece)
                out += ids
        return out
