#!/usr/bin/env bash
# User-space instructions per S1 delivery under callgrind (noise-immune,
# unlike wall-clock numbers on a shared machine): the server runs under
# valgrind, loadgen s1 publishes to CG_SUBS subscribers (1000) at max
# throughput (the windowed mode of the real S1), or open loop at CG_RATE
# msgs/s if set, for CG_SECS (8) s after 1 s of warm-up. Instrumentation is
# on from the moment the subscribers are connected until the last delivery
# arrived (loadgen --hold keeps the connections open meanwhile), so the
# count covers exactly the run's deliveries and nothing of connection
# setup or teardown. Per delivery = instructions / loadgen's `delivered`.
#
#   bash scripts/bench-callgrind-s1.sh [broker-binary]      stomp-broker (default: release build)
#   CG_BARE=1 bash scripts/bench-callgrind-s1.sh [--batch]  bare-fanout instead (flags passed on)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
CG_SUBS="${CG_SUBS:-1000}"
CG_RATE="${CG_RATE:-}"
CG_SECS="${CG_SECS:-8}"
command -v valgrind >/dev/null || { blog "valgrind is needed (apt-get install valgrind)"; exit 1; }
bench_prepare
bench_build
out="$WORK/callgrind.out"
pf="$WORK/cg.ports"
if [[ "${CG_BARE:-0}" == 1 ]]; then
    server=("$BARE_BIN" --port-file "$pf" "$@")
    bare=(--bare)
else
    server=("${1:-$BROKER_BIN}" --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0
        --port-file "$pf" --log-level warn)
    bare=()
fi
rate=()
[[ -n "$CG_RATE" ]] && rate=(--rate "$CG_RATE")
taskset -c "$BROKER_CPU" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "${server[@]}" >"$WORK/cg.log" 2>&1 &
OURS_PID=$!
trap 'kill -TERM $OURS_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [[ -s "$pf" ]] && break; sleep 0.1; done
sleep 1
taskset -c "$GEN_CPU" "$LOADGEN_BIN" s1 "${bare[@]}" --port-file "$pf" --subscribers "$CG_SUBS" \
    "${rate[@]}" --duration "$CG_SECS" --warmup 1 --connect-concurrency 16 --hold 5 \
    >"$WORK/lg.out" 2>"$WORK/lg.err" &
lg=$!
wait_line() {
    until grep -q "$1" "$WORK/lg.err" 2>/dev/null; do
        kill -0 "$lg" 2>/dev/null || { cat "$WORK/lg.err" >&2; exit 1; }
        sleep 0.05
    done
}
wait_line "connections ready"
callgrind_control -i on "$OURS_PID" >/dev/null
wait_line "all delivered"
callgrind_control -i off "$OURS_PID" >/dev/null
wait "$lg"
kill -TERM "$OURS_PID"; wait "$OURS_PID" || true
trap - EXIT
grep -E 'published|delivered|lost|frames_per_ws' "$WORK/lg.out" || true
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !d {gsub(",","",$1); print $1; d=1}')
deliveries=$(awk '$1 == "delivered" {print $2}' "$WORK/lg.out")
echo "instructions: $total; deliveries: $deliveries; per delivery: $(( total / (deliveries > 0 ? deliveries : 1) ))"
echo "profile: $out (callgrind_annotate --inclusive=yes $out)"
