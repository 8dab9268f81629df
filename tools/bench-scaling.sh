#!/usr/bin/env bash
# How sipshard scales with cores: the same ladder of call rates per shard,
# sipbench uac -> sipshard (N shards on cores 0..N-1) -> sipbench uas over
# loopback UDP, for each N. The load generators are pinned (taskset) to the
# last cores, away from the shards, so the server's figures are its own.
# At each step: calls/s completed, failed calls, setup p50/p99/p99.9 and the
# server's CPU seconds; per N the highest rate sustained (< 0.1 % failed,
# setup p99 < 50 ms, >= 95 % of the offered calls started) and that rate per
# shard. Needs at least 2 x (largest N) cores to mean anything: on a small
# box the generators share the shards' cores.
#
#   tools/bench-scaling.sh [--shards "1 2 4 8"] [--per-shard "4000 8000 .."]
#                          [--seconds S] [--hold-ms H] [--role proxy|b2bua]
#                          [--load-cores K] [--spin-us U] [--shard-ports P] [--bin DIR]
#
# --per-shard lists rates per shard: N shards are offered N times each.
# --load-cores: cores for the generators (default: half the box); uac and uas
# get half of them each, one thread per core. --spin-us: the shards'
# server.spin_before_park_us (default 0, sipshard's default). --shard-ports: the
# shards' own UDP ports from P (server.shard_ports; default 0, none: half of the
# messages cross shards). --bin: where sipshard and
# sipbench are (default: build them in target/release), with the commit they
# were built from in DIR/COMMIT if they were copied from another box.
#
# Bounded: each step is S seconds of calls plus the hold and at most 40 s of
# drain; a ladder stops after two steps in a row it does not sustain. Stops
# every process it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

shard_counts="1 2 4 8"
per_shard="4000 8000 12000 16000 24000 32000"
seconds=5
hold_ms=1000
role=proxy
cores=$(nproc)
load_cores=$(( cores / 2 > 0 ? cores / 2 : 1 ))
spin_us=0
shard_ports=0
bin=
while [ $# -gt 0 ]; do
    case "$1" in
        --shards) shard_counts=$2; shift 2 ;;
        --per-shard) per_shard=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --hold-ms) hold_ms=$2; shift 2 ;;
        --role) role=$2; shift 2 ;;
        --load-cores) load_cores=$2; shift 2 ;;
        --spin-us) spin_us=$2; shift 2 ;;
        --shard-ports) shard_ports=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$role" in proxy | b2bua) ;; *) echo "--role must be proxy or b2bua, not $role" >&2; exit 2 ;; esac
command -v python3 >/dev/null || { echo "bench-scaling needs python3 (for the step summaries)" >&2; exit 2; }
command -v taskset >/dev/null || { echo "bench-scaling needs taskset (util-linux)" >&2; exit 2; }
if [ -z "$bin" ]; then
    cargo build --release -q -p sipshard -p sipshard-bench
    bin=target/release
fi
sipshard=$bin/sipshard
sipbench=$bin/sipbench
for n in $shard_counts; do
    if [ "$n" -gt $(( cores - load_cores )) ]; then
        echo "note: $n shards and $load_cores generator cores exceed the box's $cores cores; they will share" >&2
    fi
done
# The generators' cores: the last load_cores of the box, half for the caller, half for the callee.
uac_threads=$(( load_cores / 2 > 0 ? load_cores / 2 : 1 ))
uas_threads=$(( load_cores - uac_threads > 0 ? load_cores - uac_threads : 1 ))
first_load=$(( cores - load_cores ))
uac_cpus="$first_load-$(( first_load + uac_threads - 1 ))"
uas_cpus="$(( first_load + uac_threads ))-$(( cores - 1 ))"
[ "$load_cores" -lt 2 ] && { uac_cpus=$(( cores - 1 )); uas_cpus=$(( cores - 1 )); }

work=$(mktemp -d)
pids=()
server_pid=
cleanup() {
    for pid in "${pids[@]}" $server_pid; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

server_port=15270
uas_port=15290

start_server() { # shards
    printf '[server]\nlisten = "127.0.0.1:%s"\nrole = "%s"\nshards = %s\nspin_before_park_us = %s\nshard_ports = %s\n[proxy]\ndefault_route = "sip:127.0.0.1:%s"\n' \
        "$server_port" "$role" "$1" "$spin_us" "$shard_ports" "$uas_port" >"$work/server.toml"
    RUST_LOG=warn "$sipshard" run --config "$work/server.toml" >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 50); do
        if timeout 2 "$sipbench" uac "127.0.0.1:$server_port" --scenario options --calls 1 --rate 10 --quiet \
            >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "sipshard with $1 shards never answered OPTIONS:" >&2
    tail -5 "$work/server.log" >&2
    return 1
}

stop_server() {
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    sleep 0.5
}

taskset -c "$uas_cpus" "$sipbench" uas --listen "127.0.0.1:$uas_port" --threads "$uas_threads" >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

echo "# sipbench uac ($uac_threads threads, cpus $uac_cpus) -> sipshard $role (spin_before_park_us $spin_us) -> sipbench uas ($uas_threads threads, cpus $uas_cpus)"
# The binaries' commit: a COMMIT file beside binaries copied from elsewhere, else the checkout's.
commit=$(cat "$bin/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "# loopback UDP, ${seconds} s per step, hold ${hold_ms} ms; $commit, $cores x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
printf "%-6s %8s %9s %7s %8s %8s %8s %8s %11s %s\n" shards offered calls/s failed p50_ms p99_ms p999_ms cpu_s cpu_us/call sustained
results="$work/results"
: >"$results"
for n in $shard_counts; do
    start_server "$n"
    misses=0
    for r in $per_shard; do
        rate=$(( r * n ))
        before=$(cpu_ticks "$server_pid")
        timeout $((seconds + hold_ms / 1000 + 40)) taskset -c "$uac_cpus" "$sipbench" uac "127.0.0.1:$server_port" \
            --rate "$rate" --calls $((rate * seconds)) --duration "$seconds" --hold-ms "$hold_ms" \
            --threads "$uac_threads" --max-failed-ratio 1 --quiet --json "$work/step.json" >/dev/null 2>&1 || true
        after=$(cpu_ticks "$server_pid")
        line=$(record_step "$results" "$work/step.json" "$n" "$rate" "$seconds" "$(( after - before ))")
        echo "$line" | awk '{printf "%-6s %8s %9s %7s %8s %8s %8s %8s %11s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
        misses=$(next_misses "$line" "$misses")
        [ "$misses" -ge 2 ] && break
        sleep 1
    done
    stop_server
done
python3 - "$results" <<'EOF'
import sys
best = {}
for line in open(sys.argv[1]):
    n, offered, *_, sustained, _ = line.split()
    best.setdefault(int(n), 0.0)
    if sustained == "yes":
        best[int(n)] = max(best[int(n)], float(offered))
base = best.get(min(best)) if best else 0
for n, rate in sorted(best.items()):
    speedup = f", {rate / base:.2f}x of {min(best)} shard(s)" if base else ""
    print(f"{n} shard(s): highest sustained {rate:.0f} calls/s ({rate / n:.0f} per shard{speedup})")
EOF
