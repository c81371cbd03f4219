#!/usr/bin/env bash
# stomp-broker and RabbitMQ Web-STOMP side by side, same generator, same
# pinning (broker on CPU $BROKER_CPU, loadgen on CPU $GEN_CPU), alternating
# ours, rabbit, ours, rabbit ... for $ROUNDS rounds. Writes
#   docs/bench-results.jsonl   every run (one JSON line each)
#   docs/bench-compare.md      medians per scenario and the ratio ours/rabbit
#   docs/bench-s1.svg          S1 deliveries/s chart
#   docs/bench-s2.svg          S2 latency chart
# (the report and the SVGs are written by loadgen/bench-report.py: plain
# Python 3, no packages, no network).
#
# Environment (defaults keep a run under ~15 minutes):
#   ROUNDS=3  DURATION=5 (s measured)  WARMUP=1
#   SCENARIOS="s3 s4 s1 s2 s5"
#   S1_SUBS="100 1000 10000"   S2_SUBS=10000  S2_RATE=50000
#   S3_CONNS=10000  S4_TOTAL=20000  S5_SUBS=1000  S5_RATE=10
#   S1_FRAME_PER_MESSAGE=1 (ours also with --ws-frame-per-message)
#   S2_STATUS=1 (ours also with a /topic/broker.stats subscriber)
#   TCP variants (ours only; RabbitMQ's STOMP/TCP is not started): add
#   s1tcp s2tcp to SCENARIOS
#   BROKER_CPU=0 GEN_CPU=1 BENCH_NICE=-10  OUT=docs
#   BENCH_NO_BUILD=1 to reuse built binaries
# Quick smoke run: ROUNDS=1 DURATION=2 S1_SUBS=100 S2_SUBS=1000 S2_RATE=5000 S3_CONNS=1000 S4_TOTAL=2000 S5_SUBS=100
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
SCENARIOS="${SCENARIOS:-s3 s4 s1 s2 s5}"
S1_SUBS="${S1_SUBS:-100 1000 10000}"
S2_SUBS="${S2_SUBS:-10000}"
S2_RATE="${S2_RATE:-50000}"
S3_CONNS="${S3_CONNS:-10000}"
S4_TOTAL="${S4_TOTAL:-20000}"
S5_SUBS="${S5_SUBS:-1000}"
S5_RATE="${S5_RATE:-10}"
S1_FRAME_PER_MESSAGE="${S1_FRAME_PER_MESSAGE:-1}"
S2_STATUS="${S2_STATUS:-1}"
OUT="${OUT:-$ROOT/docs}"
mkdir -p "$OUT"
RESULTS="$OUT/bench-results.jsonl"

cleanup() { stop_ours; stop_rabbit; }
trap cleanup EXIT

bench_prepare
bench_build
: >"$RESULTS"
blog "machine: $(machine_info)"
echo "{\"machine\": \"$(machine_info | sed 's/"/\\"/g')\", \"date\": \"$(date -u +%FT%TZ)\", \"rounds\": $ROUNDS, \"duration\": $DURATION}" >"$OUT/bench-run-info.json"

common=(--duration "$DURATION" --warmup "$WARMUP" --json "$RESULTS")

# run_scenarios <ours|rabbit> <round>
run_scenarios() {
    local who="$1" round="$2" sc n lg
    lg="loadgen_$who"
    for sc in $SCENARIOS; do
        # A fresh broker for each scenario (RabbitMQ: once per round, S3 first).
        if [[ "$who" == ours ]]; then start_ours; fi
        if [[ "$who" == ours ]]; then wait_idle "$OURS_PID"; else wait_idle "$RABBIT_PID"; fi
        blog "round $round $who $sc"
        case "$sc" in
            s1) for n in $S1_SUBS; do
                    if [[ "$who" == rabbit ]]; then wait_idle "$RABBIT_PID"; fi
                    "$lg" s1 --subscribers "$n" "${common[@]}" >/dev/null \
                        || blog "s1 $n failed on $who (see above)"
                done
                # Ours again with one MESSAGE per WebSocket message, as
                # RabbitMQ sends them (listen.ws_frame_per_message).
                if [[ "$who" == ours && "$S1_FRAME_PER_MESSAGE" == 1 ]]; then
                    stop_ours; start_ours --ws-frame-per-message; wait_idle "$OURS_PID"
                    for n in $S1_SUBS; do
                        "$lg" s1 --subscribers "$n" --variant ws-frame-per-message "${common[@]}" \
                            >/dev/null || blog "s1 $n (frame per message) failed"
                    done
                fi ;;
            s2tcp) [[ "$who" == ours ]] && "$lg" s2 --transport tcp --subscribers "$S2_SUBS" \
                    --rate "$S2_RATE" "${common[@]}" >/dev/null || blog "s2 tcp: ours only" ;;
            s1tcp) [[ "$who" == ours ]] && for n in $S1_SUBS; do
                    "$lg" s1 --transport tcp --subscribers "$n" "${common[@]}" >/dev/null \
                        || blog "s1 tcp $n failed"
                done ;;
            s2) "$lg" s2 --subscribers "$S2_SUBS" --rate "$S2_RATE" "${common[@]}" >/dev/null \
                    || blog "s2 failed on $who"
                # With the live status page open (ours: /topic/broker.stats).
                if [[ "$who" == ours && "$S2_STATUS" == 1 ]]; then
                    "$lg" s2 --subscribers "$S2_SUBS" --rate "$S2_RATE" --status-subscriber \
                        --variant status-page-open "${common[@]}" >/dev/null \
                        || blog "s2 with status subscriber failed"
                fi ;;
            s3) "$lg" s3 --connections "$S3_CONNS" --read-buffer 4096 --connect-concurrency 128 \
                    "${common[@]}" >/dev/null || blog "s3 failed on $who" ;;
            s4) "$lg" s4 --total "$S4_TOTAL" --read-buffer 4096 "${common[@]}" >/dev/null \
                    || blog "s4 failed on $who" ;;
            s5) "$lg" s5 --subscribers "$S5_SUBS" --rate "$S5_RATE" "${common[@]}" >/dev/null \
                    || blog "s5 failed on $who" ;;
            *) blog "unknown scenario $sc" ;;
        esac
        if [[ "$who" == ours ]]; then stop_ours; fi
    done
}

for round in $(seq 1 "$ROUNDS"); do
    run_scenarios ours "$round"
    if start_rabbit; then
        run_scenarios rabbit "$round"
        stop_rabbit
    else
        blog "RabbitMQ did not start; see $RABBIT_DIR or /tmp/stomp-bench-rabbitmq/log"
    fi
done

python3 "$ROOT/loadgen/bench-report.py" "$RESULTS" "$OUT"
blog "wrote $OUT/bench-compare.md, $OUT/bench-s1.svg, $OUT/bench-s2.svg"
cat "$OUT/bench-compare.md"
