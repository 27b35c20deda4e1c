#!/bin/bash
# The alternated overhead runs of this directory: prefix-match-2026-12-05/overhead-ab.sh, with OLD
# a worktree of ac149db (this session's base, with its own build: python -m epp.latency.build_native
# build) and NEW this checkout (the first-token and deferral changes), the logs written here.
# Run under flock /tmp/bench.lock:  OLD=/tmp/ab-old bash overhead-ab.sh
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE exec bash "$HERE/../prefix-match-2026-12-05/overhead-ab.sh"
