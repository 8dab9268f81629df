#!/usr/bin/env bash
# Side by side on one box: the same ladder of call rates, sipbench uac ->
# server -> sipbench uas over loopback UDP, against
#   (a) sipshard as a stateful proxy (one shard per core),
#   (b) Kamailio as a transaction-stateful proxy with dialog tracking
#       (tools/kamailio/kamailio.cfg: sl, tm, rr, dialog, record_route, t_relay;
#       children = cores; -m 1024 -x tlsf; 4 MiB socket buffers),
#   (c) sipshard as a B2BUA.
# At each rate: calls/s completed, failed calls, setup latency p50/p99/p99.9,
# and the server's CPU seconds (user + system, all its threads or processes)
# and CPU per call. Prints one table, then the highest rate each server
# sustains: < 0.1 % failed (or timed out), setup p99 under 50 ms, and the
# generator kept up (>= 95 % of the offered calls started).
#
#   tools/bench-vs-kamailio.sh [--seconds S] [--rates "R1 R2 .."] [--hold-ms H]
#                              [--servers "sipshard kamailio b2bua"] [--shards N|auto]
#                              [--shard-ports P] [--rounds N]
#
# Every step runs on a freshly started server, rates in the outer loop and servers in
# the inner one; --rounds repeats the whole ladder, and a rate counts as sustained when
# it was in more than half of the rounds (medians of p99 and CPU per call).
#
# Server kamailio1 is Kamailio with one worker (children = 1) instead of one per
# core, sipshard1 the proxy with one shard, sipshard-shared the proxy without its
# shards' own ports (every message through the shared port), sipshard-free the proxy
# with its shards not pinned to cores (--no-pin); the ratios use the
# better of the Kamailio runs.
# sipshard runs with its shards' own UDP ports from P (default 15071; 0: none,
# every message through the shared port), tuning.md "The shards' own ports".
#
# Bounded: each step is S seconds of calls plus the hold and at most 40 s of
# drain; in a round, a server stops after two rates in a row it does not sustain.
# Idempotent: builds sipshard and sipbench if needed, installs kamailio and
# sip-tester from Debian if missing, stops every process it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

seconds=10
rates="1000 2000 3000 4000 6000 8000 10000 12000 15000 20000"
hold_ms=1000
servers="sipshard kamailio b2bua"
shards=auto
shard_ports=15071
rounds=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --rates) rates=$2; shift 2 ;;
        --hold-ms) hold_ms=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --shard-ports) shard_ports=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

missing=()
command -v kamailio >/dev/null || missing+=(kamailio)
command -v sipp >/dev/null || missing+=(sip-tester)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}..." >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q -p sipshard -p sipshard-bench
sipshard=target/release/sipshard
sipbench=target/release/sipbench
cores=$(nproc)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

server_port=15070
uas_port=15090


wait_for_options() {
    # The server answers an OPTIONS (its health check, or relayed to the callee) within 10 s.
    for _ in $(seq 1 50); do
        # Bounded: an OPTIONS nobody answers would otherwise wait out 64*T1.
        if timeout 2 "$sipbench" uac "127.0.0.1:$server_port" --scenario options --calls 1 --rate 10 --quiet >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "the server on port $server_port never answered OPTIONS" >&2
    return 1
}

start_server() {
    case "$1" in
        sipshard | sipshard1 | sipshard-shared | sipshard-free | b2bua)
            local role=proxy count=$shards ports=$shard_ports pin=()
            [ "$1" = b2bua ] && role=b2bua
            [ "$1" = sipshard1 ] && count=1
            [ "$1" = sipshard-shared ] && ports=0
            [ "$1" = sipshard-free ] && pin=(--no-pin)
            RUST_LOG=warn "$sipshard" run --listen "127.0.0.1:$server_port" --route "sip:127.0.0.1:$uas_port" \
                --role "$role" --shards "$count" --shard-ports "$ports" "${pin[@]}" >"$work/server.log" 2>&1 &
            ;;
        relay)
            "$sipbench" relay --listen "127.0.0.1:$server_port" --to "127.0.0.1:$uas_port" >"$work/server.log" 2>&1 &
            ;;
        kamailio | kamailio1)
            local children=$cores
            [ "$1" = kamailio1 ] && children=1
            kamailio -DD -E -m 1024 -M 32 -x tlsf -f tools/kamailio/kamailio.cfg \
                -A "LISTEN=udp:127.0.0.1:$server_port" -A "CALLEE=\"sip:127.0.0.1:$uas_port\"" \
                -A "CHILDREN=$children" >"$work/server.log" 2>&1 &
            ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    wait_for_options
}

