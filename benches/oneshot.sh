#!/usr/bin/env bash
# One-shot `rewire render` of a directory catalog of N instances (default 10 000) beside its
# floor (a process that only opens and reads the same files), in the same run: see
# benches/oneshot.rs. Measures REWIRE_BIN when set (e.g. target/dist/rewire), else the bench
# build's rewire.
#   benches/oneshot.sh [N] [--runs R]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench --bench oneshot -- "$@"
