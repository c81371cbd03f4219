#!/usr/bin/env bash
# User-space instructions per S2 message under callgrind: repeatable on a
# noisy machine, unlike wall-clock numbers (docs/benchmarks.md, "S2 hot path").
#
#   bash scripts/bench-callgrind.sh [broker-binary]   (default: release build)
#
# The broker runs under valgrind; loadgen s2 with CG_SUBS subscribers (1000)
# publishes CG_RATE msgs/s (2000); instrumentation is switched on only for
# CG_SECS (8) seconds of steady publishing. Prints the total and the total
# divided by the messages published in that window.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
CG_SUBS="${CG_SUBS:-1000}"
CG_RATE="${CG_RATE:-2000}"
CG_SECS="${CG_SECS:-8}"
command -v valgrind >/dev/null || { blog "valgrind is needed (apt-get install valgrind)"; exit 1; }
bench_prepare
bench_build
bin="${1:-$BROKER_BIN}"
out="$WORK/callgrind.out"
pf="$WORK/cg.ports"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --port-file "$pf" \
    --log-level warn >"$WORK/cg.log" 2>&1 &
OURS_PID=$!
trap 'kill -TERM $OURS_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [[ -s "$pf" ]] && break; sleep 0.1; done
sleep 1
secs=$(( CG_SECS + 3 ))
taskset -c "$GEN_CPU" "$LOADGEN_BIN" s2 --port-file "$pf" --subscribers "$CG_SUBS" \
    --rate "$CG_RATE" --duration "$secs" --warmup 1 --connect-concurrency 16 \
    >"$WORK/lg.out" 2>"$WORK/lg.err" &
lg=$!
until grep -q "connections ready" "$WORK/lg.err" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$WORK/lg.err" >&2; exit 1; }
    sleep 0.1
done
sleep 1
callgrind_control -i on "$OURS_PID" >/dev/null
sleep "$CG_SECS"
callgrind_control -i off "$OURS_PID" >/dev/null
wait "$lg"
kill -TERM "$OURS_PID"; wait "$OURS_PID" || true
trap - EXIT
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !d {gsub(",","",$1); print $1; d=1}')
msgs=$(( CG_RATE * CG_SECS ))
echo "instructions: $total in ${CG_SECS} s; per message (${msgs}): $(( total / msgs ))"
echo "profile: $out (callgrind_annotate --inclusive=yes $out)"
