#!/usr/bin/env bash
# What replication costs (issue 6): the same ladder of call rates, sipbench uac ->
# node 1 -> sipbench uas over loopback UDP, against
#   single:        one sipshard node on every core, no replication;
#   cluster-async: two nodes (each on half the cores), replicas = 2, async;
#   cluster-sync:  the same with sync replication (a change's messages wait for
#                  the backup's ack).
# The caller sends to node 1; the stripes node 2 owns are forwarded to it over
# the replica link (as behind one floating address). The modes
# cluster-async-spread and cluster-sync-spread send each call to the node that
# owns its stripe instead (sipbench --spread: an upstream proxy hashing
# Call-IDs onto the nodes), so only replication is added. At each rate: calls/s
# completed, failed, setup p50/p99/p99.9 and the CPU seconds of the node
# processes; the highest rate each sustains (< 0.1 % failed, p99 < 50 ms) and
# its ratio to single; bytes of Change frames per completed call at each
# step (from the nodes' status files, `sipshard cluster status`).
#
#   tools/bench-replication.sh [--seconds S] [--rates "R1 R2 .."] [--hold-ms H]
#                              [--role b2bua|proxy] [--modes "single cluster-async cluster-sync"]
#                              [--no-pin] [--spin-us US] [--bin DIR]
#                              (more modes: cluster-async-spread cluster-sync-spread)
# --no-pin: every node's shards unpinned (server.pin_shards = false, tuning.md).
# --spin-us: every node's idle shards spin US microseconds before they sleep
#            (server.spin_before_park_us; default 0, the server's default).
# --bin: where sipshard and sipbench are (default: build them in target/release),
#        with the commit they were built from in DIR/COMMIT (for A/B runs of two builds).
#
# Bounded (two missed steps end a ladder; each step S s + hold + at most 45 s);
# builds if needed; stops every process it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

seconds=10
rates="1000 2000 3000 4000 5000 6000 8000"
hold_ms=1000
role=b2bua
modes="single cluster-async cluster-sync"
pin=true
spin_us=0
bin=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --rates) rates=$2; shift 2 ;;
        --hold-ms) hold_ms=$2; shift 2 ;;
        --role) role=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --no-pin) pin=false; shift ;;
        --spin-us) spin_us=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if [ -z "$bin" ]; then
    cargo build --release -q -p sipshard -p sipshard-bench
    bin=target/release
fi
sipshard=$bin/sipshard
sipbench=$bin/sipbench
for b in "$sipshard" "$sipbench"; do
    [ -x "$b" ] || { echo "no executable $b (--bin names the folder holding sipshard and sipbench)" >&2; exit 2; }
