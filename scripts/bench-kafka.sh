#!/usr/bin/env bash
# S6 Kafka → WebSocket (issue 6): records produced to Kafka by `loadgen s6`
# (open loop, keyed by order id, scheduled produce time in the value), routed
# by the broker's bridge (`--route <topic>=/topic/order.{key}`) to WebSocket
# subscribers, one per order id (+ S6_WILDCARD subscribers to /topic/order.*).
# Latency = client receive time − scheduled produce time.
#
#   S6  1,000 ids, per-order subscribers, S6_RATES records/s   target p99 <= 20 ms at 5,000/s
#
# Kafka: a private single-node Kafka 4.4 from scripts/kafka.sh in its own
# state dir ($WORK/kafka, jars shared with .kafka/libs), started and stopped
# here, so the test suite's Kafka and its traffic are not involved. Set
# KAFKA_BOOTSTRAP (and optionally KAFKA_PID) to use a running Kafka instead.
# Broker on CPU $BROKER_CPU, loadgen (producer + subscribers) on CPU $GEN_CPU;
# Kafka's JVM is not pinned (it shares both cores) but gets the same
# scheduler priority (autogroup nice $BENCH_NICE).
#
# Writes every result to $OUT/bench-kafka.jsonl (emptied first) and prints the medians.
#
# Environment: ROUNDS=3 DURATION=10 WARMUP=2 S6_RATES="1000 5000" S6_IDS=1000
#   S6_WILDCARD=1 S6_PARTITIONS=3 S6_TOPIC=s6-orders S6_ARGS (extra `loadgen s6`
#   flags) KAFKA_BOOTSTRAP KAFKA_PID KAFKA_HEAP_OPTS (private Kafka; default -Xms1g -Xmx1g)
#   BROKER_CPU GEN_CPU BENCH_NICE BENCH_NO_BUILD
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
S6_RATES="${S6_RATES:-1000 5000}"
S6_IDS="${S6_IDS:-1000}"
S6_WILDCARD="${S6_WILDCARD:-1}"
S6_PARTITIONS="${S6_PARTITIONS:-3}"
S6_TOPIC="${S6_TOPIC:-s6-orders}"
read -r -a S6_EXTRA <<<"${S6_ARGS:-}"
OUT="${OUT:-$ROOT/docs}"
RESULTS="$OUT/bench-kafka.jsonl"
OWN_KAFKA=0

cleanup() {
    stop_ours
    if [[ "$OWN_KAFKA" == 1 ]]; then stop_kafka_private; fi
}
trap cleanup EXIT
bench_prepare
bench_build
blog "machine: $(machine_info)"

if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
    start_kafka_private
    OWN_KAFKA=1
fi
case "$KAFKA_BOOTSTRAP" in 127.*) ;; *) blog "Kafka at $KAFKA_BOOTSTRAP is not loopback"; exit 2 ;; esac
blog "Kafka $KAFKA_BOOTSTRAP (pid ${KAFKA_PID:-?}), topic $S6_TOPIC, $S6_PARTITIONS partitions"
: >"$RESULTS"

kafka_flags=()
[[ -n "${KAFKA_PID:-}" ]] && kafka_flags=(--kafka-pid "$KAFKA_PID")
# run_s6 <rate> <group> <json> [loadgen flags]: a fresh broker with the route,
# then loadgen s6. A fresh consumer group per run: the bridge starts at the
# end of the topic (auto.offset.reset=latest); loadgen probes until records flow.
run_s6() {
    local rate="$1" group="$2" json="$3"; shift 3
    start_ours --kafka-brokers "$KAFKA_BOOTSTRAP" --kafka-group-id "$group" \
        --route "$S6_TOPIC=/topic/order.{key}"
    loadgen_ours s6 --kafka-bootstrap "$KAFKA_BOOTSTRAP" --topic "$S6_TOPIC" \
        --partitions "$S6_PARTITIONS" --destination "/topic/order.{key}" \
        --rate "$rate" --ids "$S6_IDS" --order-subscribers "$S6_IDS" \
        --wildcard-subscribers "$S6_WILDCARD" "${kafka_flags[@]}" \
        --json "$json" "$@" "${S6_EXTRA[@]}" || blog "failed: s6 at $rate/s"
    stop_ours
}

# A fresh JVM serves its first records slowly (JIT): one unrecorded run first.
blog "priming Kafka (5 s at 5,000/s, not recorded)"
run_s6 5000 "s6-$$-prime" "$WORK/prime.jsonl" --duration 5 --warmup 1 >/dev/null
for round in $(seq 1 "$ROUNDS"); do
    for rate in $S6_RATES; do
        blog "round $round: s6 at $rate records/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
        run_s6 "$rate" "s6-$$-$round-$rate" "$RESULTS" --duration "$DURATION" --warmup "$WARMUP"
    done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = [("records_per_s", "records/s", 0), ("deliveries_per_s", "deliveries/s", 0),
        ("p50_us", "p50 ms", 1e3), ("p99_us", "p99 ms", 1e3), ("p999_us", "p99.9 ms", 1e3),
        ("max_us", "max ms", 1e3), ("wildcard_p99_us", "wildcard p99 ms", 1e3),
        ("kafka_ack_p50_us", "Kafka ack p50 ms", 1e3), ("kafka_ack_p99_us", "Kafka ack p99 ms", 1e3),
        ("pub_lag_p99_us", "producer lag p99 ms", 1e3), ("lost", "lost", 0),
        ("broker_cpu_pct", "broker CPU %", 0), ("broker_cpu_s_per_m", "broker CPU s / M deliveries", 0),
        ("broker_rss_mib", "broker RSS MiB", 0), ("kafka_cpu_pct", "Kafka CPU %", 0)]
rates = sorted({r["rate"] for r in rows})
print("\nS6 Kafka → WebSocket, medians over rounds (per-order subscribers unless noted)\n")
print("| metric | " + " | ".join(f"{int(r):,}/s" for r in rates) + " |")
print("|---|" + "---:|" * len(rates))
for key, name, div in cols:
    cells = []
    for rate in rates:
        v = [r[key] for r in rows if r["rate"] == rate and isinstance(r.get(key), (int, float))]
        if not v:
            cells.append("–"); continue
        m = statistics.median(v)
        m = m / div if div else m
        cells.append(f"{m:,.2f}" if div else (f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}"))
    print(f"| {name} | " + " | ".join(cells) + " |")
print("\nper run (p50 / p99 / p99.9 ms):")
for rate in rates:
    runs = [f"{r['p50_us']/1e3:.2f} / {r['p99_us']/1e3:.2f} / {r['p999_us']/1e3:.2f}"
            for r in rows if r["rate"] == rate and r.get("p99_us") is not None]
    print(f"  {int(rate):,}/s: " + ";  ".join(runs))
print("\ntarget: p99 <= 20 ms at 5,000 records/s")
EOF
