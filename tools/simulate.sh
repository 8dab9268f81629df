#!/usr/bin/env bash
# The seeded simulator: runs SEEDS random cluster scenarios (shape, lossy links,
# workload) from seed FIRST, checks the shard core's invariants, and prints any
# failing seed (replay one with: tools/simulate.sh 1 SEED). Bounded: one seed
# takes well under a second in release mode.
#   tools/simulate.sh [SEEDS=100] [FIRST=1]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q --release -p sipshard-shards --features testing --example simulate -- "${1:-100}" "${2:-1}"
