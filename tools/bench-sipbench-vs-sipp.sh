#!/usr/bin/env bash
# sipbench's own speed against SIPp's, in one run on one box: the same ladder
# of offered call rates for `sipbench uac -> sipbench uas` and for
# `sipp -sn uac -> sipp -sn uas`, directly on loopback (no server between).
# A step is *sustained* when it completes >= 95 % of the offered calls/s with
# no failed call and retransmissions under 1 % of calls. Both get 4 MiB socket
# buffers (SIPp's -buff_size; sipbench asks for them itself). Prints one row per
# step, the highest sustained rate of each and their ratio.
#
#   tools/bench-sipbench-vs-sipp.sh [--seconds S] [--sipp-rates "R1 R2 .."] [--sipbench-rates "R1 .."]
#                                   [--threads T] [--hold-ms H]
#
# Bounded (each step is S seconds plus at most 40 s of drain), idempotent
# (builds sipbench if needed, installs sip-tester if sipp is missing), and stops
# every process it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=5
sipp_rates="6000 8000 10000 12000 14000"
sipbench_rates="20000 25000 30000 35000 40000"
threads=2
uas_threads=2
hold_ms=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --sipp-rates) sipp_rates=$2; shift 2 ;;
        --sipbench-rates) sipbench_rates=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --uas-threads) uas_threads=$2; shift 2 ;;
        --hold-ms) hold_ms=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if ! command -v sipp >/dev/null; then
    echo "installing sip-tester (sipp)..." >&2
    apt-get update -qq && apt-get install -y -qq sip-tester >/dev/null
fi
cargo build --release -q -p sipshard-bench
sipbench=target/release/sipbench
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

uas_port=15090
uac_port=15091

# One step: prints "tool offered achieved ok failed retransmissions sustained".
sipbench_step() {
    local rate=$1 calls=$(( $1 * seconds ))
    "$sipbench" uas --listen "127.0.0.1:$uas_port" --threads "$uas_threads" --duration $((seconds + 60)) 2>/dev/null &
    local uas=$!
    pids+=("$uas")
    sleep 0.3
    timeout $((seconds + 40)) "$sipbench" uac "127.0.0.1:$uas_port" --rate "$rate" --calls "$calls" \
        --threads "$threads" --hold-ms "$hold_ms" --max-concurrent 20000 --max-failed-ratio 1 --quiet \
        --json "$work/sipbench.json" >/dev/null 2>&1 || true
    kill "$uas" 2>/dev/null || true
    wait "$uas" 2>/dev/null || true
    python3 - "$work/sipbench.json" "$rate" <<'EOF'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except Exception:
    print(f"sipbench {sys.argv[2]} 0 0 0 0 no"); sys.exit()
rate, ok = float(sys.argv[2]), s["calls_ok"]
bad = s["calls_failed"] + s["calls_timed_out"]
achieved = s["calls_per_s"]
sustained = achieved >= 0.95 * rate and bad == 0 and s["retransmissions"] < 0.01 * max(ok, 1)
print(f"sipbench {rate:.0f} {achieved:.0f} {ok} {bad} {s['retransmissions']} {'yes' if sustained else 'no'}")
EOF
    rm -f "$work/sipbench.json"
}

sipp_step() {
    local rate=$1 calls=$(( $1 * seconds ))
    (cd "$work" && exec sipp -sn uas -i 127.0.0.1 -p "$uas_port" -buff_size 4194304 -nostdin >/dev/null 2>&1) &
    local uas=$!
    pids+=("$uas")
    sleep 0.5
    rm -f "$work"/stats.csv
    (cd "$work" && timeout $((seconds + 40)) sipp -sn uac "127.0.0.1:$uas_port" -i 127.0.0.1 -p "$uac_port" \
        -r "$rate" -m "$calls" -l 20000 -d "$hold_ms" -buff_size 4194304 -nostdin -trace_stat -stf stats.csv -fd 1 \
        >/dev/null 2>&1) || true
    kill "$uas" 2>/dev/null || true
    wait "$uas" 2>/dev/null || true
    python3 - "$work/stats.csv" "$rate" <<'EOF'
import sys
try:
    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    last = dict(zip(rows[0], rows[-1]))
except Exception:
    print(f"sipp {sys.argv[2]} 0 0 0 0 no"); sys.exit()
rate = float(sys.argv[2])
ok, bad = int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])
retrans = int(last["Retransmissions(C)"])
start = float(last["StartTime"].split("\t")[2])
# Up to the last second in which a call ended well (as sipbench's calls_per_s): a tail of
# timeouts does not dilute the rate.
busy_rows = [dict(zip(rows[0], r)) for r in rows[1:]]
busy_rows = [r for r in busy_rows if int(r["SuccessfulCall(P)"]) > 0]
end = float(busy_rows[-1]["CurrentTime"].split("\t")[2]) if busy_rows else start
achieved = ok / max(end - start, 1e-9)
sustained = achieved >= 0.95 * rate and bad == 0 and retrans < 0.01 * max(ok, 1)
print(f"sipp {rate:.0f} {achieved:.0f} {ok} {bad} {retrans} {'yes' if sustained else 'no'}")
EOF
}

echo "# sipbench vs SIPp, ${seconds} s per step, hold ${hold_ms} ms, sipbench --threads ${threads}; $(nproc) CPUs, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf "%-9s %9s %9s %9s %7s %9s %9s\n" tool offered achieved ok failed retrans sustained
results="$work/results"
: > "$results"
for rate in $sipp_rates; do
    sipp_step "$rate" | tee -a "$results" | awk '{printf "%-9s %9s %9s %9s %7s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7}'
done
for rate in $sipbench_rates; do
    sipbench_step "$rate" | tee -a "$results" | awk '{printf "%-9s %9s %9s %9s %7s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7}'
done
python3 - "$results" <<'EOF'
import sys
best = {"sipp": 0.0, "sipbench": 0.0}
peak = {"sipp": 0.0, "sipbench": 0.0}
for line in open(sys.argv[1]):
    tool, offered, achieved, *_rest, sustained = line.split()
    peak[tool] = max(peak[tool], float(achieved))
    if sustained == "yes":
        best[tool] = max(best[tool], float(offered))
ratio = best["sipbench"] / best["sipp"] if best["sipp"] else float("inf")
print(f"highest sustained: sipp {best['sipp']:.0f} calls/s, sipbench {best['sipbench']:.0f} calls/s: ratio {ratio:.2f}x "
      f"(peak achieved: sipp {peak['sipp']:.0f}, sipbench {peak['sipbench']:.0f})")
EOF
