#!/usr/bin/env bash
# The kill -9 failover drill on a fresh checkout (issue 6, DESIGN.md §5):
#
#   tools/failover-test.sh [--calls N] [--replication sync|async] [--rate R] [--role b2bua|proxy] [--shards S]
#                          [--rejoin [--rejoin-after-ms MS] | --pause-ms MS | --partition-ms MS]
#
# Builds sipshard (release) if needed and runs `sipshard failover-test`: two clustered
# nodes on loopback, N calls set up through node 1 and held, node 1 killed with SIGKILL,
# every BYE sent to node 2. Bounded (10 minutes); stops everything it started by PID,
# also when interrupted. The last line is `failover: established=N ended_ok=M lost=K`;
# the exit status is non-zero when a call was lost.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin sipshard
target/release/sipshard failover-test "$@" &
drill=$!
cleanup() {
    # The drill's nodes are its children: stop them with it.
    local children
    children=$(pgrep -P "$drill" || true)
    kill "$drill" $children 2>/dev/null || true
}
trap cleanup INT TERM
# The watchdog keeps no terminal or pipe open (a reader of this script's output is not held up by it).
( sleep 600 && echo "failover-test.sh: over 10 minutes, stopping" >&2 && cleanup ) </dev/null >/dev/null 2>&1 &
watchdog=$!
status=0
wait "$drill" || status=$?
pkill -P "$watchdog" 2>/dev/null || true
kill "$watchdog" 2>/dev/null || true
exit "$status"
