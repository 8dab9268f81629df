# Helpers shared by the tools/bench-*.sh ladders (sourced, not run).

# User + system CPU ticks of each PID and of its child processes (0 for one that is gone).
cpu_ticks() {
    local total=0 pid
    for pid in "$@" $(for p in "$@"; do pgrep -P "$p" || true; done); do
        if [ -r "/proc/$pid/stat" ]; then
            total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
        fi
    done
    echo "$total"
}

# One ladder step's row from sipbench's --json summary:
#   step_row JSON LABEL OFFERED SECONDS CPU_TICKS [CHANGE_BYTES]
# prints "LABEL offered calls/s failed p50_ms p99_ms p999_ms cpu_s cpu_us/call sustained bytes/call".
# Sustained: at least 95 % of the offered calls attempted, at most 0.1 % failed or timed out,
# setup p99 under 50 ms. A step that left no summary counts as all failed.
step_row() {
    python3 - "$1" "$2" "$3" "$4" "$5" "$(getconf CLK_TCK)" "${6:-0}" <<'PY'
import json, sys
path, label, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ticks, hz, nbytes = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
try:
    s = json.load(open(path))
except Exception:
    print(f"{label} {rate:.0f} 0 all 0 0 0 0 0 no 0"); sys.exit()
bad = s["calls_failed"] + s["calls_timed_out"]
setup, ok = s["setup_ms"], s["calls_ok"]
cpu = ticks / hz
sustained = (s["calls_attempted"] >= 0.95 * rate * seconds and bad <= 0.001 * s["calls_attempted"]
             and setup["p99"] < 50.0)
print(f"{label} {rate:.0f} {ok / seconds:.0f} {bad} {setup['p50']:.3f} {setup['p99']:.3f} {setup['p999']:.3f} "
      f"{cpu:.2f} {cpu / max(ok, 1) * 1e6:.0f} {'yes' if sustained else 'no'} {nbytes / max(ok, 1):.0f}")
PY
}

# The field "sustained" of a step_row row: yes or no.
row_sustained() {
    echo "$1" | awk '{print $10}'
}

# Turns a step's sipbench summary into its row (step_row's arguments after RESULTS), appends the
# row to RESULTS, removes the summary and prints the row.
record_step() {
    local results=$1 line
    shift
    line=$(step_row "$@")
    rm -f "$1"
    echo "$line" >>"$results"
    echo "$line"
}

# Steps missed in a row after the step of ROW: 0 when it was sustained, else MISSES + 1.
next_misses() {
    if [ "$(row_sustained "$1")" = yes ]; then echo 0; else echo $(( $2 + 1 )); fi
}