done
commit=$(cat "$bin/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
cores=$(nproc)
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
work=$(mktemp -d)
pids=()
node_pids=()
cleanup() {
    for pid in "${pids[@]}" "${node_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

uas_port=16090
sip1=127.0.0.1:16070
sip2=127.0.0.1:16080
repl1=127.0.0.1:17070
repl2=127.0.0.1:17170

core_list() { # first count
    seq -s, "$1" $(( $1 + $2 - 1 ))
}

write_config() { # node mode
    local node=$1 mode=$2 listen cores_toml
    if [ "$mode" = single ]; then
        # Tuned as a single node is run: its shards' own ports (tuning.md), so its calls do not
        # pay hops between shards that the one-shard cluster nodes never make.
        printf '[server]\nlisten = "%s"\nrole = "%s"\ndrain_s = 2\nshard_ports = 16071\npin_shards = %s\nspin_before_park_us = %s\n[proxy]\ndefault_route = "sip:127.0.0.1:%s"\n' \
            "$sip1" "$role" "$pin" "$spin_us" "$uas_port"
        return
    fi
    if [ "$node" = 1 ]; then listen=$sip1; cores_toml="[$(core_list 0 "$half")]"; else
        listen=$sip2; cores_toml="[$(core_list $(( cores - half )) "$half")]"; fi
    local other=$(( 3 - node ))
    local me_repl=$repl1 other_repl=$repl2 other_sip=$sip2
    [ "$node" = 2 ] && { me_repl=$repl2; other_repl=$repl1; other_sip=$sip1; }
    printf '[server]\nlisten = "%s"\nrole = "%s"\ncores = %s\ndrain_s = 2\npin_shards = %s\nspin_before_park_us = %s\n[proxy]\ndefault_route = "sip:127.0.0.1:%s"\n' \
        "$listen" "$role" "$cores_toml" "$pin" "$spin_us" "$uas_port"
    printf '[cluster]\nnode = %s\nsecret = "bench-replication-secret"\nreplication = "%s"\nlisten = "%s"\nstatus_file = "%s"\n' \
        "$node" "$(replication_of "$mode")" "$me_repl" "$work/node$node.status"
    printf '[[cluster.peers]]\nnode = %s\naddress = "%s"\nsip = "%s"\n' "$other" "$other_repl" "$other_sip"
}

# sync or async, from a mode's name (cluster-sync, cluster-async-spread, ...).
replication_of() {
    local r=${1#cluster-}
    echo "${r%-spread}"
}

# Bytes of Change frames the nodes have sent so far (0 for a single node).
change_bytes() {
    local total=0 n
    for n in $(cat "$work"/node*.status 2>/dev/null | grep -o 'change_bytes=[0-9]*' | cut -d= -f2); do
        total=$(( total + n ))
    done
    echo "$total"
}

start_mode() {
    node_pids=()
    local nodes=1
    [ "$1" != single ] && nodes=2
    for node in $(seq 1 "$nodes"); do
        write_config "$node" "$1" >"$work/node$node.toml"
        RUST_LOG=warn "$sipshard" run --config "$work/node$node.toml" >"$work/node$node.log" 2>&1 &
        node_pids+=($!)
    done
    for _ in $(seq 1 50); do
        if timeout 2 "$sipbench" uac "$sip1" --scenario options --calls 1 --rate 10 --quiet >/dev/null 2>&1; then
            sleep 1 # the replica links come up within a few ms of both nodes answering
            return 0
        fi
        sleep 0.2
    done
    echo "node 1 never answered OPTIONS" >&2
    return 1
}

stop_mode() {
    for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$work"/node*.status
}

"$sipbench" uas --listen "127.0.0.1:$uas_port" --threads 1 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

echo "# sipbench -> node 1 -> sipbench uas, loopback UDP, $role, ${seconds} s per step, hold ${hold_ms} ms, shards pinned: $pin, spin before sleep: ${spin_us} us"
echo "# $commit, $cores x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); cluster nodes on $half core(s) each"
printf "%-14s %7s %9s %7s %8s %8s %8s %8s %9s %8s\n" mode offered calls/s failed p50_ms p99_ms p999_ms cpu_s sustained B/call
results="$work/results"
: >"$results"
for mode in $modes; do
    start_mode "$mode"
    misses=0
    for rate in $rates; do
        before=$(cpu_ticks "${node_pids[@]}")
        bytes_before=$(change_bytes)
        # Through the entry node, every request goes to node 1 (one floating address), not to
        # the owner named by a B2BUA's Contact; spread, each call's requests go to its owner.
        spread=(--stay-on-target)
        case "$mode" in *-spread) spread=(--spread "$sip1,$sip2") ;; esac
        timeout $((seconds + hold_ms / 1000 + 45)) "$sipbench" uac "$sip1" "${spread[@]}" --rate "$rate" \
            --calls $((rate * seconds)) --duration "$seconds" --hold-ms "$hold_ms" --threads 1 \
            --max-failed-ratio 1 --quiet --json "$work/step.json" >/dev/null 2>&1 || true
        after=$(cpu_ticks "${node_pids[@]}")
        sleep 1.2 # the status files are rewritten every second
        bytes=$(( $(change_bytes) - bytes_before ))
        line=$(record_step "$results" "$work/step.json" "$mode" "$rate" "$seconds" "$(( after - before ))" "$bytes")
        echo "$line" | awk '{printf "%-14s %7s %9s %7s %8s %8s %8s %8s %9s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $10, $11}'
        misses=$(next_misses "$line" "$misses")
        [ "$misses" -ge 2 ] && break
        sleep 1
    done
    stop_mode
done
python3 - "$results" <<'EOF'
import sys
best, p99 = {}, {}
bytes_per_call = {}
for line in open(sys.argv[1]):
    f = line.split()
    mode, offered, sustained = f[0], float(f[1]), f[9]
    best.setdefault(mode, 0.0)
    p99.setdefault(mode, {})[offered] = float(f[5])
    if sustained == "yes":
        best[mode] = max(best[mode], offered)
        bytes_per_call[mode] = float(f[10])
print("highest sustained (calls/s): " + ", ".join(f"{m} {r:.0f}" for m, r in best.items()))
single = best.get("single", 0.0)
for mode in ("cluster-async", "cluster-sync", "cluster-async-spread", "cluster-sync-spread"):
    if mode in best and single:
        print(f"{mode} / single: {best[mode] / single:.2f}x of the calls/s")
    if mode in p99 and "single" in p99:
        common = sorted(r for r in set(p99[mode]) & set(p99["single"]) if r <= min(best.get(mode, 0), single))
        if common:
            r = common[-1]
            print(f"{mode}: p99 setup at {r:.0f} calls/s {p99[mode][r]:.3f} ms vs single {p99['single'][r]:.3f} ms "
                  f"({p99[mode][r] - p99['single'][r]:+.3f} ms)")
    if mode in bytes_per_call:
        print(f"{mode}: {bytes_per_call[mode]:.0f} bytes of Change frames per completed call (both nodes, "
              "at its highest sustained rate)")
EOF