stop_server() {
    # Kamailio stops its children on SIGTERM; sipshard gets SIGKILL (a graceful stop would
    # wait for its last transactions, server.drain_s).
    local children
    children=$(pgrep -P "$server_pid" || true)
    if [ "${1#kamailio}" != "$1" ]; then kill "$server_pid" 2>/dev/null || true; else kill -9 "$server_pid" 2>/dev/null || true; fi
    wait "$server_pid" 2>/dev/null || true
    sleep 1
    for pid in $children; do kill -9 "$pid" 2>/dev/null || true; done
    wait "$server_pid" 2>/dev/null || true
    sleep 0.5
}

"$sipbench" uas --listen "127.0.0.1:$uas_port" --threads 1 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

echo "# sipbench -> server -> sipbench uas, loopback UDP, ${seconds} s per step, hold ${hold_ms} ms, sipshard shard ports from ${shard_ports}"
echo "# $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $cores x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(kamailio -v 2>/dev/null | head -1 | awk '{print $1, $2}')"
printf "%-9s %7s %9s %7s %8s %8s %8s %8s %9s %s\n" server offered calls/s failed p50_ms p99_ms p999_ms cpu_s cpu_us/call sustained
results="$work/results"
: >"$results"
# Rates outer, servers inner, a fresh server for every step: a noisy minute of this shared box
# then hits every server at that rate, not one server's whole ladder.
declare -A misses
for round in $(seq 1 "$rounds"); do
    for server in $servers; do misses[$server]=0; done
    for rate in $rates; do
        for server in $servers; do
            [ "${misses[$server]}" -ge 2 ] && continue
            start_server "$server"
            before=$(cpu_ticks "$server_pid")
            timeout $((seconds + hold_ms / 1000 + 45)) "$sipbench" uac "127.0.0.1:$server_port" --rate "$rate" \
                --calls $((rate * seconds)) --duration "$seconds" --hold-ms "$hold_ms" --threads 1 \
                --max-failed-ratio 1 --quiet --json "$work/step.json" >/dev/null 2>&1 || true
            after=$(cpu_ticks "$server_pid")
            stop_server "$server"
            line=$(record_step "$results" "$work/step.json" "$server" "$rate" "$seconds" "$(( after - before ))")
            echo "$line" | awk '{printf "%-9s %7s %9s %7s %8s %8s %8s %8s %9s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
            misses[$server]=$(next_misses "$line" "${misses[$server]}")
        done
    done
done
python3 - "$results" "$rounds" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    server, offered, _, _, _, p99, _, _, per_call, sustained, _ = line.split()
    rows.setdefault(server, {}).setdefault(float(offered), []).append((sustained == "yes", float(p99), float(per_call)))
rounds = int(sys.argv[2])
# A rate is sustained when it was in more than half of the rounds; p99 and CPU are medians.
held = {s: {r: statistics.median(x[1] for x in v) for r, v in rates.items() if 2 * sum(x[0] for x in v) > rounds}
        for s, rates in rows.items()}
cpu = {s: {r: statistics.median(x[2] for x in v) for r, v in rates.items()} for s, rates in rows.items()}
best = {s: max(r, default=0.0) for s, r in held.items()}
print(f"highest sustained (calls/s, in more than half of {rounds} round(s)): "
      + ", ".join(f"{s} {r:.0f}" for s, r in best.items()))
kamailios = [name for name in ("kamailio", "kamailio1") if best.get(name)]
if kamailios:
    kname = max(kamailios, key=lambda name: best[name])
    for s in ("sipshard", "sipshard1", "b2bua", "relay"):
        if s in best:
            print(f"{s} / {kname}: {best[s] / best[kname]:.2f}x")
        common = sorted(set(held.get(s, {})) & set(held[kname]))
        if common:
            print(f"{s} median p99 where both sustain: " + ", ".join(
                f"{r:.0f}: {held[s][r]:.2f} vs {held[kname][r]:.2f} ms" for r in common))
            r = common[-1]
            print(f"{s} CPU per call at {r:.0f} calls/s: {cpu[s][r]:.0f} us vs {kname} {cpu[kname][r]:.0f} us "
                  f"({cpu[s][r] / cpu[kname][r]:.2f}x)")
EOF
