#!/usr/bin/env bash
# The shard core, this checkout against an older commit, side by side: the
# workload of shards/examples/profile_txns.rs (OPTIONS + 200 with timer J, or
# INVITE + 486 + ACK with timers G, H, I, on one shard with the server's 1,024
# stripes), both builds run alternately so a noisy minute of a shared host hits
# both alike; prints each build's median transactions/s, its range, and the
# ratio of the medians. The rate is the steady state's: set-up and the first
# round (the shard's tables and wheel growing) are not timed, as criterion's
# warm-up is not (before 2026-11-24 that round was timed, which flattered
# changes that removed a growing map: OPTIONS 1.28x then, 1.09x warm).
#
#   tools/ab-core.sh [--runs N] [--rounds R] [--modes "options invite"] REV
#
# Modes: options, invite, register (profile_txns's). N alternations (default
# 11), R rounds of 10,000 transactions per run (default 20). The older commit is built in a worktree under target/ab/ with
# this checkout's profile_txns.rs (public API only; a commit whose API differs
# fails to build, and the script says so). Bounded: every run is one process
# of a few seconds, each under a 120 s timeout; the worktree is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=11 rounds=20 modes="options invite" rev=""
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "ab-core: unknown option $1" >&2; exit 2 ;;
    *) rev=$1; shift ;;
  esac
done
if [ -z "$rev" ]; then
  echo "ab-core: name the older commit (e.g. tools/ab-core.sh HEAD~3)" >&2
  exit 2
fi
old=$(git rev-parse --short "$rev^{commit}") || { echo "ab-core: $rev is not a commit" >&2; exit 2; }
new=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain -- shards parser)" ] || new="$new+"

tree=target/ab/$old
cleanup() { git worktree remove --force "$tree" 2>/dev/null || true; }
trap cleanup EXIT
cleanup
mkdir -p target/ab
git worktree add -q --detach "$tree" "$old"
cp shards/examples/profile_txns.rs "$tree/shards/examples/profile_txns.rs"

echo "building $new (this checkout) and $old ..."
cargo build --release -q -p sipshard-shards --features testing --example profile_txns
if ! (cd "$tree" && CARGO_TARGET_DIR="$PWD/../$old-target" cargo build --release -q -p sipshard-shards \
  --features testing --example profile_txns); then
  echo "ab-core: $old does not build with this checkout's profile_txns.rs (its shard API differs)" >&2
  exit 1
fi
bins=("$new=target/release/examples/profile_txns" "$old=target/ab/$old-target/release/examples/profile_txns")

echo "commit $new against $old, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs," \
  "Linux $(uname -r); $runs alternations of $rounds rounds"
for mode in $modes; do
  for i in $(seq 1 "$runs"); do
    for entry in "${bins[@]}"; do
      name=${entry%%=*} bin=${entry#*=}
      rate=$(timeout 120 "$bin" "$rounds" "$mode" | awk '/transactions\/s/ {print $1}')
      echo "$mode $name ${rate:-0}"
    done
    printf '.' >&2
  done
  echo >&2
done | python3 -c '
import statistics, sys
rates = {}
for line in sys.stdin:
    mode, name, rate = line.split()
    rates.setdefault(mode, {}).setdefault(name, []).append(float(rate))
for mode, by_build in rates.items():
    medians = {}
    for name, values in by_build.items():
        medians[name] = statistics.median(values)
        print(f"{mode:8s} {name:9s} median {medians[name] / 1000:6.0f} k/s  (range {min(values) / 1000:.0f}-{max(values) / 1000:.0f}, {len(values)} runs)")
    new, old = list(medians)
    print(f"{mode:8s} {new} / {old}: {medians[new] / medians[old]:.2f}x")
'
