#!/usr/bin/env bash
# Soak (issue 8): a release stomp-broker under mixed load for SOAK_SECONDS
# (default 600): fan-out, per-order topics, connection churn and a slow
# consumer re-created every minute (`loadgen soak`). Every SOAK_SAMPLE
# seconds (10) the broker's VmRSS (/proc/<pid>/status) and counters from
# GET /metrics are sampled and printed as a table. Verdict, after
# SOAK_WARMUP seconds (120):
#   - RSS stays within SOAK_RSS_PCT % (5) of the first sample after warm-up;
#   - stomp_errors_total grows only for kind="slow_consumer", by no more
#     than stomp_slow_consumer_disconnects_total;
#   - stomp_messages_dropped_total does not grow;
#   - loadgen reports no subscriber errors, no lost messages, no churn
#     errors and every slow consumer cut off.
# Exits non-zero otherwise. Loopback only; every loop is bounded in time.
#
# Environment: SOAK_SECONDS SOAK_WARMUP SOAK_SAMPLE SOAK_RSS_PCT
#   SOAK_LOADGEN_ARGS (extra `loadgen soak` flags) BROKER_CPU GEN_CPU
#   BENCH_NICE BENCH_NO_BUILD CARGO_TARGET_DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SOAK_SECONDS="${SOAK_SECONDS:-600}"
SOAK_WARMUP="${SOAK_WARMUP:-120}"
SOAK_SAMPLE="${SOAK_SAMPLE:-10}"
SOAK_RSS_PCT="${SOAK_RSS_PCT:-5}"
LG_PID=""

cleanup() {
    if [[ -n "$LG_PID" ]] && kill -0 "$LG_PID" 2>/dev/null; then
        kill -TERM "$LG_PID" 2>/dev/null || true
        wait "$LG_PID" 2>/dev/null || true
    fi
    stop_ours
}
trap cleanup EXIT
bench_prepare
bench_build
blog "machine: $(machine_info)"
start_ours
HTTP="$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$WORK/ours.ports")"
case "$HTTP" in 127.*) ;; *) blog "http address $HTTP is not loopback"; exit 2 ;; esac
blog "broker pid $OURS_PID, http $HTTP, work dir $WORK"

