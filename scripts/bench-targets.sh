#!/usr/bin/env bash
# stomp-broker alone at the issue-6 target parameters (a fresh broker per
# run, broker on CPU $BROKER_CPU, loadgen on CPU $GEN_CPU). Appends every
# result to docs/bench-targets.jsonl and prints the tables.
#
#   S1  1,000 subscribers, max throughput          target >= 2,000,000 deliveries/s and at
#       least the bare tokio-tungstenite fan-out (bare-fanout, no STOMP) in the same round:
#       rows `S1 ws bare-tungstenite` (one WebSocket message per delivery) and
#       `bare-tungstenite-batched` (one per write, as the broker packs them)
#   S2  10,000 ids, open loop at S2_RATES msgs/s    target p99 <= 5 ms at 50,000/s
#   S3  S3_CONNS idle connections with heart-beats  target <= 8 KiB RSS each at 50,000
#       (default: as many as the open-file limit allows, minus headroom)
#   S4  connect rate                                target >= 10,000/s
#   S5  1,000 subscribers, one stalls               target others' p99 within 2x, RSS bounded
#
# Environment: ROUNDS=3 DURATION=5 WARMUP=1 S2_RATES="10000 20000 30000 50000"
#   S3_CONNS S3_IDLE=10 S4_TOTAL=20000 BROKER_CPU GEN_CPU BENCH_NICE BENCH_NO_BUILD
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
S2_RATES="${S2_RATES:-10000 20000 30000 50000}"
S3_IDLE="${S3_IDLE:-10}"
S4_TOTAL="${S4_TOTAL:-20000}"
OUT="${OUT:-$ROOT/docs}"
RESULTS="$OUT/bench-targets.jsonl"

trap stop_ours EXIT
bench_prepare
bench_build
# Both processes hold one descriptor per connection; keep 500 spare.
max_conns=$(( $(ulimit -n) - 500 ))
S3_CONNS="${S3_CONNS:-$(( max_conns < 50000 ? max_conns : 50000 ))}"
blog "machine: $(machine_info)"
blog "S3 uses $S3_CONNS connections (open-file limit $(ulimit -n))"
: >"$RESULTS"
common=(--duration "$DURATION" --warmup "$WARMUP" --json "$RESULTS")

run() { start_ours; loadgen_ours "$@" "${common[@]}" || blog "failed: $*"; stop_ours; }

for round in $(seq 1 "$ROUNDS"); do
    blog "round $round"
    run s1 --subscribers 1000
    start_bare
    loadgen_bare s1 --subscribers 1000 --variant bare-tungstenite "${common[@]}" \
        || blog "s1 bare failed"
    stop_ours
    start_bare --batch
    loadgen_bare s1 --subscribers 1000 --variant bare-tungstenite-batched "${common[@]}" \
        || blog "s1 bare batched failed"
    stop_ours
    start_ours --ws-frame-per-message
    loadgen_ours s1 --subscribers 1000 --variant ws-frame-per-message "${common[@]}" \
        || blog "s1 frame per message failed"
    stop_ours
    run s1 --subscribers 1000 --transport tcp
    run s2 --subscribers 10000 --rate 50000 --transport tcp
    run s2 --subscribers 10000 --rate 50000 --status-subscriber --variant status-page-open
    run s8
    for r in $S2_RATES; do run s2 --subscribers 10000 --rate "$r"; done
    start_ours
    loadgen_ours s3 --connections "$S3_CONNS" --read-buffer 4096 --connect-concurrency 128 \
        --duration "$S3_IDLE" --json "$RESULTS" || blog "s3 failed"
    stop_ours
    run s4 --total "$S4_TOTAL" --read-buffer 4096
    run s5 --subscribers 1000
done
