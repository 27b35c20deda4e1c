import os
import subprocess
import sys

import pytest

from epp.tokenization.tokenizer import SimpleTokenizer, Tokenizer, get_tokenizer

PROSE = (
    "The Kubernetes scheduler framework and the Gateway API Inference Extension endpoint picker "
    "both expose a small plugin interface per extension point. Scores are normalized to the unit "
    "interval and combined by weights, so operators can tune cache affinity against load."
)


def test_roundtrip_and_protocol() -> None:
    tok = SimpleTokenizer()
    assert isinstance(tok, Tokenizer)
    text = "Hello,   world!\n\tTabs and ümlauts; extraordinarily-long-words too."
    assert tok.decode(tok.encode(text)) == text


def test_about_four_chars_per_token() -> None:
    ids = SimpleTokenizer().encode(PROSE)
    assert 3.0 <= len(PROSE) / len(ids) <= 5.0


def test_ids_in_vocab_and_shared_prefix() -> None:
    tok = SimpleTokenizer(vocab_size=1000)
    a = tok.encode("system prompt shared by everyone. question one")
    b = tok.encode("system prompt shared by everyone. another question")
    assert all(0 <= i < 1000 for i in a + b)
    assert a[:6] == b[:6]


def test_same_ids_regardless_of_pythonhashseed() -> None:
    code = (
        "from epp.tokenization.tokenizer import SimpleTokenizer;"
        "print(SimpleTokenizer().encode('stable ids, please'))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outs == {str(SimpleTokenizer().encode("stable ids, please")) + "\n"}


def test_unknown_id_decodes_to_placeholder() -> None:
    assert SimpleTokenizer().decode([42]) == "<42>"


def test_get_tokenizer() -> None:
    assert isinstance(get_tokenizer(), SimpleTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("/nonexistent/tokenizer.json")
