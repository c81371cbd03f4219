#!/usr/bin/env bash
# S1 (1,000 WebSocket subscribers, max throughput) against the bare
# tokio-tungstenite fan-out (bare-fanout, no STOMP), interleaved in one run:
# every round runs each variant once, in this order, each in a fresh
# process pinned to $BROKER_CPU with loadgen on $GEN_CPU:
#   broker          stomp-broker, frames packed per write (the default)
#   broker-fpm      stomp-broker --ws-frame-per-message
#   bare            bare-fanout: one WebSocket message per delivery
#   bare-batched    bare-fanout --batch: one WebSocket message per write
#   broker-old      OLD_BROKER (a broker binary to compare with), if set
# Prints every run and, per variant, the median deliveries/s and deliveries
# per broker CPU-second, and their ratio to `bare`.
#
#   ROUNDS=3 DURATION=5 WARMUP=1 S1_SUBS=1000 BENCH_NO_BUILD=1 \
#     bash scripts/bench-s1-bare.sh [extra bare-fanout flags, e.g. --fanout broadcast]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-5}" WARMUP="${WARMUP:-1}" S1_SUBS="${S1_SUBS:-1000}"
RESULTS="${RESULTS:-$WORK/s1-bare.jsonl}"
trap stop_ours EXIT
bench_prepare
bench_build
blog "machine: $(machine_info)"
common=(--subscribers "$S1_SUBS" --duration "$DURATION" --warmup "$WARMUP" --json "$RESULTS")
for round in $(seq 1 "$ROUNDS"); do
    blog "round $round, load $(cut -d' ' -f1-3 /proc/loadavg)"
    start_ours; loadgen_ours s1 --variant broker "${common[@]}" >/dev/null || blog "broker failed"; stop_ours
    start_ours --ws-frame-per-message
    loadgen_ours s1 --variant broker-fpm "${common[@]}" >/dev/null || blog "broker-fpm failed"; stop_ours
    start_bare "$@"; loadgen_bare s1 --variant bare "${common[@]}" >/dev/null || blog "bare failed"; stop_ours
    start_bare --batch "$@"
    loadgen_bare s1 --variant bare-batched "${common[@]}" >/dev/null || blog "bare-batched failed"; stop_ours
    if [[ -n "${OLD_BROKER:-}" ]]; then
        BROKER_BIN="$OLD_BROKER" start_ours
        loadgen_ours s1 --variant broker-old "${common[@]}" >/dev/null || blog "broker-old failed"; stop_ours
    fi
done
blog "done, load $(cut -d' ' -f1-3 /proc/loadavg); rows in $RESULTS"
python3 - "$RESULTS" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'variant':<14} {'deliveries/s':>13} {'deliv/CPU-s':>12} {'broker CPU%':>11} {'fr/WSmsg':>8} {'lost':>6}")
for r in rows:
    print(f"{r['variant']:<14} {r['deliveries_per_s']:>13,.0f} {r.get('deliveries_per_cpu_s',0):>12,.0f} "
          f"{r.get('broker_cpu_pct',0):>11.1f} {r.get('frames_per_ws_message',0):>8} {r.get('lost',0):>6}")
med = {}
for v in dict.fromkeys(r['variant'] for r in rows):
    d = [r['deliveries_per_s'] for r in rows if r['variant'] == v]
    c = [r.get('deliveries_per_cpu_s', 0) for r in rows if r['variant'] == v]
    med[v] = (st.median(d), st.median(c))
base = med.get('bare')
print(f"\n{'median':<14} {'deliveries/s':>13} {'vs bare':>8} {'deliv/CPU-s':>12} {'vs bare':>8}")
for v, (d, c) in med.items():
    rd = f"{d / base[0]:.2f}" if base and base[0] else "-"
    rc = f"{c / base[1]:.2f}" if base and base[1] else "-"
    print(f"{v:<14} {d:>13,.0f} {rd:>8} {c:>12,.0f} {rc:>8}")
PY