# sample <t>: one row: t rss_kib connections dropped slow_disc err_slow err_other err_kinds
sample() {
    local t="$1" rss m
    rss=$(awk '/^VmRSS:/{print $2}' "/proc/$OURS_PID/status" 2>/dev/null || echo 0)
    m=$(curl -s --max-time 5 "http://$HTTP/metrics" || true)
    awk -v t="$t" -v rss="${rss:-0}" '
        /^stomp_connections /{c=$2}
        /^stomp_messages_dropped_total /{d=$2}
        /^stomp_slow_consumer_disconnects_total /{s=$2}
        /^stomp_errors_total\{/{
            k=$1; sub(/.*kind="/,"",k); sub(/".*/,"",k)
            if (k=="slow_consumer") es+=$2; else { eo+=$2; kinds=kinds k "=" $2 "," }
        }
        END{ if (kinds=="") kinds="-"; printf "%d %d %d %d %d %d %d %s\n", t, rss, c, d, s, es, eo, kinds }
    ' <<<"$m"
}

SAMPLES="$WORK/soak.samples"
: >"$SAMPLES"
RESULT="$WORK/soak.json"
taskset -c "$GEN_CPU" "$LOADGEN_BIN" soak --port-file "$WORK/ours.ports" \
    --broker-pid "$OURS_PID" --label stomp-broker --duration "$SOAK_SECONDS" \
    --json "$RESULT" ${SOAK_LOADGEN_ARGS:-} >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
LG_PID=$!
start=$(date +%s)
deadline=$(( start + SOAK_SECONDS + 180 ))
printf '%6s %10s %6s %8s %9s %9s %9s  %s\n' t_s rss_kib conns dropped slow_disc err_slow err_other other_kinds
next=$start
while :; do
    now=$(date +%s)
    alive=0; kill -0 "$LG_PID" 2>/dev/null && alive=1
    row=$(sample $(( now - start )))
    # Only samples taken while loadgen runs are judged: when it exits, its
    # 2,200 subscribers vanish without WebSocket close frames (counted as
    # errors{protocol} by the broker).
    if (( alive )); then
        echo "$row" >>"$SAMPLES"
        awk '{printf "%6d %10d %6d %8d %9d %9d %9d  %s\n", $1,$2,$3,$4,$5,$6,$7,$8}' <<<"$row"
    else
        awk '{printf "%6d %10d %6d %8d %9d %9d %9d  %s  (after loadgen exited; not judged)\n", $1,$2,$3,$4,$5,$6,$7,$8}' <<<"$row"
        break
    fi
    (( now >= deadline )) && { blog "loadgen still running at the deadline"; break; }
    next=$(( next + SOAK_SAMPLE ))
    while (( $(date +%s) < next )) && kill -0 "$LG_PID" 2>/dev/null; do sleep 0.5; done
done
lg_rc=0
if kill -0 "$LG_PID" 2>/dev/null; then
    kill -TERM "$LG_PID"; wait "$LG_PID" 2>/dev/null || true; lg_rc=124
else
    wait "$LG_PID" || lg_rc=$?
fi
LG_PID=""
blog "loadgen exit $lg_rc; stderr:"; sed 's/^/  /' "$WORK/loadgen.err" >&2
cat "$WORK/loadgen.out"

fail=0
verdict() { echo "soak: FAIL: $*"; fail=1; }
(( lg_rc == 0 )) || verdict "loadgen exited $lg_rc"
# The traffic counts from loadgen's JSON row.
if [[ -s "$RESULT" ]]; then
    j() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$RESULT" | tail -1; }
    [[ "$(j lost)" == 0 ]] || verdict "$(j lost) messages lost"
    [[ "$(j errors)" == 0 ]] || verdict "$(j errors) subscriber errors"
    [[ "$(j closed_by_broker)" == 0 ]] || verdict "$(j closed_by_broker) subscribers closed by the broker"
    [[ "$(j churn_errors)" == 0 ]] || verdict "$(j churn_errors) churn errors"
    [[ "$(j slow_cut_off)" == "$(j slow_consumers)" ]] || verdict "$(j slow_cut_off) of $(j slow_consumers) slow consumers cut off"
else
    verdict "no result row from loadgen"
fi
# Flat RSS and no error growth after the warm-up.
read -r base_t base_rss base_d base_s base_es base_eo < <(awk -v w="$SOAK_WARMUP" '$1>=w{print $1,$2,$4,$5,$6,$7; exit}' "$SAMPLES") || true
if [[ -z "${base_t:-}" ]]; then
    verdict "no sample after the ${SOAK_WARMUP} s warm-up"
else
    summary=$(awk -v w="$SOAK_WARMUP" -v b="$base_rss" '$1>=w{ if(min==""||$2<min)min=$2; if($2>max)max=$2; last=$0 }
        END{ printf "%d %d %.2f %.2f %s\n", min, max, 100*(min-b)/b, 100*(max-b)/b, last }' "$SAMPLES")
    read -r rmin rmax pmin pmax l_t l_rss l_c l_d l_s l_es l_eo l_k <<<"$summary"
    echo "soak: after warm-up (t >= $base_t s): RSS base $base_rss KiB, min $rmin ($pmin %), max $rmax (+$pmax %)"
    echo "soak: growth after warm-up: slow_consumer_disconnects +$(( l_s - base_s )), errors{slow_consumer} +$(( l_es - base_es )), errors{other} +$(( l_eo - base_eo )), dropped +$(( l_d - base_d ))"
    awk -v a="$pmin" -v b="$pmax" -v p="$SOAK_RSS_PCT" 'BEGIN{exit !(a>=-p && b<=p)}' || verdict "RSS moved more than $SOAK_RSS_PCT % after warm-up ($pmin % .. +$pmax %)"
    (( l_eo == base_eo )) || verdict "errors other than slow_consumer grew by $(( l_eo - base_eo )) ($l_k)"
    (( l_es - base_es <= l_s - base_s )) || verdict "slow_consumer errors grew more than slow-consumer disconnects"
    (( l_s - base_s >= 1 )) || verdict "no slow-consumer disconnect after warm-up"
    (( l_d == base_d )) || verdict "stomp_messages_dropped_total grew by $(( l_d - base_d ))"
fi
if (( fail == 0 )); then echo "soak: PASS"; else echo "soak: FAIL"; exit 1; fi
