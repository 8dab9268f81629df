#!/usr/bin/env bash
# Runs the shard core benchmark under glibc, jemalloc and mimalloc (through
# LD_PRELOAD, same binary), in interleaved rounds so host noise hits all three
# alike, and prints criterion's median throughput for each.
#
#   tools/bench-allocators.sh [ROUNDS]     (default 3; about 40 s per round)
#
# Installs Debian's libjemalloc2 and libmimalloc2.0 if they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
lib=/usr/lib/x86_64-linux-gnu
if [ ! -e "$lib/libjemalloc.so.2" ] || [ ! -e "$lib/libmimalloc.so.2" ]; then
  apt-get install -y -qq libjemalloc2 libmimalloc2.0 >/dev/null
fi
cargo bench -p sipshard-shards --features testing --bench core --no-run 2>&1 | tail -1
bin=$(ls -t target/release/deps/core-* | grep -v '\.d$' | head -1)
echo "commit $(git rev-parse --short HEAD), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, Linux $(uname -r)"
for round in $(seq 1 "$rounds"); do
  for alloc in glibc jemalloc mimalloc; do
    case $alloc in
      glibc) preload="" ;;
      jemalloc) preload="$lib/libjemalloc.so.2" ;;
      mimalloc) preload="$lib/libmimalloc.so.2" ;;
    esac
    LD_PRELOAD=$preload timeout 300 "$bin" --bench --warm-up-time 1 --measurement-time 5 --noplot \
      'transactions/(non_invite_request_response|invite_486_ack)$' 2>&1 |
      python3 -c '
import re, sys
name, out = None, []
for line in sys.stdin:
    m = re.match(r"^transactions/(\S+)", line)
    if m:
        name = m.group(1)
        continue
    m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+) ", line)
    if m and name:
        out.append(f"{name}={m.group(1)}{m.group(2)}")
        name = None
print(" ".join(out))' | sed "s/^/round $round $alloc: /"
  done
done
